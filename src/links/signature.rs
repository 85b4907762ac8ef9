//! Link signatures: `/{id}.{sig}` where `sig` is HMAC-SHA256(key, id) truncated to
//! [`TAG_LEN`] bytes (96 bits), base64url without padding.
//!
//! A key ring holds every key that verifies; the first one signs, so keys rotate with overlap:
//! add the new key first, keep the old one until its links are out of circulation.
//! Verification works on the raw path bytes (no decoding first) and compares in constant time.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::hmac;
use subtle::ConstantTimeEq;

/// Truncated tag length in bytes: 96 bits, above the 64-bit floor, 16 characters in a URL.
pub const TAG_LEN: usize = 12;
/// Length of the base64url (no padding) rendering of a tag.
pub const SIG_CHARS: usize = 16;
/// Shortest key accepted: HMAC-SHA256 keys shorter than the hash output weaken it.
pub const MIN_KEY_LEN: usize = 32;

/// Why a key list was refused. Messages never contain key material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("signing keys: entry {0} is not `kid:base64key`")]
    Shape(usize),
    /// Not echoed: a key and its kid written the wrong way round would print the key.
    #[error("signing keys: entry {0}: the kid (before `:`) must be 1-16 of [A-Za-z0-9_-]")]
    BadKid(usize),
    #[error("signing keys: kid `{0}` appears twice")]
    DuplicateKid(String),
    #[error("signing keys: key `{0}` is not valid base64")]
    BadBase64(String),
    #[error("signing keys: key `{0}` is {1} bytes; at least {MIN_KEY_LEN} are required")]
    TooShort(String, usize),
    #[error("signing keys: none given")]
    Empty,
}

/// The cookie's HMAC-SHA256 key. Where the CPU has SHA instructions, the sha2 crate's keyed
/// state is cloned per cookie: the message's blocks and one more, without the setup of ring's
/// `hmac::Context`, which costs as much again (221 against 143 ns, `cookie/write` bench).
/// Without them ring's assembly is the faster one by far, so it keeps the job. The same bytes
/// either way (tested below), so cookies issued by either still verify.
enum CookieKey {
    Sha2(::hmac::Hmac<sha2::Sha256>),
    Ring(hmac::Key),
}

impl CookieKey {
    fn new(key: &[u8]) -> CookieKey {
        if sha_instructions() {
            CookieKey::sha2(key)
        } else {
            CookieKey::Ring(hmac::Key::new(hmac::HMAC_SHA256, key))
        }
    }

    fn sha2(key: &[u8]) -> CookieKey {
        CookieKey::Sha2(::hmac::Mac::new_from_slice(key).expect("HMAC takes any key length"))
    }

    /// The first 16 bytes of the MAC of the parts, in order.
    fn mac(&self, msg: &[&[u8]]) -> [u8; 16] {
        let mut out = [0u8; 16];
        match self {
            CookieKey::Sha2(key) => {
                use ::hmac::Mac;
                let mut mac = key.clone();
                for part in msg {
                    mac.update(part);
                }
                out.copy_from_slice(&mac.finalize().into_bytes()[..16]);
            }
            CookieKey::Ring(key) => {
                let mut ctx = hmac::Context::with_key(key);
                for part in msg {
                    ctx.update(part);
                }
                out.copy_from_slice(&ctx.sign().as_ref()[..16]);
            }
        }
        out
    }
}

/// SHA-256 instructions, as the sha2 crate detects them for its own use.
fn sha_instructions() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("sha")
        && std::arch::is_x86_feature_detected!("sse4.1")
        && std::arch::is_x86_feature_detected!("ssse3");
    #[cfg(target_arch = "aarch64")]
    return std::arch::is_aarch64_feature_detected!("sha2");
    #[allow(unreachable_code)]
    false
}

struct SigningKey {
    kid: Box<str>,
    link: hmac::Key,
    /// Derived from the link key so one secret per kid covers links and cookies.
    cookie: CookieKey,
}

/// The keys that sign and verify links and attribution cookies.
pub struct KeyRing {
    keys: Vec<SigningKey>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = self.keys.iter().map(|k| &*k.kid).collect();
        f.debug_struct("KeyRing").field("kids", &kids).finish()
    }
}

