//! Topics (issue #14) with real processes: `rmb-relay`s, `rmb-peer`s with their own
//! Redis and `--http`, driven through the local HTTP API with a real HTTP client
//! (reqwest, and curl), a WebSocket client and raw Redis.
//!
//! - fan-out across two federated relays: two subscribers get every message in order
//!   with the same ids; a twin outside the publish list is refused with an error;
//! - a subscriber SIGKILLed and restarted catches up with no gap and no duplicate (in
//!   its Redis delivery list), and messages retention dropped are reported as a gap;
//! - the owner SIGKILLed mid-stream loses no acknowledged publish and reuses no id;
//! - malformed HTTP requests get 4xx JSON errors;
//! - relays see only ciphertext of topic messages, and pushes go unsigned, authenticated
//!   by their encryption; forged unsigned envelopes are refused by subscribers;
//! - pushes to a subscriber that acknowledges cumulatively are sent again until it
//!   acknowledges them; one that does not say so answers each push.
//!
//! - the subscriber's record script keeps position, local copies and list as before
//!   when it writes a whole run per command;
//! - strangers cannot hold a public topic's subscriber slots: leases end, silent
//!   subscribers are dropped, new subscriptions are capped per relay.
//!
//! - the HTTP API refuses what a web page or a misbehaving local client tries (foreign
//!   Host and Origin, simple POSTs, missing token; idle, drip-fed and oversized
//!   requests, streams nobody reads).
//!
//! - `rmb sub` reconnects when the subscriber's peer restarts and resumes without a
//!   gap or a repeat; `since=` takes durations, unix times and `latest`; an owner may
//!   create topics by publishing (`--topic-auto-create`), a stranger never; `rmb pub`
//!   drops stdin's trailing newline unless `--raw`.
//!
//! One test binary in nine files: `node` (the shared processes and HTTP helpers),
//! `delivery`, `api` (HTTP API and CLI), `options` (ntfy-style options), `resume`
//! (`rmb sub` across restarts), `http_attacks`, `wire`, `store` and `slots`.

mod api;
mod delivery;
mod http_attacks;
mod node;
mod options;
mod resume;
mod slots;
mod store;
mod wire;
