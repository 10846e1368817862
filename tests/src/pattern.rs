//! The deterministic byte stream `testkit source` sends: incompressible-looking (xorshift) and
//! the same for the same seed, so a test can checksum it and search captures for pieces of it.

/// A generator of the stream for one seed.
pub struct Pattern(u64);

impl Pattern {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Fills `buf` with the next bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            chunk.copy_from_slice(&self.0.to_le_bytes()[..chunk.len()]);
        }
    }

    /// `len` bytes of the stream of `seed` starting at `offset` (a multiple of 8).
    pub fn sample(seed: u64, offset: u64, len: usize) -> Vec<u8> {
        assert_eq!(offset % 8, 0, "sample offsets are multiples of 8");
        let mut p = Self::new(seed);
        let mut skip = vec![0u8; 8];
        for _ in 0..offset / 8 {
            p.fill(&mut skip);
        }
        let mut out = vec![0u8; len];
        p.fill(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_match_the_stream() {
        let mut p = Pattern::new(3);
        let mut all = vec![0u8; 4096];
        p.fill(&mut all);
        assert_eq!(Pattern::sample(3, 1024, 64), all[1024..1088].to_vec());
        assert_ne!(Pattern::sample(4, 0, 64), all[..64].to_vec());
    }
}
