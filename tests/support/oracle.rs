//! Oracles shared by `tests/adversarial.rs` and `tests/properties.rs`: what a redirect answer
//! must look like whatever the visitor sent, written from the contract (spec.md, README), not
//! from the implementation. Included with `#[path]` so `tests/support/mod.rs` stays untouched.
#![allow(dead_code)]

use crate::support::{click_id_of, parse_response, Resp, Server};
use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use url::Url;

/// Extras a visitor may add when the link does not pin them (spec: `fbclid`, `ttclid`,
/// `gclid`, unpinned `utm_*`; README: values ≤ 200 bytes, re-encoded, first one wins).
pub const FORWARDABLE: [&str; 9] = [
    "fbclid",
    "ttclid",
    "gclid",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_content",
    "utm_term",
    "utm_id",
];
pub const MAX_EXTRA: usize = 200;

/// Every query input the public path reads or a destination owns: the injection points.
pub const INPUTS: &[&str] = &[
    "sub",
    "fbclid",
    "ttclid",
    "gclid",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_content",
    "utm_term",
    "utm_id",
    "discount",
    "ref",
    "redirect",
    "cl_click",
    "attributes[cl_click]",
    "attributes%5Bcl_click%5D",
    "attribution/cl_click",
    "attribution/cl_link",
    "attribution%2Fref",
    "attribution/fbclid",
    "discounts/codes/0",
    "coupon",
    "couponcode",
    "storefront",
    "continue_to",
    "return_to",
    "url",
    "next",
    "host",
];

/// How forwarded extras appear in a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtrasMode {
    /// `&key=value` in the destination's own query.
    Query,
    /// Inside Shopify's `/discount/CODE?redirect=…` value: the pair is encoded once more.
    Nested,
    /// UCP `/buy`: `&attribution%2Fkey=value`.
    Attribution,
}

/// One link of a test table and what its answers must satisfy.
#[derive(Debug, Clone, Copy)]
pub struct LinkSpec {
    pub id: &'static str,
    /// The only host a Location may name.
    pub host: &'static str,
    pub status: u16,
    pub mode: ExtrasMode,
    /// Forwardable keys the link owns (pinned UTM).
    pub pinned: &'static [&'static str],
}

impl LinkSpec {
    /// Shopify discount form: a `redirect` param that must stay a same-site relative path.
    pub fn discount_form(&self) -> bool {
        self.mode == ExtrasMode::Nested
    }
}

/// The Location of a plain human request, split around its click ID.
#[derive(Debug, Clone)]
pub struct Baseline {
    pub head: String,
    pub tail: String,
}

impl Baseline {
    pub fn of(link: &LinkSpec, r: &Resp) -> Baseline {
        if let Err(e) = check_location_basics(link, r) {
            panic!("baseline for {}: {e}", link.id);
        }
        let loc = r.location();
        let id = click_id_of(loc).unwrap_or_else(|| panic!("{}: no click id in {loc}", link.id));
        let at = loc.find(&id).unwrap();
        Baseline {
            head: loc[..at].to_string(),
            tail: loc[at + id.len()..].to_string(),
        }
    }
}

/// What the server must forward for this query (raw, as on the wire), in order.
pub fn expected_extras(query: &str, pinned: &[&str]) -> Vec<(String, String)> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let Some(key) = FORWARDABLE.iter().find(|f| **f == k) else {
            continue;
        };
        if pinned.contains(key) || seen.contains(key) || v.is_empty() || v.len() > MAX_EXTRA {
            continue;
        }
        seen.insert(*key);
        out.push((k.into_owned(), v.into_owned()));
    }
    out
}

/// Bytes `form_urlencoded::byte_serialize` may produce (plus the pair separators).
fn serialized_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"*-._%+".contains(&b)
}

fn lower_has_script_scheme(s: &str) -> Option<&'static str> {
    let l = s.to_ascii_lowercase();
    ["javascript:", "data:", "vbscript:", "file:"]
        .into_iter()
        .find(|bad| l.contains(bad))
}

