//! Helpers shared by the workspace-level tests in `tests/tests/`.
//!
//! These tests check rmb against things outside this repository: the recorded outputs of
//! rmb-rs in `../shared/reference/`, and (with later issues) the real binaries run as
//! processes.

use std::path::PathBuf;

pub mod chain;
pub mod chaos;
pub mod child;
pub mod desktop;
pub mod direct;
pub mod faults;
pub mod lb;
pub mod peer_node;
pub mod peer_process;
pub mod recorded;
pub mod redis_cluster;
pub mod redis_server;
pub mod registry;
pub mod relay_client;
pub mod relay_process;
pub mod soak;

/// The shared folder beside the checkout (`../shared`), or `$RMB_SHARED_DIR` if set.
///
/// CI always has it; the tests that need it fail with this message when it is missing,
/// rather than silently passing.
pub fn shared_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RMB_SHARED_DIR") {
        return PathBuf::from(dir);
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared");
    assert!(
        dir.is_dir(),
        "{} not found: these tests need the shared reference folder beside the checkout \
         (or RMB_SHARED_DIR pointing at it)",
        dir.display()
    );
    dir
}

/// Reads and parses `../shared/reference/rmb-rs-vectors.json`.
pub fn rmb_rs_vectors() -> serde_json::Value {
    let path = shared_dir().join("reference/rmb-rs-vectors.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}
