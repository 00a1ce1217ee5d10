//! `rmb-relay`: run a relay.
//!
//! Accepts rmb-rs's flags so existing deployment scripts keep working; see `--help`.
//! Every flag can also come from a TOML file given with `--config` (rmb-config).

/// mimalloc: glibc malloc cost a busy peer or relay about a tenth of its CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use rmb_identity::JwtPolicy;
use rmb_identity::registry::resolve::ResolveRule;
use rmb_identity::registry::{CachedRegistry, Registry, RegistryChoice, RelayResolver, connect};
use rmb_relay::federation::BatchSettings;
use rmb_relay::limiter::Limits;
use rmb_relay::queue::{MemoryQueues, Queues, RedisQueues, WaitPolicy};
use rmb_relay::redis_conn::{RedisConn, RedisTarget};
use rmb_relay::registry::{HostedRegistry, RedbStore, RedisStore, TwinStore};
use rmb_relay::replicas::LinkSettings;
use rmb_relay::{Config, RelayServer, RelayState};
use tokio_util::sync::CancellationToken;

/// A relay of the Reliable Message Bus: peers connect to it over WebSocket and it routes
/// their signed, end-to-end encrypted envelopes to other twins, queueing for offline
/// twins and federating with other relays.
#[derive(Parser, Debug)]
#[command(name = "rmb-relay", version)]
struct Args {
    /// Name(s) this relay is reached by (DNS name or host:port). A twin whose registry
    /// entry lists one of them lives here: envelopes for it are queued while it is offline.
    /// The short form is -m, as in rmb-rs's rmb-relay (on rmb-peer and rmb, -m is
    /// --mnemonic instead).
    #[arg(short = 'm', long = "domain", num_args = 1.., value_name = "DOMAIN")]
    domains: Vec<String>,

    /// Address to listen on for WebSocket, federation, /metrics, /health (and the
    /// embedded registry when hosted).
    #[arg(short, long, default_value = "[::]:8080")]
    listen: SocketAddr,

    /// tfchain RPC URL(s) to read twins from, tried in turn on failure (repeatable).
    #[arg(short, long = "substrate", num_args = 1.., value_name = "URL")]
    substrate: Vec<String>,

    /// Base URL of an embedded registry hosted by another relay. With neither this nor
    /// --substrate, this relay hosts the embedded registry itself.
    #[arg(long, value_name = "URL")]
    registry: Option<String>,

    /// Redis URL: offline queues and session presence live there, so several relay
    /// processes with the same --domain act as one relay (an envelope routed by one
    /// reaches a twin connected to another) and a restart loses nothing queued; the hosted
    /// registry is kept there too. Without it all of this is in memory (the registry in a
    /// redb file under --data-dir). Forms:
    /// redis://[USER:PASSWORD@]HOST:PORT[/DB] (one Redis; rediss:// for TLS);
    /// redis+cluster://[USER:PASSWORD@]HOST:PORT,HOST:PORT,... (seed nodes of a Redis
    /// Cluster; the rest are discovered);
    /// redis+sentinel://[USER:PASSWORD@]HOST:PORT,HOST:PORT,.../MASTERNAME[/DB] (a
    /// Sentinel set: the relay asks it for the master, and again after a failover;
    /// USER:PASSWORD are the master's).
    #[arg(short, long, value_name = "URL")]
    redis: Option<RedisTarget>,

    /// With --redis: an envelope queued in Redis counts as accepted only once this many
    /// Redis replicas acknowledged it (WAIT), so a failover to one of them loses no
    /// accepted envelope. When fewer acknowledge within --redis-wait-timeout-ms, the
    /// sender gets an error envelope (the envelope may still be delivered: receivers
    /// drop duplicates by uid). 0 (the default): no waiting, as Redis's replication is
    /// asynchronous by default; a failover may then lose the last envelopes queued.
    #[arg(long, default_value_t = 0, value_name = "N", requires = "redis")]
    redis_wait_replicas: u32,

    /// Longest wait, in milliseconds, for --redis-wait-replicas. Replicas acknowledge
    /// within a millisecond or two on a local network; 500 leaves room for a busy
    /// replica without holding a sender long when one is down.
    #[arg(long, default_value_t = 500, value_name = "MS", requires = "redis", value_parser = clap::value_parser!(u64).range(1..=60_000))]
    redis_wait_timeout_ms: u64,

