//! `rmb listen --install`: writes a systemd *user* unit that runs `rmb listen` (with the
//! same peer flags) at login and restarts it when it stops, so the machine keeps
//! receiving notifications, clipboard and links without a terminal left open. It only
//! writes the file and prints the `systemctl --user` lines to enable it: starting
//! services is the person's decision.

use std::path::{Path, PathBuf};

/// Name of the unit file.
pub const UNIT_NAME: &str = "rmb-listen.service";

/// Why the unit could not be written.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// Neither `$XDG_CONFIG_HOME` nor `$HOME` is set.
    #[error("cannot tell where user units go: set HOME or XDG_CONFIG_HOME")]
    NoHome,
    /// The path of this program is unknown.
    #[error("cannot find the rmb executable: {0}")]
    NoExe(std::io::Error),
    /// Writing failed.
    #[error("writing {0}: {1}")]
    Write(PathBuf, std::io::Error),
}

/// `$XDG_CONFIG_HOME/systemd/user`, or `~/.config/systemd/user`.
pub fn unit_dir() -> Result<PathBuf, InstallError> {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .ok_or(InstallError::NoHome)?;
    Ok(config.join("systemd").join("user"))
}

/// One argument quoted for a systemd `ExecStart=` line.
fn quote(arg: &str) -> String {
    let escaped = arg
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('%', "%%")
        .replace('$', "$$");
    format!("\"{escaped}\"")
}

/// The unit's text, running `exe` with `args`.
pub fn unit(exe: &Path, args: &[String]) -> String {
    let command: Vec<String> = std::iter::once(exe.display().to_string())
        .chain(args.iter().cloned())
        .map(|a| quote(&a))
        .collect();
    format!(
        "# Written by `rmb listen --install`: the personal bus's receiving services.\n\
         [Unit]\n\
         Description=rmb listen: personal bus services (notifications, clipboard, links)\n\
         After=network-online.target\n\
         \n\
         [Service]\n\
         ExecStart={}\n\
         Restart=on-failure\n\
         RestartSec=5\n\
         \n\
         [Install]\n\
         WantedBy=default.target\n",
        command.join(" ")
    )
}

/// Writes the unit running `rmb listen args…`; its path.
pub fn install(args: &[String]) -> Result<PathBuf, InstallError> {
    let exe = std::env::current_exe().map_err(InstallError::NoExe)?;
    let dir = unit_dir()?;
    std::fs::create_dir_all(&dir).map_err(|e| InstallError::Write(dir.clone(), e))?;
    let path = dir.join(UNIT_NAME);
    std::fs::write(&path, unit(&exe, args)).map_err(|e| InstallError::Write(path.clone(), e))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_quotes_its_command() {
        let text = unit(
            Path::new("/usr/bin/rmb"),
            &[
                "listen".into(),
                "--clipboard-file".into(),
                "/tmp/a b%$".into(),
            ],
        );
        assert!(text.contains(
            "ExecStart=\"/usr/bin/rmb\" \"listen\" \"--clipboard-file\" \"/tmp/a b%%$$\"\n"
        ));
        assert!(text.contains("WantedBy=default.target"));
    }
}
