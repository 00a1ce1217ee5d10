//! Envelopes recorded from software we did not write (rmb-rs, ThreeFold's TypeScript
//! client), made current again so they can be sent to live peers.
//!
//! A recorded request is minutes or days old, and peers refuse expired envelopes. Its
//! sender's secret is known (the test identities in `../shared/reference`), so
//! [`restamp`] rewrites only the timestamp (and, when asked, the uid) and the signature,
//! byte for byte in place: every other field keeps the recorded encoding, field order
//! and oddities (rmb-rs writes field 7 after 9 and 10; the TS client sends an empty
//! `tags`, a `relays` list, an empty `plain`). Restamping with the recorded values must
//! give back the recorded bytes exactly (ed25519 is deterministic), which proves the
//! signature is made the way the recorded sender made it.

use rmb_identity::{Identity, sign_envelope};
use rmb_proto::{DEFAULT_MAX_ENVELOPE_SIZE, Envelope};

/// Reads and parses `../shared/reference/ts-client-vectors.json`.
pub fn ts_client_vectors() -> serde_json::Value {
    let path = crate::shared_dir().join("reference/ts-client-vectors.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// The bytes of a vector's `envelope_hex`.
pub fn envelope_bytes(vector: &serde_json::Value) -> Vec<u8> {
    hex::decode(vector["envelope_hex"].as_str().expect("envelope_hex")).expect("hex")
}

/// The recorded envelope `recorded` with `timestamp` (and `uid`, if given) put in place
/// and signed again by `signer`; every other byte as recorded.
pub fn restamp(recorded: &[u8], uid: Option<&str>, timestamp: u64, signer: &Identity) -> Vec<u8> {
    let mut env = Envelope::decode_limited(recorded, DEFAULT_MAX_ENVELOPE_SIZE)
        .expect("a recorded envelope decodes");
    if let Some(uid) = uid {
        env.uid = uid.to_string();
    }
    env.timestamp = timestamp;
    sign_envelope(signer.signer(), &mut env);
    let signature = env.signature.expect("signed");

    let mut out = Vec::with_capacity(recorded.len());
    let mut at = 0;
    while at < recorded.len() {
        let start = at;
        let key = read_varint(recorded, &mut at);
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                read_varint(recorded, &mut at);
            }
            2 => at += read_varint(recorded, &mut at) as usize,
            other => panic!("wire type {other} is not used by envelopes"),
        }
        match (field, wire) {
            (3, 0) => {
                write_varint(key, &mut out);
                write_varint(timestamp, &mut out);
            }
            (1, 2) if uid.is_some() => write_bytes(key, env.uid.as_bytes(), &mut out),
            (9, 2) => write_bytes(key, &signature, &mut out),
            _ => out.extend_from_slice(&recorded[start..at]),
        }
    }
    out
}

fn read_varint(bytes: &[u8], at: &mut usize) -> u64 {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = bytes[*at];
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return value;
        }
    }
    panic!("varint longer than 10 bytes");
}

fn write_varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn write_bytes(key: u64, bytes: &[u8], out: &mut Vec<u8>) {
    write_varint(key, out);
    write_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}
