//! Deterministic mutations for the corpus test: a small seeded generator and the edits
//! libFuzzer starts from (bit flips, byte changes, cuts, insertions, repeats, splices),
//! so every run of `cargo test` replays the same inputs.

/// A xorshift64* generator: reproducible, no dependency, good enough to pick edits.
pub struct Rng(u64);

impl Rng {
    /// A generator started from `seed` (any value; 0 is moved off the fixed point).
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

/// Values that sit on the edges of length and count fields.
const INTERESTING: &[u8] = &[
    0, 1, 0x7f, 0x80, 0xff, b'"', b'{', b'[', b'0', b'-', b'_', b':',
];

/// `input` changed by one to four random edits; `other` is spliced in sometimes.
pub fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = out.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                out[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                out[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 if len > 0 => out.truncate(rng.below(len)),
            3 => {
                let i = rng.below(len + 1);
                out.insert(i, rng.next_u64() as u8);
            }
            4 if len > 0 => {
                let start = rng.below(len);
                let end = (start + 1 + rng.below(16)).min(len);
                out.drain(start..end);
            }
            5 if len > 0 => {
                // A 32-bit big-endian length or count, overwritten with an extreme.
                let i = rng.below(len);
                let value: u32 = [0, 1, 0xffff, 0x7fff_ffff, u32::MAX][rng.below(5)];
                for (k, b) in value.to_be_bytes().into_iter().enumerate() {
                    if let Some(slot) = out.get_mut(i + k) {
                        *slot = b;
                    }
                }
            }
            6 if len > 0 => {
                let start = rng.below(len);
                let end = (start + 1 + rng.below(32)).min(len);
                let piece = out[start..end].to_vec();
                let at = rng.below(len + 1);
                out.splice(at..at, piece);
            }
            _ if !other.is_empty() => {
                let start = rng.below(other.len());
                let end = (start + 1 + rng.below(64)).min(other.len());
                let at = rng.below(len + 1);
                out.splice(at..at, other[start..end].iter().copied());
            }
            _ => out.push(rng.next_u64() as u8),
        }
    }
    out
}
