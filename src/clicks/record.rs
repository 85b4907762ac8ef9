//! The click record, schema version 1 (see the spec): one JSON object per line.

use crate::links::{Link, TargetType};
use serde::Serialize;
use std::net::IpAddr;
use time::macros::format_description;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    Ios,
    Android,
    Desktop,
    Other,
}

/// Which of the link's destinations answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    Target,
    Geo,
    Device,
    Variant(u8),
    /// Paused, expired or capped: the link's fallback (or the brand's).
    Fallback,
}

/// One click, as the redirect path saw it, borrowed from the request and the link: it is
/// packed where it is made, while those are still in the CPU's cache (see [`super::Recorder`]).
#[derive(Debug)]
pub struct Click<'a> {
    pub click_id: uuid::Uuid,
    pub ts_ms: u64,
    pub link: &'a Link,
    pub sub: Option<&'a str>,
    pub country: Option<[u8; 2]>,
    pub device: Device,
    pub bot: bool,
    /// First time this human was seen on this link in the filter's window; bots are never unique.
    pub unique: bool,
    /// The social app's in-app browser, when recognised.
    pub app: Option<&'static str>,
    pub referer_host: Option<&'a str>,
    /// Already anonymised: IPv4 /24, IPv6 /48.
    pub ip: IpAddr,
    pub served: Served,
    /// Cart items dropped or swapped for stock.
    pub oos: &'a [u64],
    pub target_type: TargetType,
    pub status: u16,
    /// Under `first_click`, the earlier click this visit stays attributed to.
    pub attributed_to: Option<uuid::Uuid>,
}

/// RFC 3339 with milliseconds; the part up to the second is formatted once per second per
/// thread, so encoding a batch does not run the date formatter for every record.
struct Timestamp([u8; 24]);

impl Timestamp {
    fn cached(ts_ms: u64) -> Timestamp {
        thread_local! {
            static LAST: std::cell::Cell<(u64, [u8; 20])> = const { std::cell::Cell::new((u64::MAX, [0; 20])) };
        }
        let secs = ts_ms / 1000;
        let (cached_secs, mut prefix) = LAST.get();
        if cached_secs != secs {
            let full = rfc3339_ms(ts_ms);
            prefix.copy_from_slice(&full.as_bytes()[..20]);
            LAST.set((secs, prefix));
        }
        let mut out = [0u8; 24];
        out[..20].copy_from_slice(&prefix);
        let ms = (ts_ms % 1000) as u32;
        out[20] = b'0' + (ms / 100) as u8;
        out[21] = b'0' + (ms / 10 % 10) as u8;
        out[22] = b'0' + (ms % 10) as u8;
        out[23] = b'Z';
        Timestamp(out)
    }
}

/// `2026-11-27T03:35:32.123Z`
pub fn rfc3339_ms(ts_ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ts_ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    ))
    .unwrap_or_default()
}

impl Device {
    pub fn as_str(self) -> &'static str {
        match self {
            Device::Ios => "ios",
            Device::Android => "android",
            Device::Desktop => "desktop",
            Device::Other => "other",
        }
    }
}

impl Click<'_> {
    /// Appends the click in its packed form, which [`render`] turns into the record: its
    /// fixed-size fields as bytes, then its strings with their lengths, about 110 bytes where
    /// the record is 420. The redirect path packs, and the pipeline thread renders, so the
    /// JSON is written off the request's path.
    pub fn pack(&self, out: &mut Vec<u8>) {
        let (family, ip) = match self.ip {
            IpAddr::V4(v4) => (0, v4.to_ipv6_mapped().octets()),
            IpAddr::V6(v6) => (FLAG_V6, v6.octets()),
        };
        let flags = [
            (self.bot, FLAG_BOT),
            (self.unique, FLAG_UNIQUE),
            (self.country.is_some(), FLAG_COUNTRY),
            (self.attributed_to.is_some(), FLAG_ATTRIBUTED),
        ]
        .into_iter()
        .fold(family, |flags, (on, bit)| if on { flags | bit } else { flags });
        let (served, variant) = match self.served {
            Served::Target => (0, 0),
            Served::Geo => (1, 0),
            Served::Device => (2, 0),
            Served::Fallback => (3, 0),
            Served::Variant(i) => (4, i),
        };
        let mut head = [0u8; HEAD];
        head[0] = PACKED;
        head[1..17].copy_from_slice(self.click_id.as_bytes());
        head[17..25].copy_from_slice(&self.ts_ms.to_le_bytes());
        head[25..41].copy_from_slice(self.attributed_to.unwrap_or_default().as_bytes());
        head[41] = flags;
        head[42..44].copy_from_slice(&self.country.unwrap_or_default());
        head[44] = match self.device {
            Device::Ios => 0,
            Device::Android => 1,
            Device::Desktop => 2,
            Device::Other => 3,
        };
        head[45] = match self.target_type {
            TargetType::Url => 0,
            TargetType::ShopifyCart => 1,
            TargetType::WoocommerceCart => 2,
            TargetType::BigcommerceCart => 3,
        };
        head[46] = served;
        head[47] = variant;
        head[48..50].copy_from_slice(&self.status.to_le_bytes());
        head[50..66].copy_from_slice(&ip);
        head[66..70].copy_from_slice(&(self.oos.len() as u32).to_le_bytes());
        out.extend_from_slice(&head);
        for item in self.oos {
            out.extend_from_slice(&item.to_le_bytes());
        }
        for s in [
            Some(&*self.link.id),
            Some(&*self.link.creator),
            Some(&*self.link.campaign),
            self.sub,
            self.app,
            self.referer_host,
        ] {
            match s {
                Some(s) => {
                    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                    out.extend_from_slice(s.as_bytes());
                }
                None => out.extend_from_slice(&NONE.to_le_bytes()),
            }
        }
    }
}

