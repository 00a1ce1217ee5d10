//! [`Net`]: the processes of one chaos run (relay, peers, Redis servers), crashed and
//! relaunched on schedule, and what they left behind.

use super::*;

/// The processes of one run. Field order is drop order: peers first, Redis servers last.
pub(crate) struct Net {
    pub(crate) peer_a: PeerProcess,
    pub(crate) peer_b: PeerProcess,
    pub(crate) relay: RelayProcess,
    /// Peer B's relay in a federated run.
    pub(crate) relay_b: Option<RelayProcess>,
    pub(crate) redis_a: RedisServer,
    pub(crate) redis_b: RedisServer,
    pub(crate) relay_redis: Option<RedisServer>,
    pub(crate) twin_a: u32,
    pub(crate) twin_b: u32,
    /// Peer A's HTTP API address (`host:port`), when started with one.
    pub(crate) http_a: Option<String>,
    /// Peer B's HTTP API address, when started with one.
    pub(crate) http_b: Option<String>,
    pub(crate) counters: Counters,
    pub(crate) last_sample: Instant,
    pub(crate) records: Vec<CrashRecord>,
    pub(crate) watches: Vec<Watch>,
}

/// A recovery being timed.
pub(crate) struct Watch {
    /// Index of its record in [`Net::records`].
    pub(crate) record: usize,
    pub(crate) back: Back,
    pub(crate) since: Instant,
}

/// What "working again" means after a crash.
pub(crate) enum Back {
    /// Both peers report a connected relay.
    PeersConnected,
    /// The peer of the Redis at this URL writes its status key again.
    StatusWritten(String),
}