fn decode_key(text: &str) -> Option<Vec<u8>> {
    [&URL_SAFE_NO_PAD, &URL_SAFE, &STANDARD, &STANDARD_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
}

impl KeyRing {
    /// Parses `kid:base64key[,kid:base64key…]`; the first key signs, all verify.
    pub fn parse(spec: &str) -> Result<KeyRing, KeyError> {
        let mut keys: Vec<SigningKey> = Vec::new();
        for (i, entry) in spec.split(',').map(str::trim).filter(|e| !e.is_empty()).enumerate() {
            let (kid, b64) = entry.split_once(':').ok_or(KeyError::Shape(i + 1))?;
            let kid_ok = (1..=16).contains(&kid.len())
                && kid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !kid_ok {
                return Err(KeyError::BadKid(i + 1));
            }
            if keys.iter().any(|k| &*k.kid == kid) {
                return Err(KeyError::DuplicateKid(kid.to_string()));
            }
            let secret = decode_key(b64).ok_or_else(|| KeyError::BadBase64(kid.to_string()))?;
            if secret.len() < MIN_KEY_LEN {
                return Err(KeyError::TooShort(kid.to_string(), secret.len()));
            }
            keys.push(SigningKey::new(kid, &secret));
        }
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(KeyRing { keys })
    }

    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| &*k.kid)
    }

    /// The public signature of a link id under the signing (first) key.
    pub fn sign(&self, id: &str) -> String {
        String::from_utf8(self.link_sig(id).to_vec()).expect("base64 is ASCII")
    }

    /// [`KeyRing::sign`] as the bytes a URL carries, for a link to keep beside its id.
    pub fn link_sig(&self, id: &str) -> [u8; SIG_CHARS] {
        let tag = hmac::sign(&self.keys[0].link, id.as_bytes());
        let mut out = [0u8; SIG_CHARS];
        let n = URL_SAFE_NO_PAD.encode_slice(&tag.as_ref()[..TAG_LEN], &mut out);
        debug_assert_eq!(n, Ok(SIG_CHARS));
        out
    }

    /// True when `sig` (raw path bytes) is the signature of `id` under any key of the ring.
    pub fn verify(&self, id: &[u8], sig: &[u8]) -> bool {
        let mut given = [0u8; TAG_LEN];
        if sig.len() != SIG_CHARS {
            return false;
        }
        // Exactly 16 chars decode to 12 bytes; non-canonical trailing bits are rejected by
        // the engine, so one tag has exactly one accepted spelling.
        match URL_SAFE_NO_PAD.decode_slice(sig, &mut given) {
            Ok(TAG_LEN) => {}
            _ => return false,
        }
        let mut ok = subtle::Choice::from(0);
        for key in &self.keys {
            let tag = hmac::sign(&key.link, id);
            ok |= tag.as_ref()[..TAG_LEN].ct_eq(&given);
        }
        ok.into()
    }

    /// True when `sig` is `expected` (a [`KeyRing::link_sig`]), compared in constant time.
    /// The same spelling as [`KeyRing::verify`] accepts under the signing key, without an HMAC.
    pub fn is_link_sig(expected: &[u8; SIG_CHARS], sig: &[u8]) -> bool {
        expected[..].ct_eq(sig).into()
    }

    /// MAC for an attribution cookie under the signing key.
    pub(crate) fn cookie_tag(&self, msg: &[&[u8]]) -> [u8; 16] {
        self.keys[0].cookie.mac(msg)
    }

    /// Checks a cookie MAC against every key (constant-time per key).
    pub(crate) fn cookie_verify(&self, msg: &[&[u8]], tag: &[u8]) -> bool {
        let mut ok = subtle::Choice::from(0);
        for key in &self.keys {
            ok |= key.cookie.mac(msg).ct_eq(tag);
        }
        ok.into()
    }
}

/// The demo key ring, for tests that need links signed by something.
#[cfg(test)]
pub(crate) fn demo() -> KeyRing {
    KeyRing::parse(crate::config::DEMO_SIGNING_KEYS).expect("demo keys parse")
}

