//! Log streams (a rotated file loses no line) and plugins (output published, a topic
//! read).

use std::io::Write;
use std::time::{Duration, Instant};

use rmb_testsupport::relay_process::RelayProcess;

use super::node::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_stream_survives_rotation_without_losing_a_line() {
    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    let alice = Node::start("//Alice", &relay, &registry).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let write = |path: &std::path::Path, lines: std::ops::RangeInclusive<u32>| {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        for i in lines {
            writeln!(f, "line {i}").unwrap();
        }
    };
    write(&log, 1..=3);
    let topic = format!("{}/logs", alice.twin);
    let _streamer = alice.background(
        &["stream"],
        &[log.to_str().unwrap(), "--topic", "logs", "--from-start"],
    );
    let deadline = Instant::now() + WAIT;
    while pulled_or_empty(&alice, &topic).len() < 3 {
        assert!(Instant::now() < deadline, "the first lines never arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Lines, then a rotation (renamed away, recreated) right after, then more lines.
    write(&log, 4..=50);
    std::fs::rename(&log, dir.path().join("app.log.1")).unwrap();
    write(&log, 51..=100);
    let expected: Vec<String> = (1..=100).map(|i| format!("line {i}")).collect();
    let deadline = Instant::now() + WAIT;
    loop {
        let got = pulled(&alice, &topic);
        if got.len() >= expected.len() {
            assert_eq!(got, expected);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} lines arrived",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_publishes_its_output_and_reads_a_topic() {
    let relay = RelayProcess::start(&[]);
    let registry = relay.http_url();
    let alice = Node::start("//Alice", &relay, &registry).await;
    // The input topic does not exist: like the output topic, the plugin creates it.
    let out = format!("{}/out", alice.twin);
    let program = "echo ready; while read l; do echo \"got $l\"; done";
    let _plugin = alice.background(
        &["plugin"],
        &["--topic", "out", "--input", "in", "--", "sh", "-c", program],
    );
    let deadline = Instant::now() + WAIT;
    while pulled_or_empty(&alice, &out).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the plugin's first line never arrived"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for text in ["a", "b c"] {
        let sent = run(
            &["pub", "--http", &alice.http, "in", text].map(String::from),
            "",
        );
        assert!(sent.status.success());
    }
    let deadline = Instant::now() + WAIT;
    while pulled(&alice, &out).len() < 3 {
        assert!(
            Instant::now() < deadline,
            "the plugin's answers never arrived"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pulled(&alice, &out), ["ready", "got a", "got b c"]);
}