/// Status, one Location, WHATWG parse, https, exact host, no authority tricks, no script scheme.
pub fn check_location_basics(link: &LinkSpec, r: &Resp) -> Result<Url, String> {
    if r.status != link.status {
        return Err(format!("status {} (want {})", r.status, link.status));
    }
    let locs = r.headers_named("location");
    let [loc] = locs.as_slice() else {
        return Err(format!("{} Location headers", locs.len()));
    };
    if !loc.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err(format!("Location has bytes outside visible ASCII: {loc:?}"));
    }
    let url = Url::parse(loc).map_err(|e| format!("Location {loc} does not parse: {e}"))?;
    if url.scheme() != "https" {
        return Err(format!("scheme {} in {loc}", url.scheme()));
    }
    if url.host_str() != Some(link.host) {
        return Err(format!("host {:?} (want {}) in {loc}", url.host_str(), link.host));
    }
    if !url.username().is_empty() || url.password().is_some() || url.port().is_some() {
        return Err(format!("userinfo or port in {loc}"));
    }
    if let Some(bad) = lower_has_script_scheme(loc) {
        return Err(format!("`{bad}` in {loc}"));
    }
    if link.discount_form() {
        let redirects: Vec<String> = url
            .query_pairs()
            .filter(|(k, _)| k == "redirect")
            .map(|(_, v)| v.into_owned())
            .collect();
        let [redirect] = redirects.as_slice() else {
            return Err(format!("{} `redirect` params in {loc}", redirects.len()));
        };
        let b = redirect.as_bytes();
        if b.first() != Some(&b'/') || matches!(b.get(1), Some(b'/' | b'\\')) {
            return Err(format!("redirect {redirect:?} is not a single-slash relative path"));
        }
        if redirect.bytes().any(|c| c.is_ascii_control()) {
            return Err(format!("control byte in redirect {redirect:?}"));
        }
        if let Some(bad) = lower_has_script_scheme(redirect) {
            return Err(format!("`{bad}` in redirect {redirect:?}"));
        }
        let base = Url::parse(&format!("https://{}/", link.host)).unwrap();
        let joined = base
            .join(redirect)
            .map_err(|e| format!("redirect {redirect:?} does not join: {e}"))?;
        if joined.host_str() != Some(link.host) || joined.scheme() != "https" {
            return Err(format!("redirect {redirect:?} leaves the store: {joined}"));
        }
    }
    Ok(url)
}

/// The full check of a human redirect: basics, the link's own URL around the click ID intact,
/// and between them exactly the extras the contract allows, with the visitor's values.
pub fn check_human_redirect(link: &LinkSpec, base: &Baseline, query: Option<&str>, r: &Resp) -> Result<(), String> {
    check_location_basics(link, r)?;
    let loc = r.location();
    let rest = loc
        .strip_prefix(base.head.as_str())
        .ok_or_else(|| format!("Location does not start with the link's own URL {}: {loc}", base.head))?;
    let id = rest.get(..36).ok_or_else(|| format!("short Location {loc}"))?;
    let uuid = uuid::Uuid::parse_str(id).map_err(|e| format!("click id {id:?}: {e}"))?;
    if uuid.get_version_num() != 7 {
        return Err(format!("click id {id} is not UUIDv7"));
    }
    let middle = rest[36..]
        .strip_suffix(base.tail.as_str())
        .ok_or_else(|| format!("Location does not end with the link's tail {:?}: {loc}", base.tail))?;
    let got = decode_extras(link.mode, middle)?;
    let want = expected_extras(query.unwrap_or(""), link.pinned);
    if got != want {
        return Err(format!("extras {got:?}, want {want:?} (query {query:?}) in {loc}"));
    }
    Ok(())
}

fn decode_extras(mode: ExtrasMode, middle: &str) -> Result<Vec<(String, String)>, String> {
    if middle.is_empty() {
        return Ok(Vec::new());
    }
    if !middle.bytes().all(|b| serialized_byte(b) || b == b'&' || b == b'=') {
        return Err(format!("unencoded bytes among the extras {middle:?}"));
    }
    let pairs_text = match mode {
        ExtrasMode::Query | ExtrasMode::Attribution => middle.to_string(),
        ExtrasMode::Nested => {
            if middle.contains(['&', '=']) {
                return Err(format!("nested extras not encoded twice: {middle:?}"));
            }
            // Undo the outer encoding once: what Shopify sees in `redirect`.
            decode_value(middle)
        }
    };
    let Some(pairs_text) = pairs_text.strip_prefix('&') else {
        return Err(format!("extras do not start with `&`: {pairs_text:?}"));
    };
    let mut out = Vec::new();
    for seg in pairs_text.split('&') {
        let (k, v) = seg
            .split_once('=')
            .ok_or_else(|| format!("extra without `=`: {seg:?}"))?;
        if !seg.bytes().all(|b| serialized_byte(b) || b == b'=') || v.contains('=') {
            return Err(format!("extra not re-encoded: {seg:?}"));
        }
        let k = match mode {
            ExtrasMode::Attribution => k
                .strip_prefix("attribution%2F")
                .ok_or_else(|| format!("`/buy` extra outside `attribution/`: {seg:?}"))?,
            _ => k,
        };
        if !FORWARDABLE.contains(&k) {
            return Err(format!("non-forwardable key {k:?} among the extras"));
        }
        out.push((k.to_string(), decode_value(v)));
    }
    Ok(out)
}

