//! Build script of `rmb-peer`: records the git commit the binary is built from in
//! `RMB_VERSION`, so `rmb.version` and `--version` answer a version string that names it
//! (as rmb-rs answers its `git describe`). `RMB_BUILD_COMMIT` overrides it (builds from a tarball);
//! without git or a repository the version is the crate version alone.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=RMB_BUILD_COMMIT");
    let commit = std::env::var("RMB_BUILD_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(git_commit);
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    // The shape of rmb-rs's `git describe` answer (`v1.5.1-12-g15f2092`).
    let full = match commit {
        Some(commit) => format!("v{version}-g{}", commit.trim()),
        None => format!("v{version}"),
    };
    println!("cargo:rustc-env=RMB_VERSION={full}");
}

/// The short hash of HEAD, and a rerun trigger on whatever HEAD points to.
fn git_commit() -> Option<String> {
    let git = |args: &[&str]| {
        let out = Command::new("git").args(args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    // Only paths that exist: cargo reruns a build script on every build when one it
    // watches is missing, which would rebuild everything above this crate each time.
    let mut watched = vec![
        "HEAD".to_string(),
        "packed-refs".into(),
        "refs/heads".into(),
    ];
    watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for path in watched {
        if let Some(file) = git(&["rev-parse", "--git-path", &path]).map(absolute)
            && file.exists()
        {
            println!("cargo:rerun-if-changed={}", file.display());
        }
    }
    git(&["rev-parse", "--short=7", "HEAD"]).filter(|c| !c.is_empty())
}

fn absolute(path: String) -> PathBuf {
    let path = PathBuf::from(path);
    if path.is_absolute() {
        path
    } else {
        std::env::current_dir()
            .map(|d| d.join(&path))
            .unwrap_or(path)
    }
}
