//! Accounts derived from secrets must match what Substrate tools (and rmb-rs) derive.

use rmb_identity::{KeyType, Signer};

fn account(secret: &str, key_type: KeyType) -> String {
    Signer::from_secret(secret, key_type)
        .unwrap()
        .account()
        .to_string()
}

#[test]
fn substrate_dev_accounts() {
    assert_eq!(
        account("//Alice", KeyType::Sr25519),
        "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"
    );
    assert_eq!(
        account("//Alice", KeyType::Ed25519),
        "5FA9nQDVg267DEd8m1ZypXLBnvN7SFxYwV7ndqSYGiN9TTpu"
    );
    assert_eq!(
        account("//Bob", KeyType::Sr25519),
        "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty"
    );
}

#[test]
fn plain_mnemonic_both_key_types() {
    let tackle = "tackle blouse grain dawn adult loyal tattoo price access tilt chimney silk";
    assert_eq!(
        account(tackle, KeyType::Sr25519),
        "5FjubvYMj4bDAKSaDk9izWHMJqKABUoySi7j4kKzc6pv4UwF"
    );
    assert_eq!(
        account(tackle, KeyType::Ed25519),
        "5DD6D8XxhNpCJ8zYBt3yc38Qeub8GaraG1JsBk9Rr7mq3yiD"
    );
}

#[test]
fn dev_phrase_spelled_out_equals_the_short_form() {
    let long = "bottom drive obey lake curtain smoke basket hold race lonely fit walk//Alice";
    assert_eq!(
        account(long, KeyType::Sr25519),
        account("//Alice", KeyType::Sr25519)
    );
}

#[test]
fn soft_derivation_is_sr25519_only() {
    // Soft and hard junctions give different accounts; ed25519 refuses soft ones.
    assert_ne!(
        account("//Alice/stash", KeyType::Sr25519),
        account("//Alice//stash", KeyType::Sr25519)
    );
    assert!(Signer::from_secret("//Alice/stash", KeyType::Ed25519).is_err());
}

#[test]
fn nested_hard_derivation_matches_substrate() {
    // Alice's stash account of every Substrate dev chain.
    assert_eq!(
        account("//Alice//stash", KeyType::Sr25519),
        "5GNJqTPyNqANBkUVMN1LPPrxXnFouWXoe2wNSmmEoLctxiZY"
    );
}
