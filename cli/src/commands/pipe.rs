//! `rmb pipe listen` / `rmb pipe connect` / `rmb forward`: connections from the command
//! line, like netcat and dumbpipe. By default they go through the local rmb-peer's HTTP
//! API (its twin, keys and relays; see `rmb_peer::pipes`), so `rmb pipe connect` is the
//! whole of ssh's `ProxyCommand`:
//!
//! ```text
//! ssh -o ProxyCommand='rmb pipe connect --to 42 --protocol ssh' me@twin42
//! ```
//!
//! With `--relay` (and a secret and a registry) they run a direct client of their own
//! instead, for machines without a peer.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use rmb_peer::conn::{Cipher, ListenOptions, Stream};
use rmb_peer::pipes::client::LocalApi;
use rmb_peer::{Client, ClientOptions};
use rmb_proto::Address;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::args::{RegistryArgs, SecretArgs};
use crate::commands::topic::HttpArgs;

/// Whose connection a pipe or forward is: the local rmb-peer's (the default), or a
/// direct client's of its own (`--relay`).
#[derive(Args, Debug, Clone)]
pub struct DirectArgs {
    #[command(flatten)]
    pub peer: HttpArgs,

    #[command(flatten)]
    pub secret: SecretArgs,

    #[command(flatten)]
    pub registry: RegistryArgs,

    /// Run a direct client through this relay, ws:// or wss://, instead of going through
    /// the local rmb-peer (repeatable, at most 4; the first one connected is used, the
    /// others are for failover). Needs a secret and --registry.
    #[arg(long = "relay", value_name = "URL")]
    pub relays: Vec<String>,

    /// Direct client only: its session id; other twins reach a listener at TWIN:SID.
    /// Default: "pipe" for `pipe listen`, a random one otherwise.
    #[arg(long, value_name = "SID")]
    pub sid: Option<String>,

    /// Direct client only: do not publish this client's relays and encryption key in
    /// the registry (use it when an rmb-peer of the same twin owns the twin's entry).
    #[arg(long)]
    pub no_update: bool,

    /// Direct client only: ciphers of the connection, as rmb-peer's flag of the same
    /// name: offered in this order when connecting and the only ones allowed when
    /// listening; comma-separated, of aes-256-gcm and chacha20-poly1305. Default:
    /// aes-256-gcm first where the CPU has AES instructions, else chacha20-poly1305 first.
    #[arg(long = "conn-ciphers", value_name = "CIPHERS", value_delimiter = ',')]
    pub conn_ciphers: Vec<Cipher>,
}

impl DirectArgs {
    /// True when this runs its own client (`--relay`); otherwise the local peer serves.
    fn direct(&self) -> anyhow::Result<bool> {
        if !self.relays.is_empty() {
            return Ok(true);
        }
        let direct_only = [
            (self.secret.mnemonic.is_some(), "--mnemonic"),
            (self.secret.mnemonic_file.is_some(), "--mnemonic-file"),
            (self.sid.is_some(), "--sid"),
            (self.no_update, "--no-update"),
            (!self.conn_ciphers.is_empty(), "--conn-ciphers"),
        ];
        if let Some((_, flag)) = direct_only.iter().find(|(given, _)| *given) {
            bail!(
                "{flag} is for a direct client: add --relay URL (and --registry) to run one,                  or leave it out to go through the local rmb-peer"
            );
        }
        Ok(false)
    }

    /// The local peer's API, as `--http`/`--http-socket`/`--http-token-file` say.
    fn local(&self) -> anyhow::Result<LocalApi> {
        let token = self.peer.token()?;
        Ok(LocalApi::new(
            &self.peer.url,
            self.peer.socket.clone(),
            token,
        )?)
    }

