//! Plugins: PMB's long-running kind, beside `rmb serve` (one request, one run).
//! `rmb plugin --topic OUT [--input IN] -- prog` runs one program for as long as it
//! lives: every line it prints is published to OUT, and every message of IN (a topic
//! this twin may subscribe to) is written to its stdin as one line. The program sees
//! only text lines; who may publish to IN is the topic's access list.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::api::{Api, ApiError};
use super::follow::Follower;
use super::stream::MAX_LINE;

/// Why a plugin stopped.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The program could not be started or its pipes failed.
    #[error("plugin program {0}: {1}")]
    Io(String, std::io::Error),
    /// A topic refused (access list, bad name).
    #[error(transparent)]
    Api(#[from] ApiError),
}

/// Feeds the messages of `input` after `since` to `stdin`, one line each (newlines in a
/// message become spaces), reopening a broken stream after the last id seen.
async fn feed(
    api: &Api,
    input: &str,
    since: u64,
    mut stdin: tokio::process::ChildStdin,
) -> Result<(), PluginError> {
    let mut follower = Follower::new(api, input, since);
    loop {
        let m = follower.next().await?;
        let Some(text) = m["message"].as_str() else {
            continue;
        };
        let line = text.replace(['\n', '\r'], " ") + "\n";
        if let Err(e) = stdin.write_all(line.as_bytes()).await {
            // The program closed its input: it may still be printing.
            tracing::info!("the plugin closed its input: {e}");
            return Ok(());
        }
    }
}

/// Runs `program` until it exits; its exit status.
pub async fn run(
    api: &Api,
    output: &str,
    input: Option<&str>,
    program: &[String],
) -> Result<std::process::ExitStatus, PluginError> {
    let io = |e| PluginError::Io(program[0].clone(), e);
    // Only messages published from now on are fed to the program.
    let since = match input {
        Some(topic) => api.newest(topic).await?,
        None => 0,
    };
    let mut child = tokio::process::Command::new(&program[0])
        .args(&program[1..])
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(io)?;
    let stdout = child.stdout.take().expect("piped");
    let publishing = async {
        let mut lines = BufReader::new(stdout);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = (&mut lines)
                .take(MAX_LINE as u64)
                .read_until(b'\n', &mut line)
                .await
                .map_err(io)?;
            if n == 0 {
                return Ok::<(), PluginError>(());
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\n', '\r']);
            let mut pause = Duration::from_millis(200);
            loop {
                match api.publish_text(output, text).await {
                    Ok(_) => break,
                    Err(e @ ApiError::Refused { .. }) => return Err(e.into()),
                    Err(e) => {
                        tracing::warn!("publishing to {output}: {e}; retrying in {pause:?}");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(10));
                    }
                }
            }
        }
    };
    let feeding = async {
        match (input, child.stdin.take()) {
            (Some(topic), Some(stdin)) => feed(api, topic, since, stdin).await,
            _ => Ok(()),
        }
    };
    // Output ends when the program exits; input is dropped with it.
    tokio::select! {
        result = publishing => result?,
        result = async { feeding.await?; std::future::pending::<Result<(), PluginError>>().await } => result?,
    }
    child.wait().await.map_err(io)
}