/// The first byte of a packed click. Every other record in the stream is a JSON object, which
/// starts with `{`.
pub const PACKED: u8 = 0x01;
/// The fixed-size part of a packed click.
const HEAD: usize = 70;
const NONE: u32 = u32::MAX;
const FLAG_BOT: u8 = 1;
const FLAG_UNIQUE: u8 = 2;
const FLAG_COUNTRY: u8 = 4;
const FLAG_ATTRIBUTED: u8 = 8;
const FLAG_V6: u8 = 16;

/// Appends the record for `record` to `out`: a packed click ([`Click::pack`]) as its JSON
/// record and a newline, anything else (a JSON record) as it is. `false`, with nothing
/// appended, if a packed click is cut short, which only a bug could cause.
///
/// Written by hand rather than through serde: the keys are literals and the link's strings
/// almost never need escaping. `tests::rendering_matches_serde_json` holds it to serde_json's
/// output.
pub fn render(record: &[u8], edge: &str, out: &mut Vec<u8>) -> bool {
    if record.first() != Some(&PACKED) {
        out.extend_from_slice(record);
        return true;
    }
    match Fields::unpack(record) {
        Some(f) => {
            f.write_json(edge, out);
            true
        }
        None => false,
    }
}

/// What a packed click says.
struct Fields<'a> {
    click_id: uuid::Uuid,
    ts_ms: u64,
    link_id: &'a [u8],
    creator: &'a [u8],
    campaign: &'a [u8],
    sub: Option<&'a [u8]>,
    country: Option<[u8; 2]>,
    device: Device,
    bot: bool,
    unique: bool,
    app: Option<&'a [u8]>,
    referer_host: Option<&'a [u8]>,
    ip: IpAddr,
    served: Served,
    /// Cart items dropped or swapped for stock, 8 bytes each (little-endian).
    oos: &'a [u8],
    target_type: TargetType,
    status: u16,
    attributed_to: Option<uuid::Uuid>,
}

impl<'a> Fields<'a> {
    fn unpack(b: &'a [u8]) -> Option<Fields<'a>> {
        let head: &[u8; HEAD] = b.get(..HEAD)?.try_into().ok()?;
        let flags = head[41];
        let uuid_at = |i: usize| uuid::Uuid::from_bytes(head[i..i + 16].try_into().unwrap_or_default());
        let ip: [u8; 16] = head[50..66].try_into().ok()?;
        let ip = std::net::Ipv6Addr::from(ip);
        let ip = if flags & FLAG_V6 != 0 {
            IpAddr::V6(ip)
        } else {
            IpAddr::V4(ip.to_ipv4_mapped()?)
        };
        let oos_len = u32::from_le_bytes(head[66..70].try_into().ok()?) as usize;
        let oos_end = HEAD.checked_add(oos_len.checked_mul(8)?)?;
        let oos = b.get(HEAD..oos_end)?;
        let mut rest = &b[oos_end..];
        let mut strings = [None; 6];
        for s in &mut strings {
            let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?);
            rest = &rest[4..];
            if len != NONE {
                let (text, tail) = rest.split_at_checked(len as usize)?;
                *s = Some(text);
                rest = tail;
            }
        }
        let [Some(link_id), Some(creator), Some(campaign), sub, app, referer_host] = strings else {
            return None;
        };
        Some(Fields {
            click_id: uuid_at(1),
            ts_ms: u64::from_le_bytes(head[17..25].try_into().ok()?),
            link_id,
            creator,
            campaign,
            sub,
            country: (flags & FLAG_COUNTRY != 0).then(|| [head[42], head[43]]),
            device: match head[44] {
                0 => Device::Ios,
                1 => Device::Android,
                2 => Device::Desktop,
                3 => Device::Other,
                _ => return None,
            },
            bot: flags & FLAG_BOT != 0,
            unique: flags & FLAG_UNIQUE != 0,
            app,
            referer_host,
            ip,
            served: match head[46] {
                0 => Served::Target,
                1 => Served::Geo,
                2 => Served::Device,
                3 => Served::Fallback,
                4 => Served::Variant(head[47]),
                _ => return None,
            },
            oos,
            target_type: match head[45] {
                0 => TargetType::Url,
                1 => TargetType::ShopifyCart,
                2 => TargetType::WoocommerceCart,
                3 => TargetType::BigcommerceCart,
                _ => return None,
            },
            status: u16::from_le_bytes([head[48], head[49]]),
            attributed_to: (flags & FLAG_ATTRIBUTED != 0).then(|| uuid_at(25)),
        })
    }

