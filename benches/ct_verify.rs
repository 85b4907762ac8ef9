//! dudect (Reparaz, Balasch and Verbauwhede, "Dude, is my code constant time?", 2017) on link
//! signature verification: forged tokens whose signature is wrong in its first character
//! against ones wrong in its last, in random order, each call timed with the CPU's cycle
//! counter. A comparison that stops at the first differing byte shows as a large Welch t
//! between the two classes. The fault matrix asks |t| < 10 at 10⁶ samples or more.
//!
//!     cargo bench --bench ct_verify                          # 2 × 10⁶ samples
//!     DUDECT_SAMPLES=20000000 cargo bench --bench ct_verify
//!     DUDECT_CONTROL=1 cargo bench --bench ct_verify         # the harness's own check
//!
//! `DUDECT_CONTROL=1` times a verification that is the same work (the HMAC for each key of
//! the ring, the signature decoded) but compares the tag byte by byte, stopping at the first
//! difference: it shows the harness finds such a leak under the HMAC's own timing noise.
//!
//! Written here rather than taken from dudect-bencher, which brings 16 crates with it (clap 2,
//! atty). As in dudect, the t statistic is taken on all samples and on samples cropped at
//! several upper percentiles (timing noise is one-sided), and the largest |t| is the verdict.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use cartlink::links::signature::{KeyRing, TAG_LEN};
use ring::hmac;
use std::hint::black_box;

const KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8,k0:HxwdHhsaGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQA";
const B64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const BATCH: usize = 100_000;

/// xorshift64*: enough to mix classes and inputs.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Running mean and variance (Welford) of one class.
#[derive(Default, Clone, Copy)]
struct Moments {
    n: f64,
    mean: f64,
    m2: f64,
}
impl Moments {
    fn push(&mut self, x: f64) {
        self.n += 1.0;
        let d = x - self.mean;
        self.mean += d / self.n;
        self.m2 += d * (x - self.mean);
    }
    fn var(&self) -> f64 {
        self.m2 / (self.n - 1.0).max(1.0)
    }
}

/// Welch's t between two classes.
fn welch(a: &Moments, b: &Moments) -> f64 {
    (a.mean - b.mean) / (a.var() / a.n + b.var() / b.n).sqrt()
}

#[cfg(target_arch = "x86_64")]
fn cycles() -> u64 {
    // SAFETY: lfence and rdtsc have no preconditions on x86_64.
    unsafe {
        std::arch::x86_64::_mm_lfence();
        let t = std::arch::x86_64::_rdtsc();
        std::arch::x86_64::_mm_lfence();
        t
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn cycles() -> u64 {
    use std::sync::OnceLock;
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_nanos() as u64
}

/// `sig` with the character at `at` replaced by another of the alphabet.
fn wrong_at(sig: &str, at: usize, rng: &mut Rng) -> Vec<u8> {
    let mut b = sig.as_bytes().to_vec();
    while b[at] == sig.as_bytes()[at] {
        b[at] = B64URL[rng.below(B64URL.len())];
    }
    b
}

/// What a leaky verification looks like (the control): the ring's work, an early-exit compare.
fn leaky_verify(keys: &[hmac::Key], id: &[u8], sig: &[u8]) -> bool {
    let Ok(tag) = URL_SAFE_NO_PAD.decode(sig) else {
        return false;
    };
    keys.iter().any(|k| {
        let mac = hmac::sign(k, id);
        let want = &mac.as_ref()[..TAG_LEN];
        want.len() == tag.len() && want.iter().zip(&tag).all(|(a, b)| black_box(*a) == black_box(*b))
    })
}

fn main() {
    let total: usize = std::env::var("DUDECT_SAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    let control = std::env::var("DUDECT_CONTROL").is_ok_and(|v| v == "1");
    let ring = KeyRing::parse(KEYS).unwrap();
    let keys: Vec<hmac::Key> = KEYS
        .split(',')
        .map(|e| hmac::Key::new(hmac::HMAC_SHA256, &URL_SAFE_NO_PAD.decode(&e[3..]).unwrap()))
        .collect();
    let ids: Vec<String> = (0..64).map(|i| format!("creator-{i:02}-kit")).collect();
    let sigs: Vec<String> = ids.iter().map(|id| ring.sign(id)).collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // Crop thresholds: the first batch's percentiles (as dudect), then fixed.
    let percentiles = [1.0, 0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5];
    let mut crops: Vec<f64> = Vec::new();
    let mut classes = vec![[Moments::default(); 2]; percentiles.len()];
    let mut done = 0;
    while done < total {
        let mut batch = Vec::with_capacity(BATCH);
        for _ in 0..BATCH {
            let i = rng.below(ids.len());
            let class = rng.below(2);
            let at = if class == 0 { 0 } else { sigs[i].len() - 1 };
            batch.push((class, i, wrong_at(&sigs[i], at, &mut rng)));
        }
        let mut times = Vec::with_capacity(BATCH);
        for (class, i, sig) in &batch {
            let t0 = cycles();
            if control {
                black_box(leaky_verify(&keys, black_box(ids[*i].as_bytes()), black_box(sig)));
            } else {
                black_box(ring.verify(black_box(ids[*i].as_bytes()), black_box(sig)));
            }
            times.push((*class, (cycles() - t0) as f64));
        }
        if crops.is_empty() {
            let mut sorted: Vec<f64> = times.iter().map(|t| t.1).collect();
            sorted.sort_by(f64::total_cmp);
            crops = percentiles
                .iter()
                .map(|p| sorted[((sorted.len() - 1) as f64 * p) as usize])
                .collect();
            continue; // the first batch only warms up and sets the crops
        }
        for (class, t) in times {
            for (k, crop) in crops.iter().enumerate() {
                if t <= *crop {
                    classes[k][class].push(t);
                }
            }
        }
        done += BATCH;
        let ts: Vec<f64> = classes.iter().map(|c| welch(&c[0], &c[1])).collect();
        let max = ts.iter().fold(0.0f64, |m, t| m.max(t.abs()));
        println!(
            "samples {done:>9}: max |t| {max:6.2} (all samples: t {:+.2}; mean cycles first-wrong {:.1}, last-wrong {:.1})",
            ts[0], classes[0][0].mean, classes[0][1].mean
        );
    }
    let max = classes.iter().map(|c| welch(&c[0], &c[1]).abs()).fold(0.0, f64::max);
    println!(
        "VERDICT: {} (max |t| {max:.2} at {done} samples; the fault matrix asks < 10 at 10⁶ or more)",
        if max < 10.0 { "PASS" } else { "FAIL" }
    );
}
