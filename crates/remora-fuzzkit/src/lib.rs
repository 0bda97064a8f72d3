//! Shared by the stable fuzz harnesses (`crates/*/tests/fuzz_*.rs`): a
//! deterministic input generator, so every run of `cargo test` explores the
//! same cases and a failure names its case number. Test-only; not published.

/// Deterministic, dependency-free input generator: a SplitMix64 PRNG and
/// structured mutations of valid seed inputs (bit flips, interesting bytes,
/// truncations, deletions, duplications, splices, dictionary tokens, random
/// bytes), so generated cases get past the first checks and reach deep code.
pub struct Gen {
    state: u64,
    /// Most mutation operations applied to one seed.
    max_ops: usize,
}

impl Gen {
    /// A generator seeded with `seed` (same seed, same inputs).
    pub fn new(seed: u64) -> Self {
        Gen {
            state: seed,
            max_ops: 4,
        }
    }

    /// The same generator applying at most `max_ops` operations per input.
    pub fn with_max_ops(self, max_ops: usize) -> Self {
        Gen {
            max_ops: max_ops.max(1),
            ..self
        }
    }

    /// The next 64 random bits (SplitMix64).
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// One of `items` (non-empty).
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// Up to `max` random bytes.
    pub fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max + 1);
        (0..n).map(|_| self.next_u64() as u8).collect()
    }

    /// A mutant of one of `seeds`, using tokens from `dict`.
    pub fn mutate(&mut self, seeds: &[Vec<u8>], dict: &[&[u8]]) -> Vec<u8> {
        const INTERESTING: &[u8] = &[
            0, 1, 0x7f, 0x80, 0xff, b'"', b'\\', b'{', b'}', b'[', b']', b':', b',', b'\n', b'\r',
            b' ', b'0', b'9', b'-', b'=',
        ];
        let mut out = self.pick(seeds).clone();
        let ops = 1 + self.below(self.max_ops);
        for _ in 0..ops {
            let len = out.len();
            match self.below(10) {
                0 | 1 if len > 0 => {
                    let i = self.below(len);
                    out[i] ^= 1 << self.below(8);
                }
                2 if len > 0 => {
                    let i = self.below(len);
                    out[i] = *self.pick(INTERESTING);
                }
                3 => out.truncate(self.below(len + 1)),
                4 if len > 0 => {
                    let a = self.below(len);
                    let b = (a + 1 + self.below(16)).min(len);
                    out.drain(a..b);
                }
                5 if len > 0 => {
                    let a = self.below(len);
                    let b = (a + 1 + self.below(32)).min(len);
                    let chunk = out[a..b].to_vec();
                    let at = self.below(len + 1);
                    out.splice(at..at, chunk);
                }
                6 => {
                    let other = self.pick(seeds).clone();
                    let cut_a = self.below(len + 1);
                    let cut_b = self.below(other.len() + 1);
                    out.truncate(cut_a);
                    out.extend_from_slice(&other[cut_b..]);
                }
                7 | 8 if !dict.is_empty() => {
                    let token = *self.pick(dict);
                    let at = self.below(len + 1);
                    if self.below(2) == 0 && at < len {
                        let end = (at + token.len()).min(len);
                        out.splice(at..end, token.iter().copied());
                    } else {
                        out.splice(at..at, token.iter().copied());
                    }
                }
                _ => {
                    let junk = self.bytes(16);
                    let at = self.below(len + 1);
                    out.splice(at..at, junk);
                }
            }
        }
        if self.below(50) == 0 {
            out = self.bytes(64);
        }
        out
    }
}
