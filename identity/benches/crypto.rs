//! Per-operation cost of the identity layer: what a peer pays per message.
//!
//! Run with `cargo bench -p rmb-identity --bench crypto`. Groups:
//! - `sign`: challenge (MD5) + signature of a request envelope, per key type;
//! - `verify`: one signature, and ed25519 batches (time per batch of 64);
//! - `seal` / `open`: payloads of 64 B, 1 KiB and 64 KiB per e2e scheme, with the
//!   per-correspondent cipher already cached (the steady state);
//! - `key_agreement`: the uncached first contact with a new correspondent;
//! - `jwt` and `secret`: login token and mnemonic parsing (once per connect/start).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rmb_identity::e2e::{secp256k1, x25519};
use rmb_identity::{
    AccountId, E2eScheme, Identity, JwtPolicy, KeyType, Signer, Token, sign_envelope, verify,
    verify_batch, verify_ed25519_batch, verify_envelope,
};
use rmb_proto::{Address, Envelope, Message, Payload, Request};

fn request(payload: usize) -> Envelope {
    let mut env = Envelope {
        uid: "6f1a2b3c-0000-4000-8000-000000000001".into(),
        expiration: 300,
        source: Some(Address::twin(41)),
        destination: Some(Address::twin(55)),
        message: Some(Message::Request(Request {
            command: "zos.system.version".into(),
        })),
        schema: Some("application/json".into()),
        payload: Some(Payload::Cipher(vec![7; payload])),
        ..Default::default()
    };
    env.stamp_at(1_700_000_000);
    env
}

