//! The clipboard service: `rmb copy` puts text into the clipboard of the machines running
//! `rmb listen`, `rmb paste --from TWIN` reads one machine's clipboard. The desktop's
//! clipboard is reached through the `arboard` crate (X11, pure Rust through x11rb; a
//! Wayland session reaches it through XWayland) when a display answers; otherwise (a
//! server, a container, `--no-desktop`) the text is kept in a file and the answer says so.
//!
//! On X11 the clipboard's owner must stay alive to hand the text to whoever pastes, and
//! arboard asks that one thread use it: [`Desktop`] keeps one `arboard::Clipboard` on a
//! thread of its own for the listener's lifetime and takes requests over a channel.
//! It is connected once: after its X server goes away (a logout) it fails until the
//! listener restarts (arboard then hands out its dead connection to every new
//! `Clipboard`, so reconnecting here would not help).

use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// Most bytes a clipboard holds through rmb (requests are bounded by the bus anyway).
pub const MAX_CLIPBOARD: usize = 1 << 20;
/// Longest a desktop clipboard operation may take (a stuck X server must not hold a
/// request forever).
const DESKTOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Where this machine's clipboard is.
#[derive(Debug)]
pub enum Clipboard {
    /// The desktop's clipboard, served by a thread owning an `arboard::Clipboard`.
    Desktop(Desktop),
    /// No desktop clipboard: a file, and why (for the listener's first line).
    File {
        /// Where copied text is kept.
        path: PathBuf,
        /// Why the desktop clipboard is not used.
        why: String,
    },
}

