//! Proves the field numbers, not just a round trip: envelopes encoded by prost are read
//! back by a tiny protobuf reader written here from the wire-format rules alone
//! (tag = field << 3 | wire type; varints little-endian base-128), which knows nothing of
//! the generated types.

use rmb_proto::{Address, Envelope, Error, Message, Payload, Ping, Pong, Request, Response};

#[derive(Debug, PartialEq)]
enum Value {
    Varint(u64),
    Bytes(Vec<u8>),
}

fn read_varint(buf: &[u8], pos: &mut usize) -> u64 {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = buf[*pos];
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return value;
        }
    }
    panic!("varint too long");
}

/// Every (field number, value) in wire order; only the two wire types rmb uses.
fn fields(buf: &[u8]) -> Vec<(u64, Value)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let tag = read_varint(buf, &mut pos);
        let (field, wire_type) = (tag >> 3, tag & 7);
        match wire_type {
            0 => out.push((field, Value::Varint(read_varint(buf, &mut pos)))),
            2 => {
                let len = read_varint(buf, &mut pos) as usize;
                out.push((field, Value::Bytes(buf[pos..pos + len].to_vec())));
                pos += len;
            }
            other => panic!("unexpected wire type {other} for field {field}"),
        }
    }
    out
}

fn bytes(v: &str) -> Value {
    Value::Bytes(v.as_bytes().to_vec())
}

fn nested(value: &Value) -> Vec<(u64, Value)> {
    match value {
        Value::Bytes(b) => fields(b),
        Value::Varint(_) => panic!("expected an embedded message"),
    }
}

fn find(all: &[(u64, Value)], field: u64) -> Vec<&Value> {
    all.iter()
        .filter(|(f, _)| *f == field)
        .map(|(_, v)| v)
        .collect()
}

#[test]
fn every_request_field_has_its_rmb_rs_number() {
    let env = Envelope {
        uid: "uid-1".into(),
        tags: Some("fail-fast".into()),
        timestamp: 1_700_000_000,
        expiration: 300,
        source: Some(Address::session(41, "s")),
        destination: Some(Address::twin(55)),
        message: Some(Message::Request(Request {
            command: "zos.system.version".into(),
        })),
        signature: Some(vec![0x65; 65]),
        schema: Some("application/json".into()),
        federation: Some("old".into()),
        payload: Some(Payload::Cipher(vec![1, 2, 3])),
        relays: vec!["r1".into(), "r2".into()],
    };
    let all = fields(&env.to_bytes());

    assert_eq!(find(&all, 1), [&bytes("uid-1")]);
    assert_eq!(find(&all, 2), [&bytes("fail-fast")]);
    assert_eq!(find(&all, 3), [&Value::Varint(1_700_000_000)]);
    assert_eq!(find(&all, 4), [&Value::Varint(300)]);
    assert_eq!(
        nested(find(&all, 5)[0]),
        [(1, Value::Varint(41)), (2, bytes("s"))]
    );
    assert_eq!(nested(find(&all, 6)[0]), [(1, Value::Varint(55))]);
    assert_eq!(nested(find(&all, 7)[0]), [(1, bytes("zos.system.version"))]);
    assert_eq!(find(&all, 9), [&Value::Bytes(vec![0x65; 65])]);
    assert_eq!(find(&all, 10), [&bytes("application/json")]);
    assert_eq!(find(&all, 11), [&bytes("old")]);
    assert_eq!(find(&all, 14), [&Value::Bytes(vec![1, 2, 3])]);
    assert_eq!(find(&all, 17), [&bytes("r1"), &bytes("r2")]);
    let numbers: Vec<u64> = all.iter().map(|(f, _)| *f).collect();
    for absent in [8, 12, 13, 15, 16] {
        assert!(!numbers.contains(&absent), "field {absent} must be absent");
    }
}

#[test]
fn other_message_kinds_and_plain_payload() {
    let base = Envelope {
        uid: "u".into(),
        payload: Some(Payload::Plain(b"{}".to_vec())),
        ..Default::default()
    };
    let encode = |message: Message| {
        fields(
            &Envelope {
                message: Some(message),
                ..base.clone()
            }
            .to_bytes(),
        )
    };

    // An empty Response is still written: tag 8, length 0.
    let response = encode(Message::Response(Response {}));
    assert_eq!(find(&response, 8), [&Value::Bytes(vec![])]);
    assert_eq!(find(&response, 13), [&Value::Bytes(b"{}".to_vec())]);

    let error = encode(Message::Error(Error {
        code: 404,
        message: "gone".into(),
    }));
    assert_eq!(
        nested(find(&error, 12)[0]),
        [(1, Value::Varint(404)), (2, bytes("gone"))]
    );
    assert_eq!(
        find(&encode(Message::Ping(Ping {})), 15),
        [&Value::Bytes(vec![])]
    );
    assert_eq!(
        find(&encode(Message::Pong(Pong {})), 16),
        [&Value::Bytes(vec![])]
    );
}

#[test]
fn optional_presence_is_kept() {
    // `connection = Some("")` must be written (it is a different session from None), and
    // absent optionals must not be written at all.
    let env = Envelope {
        source: Some(Address::session(5, "")),
        tags: None,
        ..Default::default()
    };
    let all = fields(&env.to_bytes());
    assert_eq!(
        nested(find(&all, 5)[0]),
        [(1, Value::Varint(5)), (2, bytes(""))]
    );
    assert!(find(&all, 2).is_empty());
    assert!(find(&all, 9).is_empty());
}

#[test]
fn backlog_field_numbers() {
    use prost::Message as _;
    let backlog = rmb_proto::peer::Backlog {
        uid: "u".into(),
        reference: Some("r".into()),
        reply_to: "ret".into(),
        module: "cmd".into(),
        ttl: 9,
    };
    let all = fields(&backlog.encode_to_vec());
    assert_eq!(
        all,
        [
            (1, bytes("u")),
            (2, bytes("r")),
            (3, bytes("ret")),
            (4, bytes("cmd")),
            (5, Value::Varint(9))
        ]
    );
}
