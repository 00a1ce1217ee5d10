use super::*;
use crate::secret::SecretUri;

const SK1: &str = "0x340f7341b312bcc61aeea7a76d759d809b8601cbc6d22cb2817278e346137a5d";
const SK2: &str = "tackle blouse grain dawn adult loyal tattoo price access tilt chimney silk";

fn keys(secret: &str) -> E2eKeys {
    E2eKeys::from_seed(&SecretUri::parse(secret).unwrap().e2e_seed()).unwrap()
}

#[test]
fn secp256k1_spec_secrets_talk_both_ways() {
    let (a, b) = (keys(SK1), keys(SK2));
    let a_pk = a.public_key(E2eScheme::Secp256k1);
    let b_pk = b.public_key(E2eScheme::Secp256k1);
    assert_eq!(a_pk.len(), 33);

    let to_b = a.seal(&b_pk, b"hello b").unwrap();
    assert_eq!(to_b.len(), 12 + 7 + 16);
    assert_eq!(
        b.open(E2eScheme::Secp256k1, Some(&a_pk), &to_b).unwrap(),
        b"hello b"
    );
    let to_a = b.seal(&a_pk, b"hello a").unwrap();
    assert_eq!(
        a.open(E2eScheme::Secp256k1, Some(&b_pk), &to_a).unwrap(),
        b"hello a"
    );
}

#[test]
fn secp256k1_secret_is_the_seed_itself() {
    // The public key of secret 1 (k256 computes it independently of our derivation).
    let seed = SecretUri::parse(SK1).unwrap().e2e_seed();
    let sk = k256::SecretKey::from_slice(&*seed).unwrap();
    use k256::elliptic_curve::sec1::ToEncodedPoint;
    assert_eq!(
        keys(SK1).public_key(E2eScheme::Secp256k1),
        sk.public_key().to_encoded_point(true).as_bytes()
    );
}

#[test]
fn x25519_talks_both_ways_and_needs_no_sender_lookup() {
    let (a, b) = (keys(SK1), keys(SK2));
    let b_pk = b.public_key(E2eScheme::X25519);
    let a_pk = a.public_key(E2eScheme::X25519);
    assert_eq!(b_pk.len(), 32);

    let to_b = a.seal(&b_pk, b"over x25519").unwrap();
    assert_eq!(to_b[0], x25519::VERSION);
    assert_eq!(&to_b[1..33], a_pk.as_slice());
    assert_eq!(
        b.open(E2eScheme::X25519, None, &to_b).unwrap(),
        b"over x25519"
    );
    let to_a = b.seal(&a_pk, b"back").unwrap();
    assert_eq!(a.open(E2eScheme::X25519, None, &to_a).unwrap(), b"back");
}

#[test]
fn each_direction_has_its_own_key() {
    // A message from a to b, reflected back to a, must not open.
    let (a, b) = (keys(SK1), keys(SK2));
    let to_b = a.seal(&b.public_key(E2eScheme::X25519), b"m").unwrap();
    assert_eq!(
        a.open(E2eScheme::X25519, None, &to_b),
        Err(E2eError::Decrypt)
    );
}

#[test]
fn a_third_party_cannot_open() {
    let (a, b, c) = (keys(SK1), keys(SK2), keys("//Charlie"));
    for scheme in [E2eScheme::X25519, E2eScheme::Secp256k1] {
        let sealed = a.seal(&b.public_key(scheme), b"secret").unwrap();
        let a_pk = a.public_key(scheme);
        assert_eq!(
            c.open(scheme, Some(&a_pk), &sealed),
            Err(E2eError::Decrypt),
            "{scheme}"
        );
    }
}

#[test]
fn nonces_are_fresh() {
    let (a, b) = (keys(SK1), keys(SK2));
    for scheme in [E2eScheme::X25519, E2eScheme::Secp256k1] {
        let pk = b.public_key(scheme);
        assert_ne!(a.seal(&pk, b"same").unwrap(), a.seal(&pk, b"same").unwrap());
    }
}

#[test]
fn ciphers_are_cached_per_correspondent() {
    let (a, b) = (keys(SK1), keys(SK2));
    for _ in 0..3 {
        a.seal(&b.public_key(E2eScheme::X25519), b"x").unwrap();
        a.seal(&b.public_key(E2eScheme::Secp256k1), b"x").unwrap();
    }
    assert_eq!(a.cached_ciphers(), 2);
}

