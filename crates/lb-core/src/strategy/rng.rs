//! Randomness for the random strategies: SplitMix64 over one atomic, so a pick needs no lock,
//! and a seed makes tests and simulations reproducible (tower's `Balance::from_rng` idea).
//!
//! Written here rather than taken from `rand`: what is needed is a generator shared by all
//! threads without a lock, which `rand`'s generators (owned, `&mut self`) are not, and SplitMix64
//! is a dozen lines with published constants (Steele, Lea and Flood, "Fast splittable
//! pseudorandom number generators", 2014).

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// A lock-free SplitMix64 generator: each draw is one relaxed `fetch_add` and a few
/// multiplications. Draws from several threads interleave, but never repeat.
#[derive(Debug)]
pub struct SplitMix(AtomicU64);

impl SplitMix {
    /// The same sequence for the same seed.
    pub fn from_seed(seed: u64) -> Self {
        SplitMix(AtomicU64::new(seed))
    }

    /// Seeded from the operating system's randomness (via the standard library's hasher keys).
    pub fn from_entropy() -> Self {
        SplitMix::from_seed(RandomState::new().hash_one(0x6c62_6c62_u64))
    }

    /// The next 64 random bits.
    pub fn next_u64(&self) -> u64 {
        let mut z = self
            .0
            .fetch_add(GOLDEN_GAMMA, Ordering::Relaxed)
            .wrapping_add(GOLDEN_GAMMA);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform number in `0..n` (n > 0), by multiplying rather than dividing (Lemire).
    pub fn below(&self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_sequence() {
        let (a, b) = (SplitMix::from_seed(7), SplitMix::from_seed(7));
        let xs: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..5).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs[0], SplitMix::from_seed(8).next_u64());
    }

    #[test]
    fn below_is_uniform_enough() {
        let rng = SplitMix::from_seed(42);
        let mut counts = [0u32; 10];
        for _ in 0..100_000 {
            counts[rng.below(10)] += 1;
        }
        // Expected 10 000 each; a fixed seed makes this exact, the bound is ~5 sigma.
        assert!(
            counts.iter().all(|&c| (9_500..10_500).contains(&c)),
            "{counts:?}"
        );
    }
}