    /// Prefix of the Redis keys of the offline queues and presence (replicas that act as
    /// one relay share it). No braces: keys carry a hash tag ({twin}) after it.
    #[arg(
        long,
        default_value = "rmb:relay:",
        value_name = "PREFIX",
        requires = "redis"
    )]
    redis_prefix: String,

    /// With --redis: where this replica takes links from the other replicas of the relay,
    /// which hand it envelopes for sessions connected here directly instead of through
    /// Redis ("off": no links, every envelope between replicas goes through the Redis
    /// queue). Replicas on other machines need an address they can reach, with
    /// --replica-advertise.
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR|off")]
    replica_listen: String,

    /// The HOST:PORT other replicas connect to for links to this one (default: the
    /// address --replica-listen bound; required when it binds 0.0.0.0 or [::]).
    #[arg(long, value_name = "HOST:PORT")]
    replica_advertise: Option<String>,

    /// Bytes in flight on one replica link; past that, envelopes for that replica's
    /// sessions go through the Redis queue until it catches up.
    #[arg(long, default_value_t = rmb_relay::replicas::DEFAULT_WINDOW, value_name = "BYTES")]
    replica_window: usize,

    /// Sessions whose replica each replica remembers (entries live 10 s at most and are
    /// dropped when the session moves).
    #[arg(long, default_value_t = rmb_relay::replicas::DEFAULT_PRESENCE_ENTRIES, value_name = "N")]
    replica_presence_cache: usize,

    /// Directory for the hosted registry's database file.
    #[arg(long, default_value = "rmb-relay-data", value_name = "DIR")]
    data_dir: PathBuf,

    /// Seconds to wait at start while another process holds the registry database in
    /// --data-dir (a relay being replaced keeps it until it has exited); then give up
    /// with an error. 0: do not wait.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    data_dir_lock_wait: u64,

    /// Per-twin rate limit: at most COUNT envelopes and SIZE bytes per minute.
    #[arg(long, num_args = 2, value_names = ["COUNT", "SIZE"])]
    limit: Option<Vec<u64>>,

    /// Window in seconds over which federation failures rank a twin's relays.
    #[arg(short = 'p', long, default_value_t = 3600)]
    ranker_period: u64,

    /// rmb-rs switch workers; here only workers × user-per-worker matters, as the
    /// maximum number of sessions.
    #[arg(short, long, default_value_t = 500)]
    workers: usize,

    /// rmb-rs sessions per worker; see --workers.
    #[arg(short, long, default_value_t = 1000)]
    user_per_worker: usize,

    /// Accepted for rmb-rs compatibility and ignored: on reconnecting to the chain this
    /// relay always drops its twin cache instead of replaying blocks.
    #[arg(long, value_name = "BLOCKS")]
    catchup_threshold: Option<u64>,

    /// Count envelopes per destination twin for this many twins in rmb-rs's
    /// `relay_message_rx_twin{twin}` (later twins count under twin="other"). Off (0) by
    /// default: one label per twin grows /metrics and Prometheus with the network.
    #[arg(long, default_value_t = 0, value_name = "N")]
    metrics_twin_labels: usize,

    /// Largest envelope accepted, in bytes.
    #[arg(long, default_value_t = rmb_proto::DEFAULT_MAX_ENVELOPE_SIZE)]
    max_envelope_size: usize,

    /// Federate over plain http:// instead of https:// (test networks only).
    #[arg(long)]
    federation_http: bool,

    /// Connect to relay NAME at ADDRESS instead (like curl --resolve), e.g.
    /// relay1.test=127.0.0.1:8081 (repeatable).
    #[arg(long, value_name = "NAME=ADDRESS")]
    resolve: Vec<ResolveRule>,

    /// PEM certificate chain: serve wss:// and https:// directly (with --tls-key).
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// PEM file of a certificate authority to trust for https:// relays (federation)
    /// and an https:// --registry (repeatable), e.g. a private CA. Always trusted as
    /// well: the built-in web roots and the system's trust store, or instead of that
    /// store the files named by SSL_CERT_FILE and SSL_CERT_DIR when set.
    #[arg(long, value_name = "FILE")]
    relay_ca: Vec<PathBuf>,

    /// More logging: -d debug, -dd trace. RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    debug: u8,

    // --- sessions and bounded memory (issue #12) ---
    /// Envelopes whose deadline (timestamp + expiration) is more than SECS ahead are
    /// refused with an error envelope.
    #[arg(long, value_name = "SECS", default_value_t = rmb_proto::DEFAULT_MAX_LIFETIME_SECS)]
    max_lifetime: u64,

    /// A session that sent nothing for SECS gets a WebSocket ping.
    #[arg(long, value_name = "SECS", default_value_t = 20)]
    ping_interval: u64,

    /// A session that sent nothing (not even a pong) for SECS is disconnected. Peers
    /// (ours and rmb-rs's) ping every 20 s when idle.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    read_timeout: u64,

    /// Longest time one batch of envelopes may take to be written to a session before it
    /// is disconnected (what it held goes back to its offline queue).
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    write_timeout: u64,

    /// A session whose outbox stays over --outbox-bytes for SECS is disconnected (what it
    /// held goes back to its offline queue).
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    slow_reader_timeout: u64,

    /// Bytes waiting to be written to one session; further envelopes for it spill to its
    /// offline queue until it catches up.
    #[arg(long, value_name = "BYTES", default_value_t = rmb_relay::config::DEFAULT_OUTBOX_BYTES)]
    outbox_bytes: usize,

    /// Most bytes queued for one offline (or spilled) session.
    #[arg(long, value_name = "BYTES", default_value_t = rmb_relay::queue::DEFAULT_SESSION_BYTES)]
    queue_bytes_per_session: usize,

    /// Most bytes queued for one twin, all its sessions together.
    #[arg(long, value_name = "BYTES", default_value_t = rmb_relay::queue::DEFAULT_TWIN_BYTES)]
    queue_bytes_per_twin: usize,

    /// Most bytes queued in all (in-memory queues; with --redis, Redis's maxmemory).
    #[arg(long, value_name = "BYTES", default_value_t = rmb_relay::queue::DEFAULT_TOTAL_BYTES)]
    queue_bytes_total: usize,

    /// Most distinct session ids per twin: connected at once, and (separately) with queues.
    #[arg(long, value_name = "N", default_value_t = rmb_relay::queue::DEFAULT_SESSIONS_PER_TWIN)]
    sessions_per_twin: usize,
    // Connection limits, deadlines and federation targets.
    /// Seconds a client has to send a request's headers: also for a new connection that
    /// sends nothing and for an idle keep-alive connection.
    #[arg(long, default_value_t = 10, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    header_timeout: u64,

    /// Seconds a POST has to send its body: federation (POST /, POST /federation/batch)
    /// and the hosted registry (POST /twins).
    #[arg(long, default_value_t = 10, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    body_timeout: u64,

    /// Seconds a TLS handshake may take (with --tls-cert).
    #[arg(long, default_value_t = 10, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    tls_handshake_timeout: u64,

    /// Seconds checking a login may take (token, registry lookup); then 503.
    #[arg(long, default_value_t = 10, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    login_timeout: u64,

    /// Longest login token accepted (exp - iat, seconds, 1 to 86400). rmb-rs peers and
    /// ours sign for 300 s, the TS client for 1000 s.
    #[arg(long, default_value_t = rmb_identity::jwt::DEFAULT_MAX_LIFETIME, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    login_max_lifetime: u64,

    /// Seconds after its issue time (iat) a login token is still accepted (1 to 86400).
    /// Clients make a fresh token for each connection, so only a kept (captured) token,
    /// or a client whose clock runs this far behind, is older.
    #[arg(long, default_value_t = rmb_identity::jwt::DEFAULT_MAX_AGE, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    login_max_age: u64,

    /// Seconds a login token's issue time may be ahead of this relay's clock (0 to 3600).
    #[arg(long, default_value_t = rmb_identity::jwt::DEFAULT_MAX_CLOCK_SKEW, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(0..=3_600))]
    login_clock_skew: u64,

    /// Login tokens remembered at once, so none is accepted twice (each until it could
    /// no longer pass the time rules: at most --login-max-age + --login-clock-skew
    /// seconds). When full, logins are refused (503) until some are forgotten. With
    /// --redis the tokens are kept in Redis instead, shared by all replicas.
    #[arg(long, default_value_t = rmb_relay::logins::DEFAULT_CAPACITY, value_name = "N")]
    login_memory: usize,

    /// Most connections open at once (sessions included). Lowered at start to the open
    /// file limit (raised to its hard limit) minus 256 for everything else, which is what
    /// usually decides.
    #[arg(long, default_value_t = 500_000, value_name = "N")]
    max_connections: usize,

    /// Most connections open at once from one IP address; 0 for no limit (e.g. behind
    /// a reverse proxy, where every connection comes from the proxy).
    #[arg(long, default_value_t = 1_000, value_name = "N")]
    max_connections_per_ip: usize,

    /// Connections over the two limits above that are still served /health and
    /// /metrics (5 s each, at most 4 per address); beyond them connections are closed.
    #[arg(long, default_value_t = 64, value_name = "N")]
    health_connections: usize,

    /// Also federate to this relay (a name as registered, host or host:port, used as it
    /// is) or to IP-literal relays and addresses in this network (ADDRESS[/PREFIX]).
    /// By default only domain names resolving to public addresses are federated to
    /// (repeatable; e.g. 127.0.0.1 for a test network on one machine).
    #[arg(long, value_name = "NAME_OR_ADDR")]
    federation_allow: Vec<rmb_relay::federation::AllowEntry>,

    /// Most envelopes sent to one relay in one request (POST /federation/batch): what
    /// queued for that relay while its previous requests were under way. 0 or 1: one
    /// POST / per envelope, as rmb-rs. Relays that do not take batches (rmb-rs) are
    /// found out by their 404 and get one POST / per envelope for 10 minutes.
    #[arg(long, default_value_t = 256, value_name = "N")]
    federation_batch: usize,

    /// Most bytes of one batch. Relays of ours accept batches of at least 1 MiB (or
    /// --max-envelope-size if larger).
    #[arg(long, default_value_t = rmb_relay::federation::batch::MIN_BATCH_BODY, value_name = "BYTES")]
    federation_batch_bytes: usize,

    /// Envelopes larger than this are posted alone (POST /): they gain little from
    /// sharing a request, and would hold up the small ones in it (a relay reads a whole
    /// batch before routing any of it).
    #[arg(long, default_value_t = rmb_relay::federation::lane::DEFAULT_MAX_ENVELOPE_BYTES, value_name = "BYTES")]
    federation_batch_envelope_bytes: usize,

    /// Lanes to one relay: destination twins are spread over them, and each has one
    /// batch under way at a time (envelopes arriving meanwhile go in its next batch), so
    /// a twin gets batched envelopes in the order they were routed.
    #[arg(long, default_value_t = 2, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=64))]
    federation_lanes_per_relay: u64,

    /// Threads that run the relay's sessions, federation and queues. 0: one per CPU
    /// core (or TOKIO_WORKER_THREADS when set). Fewer suits a machine shared with other
    /// busy services: on 2 cores shared with another relay, Redis and 101 peers, one
    /// thread cut the CPU per topic delivery by about a tenth, because threads waking
    /// each other for every envelope cost more than the second core gave.
    #[arg(long, default_value_t = 0, value_name = "N", value_parser = clap::value_parser!(u16).range(0..=1024))]
    threads: u16,

    /// New twins the hosted registry registers per minute per client address (IPv6:
    /// per /64), in a burst or spread out; more get 429 until the address's allowance
    /// refills. Updates of registered twins are not counted. 0: no limit (e.g. behind a
    /// reverse proxy, where every request comes from the proxy).
    #[arg(long, value_name = "N", default_value_t = rmb_relay::registry::register_limit::DEFAULT_REGISTER_RATE)]
    registry_register_rate: u32,

    /// Do not run a relay: get URL (a relay's /health) once and exit 0 when it answers
    /// 200, 1 otherwise, printing its answer or why not. For container health checks
    /// (the images have no shell or curl): `--health-check http://127.0.0.1:8080/health`.
    /// Trusts what the relay trusts (--relay-ca, SSL_CERT_FILE) and honours --resolve, so
    /// a TLS relay is checked under its own name: `--health-check
    /// https://relay.example.com:8443/health --resolve relay.example.com=127.0.0.1:8443`.
    #[arg(long, value_name = "URL")]
    health_check: Option<String>,
}

