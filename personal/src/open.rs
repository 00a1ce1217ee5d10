//! Links and pages: `rmb open URL` opens the URL in the browser of the machines running
//! `rmb listen` (through `xdg-open` when a display exists, or the listener's `--opener`;
//! otherwise the listener prints it). Only http and https URLs are accepted: a link from
//! the network must never make a machine open a local file or run a handler for some
//! other scheme. `rmb open --html` sends the page itself: the listener writes it to a
//! file of its own private directory and opens that file.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Longest URL accepted (bytes).
pub const MAX_URL: usize = 4096;
/// Largest HTML page accepted (bytes).
pub const MAX_HTML: usize = 1024 * 1024;
/// Pages kept in the listener's page directory; older ones are deleted as new ones come
/// (a browser may read a page long after it was asked to open it).
pub const KEEP_PAGES: usize = 20;
/// Longest the opener may take to start the browser.
const OPENER_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Why a page could not be kept.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// Larger than [`MAX_HTML`].
    #[error("an HTML page is at most {MAX_HTML} bytes")]
    TooLarge,
    /// The page directory is not this user's alone.
    #[error("{0} is not a private directory of this user (mode 0700, owned by it)")]
    NotPrivate(PathBuf),
    /// Writing the page failed.
    #[error("keeping the page in {0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// What a listener answers: how it opened the link or page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Opened {
    /// "browser" (the opener ran and succeeded) or "printed" (no display or opener).
    pub how: String,
    /// Where a page was written (`--html` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
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

/// Runs `opener target` (bounded by [`OPENER_TIMEOUT`]); whether it succeeded.
async fn run_opener(opener: &str, target: &str) -> bool {
    let ran = tokio::time::timeout(
        OPENER_TIMEOUT,
        tokio::process::Command::new(opener)
            .arg(target)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .status(),
    )
    .await;
    let ok = matches!(ran, Ok(Ok(s)) if s.success());
    if !ok {
        tracing::warn!("{opener} did not open {target}");
    }
    ok
}

/// Opens a checked URL with `opener` when given; how (the caller prints the link).
pub async fn open(url: &str, opener: Option<&str>) -> Opened {
    let how = match opener {
        Some(opener) if run_opener(opener, url).await => "browser",
        _ => "printed",
    };
    Opened {
        how: how.into(),
        path: None,
    }
}

/// The directory pages are kept in: `$XDG_RUNTIME_DIR/rmb-pages` (private to the user
/// by the session), else `rmb-pages-<uid>` in the temporary directory.
pub fn default_page_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("rmb-pages"),
        // SAFETY: getuid has no preconditions and cannot fail.
        None => std::env::temp_dir().join(format!("rmb-pages-{}", unsafe { libc::getuid() })),
    }
}

/// Creates `dir` (mode 0700) or checks that the existing one is this user's alone and
/// not a link: in a shared temporary directory another user could have made it first.
fn private_dir(dir: &Path) -> Result<(), PageError> {
    let io = |e| PageError::Io(dir.to_path_buf(), e);
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(e)),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(io)?;
    // SAFETY: getuid has no preconditions and cannot fail.
    let mine = meta.uid() == unsafe { libc::getuid() };
    if !meta.is_dir() || !mine || meta.permissions().mode() & 0o077 != 0 {
        return Err(PageError::NotPrivate(dir.to_path_buf()));
    }
    Ok(())
}

/// Writes `html` to a new file (mode 0600) in `dir` and deletes the oldest pages beyond
/// [`KEEP_PAGES`]; the file.
pub fn keep_page(dir: &Path, html: &[u8]) -> Result<PathBuf, PageError> {
    use std::io::Write;
    if html.len() > MAX_HTML {
        return Err(PageError::TooLarge);
    }
    private_dir(dir)?;
    let io = |e| PageError::Io(dir.to_path_buf(), e);
    let mut file = tempfile::Builder::new()
        .prefix("page-")
        .suffix(".html")
        .tempfile_in(dir)
        .map_err(io)?;
    file.write_all(html).map_err(io)?;
    let (_, path) = file.keep().map_err(|e| io(e.error))?;
    let mut pages: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("page-") && name.ends_with(".html")
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    pages.sort();
    let extra = pages.len().saturating_sub(KEEP_PAGES);
    for (_, old) in pages.into_iter().take(extra) {
        if old != path {
            let _ = std::fs::remove_file(old);
        }
    }
    Ok(path)
}

/// Opens a kept page with `opener` when given; how, and where the page is.
pub async fn open_file(path: &Path, opener: Option<&str>) -> Opened {
    let shown = path.display().to_string();
    let how = match opener {
        Some(opener) if run_opener(opener, &shown).await => "browser",
        _ => "printed",
    };
    Opened {
        how: how.into(),
        path: Some(shown),
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

    #[test]
    fn pages_are_private_and_only_the_newest_are_kept() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("pages");
        let first = keep_page(&dir, b"<p>0</p>").unwrap();
        assert_eq!(std::fs::read(&first).unwrap(), b"<p>0</p>");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&dir), mode(&first)), (0o700, 0o600));
        for i in 1..=KEEP_PAGES {
            keep_page(&dir, format!("<p>{i}</p>").as_bytes()).unwrap();
        }
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), KEEP_PAGES);
        assert!(matches!(
            keep_page(&dir, &vec![b'x'; MAX_HTML + 1]),
            Err(PageError::TooLarge)
        ));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(matches!(
            keep_page(&dir, b"x"),
            Err(PageError::NotPrivate(_))
        ));
    }
}
