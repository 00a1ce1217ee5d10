//! `rmb-peer`: one twin's gateway to the Reliable Message Bus, serving the rmb-rs
//! compatible Redis JSON API to local apps. Takes rmb-rs's flags; see `--help`. Every
//! flag can also come from a TOML file given with `--config` (rmb-config).

/// mimalloc: glibc malloc cost a busy peer or relay about a tenth of its CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use rmb_identity::registry::cache::{DEFAULT_CAPACITY, DEFAULT_TTL};
use rmb_identity::registry::{CachedRegistry, Registry, RegistryChoice, RegistryError, connect};
use rmb_identity::{E2eScheme, Identity, KeyType};
use rmb_peer::conn::expose::{Bridges, Expose, filter_inbound};
use rmb_peer::conn::{Cipher, ConnConfig, Connections};
use rmb_peer::core::{MemoryReplayStore, Peer, PeerConfig, PeerError, replay};
use rmb_peer::http_api::listener::ConnOptions;
use rmb_peer::http_api::metrics::MetricsServer;
use rmb_peer::http_api::{HttpApi, HttpOptions};
use rmb_peer::redis_api::{Limits, RedisApi};
use rmb_peer::topics::leases::LeaseSettings;
use rmb_peer::topics::{Topics, TopicsOptions};