fn signing(c: &mut Criterion) {
    let mut group = c.benchmark_group("sign");
    for key_type in [KeyType::Ed25519, KeyType::Sr25519] {
        let signer = Signer::from_secret("//Alice", key_type).unwrap();
        let mut env = request(64);
        group.bench_function(BenchmarkId::new("challenge+sign", key_type), |b| {
            b.iter(|| sign_envelope(&signer, black_box(&mut env)))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("verify");
    for key_type in [KeyType::Ed25519, KeyType::Sr25519] {
        let signer = Signer::from_secret("//Alice", key_type).unwrap();
        let mut env = request(64);
        sign_envelope(&signer, &mut env);
        let account = signer.account();
        group.bench_function(BenchmarkId::new("envelope", key_type), |b| {
            b.iter(|| verify_envelope(black_box(&env), &account).unwrap())
        });
    }

    const BATCH: usize = 64;
    let signers: Vec<Signer> = (0..BATCH)
        .map(|i| Signer::from_secret(&format!("//{i}"), KeyType::Ed25519).unwrap())
        .collect();
    let accounts: Vec<AccountId> = signers.iter().map(Signer::account).collect();
    let digests: Vec<[u8; 16]> = (0..BATCH).map(|i| [i as u8; 16]).collect();
    let sigs: Vec<[u8; 65]> = signers
        .iter()
        .zip(&digests)
        .map(|(s, d)| s.sign(d))
        .collect();
    let items: Vec<(&AccountId, &[u8], &[u8])> = (0..BATCH)
        .map(|i| (&accounts[i], digests[i].as_slice(), sigs[i].as_slice()))
        .collect();
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("ed25519 one by one x64", |b| {
        b.iter(|| {
            for (account, digest, sig) in &items {
                verify(account, digest, sig).unwrap();
            }
        })
    });
    group.bench_function("ed25519 batch x64", |b| {
        b.iter(|| verify_ed25519_batch(black_box(&items)).unwrap())
    });
    group.finish();

    // A peer pair's traffic: one signer, batches as the receive pipeline makes them.
    const PAIR_BATCH: usize = 16;
    let mut group = c.benchmark_group("verify one signer");
    group.throughput(Throughput::Elements(PAIR_BATCH as u64));
    for key_type in [KeyType::Ed25519, KeyType::Sr25519] {
        let signer = Signer::from_secret("//Alice", key_type).unwrap();
        let account = signer.account();
        let sigs: Vec<[u8; 65]> = digests[..PAIR_BATCH]
            .iter()
            .map(|d| signer.sign(d))
            .collect();
        let items: Vec<(&AccountId, &[u8], &[u8])> = (0..PAIR_BATCH)
            .map(|i| (&account, digests[i].as_slice(), sigs[i].as_slice()))
            .collect();
        group.bench_function(format!("{key_type} one by one x{PAIR_BATCH}"), |b| {
            b.iter(|| {
                for (account, digest, sig) in &items {
                    verify(account, digest, sig).unwrap();
                }
            })
        });
        group.bench_function(format!("{key_type} batch x{PAIR_BATCH}"), |b| {
            b.iter(|| verify_batch(key_type, black_box(&items)).unwrap())
        });
    }
    group.finish();
}

fn e2e(c: &mut Criterion) {
    let alice = Identity::from_secret("//Alice", KeyType::Sr25519).unwrap();
    let bob = Identity::from_secret("//Bob", KeyType::Sr25519).unwrap();
    for scheme in [E2eScheme::X25519, E2eScheme::Secp256k1] {
        let bob_key = bob.e2e_public_key(scheme);
        let alice_key = alice.e2e_public_key(scheme);
        let mut seal = c.benchmark_group(format!("seal/{scheme}"));
        for size in [64usize, 1024, 64 * 1024] {
            let plain = vec![0x5a; size];
            seal.throughput(Throughput::Bytes(size as u64));
            seal.bench_function(BenchmarkId::from_parameter(size), |b| {
                b.iter(|| alice.e2e().seal(&bob_key, black_box(&plain)).unwrap())
            });
        }
        seal.finish();
        let mut open = c.benchmark_group(format!("open/{scheme}"));
        for size in [64usize, 1024, 64 * 1024] {
            let sealed = alice.e2e().seal(&bob_key, &vec![0x5a; size]).unwrap();
            open.throughput(Throughput::Bytes(size as u64));
            open.bench_function(BenchmarkId::from_parameter(size), |b| {
                b.iter(|| {
                    bob.e2e()
                        .open(scheme, Some(&alice_key), black_box(&sealed))
                        .unwrap()
                })
            });
        }
        open.finish();
    }

    let mut group = c.benchmark_group("key_agreement");
    let seed = [3u8; 32];
    let ours = x25519::StaticKeys::from_seed(&seed);
    let theirs = x25519::StaticKeys::from_seed(&[4u8; 32]).public();
    group.bench_function("x25519 dh+hkdf", |b| {
        b.iter(|| ours.cipher(&ours.public(), black_box(&theirs)).unwrap())
    });
    let ours = secp256k1::StaticKeys::from_seed(&seed).unwrap();
    let theirs = secp256k1::StaticKeys::from_seed(&[4u8; 32])
        .unwrap()
        .public();
    group.bench_function("secp256k1 ecdh+sha256", |b| {
        b.iter(|| ours.cipher(black_box(&theirs)).unwrap())
    });
    group.finish();
}

fn login_and_secrets(c: &mut Criterion) {
    let mut group = c.benchmark_group("jwt");
    let signer = Signer::from_secret("//Alice", KeyType::Sr25519).unwrap();
    group.bench_function("create sr25519", |b| {
        b.iter(|| Token::create(&signer, 7, None, 1_700_000_000, 300))
    });
    let text = Token::create(&signer, 7, None, 1_700_000_000, 300);
    let account = signer.account();
    group.bench_function("parse+verify sr25519", |b| {
        b.iter(|| {
            Token::parse(black_box(&text))
                .unwrap()
                .verify(&account, 1_700_000_001, &JwtPolicy::default())
                .unwrap()
        })
    });
    group.finish();

    let mut group = c.benchmark_group("secret");
    let mnemonic = "tackle blouse grain dawn adult loyal tattoo price access tilt chimney silk";
    group.bench_function("mnemonic to identity", |b| {
        b.iter(|| Identity::from_secret(black_box(mnemonic), KeyType::Sr25519).unwrap())
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = signing, e2e, login_and_secrets
}
criterion_main!(benches);