impl Net {
    /// Starts the processes of a `mode` run; with `soak`, each peer also serves its HTTP
    /// API on a free loopback port ([`Net::http_a`], [`Net::http_b`]: topics and pipes)
    /// and the peers' Redis servers fsync every second instead of at every write (see
    /// [`RedisServer::start_persistent`]: the soak's rates need it).
    pub(crate) fn start(mode: RelayMode, soak: bool) -> Net {
        let http = soak;
        let relay_redis = (mode == RelayMode::Redis).then(RedisServer::start_durable);
        let federated = mode == RelayMode::Federated;
        let relay = match (&relay_redis, federated) {
            (Some(redis), _) => RelayProcess::start(&["--redis", &redis.url()]),
            (None, true) => RelayProcess::start(&["--federation-http"]),
            (None, false) => RelayProcess::start(&[]),
        };
        let registry = relay.http_url();
        let relay_b =
            federated.then(|| RelayProcess::start(&["--federation-http", "--registry", &registry]));
        let b_relay = relay_b.as_ref().unwrap_or(&relay);
        let register = |secret: &str, relay: &RelayProcess| {
            crate::peer_node::register(&registry, secret, &[relay.domain()])
        };
        let (twin_a, twin_b) = (register("//Alice", &relay), register("//Bob", b_relay));
        let peer_redis = if soak {
            RedisServer::start_persistent
        } else {
            RedisServer::start_durable
        };
        let (redis_a, redis_b) = (peer_redis(), peer_redis());
        let (urls_a, urls_b) = ([relay.ws_url()], [b_relay.ws_url()]);
        let http_port = || http.then(|| format!("127.0.0.1:{}", free_port()));
        let (http_a, http_b) = (http_port(), http_port());
        // The runs count what crashes lose. After a relay is back, the requests it lost
        // come again at once, and the test's debug-built bot on a busy 2-core machine
        // can take more than the default 500 ms target to work them off: admission
        // would then refuse some as overloaded (correctly; `peer_overload` tests that).
        let flags = |addr: &Option<String>| -> Vec<String> {
            addr.iter()
                .flat_map(|a| ["--http".to_string(), a.clone()])
                .chain(["--queue-wait-target-ms".to_string(), "10000".to_string()])
                .collect()
        };
        let (flags_a, flags_b) = (flags(&http_a), flags(&http_b));
        let peer_a = PeerProcess::start(
            "//Alice",
            &redis_a.url(),
            &urls_a,
            &registry,
            &flags_a.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        let peer_b = PeerProcess::start(
            "//Bob",
            &redis_b.url(),
            &urls_b,
            &registry,
            &flags_b.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        Net {
            peer_a,
            peer_b,
            relay,
            relay_b,
            redis_a,
            redis_b,
            relay_redis,
            twin_a,
            twin_b,
            http_a,
            http_b,
            counters: Counters::default(),
            last_sample: Instant::now(),
            records: Vec::new(),
            watches: Vec::new(),
        }
    }

    pub(crate) fn kill(&mut self, target: Target) {
        match target {
            Target::Relay => self.relay.kill(),
            Target::PeerA => self.peer_a.kill(),
            Target::PeerB => self.peer_b.kill(),
            Target::RedisA => self.redis_a.kill(),
            Target::RedisB => self.redis_b.kill(),
            Target::RelayRedis => self.relay_redis.as_mut().expect("relay redis").kill(),
            Target::RelayB => self.relay_b.as_mut().expect("relay b").kill(),
        }
    }

    /// The process id of `target`, while it runs.
    pub(crate) fn pid(&self, target: Target) -> Option<u32> {
        match target {
            Target::Relay => self.relay.pid(),
            Target::PeerA => self.peer_a.pid(),
            Target::PeerB => self.peer_b.pid(),
            Target::RedisA => self.redis_a.pid(),
            Target::RedisB => self.redis_b.pid(),
            Target::RelayRedis => self.relay_redis.as_ref().and_then(RedisServer::pid),
            Target::RelayB => self.relay_b.as_ref().and_then(RelayProcess::pid),
        }
    }

    /// Carries out one crash of the schedule now: kills its target, keeps it down (the
    /// counters sampled meanwhile), relaunches it, records it and starts timing the
    /// recovery. `start` is the zero of the schedule; `log` reports progress.
    pub(crate) fn crash(&mut self, crash: Crash, start: Instant, log: &dyn Fn(String)) {
        self.sample();
        let at = start.elapsed().as_secs_f64();
        log(format!("send time {at:5.1}s: kill {}", crash.target));
        self.kill(crash.target);
        self.sample_until(Instant::now() + crash.down);
        let down = start.elapsed().as_secs_f64() - at;
        let relaunched = Instant::now();
        self.relaunch(crash.target);
        let relaunch = relaunched.elapsed().as_secs_f64();
        log(format!("{} relaunched in {relaunch:.2}s", crash.target));
        self.records.push(CrashRecord {
            target: crash.target,
            at,
            down,
            relaunch,
            back_after: None,
        });
        self.watch_recovery(crash.target, relaunched);
    }

    pub(crate) fn relaunch(&mut self, target: Target) {
        match target {
            Target::Relay => self.relay.relaunch(),
            Target::PeerA => self.peer_a.relaunch(),
            Target::PeerB => self.peer_b.relaunch(),
            Target::RedisA => self.redis_a.relaunch(),
            Target::RedisB => self.redis_b.relaunch(),
            Target::RelayRedis => self.relay_redis.as_mut().expect("relay redis").relaunch(),
            Target::RelayB => self.relay_b.as_mut().expect("relay b").relaunch(),
        }
    }

    /// Starts timing how long after its relaunch (at `relaunched`) the bus works again
    /// without `target`; [`Net::sample_until`] fills in the last crash record's
    /// `back_after`.
    pub(crate) fn watch_recovery(&mut self, target: Target, relaunched: Instant) {
        let back = match target {
            Target::Relay | Target::RelayB => Back::PeersConnected,
            // `relaunch` already waited for its status to report a connected relay.
            Target::PeerA | Target::PeerB | Target::RelayRedis => {
                if let Some(record) = self.records.last_mut() {
                    record.back_after = Some(0.0);
                }
                return;
            }
            Target::RedisA | Target::RedisB => {
                let url = if target == Target::RedisA {
                    self.redis_a.url()
                } else {
                    self.redis_b.url()
                };
                // The reloaded key may be a stale copy: wait for the peer to write it anew.
                let _ = Link::new(&url).cmd(&[b"DEL", STATUS.as_bytes()]);
                Back::StatusWritten(url)
            }
        };
        self.watches.push(Watch {
            record: self.records.len() - 1,
            back,
            since: relaunched,
        });
    }

    /// Fills in the recoveries that happened; forgets those not seen within 30 s.
    pub(crate) fn check_watches(&mut self) {
        let watches = std::mem::take(&mut self.watches);
        for watch in watches {
            let done = match &watch.back {
                Back::PeersConnected => [self.redis_a.url(), self.redis_b.url()]
                    .iter()
                    .all(|url| read_status(url).is_some_and(|s| connected(&s))),
                Back::StatusWritten(url) => read_status(url).is_some(),
            };
            if done {
                self.records[watch.record].back_after = Some(watch.since.elapsed().as_secs_f64());
            } else if watch.since.elapsed() < RECOVERY_LIMIT {
                self.watches.push(watch);
            }
        }
    }

    /// Reads both peers' counters.
    pub(crate) fn sample(&mut self) {
        self.last_sample = Instant::now();
        for (peer, url) in [("a", self.redis_a.url()), ("b", self.redis_b.url())] {
            if let Some(status) = read_status(&url) {
                self.counters.update(peer, &status);
            }
        }
    }

    /// Sleeps until `until`, sampling the counters about every second and checking
    /// pending recoveries every 50 ms.
    pub(crate) fn sample_until(&mut self, until: Instant) {
        loop {
            let now = Instant::now();
            if now >= until {
                return;
            }
            let step = if self.watches.is_empty() {
                Duration::from_secs(1)
            } else {
                Duration::from_millis(50)
            };
            std::thread::sleep((until - now).min(step));
            self.check_watches();
            if self.last_sample.elapsed() >= Duration::from_secs(1) {
                self.sample();
            }
        }
    }

    /// Once the sending time is up: lets a sender behind its schedule (a slow or busy
    /// machine, a Redis restart) go on for [`SENDER_GRACE`] at most, sampling meanwhile,
    /// then stops it. Returns the requests sent.
    pub(crate) fn finish_sending(&mut self, load: &mut RpcLoad) -> usize {
        let grace = Instant::now() + SENDER_GRACE;
        while !load.sender_finished() && Instant::now() < grace {
            self.sample_until(Instant::now() + Duration::from_millis(100));
        }
        load.stop_sending()
    }

    /// Adds what only this run knows to an RPC report: the peers' counters summed over
    /// restarts, the end-of-run figures and the crash records.
    pub(crate) fn complete(&mut self, report: &mut Report) {
        report.resent = self.counters.total("resent");
        report.duplicates = self.counters.total("duplicates");
        report.replayed = self.counters.total("replayed");
        report.info = self.info();
        report.crashes = std::mem::take(&mut self.records);
    }

    /// End-of-run figures that are not expected to be zero.
    pub(crate) fn info(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let mut a = Link::new(&self.redis_a.url());
        out.push((
            "A backlog keys (expire by design)".into(),
            a.count_keys("msgbus.backlog.*"),
        ));
        for (peer, name) in [("a", "A"), ("b", "B")] {
            for field in &Counters::FIELDS[3..] {
                let n = self.counters.peer_total(peer, field);
                out.push((format!("{name} {field}"), n));
            }
        }
        if let Some(redis) = &self.relay_redis {
            let mut link = Link::new(&redis.url());
            let mut queued = 0;
            if let Ok(Reply::Array(keys)) = link.cmd(&[b"KEYS", b"rmb:relay:q:*"]) {
                for key in keys.iter().filter_map(Reply::bytes) {
                    queued += link.int(&[b"LLEN", key]);
                }
            }
            out.push(("relay redis queued envelopes".into(), queued));
        }
        out
    }
}