impl SigningKey {
    fn new(kid: &str, secret: &[u8]) -> SigningKey {
        let link = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let derived = hmac::sign(&link, b"cartlink/cookie/v1");
        let cookie = CookieKey::new(derived.as_ref());
        SigningKey {
            kid: kid.into(),
            link,
            cookie,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
    const K2: &str = "k2:HxwdHhsaGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQA";

    #[test]
    fn sign_then_verify_and_rotation() {
        let old = KeyRing::parse(K1).unwrap();
        let rotated = KeyRing::parse(&format!("{K2},{K1}")).unwrap();
        let sig_old = old.sign("jane-serum");
        assert_eq!(sig_old.len(), SIG_CHARS);
        assert!(old.verify(b"jane-serum", sig_old.as_bytes()));
        assert!(
            rotated.verify(b"jane-serum", sig_old.as_bytes()),
            "old links keep working"
        );
        let sig_new = rotated.sign("jane-serum");
        assert_ne!(sig_new, sig_old);
        assert!(!old.verify(b"jane-serum", sig_new.as_bytes()));
        assert!(!old.verify(b"jane-seruM", sig_old.as_bytes()));
        assert!(!old.verify(b"jane-serum", &sig_old.as_bytes()[..15]));
        assert!(!old.verify(b"jane-serum", b""));
    }

    #[test]
    fn a_kept_signature_accepts_what_verify_accepts_under_the_signing_key() {
        let ring = KeyRing::parse(&format!("{K2},{K1}")).unwrap();
        let kept = ring.link_sig("jane-serum");
        assert_eq!(&kept[..], ring.sign("jane-serum").as_bytes());
        assert!(KeyRing::is_link_sig(&kept, &kept));
        let mut other = kept;
        for i in 0..SIG_CHARS {
            other[i] = if kept[i] == b'A' { b'B' } else { b'A' };
            assert!(!KeyRing::is_link_sig(&kept, &other), "byte {i}");
            other[i] = kept[i];
        }
        assert!(!KeyRing::is_link_sig(&kept, &kept[..15]));
        assert!(!KeyRing::is_link_sig(&kept, b""));
        // An older key's signature is not the kept one; verify still takes it.
        let old = KeyRing::parse(K1).unwrap().sign("jane-serum");
        assert!(!KeyRing::is_link_sig(&kept, old.as_bytes()));
        assert!(ring.verify(b"jane-serum", old.as_bytes()));
    }

    /// Cookies issued by builds that used ring's HMAC must keep verifying: the same tag from
    /// both ways of computing it, for every message length a cookie can have (and past it),
    /// split anywhere.
    #[test]
    fn cookie_mac_is_ring_hmac_under_the_derived_key() {
        let mut keys = KeyRing::parse(K1).unwrap();
        let secret = decode_key(K1.split_once(':').unwrap().1).unwrap();
        let derived = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &secret), b"cartlink/cookie/v1");
        let ring_key = hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref());
        let msg: Vec<u8> = (0..400u32).map(|i| (i * 31 + 7) as u8).collect();
        for (way, key) in [
            ("sha2", CookieKey::sha2(derived.as_ref())),
            (
                "ring",
                CookieKey::Ring(hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref())),
            ),
        ] {
            keys.keys[0].cookie = key;
            for len in 0..msg.len() {
                let m = &msg[..len];
                let tag = hmac::sign(&ring_key, m);
                let want = &tag.as_ref()[..16];
                assert_eq!(keys.cookie_tag(&[m]), want, "{way}: length {len}");
                let (a, b) = m.split_at(len / 3);
                assert_eq!(keys.cookie_tag(&[a, b]), want, "{way}: length {len}, split");
                assert!(keys.cookie_verify(&[a, b], want), "{way}");
            }
            let other = hmac::sign(&ring_key, b"y");
            assert!(!keys.cookie_verify(&[b"x"], &other.as_ref()[..16]), "{way}");
        }
    }

    #[test]
    fn key_list_errors_name_the_problem() {
        assert_eq!(KeyRing::parse("").unwrap_err(), KeyError::Empty);
        assert_eq!(KeyRing::parse("nocolon").unwrap_err(), KeyError::Shape(1));
        assert!(matches!(
            KeyRing::parse("k:AAAA").unwrap_err(),
            KeyError::TooShort(_, 3)
        ));
        assert!(matches!(
            KeyRing::parse(&format!("{K1},{K1}")).unwrap_err(),
            KeyError::DuplicateKid(_)
        ));
        assert!(matches!(
            KeyRing::parse("bad kid:AAAA").unwrap_err(),
            KeyError::BadKid(_)
        ));
        assert!(!format!("{:?}", KeyRing::parse(K1).unwrap()).contains("AAEC"));
    }
}
