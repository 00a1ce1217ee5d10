//! Relay replicas behind a real HAProxy running `docs/examples/haproxy.cfg`: one
//! redis-server, three `rmb-relay --redis` replicas of one domain (the balancer's
//! address), and real `rmb-peer` processes whose relay and registry are the balancer.
//!
//! - sessions spread over the replicas (each replica's `relay_sessions`), and calls
//!   between twins on different replicas are answered;
//! - replicas SIGKILLed in the middle of 100 RPC/s, and a rolling restart (each replica
//!   stopped with SIGTERM and started again in turn): the peers reconnect through
//!   HAProxy to the others, and every request is answered once (or refused explicitly),
//!   none lost, none run twice by the bot (the accounting of chaos.rs; the table is
//!   printed, `--nocapture` shows it);
//! - docs/operations.md shows the example configuration verbatim.
//!
//! Skips, saying why, only when haproxy is missing and cannot be installed.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rmb_testsupport::lb::haproxy::{self, http_status};
use rmb_testsupport::lb::traffic::{Accounting, Traffic};
use rmb_testsupport::lb::{Cluster, call, peer_counters};
use rmb_testsupport::peer_node::EchoBot;

/// The runs start many processes and time their kills: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Whether haproxy can run; prints why not.
fn haproxy_here() -> bool {
    match haproxy::ensure_installed() {
        Ok(()) => true,
        Err(why) => {
            eprintln!("skipping: {why}");
            false
        }
    }
}

#[test]
fn sessions_spread_over_replicas_and_calls_cross_them() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if !haproxy_here() {
        return;
    }
    let cluster = Cluster::start(3);
    // /metrics stays off the public side; /health passes.
    assert_eq!(http_status(&cluster.domain, "/metrics"), Some(404));
    assert_eq!(http_status(&cluster.domain, "/health"), Some(200));

    let secrets = ["//Alice", "//Bob", "//Charlie", "//Dave"];
    let mut nodes = Vec::new();
    let mut at = Vec::new();
    for secret in secrets {
        let (node, replica) = cluster.node_located(secret);
        nodes.push(node);
        at.push(replica);
    }
    let sessions = cluster.sessions();
    println!("sessions per replica: {sessions:?}; twins on replicas {at:?}");
    // leastconn spreads them, though not strictly one by one: a peer's own registry
    // lookup through the balancer, in flight while its WebSocket connects, counts too.
    assert_eq!(sessions.iter().sum::<u64>(), 4);
    let used = sessions.iter().filter(|n| **n > 0).count();
    assert!(used >= 2, "sessions on several replicas: {sessions:?}");

    // Every twin calls every other one: most calls cross replicas.
    let bots: Vec<EchoBot> = nodes
        .iter()
        .map(|n| EchoBot::start(&n.redis.url(), "lb.hello"))
        .collect();
    let mut crossing = 0;
    for (i, from) in nodes.iter().enumerate() {
        for (j, to) in nodes.iter().enumerate() {
            if i == j {
                continue;
            }
            let payload = format!("{} → {}", secrets[i], secrets[j]);
            let answer = call(from, to.twin, "lb.hello", &payload, Duration::from_secs(15));
            assert_eq!(
                answer.as_deref(),
                Ok(payload.as_str()),
                "replica {} → replica {}",
                at[i],
                at[j]
            );
            crossing += usize::from(at[i] != at[j]);
        }
    }
    // With two replicas or more in use, at least 6 of the 12 calls cross.
    assert!(crossing >= 6, "calls across replicas: {crossing}");
    println!("{crossing} of 12 calls crossed replicas");
    let runs: Vec<usize> = bots.iter().map(EchoBot::runs).collect();
    assert_eq!(runs, vec![3; 4], "each bot ran each of its 3 calls once");
}

/// Kills, during 20 s of 100 RPC/s from A to B: B's replica at 5 s (relaunched at 8 s,
/// so HAProxy's checks bring it back), then A's at 12 s (left down). A and B start on
/// different replicas.
#[test]
fn replicas_killed_mid_traffic_lose_nothing() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if !haproxy_here() {
        return;
    }
    let mut cluster = Cluster::start(3);
    let (a, at_a) = cluster.node_located("//Alice");
    let (mut b, mut at_b) = cluster.node_located("//Bob");
    // leastconn almost always puts B on another replica; when B's own registry lookup
    // was in flight there as its WebSocket connected, B is restarted until it is.
    for _ in 0..5 {
        if at_b != at_a {
            break;
        }
        b.peer.restart();
        let sessions = cluster.wait_sessions(2);
        at_b = (0..sessions.len())
            .find(|&i| i != at_a && sessions[i] > 0)
            .unwrap_or(at_a);
    }
    assert_ne!(at_a, at_b, "A and B on different replicas");
    println!("A on replica {at_a}, B on replica {at_b}");

    let run = Traffic::start(&a, &b, 100, Duration::from_secs(20));
    let mut events = Vec::new();
    kill(&mut cluster, &run, &mut events, (at_b, "B's"), 5);
    // B's peer finds another replica through the balancer.
    let back = wait_until(Duration::from_secs(20), || {
        cluster.sessions().iter().sum::<u64>() == 2
    });
    events.push(format!(
        "{:5.1}s  both sessions connected again: {:?}",
        run.started.elapsed().as_secs_f64(),
        back.then(|| cluster.sessions())
    ));
    assert!(back, "B reconnected through HAProxy");
    sleep_until(run.started + Duration::from_secs(8));
    cluster.replicas[at_b].relaunch();
    events.push(format!(
        "{:5.1}s  replica {at_b} relaunched",
        run.started.elapsed().as_secs_f64()
    ));
    kill(&mut cluster, &run, &mut events, (at_a, "A's"), 12);
    let back = wait_until(Duration::from_secs(20), || {
        cluster.sessions().iter().sum::<u64>() == 2
    });
    events.push(format!(
        "{:5.1}s  both sessions connected again: {:?}",
        run.started.elapsed().as_secs_f64(),
        back.then(|| cluster.sessions())
    ));
    assert!(back, "A reconnected through HAProxy");

    let acc = run.finish(Duration::from_secs(60), Duration::from_secs(2));
    println!("\nevents:");
    for event in &events {
        println!("  {event}");
    }
    println!(
        "peer A: {:?}\npeer B: {:?}",
        peer_counters(&a),
        peer_counters(&b)
    );
    acc.print_table("100 RPC/s for 20 s, A → B through HAProxy, two replicas SIGKILLed");
    assert_accounted(&acc, 2000);
}

