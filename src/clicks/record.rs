//! The click record, schema version 1 (see the spec): one JSON object per line.

use crate::links::{Link, TargetType};
use serde::Serialize;
use std::net::IpAddr;
use std::sync::Arc;
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

/// One click, as the redirect path saw it. Strings of the link are shared, not copied.
#[derive(Debug)]
pub struct Click {
    pub click_id: uuid::Uuid,
    pub ts_ms: u64,
    pub link: Arc<Link>,
    pub sub: Option<Box<str>>,
    pub country: Option<[u8; 2]>,
    pub device: Device,
    pub bot: bool,
    /// First time this human was seen on this link in the filter's window; bots are never unique.
    pub unique: bool,
    /// The social app's in-app browser, when recognised.
    pub app: Option<&'static str>,
    pub referer_host: Option<Box<str>>,
    /// Already anonymised: IPv4 /24, IPv6 /48.
    pub ip: IpAddr,
    pub served: Served,
    /// Cart items dropped or swapped for stock.
    pub oos: Box<[u64]>,
    pub target_type: TargetType,
    pub status: u16,
    /// Under `first_click`, the earlier click this visit stays attributed to.
    pub attributed_to: Option<uuid::Uuid>,
}

#[derive(Serialize)]
struct Wire<'a> {
    v: u8,
    #[serde(rename = "type")]
    kind: &'static str,
    click_id: uuid::fmt::Hyphenated,
    ts: &'a str,
    link_id: &'a str,
    creator: &'a str,
    campaign: &'a str,
    sub: Option<&'a str>,
    country: Option<&'a str>,
    device: Device,
    bot: bool,
    unique: bool,
    app: Option<&'static str>,
    referer_host: Option<&'a str>,
    #[serde(serialize_with = "display")]
    ip: IpAddr,
    target_type: &'static str,
    served: &'static str,
    variant: Option<u8>,
    oos: &'a [u64],
    status: u16,
    attributed_to: Option<uuid::fmt::Hyphenated>,
    edge: &'a str,
}

/// Writes a value through `Display` without an intermediate `String`.
fn display<S: serde::Serializer, T: std::fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
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

    fn as_str(&self) -> &str {
        // Built from ASCII digits and the formatter's ASCII output.
        std::str::from_utf8(&self.0).unwrap_or("")
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

impl Click {
    /// Appends the record and a newline to `out`.
    pub fn encode(&self, edge: &str, out: &mut Vec<u8>) {
        let ts = Timestamp::cached(self.ts_ms);
        let ts = ts.as_str();
        let country = self.country.as_ref().and_then(|c| std::str::from_utf8(c).ok());
        let wire = Wire {
            v: 1,
            kind: "click",
            click_id: self.click_id.hyphenated(),
            ts,
            link_id: &self.link.id,
            creator: &self.link.creator,
            campaign: &self.link.campaign,
            sub: self.sub.as_deref(),
            country,
            device: self.device,
            bot: self.bot,
            unique: self.unique,
            app: self.app,
            referer_host: self.referer_host.as_deref(),
            ip: self.ip,
            target_type: self.target_type.as_str(),
            served: match self.served {
                Served::Target => "target",
                Served::Geo => "geo",
                Served::Device => "device",
                Served::Variant(_) => "variant",
                Served::Fallback => "fallback",
            },
            variant: match self.served {
                Served::Variant(i) => Some(i),
                _ => None,
            },
            oos: &self.oos,
            status: self.status,
            attributed_to: self.attributed_to.map(|u| u.hyphenated()),
            edge,
        };
        debug_assert_eq!(ts, rfc3339_ms(self.ts_ms));
        // Writing into a Vec cannot fail, and every field serializes.
        serde_json::to_writer(&mut *out, &wire).expect("click record serializes");
        out.push(b'\n');
    }
}
