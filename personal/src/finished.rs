//! A finished command's notification: what `rmb notify -- cmd` sends when the command
//! ends (its exit status, duration and last lines of output), and how it is run and
//! summed up. Shared by the sender (`rmb notify`) and the receivers (`rmb listen` and
//! `rmb listen notifications`), so it lives below both.

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

/// The command notifications are sent with (and `rmb listen notifications` serves).
pub const NOTIFY_CMD: &str = "notify";
/// Schema of the notification body.
pub const SCHEMA: &str = "application/json";

/// What `rmb notify` sends: a finished command's summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// The command line that ran.
    pub command: String,
    /// Its exit status (128 + N when killed by signal N).
    pub exit_code: u32,
    /// Whether it succeeded (exit status 0).
    pub success: bool,
    /// How long it ran.
    pub duration_ms: u64,
    /// Machine it ran on.
    pub host: String,
    /// Its last lines of output.
    pub output: Vec<String>,
}

/// Runs `command`, copying its stdout and stderr through while keeping the last `keep`
/// lines of both.
pub async fn run_teed(
    command: &[String],
    keep: usize,
) -> anyhow::Result<(std::process::ExitStatus, Vec<String>)> {
    let mut child = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", command[0]))?;
    let tail = Arc::new(Mutex::new(VecDeque::with_capacity(keep + 1)));
    let out = tokio::spawn(tee(
        child.stdout.take().expect("piped"),
        tokio::io::stdout(),
        tail.clone(),
        keep,
    ));
    let err = tokio::spawn(tee(
        child.stderr.take().expect("piped"),
        tokio::io::stderr(),
        tail.clone(),
        keep,
    ));
    let status = child.wait().await?;
    let _ = out.await;
    let _ = err.await;
    let lines = tail.lock().expect("tail lock").drain(..).collect();
    Ok((status, lines))
}

async fn tee(
    from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    tail: Arc<Mutex<VecDeque<String>>>,
    keep: usize,
) {
    let mut reader = BufReader::new(from);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let _ = to.write_all(&line).await;
                let _ = to.flush().await;
                let text = String::from_utf8_lossy(&line).trim_end().to_string();
                let mut tail = tail.lock().expect("tail lock");
                tail.push_back(text);
                while tail.len() > keep {
                    tail.pop_front();
                }
            }
        }
    }
}

/// The command line as a person would type it (arguments with spaces quoted).
pub fn shell_words(command: &[String]) -> String {
    command
        .iter()
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "'\"$\\".contains(c)) {
                format!("'{}'", a.replace('\'', r"'\''"))
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// One line for people: `twin 7 (host): 'make' failed with exit code 2 after 3.2 s`.
pub fn summary(src: &str, n: &Notification) -> String {
    let how = if n.success {
        "finished".to_string()
    } else {
        format!("failed with exit code {}", n.exit_code)
    };
    format!(
        "twin {src} ({}): `{}` {how} after {:.1} s",
        n.host,
        n.command,
        n.duration_ms as f64 / 1000.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_are_quoted_like_a_shell() {
        let words = ["make", "a b", "it's", ""].map(String::from);
        assert_eq!(shell_words(&words), r"make 'a b' 'it'\''s' ''");
    }

    #[test]
    fn summaries_say_what_failed() {
        let n = Notification {
            command: "false".into(),
            exit_code: 1,
            success: false,
            duration_ms: 1500,
            host: "box".into(),
            output: vec![],
        };
        assert_eq!(
            summary("7", &n),
            "twin 7 (box): `false` failed with exit code 1 after 1.5 s"
        );
    }

    #[tokio::test]
    async fn output_tail_keeps_the_last_lines_and_exit_codes_survive() {
        let cmd = ["sh", "-c", "for i in 1 2 3 4 5; do echo $i; done; exit 4"].map(String::from);
        let (status, lines) = run_teed(&cmd, 3).await.unwrap();
        assert_eq!(status.code(), Some(4));
        assert_eq!(lines, ["3", "4", "5"]);
        // stderr is kept too (its order against stdout is whatever the pipes give).
        let cmd = ["sh", "-c", "echo oops >&2"].map(String::from);
        let (status, lines) = run_teed(&cmd, 3).await.unwrap();
        assert!(status.success());
        assert_eq!(lines, ["oops"]);
    }
}
