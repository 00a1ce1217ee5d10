//! A serving direct client (`rmb_peer::Client`, run in a child process so it can be
//! paused) receives hostile envelopes injected through a raw relay session: tampered
//! ciphertext, bad signature, spoofed signer, expired, replayed. Each is refused (its
//! handler never runs; a replay runs once and gets the cached reply). A request whose
//! signature holds gets a signed error envelope with the rmb-rs code back; one with a
//! bad or spoofed signature gets nothing (it proves nothing about who sent it).

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rmb_identity::registry::http::HttpRegistry;
use rmb_identity::registry::{Registry, RegistryChoice, TwinUpdate};
use rmb_identity::{Identity, KeyType, verify_envelope};
use rmb_peer::{Client, ClientOptions};
use rmb_proto::{Address, Envelope, Message, MessageKind, Payload, Request};
use rmb_testsupport::direct::fresh_mnemonic;
use rmb_testsupport::relay_client::{TestClient, now};
use rmb_testsupport::relay_process::RelayProcess;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(15);
const QUIET: Duration = Duration::from_millis(1500);
const SID: &str = "svc";
const CHILD_ENV: &str = "RMB_SECURITY_SERVER";

/// Child side: a direct client serving `count`, printing `ran <uid>` per handler run.
async fn serve_in_child(config: &str) -> ! {
    let mut lines = config.lines();
    let (ws, registry, secret) = (
        lines.next().unwrap(),
        lines.next().unwrap(),
        lines.next().unwrap(),
    );
    let choice = RegistryChoice::Embedded {
        url: registry.to_string(),
    };
    let client = Client::connect(ClientOptions::new(
        secret,
        SID,
        vec![ws.to_string()],
        choice,
    ))
    .await
    .expect("serving client connects");
    client.serve("count", |req| async move {
        println!("ran {}", req.uid);
        Ok(req.payload)
    });
    println!("ready {}", client.twin_id());
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

struct Server {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    ran: Vec<String>,
}

impl Server {
    fn start(config: String) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "hostile_envelopes_are_refused", "--nocapture"])
            .env(CHILD_ENV, config)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Server {
            child,
            lines,
            ran: Vec::new(),
        }
    }

    /// Reads the child's output until a line starts with `prefix`; returns the rest.
    async fn wait_for(&mut self, prefix: &str) -> String {
        loop {
            let line = tokio::time::timeout(WAIT, self.lines.recv())
                .await
                .unwrap_or_else(|_| panic!("no '{prefix}' from the serving child"))
                .expect("serving child ended");
            if let Some(uid) = line.strip_prefix("ran ") {
                self.ran.push(uid.to_string());
            }
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.to_string();
            }
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Server {
    /// Waits until the kernel reports the child stopped: a signal is delivered
    /// asynchronously, and a loaded machine may let the child run (and answer) a little
    /// longer after `kill -STOP` returns.
    fn wait_stopped(&self) {
        let stat = format!("/proc/{}/stat", self.child.id());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            let text = std::fs::read_to_string(&stat).unwrap_or_default();
            // The state follows the parenthesised command name: `pid (comm) T …`.
            let state = text
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next());
            if state == Some('T') {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the serving child did not stop");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `count` request from twin `from` to the server, encrypted to `key` if given.
fn request(
    signer: &Identity,
    from: u32,
    to: &Address,
    uid: &str,
    ttl: u64,
    key: Option<&[u8]>,
) -> Envelope {
    let mut env = Envelope {
        uid: uid.to_string(),
        expiration: ttl,
        source: Some(Address::twin(from)),
        destination: Some(to.clone()),
        message: Some(Message::Request(Request {
            command: "count".into(),
        })),
        payload: Some(Payload::Plain(format!("body of {uid}").into_bytes())),
        ..Default::default()
    };
    signer.seal_envelope(&mut env, key, now()).unwrap();
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_envelopes_are_refused() {
    if let Ok(config) = std::env::var(CHILD_ENV) {
        serve_in_child(&config).await;
    }
    let relay = RelayProcess::start(&[]);
    let registry_url = relay.http_url();
    let registry = HttpRegistry::new(&registry_url).unwrap();
    let create = TwinUpdate {
        relays: [relay.domain()].into(),
        pk: None,
        create: true,
    };
    let server_secret = fresh_mnemonic();
    let server_identity = Identity::from_secret(&server_secret, KeyType::Sr25519).unwrap();
    let s = registry
        .publish(server_identity.signer(), &create)
        .await
        .unwrap()
        .id;
    let raw = Identity::from_secret(&fresh_mnemonic(), KeyType::Ed25519).unwrap();
    let r = registry.publish(raw.signer(), &create).await.unwrap().id;
    let mallory = Identity::from_secret(&fresh_mnemonic(), KeyType::Sr25519).unwrap();

    let mut server = Server::start(format!(
        "{}\n{registry_url}\n{server_secret}",
        relay.ws_url()
    ));
    assert_eq!(server.wait_for("ready ").await, s.to_string());
    let to = Address::session(s, SID);
    let key = registry.get_twin(s).await.unwrap().unwrap().pk;
    let key = key.as_deref();
    assert!(key.is_some(), "the server published its encryption key");
    let mut client = TestClient::connect(&relay.ws_url(), &raw, r, None).await;

    // The reply to `uid`, checked to be signed by the server.
    async fn reply(client: &mut TestClient, server: &Identity, uid: &str) -> Envelope {
        let env = client.recv(WAIT).await.expect("a reply comes back");
        assert_eq!(env.uid, uid);
        assert_eq!(env.source, Some(Address::session(env.source_twin(), SID)));
        verify_envelope(&env, &server.signer().account())
            .expect("replies are signed by the server");
        env
    }
    fn error_code(env: &Envelope) -> (u32, String) {
        match &env.message {
            Some(Message::Error(e)) => (e.code, e.message.clone()),
            other => panic!("expected an error envelope, got {other:?}"),
        }
    }

    // A good request works, and proves the server is listening.
    let good = request(&raw, r, &to, "good-1", 60, key);
    client.send(&good).await;
    let answer = reply(&mut client, &server_identity, "good-1").await;
    assert_eq!(answer.kind(), MessageKind::Response);
    assert_eq!(
        answer.payload,
        Some(Payload::Plain(b"body of good-1".to_vec()))
    );

    // Replayed: the same bytes again never run the handler a second time. The sender
    // may have lost the first answer (that is why honest senders resend), so it gets
    // that very answer again, from the reply cache: same bytes, same signature.
    client.send(&good).await;
    let again = reply(&mut client, &server_identity, "good-1").await;
    assert_eq!(again, answer, "the cached reply, byte for byte");
    client.send(&good).await;
    assert_eq!(reply(&mut client, &server_identity, "good-1").await, answer);

    // Tampered ciphertext, signature left as it was: the signature no longer matches.
    // A bad signature proves nothing about the sender, so it gets no answer (one would
    // go to whichever twin the envelope names): the next reply is the next request's.
    let mut tampered = request(&raw, r, &to, "tampered-1", 60, key);
    if let Some(Payload::Cipher(bytes)) = &mut tampered.payload {
        bytes[20] ^= 1;
    } else {
        panic!("the request was encrypted");
    }
    client.send(&tampered).await;

    // Tampered ciphertext, re-signed by the sender: the signature holds, decryption fails.
    let mut resigned = request(&raw, r, &to, "tampered-2", 60, key);
    if let Some(Payload::Cipher(bytes)) = &mut resigned.payload {
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
    }
    raw.seal_envelope(&mut resigned, None, now()).unwrap();
    client.send(&resigned).await;
    let (code, message) = error_code(&reply(&mut client, &server_identity, "tampered-2").await);
    assert_eq!(code, 106, "{message}");
    assert!(message.starts_with("e2e error"), "{message}");

    // A broken signature, and a spoofed one (claims to come from the raw client's
    // twin, signed by someone else's key): unanswered too.
    let mut bad_sig = request(&raw, r, &to, "bad-sig-1", 60, key);
    bad_sig.signature.as_mut().unwrap()[10] ^= 0x40;
    client.send(&bad_sig).await;
    let spoofed = request(&mallory, r, &to, "spoofed-1", 60, key);
    client.send(&spoofed).await;

    // Expired: valid when the relay routes it, but the server (paused meanwhile)
    // reads it only after its 2 s of validity. Relays refuse expired envelopes, so
    // this is how an old envelope really reaches a peer: late, from its socket.
    server.signal("-STOP");
    server.wait_stopped();
    let expired = request(&raw, r, &to, "expired-1", 2, key);
    client.send(&expired).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    server.signal("-CONT");
    let (code, message) = error_code(&reply(&mut client, &server_identity, "expired-1").await);
    assert_eq!(
        (code, message.as_str()),
        (102, "envelope validation error: message has expired")
    );

    // A last good request; once it ran, every earlier handler run has been printed.
    client.send(&request(&raw, r, &to, "good-2", 60, key)).await;
    assert_eq!(
        reply(&mut client, &server_identity, "good-2").await.kind(),
        MessageKind::Response
    );
    server.wait_for("ran good-2").await;
    assert_eq!(
        server.ran,
        ["good-1", "good-2"],
        "handlers ran only for the good requests, once each"
    );
    assert_eq!(client.recv(QUIET).await, None, "nothing else came back");
}