/// The chain rmb-rs's peer uses when no registry is given.
const DEFAULT_SUBSTRATE: &str = "wss://tfchain.grid.tf:443";
/// Largest `--max-lifetime` accepted (a year).
const MAX_LIFETIME_CAP: u64 = 365 * 24 * 3600;
/// How long shutdown waits for Redis to take the last writes.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// One twin's gateway to the Reliable Message Bus.
///
/// Local apps talk to it through Redis exactly as with rmb-rs's rmb-peer: clients push
/// requests to `msgbus.system.local` and read responses from their own `ret` list;
/// services read `msgbus.<command>` and push replies to `msgbus.system.reply`. The peer
/// signs, encrypts and routes them through the given relays. Its status is kept in the
/// key `msgbus.system.status` (read by `rmb status`).
#[derive(Parser, Debug)]
#[command(name = "rmb-peer", version = rmb_peer::VERSION)]
struct Args {
    /// The twin's secret: mnemonic words, or a hex seed with a `0x` prefix (a Substrate
    /// derivation path like `//Alice` may follow). Prefer --mnemonic-file or the
    /// RMB_MNEMONIC variable: command lines are visible to every local user in `ps`.
    #[arg(short = 'm', long = "mnemonic", visible_aliases = ["mnemonics", "seed"], env = "RMB_MNEMONIC",
          hide_env_values = true, value_name = "WORDS|0xSEED")]
    mnemonic: Option<String>,

    /// Read the secret (as for --mnemonic) from this file instead; surrounding
    /// whitespace is ignored. Takes precedence over --mnemonic and RMB_MNEMONIC.
    #[arg(long, value_name = "PATH")]
    mnemonic_file: Option<PathBuf>,

    /// Signing key type the secret is used with (it decides the twin's account).
    #[arg(
        short = 'k',
        long = "key-type",
        default_value = "sr25519",
        value_name = "sr25519|ed25519"
    )]
    key_type: KeyType,

    /// The local Redis the apps use. RMB_REDIS is read by `rmb status`, `rmb call` and
    /// `rmb serve` too, so one variable points a container's peer and its health check
    /// at the same Redis.
    #[arg(
        short = 'r',
        long,
        env = "RMB_REDIS",
        default_value = "redis://localhost:6379",
        value_name = "URL"
    )]
    redis: String,

    /// Relay to connect to, ws:// or wss:// (repeatable, at most 4). Outgoing messages go
    /// through any connected one; the twin's registry entry lists all of them.
    #[arg(
        long = "relay",
        value_name = "URL",
        default_value = "wss://relay.grid.tf:443"
    )]
    relays: Vec<String>,

    /// PEM file of a certificate authority to trust for wss:// relays and https://
    /// registries (repeatable), e.g. a private CA. Always trusted as well: the built-in
    /// web roots and the system's trust store, or instead of that store the files named
    /// by SSL_CERT_FILE and SSL_CERT_DIR when set.
    #[arg(long, value_name = "FILE")]
    relay_ca: Vec<PathBuf>,

    /// Bridge incoming connections for PROTOCOL to a local TCP service:
    /// `PROTOCOL=HOST:PORT`, optionally `,allow=TWIN,TWIN…` to name the only twins that
    /// may open it (repeatable; default: none, and opens are refused as unknown
    /// protocols). E.g. `--expose ssh=127.0.0.1:22,allow=7` lets twin 7 reach this
    /// machine's sshd with `rmb pipe connect --to <this twin> --protocol ssh`.
    #[arg(long = "expose", value_name = "PROTOCOL=HOST:PORT[,allow=TWINS]")]
    expose: Vec<Expose>,

    /// Ciphers of connections, offered in this order when opening and the
    /// only ones allowed when accepting: comma-separated, of aes-256-gcm and
    /// chacha20-poly1305. Default: aes-256-gcm first where the CPU has AES
    /// instructions, else chacha20-poly1305 first.
    #[arg(long = "conn-ciphers", value_name = "CIPHERS", value_delimiter = ',')]
    conn_ciphers: Vec<Cipher>,

    /// tfchain RPC URL(s) to look twins up, tried in turn (repeatable). Defaults to
    /// wss://tfchain.grid.tf:443 unless --registry is given.
    #[arg(short = 's', long = "substrate", value_name = "URL")]
    substrate: Vec<String>,

    /// Base URL of an embedded twin registry (hosted by an rmb-relay) to use instead of
    /// tfchain, e.g. http://relay.example:8080.
    #[arg(long, value_name = "URL", conflicts_with = "substrate")]
    registry: Option<String>,

    /// Encryption key to publish, which decides who can write to this twin. secp256k1
    /// (rmb-rs scheme): rmb-rs peers, ThreeFold's SDKs and rmb peers publishing
    /// secp256k1 can. x25519 (modern): only rmb peers can; rmb-rs peers and the SDKs
    /// cannot read a 32-byte key. Default: secp256k1 on tfchain (-s), x25519 on an
    /// embedded registry (--registry); without this flag a secp256k1 key already
    /// published is never replaced.
    #[arg(long, value_name = "x25519|secp256k1")]
    e2e: Option<E2eScheme>,

    /// Session id to connect with. rmb-peer normally has none (as rmb-rs): two peers of
    /// one twin without session ids displace each other on a relay.
    #[arg(long, value_name = "SID")]
    sid: Option<String>,

    /// Accepted for rmb-rs compatibility and unused (rmb-rs's upload plugin is disabled).
    #[arg(short = 'u', long, value_name = "PATH")]
    uploads: Option<PathBuf>,

    /// Do not publish the relay list and encryption key to the registry (debugging).
    #[arg(long)]
    no_update: bool,

    /// Deliver at most once, as rmb-rs does: no resending of unanswered requests, no
    /// reply cache, no crash-safe bookkeeping in Redis. Faster, but a relay or peer
    /// crash loses messages. For comparison and benchmarks.
    #[arg(long)]
    at_most_once: bool,

    /// How long, in seconds, a destination twin's signed answer to "do you run rmb?" is
    /// believed. Twins that proved it get timed resends of unanswered requests; others
    /// (rmb-rs peers run a repeated request again) only after a relay link reconnects.
    /// A twin that switches implementation is seen at most this much later.
    #[arg(long, value_name = "SECS",
          default_value_t = rmb_peer::core::rmb_twins::DEFAULT_TTL.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    rmb_twin_ttl: u64,

    /// Most destination twins whose answer to "do you run rmb?" is remembered, the
    /// oldest forgotten first. 0 asks none: only twins publishing an x25519 key then
    /// get timed resends.
    #[arg(long, value_name = "N", default_value_t = rmb_peer::core::rmb_twins::DEFAULT_MAX)]
    rmb_twins: usize,

    /// Sign every request and answer, as rmb-rs does. By default requests to rmb peers
    /// that take them (they say so when asked, see --rmb-twins; 0 turns that off too),
    /// and answers to peers that sent such requests, go without a signature: their
    /// end-to-end encryption authenticates them, binding every envelope field, at a
    /// fraction of the CPU (docs/protocol.md §3.4). With this flag the peer also stops
    /// offering them; it still accepts those that arrive.
    #[arg(long)]
    no_unsigned_rpc: bool,

    /// Memory for replies kept to answer repeated requests again, in MiB. Past it, the
    /// replies kept in Redis (`msgbus.seen.*`) answer instead.
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    reply_cache_mb: usize,

    /// Longest lifetime, in seconds, of an envelope this peer accepts: one whose deadline
    /// (timestamp + expiration) is further ahead is refused with an error envelope
    /// (code 102). Senders' expirations are at most 1800 s (rmb-rs), so the default of a
    /// day leaves room for clock skew while keeping every time-derived value (Redis key
    /// TTLs, timers) sane. At most a year.
    #[arg(long, value_name = "SECS", default_value_t = rmb_proto::DEFAULT_MAX_LIFETIME_SECS,
          value_parser = clap::value_parser!(u64).range(1..=MAX_LIFETIME_CAP))]
    max_lifetime: u64,

    /// Most bytes one service queue (`msgbus.<cmd>`) may hold, in MiB. Other twins
    /// choose what lands there; past it their requests for that command get an error
    /// reply until the service catches up.
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    max_command_queue_mb: u64,

    /// Most commands that may have requests waiting at once. Each new command name a
    /// twin sends creates a `msgbus.<cmd>` list; past this many a request for yet
    /// another command gets an error reply (lists expire with their requests).
    #[arg(long, value_name = "N", default_value_t = rmb_peer::redis_api::DEFAULT_COMMANDS)]
    max_commands: u64,

    /// Longest wait, in milliseconds, that requests queued for an overloaded service
    /// may have: once the oldest request in a `msgbus.<cmd>` list has waited longer than
    /// this for a whole --queue-wait-interval-ms, new requests for that command are
    /// refused with an error (code 500, reason `overloaded`) while it still has, so the
    /// service works on fresh requests and the excess hears so at once, not at its
    /// expiry. 0 turns this off (requests that would start after their deadline are
    /// still refused at once, reason `late`).
    #[arg(long, value_name = "MS", default_value_t = 500)]
    queue_wait_target_ms: u64,

    /// How long, in milliseconds, the oldest request of a list must have waited longer
    /// than --queue-wait-target-ms before new ones are refused: a burst its service
    /// works off within this is queued in full.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    queue_wait_interval_ms: u64,

    /// Serve the local HTTP API (topics: publish, pull, live JSON/SSE/WebSocket
    /// streams, create/configure; `POST /call`) on this address, e.g. 127.0.0.1:8051.
    /// Off by default. It acts as this twin: keep it on loopback. Web pages in a
    /// browser on this machine are refused by Host and Origin checks (docs/topics.md).
    #[arg(long, value_name = "ADDR:PORT")]
    http: Option<std::net::SocketAddr>,

    /// Also serve the HTTP API on this Unix socket (mode 0600: only this user). No
    /// browser can reach a socket, so requests on it skip the Host, Origin and token
    /// checks.
    #[arg(long, value_name = "PATH")]
    http_socket: Option<PathBuf>,

    /// Require `Authorization: Bearer <token>` on every TCP request of the HTTP API;
    /// the token is read from this file, which is created with a random token (mode
    /// 0600) when missing. `rmb` commands read it from the same file
    /// (`--http-token-file` or RMB_HTTP_TOKEN_FILE).
    #[arg(long, value_name = "PATH")]
    http_token_file: Option<PathBuf>,

    /// A host name the HTTP API answers to besides IP addresses and `localhost`
    /// (repeatable). Requests naming any other host are refused: that is how a web
    /// page rebinding its own name to this machine is kept out.
    #[arg(long = "http-host", value_name = "NAME")]
    http_hosts: Vec<String>,

    /// A web origin (`https://app.example:8443`) allowed to use the HTTP API from a
    /// browser (repeatable; answered with CORS headers). Every other origin is refused.
    #[arg(long = "http-allow-origin", value_name = "ORIGIN")]
    http_origins: Vec<String>,

    /// Serve Prometheus metrics at GET /metrics on this address, e.g. 127.0.0.1:9151
    /// (relay links, messages, refusals by reason, resends, request round trips). Off
    /// by default. Keep it on loopback or a monitoring network; names other than IP
    /// addresses, `localhost` and --http-host are refused, as are web pages.
    #[arg(long, value_name = "ADDR:PORT")]
    metrics_listen: Option<std::net::SocketAddr>,

    /// Most connections the HTTP API holds open at once (TCP and socket together, live
    /// streams included); past it new ones are closed at once.
    #[arg(long, value_name = "N", default_value_t = rmb_peer::http_api::DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    http_max_connections: u32,

    /// Seconds a connection of the HTTP API may take to send a request's headers; also
    /// how long an idle keep-alive connection stays open.
    #[arg(long, value_name = "SECS", default_value_t = rmb_peer::http_api::DEFAULT_HEADER_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    http_header_timeout: u64,

    /// Seconds a request body of the HTTP API may take to arrive (answered 408 after).
    #[arg(long, value_name = "SECS", default_value_t = rmb_peer::http_api::DEFAULT_BODY_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    http_body_timeout: u64,

    /// Seconds a client of the HTTP API may leave an answer or live stream unread before
    /// it is disconnected (a live stream resumes with `?since=`).
    #[arg(long, value_name = "SECS", default_value_t = rmb_peer::http_api::DEFAULT_STALL_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    http_stall_timeout: u64,

    /// How often subscriptions to other twins' topics are renewed with their owners, in
    /// seconds (more often for an owner whose lease is shorter than three of these); a
    /// renewal also finds messages whose push was lost.
    #[arg(long, value_name = "SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    topic_renew: u64,

    /// How long after handing topic messages to local apps (subscriptions without a
    /// Redis list) their records (position, local copy) are written to Redis, many at
    /// a time, in milliseconds. After a crash what was not recorded is pulled from the
    /// owner again. Subscriptions with a Redis list record before handing over.
    #[arg(long, value_name = "MS", default_value_t = rmb_peer::topics::DEFAULT_RECORD_DELAY_MS,
          value_parser = clap::value_parser!(u64).range(0..=60_000))]
    topic_record_delay: u64,

    /// Let this twin's own apps create a topic by publishing to it: a publish through
    /// the local HTTP API to an own topic that does not exist creates it with the
    /// default settings (only the owner publishes, anyone subscribes, 1000 messages
    /// for a day). Off by default: a typo in a name is then an error. Other twins can
    /// never create a topic by publishing.
    #[arg(long)]
    topic_auto_create: bool,

    /// Most subscribers of one own topic; more are refused (503) until some leave.
    #[arg(long, value_name = "N", default_value_t = rmb_peer::topics::owner::MAX_SUBSCRIBERS as u64,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    topic_max_subscribers: u64,

    /// Seconds a subscription to an own topic lasts unless its subscriber renews it.
    /// Subscribers are told, and renew at least three times per lease (rmb-peer every
    /// --topic-renew seconds otherwise).
    #[arg(long, value_name = "SECS", default_value_t = rmb_peer::topics::leases::DEFAULT_LEASE_SECS,
          value_parser = clap::value_parser!(u64).range(2..=86_400))]
    topic_lease: u64,

    /// A subscriber of an own topic that left this many pushes unacknowledged, the
    /// oldest for --topic-unanswered-secs, is dropped (it subscribes again when it
    /// renews). 0: never.
    #[arg(long, value_name = "N", default_value_t = rmb_peer::topics::leases::DEFAULT_UNANSWERED_PUSHES)]
    topic_unanswered: u32,

    /// See --topic-unanswered.
    #[arg(long, value_name = "SECS", default_value_t = rmb_peer::topics::leases::DEFAULT_UNANSWERED_SECS)]
    topic_unanswered_secs: u64,

    /// New subscribers of own topics admitted per --topic-new-window from twins
    /// registered on one relay (a twin listing several relays counts on each); more are
    /// refused (429) until the window ends. 0: no limit.
    #[arg(long, value_name = "N", default_value_t = rmb_peer::topics::leases::DEFAULT_NEW_PER_RELAY)]
    topic_new_per_relay: u32,

    /// New subscribers of own topics admitted per --topic-new-window in all. 0: no limit.
    #[arg(long, value_name = "N", default_value_t = rmb_peer::topics::leases::DEFAULT_NEW_TOTAL)]
    topic_new_total: u32,

    /// Seconds of the window of --topic-new-per-relay and --topic-new-total.
    #[arg(long, value_name = "SECS", default_value_t = rmb_peer::topics::leases::DEFAULT_NEW_WINDOW_SECS,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    topic_new_window: u64,

    /// Threads that run the peer's links, APIs and topics. 0: one per CPU core (or
    /// TOKIO_WORKER_THREADS when set). Fewer suits a machine shared with other busy
    /// services (threads waking each other for every message cost CPU there).
    #[arg(long, default_value_t = 0, value_name = "N", value_parser = clap::value_parser!(u16).range(0..=1024))]
    threads: u16,

    /// More logging: -d debug, -dd trace. RUST_LOG overrides.
    #[arg(short = 'd', long = "debug", action = clap::ArgAction::Count)]
    debug: u8,
}

