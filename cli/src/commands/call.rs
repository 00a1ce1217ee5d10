//! `rmb call`: send one request to one or more twins through the local peer and print
//! what comes back. [`call`] is also what `rmb notify` and `rmb demo` use.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use redis::AsyncCommands;
use rmb_peer::redis_api::TIMEOUT_CODE;
use rmb_peer::redis_api::json::{
    JsonError, JsonIncomingResponse, JsonOutgoingRequest, VERSION, decode_dat, encode_dat,
};
use rmb_peer::redis_api::keys;
use serde::Serialize;

use crate::args::RedisArgs;
use crate::bus::{self, Bus};

/// Exit status when some destination did not answer in time.
pub const EXIT_TIMEOUT: u8 = 3;

/// How long after `--timeout` to wait for the peer's expiry notices, so none is left
/// behind in Redis (the peer sends them when the request's validity ends).
pub const EXPIRY_NOTICE_GRACE: Duration = Duration::from_secs(2);

/// With no peer heartbeat in Redis, how long a request may wait in
/// `msgbus.system.local` before the call concludes that no peer serves this Redis
/// (an rmb-rs peer, which keeps no heartbeat, takes requests within milliseconds).
pub const NO_PEER_WAIT: Duration = Duration::from_secs(2);

/// Nothing serves the Redis a call was handed to.
#[derive(Debug, thiserror::Error)]
#[error(
    "no rmb-peer is serving the Redis at {url} (no heartbeat at {status}, and nothing took \
     the request from {local} within {secs} s): start rmb-peer with --redis {url}, or give \
     this command the --redis of the running one",
    status = keys::STATUS,
    local = keys::LOCAL,
    secs = NO_PEER_WAIT.as_secs()
)]
pub struct NoPeer {
    /// The Redis URL.
    pub url: String,
}

/// Send a request to twins through the local rmb-peer and print their responses.
///
/// Exit status: 0 when every destination answered without error, 1 when some answered
/// with an error (or Redis failed), 3 when some did not answer within --timeout (the wait
/// ends up to 2 s later, to collect the peer's "no response" notices).
#[derive(Args, Debug)]
pub struct CallArgs {
    #[command(flatten)]
    pub redis: RedisArgs,

    /// Destination twin id(s): repeat the flag or separate with commas (`--dst 7,9`).
    #[arg(
        short,
        long,
        required = true,
        value_delimiter = ',',
        value_name = "TWIN"
    )]
    pub dst: Vec<u32>,

    /// The command the remote service listens for, e.g. `echo` or `zos.system.version`.
    #[arg(short, long, value_name = "CMD")]
    pub cmd: String,

    /// Request body as text. Without --data and --data-file the body is empty.
    #[arg(long, value_name = "TEXT", conflicts_with = "data_file")]
    pub data: Option<String>,

    /// Read the request body from this file (`-` = standard input).
    #[arg(long, value_name = "PATH")]
    pub data_file: Option<PathBuf>,

    /// Schema (content type) of the body, e.g. application/json.
    #[arg(long, value_name = "SCHEMA")]
    pub schema: Option<String>,

    /// Envelope tags; `fail-fast` asks relays to fail at once for offline twins.
    #[arg(long, value_name = "TAGS")]
    pub tag: Option<String>,

    /// Seconds to wait for all responses; also the request's validity.
    #[arg(short, long, default_value_t = 30, value_name = "SECONDS")]
    pub timeout: u64,

    /// Print one JSON object per response (and a summary line) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What to send in one call.
#[derive(Debug, Clone)]
pub struct CallSpec {
    /// Destination twins (duplicates are sent once).
    pub dst: Vec<u32>,
    /// Remote command.
    pub cmd: String,
    /// Request body.
    pub body: Vec<u8>,
    /// Body schema.
    pub schema: Option<String>,
    /// Envelope tags.
    pub tag: Option<String>,
    /// How long to wait for responses (and the request's validity).
    pub timeout: Duration,
}

/// One response, decoded.
#[derive(Debug, Clone, Serialize)]
pub struct Reply {
    /// Responder address (`"7"`), `"0"` for a relay's error, `""` for the local peer's.
    pub src: String,
    /// Body (as text when it is UTF-8, else base64) — see [`Reply::body`].
    #[serde(skip)]
    pub body: Vec<u8>,
    /// Schema the responder gave.
    pub schema: Option<String>,
    /// Set when the call failed at the responder, a relay or the local peer.
    pub error: Option<JsonError>,
    /// Time from sending to receiving this response.
    pub elapsed_ms: u64,
}

/// Everything that came back for one call.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Responses in arrival order, one per responder.
    pub replies: Vec<Reply>,
    /// Destinations with no response of their own when the wait ended.
    pub unanswered: Vec<u32>,
}

impl Outcome {
    /// True when every destination answered without error.
    pub fn success(&self) -> bool {
        self.unanswered.is_empty() && self.replies.iter().all(|r| r.error.is_none())
    }
}

