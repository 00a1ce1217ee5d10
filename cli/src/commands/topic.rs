//! `rmb topic create|list|show`, `rmb pub`, `rmb pull` (and what `rmb sub`, in
//! [`super::sub`], shares with them): topics through the local rmb-peer's HTTP API
//! (`rmb-peer --http`), the msgbus/ntfy experience on the encrypted bus. A topic is
//! `<owner twin>/<name>`; a bare `<name>` is one of the local twin's own topics.

use std::io::{Read, Write};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

/// Where the local peer's HTTP API is.
#[derive(Args, Debug, Clone)]
pub struct HttpArgs {
    /// Base URL of the local rmb-peer's HTTP API (start the peer with `--http`).
    #[arg(
        long = "http",
        env = "RMB_HTTP",
        default_value = "http://127.0.0.1:8051",
        value_name = "URL"
    )]
    pub url: String,

    /// The peer's HTTP API token file (rmb-peer's `--http-token-file`), when the API
    /// requires one.
    #[arg(
        long = "http-token-file",
        env = "RMB_HTTP_TOKEN_FILE",
        value_name = "PATH"
    )]
    pub token_file: Option<std::path::PathBuf>,

    /// Reach the peer's HTTP API through its Unix socket (rmb-peer's `--http-socket`)
    /// instead of `--http`'s address; no token is needed there.
    #[arg(long = "http-socket", env = "RMB_HTTP_SOCKET", value_name = "PATH")]
    pub socket: Option<std::path::PathBuf>,
}

impl HttpArgs {
    pub(crate) fn client(&self) -> Api {
        Api {
            base: self.base(),
            http: self.http_client(),
        }
    }

    /// The base URL requests are made to (on the socket, any host name does).
    pub fn base(&self) -> String {
        match &self.socket {
            Some(_) => "http://localhost".to_string(),
            None => self.url.trim_end_matches('/').to_string(),
        }
    }

    /// The API token from `--http-token-file` (surrounding whitespace removed), if given.
    pub fn token(&self) -> anyhow::Result<Option<String>> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let token = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the token file {}", path.display()))?;
        Ok(Some(token.trim().to_string()))
    }

    /// An HTTP client that sends the API token with every request, when a token file
    /// is given (a file that cannot be read is reported, and the API's 401 follows).
    pub fn http_client(&self) -> reqwest::Client {
        let mut headers = reqwest::header::HeaderMap::new();
        match self.token() {
            Ok(Some(token)) => {
                match reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")) {
                    Ok(mut value) => {
                        value.set_sensitive(true);
                        headers.insert(reqwest::header::AUTHORIZATION, value);
                    }
                    Err(_) => eprintln!(
                        "rmb: the token in {} is not valid header text",
                        self.token_file
                            .as_deref()
                            .map(|p| p.display().to_string())
                            .unwrap_or_default()
                    ),
                }
            }
            Ok(None) => {}
            Err(e) => eprintln!("rmb: {e:#}"),
        }
        let mut builder = reqwest::Client::builder().default_headers(headers);
        if let Some(socket) = &self.socket {
            builder = builder.unix_socket(socket.as_path());
        }
        builder.build().unwrap_or_default()
    }
}

/// A client of the peer's HTTP API.
pub(crate) struct Api {
    pub(crate) base: String,
    pub(crate) http: reqwest::Client,
}

impl Api {
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The answer's JSON, or the API's error message.
    async fn json(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = request.send().await.with_context(|| {
            format!(
                "cannot reach the peer's HTTP API at {} (is rmb-peer running with --http?)",
                self.base
            )
        })?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .context("the peer's answer is not JSON")?;
        if !status.is_success() {
            bail!(
                "{} ({})",
                body["error"].as_str().unwrap_or("error"),
                status.as_u16()
            );
        }
        Ok(body)
    }

    async fn twin(&self) -> anyhow::Result<u64> {
        let hello = self.json(self.http.get(self.url("/"))).await?;
        hello["twin"]
            .as_u64()
            .context("the peer did not say its twin")
    }

    /// `owner/name` for a topic argument (`name` alone: an own topic).
    async fn topic(&self, topic: &str) -> anyhow::Result<String> {
        if topic.contains('/') {
            return Ok(topic.to_string());
        }
        Ok(format!("{}/{topic}", self.twin().await?))
    }
}

/// `rmb topic ...`.
#[derive(Args, Debug)]
pub struct TopicArgs {
    #[command(subcommand)]
    pub command: TopicCommand,
}