/// How often freed memory is handed back to the operating system.
const GIVE_BACK_EVERY: Duration = Duration::from_secs(5);

/// Hands memory the peer freed back to the operating system, every [`GIVE_BACK_EVERY`].
/// mimalloc keeps freed pages for reuse and returns them only when the thread that owns
/// them allocates again, so after a burst (live streams of large messages dropped as
/// slow consumers, a flood of requests) an otherwise idle peer kept its peak size; a
/// forced collection (well under a millisecond here) returns them.
async fn give_back_memory() {
    let mut tick = tokio::time::interval(GIVE_BACK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // SAFETY: mi_collect takes no pointers; it only walks mimalloc's own heaps.
        let collect = || unsafe { libmimalloc_sys::mi_collect(true) };
        if tokio::task::spawn_blocking(collect).await.is_err() {
            return;
        }
    }
}

/// First and longest wait between attempts to reach the twin registry at start.
const REGISTRY_RETRY: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(10));

/// Starts the peer core, waiting out a twin registry that cannot be reached yet (as the
/// links wait out an unreachable relay): retried with backoff until it answers, or
/// `None` when a stop signal comes first. Any other refusal (no twin for this account,
/// a bad relay URL) is an error at once.
async fn start_peer(
    config: PeerConfig,
    replay: Arc<MemoryReplayStore>,
) -> anyhow::Result<Option<(Peer, tokio::sync::mpsc::Receiver<rmb_peer::core::Inbound>)>> {
    let (mut wait, longest) = REGISTRY_RETRY;
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        match Peer::start_with_replay_store(config.clone(), replay.clone()).await {
            Err(PeerError::Registry(RegistryError::Unavailable(e))) => {
                tracing::warn!(error = %e, retry_in = ?wait, "the twin registry cannot be reached yet; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = &mut stop => return Ok(None),
                }
                wait = (wait * 2).min(longest);
            }
            started => return Ok(Some(started?)),
        }
    }
}

