//! Connections between peers (rmb_peer::conn::wire): the open request and accept reply
//! a peer reads from any twin, and the frames inside decrypted data packets.

use rmb_aead::Cipher;
use rmb_peer::conn::wire::{Accept, Frame, Open, PACKET_HEADER, split_packet};

use crate::{alloc, select};

/// By the first byte, the rest as an open request, an accept reply, a frame or a data
/// packet's header. No panic, bounded allocations; whatever decodes encodes back to
/// exactly the input (the layouts have one encoding per value), and a packet splits
/// at its fixed header.
pub fn conn_wire(data: &[u8]) {
    let Some((which, rest)) = select(data, 4) else {
        return;
    };
    let limit = alloc::limit(rest.len());
    match which {
        0 => {
            if let Ok(open) = alloc::bounded("Open::decode", limit, || Open::decode(rest)) {
                assert_eq!(open.encode(), rest);
                let _ = open.transcript(1, 2);
                let known = open
                    .offer
                    .iter()
                    .filter(|&&id| Cipher::from_id(id).is_some());
                let want = if open.offer.is_empty() {
                    1
                } else {
                    known.count()
                };
                assert_eq!(
                    open.ciphers().len(),
                    want,
                    "the ciphers are the known offers"
                );
            }
        }
        1 => {
            if let Ok(accept) = alloc::bounded("Accept::decode", limit, || Accept::decode(rest)) {
                assert_eq!(accept.encode(), rest);
                let _ = accept.transcript(&[7; 32]);
                let _ = accept.cipher_in_use();
            }
        }
        2 => {
            if let Ok(frame) = alloc::bounded("Frame::decode", limit, || Frame::decode(rest)) {
                assert_eq!(frame.encode(), rest);
            }
        }
        _ => match split_packet(rest) {
            Ok((id, pn, cipher)) => {
                assert_eq!(rest.len(), PACKET_HEADER + cipher.len());
                assert_eq!(
                    (&rest[..16], &rest[16..24]),
                    (&id[..], &pn.to_be_bytes()[..])
                );
            }
            Err(_) => assert!(rest.len() < PACKET_HEADER),
        },
    }
}
