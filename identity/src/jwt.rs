//! The login token a peer shows a relay, exactly as rmb-rs makes it.
//!
//! ```text
//! token  = b64url(header) "." b64url(claims) "." b64url(signature)   (no padding)
//! header = {"alg":"RS512"}             (a fixed label; the real scheme is in the signature)
//! claims = {"sub":<twin>,"sid":<string|null>,"iat":<unix s>,"exp":<unix s>}
//! signature = 65-byte rmb signature over the ASCII bytes of "header.claims" (no MD5)
//! ```
//!
//! A relay checks a token in three steps so it can refuse cheaply before any registry
//! lookup: [`Token::parse`], [`Token::check_time`], then [`Token::verify_signature`]
//! with the account of `claims.sub`. Beyond rmb-rs, [`JwtPolicy`] refuses tokens issued
//! in the future, tokens that live too long and tokens shown long after they were made;
//! [`Token::last_valid_second`] says until when a token can pass, so a verifier that
//! refuses tokens it saw before knows how long to remember each one.

use base64::Engine;
use base64::alphabet::URL_SAFE;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::{Deserialize, Serialize};

use crate::account::AccountId;
use crate::signer::Signer;
use crate::verify::{SignatureError, verify};

/// The only header rmb-rs produces and accepts.
pub const HEADER_JSON: &str = r#"{"alg":"RS512"}"#;
const ALG: &str = "RS512";

/// Writes without padding, reads with or without it.
const B64: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Who the token is for and when it is valid. Field order is the wire order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Twin id.
    pub sub: u32,
    /// Session id; `null` for an rmb-peer, a name for direct clients.
    #[serde(default)]
    pub sid: Option<String>,
    /// Issued at (unix seconds).
    pub iat: u64,
    /// Expires at (unix seconds).
    pub exp: u64,
}

/// Time rules a verifier applies on top of rmb-rs's expiry check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JwtPolicy {
    /// Longest accepted `exp - iat`, in seconds.
    pub max_lifetime: u64,
    /// How far in the future `iat` may be (clock skew between peer and relay), in seconds.
    pub max_clock_skew: u64,
    /// How long after `iat` a token may still be shown, in seconds: clients make a fresh
    /// token for each connection and show it at once, so only a token captured and kept
    /// is older (or one from a client whose clock runs this far behind).
    pub max_age: u64,
}

impl Default for JwtPolicy {
    /// Lifetimes up to 1000 s (the TS client's; rmb-peer and rmb-rs use 300), one minute
    /// of skew ahead, and two minutes of age.
    fn default() -> Self {
        JwtPolicy {
            max_lifetime: DEFAULT_MAX_LIFETIME,
            max_clock_skew: DEFAULT_MAX_CLOCK_SKEW,
            max_age: DEFAULT_MAX_AGE,
        }
    }
}

