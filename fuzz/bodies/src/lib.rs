//! The body of every fuzz target: each takes any bytes, feeds them to a decoder that
//! reads bytes from the network or from a local app, and asserts what must hold for
//! every input (no panic, re-encoding gives back the input or an equal value, refusals
//! say what they must, allocations stay bounded by the input).
//!
//! Kept apart from the cargo-fuzz crate (fuzz/, nightly, libFuzzer) so that the stable
//! workspace test `tests/corpus.rs` runs every body over the checked-in seeds, the
//! regressions and deterministic mutations of them: the targets cannot rot unnoticed,
//! and a crash found once stays fixed.

pub mod alloc;
pub mod conn;
pub mod envelope;
pub mod federation;
pub mod http_api;
pub mod mutate;
pub mod personal;
pub mod pipes;
pub mod redis_api;
pub mod registry;
pub mod replicas;
pub mod seeds;
pub mod topics;

pub use conn::conn_wire;
pub use envelope::{e2e_open, envelope_decode, jwt_parse};
pub use federation::federation_batch;
pub use http_api::http_bodies;
pub use personal::personal_bodies;
pub use pipes::pipe_frames;
pub use redis_api::{redis_documents, redis_reply, redis_request};
pub use registry::registry_bodies;
pub use replicas::replica_frames;
pub use topics::topic_wire;

/// A fuzz target's body.
pub type Body = fn(&[u8]);

/// Every target: its name (that of the cargo-fuzz target and of its folders under
/// fuzz/seeds and fuzz/regressions) and its body.
pub const TARGETS: &[(&str, Body)] = &[
    ("envelope_decode", envelope::envelope_decode),
    ("jwt_parse", envelope::jwt_parse),
    ("e2e_open", envelope::e2e_open),
    ("redis_request", redis_api::redis_request),
    ("redis_reply", redis_api::redis_reply),
    ("redis_documents", redis_api::redis_documents),
    ("http_bodies", http_api::http_bodies),
    ("topic_wire", topics::topic_wire),
    ("conn_wire", conn::conn_wire),
    ("pipe_frames", pipes::pipe_frames),
    ("federation_batch", federation::federation_batch),
    ("replica_frames", replicas::replica_frames),
    ("registry_bodies", registry::registry_bodies),
    ("personal_bodies", personal::personal_bodies),
];

/// Splits a target's input into a selector (which decoder of the target gets the rest)
/// and the decoder's bytes: one target covers a family of small decoders, and the
/// fuzzer's mutations of the first byte move an input between them.
pub fn select(data: &[u8], choices: u8) -> Option<(u8, &[u8])> {
    let (&first, rest) = data.split_first()?;
    Some((first % choices, rest))
}

/// Parses `bytes` as a `T` and, when that works, checks that writing it back out and
/// parsing that gives an equal value (the JSON a peer writes is what it reads).
pub fn json_round_trip<T>(bytes: &[u8]) -> Option<T>
where
    T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
{
    let value: T = serde_json::from_slice(bytes).ok()?;
    let again = serde_json::to_vec(&value).expect("a decoded value serializes");
    let back: T = serde_json::from_slice(&again).unwrap_or_else(|e| {
        panic!(
            "re-encoded {} does not decode: {e}: {}",
            std::any::type_name::<T>(),
            String::from_utf8_lossy(&again)
        )
    });
    assert_eq!(back, value, "{} round trip", std::any::type_name::<T>());
    Some(value)
}
