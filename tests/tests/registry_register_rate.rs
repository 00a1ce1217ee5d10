//! Registrations on the embedded registry are limited per client address (issue #30,
//! item 5): a real `rmb-relay` hosting the registry, one address registering fresh twins
//! as fast as it can, as the attack that filled a topic's subscriber slots did.
//!
//! The relay runs with its default `--registry-register-rate`, so the test also pins
//! the documented default (60 new twins per minute per address).

use std::net::IpAddr;
use std::time::Instant;

use rmb_identity::registry::TwinUpdate;
use rmb_identity::registry::api::PublishRequest;
use rmb_identity::{Identity, KeyType};
use rmb_testsupport::relay_process::RelayProcess;

/// The default of `--registry-register-rate`.
const DEFAULT_RATE: u64 = 60;

fn fresh() -> Identity {
    let secret = rmb_testsupport::direct::fresh_mnemonic();
    Identity::from_secret(&secret, KeyType::Ed25519).unwrap()
}

/// `POST /twins` of a signed registration of `who` from local address `from`; the
/// status and the `Retry-After` header.
async fn register_from(relay: &RelayProcess, who: &Identity, from: IpAddr) -> (u16, Option<u64>) {
    let update = TwinUpdate {
        relays: [relay.domain()].into(),
        pk: None,
        create: true,
    };
    let request =
        PublishRequest::signed(who.signer(), &update, rmb_relay::registry::hosted::now_ms());
    let client = reqwest::Client::builder()
        .local_address(from)
        .build()
        .unwrap();
    let r = client
        .post(format!("{}/twins", relay.http_url()))
        .json(&request)
        .send()
        .await
        .unwrap();
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    (r.status().as_u16(), retry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_register_twins_without_limit() {
    let relay = RelayProcess::start(&[]);
    let here: IpAddr = "127.0.0.1".parse().unwrap();
    let identities: Vec<Identity> = (0..DEFAULT_RATE + 40).map(|_| fresh()).collect();

    let start = Instant::now();
    let mut accepted = 0;
    let mut refused = 0;
    let mut retry_after = None;
    for who in &identities {
        match register_from(&relay, who, here).await {
            (200, _) => accepted += 1,
            (429, retry) => {
                refused += 1;
                retry_after = retry_after.or(retry);
            }
            (status, _) => panic!("a registration got {status}"),
        }
    }
    let elapsed = start.elapsed().as_secs();
    eprintln!(
        "{} registrations from one address in {elapsed} s: {accepted} accepted, {refused} refused",
        identities.len()
    );
    assert!(
        refused > 0,
        "every one of {} registrations from one address was accepted",
        identities.len()
    );
    // The allowance, plus what refilled (one a second) while the test ran.
    assert!(
        accepted <= DEFAULT_RATE + elapsed + 1,
        "{accepted} accepted in {elapsed} s"
    );
    assert!(
        accepted >= DEFAULT_RATE,
        "the first {DEFAULT_RATE} are accepted"
    );
    assert!(
        retry_after.is_some_and(|s| s >= 1),
        "429 says when to retry"
    );
    assert_eq!(
        relay.error_count("registry_register_rate").await,
        refused,
        "refusals are counted in the relay's metrics"
    );

    // A registered twin updating itself is not a registration.
    let (status, _) = register_from(&relay, &identities[0], here).await;
    assert_eq!(status, 200, "an update of a registered twin is not limited");
    // Another address has its own allowance.
    let elsewhere: IpAddr = "127.0.0.2".parse().unwrap();
    let (status, _) = register_from(&relay, &fresh(), elsewhere).await;
    assert_eq!(status, 200, "another address registers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_is_a_flag() {
    let relay = RelayProcess::start(&["--registry-register-rate", "3"]);
    let here: IpAddr = "127.0.0.1".parse().unwrap();
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(register_from(&relay, &fresh(), here).await.0);
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);

    let open = RelayProcess::start(&["--registry-register-rate", "0"]);
    for _ in 0..(DEFAULT_RATE + 5) {
        assert_eq!(register_from(&open, &fresh(), here).await.0, 200);
    }
}
