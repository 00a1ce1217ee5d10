//! Sinks: `rmb sink PATH --topic T` writes the messages of a topic into a named pipe or
//! a file, the counterpart of `rmb stream` (PMB's `sink`). A program that reads a FIFO
//! (a log collector, `grep --line-buffered`, a shell loop) then gets another machine's
//! stream without knowing about rmb.
//!
//! A named pipe is opened when a reader opens it; when the reader goes away, the message
//! being written waits for the next reader (and is written again in full), so nothing is
//! lost between readers while the topic holds it. A regular file is appended to.

use std::io::{ErrorKind, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::api::{Api, ApiError};
use super::follow::Follower;

/// Why a sink stopped.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The pipe or file cannot be opened or written.
    #[error("writing {0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// The topic refused this machine (access list, no such topic).
    #[error(transparent)]
    Refused(ApiError),
}

/// How often a named pipe without a reader, or with a full buffer, is tried again.
const RETRY: Duration = Duration::from_millis(100);

/// Where messages go: a named pipe (reopened for each reader) or a file (appended to).
///
/// The pipe is opened and written without blocking (`O_NONBLOCK`, retried every
/// [`RETRY`]), so a sink waiting for a reader still stops at once on Ctrl-C.
struct Target {
    path: PathBuf,
    fifo: bool,
    file: Option<std::fs::File>,
}

impl Target {
    fn new(path: &Path) -> Target {
        let fifo = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo());
        Target {
            path: path.to_path_buf(),
            fifo,
            file: None,
        }
    }

    /// Opens the file, or waits until a reader opens the pipe.
    async fn open(&mut self) -> Result<(), SinkError> {
        while self.file.is_none() {
            let mut options = std::fs::OpenOptions::new();
            if self.fifo {
                options.write(true).custom_flags(libc::O_NONBLOCK);
            } else {
                options.append(true).create(true);
            }
            match options.open(&self.path) {
                Ok(file) => self.file = Some(file),
                // A pipe nobody reads yet.
                Err(e) if self.fifo && e.raw_os_error() == Some(libc::ENXIO) => {
                    tokio::time::sleep(RETRY).await;
                }
                Err(e) => return Err(SinkError::Io(self.path.clone(), e)),
            }
        }
        Ok(())
    }

    /// Writes one message (a newline added when it has none), waiting for a reader of a
    /// named pipe; when the reader goes away in the middle, the whole message is written
    /// again to the next one.
    async fn write(&mut self, text: &str) -> Result<(), SinkError> {
        let mut bytes = text.as_bytes().to_vec();
        if !bytes.ends_with(b"\n") {
            bytes.push(b'\n');
        }
        let mut done = 0;
        while done < bytes.len() {
            self.open().await?;
            let file = self.file.as_mut().expect("opened above");
            match file.write(&bytes[done..]) {
                Ok(n) => done += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => tokio::time::sleep(RETRY).await,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // The reader closed the pipe: wait for the next one.
                Err(e) if self.fifo && e.kind() == ErrorKind::BrokenPipe => {
                    tracing::info!("the reader of {} went away", self.path.display());
                    self.file = None;
                    done = 0;
                }
                Err(e) => return Err(SinkError::Io(self.path.clone(), e)),
            }
        }
        Ok(())
    }
}

/// Writes the messages of `topic` to `path`, from its first stored message when
/// `from_start`, else from the ones published from now; runs until an error that retrying
/// does not cure. A broken stream is reopened after the last message written.
pub async fn drain(api: &Api, topic: &str, path: &Path, from_start: bool) -> Result<(), SinkError> {
    let mut target = Target::new(path);
    let since = if from_start {
        0
    } else {
        api.newest(topic).await.map_err(SinkError::Refused)?
    };
    let mut follower = Follower::new(api, topic, since);
    loop {
        let m = follower.next().await.map_err(SinkError::Refused)?;
        if let Some(text) = m["message"].as_str() {
            target.write(text).await?;
        }
    }
}
