//! Who a twin is, and how it proves it: keys, signatures, login tokens and end-to-end
//! encryption for the Reliable Message Bus, byte-compatible with rmb-rs.
//!
//! One secret (a BIP-39 mnemonic or a `0x` hex seed, optionally with a Substrate
//! derivation path such as `//Alice`) yields everything a twin needs:
//!
//! - a **signing key** ([`Signer`], ed25519 or sr25519) whose public key is the twin's
//!   on-chain [`AccountId`]; see [`secret`] and [`derive`] for how it is derived;
//! - **envelope signatures** ([`envelope`]) over the rmb-rs challenge, checked by
//!   [`verify()`] against the sender's account;
//! - a **login token** ([`jwt`]) for relays;
//! - **encryption keys** ([`e2e`]): x25519 + ChaCha20-Poly1305 (ours) and secp256k1 +
//!   AES-256-GCM (rmb-rs compatible), chosen by the recipient's published key.
//!
//! [`Identity`] bundles them for a peer. [`registry`] answers who another twin is;
//! [`trust`] says which certificate authorities its TLS clients accept.

pub mod account;
pub mod derive;
pub mod e2e;
pub mod envelope;
pub mod identity;
pub mod jwt;
pub mod registry;
pub mod secret;
pub mod signer;
pub mod ss58;
pub mod trust;
pub mod verify;

pub use account::AccountId;
pub use e2e::{E2eError, E2eKeys, E2eScheme};
pub use envelope::{EnvelopeError, sign_envelope, verify_envelope};
pub use identity::{Identity, IdentityError};
pub use jwt::{Claims, JwtError, JwtPolicy, Token};
pub use secret::{SecretError, SecretUri};
pub use signer::{KeyType, SIGNATURE_LEN, Signer};
pub use verify::{SignatureError, verified_in_groups, verify, verify_batch, verify_ed25519_batch};
