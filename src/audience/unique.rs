//! Unique humans: a Bloom filter over a keyed hash of (client address, User-Agent, link).
//!
//! The key is a random SipHash key made at start-up and replaced every day; it is never stored
//! or logged, so the filter cannot be reversed into addresses and days cannot be joined.
//! Two generations make the window slide: a visitor is unique if seen in neither today's nor
//! yesterday's filter. Sized from the expected visitors per day and the target false-positive
//! rate (m = −n·ln p / ln²2 bits, k = m/n·ln 2 hashes).
//!
//! The `bloomfilter` crate needs `&mut self` to insert, which would put a lock on the
//! redirect path; this filter sets bits with `fetch_or` on atomic words instead, so any number
//! of workers insert concurrently without waiting. An insert racing another insert of the same
//! key may report both as unique — at worst one extra unique per race, never a lost click.

use arc_swap::ArcSwap;
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub struct Bloom {
    words: Box<[AtomicU64]>,
    bits: u64,
    hashes: u32,
    /// Keyed SipHash: a fresh random key per generation.
    key: std::collections::hash_map::RandomState,
}

impl Bloom {
    pub fn new(expected: u64, fp_rate: f64) -> Bloom {
        let n = expected.max(1) as f64;
        let ln2 = std::f64::consts::LN_2;
        let bits = ((-n * fp_rate.ln()) / (ln2 * ln2)).ceil().max(64.0) as u64;
        let words = bits.div_ceil(64);
        let hashes = ((bits as f64 / n) * ln2).round().clamp(1.0, 30.0) as u32;
        Bloom {
            words: (0..words).map(|_| AtomicU64::new(0)).collect(),
            bits: words * 64,
            hashes,
            key: std::collections::hash_map::RandomState::new(),
        }
    }

    fn positions(&self, h: u64) -> impl Iterator<Item = u64> + '_ {
        // Kirsch–Mitzenmacher double hashing from one 64-bit keyed hash.
        let (h1, h2) = (h & 0xffff_ffff, (h >> 32) | 1);
        (0..u64::from(self.hashes)).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) % self.bits)
    }

    fn hash<T: Hash>(&self, item: &T) -> u64 {
        self.key.hash_one(item)
    }

    pub fn contains<T: Hash>(&self, item: &T) -> bool {
        let h = self.hash(item);
        self.positions(h)
            .all(|p| self.words[(p / 64) as usize].load(Ordering::Relaxed) & (1 << (p % 64)) != 0)
    }

    /// Sets the item's bits; true if at least one was unset (the item was not there).
    pub fn insert<T: Hash>(&self, item: &T) -> bool {
        let h = self.hash(item);
        let mut new = false;
        for p in self.positions(h) {
            let bit = 1 << (p % 64);
            new |= self.words[(p / 64) as usize].fetch_or(bit, Ordering::Relaxed) & bit == 0;
        }
        new
    }

    /// Share of bits set: the false-positive rate is about `fill^k`.
    pub fn fill_ratio(&self) -> f64 {
        let set: u64 = self
            .words
            .iter()
            .map(|w| u64::from(w.load(Ordering::Relaxed).count_ones()))
            .sum();
        set as f64 / self.bits as f64
    }

    pub fn hashes(&self) -> u32 {
        self.hashes
    }
}

struct Generations {
    day: u64,
    current: Arc<Bloom>,
    previous: Option<Arc<Bloom>>,
}

/// The sliding two-day window.
pub struct UniqueFilter {
    gens: ArcSwap<Generations>,
    expected: u64,
    fp_rate: f64,
}

impl UniqueFilter {
    pub fn new(expected: u64, fp_rate: f64, day: u64) -> UniqueFilter {
        let gens = Generations {
            day,
            current: Arc::new(Bloom::new(expected, fp_rate)),
            previous: None,
        };
        UniqueFilter {
            gens: ArcSwap::from_pointee(gens),
            expected,
            fp_rate,
        }
    }

    /// True the first time this visitor is seen on this link within the window. The
    /// User-Agent comes as its 64-bit hash (`agent::hash`, already taken for the agent cache);
    /// the whole key then goes through the generation's keyed SipHash.
    pub fn check_and_insert(&self, ip: IpAddr, user_agent: u64, link_id: &str) -> bool {
        let g = self.gens.load();
        let key = (ip, user_agent, link_id);
        let seen_before = g.previous.as_ref().is_some_and(|p| p.contains(&key));
        let new_today = g.current.insert(&key);
        new_today && !seen_before
    }

    /// Starts a new generation when `day` (days since the epoch) moves on; yesterday's
    /// filter stays as `previous`, anything older is dropped with its key.
    pub fn rotate_to(&self, day: u64) {
        let g = self.gens.load();
        if day == g.day {
            return;
        }
        let (expected, fp) = (self.expected, self.fp_rate);
        self.gens.rcu(|old| {
            if old.day == day {
                return Arc::clone(old);
            }
            // Only the generation of exactly yesterday is worth keeping.
            let previous = (old.day + 1 == day).then(|| Arc::clone(&old.current));
            Arc::new(Generations {
                day,
                current: Arc::new(Bloom::new(expected, fp)),
                previous,
            })
        });
    }

    pub fn fill_ratio(&self) -> f64 {
        self.gens.load().current.fill_ratio()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measured_false_positives_stay_under_the_design_rate() {
        let b = Bloom::new(100_000, 0.001);
        for i in 0..100_000u64 {
            b.insert(&i);
        }
        let fp = (1_000_000..1_200_000u64).filter(|i| b.contains(i)).count() as f64 / 200_000.0;
        assert!(fp <= 0.0015, "false-positive rate {fp} at design capacity");
        assert!((0.45..0.55).contains(&b.fill_ratio()), "fill {}", b.fill_ratio());
        for i in 0..100_000u64 {
            assert!(b.contains(&i), "no false negatives");
        }
    }

    #[test]
    fn unique_then_not_then_again_after_the_window() {
        let f = UniqueFilter::new(1000, 0.001, 100);
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        assert!(f.check_and_insert(ip, 1, "a"));
        assert!(!f.check_and_insert(ip, 1, "a"));
        assert!(f.check_and_insert(ip, 1, "b"), "another link");
        assert!(f.check_and_insert(ip, 2, "a"), "another browser");
        f.rotate_to(101);
        assert!(!f.check_and_insert(ip, 1, "a"), "yesterday still counts");
        f.rotate_to(102);
        f.rotate_to(103);
        assert!(f.check_and_insert(ip, 1, "a"), "unique again after the window");
    }
}
