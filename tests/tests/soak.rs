//! Issue #33's short soak: 36 s of the whole mix across two federating relays (RPCs at
//! 100 per second through the Redis API, topic messages at 10 per second through the HTTP
//! API with Redis-list delivery, 256 KiB `rmb pipe` transfers every 3 s) while relay B
//! and peer B are SIGKILLed and relaunched and relay A, peer A and relay B are each
//! stopped (SIGSTOP) for 3 s. Every RPC must be answered once and handled once, the
//! subscriber must get every topic id once and in order, and no pipe transfer may be
//! corrupted or hang. `--nocapture` shows the tables; `scripts/soak.sh` is the long one.

use std::time::Duration;

use rmb_testsupport::chaos::Target;
use rmb_testsupport::soak::{self, Bounds, Event, PipeSettings, SoakConfig};

#[test]
fn the_whole_mix_survives_kills_and_stalls_across_federated_relays() {
    let duration = Duration::from_secs(36);
    let events = soak::schedule(
        duration,
        Duration::from_secs(12),
        Duration::from_secs(2),
        &[Target::RelayB, Target::PeerB],
        &[Target::Relay, Target::PeerA, Target::RelayB],
        3.0,
    );
    let kills = events
        .iter()
        .filter(|e| matches!(e, Event::Kill(_)))
        .count();
    assert_eq!((events.len(), kills), (5, 2), "schedule: {events:?}");
    let config = SoakConfig {
        duration,
        rpc_rate: 100,
        topic_rate: 10,
        pipes: PipeSettings {
            bytes: 256 * 1024,
            every: Duration::from_secs(3),
            limit: Duration::from_secs(90),
        },
        events,
        exp: 120,
        drain: Duration::from_secs(60),
        // Reported, not asserted: 36 s is no leak test (the hour in docs/delivery.md is).
        bounds: Bounds {
            warmup_secs: 10.0,
            rss_factor: 1.5,
            rss_slack_mib: 20.0,
            fd_slack: 10,
        },
        verbose: true,
    };
    let report = soak::run(&config);
    report.print();

    assert_eq!(report.rpc.crashes.len(), 2, "both kills happened");
    assert_eq!(report.pauses.len(), 3, "the three stalls happened");
    let rpc = &report.rpc;
    assert_eq!(rpc.sent, 3600, "RPCs sent on schedule");
    assert_eq!(rpc.lost, 0, "RPCs without an answer");
    assert_eq!(rpc.duplicated, 0, "RPC answers beyond the first");
    assert_eq!(rpc.handled_twice, 0, "envelope uids the bot handled twice");
    assert_eq!(rpc.payloads_handled_twice, 0, "requests handled twice");
    assert_eq!(rpc.mismatched + rpc.strays, 0, "foreign answers");
    assert_eq!(rpc.leftover_total(), 0, "left behind: {:?}", rpc.leftovers);

    let topics = &report.topics;
    assert!(
        topics.published > 200,
        "topic publishes answered: {topics:?}"
    );
    assert_eq!(topics.gaps, 0, "topic ids never delivered");
    assert_eq!(topics.duplicates, 0, "topic ids delivered twice");
    assert_eq!(topics.out_of_order, 0, "topic ids out of order");
    assert_eq!(topics.stored_twice, 0, "messages stored under two ids");
    assert_eq!(topics.acked_not_delivered + topics.gap_events, 0);
    assert_eq!(topics.delivered, topics.max_id, "each id once");

    let pipes = &report.pipes;
    assert!(pipes.intact >= 3, "intact pipe transfers: {pipes:?}");
    assert_eq!(pipes.corrupt, 0, "transfers that exited 0 with other bytes");
    assert_eq!(pipes.hung, 0, "transfers that never ended");
    assert_eq!(pipes.bytes_intact, pipes.intact * 256 * 1024);

    assert!(
        report.resources.iter().all(|p| !p.lives.is_empty()),
        "every process sampled"
    );
    assert!(report.rpc_clean() && report.topics.is_clean() && report.pipes.is_clean());
}
