//! The attribution cookie: `NAME=base64url(payload ‖ mac)`.
//!
//! payload = `1` (version) ‖ click ID (16 bytes) ‖ issued-at (u64 BE, Unix seconds) ‖
//! link id length (u8) ‖ link id ‖ creator length (u8) ‖ creator.
//! mac = HMAC-SHA256(cookie key, NAME ‖ 0x00 ‖ payload), first 16 bytes; the cookie key is
//! derived from the signing key, and every key of the ring verifies (rotation).
//! Anything that does not verify — tampered, expired, oversized, or the name twice — is
//! treated as absent, never as an error.

use crate::links::signature::KeyRing;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::HeaderMap;

const VERSION: u8 = 1;
const MAC_LEN: usize = 16;
/// Longest cookie value read: two 255-byte labels plus the fixed part, base64-encoded.
const MAX_VALUE: usize = 800;

/// What a valid cookie says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribution {
    pub click_id: uuid::Uuid,
    pub issued_s: u64,
    pub link_id: String,
    pub creator: String,
}

/// Longest payload written: the fixed part, then a link id and a creator at their load-time
/// limits, then the MAC.
const MAX_PAYLOAD: usize = FIXED + 1 + MAX_LINK_ID + 1 + MAX_CREATOR + MAC_LEN;
/// The load-time limits of a link id and a creator.
const MAX_LINK_ID: usize = 64;
const MAX_CREATOR: usize = 128;
/// Version, click ID, issued-at.
const FIXED: usize = 1 + 16 + 8;
/// Cookie names are at most 64 bytes (validated with the config).
const MAX_NAME: usize = 64;

/// The length of what [`write`] appends.
pub fn len(name: &str, link_id: &str, creator: &str) -> usize {
    let payload = FIXED + 1 + link_id.len().min(MAX_LINK_ID) + 1 + creator.len().min(MAX_CREATOR) + MAC_LEN;
    name.len().min(MAX_NAME) + 1 + (payload * 4).div_ceil(3)
}

/// Appends `NAME=VALUE` (without attributes) to `out`.
///
/// The MAC input (`NAME ‖ 0x00 ‖ payload`) is laid out in one buffer, so it is hashed in one
/// pass; the fixed-size fields are copied at fixed offsets.
pub fn write(
    keys: &KeyRing,
    name: &str,
    click_id: &uuid::Uuid,
    issued_s: u64,
    link_id: &str,
    creator: &str,
    out: &mut String,
) {
    let mut buf = [0u8; MAX_NAME + 1 + MAX_PAYLOAD];
    let name = name.get(..name.len().min(MAX_NAME)).unwrap_or_default();
    let p = name.len() + 1;
    buf[..name.len()].copy_from_slice(name.as_bytes());
    buf[p] = VERSION;
    buf[p + 1..p + 17].copy_from_slice(click_id.as_bytes());
    buf[p + 17..p + FIXED].copy_from_slice(&issued_s.to_be_bytes());
    let mut n = p + FIXED;
    // Ids are ≤ 64 bytes and creators ≤ 128 (validated at load), so the lengths fit in a u8.
    for (label, max) in [(link_id.as_bytes(), MAX_LINK_ID), (creator.as_bytes(), MAX_CREATOR)] {
        let label = &label[..label.len().min(max)];
        buf[n] = label.len() as u8;
        buf[n + 1..n + 1 + label.len()].copy_from_slice(label);
        n += 1 + label.len();
    }
    let mac = keys.cookie_tag(&[&buf[..n]]);
    buf[n..n + MAC_LEN].copy_from_slice(&mac);
    n += MAC_LEN;
    out.push_str(name);
    out.push('=');
    // Encoded in place, not through a zeroed buffer and a UTF-8 check (a tenth of the time).
    // SAFETY: the bytes added are zeros, then base64's alphabet over them, and the String ends
    // after the last byte encoded: all ASCII, so it stays UTF-8.
    let bytes = unsafe { out.as_mut_vec() };
    let start = bytes.len();
    bytes.resize(start + base64::encoded_len(n - p, false).unwrap_or(0), 0);
    let len = URL_SAFE_NO_PAD
        .encode_slice(&buf[p..n], &mut bytes[start..])
        .unwrap_or(0);
    bytes.truncate(start + len);
}