    async fn client(&self, default_sid: &str) -> anyhow::Result<Client> {
        let choice = self
            .registry
            .choice()?
            .context("no registry given: use --registry URL or -s wss://<tfchain>")?;
        let sid = self.sid.clone().unwrap_or_else(|| default_sid.to_string());
        let mut options =
            ClientOptions::new(self.secret.secret()?, sid, self.relays.clone(), choice);
        options.key_type = self.secret.key_type;
        options.update_twin = !self.no_update;
        if !self.conn_ciphers.is_empty() {
            options.connections.ciphers = self.conn_ciphers.clone();
        }
        Ok(Client::connect(options).await?)
    }
}

/// Parses `TWIN` (an rmb-peer) or `TWIN:SID` (a direct client such as `pipe listen`).
pub fn parse_target(text: &str) -> Result<Address, String> {
    let (twin, sid) = match text.split_once(':') {
        Some((twin, sid)) => (twin, Some(sid)),
        None => (text, None),
    };
    let twin: u32 = twin
        .parse()
        .map_err(|_| format!("'{twin}' is not a twin id"))?;
    Ok(match sid {
        Some(sid) if !sid.is_empty() => Address::session(twin, sid),
        _ => Address::twin(twin),
    })
}

/// Parses a comma-separated twin list.
fn parse_twins(text: &str) -> Result<Vec<u32>, String> {
    text.split(',')
        .map(|t| {
            t.trim()
                .parse()
                .map_err(|_| format!("'{t}' is not a twin id"))
        })
        .collect()
}

/// Pipe stdin/stdout through a connection.
#[derive(Args, Debug)]
pub struct PipeArgs {
    #[command(subcommand)]
    pub command: PipeCommand,
}

/// `rmb pipe` subcommands.
#[derive(Subcommand, Debug)]
pub enum PipeCommand {
    /// Wait for one connection for PROTOCOL and pipe it to stdin/stdout.
    Listen(ListenArgs),
    /// Open a connection to a twin and pipe it to stdin/stdout (ssh ProxyCommand).
    Connect(ConnectArgs),
}

/// `rmb pipe listen`.
#[derive(Args, Debug)]
pub struct ListenArgs {
    /// Protocol name openers ask for.
    #[arg(long, value_name = "NAME")]
    pub protocol: String,

    /// Only these twins may connect (comma-separated; default: any twin).
    #[arg(long, value_name = "TWINS", value_parser = parse_twins)]
    pub allow: Option<Vec<u32>>,

    /// Serve connections one after another until stopped (SIGINT/SIGTERM), instead of
    /// exiting after the first; stdin goes to the first (later ones get its end).
    #[arg(long)]
    pub keep: bool,

    #[command(flatten)]
    pub client: DirectArgs,
}

/// `rmb pipe connect`.
#[derive(Args, Debug)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub target: TargetArgs,
}

/// Which twin and protocol a connection goes to, and as which client: what `rmb pipe
/// connect` and `rmb forward` share.
#[derive(Args, Debug)]
pub struct TargetArgs {
    /// The twin to connect to: TWIN for an rmb-peer (`--expose`, or `rmb pipe listen`
    /// through it), TWIN:SID for a direct client (`rmb pipe listen --relay …` listens as
    /// TWIN:pipe).
    #[arg(long, value_name = "TWIN[:SID]", value_parser = parse_target)]
    pub to: Address,

    /// Protocol name the other side listens for.
    #[arg(long, value_name = "NAME")]
    pub protocol: String,

    #[command(flatten)]
    pub client: DirectArgs,
}

/// Forward a local TCP port to a twin: each accepted TCP connection becomes one
/// connection for PROTOCOL (e.g. to an `rmb-peer --expose PROTOCOL=HOST:PORT`).
#[derive(Args, Debug)]
pub struct ForwardArgs {
    /// Local address to accept TCP connections on.
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: String,

    #[command(flatten)]
    pub target: TargetArgs,
}

/// Runs `rmb pipe …`.
pub async fn run(args: PipeArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        PipeCommand::Listen(args) => listen(args).await,
        PipeCommand::Connect(args) => connect(args).await,
    }
}