    fn write_json(&self, edge: &str, out: &mut Vec<u8>) {
        let mut idbuf = uuid::Uuid::encode_buffer();
        out.extend_from_slice(b"{\"v\":1,\"type\":\"click\",\"click_id\":\"");
        out.extend_from_slice(self.click_id.hyphenated().encode_lower(&mut idbuf).as_bytes());
        out.extend_from_slice(b"\",\"ts\":\"");
        out.extend_from_slice(&Timestamp::cached(self.ts_ms).0);
        out.extend_from_slice(b"\",\"link_id\":");
        json_str(out, self.link_id);
        out.extend_from_slice(b",\"creator\":");
        json_str(out, self.creator);
        out.extend_from_slice(b",\"campaign\":");
        json_str(out, self.campaign);
        out.extend_from_slice(b",\"sub\":");
        json_opt(out, self.sub);
        out.extend_from_slice(b",\"country\":");
        json_opt(out, self.country.as_ref().map(<[u8; 2]>::as_slice));
        out.extend_from_slice(b",\"device\":\"");
        out.extend_from_slice(self.device.as_str().as_bytes());
        out.extend_from_slice(b"\",\"bot\":");
        out.extend_from_slice(if self.bot { b"true" } else { b"false" });
        out.extend_from_slice(b",\"unique\":");
        out.extend_from_slice(if self.unique { b"true" } else { b"false" });
        out.extend_from_slice(b",\"app\":");
        json_opt(out, self.app);
        out.extend_from_slice(b",\"referer_host\":");
        json_opt(out, self.referer_host);
        out.extend_from_slice(b",\"ip\":\"");
        push_ip(out, self.ip);
        out.extend_from_slice(b"\",\"target_type\":\"");
        out.extend_from_slice(self.target_type.as_str().as_bytes());
        out.extend_from_slice(b"\",\"served\":\"");
        out.extend_from_slice(match self.served {
            Served::Target => b"target\",\"variant\":null".as_slice(),
            Served::Geo => b"geo\",\"variant\":null",
            Served::Device => b"device\",\"variant\":null",
            Served::Fallback => b"fallback\",\"variant\":null",
            Served::Variant(_) => b"variant\",\"variant\":",
        });
        if let Served::Variant(i) = self.served {
            out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes());
        }
        out.extend_from_slice(b",\"oos\":[");
        let mut num = itoa::Buffer::new();
        for (i, v) in self.oos.chunks_exact(8).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(
                num.format(u64::from_le_bytes(v.try_into().unwrap_or_default()))
                    .as_bytes(),
            );
        }
        out.extend_from_slice(b"],\"status\":");
        out.extend_from_slice(num.format(self.status).as_bytes());
        out.extend_from_slice(b",\"attributed_to\":");
        match self.attributed_to {
            Some(u) => {
                out.push(b'"');
                out.extend_from_slice(u.hyphenated().encode_lower(&mut idbuf).as_bytes());
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"edge\":");
        json_str(out, edge.as_bytes());
        out.extend_from_slice(b"}\n");
    }
}

/// A JSON string from UTF-8 bytes; the common case (nothing to escape) is a copy. The bytes are
/// a `str`'s, packed as they were: only the rare string that needs escaping is checked again.
fn json_str(out: &mut Vec<u8>, s: &[u8]) {
    // What JSON must escape (control characters, `"` and `\`), checked by a fold without
    // early exit, unlike `any`, so that it vectorizes.
    let escape = s
        .iter()
        .fold(false, |esc, &b| esc | (b < 0x20) | (b == b'"') | (b == b'\\'));
    if !escape {
        out.push(b'"');
        out.extend_from_slice(s);
        out.push(b'"');
    } else {
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, &String::from_utf8_lossy(s));
    }
}