/// File descriptors kept for everything but client connections (Redis, registry,
/// federation, files).
const FD_RESERVE: u64 = 256;

/// Settings whose value may be a secret (a Redis URL with a password): a config file
/// setting one should be readable by its owner only, and is warned about otherwise.
const SECRET_KEYS: &[&str] = &["redis"];

fn main() -> anyhow::Result<()> {
    let args: Args = rmb_config::parse(SECRET_KEYS);
    if let Some(url) = &args.health_check {
        std::process::exit(health_check(&args, url));
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if args.threads > 0 {
        runtime.worker_threads(usize::from(args.threads));
    }
    runtime
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(serve(args))
}

/// Everything the relay does, on the runtime [`main`] built for `--threads`.
async fn serve(args: Args) -> anyhow::Result<()> {
    init_logging(args.debug);
    rmb_identity::trust::set_extra_cas(&args.relay_ca)?;

    let limits = match args.limit.as_deref() {
        Some([count, size]) => Some(Limits {
            count: *count,
            size: *size,
            window: 60,
        }),
        _ => None,
    };
    let config = Config {
        domains: args.domains.iter().cloned().collect::<BTreeSet<_>>(),
        max_envelope_size: args.max_envelope_size,
        max_sessions: args.workers.saturating_mul(args.user_per_worker).max(1),
        limits,
        ranker_period: args.ranker_period,
        federation_http: args.federation_http,
        resolver: RelayResolver::new(args.resolve.clone()),
        max_lifetime: args.max_lifetime,
        ping_interval: Duration::from_secs(args.ping_interval.max(1)),
        read_timeout: Duration::from_secs(args.read_timeout.max(1)),
        write_timeout: Duration::from_secs(args.write_timeout.max(1)),
        slow_reader_timeout: Duration::from_secs(args.slow_reader_timeout.max(1)),
        outbox_bytes: args.outbox_bytes,
        queue_bytes_per_session: args.queue_bytes_per_session,
        queue_bytes_per_twin: args.queue_bytes_per_twin,
        queue_bytes_total: args.queue_bytes_total,
        sessions_per_twin: args.sessions_per_twin,
        header_timeout: Duration::from_secs(args.header_timeout),
        body_timeout: Duration::from_secs(args.body_timeout),
        tls_handshake_timeout: Duration::from_secs(args.tls_handshake_timeout),
        login_timeout: Duration::from_secs(args.login_timeout),
        jwt: JwtPolicy {
            max_lifetime: args.login_max_lifetime,
            max_age: args.login_max_age,
            max_clock_skew: args.login_clock_skew,
        },
        login_memory: args.login_memory.max(1),
        max_connections: max_connections(args.max_connections),
        max_connections_per_ip: args.max_connections_per_ip,
        health_connections: args.health_connections,
        federation_allow: args.federation_allow.clone(),
        federation_batch: BatchSettings {
            max_envelopes: args.federation_batch,
            max_bytes: args.federation_batch_bytes,
            max_envelope_bytes: args.federation_batch_envelope_bytes,
            lanes_per_relay: args.federation_lanes_per_relay as usize,
        },
        registry_register_rate: args.registry_register_rate,
        metrics_twin_labels: args.metrics_twin_labels,
        ..Config::default()
    };
    if config.domains.is_empty() {
        tracing::warn!(
            "no --domain given: no twin lives here, so nothing is queued for offline twins"
        );
    }

    let redis = match &args.redis {
        Some(target) => Some(
            RedisConn::connect(target)
                .await
                .with_context(|| format!("connecting to redis at {target}"))?,
        ),
        None => None,
    };
    let (registry, hosted) = registry(&args, redis.as_ref()).await?;
    tracing::info!(registry = %registry.describe(), "twin registry");
    let shutdown = CancellationToken::new();
    let redis_queues = match redis {
        Some(conn) => Some(Arc::new(
            RedisQueues::with_conn(
                conn,
                &args.redis_prefix,
                config.queue_per_session,
                shutdown.clone(),
            )?
            .with_limits(config.queue_limits())
            .with_wait(WaitPolicy {
                replicas: args.redis_wait_replicas,
                timeout: Duration::from_millis(args.redis_wait_timeout_ms),
            }),
        )),
        None => None,
    };
    let queues: Arc<dyn Queues> = match &redis_queues {
        Some(queues) => Arc::clone(queues) as Arc<dyn Queues>,
        None => Arc::new(MemoryQueues::with_limits(config.queue_limits())),
    };
    tracing::info!(queues = %queues.describe(), "offline queues");
    let state = RelayState::with_queues(config, registry, hosted, queues, shutdown);
    if let Some(queues) = &redis_queues
        && args.replica_listen != "off"
    {
        let listen = args.replica_listen.parse().with_context(|| {
            format!(
                "--replica-listen {}: expected IP:PORT or off",
                args.replica_listen
            )
        })?;
        let settings = LinkSettings {
            advertise: args.replica_advertise.clone(),
            window: args.replica_window.max(1),
            presence_entries: args.replica_presence_cache,
            ..LinkSettings::new(listen, &state.config)
        };
        rmb_relay::server::replicas::start(&state, queues, settings)
            .await
            .context("starting the replica links")?;
    }
    let listener = std::net::TcpListener::bind(args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let mut server = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let tls = rmb_relay::tls::server_config(cert, key)?;
            RelayServer::start_tls(state, listener, tls)?
        }
        _ => {
            listener.set_nonblocking(true)?;
            RelayServer::start(state, tokio::net::TcpListener::from_std(listener)?)?
        }
    };
    let tls = args.tls_cert.is_some();
    tracing::info!(listen = %server.local_addr(), tls, domains = ?args.domains, "relay ready");

    // The server may also stop by itself (its listener failed): exit non-zero then.
    tokio::select! {
        _ = shutdown_signal() => {}
        result = server.stopped() => {
            result.context("the relay server stopped")?;
            anyhow::bail!("the relay server stopped unexpectedly");
        }
    }
    tracing::info!("shutting down");
    tokio::time::timeout(Duration::from_secs(10), server.shutdown())
        .await
        .context("shutdown took longer than 10 s")??;
    Ok(())
}