async fn listen(args: ListenArgs) -> anyhow::Result<ExitCode> {
    if !args.client.direct()? {
        return listen_via_peer(args).await;
    }
    let client = args.client.client("pipe").await?;
    let options = ListenOptions {
        allow: args.allow.map(|twins| twins.into_iter().collect()),
    };
    let mut listener = client.connections().listen(&args.protocol, options)?;
    announce(&args.protocol, &client.address().to_string());
    let mut stdio = Stdio::new();
    let mut code = ExitCode::SUCCESS;
    loop {
        let incoming = tokio::select! {
            incoming = listener.accept() => incoming,
            _ = crate::signals::stop_signal(), if args.keep => break,
        };
        let Some(stream) = incoming else {
            bail!("the client stopped before a connection came");
        };
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) if args.keep => {
                eprintln!("rmb: accepting a connection failed: {e}");
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        eprintln!("connected: {}", stream.remote());
        let served = pipe_stream(stream, &mut stdio).await;
        if !args.keep {
            code = served?;
            break;
        }
        if let Err(e) = served {
            eprintln!("rmb: {e:#}");
        }
    }
    drop(listener);
    client.connections().drain(LINGER_WAIT).await;
    client.shutdown().await;
    Ok(code)
}

fn announce(protocol: &str, address: &str) {
    eprintln!(
        "listening for '{protocol}': rmb pipe connect --to {address} --protocol {protocol} …"
    );
}

/// `rmb pipe listen` through the local peer: it listens as the peer's twin.
async fn listen_via_peer(args: ListenArgs) -> anyhow::Result<ExitCode> {
    let local = args.client.local()?;
    let allow = args.allow.clone().unwrap_or_default();
    let mut stdio = Stdio::new();
    loop {
        let mut listener = local.listen(&args.protocol, &allow, args.keep).await?;
        announce(&args.protocol, listener.address());
        loop {
            let opened = tokio::select! {
                opened = listener.next() => opened,
                _ = crate::signals::stop_signal(), if args.keep => return Ok(ExitCode::SUCCESS),
            };
            let Some(opened) = opened? else {
                bail!("the local rmb-peer ended the listener before a connection came");
            };
            eprintln!("connected: {}", opened.remote);
            let (result, in_step) = listener.serve(&mut stdio.input, &mut stdio.output).await;
            if !args.keep {
                result?;
                return Ok(ExitCode::SUCCESS);
            }
            if let Err(e) = result {
                eprintln!("rmb: {e}");
            }
            if !in_step {
                // Listen again on a fresh request.
                break;
            }
        }
    }
}

