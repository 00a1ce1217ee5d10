//! Log streams: `rmb stream FILE --topic T` follows a file like `tail -F` and publishes
//! each line to a topic (`rmb sub T` is the sink, on any machine allowed to subscribe).
//!
//! Following survives rotation: when the path names another file (renamed away and
//! recreated, as logrotate does), the old file is read to its end before the new one is
//! opened from its start, so no line written before the rotation is lost; a file
//! truncated in place is read again from its start. A publish that fails is retried
//! with a growing pause while reading waits, so a peer restart loses nothing either.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::api::{Api, ApiError};

/// Longest line published as one message; longer lines are cut into pieces this long
/// (a topic message is at most 64 KiB).
pub const MAX_LINE: usize = 60 * 1024;
/// How often the file is checked for new data and rotation.
const POLL: Duration = Duration::from_millis(200);

/// Why following stopped.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The file could not be read.
    #[error("reading {0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// The topic refused a publish (the error does not go away by retrying).
    #[error(transparent)]
    Refused(ApiError),
}

/// One open generation of the followed file.
struct Open {
    file: tokio::fs::File,
    inode: u64,
    position: u64,
}

async fn open(path: &Path, from_end: bool) -> Result<Option<Open>, StreamError> {
    let mut file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StreamError::Io(path.into(), e)),
    };
    let io = |e| StreamError::Io(path.into(), e);
    let meta = file.metadata().await.map_err(io)?;
    let position = if from_end { meta.len() } else { 0 };
    file.seek(std::io::SeekFrom::Start(position))
        .await
        .map_err(io)?;
    Ok(Some(Open {
        file,
        inode: meta.ino(),
        position,
    }))
}

/// Splits complete lines off `pending` (pieces of [`MAX_LINE`] when no newline comes).
fn take_lines(pending: &mut Vec<u8>) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        if let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = &line[..line.len() - 1];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            lines.push(String::from_utf8_lossy(line).into_owned());
        } else if pending.len() >= MAX_LINE {
            let piece: Vec<u8> = pending.drain(..MAX_LINE).collect();
            lines.push(String::from_utf8_lossy(&piece).into_owned());
        } else {
            return lines;
        }
    }
}

/// Publishes `line`, retrying failures of the network with a growing pause.
async fn publish(api: &Api, topic: &str, line: &str) -> Result<(), StreamError> {
    let mut pause = Duration::from_millis(200);
    loop {
        match api.publish_text(topic, line).await {
            Ok(_) => return Ok(()),
            Err(ApiError::Refused { status, message }) if (400..500).contains(&status) => {
                return Err(StreamError::Refused(ApiError::Refused { status, message }));
            }
            Err(e) => {
                tracing::warn!("publishing to {topic}: {e}; retrying in {pause:?}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Follows `path` until an error (from its end unless `from_start`), publishing each
/// line to `topic`.
pub async fn follow(
    api: &Api,
    topic: &str,
    path: &Path,
    from_start: bool,
) -> Result<(), StreamError> {
    let io = |e| StreamError::Io(path.into(), e);
    let mut current = open(path, !from_start).await?;
    let mut pending = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let Some(live) = current.as_mut() else {
            tokio::time::sleep(POLL).await;
            // A file that appears later is new: read it whole.
            current = open(path, false).await?;
            continue;
        };
        let n = live.file.read(&mut buf).await.map_err(io)?;
        if n > 0 {
            live.position += n as u64;
            pending.extend_from_slice(&buf[..n]);
            for line in take_lines(&mut pending) {
                publish(api, topic, &line).await?;
            }
            continue;
        }
        // At the end of this generation: has the path moved on?
        match tokio::fs::metadata(path).await {
            Ok(meta) if meta.ino() != live.inode => {
                // Rotated: what the old file had is read (we are at its end); a last
                // line without newline is published before switching.
                if !pending.is_empty() {
                    let line = String::from_utf8_lossy(&pending).into_owned();
                    pending.clear();
                    publish(api, topic, &line).await?;
                }
                current = open(path, false).await?;
            }
            Ok(meta) if meta.len() < live.position => {
                // Truncated in place: start again from its beginning.
                live.file
                    .seek(std::io::SeekFrom::Start(0))
                    .await
                    .map_err(io)?;
                live.position = 0;
                pending.clear();
            }
            Ok(_) => tokio::time::sleep(POLL).await,
            // Renamed away and not yet recreated: keep the old one until the new appears.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => tokio::time::sleep(POLL).await,
            Err(e) => return Err(io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_and_long_ones_cut() {
        let mut pending = b"a\r\nb\nrest".to_vec();
        assert_eq!(take_lines(&mut pending), ["a", "b"]);
        assert_eq!(pending, b"rest");
        let mut long = vec![b'x'; MAX_LINE + 10];
        let lines = take_lines(&mut long);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].len(), MAX_LINE);
        assert_eq!(long.len(), 10);
    }
}
