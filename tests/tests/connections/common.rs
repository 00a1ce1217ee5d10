//! What the connection tests share: pairs of direct clients of fresh twins, a "sha256"
//! service and the transfer through it, `rmb pipe listen` as a far side, and unsigned
//! data frames built by hand.

use std::time::Duration;

use rmb_peer::Client;
use rmb_peer::conn::{Cipher, ConnectError, ListenOptions, Stream};
use rmb_proto::{Address, CONN_DATA_COMMAND, Envelope, Message, Payload, Request};
use rmb_testsupport::direct::{client_options, connect_client, fresh_mnemonic, register_secret};
use rmb_testsupport::relay_process::RelayProcess;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub(crate) const CALL: Duration = Duration::from_secs(15);

/// Two clients of fresh twins on one relay.
pub(crate) async fn pair(relay: &RelayProcess) -> (Client, Client) {
    let registry = relay.http_url();
    let (sa, sb) = (fresh_mnemonic(), fresh_mnemonic());
    register_secret(&registry, &sa, &[relay.domain()]).await;
    register_secret(&registry, &sb, &[relay.domain()]).await;
    let alice = connect_client(&sa, "alice", &[relay], &registry).await;
    let bob = connect_client(&sb, "bob", &[relay], &registry).await;
    (alice, bob)
}

