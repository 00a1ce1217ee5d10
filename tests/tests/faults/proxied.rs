//! Faults made by the harness's TCP proxy on every hop (peer A–relay A, relay A–relay B
//! both ways, peer B–relay B): latency with a bandwidth cap; links stalled, then cut.

use std::time::Duration;

use rmb_testsupport::faults::{Plan, Setup, step};

use super::{assert_accounted, run};

fn proxied() -> Setup {
    Setup {
        proxies: true,
        ..Setup::default()
    }
}

#[test]
fn latency_of_150_ms_per_hop_and_64_kib_per_second_between_the_relays() {
    let mut plan = Plan::new("150 ms/hop, 64 KiB/s", proxied());
    plan.steps = vec![step(
        0.0,
        "150 ms each way per hop, 64 KiB/s relay to relay",
        |fed| {
            let p = fed.proxies();
            for proxy in p.all() {
                proxy.set_delay(Duration::from_millis(150), Duration::from_millis(150));
            }
            p.to_relay_a.set_rate(64 << 10);
            p.to_relay_b.set_rate(64 << 10);
        },
    )];
    let Some(report) = run(plan) else { return };
    assert_accounted(&report);
}

#[test]
fn links_stalled_for_six_seconds_then_cut() {
    let mut plan = Plan::new("stall 6 s, then cut", proxied());
    plan.steps = vec![
        step(3.0, "blackhole relay A <-> relay B", |fed| {
            let p = fed.proxies();
            p.to_relay_a.set_blackhole(true);
            p.to_relay_b.set_blackhole(true);
        }),
        step(9.0, "cut relay links, lift the blackhole", |fed| {
            let p = fed.proxies();
            for proxy in [&p.to_relay_a, &p.to_relay_b] {
                proxy.cut();
                proxy.set_blackhole(false);
            }
        }),
        step(11.0, "cut both peers' relay connections", |fed| {
            let p = fed.proxies();
            p.peer_a.cut();
            p.peer_b.cut();
        }),
    ];
    let Some(report) = run(plan) else { return };
    // Both peers dialled their relay again after the cut.
    let dialled = &report.proxy_connections;
    assert!(dialled[0] >= 2 && dialled[1] >= 2, "{dialled:?}");
    assert_accounted(&report);
}