/// Default [`JwtPolicy::max_lifetime`]: the TS client signs tokens for 1000 s.
pub const DEFAULT_MAX_LIFETIME: u64 = 1000;
/// Default [`JwtPolicy::max_clock_skew`].
pub const DEFAULT_MAX_CLOCK_SKEW: u64 = 60;
/// Default [`JwtPolicy::max_age`].
pub const DEFAULT_MAX_AGE: u64 = 120;

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("malformed jwt: {0}")]
    Malformed(&'static str),
    #[error("malformed jwt {part}: {reason}")]
    BadPart { part: &'static str, reason: String },
    #[error("jwt algorithm must be \"RS512\", found {0}")]
    Algorithm(String),
    #[error("jwt has expired (exp {exp}, now {now})")]
    Expired { exp: u64, now: u64 },
    #[error("jwt issued in the future (iat {iat}, now {now}, allowed skew {skew}s)")]
    IssuedInFuture { iat: u64, now: u64, skew: u64 },
    #[error("jwt lifetime of {lifetime}s exceeds the maximum of {max}s")]
    LifetimeTooLong { lifetime: u64, max: u64 },
    #[error("jwt issued too long ago (iat {iat}, now {now}, maximum age {max}s)")]
    TooOld { iat: u64, now: u64, max: u64 },
    #[error("jwt signature invalid: {0}")]
    Signature(#[from] SignatureError),
}

/// A parsed (not yet verified) token.
#[derive(Debug, Clone)]
pub struct Token {
    claims: Claims,
    signed_part: String,
    signature: Vec<u8>,
}

impl Token {
    /// Makes a token for `twin`/`sid`, valid from `now` for `ttl` seconds.
    pub fn create(signer: &Signer, twin: u32, sid: Option<&str>, now: u64, ttl: u64) -> String {
        let claims = Claims {
            sub: twin,
            sid: sid.map(str::to_string),
            iat: now,
            exp: now.saturating_add(ttl),
        };
        let claims_json = serde_json::to_string(&claims).expect("claims always serialize");
        let mut token = format!(
            "{}.{}",
            B64.encode(HEADER_JSON),
            B64.encode(claims_json.as_bytes())
        );
        let signature = signer.sign(token.as_bytes());
        token.push('.');
        token.push_str(&B64.encode(signature));
        token
    }

    /// Splits and decodes a token without checking time or signature.
    pub fn parse(text: &str) -> Result<Token, JwtError> {
        let mut parts = text.split('.');
        let (Some(header), Some(claims), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed("expected three dot-separated parts"));
        };
        let header_bytes = decode_part("header", header)?;
        let header: serde_json::Value =
            serde_json::from_slice(&header_bytes).map_err(|e| bad("header", e))?;
        match header.get("alg") {
            Some(serde_json::Value::String(alg)) if alg == ALG => {}
            Some(other) => return Err(JwtError::Algorithm(other.to_string())),
            None => return Err(JwtError::Algorithm("nothing".into())),
        }
        let claims: Claims = serde_json::from_slice(&decode_part("claims", claims)?)
            .map_err(|e| bad("claims", e))?;
        let signature_text = signature;
        let signature = decode_part("signature", signature_text)?;
        let signed_len = text.len() - signature_text.len() - 1;
        let signed_part = text[..signed_len].to_string();
        Ok(Token {
            claims,
            signed_part,
            signature,
        })
    }

    /// The claims (who and when), trusted only after verification.
    pub fn claims(&self) -> &Claims {
        &self.claims
    }

    /// The exact text the signature covers (`header.claims`): two tokens with the same
    /// signed part are the same login, whatever their signature bytes, so this is what a
    /// verifier remembers to refuse a token shown twice.
    pub fn signed_part(&self) -> &str {
        &self.signed_part
    }

    /// The last unix second at which [`check_time`](Self::check_time) can accept this
    /// token under `policy`: its expiry, or the end of its accepted age if sooner.
    pub fn last_valid_second(&self, policy: &JwtPolicy) -> u64 {
        self.claims
            .exp
            .min(self.claims.iat.saturating_add(policy.max_age))
    }

    /// Checks expiry (as rmb-rs) and, beyond rmb-rs, issue time, lifetime and age.
    pub fn check_time(&self, now: u64, policy: &JwtPolicy) -> Result<(), JwtError> {
        let Claims { iat, exp, .. } = self.claims;
        if now > exp {
            return Err(JwtError::Expired { exp, now });
        }
        if iat > now.saturating_add(policy.max_clock_skew) {
            return Err(JwtError::IssuedInFuture {
                iat,
                now,
                skew: policy.max_clock_skew,
            });
        }
        let lifetime = exp.saturating_sub(iat);
        if lifetime > policy.max_lifetime {
            return Err(JwtError::LifetimeTooLong {
                lifetime,
                max: policy.max_lifetime,
            });
        }
        if now > iat.saturating_add(policy.max_age) {
            return Err(JwtError::TooOld {
                iat,
                now,
                max: policy.max_age,
            });
        }
        Ok(())
    }

    /// Checks the signature against the account of twin `claims().sub`.
    pub fn verify_signature(&self, account: &AccountId) -> Result<(), JwtError> {
        Ok(verify(
            account,
            self.signed_part.as_bytes(),
            &self.signature,
        )?)
    }

    /// [`check_time`](Self::check_time) then [`verify_signature`](Self::verify_signature).
    pub fn verify(
        &self,
        account: &AccountId,
        now: u64,
        policy: &JwtPolicy,
    ) -> Result<(), JwtError> {
        self.check_time(now, policy)?;
        self.verify_signature(account)
    }
}

fn decode_part(part: &'static str, text: &str) -> Result<Vec<u8>, JwtError> {
    B64.decode(text).map_err(|e| bad(part, e))
}

fn bad(part: &'static str, reason: impl ToString) -> JwtError {
    JwtError::BadPart {
        part,
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signer::KeyType;

    const NOW: u64 = 1_800_000_000;

    fn alice(key_type: KeyType) -> Signer {
        Signer::from_secret("//Alice", key_type).unwrap()
    }

    #[test]
    fn layout_matches_rmb_rs() {
        let token = Token::create(&alice(KeyType::Ed25519), 7, None, NOW, 300);
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts[0], "eyJhbGciOiJSUzUxMiJ9");
        assert_eq!(
            B64.decode(parts[1]).unwrap(),
            br#"{"sub":7,"sid":null,"iat":1800000000,"exp":1800000300}"#
        );
        assert_eq!(B64.decode(parts[2]).unwrap().len(), 65);
        assert!(!token.contains('='));
    }

    #[test]
    fn round_trip_both_schemes_with_and_without_sid() {
        for key_type in [KeyType::Ed25519, KeyType::Sr25519] {
            let signer = alice(key_type);
            for sid in [None, Some("web")] {
                let text = Token::create(&signer, 9, sid, NOW, 300);
                let token = Token::parse(&text).unwrap();
                assert_eq!(token.claims().sub, 9);
                assert_eq!(token.claims().sid.as_deref(), sid);
                token
                    .verify(&signer.account(), NOW + 10, &JwtPolicy::default())
                    .unwrap();
            }
        }
    }

    #[test]
    fn time_rules() {
        let signer = alice(KeyType::Sr25519);
        let policy = JwtPolicy::default();
        // Expiry is checked as rmb-rs checks it (a token shorter than max_age).
        let token = Token::parse(&Token::create(&signer, 1, None, NOW, 60)).unwrap();
        assert!(token.check_time(NOW + 60, &policy).is_ok());
        assert_eq!(
            token.check_time(NOW + 61, &policy),
            Err(JwtError::Expired {
                exp: NOW + 60,
                now: NOW + 61
            })
        );
        assert!(matches!(
            token.check_time(NOW - 61, &policy),
            Err(JwtError::IssuedInFuture { .. })
        ));
        assert!(token.check_time(NOW - 60, &policy).is_ok());
        let long = Token::parse(&Token::create(&signer, 1, None, NOW, 1001)).unwrap();
        assert_eq!(
            long.check_time(NOW, &policy).unwrap_err().to_string(),
            "jwt lifetime of 1001s exceeds the maximum of 1000s"
        );
        let ts_client = Token::parse(&Token::create(&signer, 1, None, NOW, 1000)).unwrap();
        assert!(ts_client.check_time(NOW, &policy).is_ok());
    }

    #[test]
    fn an_old_token_is_refused_however_late_it_expires() {
        let signer = alice(KeyType::Ed25519);
        let policy = JwtPolicy::default();
        let token = Token::parse(&Token::create(&signer, 1, None, NOW, 1000)).unwrap();
        assert_eq!(token.last_valid_second(&policy), NOW + 120);
        assert!(token.check_time(NOW + 120, &policy).is_ok());
        assert_eq!(
            token.check_time(NOW + 121, &policy),
            Err(JwtError::TooOld {
                iat: NOW,
                now: NOW + 121,
                max: 120
            })
        );
        // A short token's expiry comes first.
        let short = Token::parse(&Token::create(&signer, 1, None, NOW, 60)).unwrap();
        assert_eq!(short.last_valid_second(&policy), NOW + 60);
    }

    #[test]
    fn the_signed_part_names_the_login_whatever_the_signature() {
        // sr25519 signs with a random nonce: two tokens of the same claims differ in
        // their signature bytes but not in what they sign.
        let signer = alice(KeyType::Sr25519);
        let one = Token::create(&signer, 1, None, NOW, 300);
        let two = Token::create(&signer, 1, None, NOW, 300);
        assert_ne!(one, two);
        let (one, two) = (Token::parse(&one).unwrap(), Token::parse(&two).unwrap());
        assert_eq!(one.signed_part(), two.signed_part());
        let other = Token::parse(&Token::create(&signer, 1, None, NOW, 299)).unwrap();
        assert_ne!(one.signed_part(), other.signed_part());
    }

    #[test]
    fn claims_without_sid_parse_as_none() {
        let signer = alice(KeyType::Ed25519);
        let signed = format!(
            "{}.{}",
            B64.encode(HEADER_JSON),
            B64.encode(r#"{"sub":3,"iat":1,"exp":2}"#)
        );
        let text = format!("{signed}.{}", B64.encode(signer.sign(signed.as_bytes())));
        let token = Token::parse(&text).unwrap();
        assert_eq!(token.claims().sid, None);
        token.verify_signature(&signer.account()).unwrap();
    }

    #[test]
    fn tampering_and_garbage_are_refused() {
        let signer = alice(KeyType::Ed25519);
        let text = Token::create(&signer, 1, None, NOW, 300);
        let claims = B64.encode(r#"{"sub":2,"sid":null,"iat":1800000000,"exp":1800000300}"#);
        let mut parts: Vec<&str> = text.split('.').collect();
        parts[1] = &claims;
        let forged = Token::parse(&parts.join(".")).unwrap();
        assert!(matches!(
            forged.verify_signature(&signer.account()),
            Err(JwtError::Signature(_))
        ));

        let other_alg = format!(
            "{}.{}",
            B64.encode(r#"{"alg":"none"}"#),
            parts[1..].join(".")
        );
        assert_eq!(
            Token::parse(&other_alg).unwrap_err().to_string(),
            "jwt algorithm must be \"RS512\", found \"none\""
        );
        assert!(matches!(Token::parse("a.b"), Err(JwtError::Malformed(_))));
        assert!(matches!(
            Token::parse("a.b.c.d"),
            Err(JwtError::Malformed(_))
        ));
        assert!(matches!(
            Token::parse("!!.e30.AA"),
            Err(JwtError::BadPart { part: "header", .. })
        ));
    }
}