/// What `rmb topic` does.
#[derive(Subcommand, Debug)]
pub enum TopicCommand {
    /// Create an own topic, or change its access lists and retention.
    Create(CreateArgs),
    /// List own topics (with subscribers) and subscriptions.
    List(ListArgs),
    /// Show one topic: an own topic's settings and ids, or a subscription's position.
    Show(ShowArgs),
}

/// `rmb topic create`.
#[derive(Args, Debug)]
pub struct CreateArgs {
    /// The topic's name (letters, digits, '-', '_', '.'; at most 64).
    pub name: String,
    /// Who may publish: owner, anyone, or twin ids separated by commas.
    #[arg(long, default_value = "owner", value_name = "owner|anyone|IDS")]
    pub publish: String,
    /// Who may subscribe and pull: owner, anyone, or twin ids separated by commas.
    #[arg(long, default_value = "anyone", value_name = "owner|anyone|IDS")]
    pub subscribe: String,
    /// Newest messages kept.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub retention_count: u64,
    /// Seconds a message is kept (default a day).
    #[arg(long, default_value_t = 86400, value_name = "SECS")]
    pub retention_secs: u64,
    #[command(flatten)]
    pub http: HttpArgs,
}

/// `rmb topic list`.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// Print the API's JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub http: HttpArgs,
}

/// `rmb topic show`.
#[derive(Args, Debug)]
pub struct ShowArgs {
    /// `<owner>/<name>`, or `<name>` for an own topic.
    pub topic: String,
    #[command(flatten)]
    pub http: HttpArgs,
}

/// `rmb pub`.
#[derive(Args, Debug)]
pub struct PubArgs {
    /// `<owner>/<name>`, or `<name>` for an own topic.
    pub topic: String,
    /// The message; read from stdin when absent (one trailing newline, `\n` or `\r\n`,
    /// is dropped from text read there, as `echo` adds it).
    pub message: Option<String>,
    /// Send what stdin holds byte for byte, trailing newline included (for files;
    /// input that is not UTF-8 text is always sent as it is).
    #[arg(long)]
    pub raw: bool,
    /// A title (shown by apps).
    #[arg(long)]
    pub title: Option<String>,
    /// Priority, 1 (min) to 5 (max).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub priority: Option<u8>,
    /// Tags, separated by commas.
    #[arg(long, value_delimiter = ',')]
    pub tags: Vec<String>,
    #[command(flatten)]
    pub http: HttpArgs,
}

/// `rmb pull`.
#[derive(Args, Debug)]
pub struct ReadArgs {
    /// `<owner>/<name>`, or `<name>` for an own topic.
    pub topic: String,
    /// Messages after this: a message id (0 or all: from the oldest kept), latest (the
    /// newest kept), a duration (30s, 10m, 2h, 1d) or a unix time.
    #[arg(long, value_name = "SINCE", default_value = "all", value_parser = parse_since)]
    pub since: String,
    /// Print each message as the API's JSON line instead of `<id> <message>`.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub http: HttpArgs,
}

/// Checks a `--since` here, so a typo is told before anything is sent.
pub(crate) fn parse_since(text: &str) -> Result<String, String> {
    text.parse::<rmb_peer::topics::since::Since>()
        .map(|_| text.to_string())
        .map_err(|e| e.to_string())
}

/// What `rmb pub` sends of what stdin held: text loses one trailing newline (`\n` or
/// `\r\n`), as `echo` and editors add one; with `raw`, or input that is not UTF-8,
/// every byte is kept.
pub fn stdin_message(mut bytes: Vec<u8>, raw: bool) -> Vec<u8> {
    if raw || std::str::from_utf8(&bytes).is_err() {
        return bytes;
    }
    if bytes.ends_with(b"\r\n") {
        bytes.truncate(bytes.len() - 2);
    } else if bytes.ends_with(b"\n") {
        bytes.truncate(bytes.len() - 1);
    }
    bytes
}

fn access(text: &str) -> anyhow::Result<Value> {
    match text {
        "owner" | "anyone" => Ok(json!(text)),
        list => {
            let ids: Result<Vec<u32>, _> = list.split(',').map(|s| s.trim().parse()).collect();
            Ok(json!(ids.with_context(|| format!(
                "access is owner, anyone or twin ids separated by commas, not {list:?}"
            ))?))
        }
    }
}

