//! The clipboard service: `rmb copy` puts text into the clipboard of the machines running
//! `rmb listen`, `rmb paste --from TWIN` reads one machine's clipboard. The desktop's
//! clipboard is reached through `wl-copy`/`wl-paste` (Wayland) or `xclip` (X11) when a
//! display and the tool exist; otherwise (a server, a container) the text is kept in a
//! file and the answer says so. No clipboard crate: the ones that talk to X11/Wayland
//! directly pull a large dependency tree for what two small tools already do.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::commands::notify::which;

/// Most bytes a clipboard holds through rmb (requests are bounded by the bus anyway).
pub const MAX_CLIPBOARD: usize = 1 << 20;
/// Longest a clipboard tool may take.
const TOOL_TIMEOUT: Duration = Duration::from_secs(5);

/// Where this machine's clipboard is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Clipboard {
    /// Wayland, through `wl-copy` and `wl-paste`.
    Wayland,
    /// X11, through `xclip`.
    X11,
    /// No display: a file.
    File(PathBuf),
}

/// Why the clipboard could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ClipboardError {
    /// More than [`MAX_CLIPBOARD`] bytes.
    #[error("clipboard text is limited to {MAX_CLIPBOARD} bytes")]
    TooLarge,
    /// The file or tool failed.
    #[error("the clipboard ({0}) failed: {1}")]
    Io(String, std::io::Error),
    /// The tool ran too long or exited with an error.
    #[error("{0} failed or did not finish in {secs} s", secs = TOOL_TIMEOUT.as_secs())]
    Tool(&'static str),
}

/// What a listener answers to a copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    /// "desktop" or "file".
    pub into: String,
    /// The file, when no desktop clipboard exists.
    #[serde(default)]
    pub path: Option<String>,
}

impl Clipboard {
    /// The desktop clipboard when reachable, else `file`.
    pub fn detect(file: PathBuf) -> Clipboard {
        let set = |v: &str| std::env::var_os(v).is_some_and(|x| !x.is_empty());
        if set("WAYLAND_DISPLAY") && which("wl-copy") && which("wl-paste") {
            Clipboard::Wayland
        } else if set("DISPLAY") && which("xclip") {
            Clipboard::X11
        } else {
            Clipboard::File(file)
        }
    }

    /// The default file: `$XDG_STATE_HOME/rmb/clipboard` or `~/.local/state/rmb/clipboard`.
    pub fn default_file() -> PathBuf {
        let state = std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
            .unwrap_or_else(std::env::temp_dir);
        state.join("rmb").join("clipboard")
    }

    /// What people read: where copied text goes.
    pub fn describe(&self) -> String {
        match self {
            Clipboard::Wayland => "the Wayland clipboard (wl-copy)".into(),
            Clipboard::X11 => "the X11 clipboard (xclip)".into(),
            Clipboard::File(p) => format!("{} (no display)", p.display()),
        }
    }

    /// Puts `text` into the clipboard.
    pub async fn copy(&self, text: &[u8]) -> Result<Stored, ClipboardError> {
        if text.len() > MAX_CLIPBOARD {
            return Err(ClipboardError::TooLarge);
        }
        match self {
            Clipboard::File(path) => {
                let io = |e| ClipboardError::Io(path.display().to_string(), e);
                if let Some(dir) = path.parent() {
                    tokio::fs::create_dir_all(dir).await.map_err(io)?;
                }
                // Write beside, then rename: a paste never sees half a copy.
                let tmp = path.with_extension("tmp");
                tokio::fs::write(&tmp, text).await.map_err(io)?;
                tokio::fs::rename(&tmp, path).await.map_err(io)?;
                Ok(Stored {
                    into: "file".into(),
                    path: Some(path.display().to_string()),
                })
            }
            Clipboard::Wayland => {
                pipe_in("wl-copy", &[], text).await?;
                Ok(desktop())
            }
            Clipboard::X11 => {
                pipe_in("xclip", &["-selection", "clipboard"], text).await?;
                Ok(desktop())
            }
        }
    }

    /// The clipboard's text (empty when nothing was copied yet).
    pub async fn paste(&self) -> Result<Vec<u8>, ClipboardError> {
        match self {
            Clipboard::File(path) => match tokio::fs::read(path).await {
                Ok(bytes) if bytes.len() <= MAX_CLIPBOARD => Ok(bytes),
                Ok(_) => Err(ClipboardError::TooLarge),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
                Err(e) => Err(ClipboardError::Io(path.display().to_string(), e)),
            },
            Clipboard::Wayland => pipe_out("wl-paste", &["--no-newline"]).await,
            Clipboard::X11 => pipe_out("xclip", &["-selection", "clipboard", "-o"]).await,
        }
    }
}

fn desktop() -> Stored {
    Stored {
        into: "desktop".into(),
        path: None,
    }
}

async fn pipe_in(tool: &'static str, args: &[&str], text: &[u8]) -> Result<(), ClipboardError> {
    let run = async {
        let mut child = tokio::process::Command::new(tool)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| ClipboardError::Io(tool.into(), e))?;
        let mut stdin = child.stdin.take().expect("piped");
        stdin
            .write_all(text)
            .await
            .map_err(|e| ClipboardError::Io(tool.into(), e))?;
        drop(stdin);
        child
            .wait()
            .await
            .map_err(|e| ClipboardError::Io(tool.into(), e))
    };
    match tokio::time::timeout(TOOL_TIMEOUT, run).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Err(e)) => Err(e),
        _ => Err(ClipboardError::Tool(tool)),
    }
}

async fn pipe_out(tool: &'static str, args: &[&str]) -> Result<Vec<u8>, ClipboardError> {
    let run = async {
        let mut child = tokio::process::Command::new(tool)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| ClipboardError::Io(tool.into(), e))?;
        let mut out = Vec::new();
        let mut stdout = child
            .stdout
            .take()
            .expect("piped")
            .take(MAX_CLIPBOARD as u64 + 1);
        stdout
            .read_to_end(&mut out)
            .await
            .map_err(|e| ClipboardError::Io(tool.into(), e))?;
        let status = child
            .wait()
            .await
            .map_err(|e| ClipboardError::Io(tool.into(), e))?;
        Ok((status, out))
    };
    match tokio::time::timeout(TOOL_TIMEOUT, run).await {
        Ok(Ok((_, out))) if out.len() > MAX_CLIPBOARD => Err(ClipboardError::TooLarge),
        Ok(Ok((status, out))) if status.success() => Ok(out),
        Ok(Err(e)) => Err(e),
        _ => Err(ClipboardError::Tool(tool)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_file_fallback_round_trips_and_bounds_size() {
        let dir = tempfile::tempdir().unwrap();
        let clip = Clipboard::File(dir.path().join("sub/clipboard"));
        assert_eq!(clip.paste().await.unwrap(), b"");
        let stored = clip.copy(b"hello").await.unwrap();
        assert_eq!(stored.into, "file");
        assert_eq!(clip.paste().await.unwrap(), b"hello");
        assert!(matches!(
            clip.copy(&vec![b'x'; MAX_CLIPBOARD + 1]).await,
            Err(ClipboardError::TooLarge)
        ));
    }
}
