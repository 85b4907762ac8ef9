//! What a User-Agent says — bot or not, device class, in-app browser — worked out once per
//! distinct string.
//!
//! Viral traffic repeats a few thousand User-Agent strings, so a direct-mapped cache of
//! (56-bit hash, packed answer) in atomic words answers most requests with one hash and one
//! load, instead of scanning 1,500 crawler patterns and a dozen device and app markers.
//! A wrong answer needs two strings with the same 56-bit hash; entries race benignly (a lost
//! store only costs a rescan).

use super::bots;
use crate::clicks::Device;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agent {
    pub bot: bool,
    pub device: Device,
    /// The social app whose in-app browser sent the request.
    pub app: Option<&'static str>,
}

const APPS: [&str; 3] = ["instagram", "tiktok", "facebook"];
const DEVICES: [Device; 4] = [Device::Ios, Device::Android, Device::Desktop, Device::Other];
const SLOTS: usize = 4096;
/// Low byte of a slot: the packed answer, with this bit set so an empty slot never matches.
const FILLED: u64 = 0x80;

static CACHE: LazyLock<Box<[AtomicU64]>> = LazyLock::new(|| (0..SLOTS).map(|_| AtomicU64::new(0)).collect());

/// A User-Agent's 64-bit hash: the cache key here, and the User-Agent's part of the unique
/// filter's key.
pub fn hash(ua: &[u8]) -> u64 {
    rustc_hash::FxBuildHasher.hash_one(ua)
}

/// The answer for `ua` (whose [`hash`] is `h`), from the cache when this exact string was
/// seen lately.
pub fn of(ua: &[u8], h: u64) -> Agent {
    let slot = &CACHE[(h >> 52) as usize % SLOTS];
    let seen = slot.load(Ordering::Relaxed);
    if seen & FILLED != 0 && seen >> 8 == h >> 8 {
        return unpack(seen);
    }
    let agent = scan(ua);
    slot.store((h & !0xff) | pack(agent), Ordering::Relaxed);
    agent
}

/// The same answer without the cache.
pub fn scan(ua: &[u8]) -> Agent {
    Agent {
        bot: ua.is_empty() || bots::BOTS.is_bot(ua),
        device: device(ua),
        app: in_app(ua),
    }
}

fn pack(a: Agent) -> u64 {
    let device = DEVICES.iter().position(|d| *d == a.device).unwrap_or(3) as u64;
    let app = a
        .app
        .and_then(|x| APPS.iter().position(|y| *y == x))
        .map_or(0, |i| i as u64 + 1);
    FILLED | u64::from(a.bot) | device << 1 | app << 3
}

fn unpack(w: u64) -> Agent {
    let app = ((w >> 3) & 3) as usize;
    Agent {
        bot: w & 1 == 1,
        device: DEVICES[((w >> 1) & 3) as usize],
        app: (app > 0).then(|| APPS[app - 1]),
    }
}

fn device(ua: &[u8]) -> Device {
    let has = |needle: &[u8]| memchr::memmem::find(ua, needle).is_some();
    if has(b"iPhone") || has(b"iPad") || has(b"iPod") {
        Device::Ios
    } else if has(b"Android") {
        Device::Android
    } else if has(b"Windows") || has(b"Macintosh") || has(b"X11") || has(b"CrOS") {
        Device::Desktop
    } else {
        Device::Other
    }
}

fn in_app(ua: &[u8]) -> Option<&'static str> {
    let has = |needle: &[u8]| memchr::memmem::find(ua, needle).is_some();
    if has(b"Instagram") {
        Some(APPS[0])
    } else if has(b"musical_ly") || has(b"BytedanceWebview") || has(b"TikTok") || has(b"trill_") {
        Some(APPS[1])
    } else if has(b"FBAN/") || has(b"FBAV/") || has(b"FB_IAB") {
        Some(APPS[2])
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_answers_equal_scans_and_every_answer_round_trips() {
        for bot in [false, true] {
            for device in DEVICES {
                for app in [None, Some("instagram"), Some("tiktok"), Some("facebook")] {
                    let a = Agent { bot, device, app };
                    assert_eq!(unpack(pack(a)), a);
                }
            }
        }
        for ua in [
            &b"facebookexternalhit/1.1"[..],
            b"Mozilla/5.0 (iPhone) Instagram 305.0",
            b"Mozilla/5.0 (Linux; Android 13) trill_310003 BytedanceWebview/d8a21c6",
            b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) [FBAN/EMA;FBAV/1]",
            b"curl/8.0",
            b"",
        ] {
            let want = scan(ua);
            assert_eq!(of(ua, hash(ua)), want, "{}", String::from_utf8_lossy(ua));
            assert_eq!(of(ua, hash(ua)), want, "cached: {}", String::from_utf8_lossy(ua));
        }
        let insta = b"Mozilla/5.0 (iPhone) Instagram 305.0";
        assert_eq!(of(insta, hash(insta)).app, Some("instagram"));
        assert_eq!(of(insta, hash(insta)).device, Device::Ios);
    }
}
