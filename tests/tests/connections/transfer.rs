//! Bytes arrive intact (sha256): through one relay, across two federated relays, over
//! many connections at once, and with a relay killed mid-transfer.

use std::time::Duration;

use rmb_peer::Client;
use rmb_testsupport::direct::{connect_client, fresh_mnemonic, register_secret};
use rmb_testsupport::redis_server::free_port;
use rmb_testsupport::relay_process::RelayProcess;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipe_through_one_relay_carries_bytes_intact() {
    let relay = RelayProcess::start(&[]);
    let (alice, bob) = pair(&relay).await;
    let server = serve_digest(&bob);
    let bytes = data(big_mib() << 20, 1);
    let mut stream = alice
        .connections()
        .connect_address(bob.address().clone(), "sha256")
        .await
        .expect("connect");
    assert_eq!(stream.remote(), bob.address());
    let started = std::time::Instant::now();
    pipe_digest(&mut stream, &bytes).await;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{} MiB through one relay in {secs:.1} s ({:.1} MB/s), {:?}",
        big_mib(),
        bytes.len() as f64 / secs / 1e6,
        stream.stats()
    );
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipe_across_two_federated_relays_carries_bytes_intact() {
    let (p1, p2) = (free_port(), free_port());
    let r1 = RelayProcess::start_on(p1, &["--federation-http"]);
    let registry = r1.http_url();
    let r2 = RelayProcess::start_on(p2, &["--federation-http", "--registry", &registry]);
    let (sa, sb) = (fresh_mnemonic(), fresh_mnemonic());
    register_secret(&registry, &sa, &[r1.domain()]).await;
    register_secret(&registry, &sb, &[r2.domain()]).await;
    let alice = connect_client(&sa, "a", &[&r1], &registry).await;
    let bob = connect_client(&sb, "b", &[&r2], &registry).await;
    let server = serve_digest(&bob);
    let bytes = data(big_mib() << 20, 2);
    let mut stream = alice
        .connections()
        .connect_address(bob.address().clone(), "sha256")
        .await
        .expect("connect");
    let started = std::time::Instant::now();
    pipe_digest(&mut stream, &bytes).await;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{} MiB across two relays in {secs:.1} s ({:.1} MB/s), {:?}",
        big_mib(),
        bytes.len() as f64 / secs / 1e6,
        stream.stats()
    );
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_connections_at_once_each_get_their_own_bytes() {
    let relay = RelayProcess::start(&[]);
    let (alice, bob) = pair(&relay).await;
    let server = serve_digest(&bob);
    let opens = (0..40).map(|i| {
        let (alice, to) = (&alice, bob.address().clone());
        async move {
            let mut stream = alice
                .connections()
                .connect_address(to, "sha256")
                .await
                .expect("connect");
            pipe_digest(&mut stream, &data(100_000 + i * 1000, i as u64)).await;
        }
    });
    futures_util::future::join_all(opens).await;
    assert_eq!(
        bob.connections()
            .counters()
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed),
        40
    );
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_mid_transfer_loses_nothing_with_a_second_relay() {
    let r0 = RelayProcess::start(&[]);
    let registry = r0.http_url();
    let mut r1 = RelayProcess::start(&["--federation-http", "--registry", &registry]);
    let r2 = RelayProcess::start(&["--federation-http", "--registry", &registry]);
    let (sa, sb) = (fresh_mnemonic(), fresh_mnemonic());
    let both = [r1.domain(), r2.domain()];
    register_secret(&registry, &sa, &both).await;
    register_secret(&registry, &sb, &both).await;
    let alice = connect_client(&sa, "a", &[&r1, &r2], &registry).await;
    let bob = connect_client(&sb, "b", &[&r1, &r2], &registry).await;
    for _ in 0..200 {
        let up = |c: &Client| c.status().relays.iter().all(|l| l.connected);
        if up(&alice) && up(&bob) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let server = serve_digest(&bob);
    let bytes = data(16 << 20, 3);
    let mut stream = alice
        .connections()
        .connect_address(bob.address().clone(), "sha256")
        .await
        .expect("connect");
    let (first, rest) = bytes.split_at(6 << 20);
    for chunk in first.chunks(64 << 10) {
        stream.write_all(chunk).await.unwrap();
    }
    // At least 4 MiB went through r1 (the send buffer holds 2 MiB); kill it.
    assert!(alice.status().relays[0].sent > 0);
    r1.kill();
    for chunk in rest.chunks(64 << 10) {
        stream.write_all(chunk).await.expect("write after the kill");
    }
    stream.shutdown().await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("answer");
    assert_eq!(answer.len(), 40);
    assert_eq!(answer[..32], Sha256::digest(&bytes)[..], "sha256 differs");
    assert_eq!(
        u64::from_be_bytes(answer[32..].try_into().unwrap()),
        bytes.len() as u64
    );
    println!("transfer across a relay failure: {:?}", stream.stats());
    let status = alice.status();
    assert!(
        !status.relays[0].connected && status.relays[1].sent > 0,
        "the transfer went on through the second relay: {status:?}"
    );
    server.abort();
}
