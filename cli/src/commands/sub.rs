//! `rmb sub`: prints a topic's messages as they come, through the local rmb-peer's
//! live JSON stream, until Ctrl-C. When the peer goes away (restart, crash, a broken
//! connection) it reconnects by itself, with a capped backoff, and resumes after the
//! last message it printed: across a restart the user sees every message once, in
//! order. It gives up only after `--retry-for` seconds without the peer, or at once on
//! an answer that will not change (no such topic, not allowed, a bad `--since`).

use std::io::Write;
use std::pin::pin;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::Value;

use super::topic::{Api, HttpArgs, parse_since, print_line};

/// Default of `--retry-for`: seconds `rmb sub` keeps trying to reach a peer that went
/// away before it gives up.
pub const DEFAULT_RETRY_FOR_SECS: u64 = 300;

/// First wait before reconnecting; it doubles after each failed attempt up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// Longest wait between two attempts to reconnect.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Longest silence on a live stream before it is taken as broken (the peer sends a
/// keepalive every 25 s).
const SILENCE: Duration = Duration::from_secs(60);

/// How often, at most, `rmb sub` says again that it is still reconnecting.
const NOTE_EVERY: Duration = Duration::from_secs(30);

/// Longest line the stream may send (one message is at most ~130 KiB as JSON).
const MAX_LINE: usize = 4 << 20;

/// `rmb sub`.
#[derive(Args, Debug)]
pub struct SubArgs {
    /// `<owner>/<name>`, or `<name>` for an own topic.
    pub topic: String,
    /// Start after this: a message id (0 or all: from the oldest kept), latest (the
    /// newest kept message), a duration (30s, 10m, 2h, 1d) or a unix time. Without it,
    /// new messages only (a subscription resumes where it was).
    #[arg(long, value_name = "SINCE", value_parser = parse_since)]
    pub since: Option<String>,
    /// Print each message as the API's JSON line instead of `<id> <message>`.
    #[arg(long)]
    pub json: bool,
    /// Seconds to keep trying to reach the peer after it went away (a restart, a
    /// crash) before giving up with an error; 0: never give up.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_RETRY_FOR_SECS)]
    pub retry_for: u64,
    #[command(flatten)]
    pub http: HttpArgs,
}

/// How one connection to the stream ended.
enum Ended {
    /// The peer is away or the stream broke: try again.
    Away(String),
    /// An answer that trying again will not change.
    Refused(String),
    /// Standard output was closed (`rmb sub t | head -3`): nobody reads any more.
    OutputClosed,
}

/// What `rmb sub` has printed so far, and the state of its reconnecting.
struct Progress {
    /// The id the next connection resumes after: the last message (or gap) printed,
    /// or where the first stream started when nothing came yet.
    last: Option<u64>,
    /// When the peer went away (`None`: connected, or never was).
    away_since: Option<Instant>,
    /// When the user was last told about it.
    noted: Option<Instant>,
    /// A stream was open once (else the peer was never reached: a wrong `--http`, or
    /// a peer not started yet).
    connected: bool,
    backoff: Duration,
}