/// A rolling restart during 20 s of 100 RPC/s from A to B: each replica in turn is
/// stopped with SIGTERM (graceful: sessions closed, queues kept) and started again 2 s
/// later, as an upgrade would do it; the peers follow through HAProxy.
#[test]
fn rolling_restart_of_every_replica_loses_nothing() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if !haproxy_here() {
        return;
    }
    let mut cluster = Cluster::start(3);
    let (a, _) = cluster.node_located("//Alice");
    let (b, _) = cluster.node_located("//Bob");
    let run = Traffic::start(&a, &b, 100, Duration::from_secs(20));
    let mut events = Vec::new();
    for (i, at) in [(0, 3), (1, 8), (2, 13)] {
        sleep_until(run.started + Duration::from_secs(at));
        let status = cluster.replicas[i].terminate();
        events.push(format!(
            "{:5.1}s  SIGTERM replica {i}: exited {status:?}",
            run.started.elapsed().as_secs_f64()
        ));
        assert!(
            status.is_some_and(|s| s.success()),
            "replica {i} shut down cleanly"
        );
        std::thread::sleep(Duration::from_secs(2));
        cluster.replicas[i].relaunch();
        let sessions = cluster.wait_sessions(2);
        events.push(format!(
            "{:5.1}s  replica {i} back; sessions {sessions:?}",
            run.started.elapsed().as_secs_f64()
        ));
    }
    let acc = run.finish(Duration::from_secs(60), Duration::from_secs(2));
    println!("\nevents:");
    for event in &events {
        println!("  {event}");
    }
    println!(
        "peer A: {:?}\npeer B: {:?}",
        peer_counters(&a),
        peer_counters(&b)
    );
    acc.print_table("100 RPC/s for 20 s, A → B through HAProxy, rolling restart (SIGTERM)");
    assert_accounted(&acc, 2000);
}

/// The chaos accounting: every request answered (its own payload) or refused explicitly,
/// none lost, none answered twice, the bot ran each request at most once.
fn assert_accounted(acc: &Accounting, sent: u64) {
    assert_eq!(acc.sent, sent, "the sender kept its schedule");
    assert_eq!(
        acc.lost,
        0,
        "requests without an answer (the first of them: {:?})",
        &acc.lost_refs[..acc.lost_refs.len().min(20)]
    );
    assert_eq!(acc.mismatched, 0, "answers carrying another payload");
    assert_eq!(acc.duplicated, 0, "answers beyond the first");
    assert_eq!(acc.strays, 0, "answers to requests never sent");
    assert_eq!(acc.handled_twice, 0, "requests the bot ran twice");
    assert_eq!(
        acc.sent,
        acc.ok + acc.error(),
        "sent = answered + explicit errors"
    );
    assert!(
        acc.handler_runs >= acc.ok,
        "every request answered with its payload was run by the bot"
    );
}

/// SIGKILLs `replica` (`(index, whose)`) at `at` seconds into the run and notes it.
fn kill(
    cluster: &mut Cluster,
    run: &Traffic,
    events: &mut Vec<String>,
    (replica, whose): (usize, &str),
    at: u64,
) {
    sleep_until(run.started + Duration::from_secs(at));
    let before = run.tally();
    cluster.replicas[replica].kill();
    events.push(format!(
        "{:5.1}s  SIGKILL replica {replica} ({whose}); {} sent, {} answered so far",
        run.started.elapsed().as_secs_f64(),
        before.sent,
        before.ok + before.error()
    ));
}

fn sleep_until(when: Instant) {
    if let Some(wait) = when.checked_duration_since(Instant::now()) {
        std::thread::sleep(wait);
    }
}

/// Polls `done` every 100 ms for up to `limit`.
fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    done()
}

/// docs/operations.md shows the example file as it is (the one these tests run).
#[test]
fn operations_md_shows_the_tested_config() {
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
    let config = std::fs::read_to_string(haproxy::example_config()).unwrap();
    let guide = std::fs::read_to_string(docs.join("operations.md")).unwrap();
    assert!(
        guide.contains(&format!("```haproxy\n{config}```")),
        "docs/operations.md must include docs/examples/haproxy.cfg verbatim"
    );
}