#[test]
fn bad_inputs_get_clear_errors() {
    let a = keys(SK1);
    assert_eq!(
        a.seal(&[1; 20], b"x").unwrap_err().to_string(),
        "public key of 20 bytes is neither x25519 (32) nor secp256k1 (33 or 65)"
    );
    assert_eq!(
        a.seal(&[7; 33], b"x"),
        Err(E2eError::InvalidPublicKey("secp256k1"))
    );
    // The all-zero x25519 key is of low order.
    assert_eq!(a.seal(&[0; 32], b"x"), Err(E2eError::LowOrderKey));
    assert_eq!(
        a.open(E2eScheme::X25519, None, &[1; 10]),
        Err(E2eError::TooShort { len: 10, min: 61 })
    );
    let mut wrong_version = a
        .seal(&keys(SK2).public_key(E2eScheme::X25519), b"")
        .unwrap();
    wrong_version[0] = 2;
    assert_eq!(
        keys(SK2).open(E2eScheme::X25519, None, &wrong_version),
        Err(E2eError::UnsupportedVersion(2))
    );
    assert_eq!(
        a.open(E2eScheme::Secp256k1, None, &[0; 40]),
        Err(E2eError::MissingSenderKey)
    );
    assert_eq!("X25519".parse::<E2eScheme>().unwrap(), E2eScheme::X25519);
    assert!("rsa".parse::<E2eScheme>().is_err());
}

#[test]
fn open_from_authenticates_the_sender_and_refuses_a_third_party_posing_as_it() {
    let (a, b) = (keys(SK1), keys(SK2));
    let mallory = keys("//Mallory");
    // What binds an unsigned envelope from twin 1 (a) to twin 2 (b), and the same
    // envelope turned around.
    let a_to_b = b"rmb.unsigned.v1 1->2".as_slice();
    let b_to_a = b"rmb.unsigned.v1 2->1".as_slice();
    for scheme in [E2eScheme::X25519, E2eScheme::Secp256k1] {
        let (a_pk, b_pk) = (a.public_key(scheme), b.public_key(scheme));
        let to_b = a.seal_bound(&b_pk, b"from a", a_to_b).unwrap();
        assert_eq!(
            b.open_from(scheme, &a_pk, &to_b, a_to_b).unwrap(),
            b"from a"
        );
        assert_eq!(
            b.open_from(scheme, &a_pk, &to_b, b_to_a),
            Err(E2eError::Decrypt),
            "{scheme}: another binding does not open"
        );
        let unbound = a.seal(&b_pk, b"signed layout").unwrap();
        assert_eq!(
            b.open_from(scheme, &a_pk, &unbound, a_to_b),
            Err(E2eError::Decrypt),
            "{scheme}: a signed envelope's ciphertext does not pass as an unsigned one"
        );
        // Mallory encrypts to b with her own key and claims to be a.
        let forged = mallory
            .seal_bound(&b_pk, b"from a, says mallory", a_to_b)
            .unwrap();
        assert!(
            matches!(
                b.open_from(scheme, &a_pk, &forged, a_to_b),
                Err(E2eError::NotFromSender | E2eError::Decrypt)
            ),
            "{scheme}: a third party's ciphertext must not pass as the sender's"
        );
        // What a sent to b, reflected back to a as if b had sent it: x25519 gives each
        // direction its own key; secp256k1's key is the same both ways, and only the
        // binding tells the directions apart.
        let reflected = a.open_from(scheme, &b_pk, &to_b, b_to_a);
        assert!(
            matches!(reflected, Err(E2eError::NotFromSender | E2eError::Decrypt)),
            "{scheme}: {reflected:?}"
        );
    }
    // A sender publishing the other scheme cannot be authenticated by decryption.
    let to_b = a.seal(&b.public_key(E2eScheme::X25519), b"x").unwrap();
    assert_eq!(
        b.open_from(
            E2eScheme::X25519,
            &a.public_key(E2eScheme::Secp256k1),
            &to_b,
            b""
        ),
        Err(E2eError::NotFromSender)
    );
}