/// One `application/x-www-form-urlencoded` value, decoded (`+` is a space, lossy UTF-8).
pub fn decode_value(v: &str) -> String {
    let text = format!("x={v}");
    let value = form_urlencoded::parse(text.as_bytes())
        .next()
        .map(|(_, v)| v.into_owned());
    value.unwrap_or_default()
}

/// Percent-encodes every byte outside RFC 3986 unreserved (`%XX`, upper case).
pub fn pct_all(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 3);
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// The least encoding that still makes a legal HTTP/1.1 request target (hyper/http accept it):
/// controls, space, DEL, `"`, `#`, `<`, `>` and non-UTF-8-safe bytes are encoded; `%`, `&`,
/// `=`, `+`, `\`, `/` and UTF-8 text travel raw, so the server decodes them itself.
pub fn pct_min(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for ch in s.chars() {
        let c = ch as u32;
        if c <= 0x20 || c == 0x7f || matches!(ch, '"' | '#' | '<' | '>') {
            out.push_str(&format!("%{c:02X}"));
        } else {
            out.push(ch);
        }
    }
    out
}

/// `form_urlencoded` (what a browser's form or `URLSearchParams` sends).
pub fn form(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// One request of arbitrary target bytes on a fresh connection; `Err` when the connection died
/// without a complete response head.
/// `extra_headers` are raw header lines (each ending in CRLF); without a `User-Agent` among
/// them the request carries the iPhone one, so it counts as a human click.
pub fn send_target(addr: SocketAddr, target: &[u8], extra_headers: &[u8]) -> Result<Resp, String> {
    let mut req = Vec::with_capacity(target.len() + 200);
    req.extend_from_slice(b"GET ");
    req.extend_from_slice(target);
    req.extend_from_slice(b" HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    if !String::from_utf8_lossy(extra_headers)
        .to_ascii_lowercase()
        .contains("user-agent:")
    {
        req.extend_from_slice(b"User-Agent: ");
        req.extend_from_slice(crate::support::IPHONE.as_bytes());
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(extra_headers);
    req.extend_from_slice(b"\r\n");
    let raw = raw_exchange(addr, &req).map_err(|e| format!("connection failed: {e}"))?;
    if !raw.windows(4).any(|w| w == b"\r\n\r\n") {
        return Err(format!(
            "no complete response: {:?}",
            String::from_utf8_lossy(&raw[..raw.len().min(300)])
        ));
    }
    Ok(parse_response(raw, false))
}

/// Writes `bytes` and reads until the server closes (or 10 s pass).
pub fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    // The server may answer and close before reading everything (431, 400): ignore EPIPE.
    let _ = s.write_all(bytes);
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            // A reset after the answer (unread request bytes) still leaves the answer.
            Err(e) if !raw.is_empty() => {
                let _ = e;
                break;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(raw)
}

/// The status of a raw answer, if it has a status line.
pub fn status_of(raw: &[u8]) -> Option<u16> {
    let line_end = raw.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&raw[..line_end]).ok()?;
    line.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// True while the server process runs and answers its public health check.
pub fn alive(s: &mut Server) -> bool {
    if s.child.try_wait().ok().flatten().is_some() {
        return false;
    }
    matches!(
        raw_exchange(
            s.public,
            b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        .ok()
        .as_deref()
        .and_then(status_of),
        Some(200)
    )
}

/// No panic or error-level log line in the server's stderr.
pub fn assert_no_panic(s: &Server) {
    let log = s.stderr();
    assert!(
        !log.contains("panicked") && !log.contains("ERROR"),
        "server log shows a panic or error:\n{log}"
    );
}

/// A small deterministic PRNG (xorshift64*), so runs are reproducible without a seed file.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}
