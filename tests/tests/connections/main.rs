//! Connections (issue #15) between direct clients over real `rmb-relay` processes:
//! bytes arrive intact (sha256) through one relay and across two federated relays,
//! many connections at once, refused / unknown / not-allowed protocols, half-close and
//! close seen by both sides, a relay killed mid-transfer with a second one configured,
//! and a reader that stops reading while an RPC between the same two twins goes on;
//! forged, re-sourced and unknown unsigned data frames are dropped and counted by
//! reason, other unsigned requests refused unanswered; the cipher the handshake agrees
//! on, and version 1 peers opened again as such.
//!
//! `rmb pipe` as a user runs it: both directions with stdin at EOF on either side, exit
//! codes of both processes, a lost far side; the same through the local rmb-peer (no
//! keys in the command), `listen --keep`, and `rmb forward` to an `--expose`d service.
//!
//! One test binary in six files: `common` (shared set-up), `transfer`, `lifecycle`,
//! `security`, `pipes` and `local_pipes`.

mod common;
mod lifecycle;
mod local_pipes;
mod pipes;
mod security;
mod transfer;