fn json_opt(out: &mut Vec<u8>, s: Option<&[u8]>) {
    match s {
        Some(s) => json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let mut num = itoa::Buffer::new();
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(num.format(o).as_bytes());
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    /// The record as serde_json renders it, field by field from the spec: the oracle.
    fn oracle(c: &Click, edge: &str) -> Value {
        let (served, variant) = match c.served {
            Served::Target => ("target", None),
            Served::Geo => ("geo", None),
            Served::Device => ("device", None),
            Served::Fallback => ("fallback", None),
            Served::Variant(i) => ("variant", Some(i)),
        };
        json!({
            "v": 1, "type": "click", "click_id": c.click_id.to_string(), "ts": rfc3339_ms(c.ts_ms),
            "link_id": &*c.link.id, "creator": &*c.link.creator, "campaign": &*c.link.campaign,
            "sub": c.sub, "country": c.country.map(|cc| String::from_utf8_lossy(&cc).into_owned()),
            "device": c.device, "bot": c.bot, "unique": c.unique, "app": c.app,
            "referer_host": c.referer_host, "ip": c.ip.to_string(),
            "target_type": c.target_type.as_str(), "served": served, "variant": variant,
            "oos": c.oos, "status": c.status,
            "attributed_to": c.attributed_to.map(|u| u.to_string()), "edge": edge,
        })
    }

    fn link(creator: &str, campaign: &str) -> std::sync::Arc<Link> {
        let line = json!({"id": "ab-1", "creator": creator, "campaign": campaign,
            "target": {"type": "url", "url": "https://a.example/"}});
        let table = crate::links::parse(&line.to_string(), "t", &crate::links::signature::demo()).unwrap();
        table.get(b"ab-1").unwrap().clone()
    }

    #[test]
    fn other_records_render_as_they_are() {
        let conversion = b"{\"v\":1,\"type\":\"conversion\",\"conversion_id\":\"shopify:42\"}\n";
        let mut out = b"before\n".to_vec();
        assert!(render(conversion, "edge", &mut out));
        assert_eq!(out, [b"before\n".as_slice(), conversion].concat());
    }

    proptest! {
        #[test]
        fn rendering_matches_serde_json(
            creator in "\\PC{1,12}|[a-z\"\\\\é]{1,8}",
            campaign in "\\PC{1,12}",
            sub in proptest::option::of("[a-z0-9._~:-]{1,20}"),
            referer in proptest::option::of("\\PC{1,20}|[a-z\"\\\\\u{0}-\u{1f}\u{7f}]{1,8}"),
            edge in "\\PC{0,8}",
            ts_ms in 0u64..4_102_444_800_000,
            ip in any::<u32>(),
            v6 in any::<u128>(),
            use_v6 in any::<bool>(),
            served in 0u8..6,
            oos in proptest::collection::vec(any::<u64>(), 0..3),
            flags in any::<(bool, bool, bool, bool)>(),
            id in any::<u128>(),
        ) {
            let link = link(&creator, &campaign);
            let c = Click {
                click_id: uuid::Uuid::from_u128(id),
                ts_ms,
                link: &link,
                sub: sub.as_deref(),
                country: flags.0.then_some(*b"DE"),
                device: [Device::Ios, Device::Android, Device::Desktop, Device::Other][(id % 4) as usize],
                bot: flags.1,
                unique: flags.2,
                app: flags.3.then_some("instagram"),
                referer_host: referer.as_deref(),
                ip: if use_v6 { IpAddr::from(v6.to_be_bytes()) } else { IpAddr::from(ip.to_be_bytes()) },
                served: match served {
                    0 => Served::Target,
                    1 => Served::Geo,
                    2 => Served::Device,
                    3 => Served::Fallback,
                    n => Served::Variant(n * 40),
                },
                oos: &oos,
                target_type: [
                    TargetType::Url,
                    TargetType::ShopifyCart,
                    TargetType::WoocommerceCart,
                    TargetType::BigcommerceCart,
                ][(id >> 8) as usize % 4],
                status: if flags.3 { 302 } else { 303 },
                attributed_to: flags.1.then(|| uuid::Uuid::from_u128(id ^ 1)),
            };
            // Packed on the redirect path, rendered on the pipeline thread.
            let mut packed = Vec::new();
            c.pack(&mut packed);
            let mut out = Vec::new();
            prop_assert!(render(&packed, &edge, &mut out));
            // Cut short anywhere, a packed click renders nothing rather than half a record.
            for cut in [1, HEAD - 1, HEAD, HEAD + 3, packed.len() - 1] {
                let mut half = Vec::new();
                prop_assert!(!render(&packed[..cut], &edge, &mut half));
                prop_assert!(half.is_empty());
            }
            prop_assert_eq!(out.pop(), Some(b'\n'));
            prop_assert!(!out.contains(&b'\n'));
            let got: Value = serde_json::from_slice(&out).unwrap();
            prop_assert_eq!(got, oracle(&c, &edge));
        }
    }
}