/// `--health-check URL`: one GET on a small runtime. Returns the exit status: 0
/// healthy, 1 not (printed on one line, without the backtrace an `Err` from `main`
/// would add under RUST_BACKTRACE).
fn health_check(args: &Args, url: &str) -> i32 {
    let result = rmb_identity::trust::set_extra_cas(&args.relay_ca)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("starting the async runtime: {e}"))
        })
        .and_then(|runtime| {
            runtime.block_on(rmb_relay::health_check::check(
                url,
                &args.resolve,
                rmb_relay::health_check::DEFAULT_TIMEOUT,
            ))
        });
    match result {
        Ok(body) => {
            println!("healthy: {body}");
            0
        }
        Err(why) => {
            eprintln!("unhealthy: {why}");
            1
        }
    }
}

/// `--max-connections`, lowered to what the open file limit allows. Raises the soft
/// limit to the hard one first: at the limit, accepting fails and logins, `/health` and
/// federation stop working, so the relay refuses connections before it gets there.
fn max_connections(wanted: usize) -> usize {
    let Some(files) = rmb_relay::open_files::raise_open_file_limit() else {
        return wanted;
    };
    let allowed = usize::try_from(files.saturating_sub(FD_RESERVE).max(16)).unwrap_or(usize::MAX);
    if wanted > allowed {
        tracing::info!(
            wanted,
            allowed,
            open_file_limit = files,
            "--max-connections lowered to fit the open file limit"
        );
    }
    wanted.min(allowed)
}