/// Why the clipboard could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ClipboardError {
    /// More than [`MAX_CLIPBOARD`] bytes.
    #[error("clipboard text is limited to {MAX_CLIPBOARD} bytes")]
    TooLarge,
    /// The desktop clipboard holds text only, and these bytes are not UTF-8.
    #[error("the desktop clipboard takes UTF-8 text only")]
    NotText,
    /// The file failed.
    #[error("the clipboard file {0} failed: {1}")]
    Io(String, std::io::Error),
    /// The desktop clipboard refused.
    #[error("the desktop clipboard failed: {0}")]
    Desktop(#[from] arboard::Error),
    /// The clipboard thread did not answer in time (or is gone).
    #[error("the desktop clipboard did not answer within {} s", DESKTOP_TIMEOUT.as_secs())]
    Stuck,
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
    /// The desktop clipboard when `desktop` is allowed and a display answers, else `file`.
    pub fn open(file: PathBuf, desktop: bool) -> Clipboard {
        if !desktop {
            return Clipboard::File {
                path: file,
                why: "--no-desktop".into(),
            };
        }
        // arboard reaches X11 only (a Wayland session through XWayland, which sets DISPLAY).
        if std::env::var_os("DISPLAY").is_none_or(|d| d.is_empty()) {
            return Clipboard::File {
                path: file,
                why: "no X display: DISPLAY is not set".into(),
            };
        }
        match Desktop::open() {
            Ok(desktop) => Clipboard::Desktop(desktop),
            Err(e) => Clipboard::File {
                path: file,
                why: format!("the X display did not answer: {e}"),
            },
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
            Clipboard::Desktop(_) => "the desktop clipboard (X11)".into(),
            Clipboard::File { path, why } => format!("{} ({why})", path.display()),
        }
    }

    /// Puts `text` into the clipboard.
    pub async fn copy(&self, text: &[u8]) -> Result<Stored, ClipboardError> {
        if text.len() > MAX_CLIPBOARD {
            return Err(ClipboardError::TooLarge);
        }
        match self {
            Clipboard::File { path, .. } => {
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
            Clipboard::Desktop(desktop) => {
                let text = std::str::from_utf8(text).map_err(|_| ClipboardError::NotText)?;
                desktop.set(text.to_string()).await?;
                Ok(Stored {
                    into: "desktop".into(),
                    path: None,
                })
            }
        }
    }

    /// The clipboard's text (empty when nothing, or nothing textual, was copied yet).
    pub async fn paste(&self) -> Result<Vec<u8>, ClipboardError> {
        match self {
            Clipboard::File { path, .. } => match tokio::fs::read(path).await {
                Ok(bytes) if bytes.len() <= MAX_CLIPBOARD => Ok(bytes),
                Ok(_) => Err(ClipboardError::TooLarge),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
                Err(e) => Err(ClipboardError::Io(path.display().to_string(), e)),
            },
            Clipboard::Desktop(desktop) => {
                let text = desktop.get().await?;
                if text.len() > MAX_CLIPBOARD {
                    return Err(ClipboardError::TooLarge);
                }
                Ok(text.into_bytes())
            }
        }
    }
}

/// A request to the clipboard thread, with where to answer.
enum Job {
    Set(String, oneshot::Sender<Result<(), arboard::Error>>),
    Get(oneshot::Sender<Result<String, arboard::Error>>),
}

/// The desktop clipboard: one thread owning one `arboard::Clipboard` (which, on X11,
/// serves the copied text to other programs for as long as it lives). Dropping this ends
/// the thread and waits for it.
#[derive(Debug)]
pub struct Desktop {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Desktop {
    /// Connects to the display on a new thread; the error when no display answers.
    pub fn open() -> Result<Desktop, arboard::Error> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let (ready, opened) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("rmb-clipboard".into())
            .spawn(move || {
                let mut clipboard = match arboard::Clipboard::new() {
                    Ok(c) => {
                        let _ = ready.send(Ok(()));
                        c
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                // Ends when every sender is gone (the Desktop was dropped).
                for job in queue {
                    match job {
                        Job::Set(text, answer) => {
                            let _ = answer.send(clipboard.set_text(text));
                        }
                        Job::Get(answer) => {
                            let _ = answer.send(match clipboard.get_text() {
                                Err(arboard::Error::ContentNotAvailable) => Ok(String::new()),
                                other => other,
                            });
                        }
                    }
                }
            })
            .map_err(|e| arboard::Error::Unknown {
                description: format!("cannot start the clipboard thread: {e}"),
            })?;
        let opened = opened.recv().unwrap_or_else(|_| {
            Err(arboard::Error::Unknown {
                description: "the clipboard thread ended".into(),
            })
        });
        let desktop = Desktop {
            jobs: Some(jobs),
            thread: Some(thread),
        };
        opened.map(|()| desktop)
    }

    async fn ask<T>(
        &self,
        job: impl FnOnce(oneshot::Sender<Result<T, arboard::Error>>) -> Job,
    ) -> Result<T, ClipboardError> {
        let (answer, answered) = oneshot::channel();
        let jobs = self.jobs.as_ref().ok_or(ClipboardError::Stuck)?;
        jobs.send(job(answer)).map_err(|_| ClipboardError::Stuck)?;
        match tokio::time::timeout(DESKTOP_TIMEOUT, answered).await {
            Ok(Ok(result)) => Ok(result?),
            _ => Err(ClipboardError::Stuck),
        }
    }

    /// Makes `text` the clipboard's content.
    pub async fn set(&self, text: String) -> Result<(), ClipboardError> {
        self.ask(|answer| Job::Set(text, answer)).await
    }

    /// The clipboard's text ("" when it holds none).
    pub async fn get(&self) -> Result<String, ClipboardError> {
        self.ask(Job::Get).await
    }
}

impl Drop for Desktop {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop; arboard then hands the content to a
        // clipboard manager if one runs (bounded by arboard's own timeout).
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_file_fallback_round_trips_and_bounds_size() {
        let dir = tempfile::tempdir().unwrap();
        let clip = Clipboard::open(dir.path().join("sub/clipboard"), false);
        assert!(
            clip.describe().ends_with("(--no-desktop)"),
            "{}",
            clip.describe()
        );
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