/// Sends `spec` through the peer behind `bus` and collects one response per destination
/// (or what arrived before `spec.timeout`).
pub async fn call(bus: &Bus, spec: &CallSpec) -> anyhow::Result<Outcome> {
    let destinations: BTreeSet<u32> = spec.dst.iter().copied().collect();
    if destinations.is_empty() {
        bail!("no destination twin given");
    }
    let ret = format!("rmb-cli.reply.{}", uuid::Uuid::new_v4());
    let request = JsonOutgoingRequest {
        ver: VERSION,
        reference: Some(uuid::Uuid::new_v4().to_string()),
        cmd: spec.cmd.clone(),
        exp: spec.timeout.as_secs().max(1),
        dat: encode_dat(&spec.body),
        tag: spec.tag.clone(),
        dst: destinations.iter().copied().collect(),
        ret: ret.clone(),
        shm: spec.schema.clone(),
        now: bus::unix_now(),
    };
    let mut conn = bus.blocking().await?;
    let heartbeat = bus.peer_heartbeat().await?;
    let started = Instant::now();
    bus.send_request(&request).await?;
    if !heartbeat {
        ensure_taken(bus, &request).await?;
    }

    let mut replies: Vec<Reply> = Vec::new();
    // The peer reports each destination still silent when the request expires; those
    // notices say "timed out", they are not answers.
    let mut expired = 0usize;
    let deadline = spec.timeout + EXPIRY_NOTICE_GRACE;
    let lists = [ret.clone()];
    while replies.len() + expired < destinations.len() {
        let left = deadline.saturating_sub(started.elapsed());
        if left.is_zero() {
            break;
        }
        let Some(popped) = bus::pop::<JsonIncomingResponse>(&mut conn, &lists, left).await? else {
            break;
        };
        let response = match popped.value {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("ignoring a response that is not valid JSON: {e}");
                continue;
            }
        };
        if is_expiry_notice(&response) {
            expired += 1;
            continue;
        }
        // The same response may come through two relays; keep the first per responder.
        let attributed = bus::twin_of(&response.src).is_some_and(|t| t != 0);
        if attributed && replies.iter().any(|r| r.src == response.src) {
            continue;
        }
        replies.push(decode_reply(response, started.elapsed()));
    }
    let _: Result<i64, _> = bus.conn().del(&ret).await;

    let answered: BTreeSet<u32> = replies
        .iter()
        .filter_map(|r| bus::twin_of(&r.src))
        .collect();
    let unattributed = replies
        .iter()
        .filter(|r| bus::twin_of(&r.src).is_none_or(|t| !destinations.contains(&t)))
        .count();
    let mut unanswered: Vec<u32> = destinations.difference(&answered).copied().collect();
    // Errors from a relay or the local peer do not say which destination they are for;
    // each one accounts for one destination.
    unanswered.truncate(unanswered.len().saturating_sub(unattributed));
    Ok(Outcome {
        replies,
        unanswered,
    })
}

/// Waits (up to [`NO_PEER_WAIT`]) for a peer to take `request`; takes it back and fails
/// with [`NoPeer`] when none did.
async fn ensure_taken(bus: &Bus, request: &JsonOutgoingRequest) -> anyhow::Result<()> {
    let until = Instant::now() + NO_PEER_WAIT;
    while Instant::now() < until {
        if !bus.request_waiting(request).await? {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if bus.take_back_request(request).await? {
        return Err(NoPeer {
            url: bus.url().to_string(),
        }
        .into());
    }
    Ok(())
}

/// True for rmb-peer's "no response before the request expired" notice: a local error
/// (`src` empty) with [`TIMEOUT_CODE`]. rmb-rs peers send none; their local errors use
/// other codes.
pub fn is_expiry_notice(response: &JsonIncomingResponse) -> bool {
    response.src.is_empty()
        && response
            .err
            .as_ref()
            .is_some_and(|e| e.code == TIMEOUT_CODE)
}

fn decode_reply(response: JsonIncomingResponse, elapsed: Duration) -> Reply {
    let (body, error) = match (response.err, decode_dat(&response.dat)) {
        (Some(e), _) => (Vec::new(), Some(e)),
        (None, Ok(body)) => (body, None),
        (None, Err(e)) => (
            Vec::new(),
            Some(JsonError {
                code: 0,
                message: format!("response body is not valid base64: {e}"),
            }),
        ),
    };
    Reply {
        src: response.src,
        body,
        schema: response.shm,
        error,
        elapsed_ms: elapsed.as_millis() as u64,
    }
}

/// Who sent a reply, for people: `twin 7`, `a relay`, `the local peer`.
pub fn describe_src(src: &str) -> String {
    match src {
        "" => "the local peer".to_string(),
        "0" => "a relay".to_string(),
        other => format!("twin {other}"),
    }
}

/// Runs `rmb call`.
pub async fn run(args: CallArgs) -> anyhow::Result<ExitCode> {
    let body = match (&args.data, &args.data_file) {
        (Some(text), _) => text.clone().into_bytes(),
        (None, Some(path)) if path.as_os_str() == "-" => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("reading the body from standard input")?;
            buf
        }
        (None, Some(path)) => {
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))?
        }
        (None, None) => Vec::new(),
    };
    let bus = Bus::connect(&args.redis.redis).await?;
    let spec = CallSpec {
        dst: args.dst.clone(),
        cmd: args.cmd.clone(),
        body,
        schema: args.schema.clone(),
        tag: args.tag.clone(),
        timeout: Duration::from_secs(args.timeout),
    };
    let outcome = call(&bus, &spec).await?;
    print_outcome(&outcome, args.json, args.timeout, &args.cmd);
    Ok(exit_code(&outcome))
}