async fn connect(args: ConnectArgs) -> anyhow::Result<ExitCode> {
    let args = args.target;
    let mut stdio = Stdio::new();
    if !args.client.direct()? {
        let to = args.to.to_string();
        let pipe = args
            .client
            .local()?
            .open(&to, &args.protocol)
            .await
            .with_context(|| format!("connecting to {to} for '{}'", args.protocol))?;
        pipe.run(&mut stdio.input, &mut stdio.output).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let sid = format!("pipe-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let client = args.client.client(&sid).await?;
    let stream = client
        .connections()
        .connect_address(args.to.clone(), &args.protocol)
        .await
        .with_context(|| format!("connecting to {} for '{}'", args.to, args.protocol))?;
    let code = pipe_stream(stream, &mut stdio).await;
    client.connections().drain(LINGER_WAIT).await;
    client.shutdown().await;
    code
}

/// Longest wait, once both directions ended, for the far side to acknowledge the last of
/// what was sent.
const FINISH_WAIT: Duration = Duration::from_secs(30);

/// Longest wait for a closed connection to linger (acknowledging the far side's end)
/// before the process exits; a connection lingers 2 s.
const LINGER_WAIT: Duration = Duration::from_secs(5);

/// Bytes per read of stdin and per write of stdout: tokio hands each one to a blocking
/// thread, so small ones cost more in hand-offs than in copying.
const STDIO_CHUNK: usize = 256 * 1024;

/// stdin and stdout, kept across the connections of `listen --keep` (a read abandoned
/// when one connection ends is not lost: the next one gets its bytes).
struct Stdio {
    input: tokio::io::BufReader<tokio::io::Stdin>,
    output: tokio::io::Stdout,
}

impl Stdio {
    fn new() -> Stdio {
        Stdio {
            input: tokio::io::BufReader::with_capacity(STDIO_CHUNK, tokio::io::stdin()),
            output: tokio::io::stdout(),
        }
    }
}

/// Pipes stdin → stream and stream → stdout, each direction on its own, as netcat and
/// dumbpipe do: stdin's end half-closes the stream (the far side reads EOF), the far
/// side's half-close ends stdout, and neither end stops the other direction. Exits 0
/// only when both directions ended cleanly and the far side acknowledged everything
/// sent; a reset, a lost far side or a write error is an error with its reason (exit 1).
async fn pipe_stream(stream: Stream, stdio: &mut Stdio) -> anyhow::Result<ExitCode> {
    let (mut from, mut to) = tokio::io::split(stream);
    let moved = {
        let input = &mut stdio.input;
        let output = &mut stdio.output;
        let upload = async {
            tokio::io::copy_buf(input, &mut to)
                .await
                .context("sending stdin")?;
            to.shutdown().await.context("ending the upload")?;
            Ok::<_, anyhow::Error>(())
        };
        let download = async {
            let mut from = tokio::io::BufReader::with_capacity(STDIO_CHUNK, &mut from);
            tokio::io::copy_buf(&mut from, output)
                .await
                .context("receiving")?;
            output.flush().await.context("writing stdout")?;
            Ok::<_, anyhow::Error>(())
        };
        tokio::pin!(upload, download);
        let (mut uploaded, mut downloaded) = (false, false);
        loop {
            if uploaded && downloaded {
                break Ok(());
            }
            tokio::select! {
                result = &mut upload, if !uploaded => match result {
                    Ok(()) => uploaded = true,
                    Err(e) => break Err(e),
                },
                result = &mut download, if !downloaded => match result {
                    Ok(()) => downloaded = true,
                    Err(e) => break Err(e),
                },
            }
        }
    };
    let mut stream = from.unsplit(to);
    if let Err(e) = moved {
        // The far side must read a failure, not an end.
        stream.abort();
        return Err(e);
    }
    match tokio::time::timeout(FINISH_WAIT, stream.finish()).await {
        Ok(Ok(())) => {
            // Closed both ways: the connection lingers to acknowledge the far side's end
            // (which it may be waiting for) before the client goes.
            drop(stream);
            Ok(ExitCode::SUCCESS)
        }
        Ok(Err(e)) => Err(e).context("the far side did not take everything sent"),
        Err(_) => bail!(
            "the far side did not acknowledge the end of what was sent within {} s",
            FINISH_WAIT.as_secs()
        ),
    }
}

/// Runs `rmb forward`.
pub async fn forward(args: ForwardArgs) -> anyhow::Result<ExitCode> {
    let listen = args.listen;
    let args = args.target;
    let via = if args.client.direct()? {
        let sid = format!("fwd-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        Via::Direct(args.client.client(&sid).await?)
    } else {
        Via::Peer(args.client.local()?)
    };
    let tcp = TcpListener::bind(&listen)
        .await
        .with_context(|| format!("listening on {}", listen))?;
    eprintln!(
        "forwarding {} to {} ('{}')",
        tcp.local_addr()?,
        args.to,
        args.protocol
    );
    let tasks = tokio_util::task::TaskTracker::new();
    loop {
        let (socket, peer) = tokio::select! {
            accepted = tcp.accept() => accepted?,
            _ = crate::signals::stop_signal() => break,
        };
        let _ = socket.set_nodelay(true);
        let (to, protocol) = (args.to.clone(), args.protocol.clone());
        match &via {
            Via::Direct(client) => {
                let connections = client.connections().clone();
                tasks.spawn(async move {
                    match connections.connect_address(to, &protocol).await {
                        Ok(stream) => copy_both(stream, socket).await,
                        Err(e) => tracing::warn!(%peer, error = %e, "could not open a connection"),
                    }
                });
            }
            Via::Peer(local) => {
                let local = local.clone();
                tasks.spawn(async move {
                    let to = to.to_string();
                    match local.open(&to, &protocol).await {
                        Ok(pipe) => {
                            let (mut read, mut write) = socket.into_split();
                            if let Err(e) = pipe.run(&mut read, &mut write).await {
                                tracing::debug!(%peer, error = %e, "forwarded connection failed");
                            }
                        }
                        Err(e) => tracing::warn!(%peer, error = %e, "could not open a connection"),
                    }
                });
            }
        }
    }
    tasks.close();
    if let Via::Direct(client) = via {
        client.shutdown().await;
    }
    tasks.wait().await;
    Ok(ExitCode::SUCCESS)
}

/// How `rmb forward` opens its connections.
enum Via {
    /// Its own client (`--relay`).
    Direct(Client),
    /// The local rmb-peer.
    Peer(LocalApi),
}

async fn copy_both(mut stream: Stream, mut socket: impl AsyncRead + AsyncWrite + Unpin) {
    if let Err(e) = tokio::io::copy_bidirectional(&mut stream, &mut socket).await {
        tracing::debug!(error = %e, "forwarded connection ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    #[test]
    fn targets_name_a_twin_or_a_session() {
        assert_eq!(parse_target("7"), Ok(Address::twin(7)));
        assert_eq!(parse_target("7:pipe"), Ok(Address::session(7, "pipe")));
        assert_eq!(parse_target("7:"), Ok(Address::twin(7)));
        assert!(parse_target("x:pipe").is_err());
        assert_eq!(parse_twins("7, 9"), Ok(vec![7, 9]));
        assert!(parse_twins("7,x").is_err());
    }

    /// `rmb forward` with what it needs but a relay.
    const FORWARD: [&str; 8] = [
        "rmb",
        "forward",
        "--listen",
        "127.0.0.1:1",
        "--to",
        "1",
        "--protocol",
        "p",
    ];

    #[test]
    fn pipe_and_forward_parse() {
        let cli = Cli::parse_from([
            "rmb",
            "pipe",
            "connect",
            "--to",
            "42",
            "--protocol",
            "ssh",
            "--relay",
            "ws://r",
            "--registry",
            "http://r",
        ]);
        let Command::Pipe(PipeArgs {
            command: PipeCommand::Connect(args),
        }) = cli.command
        else {
            panic!("not pipe connect")
        };
        assert_eq!(
            (args.target.to, args.target.protocol.as_str()),
            (Address::twin(42), "ssh")
        );
        assert!(
            args.target.client.conn_ciphers.is_empty(),
            "the default unless asked"
        );
        let cli = Cli::parse_from(
            FORWARD
                .iter()
                .chain(&["--relay", "ws://r"])
                .chain(&["--conn-ciphers", "chacha20-poly1305, aes-256-gcm"]),
        );
        let Command::Forward(args) = cli.command else {
            panic!("not forward")
        };
        assert_eq!(
            args.target.client.conn_ciphers,
            [Cipher::ChaCha20Poly1305, Cipher::Aes256Gcm]
        );
        let err = Cli::try_parse_from([
            "rmb",
            "pipe",
            "listen",
            "--protocol",
            "p",
            "--relay",
            "ws://r",
            "--conn-ciphers",
            "des",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown cipher"), "{err}");
        // Without a relay, the local peer serves; a direct client's flags then say so.
        let Command::Forward(args) = Cli::parse_from(FORWARD).command else {
            panic!("not forward")
        };
        assert!(!args.target.client.direct().unwrap());
        let Command::Forward(args) = Cli::parse_from(FORWARD.iter().chain(&["-m", "w"])).command
        else {
            panic!("not forward")
        };
        let err = args.target.client.direct().unwrap_err().to_string();
        assert!(err.contains("--mnemonic is for a direct client"), "{err}");
    }
}