/// The registry the flags select, and the hosted one when this relay hosts it.
async fn registry(
    args: &Args,
    redis: Option<&RedisConn>,
) -> anyhow::Result<(Arc<dyn Registry>, Option<Arc<HostedRegistry>>)> {
    if let Some(choice) = RegistryChoice::from_flags(&args.substrate, args.registry.as_deref())? {
        let backend = connect(&choice)
            .await
            .context("connecting to the twin registry")?;
        let cached = CachedRegistry::new(backend, Duration::from_secs(3600), 1_000_000);
        cached.spawn_follower();
        return Ok((cached, None));
    }
    let store: Arc<dyn TwinStore> = match redis {
        Some(conn) => Arc::new(RedisStore::with_conn(conn.clone(), "rmb:registry:")?),
        None => {
            std::fs::create_dir_all(&args.data_dir)
                .with_context(|| format!("creating {}", args.data_dir.display()))?;
            let path = args.data_dir.join("registry.redb");
            let wait = Duration::from_secs(args.data_dir_lock_wait);
            Arc::new(RedbStore::open_waiting(&path, wait).await?)
        }
    };
    let hosted = HostedRegistry::new(store);
    Ok((hosted.clone(), Some(hosted)))
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

    /// The shipped example (deploy/config/relay.toml) loads as it is and with every
    /// commented-out setting uncommented, and the defaults it shows are the real ones.
    #[test]
    fn the_example_config_file_loads_and_shows_the_defaults() {
        let example = include_str!("../../deploy/config/relay.toml");
        if let Err(problems) = rmb_config::check_example::<Args>(example) {
            panic!("deploy/config/relay.toml:\n{problems}");
        }
    }
}
