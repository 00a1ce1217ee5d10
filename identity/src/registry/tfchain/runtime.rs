//! What we use of tfchain's runtime, by name.
//!
//! The dynamic API needs no generated code, so the pallet, storage, call and event names
//! and the shape of `Twin` below are our whole contract with the chain. They have been
//! stable since tfchain v2.5 (spec 144) and are what rmb-rs uses too.

use subxt::dynamic;
use subxt::ext::scale_decode::DecodeAsType;
use subxt::storage::DynamicAddress;
use subxt::tx::DynamicPayload;
use subxt::utils::AccountId32;

use super::super::RegistryError;
use super::super::twin::{Twin, decode_relays};
use crate::account::AccountId;

/// The pallet holding twins (index 25 on tfchain).
pub const PALLET: &str = "TfgridModule";
/// Events that carry a twin's new value.
pub const TWIN_EVENTS: [&str; 2] = ["TwinStored", "TwinUpdated"];
/// Terms and conditions every account accepts before creating a twin (as rmb-rs does).
pub const TERMS_LINK: &str = "http://zos.tf/terms/v0.1";
/// The document hash rmb-rs sends with [`TERMS_LINK`]; the chain does not check it.
pub const TERMS_HASH: &str = "somehash";

/// `TfgridModule::Twin` as stored and as carried by [`TWIN_EVENTS`]; `entities` is skipped.
#[derive(Debug, Clone, DecodeAsType)]
#[decode_as_type(crate_path = "subxt::ext::scale_decode")]
pub struct ChainTwin {
    /// Chain-assigned id.
    pub id: u32,
    /// The owning account.
    pub account_id: AccountId32,
    /// Relay domains joined by `_` (see [`decode_relays`]).
    pub relay: Option<Vec<u8>>,
    /// Published encryption key.
    pub pk: Option<Vec<u8>>,
}

impl ChainTwin {
    /// Our view of the twin: the relay string split into domains, empty fields as `None`.
    pub fn into_twin(self) -> Result<Twin, RegistryError> {
        let relay = match self.relay {
            Some(bytes) => String::from_utf8(bytes).map_err(|_| {
                RegistryError::Invalid(format!("twin {} has a relay that is not UTF-8", self.id))
            })?,
            None => String::new(),
        };
        Ok(Twin {
            id: self.id,
            account: AccountId(self.account_id.0),
            relays: decode_relays(&relay),
            pk: self.pk.filter(|pk| !pk.is_empty()),
        })
    }
}

/// Storage `TfgridModule.Twins(u32) -> Twin`.
pub fn twins() -> DynamicAddress<(u32,), ChainTwin> {
    dynamic::storage(PALLET, "Twins")
}

/// Storage `TfgridModule.TwinIdByAccountID(AccountId32) -> u32`.
pub fn twin_id_by_account() -> DynamicAddress<(AccountId32,), u32> {
    dynamic::storage(PALLET, "TwinIdByAccountID")
}

/// Arguments of `create_twin` and `update_twin`: relay string and public key.
pub type TwinArgs = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Call `user_accept_tc(document_link, document_hash)`, required before `create_twin`.
pub fn accept_terms() -> DynamicPayload<(Vec<u8>, Vec<u8>)> {
    dynamic::tx(
        PALLET,
        "user_accept_tc",
        (
            TERMS_LINK.as_bytes().to_vec(),
            TERMS_HASH.as_bytes().to_vec(),
        ),
    )
}

/// Call `create_twin(relay, pk)`.
pub fn create_twin(args: TwinArgs) -> DynamicPayload<TwinArgs> {
    dynamic::tx(PALLET, "create_twin", args)
}

/// Call `update_twin(relay, pk)`; it overwrites both fields (`None` clears).
pub fn update_twin(args: TwinArgs) -> DynamicPayload<TwinArgs> {
    dynamic::tx(PALLET, "update_twin", args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_twins_become_ours() {
        let twin = ChainTwin {
            id: 7,
            account_id: AccountId32([3; 32]),
            relay: Some(b"r1.example.com_r2.example.com".to_vec()),
            pk: Some(vec![]),
        }
        .into_twin()
        .unwrap();
        assert_eq!(twin.id, 7);
        assert_eq!(twin.account, AccountId([3; 32]));
        assert_eq!(twin.relays.len(), 2);
        assert_eq!(twin.pk, None, "an empty key means no key");

        let bad = ChainTwin {
            id: 8,
            account_id: AccountId32([3; 32]),
            relay: Some(vec![0xff]),
            pk: None,
        };
        assert!(matches!(bad.into_twin(), Err(RegistryError::Invalid(_))));
    }
}