/// The HTTP API's options from the flags (reading or creating the token file).
fn http_options(args: &Args) -> Result<HttpOptions, rmb_peer::http_api::HttpApiError> {
    let token = args
        .http_token_file
        .as_deref()
        .map(rmb_peer::http_api::load_or_create_token)
        .transpose()?;
    Ok(HttpOptions {
        listen: args.http,
        socket: args.http_socket.clone(),
        hosts: args.http_hosts.clone(),
        origins: args.http_origins.clone(),
        token,
        conn: ConnOptions {
            max_connections: args.http_max_connections as usize,
            header_timeout: Duration::from_secs(args.http_header_timeout),
            stall_timeout: Duration::from_secs(args.http_stall_timeout),
        },
        body_timeout: Duration::from_secs(args.http_body_timeout),
    })
}

/// Settings that hold secrets (the twin's mnemonic or seed; a Redis URL may hold a
/// password): a config file setting one should be readable by its owner only, and is
/// warned about otherwise.
const SECRET_KEYS: &[&str] = &["mnemonic", "redis"];

fn main() -> anyhow::Result<()> {
    let args: Args = rmb_config::parse(SECRET_KEYS);
    rmb_peer::runtime::build(args.threads)
        .context("starting the async runtime")?
        .block_on(serve(args))
}

