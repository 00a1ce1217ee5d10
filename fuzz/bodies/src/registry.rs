//! The embedded twin registry: the signed publish request a relay's registry takes from
//! anyone (`POST /twins`), the answers its clients (peers, relays) read, and the
//! account ids and relay lists inside them.

use rmb_identity::AccountId;
use rmb_identity::registry::Twin;
use rmb_identity::registry::api::{ChangesResponse, ErrorBody, PublishRequest, check_relay};
use rmb_identity::registry::twin::{decode_relays, encode_relays};
use rmb_identity::ss58;

use crate::{alloc, json_round_trip, select};

/// By the first byte, the rest as a publish request, a twin, a changes answer, an error
/// body, an account id (SS58 or 0x-hex) or a tfchain relay list. No panic, bounded
/// allocations; documents round-trip; a publish request whose signature verifies
/// stops verifying when its timestamp changes (the signature covers it); account ids
/// print back to themselves.
pub fn registry_bodies(data: &[u8]) {
    let Some((which, rest)) = select(data, 6) else {
        return;
    };
    let limit = alloc::limit(rest.len());
    match which {
        0 => {
            let Some(request) = alloc::bounded("PublishRequest", limit, || {
                json_round_trip::<PublishRequest>(rest)
            }) else {
                return;
            };
            let _ = request.check_content();
            if request.verify_signature().is_ok() {
                let mut replayed = request.clone();
                replayed.timestamp_ms = replayed.timestamp_ms.wrapping_add(1);
                assert!(
                    replayed.verify_signature().is_err(),
                    "the timestamp is signed"
                );
            }
        }
        1 => {
            alloc::bounded("Twin", limit, || json_round_trip::<Twin>(rest));
        }
        2 => {
            alloc::bounded("ChangesResponse", limit, || {
                json_round_trip::<ChangesResponse>(rest)
            });
        }
        3 => {
            json_round_trip::<ErrorBody>(rest);
        }
        4 => {
            let Ok(text) = std::str::from_utf8(rest) else {
                return;
            };
            if let Ok(account) = text.parse::<AccountId>() {
                assert_eq!(account.to_string().parse::<AccountId>(), Ok(account));
                assert_eq!(
                    format!("0x{}", account.to_hex()).parse::<AccountId>(),
                    Ok(account)
                );
            }
            if let Ok((prefix, account)) = ss58::decode(text) {
                assert_eq!(
                    ss58::decode(&ss58::encode(prefix, &account)),
                    Ok((prefix, account))
                );
            }
        }
        _ => {
            let Ok(text) = std::str::from_utf8(rest) else {
                return;
            };
            let relays = decode_relays(text);
            assert!(relays.iter().all(|r| !r.is_empty() && !r.contains('_')));
            for relay in &relays {
                let _ = check_relay(relay);
            }
            assert_eq!(decode_relays(&encode_relays(&relays)), relays);
        }
    }
}
