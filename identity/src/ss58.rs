//! SS58, the Substrate text form of an account (`5…` on TFChain).
//!
//! Used only to show and read accounts; the wire carries raw 32-byte keys.
//! Layout: `base58(prefix ‖ account ‖ checksum[0..2])` where
//! `checksum = BLAKE2b-512("SS58PRE" ‖ prefix ‖ account)`.

use blake2::{Blake2b512, Digest};

/// The network prefix TFChain (and generic Substrate) uses; addresses start with `5`.
pub const TFCHAIN_PREFIX: u16 = 42;

/// Why a string is not a valid SS58 account address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ss58Error {
    #[error("SS58 address is not valid base58")]
    NotBase58,
    #[error("SS58 address decodes to {0} bytes; a 32-byte account needs 35 or 36")]
    BadLength(usize),
    #[error("SS58 address uses a reserved prefix byte 0x{0:02x}")]
    ReservedPrefix(u8),
    #[error("SS58 address checksum does not match")]
    BadChecksum,
}

fn checksum(prefix_and_account: &[u8]) -> [u8; 2] {
    let mut hasher = Blake2b512::new();
    hasher.update(b"SS58PRE");
    hasher.update(prefix_and_account);
    let hash = hasher.finalize();
    [hash[0], hash[1]]
}

fn prefix_bytes(prefix: u16) -> Vec<u8> {
    if prefix < 64 {
        vec![prefix as u8]
    } else {
        let first = (((prefix & 0b1111_1100) >> 2) as u8) | 0b0100_0000;
        let second = ((prefix >> 8) as u8) | (((prefix & 0b11) as u8) << 6);
        vec![first, second]
    }
}

/// Encodes a 32-byte account with a network prefix (below 16384).
pub fn encode(prefix: u16, account: &[u8; 32]) -> String {
    let mut data = prefix_bytes(prefix);
    data.extend_from_slice(account);
    let check = checksum(&data);
    data.extend_from_slice(&check);
    bs58::encode(data).into_string()
}

/// Decodes an SS58 address into its network prefix and 32-byte account.
pub fn decode(address: &str) -> Result<(u16, [u8; 32]), Ss58Error> {
    let data = bs58::decode(address)
        .into_vec()
        .map_err(|_| Ss58Error::NotBase58)?;
    let prefix_len = match data.first() {
        Some(b) if *b < 64 => 1,
        Some(b) if *b < 128 => 2,
        Some(b) => return Err(Ss58Error::ReservedPrefix(*b)),
        None => return Err(Ss58Error::BadLength(0)),
    };
    if data.len() != prefix_len + 32 + 2 {
        return Err(Ss58Error::BadLength(data.len()));
    }
    let (body, check) = data.split_at(prefix_len + 32);
    if checksum(body) != check {
        return Err(Ss58Error::BadChecksum);
    }
    let prefix = if prefix_len == 1 {
        u16::from(data[0])
    } else {
        let lower = ((data[0] << 2) | (data[1] >> 6)) as u16;
        let upper = (data[1] & 0b0011_1111) as u16;
        lower | (upper << 8)
    };
    let mut account = [0u8; 32];
    account.copy_from_slice(&body[prefix_len..]);
    Ok((prefix, account))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Alice's sr25519 account, a well-known Substrate value.
    const ALICE: &str = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY";
    const ALICE_HEX: &str = "d43593c715fdd31c61141abd04a99fd6822c8558854ccde39a5684e7a56da27d";

    fn alice() -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&ALICE_HEX[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    #[test]
    fn known_address_round_trips() {
        assert_eq!(encode(TFCHAIN_PREFIX, &alice()), ALICE);
        assert_eq!(decode(ALICE).unwrap(), (42, alice()));
    }

    #[test]
    fn two_byte_prefixes_round_trip() {
        for prefix in [64u16, 255, 1284, 16383] {
            let text = encode(prefix, &alice());
            assert_eq!(decode(&text).unwrap(), (prefix, alice()), "prefix {prefix}");
        }
    }

    #[test]
    fn corrupted_addresses_are_refused() {
        let mut bad = ALICE.to_string();
        bad.replace_range(10..11, "x");
        assert!(decode(&bad).is_err());
        assert_eq!(decode("0OIl"), Err(Ss58Error::NotBase58));
        assert!(matches!(decode("1111"), Err(Ss58Error::BadLength(4))));
    }
}
