//! Links: `rmb open URL` opens the URL in the browser of the machines running
//! `rmb listen` (through `xdg-open` when a display exists; otherwise the listener prints
//! it). Only http and https URLs are accepted: a link from the network must never make a
//! machine open a local file or run a handler for some other scheme.

use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Longest URL accepted (bytes).
pub const MAX_URL: usize = 4096;

/// Why a URL was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    /// Longer than [`MAX_URL`].
    #[error("a URL is at most {MAX_URL} bytes")]
    TooLong,
    /// Not http(s), or with spaces/control characters, or no host.
    #[error("only http:// and https:// URLs with a host and no spaces are opened")]
    NotWeb,
}

/// What a listener answers: how it opened the link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Opened {
    /// "browser" (xdg-open ran) or "printed" (no display).
    pub how: String,
}

/// Checks that `url` is a plain web link.
pub fn check(url: &str) -> Result<(), UrlError> {
    if url.len() > MAX_URL {
        return Err(UrlError::TooLong);
    }
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or(UrlError::NotWeb)?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(UrlError::NotWeb);
    }
    Ok(())
}

/// Opens a checked URL: `xdg-open` when `browser`, else a line on stdout.
pub async fn open(src: u32, url: &str, browser: bool) -> Opened {
    println!("[link] twin {src}: {url}");
    if browser {
        let ran = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::process::Command::new("xdg-open")
                .arg(url)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .status(),
        )
        .await;
        if matches!(ran, Ok(Ok(s)) if s.success()) {
            return Opened {
                how: "browser".into(),
            };
        }
        tracing::warn!("xdg-open did not open {url}");
    }
    Opened {
        how: "printed".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_web_links_pass() {
        assert_eq!(check("https://example.com/a?b#c"), Ok(()));
        assert_eq!(check("http://10.0.0.1:8080"), Ok(()));
        for bad in [
            "file:///etc/passwd",
            "https://",
            "javascript:x",
            "https://a b",
            "ssh://h",
        ] {
            assert_eq!(check(bad), Err(UrlError::NotWeb), "{bad}");
        }
        assert_eq!(
            check(&format!("https://a/{}", "x".repeat(MAX_URL))),
            Err(UrlError::TooLong)
        );
    }
}