/// Everything the peer does, on the runtime [`main`] built for `--threads`.
async fn serve(args: Args) -> anyhow::Result<()> {
    init_logging(args.debug);
    if args.uploads.is_some() {
        tracing::warn!("--uploads is accepted for rmb-rs compatibility but unused");
    }

    let secret = read_secret(&args)?;
    let identity = Arc::new(
        Identity::from_secret(&secret, args.key_type)
            .context("the mnemonic or seed is not valid")?,
    );
    drop(secret);
    tracing::info!(account = %identity.signer().account(), key_type = %args.key_type, "identity loaded");
    rmb_identity::trust::set_extra_cas(&args.relay_ca)?;

    let substrate = match (&args.registry, args.substrate.is_empty()) {
        (None, true) => vec![DEFAULT_SUBSTRATE.to_string()],
        _ => args.substrate.clone(),
    };
    let choice = RegistryChoice::from_flags(&substrate, args.registry.as_deref())?
        .context("no twin registry selected")?;
    let backend = connect(&choice)
        .await
        .context("connecting to the twin registry")?;
    let registry = CachedRegistry::new(backend, DEFAULT_TTL, DEFAULT_CAPACITY);
    registry.spawn_follower();
    tracing::info!(registry = %registry.describe(), "twin registry");

    let registry_handle: Arc<dyn Registry> = registry.clone();
    let config = PeerConfig {
        identity,
        relays: args.relays.clone(),
        registry,
        sid: args.sid.clone(),
        e2e: args.e2e,
        update_twin: !args.no_update,
        reliable: !args.at_most_once,
        // The Redis API marks every request it delivers (`msgbus.seen.*`).
        app_dedupes: !args.at_most_once,
        max_lifetime: args.max_lifetime,
        rmb_twins: rmb_peer::core::rmb_twins::Limits {
            ttl: Duration::from_secs(args.rmb_twin_ttl),
            max: args.rmb_twins,
        },
        unsigned_rpc: !args.no_unsigned_rpc,
    };
    let replay =
        MemoryReplayStore::with_reply_budget(replay::DEFAULT_CAPACITY, args.reply_cache_mb << 20);
    let Some((peer, inbound)) = start_peer(config, Arc::new(replay)).await? else {
        return Ok(()); // stopped by a signal while the registry was unreachable
    };
    // Connection traffic goes to the connections layer; topics take their requests (and
    // answers to their own) from what is left; the Redis API sees the rest.
    let mut conn_config = ConnConfig::default();
    if !args.conn_ciphers.is_empty() {
        conn_config.ciphers = args.conn_ciphers.clone();
    }
    let connections = Connections::new(peer.clone(), conn_config);
    let (inbound, filter) = filter_inbound(connections.clone(), inbound);
    let bridges = match Bridges::start(&connections, &args.expose) {
        Ok(bridges) => bridges,
        Err(e) => {
            peer.shutdown().await;
            return Err(e.into());
        }
    };
    for rule in &args.expose {
        tracing::info!(protocol = %rule.protocol, target = %rule.target, allow = ?rule.allow, "exposing a local service");
    }
    let mut topic_options = TopicsOptions::new(&args.redis);
    topic_options.renew = Duration::from_secs(args.topic_renew);
    topic_options.record_delay = Duration::from_millis(args.topic_record_delay);
    topic_options.max_subscribers = args.topic_max_subscribers as usize;
    topic_options.auto_create = args.topic_auto_create;
    topic_options.leases = LeaseSettings {
        lease_secs: args.topic_lease,
        unanswered_pushes: args.topic_unanswered,
        unanswered_secs: args.topic_unanswered_secs,
        new_per_relay: args.topic_new_per_relay,
        new_total: args.topic_new_total,
        window_secs: args.topic_new_window,
    };
    topic_options.registry = Some(registry_handle);
    let (topics, inbound) = match Topics::start(peer.clone(), inbound, topic_options).await {
        Ok(started) => started,
        Err(e) => {
            peer.shutdown().await;
            return Err(e.into());
        }
    };
    let limits = Limits {
        command_queue_bytes: args.max_command_queue_mb.saturating_mul(1 << 20),
        commands: args.max_commands,
        admission: rmb_peer::redis_api::admission::Settings {
            target: Duration::from_millis(args.queue_wait_target_ms),
            interval: Duration::from_millis(args.queue_wait_interval_ms),
        },
    };
    let api = match RedisApi::start_with_limits(peer.clone(), inbound, &args.redis, limits).await {
        Ok(api) => api,
        Err(e) => {
            peer.shutdown().await;
            return Err(e.into());
        }
    };
    let http = if args.http.is_some() || args.http_socket.is_some() {
        let started = match http_options(&args) {
            Ok(options) => HttpApi::start(options, topics.clone(), Some(connections.clone())).await,
            Err(e) => Err(e),
        };
        match started {
            Ok(http) => Some(http),
            Err(e) => {
                api.shutdown(SHUTDOWN_GRACE).await;
                topics.shutdown().await;
                return Err(e.into());
            }
        }
    } else {
        None
    };
    let metrics = match args.metrics_listen {
        Some(listen) => {
            match MetricsServer::start(listen, args.http_hosts.clone(), peer.clone()).await {
                Ok(metrics) => Some(metrics),
                Err(e) => {
                    api.shutdown(SHUTDOWN_GRACE).await;
                    topics.shutdown().await;
                    return Err(e.into());
                }
            }
        }
        None => None,
    };
    tracing::info!(twin = peer.twin_id(), "rmb-peer ready");
    let give_back = tokio::spawn(give_back_memory());

    shutdown_signal().await;
    tracing::info!("shutting down");
    // From now on a relay link that drops stays down: a replacement peer may log in.
    peer.stop_reconnecting();
    give_back.abort();
    // Whatever happens inside, the process ends soon after a signal (or at a second one).
    let stop = async {
        if let Some(http) = http {
            http.shutdown(SHUTDOWN_GRACE).await;
        }
        if let Some(metrics) = metrics {
            metrics.shutdown().await;
        }
        bridges.shutdown().await;
        connections.shutdown().await;
        api.shutdown(SHUTDOWN_GRACE).await;
        topics.shutdown().await;
        // The peer stopped, so its inbound channel closed and the filter ends.
        let _ = filter.await;
    };
    tokio::select! {
        _ = stop => {}
        _ = tokio::time::sleep(SHUTDOWN_GRACE * 2) => {
            tracing::error!("shutdown took too long; exiting");
        }
        _ = shutdown_signal() => tracing::warn!("second signal; exiting at once"),
    }
    Ok(())
}