/// The single valid, unexpired attribution cookie in the request, if there is exactly one.
pub fn read(keys: &KeyRing, name: &str, headers: &HeaderMap, now_s: u64, window_s: u64) -> Option<Attribution> {
    let mut found: Option<&[u8]> = None;
    for header in headers.get_all(http::header::COOKIE) {
        for pair in header.as_bytes().split(|&b| b == b';') {
            let pair = pair.trim_ascii();
            let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                continue;
            };
            if &pair[..eq] != name.as_bytes() {
                continue;
            }
            if found.is_some() {
                return None; // the same name twice: ambiguous, so neither counts
            }
            found = Some(&pair[eq + 1..]);
        }
    }
    let value = found?;
    if value.len() > MAX_VALUE {
        return None;
    }
    let raw = URL_SAFE_NO_PAD.decode(value).ok()?;
    if raw.len() < 1 + 16 + 8 + 2 + MAC_LEN {
        return None;
    }
    let (payload, mac) = raw.split_at(raw.len() - MAC_LEN);
    if !keys.cookie_verify(&[name.as_bytes(), &[0], payload], mac) {
        return None;
    }
    if payload[0] != VERSION {
        return None;
    }
    let click_id = uuid::Uuid::from_slice(&payload[1..17]).ok()?;
    let issued_s = u64::from_be_bytes(payload[17..25].try_into().ok()?);
    if issued_s > now_s + 300 || now_s.saturating_sub(issued_s) > window_s {
        return None;
    }
    let rest = &payload[25..];
    let (link_len, rest) = rest.split_first()?;
    let (link, rest) = rest.split_at_checked(*link_len as usize)?;
    let (creator_len, rest) = rest.split_first()?;
    if rest.len() != *creator_len as usize {
        return None;
    }
    Some(Attribution {
        click_id,
        issued_s,
        link_id: String::from_utf8(link.to_vec()).ok()?,
        creator: String::from_utf8(rest.to_vec()).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn keys(spec: &str) -> KeyRing {
        KeyRing::parse(spec).unwrap()
    }
    const K1: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
    const K2: &str = "k2:HxwdHhsaGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQA";

    fn headers(cookie: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::COOKIE, HeaderValue::from_str(cookie).unwrap());
        h
    }

    /// The exact bytes, from an independent oracle (Python's hmac and base64 over the layout in
    /// the module doc), so cookies already in browsers keep verifying across refactors.
    #[test]
    fn the_written_value_is_the_documented_layout() {
        let id = uuid::Uuid::from_u128(0x0192_0000_0000_7000_8000_0000_0000_0001);
        let mut c = String::new();
        write(&keys(K1), "cl_att", &id, 1_000_000, "jane-kit", "jane", &mut c);
        assert_eq!(
            c,
            "cl_att=AQGSAAAAAHAAgAAAAAAAAAEAAAAAAA9CQAhqYW5lLWtpdARqYW5lEudjleWii1Tetw2TdIHzwQ"
        );
    }

    #[test]
    fn len_is_what_write_appends() {
        let id = uuid::Uuid::from_u128(7);
        for (name, link, creator) in [
            ("a", "b", "c"),
            ("cl_att", "jane-kit", "jane"),
            ("n", &"x".repeat(64), &"y".repeat(128)),
        ] {
            for extra in 0..3 {
                let (link, creator) = (
                    format!("{link}{}", "l".repeat(extra)),
                    format!("{creator}{}", "c".repeat(extra)),
                );
                let mut c = String::new();
                write(&keys(K1), name, &id, 1, &link, &creator, &mut c);
                assert_eq!(len(name, &link, &creator), c.len(), "{name} {link} {creator}");
            }
        }
    }

    #[test]
    fn round_trip_tamper_expiry_rotation() {
        let k = keys(K1);
        let id = uuid::Uuid::from_u128(0x0192_0000_0000_7000_8000_0000_0000_0001);
        let mut c = String::new();
        write(&k, "cl_att", &id, 1_000_000, "jane-kit", "jane", &mut c);
        let h = headers(&format!("other=1; {c}"));
        let a = read(&k, "cl_att", &h, 1_000_010, 86_400).unwrap();
        assert_eq!(
            (a.click_id, a.link_id.as_str(), a.creator.as_str()),
            (id, "jane-kit", "jane")
        );
        assert!(read(&k, "cl_att", &h, 1_000_000 + 86_401, 86_400).is_none(), "expired");
        assert!(
            read(&keys(&format!("{K2},{K1}")), "cl_att", &h, 1_000_010, 86_400).is_some(),
            "old key still verifies"
        );
        assert!(
            read(&keys(K2), "cl_att", &h, 1_000_010, 86_400).is_none(),
            "unknown key"
        );
        assert!(
            read(
                &k,
                "other_name",
                &headers(&c.replacen("cl_att", "other_name", 1)),
                1_000_010,
                86_400
            )
            .is_none(),
            "name is bound"
        );
        let twice = headers(&format!("{c}; {c}"));
        assert!(
            read(&k, "cl_att", &twice, 1_000_010, 86_400).is_none(),
            "duplicates ignored"
        );
        let value = c.split_once('=').unwrap().1;
        for i in 0..value.len() {
            let mut b = value.as_bytes().to_vec();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let t = format!("cl_att={}", String::from_utf8(b).unwrap());
            assert!(
                read(&k, "cl_att", &headers(&t), 1_000_010, 86_400).is_none(),
                "flip at {i}"
            );
        }
    }
}
