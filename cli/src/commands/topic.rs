//! `rmb topic create|list|show`, `rmb pub`, `rmb sub`, `rmb pull`: topics through the
//! local rmb-peer's HTTP API (`rmb-peer --http`), the msgbus/ntfy experience on the
//! encrypted bus. A topic is `<owner twin>/<name>`; a bare `<name>` is one of the local
//! twin's own topics.

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
    fn client(&self) -> Api {
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

    /// An HTTP client that sends the API token with every request, when a token file
    /// is given (a file that cannot be read is reported, and the API's 401 follows).
    pub fn http_client(&self) -> reqwest::Client {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(path) = &self.token_file {
            match std::fs::read_to_string(path) {
                Ok(token) => {
                    match reqwest::header::HeaderValue::from_str(&format!(
                        "Bearer {}",
                        token.trim()
                    )) {
                        Ok(mut value) => {
                            value.set_sensitive(true);
                            headers.insert(reqwest::header::AUTHORIZATION, value);
                        }
                        Err(_) => eprintln!(
                            "rmb: the token in {} is not valid header text",
                            path.display()
                        ),
                    }
                }
                Err(e) => eprintln!("rmb: cannot read the token file {}: {e}", path.display()),
            }
        }
        let mut builder = reqwest::Client::builder().default_headers(headers);
        if let Some(socket) = &self.socket {
            builder = builder.unix_socket(socket.as_path());
        }
        builder.build().unwrap_or_default()
    }
}

/// A client of the peer's HTTP API.
struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn url(&self, path: &str) -> String {
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
    /// The message; read from stdin when absent.
    pub message: Option<String>,
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

/// `rmb sub` and `rmb pull`.
#[derive(Args, Debug)]
pub struct ReadArgs {
    /// `<owner>/<name>`, or `<name>` for an own topic.
    pub topic: String,
    /// Start after this message id (0: from the oldest kept). `rmb sub` without it
    /// prints new messages only (a subscription resumes where it was).
    #[arg(long, value_name = "ID")]
    pub since: Option<u64>,
    /// Print each message as the API's JSON line instead of `<id> <message>`.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub http: HttpArgs,
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
            bytes
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
fn print_line(line: &str, json: bool, out: &mut impl Write) -> std::io::Result<()> {
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
    let url = api.url(&format!(
        "/topics/{topic}/json?poll=1&since={}",
        args.since.unwrap_or(0)
    ));
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

/// Runs `rmb sub`: prints messages as they come until Ctrl-C.
pub async fn run_sub(args: ReadArgs) -> anyhow::Result<ExitCode> {
    let api = args.http.client();
    let topic = api.topic(&args.topic).await?;
    let mut url = api.url(&format!("/topics/{topic}/json"));
    if let Some(since) = args.since {
        url.push_str(&format!("?since={since}"));
    }
    let mut response = api
        .http
        .get(url)
        .send()
        .await
        .with_context(|| format!("cannot reach {}", api.base))?;
    let status = response.status();
    if !status.is_success() {
        let v: Value = response.json().await.unwrap_or_default();
        bail!(
            "{} ({})",
            v["error"].as_str().unwrap_or("error"),
            status.as_u16()
        );
    }
    let mut pending = Vec::new();
    loop {
        let chunk = tokio::select! {
            chunk = response.chunk() => chunk.context("the stream broke")?,
            _ = crate::signals::stop_signal() => return Ok(ExitCode::SUCCESS),
        };
        let Some(chunk) = chunk else {
            eprintln!("the peer closed the stream");
            return Ok(ExitCode::FAILURE);
        };
        pending.extend_from_slice(&chunk);
        // Bounded: a line is one message (at most ~130 KiB as JSON).
        if pending.len() > 4 << 20 {
            bail!("the peer sent a line longer than 4 MiB");
        }
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            print_line(&line, args.json, &mut std::io::stdout().lock())?;
        }
    }
}