/// The secret from --mnemonic (or RMB_MNEMONIC) or --mnemonic-file.
fn read_secret(args: &Args) -> anyhow::Result<String> {
    if let Some(path) = &args.mnemonic_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the secret from {}", path.display()))?;
        let secret = text.trim();
        if secret.is_empty() {
            bail!("{} is empty", path.display());
        }
        return Ok(secret.to_string());
    }
    match &args.mnemonic {
        Some(m) if !m.trim().is_empty() => Ok(m.trim().to_string()),
        _ => bail!("a secret is required: --mnemonic, --mnemonic-file or RMB_MNEMONIC"),
    }
}

fn init_logging(debug: u8) {
    let level = match debug {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // Colours only for a terminal: redirected logs stay plain text.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped example (deploy/config/peer.toml) loads as it is and with every
    /// commented-out setting uncommented, and the defaults it shows are the real ones.
    #[test]
    fn the_example_config_file_loads_and_shows_the_defaults() {
        let example = include_str!("../../deploy/config/peer.toml");
        if let Err(problems) = rmb_config::check_example::<Args>(example) {
            panic!("deploy/config/peer.toml:\n{problems}");
        }
    }

    #[test]
    fn conn_ciphers_parse_in_order_and_unknown_names_are_errors() {
        let args = Args::try_parse_from([
            "rmb-peer",
            "-m",
            "x",
            "--conn-ciphers",
            "chacha20-poly1305,aes-256-gcm",
        ])
        .unwrap();
        assert_eq!(
            args.conn_ciphers,
            [Cipher::ChaCha20Poly1305, Cipher::Aes256Gcm]
        );
        let err = Args::try_parse_from(["rmb-peer", "-m", "x", "--conn-ciphers", "aes"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("known: aes-256-gcm, chacha20-poly1305"),
            "{err}"
        );
    }
}