/// `len` deterministic pseudo-random bytes (splitmix64 of a counter: every 8-byte word
/// differs, so a lost, repeated or moved frame changes the digest; and it is quick even
/// unoptimised, unlike a cryptographic generator over 100 MiB).
pub(crate) fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; len.next_multiple_of(8)];
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for word in bytes.chunks_exact_mut(8) {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        word.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// Serves "sha256" on `bob`: reads the stream to its end, answers with the digest and
/// the byte count, and finishes.
pub(crate) fn serve_digest(bob: &Client) -> tokio::task::JoinHandle<()> {
    let mut listener = bob
        .connections()
        .listen("sha256", ListenOptions::default())
        .unwrap();
    tokio::spawn(async move {
        while let Some(stream) = listener.accept().await {
            let mut stream = stream.expect("accept");
            tokio::spawn(async move {
                let mut hasher = Sha256::new();
                let mut buf = vec![0u8; 256 << 10];
                let mut total = 0u64;
                loop {
                    let n = stream.read(&mut buf).await.expect("read");
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                    hasher.update(&buf[..n]);
                }
                let mut answer = hasher.finalize().to_vec();
                answer.extend_from_slice(&total.to_be_bytes());
                stream.write_all(&answer).await.unwrap();
                // The opener checks the answer; a test that ended first drops this one.
                let _ = stream.finish().await;
            });
        }
    })
}

/// Sends `bytes` through a "sha256" connection and checks the far side's digest.
pub(crate) async fn pipe_digest(stream: &mut Stream, bytes: &[u8]) {
    for chunk in bytes.chunks(64 << 10) {
        stream.write_all(chunk).await.expect("write");
    }
    stream.shutdown().await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("read answer");
    assert_eq!(answer.len(), 40, "digest and length");
    assert_eq!(
        u64::from_be_bytes(answer[32..].try_into().unwrap()),
        bytes.len() as u64
    );
    assert_eq!(answer[..32], Sha256::digest(bytes)[..], "sha256 differs");
}

/// Size of the big transfers (MiB): `RMB_CONN_TEST_MIB`, else the 100 MiB, in
/// debug builds too (the packet encryption is built optimised even there, see
/// aead/src/lib.rs).
pub(crate) fn big_mib() -> usize {
    std::env::var("RMB_CONN_TEST_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}

/// Two clients whose connections offer and allow `alice_ciphers` and `bob_ciphers`
/// (empty: behave as a peer from before the cipher choice, version 1 only).
pub(crate) async fn pair_with_ciphers(
    relay: &RelayProcess,
    alice_ciphers: Vec<Cipher>,
    bob_ciphers: Vec<Cipher>,
) -> (Client, Client) {
    let registry = relay.http_url();
    let (sa, sb) = (fresh_mnemonic(), fresh_mnemonic());
    register_secret(&registry, &sa, &[relay.domain()]).await;
    register_secret(&registry, &sb, &[relay.domain()]).await;
    let mut options = client_options(&sa, "alice", &[relay], &registry);
    options.connections.ciphers = alice_ciphers;
    let alice = Client::connect(options).await.expect("alice connects");
    let mut options = client_options(&sb, "bob", &[relay], &registry);
    options.connections.ciphers = bob_ciphers;
    let bob = Client::connect(options).await.expect("bob connects");
    (alice, bob)
}

/// A client whose connections detect a dead peer quickly (keep-alive 1 s, dead after 4 s).
pub(crate) async fn connect_quick_keepalive(
    secret: &str,
    sid: &str,
    relays: &[&RelayProcess],
    registry: &str,
) -> Client {
    let mut options = client_options(secret, sid, relays, registry);
    options.connections.stream.keepalive = KEEPALIVE;
    options.connections.stream.idle_timeout = IDLE;
    Client::connect(options).await.expect("client connects")
}

pub(crate) const KEEPALIVE: Duration = Duration::from_secs(1);
pub(crate) const IDLE: Duration = Duration::from_secs(4);

/// Opens `protocol` on `to`, retrying while its listener is not up yet.
pub(crate) async fn connect_when_listening(
    client: &Client,
    to: &rmb_proto::Address,
    protocol: &str,
) -> Stream {
    for _ in 0..60 {
        match client
            .connections()
            .connect_address(to.clone(), protocol)
            .await
        {
            Ok(stream) => return stream,
            Err(ConnectError::UnknownProtocol { .. } | ConnectError::Timeout { .. }) => {
                tokio::time::sleep(Duration::from_millis(250)).await
            }
            Err(e) => panic!("connect: {e}"),
        }
    }
    panic!("{to} never listened for {protocol}");
}

/// `rmb pipe listen` as a separate process (so it can be SIGKILLed).
pub(crate) struct PipeListener(pub(crate) Option<std::process::Child>);

impl PipeListener {
    pub(crate) fn start(secret: &str, relay: &RelayProcess, protocol: &str) -> PipeListener {
        Self::start_with(secret, relay, protocol, &[])
    }

    /// As [`start`](Self::start), with `extra` flags.
    pub(crate) fn start_with(
        secret: &str,
        relay: &RelayProcess,
        protocol: &str,
        extra: &[&str],
    ) -> PipeListener {
        let rmb = rmb_testsupport::relay_process::binaries().join("rmb");
        let child = std::process::Command::new(rmb)
            .args(["pipe", "listen", "--protocol", protocol, "--relay"])
            .arg(relay.ws_url())
            .args(["--registry", &relay.http_url(), "--sid", "pipe"])
            .args(extra)
            .env("RMB_MNEMONIC", secret)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start rmb pipe listen");
        PipeListener(Some(child))
    }
}

impl Drop for PipeListener {
    fn drop(&mut self) {
        rmb_testsupport::child::kill(&mut self.0);
    }
}

/// An unsigned `rmb.conn.data` request with `payload`, claiming `source`.
pub(crate) fn unsigned_frame(source: Address, to: Address, payload: Vec<u8>) -> Envelope {
    let mut env = Envelope {
        uid: uuid_like(),
        expiration: 60,
        source: Some(source),
        destination: Some(to),
        message: Some(Message::Request(Request {
            command: CONN_DATA_COMMAND.into(),
        })),
        payload: Some(Payload::Plain(payload)),
        ..Default::default()
    };
    env.stamp_at(rmb_proto::time::unix_now());
    env
}

pub(crate) fn uuid_like() -> String {
    format!("{:032x}", rand::random::<u128>())
}