/// Runs `rmb topic ...`.
pub async fn run(args: TopicArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        TopicCommand::Create(a) => {
            let api = a.http.client();
            let twin = api.twin().await?;
            let config = json!({
                "publish": access(&a.publish)?,
                "subscribe": access(&a.subscribe)?,
                "retention_count": a.retention_count,
                "retention_secs": a.retention_secs,
            });
            let info = api
                .json(
                    api.http
                        .put(api.url(&format!("/topics/{twin}/{}", a.name)))
                        .json(&config),
                )
                .await?;
            println!(
                "topic {} ready (last id {})",
                info["topic"].as_str().unwrap_or("?"),
                info["last_id"]
            );
        }
        TopicCommand::List(a) => {
            let api = a.http.client();
            let listing = api.json(api.http.get(api.url("/topics"))).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&listing)?);
            } else {
                print_listing(&listing);
            }
        }
        TopicCommand::Show(a) => {
            let api = a.http.client();
            let topic = api.topic(&a.topic).await?;
            let info = api
                .json(api.http.get(api.url(&format!("/topics/{topic}"))))
                .await?;
            println!("{}", serde_json::to_string_pretty(&info)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_listing(listing: &Value) {
    println!("twin {}", listing["twin"]);
    let empty = Vec::new();
    let topics = listing["topics"].as_array().unwrap_or(&empty);
    println!("own topics: {}", topics.len());
    for t in topics {
        let subs = t["subscribers"].as_array().map_or(0, Vec::len);
        println!(
            "  {:<30} ids {}..{}  subscribers {}  publish {}  subscribe {}",
            t["topic"].as_str().unwrap_or("?"),
            t["first_id"],
            t["last_id"],
            subs,
            t["config"]["publish"],
            t["config"]["subscribe"],
        );
    }
    let subs = listing["subscriptions"].as_array().unwrap_or(&empty);
    println!("subscriptions: {}", subs.len());
    for s in subs {
        println!(
            "  {:<30} last id {}",
            s["topic"].as_str().unwrap_or("?"),
            s["last_id"]
        );
    }
}

/// Runs `rmb pub`.
pub async fn run_pub(args: PubArgs) -> anyhow::Result<ExitCode> {
    let api = args.http.client();
    let topic = api.topic(&args.topic).await?;
    let body = match args.message {
        Some(text) => text.into_bytes(),
        None => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .context("reading the message from stdin")?;
            stdin_message(bytes, args.raw)
        }
    };
    let mut request = api
        .http
        .post(api.url(&format!("/topics/{topic}")))
        // The raw body is the message; a type outside the form types is what the API
        // asks of every POST (a web page cannot send it without asking first).
        .header("content-type", "application/octet-stream")
        .body(body);
    if let Some(title) = &args.title {
        request = request.header("X-Title", title);
    }
    if let Some(p) = args.priority {
        request = request.header("X-Priority", p.to_string());
    }
    if !args.tags.is_empty() {
        request = request.header("X-Tags", args.tags.join(","));
    }
    let answer = api.json(request).await?;
    println!("{}", answer["id"]);
    Ok(ExitCode::SUCCESS)
}

/// One message as `rmb sub`/`rmb pull` print it.
pub(crate) fn print_line(line: &str, json: bool, out: &mut impl Write) -> std::io::Result<()> {
    let Ok(v) = serde_json::from_str::<Value>(line) else {
        return Ok(());
    };
    match v["event"].as_str() {
        Some("message") if json => writeln!(out, "{line}"),
        Some("message") => writeln!(out, "{} {}", v["id"], v["message"].as_str().unwrap_or("")),
        Some("gap") if json => writeln!(out, "{line}"),
        Some("gap") => writeln!(
            out,
            "# messages {}..{} were lost to the owner's retention",
            v["from"], v["to"]
        ),
        Some("error") => writeln!(out, "# error: {}", v["error"].as_str().unwrap_or("?")),
        _ => Ok(()),
    }?;
    out.flush()
}

/// Runs `rmb pull`: what is stored after `--since`, then exits.
pub async fn run_pull(args: ReadArgs) -> anyhow::Result<ExitCode> {
    let api = args.http.client();
    let topic = api.topic(&args.topic).await?;
    // Checked by `parse_since`: letters and digits only, nothing to escape.
    let url = api.url(&format!("/topics/{topic}/json?poll=1&since={}", args.since));
    let response = api
        .http
        .get(url)
        .send()
        .await
        .with_context(|| format!("cannot reach {}", api.base))?;
    let status = response.status();
    let text = response.text().await?;
    if !status.is_success() {
        let v: Value = serde_json::from_str(&text).unwrap_or_default();
        bail!(
            "{} ({})",
            v["error"].as_str().unwrap_or(&text),
            status.as_u16()
        );
    }
    let mut out = std::io::stdout().lock();
    for line in text.lines() {
        print_line(line, args.json, &mut out)?;
    }
    Ok(ExitCode::SUCCESS)
}
