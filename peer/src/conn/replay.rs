//! The receiver's replay window over packet numbers.
//!
//! Data frames travel in unsigned envelopes (docs/protocol.md §10), so the core's
//! replay check, keyed by the envelope uid a forger may change at will, does not cover
//! them. Every frame authenticates its packet number (the AEAD nonce), and a sender
//! never uses a packet number twice in a direction (retransmissions get new ones), so
//! a packet number seen before is a replay: it is dropped before its frame is applied.
//! Without this, a relay could replay an old frame to make the other side answer a
//! PING again and again, or re-apply stale acks.

/// Packet numbers remembered below the highest one seen. Frames reordered by more than
/// this (far beyond a window in flight) are dropped as too old and retransmitted.
pub const WINDOW: u64 = 1024;
const WORDS: usize = (WINDOW / 64) as usize;

/// Which of the last [`WINDOW`] packet numbers arrived (a ring of bits by `pn % WINDOW`).
#[derive(Debug, Clone)]
pub struct PacketWindow {
    highest: u64,
    seen: [u64; WORDS],
}

impl Default for PacketWindow {
    fn default() -> Self {
        PacketWindow {
            highest: 0,
            seen: [0; WORDS],
        }
    }
}

/// Why a packet number was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stale {
    /// It arrived before.
    Repeated,
    /// It is more than [`WINDOW`] below the highest one seen.
    TooOld,
}

impl PacketWindow {
    fn bit(pn: u64) -> (usize, u64) {
        let i = pn % WINDOW;
        ((i / 64) as usize, 1u64 << (i % 64))
    }

    /// Admits `pn` once: `Ok` the first time (and remembers it), an error for a repeat
    /// or a packet number too old to tell. Call only for authenticated packets, so a
    /// forger cannot move the window.
    pub fn admit(&mut self, pn: u64) -> Result<(), Stale> {
        if pn > self.highest {
            if pn - self.highest >= WINDOW {
                self.seen = [0; WORDS];
            } else {
                // Slots of the numbers passed over (and of `pn`) held ones WINDOW lower.
                for passed in self.highest + 1..=pn {
                    let (w, b) = Self::bit(passed);
                    self.seen[w] &= !b;
                }
            }
            self.highest = pn;
        } else if self.highest - pn >= WINDOW {
            return Err(Stale::TooOld);
        }
        let (w, b) = Self::bit(pn);
        if self.seen[w] & b != 0 {
            return Err(Stale::Repeated);
        }
        self.seen[w] |= b;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_packet_number_is_admitted_once_in_any_order() {
        let mut w = PacketWindow::default();
        for pn in [1, 3, 2, 10, 5] {
            assert_eq!(w.admit(pn), Ok(()), "{pn}");
        }
        for pn in [1, 2, 3, 5, 10] {
            assert_eq!(w.admit(pn), Err(Stale::Repeated), "{pn}");
        }
        assert_eq!(w.admit(4), Ok(()));
        assert_eq!(w.admit(10 + WINDOW - 1), Ok(()));
        // 10 is still inside the window; 9 is still unseen.
        assert_eq!(w.admit(10), Err(Stale::Repeated));
        assert_eq!(w.admit(9), Err(Stale::TooOld));
        assert_eq!(w.admit(10 + WINDOW), Ok(()));
        assert_eq!(w.admit(10), Err(Stale::TooOld));
        // A jump beyond the window forgets everything below it.
        assert_eq!(w.admit(100_000), Ok(()));
        assert_eq!(w.admit(100_000 - 1), Ok(()));
        assert_eq!(w.admit(100_000 - WINDOW), Err(Stale::TooOld));
        assert_eq!(w.admit(100_000), Err(Stale::Repeated));
    }

    #[test]
    fn slots_reused_by_later_packet_numbers_start_clear() {
        let mut w = PacketWindow::default();
        for pn in 1..=3 * WINDOW {
            assert_eq!(w.admit(pn), Ok(()), "{pn}");
            assert_eq!(w.admit(pn), Err(Stale::Repeated), "{pn}");
        }
    }
}
