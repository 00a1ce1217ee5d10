//! `rmb-peer`: one twin's gateway to the Reliable Message Bus.
//!
//! Not built yet: this crate is reserved so the workspace has its final shape. The peer
//! (relay connections, the rmb-rs-compatible Redis JSON API, the direct client library)
//! arrives with issue #5; it will sign, encrypt, verify and decrypt with `rmb-identity`.
