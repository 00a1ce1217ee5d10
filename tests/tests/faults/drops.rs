//! Faults made of dropped or rejected packets (nftables rules in the namespaces): loss on
//! every hop for the whole run; partitions switched on and off mid-run.

use rmb_testsupport::faults::{PacketDrop, Plan, Setup, step};

use super::{assert_accounted, run};

#[test]
fn ten_percent_packet_loss_on_every_hop() {
    let mut plan = Plan::new("10% loss, every hop", Setup::default());
    plan.steps = vec![step(0.0, "drop 10% of packets on every hop", |fed| {
        fed.drop_everywhere(PacketDrop::Percent(10))
    })];
    let Some(report) = run(plan) else { return };
    assert!(report.dropped_packets > 0, "the rules dropped nothing");
    assert_accounted(&report);
}

/// The relays cannot reach each other for 8 s: 4 s of silence (packets dropped, open
/// connections stall), then 4 s in which every segment is answered with a reset (open
/// connections die, new ones are refused), so relay A's forwarding has to retry.
#[test]
fn partition_between_the_relays_silent_then_refusing() {
    let mut plan = Plan::new("relay A | relay B 4+4 s", Setup::default());
    plan.steps = vec![
        step(3.0, "drop everything between the relays", |fed| {
            fed.drop_between("ra", "rb", PacketDrop::All)
        }),
        step(7.0, "reset everything between the relays", |fed| {
            fed.drop_between("ra", "rb", PacketDrop::Reset)
        }),
        step(11.0, "heal the partition", |fed| fed.heal()),
    ];
    let Some(report) = run(plan) else { return };
    assert!(report.dropped_packets > 0, "the partition dropped nothing");
    assert_accounted(&report);
}

/// Peer B's connection is reset and every reconnection refused for 8 s: relay B holds
/// what comes for B meanwhile, and B's answers wait in its peer.
#[test]
fn peer_b_cut_off_from_its_relay_with_resets_for_eight_seconds() {
    let mut plan = Plan::new("peer B | relay B reset 8 s", Setup::default());
    plan.steps = vec![
        step(3.0, "reset everything between peer B and relay B", |fed| {
            fed.drop_between("pb", "rb", PacketDrop::Reset)
        }),
        step(11.0, "heal the partition", |fed| fed.heal()),
    ];
    let Some(report) = run(plan) else { return };
    assert!(report.dropped_packets > 0, "the partition dropped nothing");
    assert_accounted(&report);
}
