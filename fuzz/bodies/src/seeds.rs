//! The starting inputs of every target, made with the project's own encoders (signed
//! envelopes and tokens, sealed payloads, documents as apps write them) plus the real
//! rmb-rs and TypeScript-client captures from the reference folder. Written to
//! fuzz/seeds/<target>/ by `cargo test -p rmb-fuzz-bodies -- --ignored write_seeds`;
//! cargo-fuzz starts from those files and the corpus test reads them.

use std::path::Path;

use axum::body::Bytes;
use prost::Message as _;
use rmb_identity::registry::api::{ChangesResponse, ErrorBody, PublishRequest};
use rmb_identity::registry::{Twin, TwinUpdate};
use rmb_identity::{E2eScheme, Identity, KeyType, Token, sign_envelope};
use rmb_peer::conn::wire::{Accept, DATA, FIN, Frame, Open, PING};
use rmb_peer::topics::wire as topic;
use rmb_proto::peer::Backlog;
use rmb_proto::{Address, Envelope, Error, Message, Payload, Ping, Pong, Request, Response};
use rmb_relay::federation::batch::{self, Outcome};
use rmb_relay::replicas::wire as replica;
use rmb_relay::switch::SessionId;
use serde::Serialize;

/// One seed: the target it is for, a file name, its bytes.
pub type Seed = (&'static str, String, Vec<u8>);

fn identity(secret: &str, key_type: KeyType) -> Identity {
    Identity::from_secret(secret, key_type).expect("dev secrets derive")
}

fn json(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(value).expect("seed documents serialize")
}

/// `selector` followed by `bytes`: the input of a target that dispatches on its first byte.
fn with(selector: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![selector];
    out.extend_from_slice(bytes);
    out
}

/// Signed envelopes of every kind, as peers and relays send them.
pub fn envelopes() -> Vec<Vec<u8>> {
    let alice = identity("//Alice", KeyType::Ed25519);
    let bob = identity("//Bob", KeyType::Sr25519);
    let base = |uid: &str, message: Message| Envelope {
        uid: uid.into(),
        timestamp: 1_700_000_000,
        expiration: 300,
        source: Some(Address::twin(1)),
        destination: Some(Address::session(2, "web")),
        message: Some(message),
        schema: Some("application/json".into()),
        payload: Some(Payload::Plain(br#"{"v":1}"#.to_vec())),
        ..Default::default()
    };
    let mut list = vec![
        base(
            "r-1",
            Message::Request(Request {
                command: "calc.add".into(),
            }),
        ),
        base("r-2", Message::Response(Response {})),
        base(
            "r-3",
            Message::Error(Error {
                code: 404,
                message: "no such twin".into(),
            }),
        ),
        base("r-4", Message::Ping(Ping {})),
        base("r-5", Message::Pong(Pong {})),
    ];
    let mut cipher = base(
        "r-6",
        Message::Request(Request {
            command: "rmb.topic.publish".into(),
        }),
    );
    cipher.payload = Some(Payload::Cipher(vec![0xab; 60]));
    cipher.tags = Some("fail-fast".into());
    cipher.relays = vec!["relay.example".into(), "127.0.0.1:8081".into()];
    list.push(cipher);
    let mut out = Vec::new();
    for (i, mut env) in list.into_iter().enumerate() {
        sign_envelope(
            if i % 2 == 0 {
                alice.signer()
            } else {
                bob.signer()
            },
            &mut env,
        );
        out.push(env.to_bytes());
    }
    out
}

/// The seeds of every target made here (the reference captures are added by
/// [`reference`]).
pub fn made() -> Vec<Seed> {
    let mut seeds: Vec<Seed> = Vec::new();
    let mut add = |target: &'static str, name: &str, bytes: Vec<u8>| {
        seeds.push((target, name.to_string(), bytes));
    };
    let envelopes = envelopes();
    for (i, env) in envelopes.iter().enumerate() {
        add("envelope_decode", &format!("made-{i}"), env.clone());
    }
    let alice = identity("//Alice", KeyType::Sr25519);
    let alice_ed = identity("//Alice", KeyType::Ed25519);
    add(
        "jwt_parse",
        "sr25519",
        Token::create(alice.signer(), 1, None, 1_700_000_000, 300).into_bytes(),
    );
    add(
        "jwt_parse",
        "ed25519-sid",
        Token::create(alice_ed.signer(), 7, Some("web"), 1_700_000_000, 60).into_bytes(),
    );

    // Sealed for //Charlie: well-formed ciphertexts the target's receiver (//Bob) cannot open.
    let charlie = identity("//Charlie", KeyType::Sr25519);
    for scheme in [E2eScheme::X25519, E2eScheme::Secp256k1] {
        let key = charlie.e2e_public_key(scheme);
        for (n, plain) in [&b""[..], b"hello", &[7u8; 300]].into_iter().enumerate() {
            let sealed = alice
                .e2e()
                .seal(&key, plain)
                .expect("sealing for a valid key");
            add("e2e_open", &format!("{}-{n}", scheme.as_str()), sealed);
        }
    }

    let request = |exp: u64, now: u64, dat: &str, dst: &str| {
        format!(
            r#"{{"ver":1,"ref":"r-1","cmd":"calc.add","exp":{exp},"dat":"{dat}","tag":null,"dst":{dst},"ret":"ret-1","shm":"application/json","now":{now}}}"#
        )
        .into_bytes()
    };
    add(
        "redis_request",
        "good",
        request(60, 1_699_999_990, "eyJ2IjoxfQ==", "[41,42]"),
    );
    add("redis_request", "zero-now", request(7200, 0, "", "[1,1]"));
    add("redis_request", "expired", request(10, 1_000, "", "[1]"));
    add("redis_request", "bad-base64", request(10, 0, "!!", "[1]"));
    add(
        "redis_request",
        "no-ret",
        br#"{"ver":1,"cmd":"a","exp":5,"dat":"","dst":[1],"now":0}"#.to_vec(),
    );
    add("redis_reply", "ok", br#"{"ver":1,"ref":"u-1","dat":"eyJ2IjoxfQ==","dst":"7:s","shm":"application/json","now":5,"err":null}"#.to_vec());
    add("redis_reply", "err", br#"{"ver":1,"ref":"u-1","dat":"","dst":"7","shm":null,"now":0,"err":{"code":42,"message":"no"}}"#.to_vec());
    add(
        "redis_reply",
        "bad-dat",
        br#"{"ver":1,"ref":"u-1","dat":"!!","dst":"7","shm":null,"now":0,"err":null}"#.to_vec(),
    );
    add("redis_documents", "incoming-request", with(0, br#"{"ver":1,"ref":"5f0c6c52-2a4e","src":"7:web","cmd":"zos.system.version","exp":60,"dat":"","tag":null,"ret":"msgbus.system.reply","shm":"application/json","now":1700000000}"#));
    add("redis_documents", "incoming-response", with(1, br#"{"ver":1,"ref":"r-1","dat":"eyJ2IjoxfQ==","src":"41","shm":"application/json","now":1700000001,"err":null}"#));
    let backlog = Backlog {
        uid: "5f0c6c52".into(),
        reference: Some("r-1".into()),
        reply_to: "ret-1".into(),
        module: "calc".into(),
        ttl: 300,
    };
    add(
        "redis_documents",
        "backlog",
        with(2, &backlog.encode_to_vec()),
    );
    add("redis_documents", "dat", with(3, b"eyJ2IjoxfQ"));

    add(
        "http_bodies",
        "config",
        with(
            0,
            br#"{"publish":[3,4],"subscribe":"anyone","retention_count":10,"retention_secs":60}"#,
        ),
    );
    add(
        "http_bodies",
        "draft-json",
        with(
            1,
            br#"{"message":"aGk=","encoding":"base64","title":"t","priority":4,"tags":["a","b"]}"#,
        ),
    );
    add(
        "http_bodies",
        "draft-raw",
        with(2, b"Disk full\n5\nwarning,disk\nthe disk is full"),
    );
    add(
        "http_bodies",
        "subscribe",
        with(3, br#"{"since":10,"redis_list":true}"#),
    );
    add(
        "http_bodies",
        "call",
        with(
            4,
            br#"{"twin":7,"session":"web","cmd":"calc.add","payload":"[1,2]","timeout":5}"#,
        ),
    );
    add(
        "http_bodies",
        "call-base64",
        with(4, br#"{"twin":7,"cmd":"x","payload_base64":"AAECAw=="}"#),
    );
    add(
        "http_bodies",
        "query",
        with(5, b"since=10m&poll=1&limit=5&access_token=x"),
    );
    add("http_bodies", "last-event-id", with(6, b" 42 "));

    let message = topic::MessageJson {
        id: 3,
        event: "message".into(),
        topic: "7/alerts".into(),
        time: 1_700_000_000,
        publisher: 9,
        message: "AAEC".into(),
        encoding: Some("base64".into()),
        title: Some("t".into()),
        priority: Some(3),
        tags: vec!["a".into()],
    };
    let draft = topic::Draft {
        message: "disk full".into(),
        priority: Some(5),
        ..Default::default()
    };
    let topic_docs: Vec<(&str, Vec<u8>)> = vec![
        (
            "publish",
            json(&topic::PublishRequest {
                topic: "alerts".into(),
                draft: draft.clone(),
            }),
        ),
        (
            "subscribe",
            json(&topic::SubscribeRequest {
                topic: "alerts".into(),
                acks: topic::AckMode::Cumulative,
            }),
        ),
        (
            "ack",
            json(&topic::AckRequest {
                topic: "alerts".into(),
                last: 12,
            }),
        ),
        (
            "push-answer",
            json(&topic::PushAnswer {
                acks: topic::AckMode::Cumulative,
            }),
        ),
        (
            "subscribed",
            json(&topic::Subscribed {
                first_id: 1,
                last_id: 9,
                lease: Some(600),
            }),
        ),
        (
            "pull",
            json(&topic::PullRequest {
                topic: "alerts".into(),
                since: 4,
                limit: 100,
            }),
        ),
        (
            "pulled",
            json(&topic::Pulled {
                first_id: 1,
                last_id: 3,
                messages: vec![message.clone()],
            }),
        ),
        (
            "batch",
            json(&topic::Batch {
                messages: vec![message.clone()],
                acks: topic::AckMode::Cumulative,
                last: Some(8),
            }),
        ),
        (
            "published",
            json(&topic::Published {
                id: 3,
                topic: "7/alerts".into(),
                time: 1_700_000_000,
            }),
        ),
        ("message", json(&message)),
        (
            "gap",
            json(&topic::GapJson {
                event: "gap".into(),
                topic: "7/alerts".into(),
                from: 2,
                to: 5,
                time: 1,
            }),
        ),
        ("draft", json(&draft)),
        (
            "config",
            br#"{"publish":"anyone","retention_count":5}"#.to_vec(),
        ),
        ("name", b"7/alerts.disk-1".to_vec()),
    ];
    for (i, (name, bytes)) in topic_docs.into_iter().enumerate() {
        add("topic_wire", name, with(i as u8, &bytes));
    }

    let open = Open {
        id: [1; 16],
        ephemeral: [2; 32],
        window: 65_536,
        protocol: "ssh".into(),
        offer: vec![],
        signature: [3; 65],
    };
    let open2 = Open {
        offer: vec![2, 1, 9],
        ..open.clone()
    };
    let accept = Accept {
        ephemeral: [4; 32],
        window: 1 << 20,
        cipher: None,
        signature: [5; 65],
    };
    let accept2 = Accept {
        cipher: Some(rmb_aead::Cipher::Aes256Gcm),
        ..accept.clone()
    };
    add("conn_wire", "open-v1", with(0, &open.encode()));
    add("conn_wire", "open-v2", with(0, &open2.encode()));
    add("conn_wire", "accept-v1", with(1, &accept.encode()));
    add("conn_wire", "accept-v2", with(1, &accept2.encode()));
    let frame = Frame {
        flags: DATA | FIN,
        ack: 10,
        max_data: 1 << 20,
        offset: 5,
        code: 0,
        data: b"hello".to_vec(),
    };
    add("conn_wire", "frame-data", with(2, &frame.encode()));
    add(
        "conn_wire",
        "frame-ping",
        with(
            2,
            &Frame {
                flags: PING,
                ..Default::default()
            }
            .encode(),
        ),
    );
    let mut packet = vec![9u8; 16];
    packet.extend_from_slice(&7u64.to_be_bytes());
    packet.extend_from_slice(&[0xcc; 40]);
    add("conn_wire", "packet", with(3, &packet));

    let mut pipe = vec![0x01, 0, 0, 0, 3];
    pipe.extend_from_slice(b"abc");
    pipe.push(0x02);
    pipe.extend_from_slice(&[0x05, 0, 0, 0, 14]);
    pipe.extend_from_slice(br#"{"remote":"7"}"#);
    pipe.extend_from_slice(&[0x04, 0, 0, 0, 5]);
    pipe.extend_from_slice(b"reset");
    pipe.push(0x03);
    add("pipe_frames", "stream", pipe);
    add("pipe_frames", "fin-done", vec![0x02, 0x03]);

    let shared: Vec<Bytes> = envelopes
        .iter()
        .take(3)
        .map(|e| Bytes::from(e.clone()))
        .collect();
    add(
        "federation_batch",
        "three",
        with(0, &batch::encode(&shared)),
    );
    add(
        "federation_batch",
        "tiny",
        with(
            0,
            &batch::encode(&[Bytes::from_static(b"x"), Bytes::from_static(b"yz")]),
        ),
    );
    let answer = json(&vec![
        Outcome::accepted(),
        Outcome::refused(429, "rate limited"),
        Outcome::accepted(),
    ]);
    add(
        "federation_batch",
        "answer",
        with(1, &[&[3u8][..], &answer].concat()),
    );

    let sessions = [
        SessionId { twin: 7, sid: None },
        SessionId {
            twin: 8,
            sid: Some("web".into()),
        },
    ];
    let items = [
        (Bytes::from_static(b"envelope one"), 1_700_000_100),
        (Bytes::new(), u64::MAX),
    ];
    let mut out = Vec::new();
    replica::encode_batch(&mut out, 41, sessions.iter().zip(items.iter()));
    add("replica_frames", "batch", with(0, &out[4..]));
    out.clear();
    replica::encode_ack(&mut out, 42, &[40, 41]);
    add("replica_frames", "ack", with(0, &out[4..]));
    out.clear();
    replica::encode_ping(&mut out);
    add("replica_frames", "ping", with(0, &out[4..]));
    out.clear();
    replica::encode_hello(
        &mut out,
        &replica::Hello {
            id: "0123456789abcdef".into(),
            nonce: [6; 32],
        },
    );
    add("replica_frames", "hello", with(1, &out[4..]));
    out.clear();
    let mac = replica::mac(
        b"fuzz replica secret",
        replica::Side::Client,
        &[3; 32],
        "client",
        "server",
    );
    replica::encode_prove(
        &mut out,
        &replica::Prove {
            id: "client".into(),
            nonce: [8; 32],
            mac,
        },
    );
    add("replica_frames", "prove", with(2, &out[4..]));
    out.clear();
    replica::encode_proven(&mut out, &[9; 32]);
    add("replica_frames", "proven", with(3, &out[4..]));
    add(
        "replica_frames",
        "queue-entry",
        with(4, &[&b"1700000100|"[..], &envelopes[0]].concat()),
    );
    add("replica_frames", "wake", with(5, b"7:web"));

    let update = TwinUpdate {
        relays: ["relay.example".to_string(), "127.0.0.1:8081".to_string()].into(),
        pk: Some(vec![9; 32]),
        create: true,
    };
    let publish = PublishRequest::signed(alice.signer(), &update, 1_700_000_000_000);
    add("registry_bodies", "publish", with(0, &json(&publish)));
    let twin = Twin {
        id: 3,
        account: alice.signer().account(),
        relays: update.relays.clone(),
        pk: Some(vec![2; 33]),
    };
    add("registry_bodies", "twin", with(1, &json(&twin)));
    add(
        "registry_bodies",
        "changes",
        with(
            2,
            &json(&ChangesResponse {
                epoch: "e1".into(),
                version: 4,
                reset: false,
                twins: vec![twin.clone()],
            }),
        ),
    );
    add(
        "registry_bodies",
        "error",
        with(
            3,
            &json(&ErrorBody {
                error: "no such twin".into(),
            }),
        ),
    );
    add(
        "registry_bodies",
        "ss58",
        with(4, twin.account.to_string().as_bytes()),
    );
    add(
        "registry_bodies",
        "hex",
        with(4, format!("0x{}", twin.account.to_hex()).as_bytes()),
    );
    add(
        "registry_bodies",
        "relays",
        with(5, b"relay.example_ 127.0.0.1:8081__b.example"),
    );

    add(
        "personal_bodies",
        "notify",
        with(
            0,
            br#"{"text":"build done","title":"ci","level":"urgent","host":"box","escalated":true}"#,
        ),
    );
    add("personal_bodies", "finished", with(1, br#"{"command":"make","exit_code":2,"success":false,"duration_ms":3200,"host":"box","output":["error: x"]}"#));
    add("personal_bodies", "code", with(2, b"7-ABCDE-FGH23"));
    seeds
}

/// Envelopes and login tokens captured from the real rmb-rs peer and relay and from
/// the TypeScript client (`reference` is the folder holding the two vector files).
pub fn reference(reference: &Path) -> Vec<Seed> {
    let mut seeds = Vec::new();
    for file in ["rmb-rs-vectors.json", "ts-client-vectors.json"] {
        let Ok(text) = std::fs::read_to_string(reference.join(file)) else {
            continue;
        };
        let value: serde_json::Value = serde_json::from_str(&text).expect("vector files are JSON");
        collect(&value, file.trim_end_matches(".json"), &mut seeds);
    }
    seeds
}

fn collect(value: &serde_json::Value, path: &str, seeds: &mut Vec<Seed>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v.as_str()) {
                    ("envelope_hex", Some(hex)) => {
                        if let Some(bytes) = unhex(hex) {
                            seeds.push(("envelope_decode", path.to_string(), bytes));
                        }
                    }
                    ("token" | "query", Some(token)) if token.starts_with("ey") => {
                        seeds.push(("jwt_parse", path.to_string(), token.as_bytes().to_vec()));
                    }
                    _ => collect(v, &format!("{path}-{key}"), seeds),
                }
            }
        }
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                collect(v, &format!("{path}-{i}"), seeds);
            }
        }
        _ => {}
    }
}

fn unhex(hex: &str) -> Option<Vec<u8>> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}