/// 0 all good, 1 an error came back, [`EXIT_TIMEOUT`] a destination stayed silent.
pub fn exit_code(outcome: &Outcome) -> ExitCode {
    if outcome.replies.iter().any(|r| r.error.is_some()) {
        ExitCode::FAILURE
    } else if !outcome.unanswered.is_empty() {
        ExitCode::from(EXIT_TIMEOUT)
    } else {
        ExitCode::SUCCESS
    }
}

/// What usually makes a destination stay silent, for the end of a timed-out call.
pub fn timeout_causes(cmd: &str) -> String {
    format!(
        "likely causes: no service reads msgbus.{cmd} on that twin (nothing serves '{cmd}' \
         there); its rmb-peer is not running or not connected to a relay (`rmb status` on \
         that machine); its relay cannot be reached from ours; or the service takes longer \
         than --timeout"
    )
}

fn print_outcome(outcome: &Outcome, json: bool, timeout: u64, cmd: &str) {
    for reply in &outcome.replies {
        if json {
            let body = match std::str::from_utf8(&reply.body) {
                Ok(text) => serde_json::json!({ "text": text }),
                Err(_) => serde_json::json!({ "base64": encode_dat(&reply.body) }),
            };
            let line = serde_json::json!({
                "src": reply.src,
                "twin": bus::twin_of(&reply.src),
                "ok": reply.error.is_none(),
                "body": body,
                "schema": reply.schema,
                "error": reply.error,
                "elapsed_ms": reply.elapsed_ms,
            });
            println!("{line}");
            continue;
        }
        let who = describe_src(&reply.src);
        match &reply.error {
            Some(e) => println!(
                "{who}: error {}: {} ({} ms)",
                e.code, e.message, reply.elapsed_ms
            ),
            None => {
                let text = String::from_utf8_lossy(&reply.body);
                println!("{who}: {text} ({} ms)", reply.elapsed_ms);
            }
        }
    }
    if json {
        let line = serde_json::json!({
            "done": true,
            "ok": outcome.success(),
            "unanswered": outcome.unanswered,
        });
        println!("{line}");
    } else {
        for twin in &outcome.unanswered {
            eprintln!("twin {twin}: no response within {timeout} s");
        }
        if !outcome.unanswered.is_empty() {
            eprintln!("{}", timeout_causes(cmd));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(src: &str, err: Option<(u32, &str)>) -> JsonIncomingResponse {
        JsonIncomingResponse {
            ver: VERSION,
            reference: None,
            dat: String::new(),
            src: src.into(),
            shm: None,
            now: 0,
            err: err.map(|(code, message)| JsonError {
                code,
                message: message.into(),
            }),
        }
    }

    #[test]
    fn only_the_peers_own_timeout_notice_means_no_answer() {
        let notice = response("", Some((TIMEOUT_CODE, "no response from twin 2")));
        assert!(is_expiry_notice(&notice));
        // A remote twin's own 102 (our request expired on arrival) is an answer.
        assert!(!is_expiry_notice(&response("2", Some((102, "expired")))));
        // rmb-rs's local "undeliverable" errors are answers too.
        assert!(!is_expiry_notice(&response(
            "",
            Some((103, "unknown twin"))
        )));
        assert!(!is_expiry_notice(&response("", None)));
    }

    #[test]
    fn exit_status_prefers_errors_over_silence() {
        let ok = Reply {
            src: "2".into(),
            body: b"x".to_vec(),
            schema: None,
            error: None,
            elapsed_ms: 1,
        };
        let failed = Reply {
            error: Some(JsonError {
                code: 1,
                message: "no".into(),
            }),
            ..ok.clone()
        };
        let outcome = |replies: Vec<Reply>, unanswered: Vec<u32>| Outcome {
            replies,
            unanswered,
        };
        assert_eq!(
            exit_code(&outcome(vec![ok.clone()], vec![])),
            ExitCode::SUCCESS
        );
        assert_eq!(
            exit_code(&outcome(vec![ok.clone()], vec![3])),
            ExitCode::from(EXIT_TIMEOUT)
        );
        assert_eq!(
            exit_code(&outcome(vec![ok, failed], vec![3])),
            ExitCode::FAILURE
        );
    }
}