/// Runs `rmb sub`.
pub async fn run_sub(args: SubArgs) -> anyhow::Result<ExitCode> {
    let api = args.http.client();
    let mut stop = pin!(crate::signals::stop_signal());
    let mut progress = Progress {
        last: None,
        away_since: None,
        noted: None,
        connected: false,
        backoff: FIRST_BACKOFF,
    };
    let mut topic: Option<String> = None;
    loop {
        let ended = tokio::select! {
            ended = session(&api, &args, &mut topic, &mut progress) => ended,
            _ = &mut stop => return Ok(ExitCode::SUCCESS),
        };
        match ended {
            Ended::Refused(why) => {
                eprintln!("rmb: {why}");
                return Ok(ExitCode::FAILURE);
            }
            // As a shell reports a process ended by SIGPIPE.
            Ended::OutputClosed => return Ok(ExitCode::from(141)),
            Ended::Away(why) => {
                let now = Instant::now();
                let since = *progress.away_since.get_or_insert(now);
                let away = now - since;
                if args.retry_for > 0 && away >= Duration::from_secs(args.retry_for) {
                    eprintln!(
                        "rmb: giving up: the peer at {} has been unreachable for {} s ({why}); see --retry-for",
                        api.base,
                        away.as_secs()
                    );
                    return Ok(ExitCode::FAILURE);
                }
                let patience = match args.retry_for {
                    0 => String::new(),
                    secs => format!(" for up to {secs} s"),
                };
                match progress.noted {
                    None if !progress.connected => eprintln!(
                        "rmb: cannot reach the peer at {} ({why}; is rmb-peer running with --http?); trying again{patience}",
                        api.base
                    ),
                    None => eprintln!(
                        "rmb: lost the peer at {} ({why}); reconnecting{patience}",
                        api.base
                    ),
                    Some(t) if now - t >= NOTE_EVERY => eprintln!(
                        "rmb: still reconnecting to the peer at {} after {} s ({why})",
                        api.base,
                        away.as_secs()
                    ),
                    Some(_) => {}
                }
                if progress.noted.is_none_or(|t| now - t >= NOTE_EVERY) {
                    progress.noted = Some(now);
                }
                tokio::select! {
                    _ = tokio::time::sleep(progress.backoff) => {}
                    _ = &mut stop => return Ok(ExitCode::SUCCESS),
                }
                progress.backoff = (progress.backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// One connection: resolves the topic's name (once), opens the live stream after the
/// last printed id and prints what comes until it ends.
async fn session(
    api: &Api,
    args: &SubArgs,
    topic: &mut Option<String>,
    progress: &mut Progress,
) -> Ended {
    let name = match topic {
        Some(name) => name.clone(),
        None => match resolve_topic(api, &args.topic).await {
            Ok(name) => topic.insert(name).clone(),
            Err(ended) => return ended,
        },
    };
    let mut url = api.url(&format!("/topics/{name}/json"));
    match (progress.last, &args.since) {
        (Some(last), _) => url.push_str(&format!("?since={last}")),
        // Checked by `parse_since`: letters and digits only, nothing to escape.
        (None, Some(since)) => url.push_str(&format!("?since={since}")),
        (None, None) => {}
    }
    let mut response = match api.http.get(url).send().await {
        Ok(response) => response,
        Err(e) => return Ended::Away(short(&e)),
    };
    let status = response.status();
    if !status.is_success() {
        return refusal(status, response).await;
    }
    if progress.away_since.take().is_some() {
        match progress.last {
            Some(last) => eprintln!("rmb: reconnected; resuming after id {last}"),
            None => eprintln!("rmb: reconnected"),
        }
    }
    progress.noted = None;
    progress.connected = true;
    progress.backoff = FIRST_BACKOFF;
    let mut pending = Vec::new();
    loop {
        let chunk = match tokio::time::timeout(SILENCE, response.chunk()).await {
            Err(_) => return Ended::Away(format!("no word for {} s", SILENCE.as_secs())),
            Ok(Err(e)) => return Ended::Away(short(&e)),
            Ok(Ok(None)) => return Ended::Away("the peer closed the stream".into()),
            Ok(Ok(Some(chunk))) => chunk,
        };
        pending.extend_from_slice(&chunk);
        if pending.len() > MAX_LINE {
            return Ended::Refused(format!(
                "the peer sent a line longer than {} MiB",
                MAX_LINE >> 20
            ));
        }
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            match show(&line, args.json, progress) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                    return Ended::OutputClosed;
                }
                Err(e) => return Ended::Refused(format!("cannot write the output: {e}")),
            }
        }
    }
}

/// Prints a line of the stream unless it was printed before (a message or gap at or
/// below the last id), and moves the resume position past it.
fn show(line: &str, json: bool, progress: &mut Progress) -> std::io::Result<()> {
    let Ok(v) = serde_json::from_str::<Value>(line) else {
        return Ok(());
    };
    let id = match v["event"].as_str() {
        Some("open") => {
            if progress.last.is_none() {
                progress.last = v["since"].as_u64();
            }
            return Ok(());
        }
        Some("message") => v["id"].as_u64(),
        Some("gap") => v["to"].as_u64(),
        _ => None,
    };
    if let (Some(id), Some(last)) = (id, progress.last)
        && id <= last
    {
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    print_line(line, json, &mut out)?;
    out.flush()?;
    if let Some(id) = id {
        progress.last = Some(id);
    }
    Ok(())
}

/// `owner/name` for the argument (a bare name asks the peer which twin it is).
async fn resolve_topic(api: &Api, topic: &str) -> Result<String, Ended> {
    if topic.contains('/') {
        return Ok(topic.to_string());
    }
    let response = match api.http.get(api.url("/")).send().await {
        Ok(response) => response,
        Err(e) => return Err(Ended::Away(short(&e))),
    };
    let status = response.status();
    if !status.is_success() {
        return Err(refusal(status, response).await);
    }
    match response.json::<Value>().await {
        Ok(hello) => match hello["twin"].as_u64() {
            Some(twin) => Ok(format!("{twin}/{topic}")),
            None => Err(Ended::Refused("the peer did not say its twin".into())),
        },
        Err(e) => Err(Ended::Away(short(&e))),
    }
}

/// An error answer: a server error (the peer cannot reach the owner or its Redis
/// right now, or is busy) is worth trying again; a client error (no such topic, not
/// allowed, a bad token or `--since`) is not.
async fn refusal(status: reqwest::StatusCode, response: reqwest::Response) -> Ended {
    let body: Value = response.json().await.unwrap_or_default();
    let why = format!(
        "{} ({})",
        body["error"].as_str().unwrap_or("error"),
        status.as_u16()
    );
    let again = status.is_server_error()
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
    if again {
        Ended::Away(why)
    } else {
        Ended::Refused(why)
    }
}

/// Why a request or stream failed, in words for the user (hyper's own, such as
/// "unexpected EOF during chunk size line", say nothing to most).
fn short(e: &reqwest::Error) -> String {
    if e.is_connect() {
        "nothing answers there".into()
    } else if e.is_timeout() {
        "it did not answer in time".into()
    } else if e.is_body() || e.is_decode() {
        "the stream was cut".into()
    } else {
        "the connection broke".into()
    }
}
