//! Any text given to the login-token parser and verifier: no panic, and nothing but a
//! real signature by the account verifies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rmb_identity::{AccountId, JwtPolicy, Token};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(token) = Token::parse(text) else {
        return;
    };
    let _ = token.check_time(token.claims().iat, &JwtPolicy::default());
    // The all-0x01 account: random input must never verify against it.
    assert!(token.verify_signature(&AccountId([1; 32])).is_err());
});
