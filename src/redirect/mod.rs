//! The public request path, top to bottom: parse `/{id}.{sig}`, look the link up and check
//! the signature against the one it was loaded with (an HMAC only when that fails), pick its
//! destination, fill in the click ID, attribution cookie and forwarded
//! extras, answer, and hand the click record to the pipeline without waiting.
//!
//! Everything that can be rendered ahead is rendered at load time (see `links::destination`);
//! per request this allocates the `Location` string, the `Set-Cookie` string, and the encoded
//! click record.
//! No locks and no awaits: the whole path is one synchronous function.

pub mod cookie;
pub mod other;

pub use other::handle_other;

use crate::audience;
use crate::audience::geo;
use crate::clicks::Device;
use crate::clicks::{Click, Served};
use crate::config::CookiePolicy;
use crate::links::destination::Extras;
use crate::links::signature::KeyRing;
use crate::links::stock::{StockOutcome, StockRule};
use crate::links::{Destination, Link, Route, TargetType, CLICK_ID_LEN, FORWARDABLE};
use crate::state::{App, Snapshot, View};
use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, LOCATION, SET_COOKIE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Uri};
use http_body_util::Full;
use rand::Rng;
use std::cell::Cell;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub type Body = Full<Bytes>;

const NO_STORE: HeaderValue = HeaderValue::from_static("private, no-store");
const TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");
const NO_REFERRER: HeaderValue = HeaderValue::from_static("no-referrer");
const REFERRER_POLICY: HeaderName = HeaderName::from_static("referrer-policy");
/// Longest forwarded extra value; longer ones are dropped, not truncated.
const MAX_EXTRA: usize = 200;
/// `sub` (which post or video) is cleaned to these characters and capped.
const MAX_SUB: usize = 64;

/// Answers one public request.
pub fn handle(app: &App, method: &Method, uri: &Uri, headers: &HeaderMap, peer: IpAddr) -> Response<Body> {
    let started = Instant::now();
    let resp = route(app, method, uri, headers, peer, started);
    app.metrics.duration.record(started.elapsed());
    resp
}

fn route(app: &App, method: &Method, uri: &Uri, headers: &HeaderMap, peer: IpAddr, started: Instant) -> Response<Body> {
    let m = &app.metrics;
    let is_head = match *method {
        Method::GET => false,
        Method::HEAD => true,
        _ => {
            m.outcomes.method_not_allowed.increment(1);
            return method_not_allowed();
        }
    };
    if uri.path() == "/healthz" {
        return health(app);
    }
    let snap = app.state.load();
    let Some((id, sig)) = split_token(uri.path().as_bytes()) else {
        m.signature.malformed.increment(1);
        return not_found(app);
    };
    // The table is in memory but rarely in cache: its slot is fetched while the visitor is
    // looked at, and the link itself while the country is looked up and the click ID made.
    let pending = snap.links.start_get(id);

    // Who: the client behind the CDN, bot or human, device, country.
    let view = &*snap.view;
    let client = view.client_ip.resolve(peer, headers);
    let now_ms = unix_ms(started);
    let ua = audience::user_agent(headers);
    let ua_hash = audience::agent::hash(ua);
    let agent = audience::agent::of(ua, ua_hash);
    let bot = is_head || agent.bot || audience::is_prefetch(headers);
    // Humans' place in the unique filter is fetched while the rest of the answer is built. The
    // id is the URL's, which is the link's once the signature holds.
    let visit = (!bot).then(|| app.unique.find(client, ua_hash, id));
    let device = agent.device;
    let pending = pending.fetch();
    let country = country(view, peer, client, headers);
    // Attribution: a new click ID for every GET; the cookie and cart carry it for humans.
    let click_id = new_click_id(now_ms);

    // Each link keeps its URL's signature under the signing key, so a genuine URL costs a
    // 16-byte compare. Anything else (an older key's URL, a forgery, an id not in the table)
    // gets the HMAC under every key, so a 404 does not tell which part was wrong.
    let link = match pending.finish() {
        Some(link) if KeyRing::is_link_sig(&link.sig, sig) => link,
        found => {
            if !snap.keys.verify(id, sig) {
                m.signature.bad_mac.increment(1);
                return not_found(app);
            }
            let Some(link) = found else {
                m.signature.unknown_link.increment(1);
                return not_found(app);
            };
            link
        }
    };
    // The URL, creator and campaign live apart from the link: they are fetched while the
    // visit is counted and the destination chosen, before the cookie and the record copy them.
    link.target.prefetch();
    crate::prefetch::read(link.creator.as_ptr(), 1);
    crate::prefetch::read(link.campaign.as_ptr(), 1);
    let mut unique = false;
    if !is_head {
        unique = visit.is_some_and(|v| v.check_and_insert());
        if bot {
            m.bot_clicks.increment(1);
        } else {
            m.human_clicks.increment(1);
            if unique {
                m.unique_clicks.increment(1);
            }
        }
    }
    let (mut dest, mut served, stock) = choose(
        &snap,
        link,
        now_ms,
        bot,
        Visitor {
            client,
            device,
            country,
            headers,
        },
    );
    // A paused, expired or capped link attributes nothing: no cookie, so under `first_click` a
    // later click on a live link is not credited to it. (A stock fallback below still
    // attributes: the link is live, its cart is not.)
    let inactive = served == Served::Fallback;
    // Stock: one atomic per watched item of the cart chosen; only an out-of-stock cart is
    // rendered here.
    let restocked;
    let mut oos: Box<[u64]> = Box::default();
    if let Some(rule) = stock {
        match rule.evaluate() {
            StockOutcome::AllInStock => {}
            StockOutcome::Changed(d, out) => {
                restocked = d;
                dest = &restocked;
                oos = out;
            }
            StockOutcome::Fallback(out) => {
                dest = link
                    .fallback()
                    .or(snap.view.brand_fallback.as_ref())
                    .or(link.home())
                    .unwrap_or(dest);
                served = Served::Fallback;
                oos = out;
            }
        }
    }
    // A `/buy` permalink is always 303 (UCP), whichever of the link's targets it is.
    let status = match served {
        Served::Fallback => 302,
        _ if dest.see_other => 303,
        _ => link.redirect,
    };

    // Under `first_click`, the earlier click this visit stays attributed to.
    let mut first = None;
    let mut set_cookie = None;
    if !bot && !inactive {
        let c = &view.cookie;
        if c.policy == CookiePolicy::FirstClick {
            first = cookie::read(&snap.keys, &c.name, headers, now_ms / 1000, c.window.as_secs());
        }
        if first.is_none() {
            // Exact, so the string becomes the header's bytes without another allocation.
            let mut v = String::with_capacity(cookie::len(&c.name, &link.id, &link.creator) + c.attributes.len());
            cookie::write(
                &snap.keys,
                &c.name,
                &click_id,
                now_ms / 1000,
                &link.id,
                &link.creator,
                &mut v,
            );
            v.push_str(&c.attributes);
            set_cookie = Some(v);
        }
    }

    let mut sub = None;
    let location = if bot {
        let (head, tail) = dest.plain();
        let mut loc = String::with_capacity(dest.plain_len());
        loc.push_str(head);
        loc.push_str(tail);
        sub = uri.query().and_then(|q| read_query(q, dest, None));
        loc
    } else {
        // Exact without a query, so the string becomes the header's bytes without another
        // allocation.
        let extra = if uri.query().is_some() || first.is_some() {
            128
        } else {
            0
        };
        let mut loc = String::with_capacity(dest.head().len() + CLICK_ID_LEN + dest.tail().len() + extra);
        loc.push_str(dest.head());
        let mut idbuf = uuid::Uuid::encode_buffer();
        loc.push_str(
            first
                .as_ref()
                .map_or(click_id, |a| a.click_id)
                .hyphenated()
                .encode_lower(&mut idbuf),
        );
        if let Some(a) = &first {
            // The cart's own `cl_link` names this link; the order is the first click's, so
            // the webhook credits the link named here (its id is signed in the cookie).
            let cart = dest.target_type == TargetType::ShopifyCart && dest.extras == Extras::Query;
            if cart && a.link_id != *link.id && crate::links::valid_id(&a.link_id) {
                loc.push_str("&attributes%5Bcl_first_link%5D=");
                loc.push_str(&a.link_id);
            }
        }
        if let Some(q) = uri.query() {
            sub = read_query(q, dest, Some(&mut loc));
        }
        loc.push_str(dest.tail());
        loc
    };

    let resp = redirect(
        status,
        location,
        set_cookie,
        dest.see_other && served != Served::Fallback,
    );
    match served {
        Served::Fallback => m.outcomes.fallback.increment(1),
        _ => m.outcomes.redirect.increment(1),
    }
    if !is_head {
        let referer = audience::referer_host(headers);
        app.recorder.record(&Click {
            click_id,
            ts_ms: now_ms,
            link,
            sub: sub.as_deref(),
            country,
            device,
            bot,
            unique,
            app: agent.app,
            referer_host: referer.as_deref(),
            ip: audience::anonymize(client),
            served,
            oos: &oos,
            target_type: dest.target_type,
            status,
            attributed_to: first.map(|a| a.click_id),
        });
    }
    resp
}

/// `/{id}.{sig}` with a valid id shape and a 16-character signature; raw bytes, no decoding.
pub fn split_token(path: &[u8]) -> Option<(&[u8], &[u8])> {
    let token = path.strip_prefix(b"/")?;
    let dot = memchr::memrchr(b'.', token)?;
    let (id, sig) = (&token[..dot], &token[dot + 1..]);
    let id_ok =
        (1..=64).contains(&id.len()) && id.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_');
    (id_ok && sig.len() == crate::links::signature::SIG_CHARS).then_some((id, sig))
}

/// What the destination choice may depend on.
struct Visitor<'a> {
    client: IpAddr,
    device: Device,
    country: Option<[u8; 2]>,
    headers: &'a HeaderMap,
}

/// The CDN's country header from a trusted peer, else the geo database, else unknown.
fn country(view: &View, peer: IpAddr, client: IpAddr, headers: &HeaderMap) -> Option<[u8; 2]> {
    if let Some(h) = &view.country_header {
        if let Some(v) = headers.get(h) {
            if view.client_ip.is_trusted(peer) {
                if let Some(cc) = geo::country_code(v.as_bytes()) {
                    return Some(cc);
                }
            }
        }
    }
    view.geo.as_ref()?.country(client)
}

/// Paused, expired or capped → fallback; otherwise by country, then device, then A/B
/// variant, then the target. With the stock rule of the cart chosen, if it has one.
fn choose<'a>(
    snap: &'a Snapshot,
    link: &'a Link,
    now_ms: u64,
    bot: bool,
    v: Visitor,
) -> (&'a Destination, Served, Option<&'a StockRule>) {
    let expired = link.expires_at_ms.is_some_and(|t| now_ms >= t);
    // Only humans count toward the cap: exactly `max_clicks` of them reach the target.
    let capped = link.max_clicks.is_some_and(|max| {
        if bot {
            link.clicks.load(Ordering::Relaxed) >= max
        } else {
            link.clicks.fetch_add(1, Ordering::Relaxed) >= max
        }
    });
    if link.paused || expired || capped {
        let fb = link.fallback().or(snap.view.brand_fallback.as_ref()).or(link.home());
        return (fb.unwrap_or(&link.target), Served::Fallback, None);
    }
    if let Some(r) = v.country.and_then(|c| link.geo_target(c)) {
        return (&r.dest, Served::Geo, r.stock.as_deref());
    }
    if let Some(r) = link.device_target(v.device) {
        return (&r.dest, Served::Device, r.stock.as_deref());
    }
    let variants = link.variants();
    if !variants.is_empty() {
        let i = pick_variant(variants, visitor_hash(link, v.headers, v.client));
        let r = &variants[i].1;
        return (&r.dest, Served::Variant(i as u8), r.stock.as_deref());
    }
    (&link.target, Served::Target, link.stock.as_deref())
}

/// The variant whose cumulative-weight interval holds `hash mod total`.
fn pick_variant(variants: &[(u32, Route)], hash: u64) -> usize {
    let total = variants.last().map_or(1, |(w, _)| *w);
    let point = (hash % u64::from(total)) as u32;
    variants.partition_point(|(w, _)| *w <= point)
}

/// Sticky A/B assignment: the same visitor (address and User-Agent) gets the same variant.
fn visitor_hash(link: &Link, headers: &HeaderMap, client: IpAddr) -> u64 {
    let mut h = rustc_hash::FxHasher::default();
    client.hash(&mut h);
    headers
        .get(http::header::USER_AGENT)
        .map(HeaderValue::as_bytes)
        .hash(&mut h);
    link.id.hash(&mut h);
    // Fx leaves the low bits weak; a final avalanche (splitmix64) spreads them.
    let mut x = h.finish();
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Reads `sub` and, when `out` is given, appends the forwardable extras the link does not own.
fn read_query(query: &str, dest: &Destination, mut out: Option<&mut String>) -> Option<Box<str>> {
    let mut sub: Option<Box<str>> = None;
    let mut seen = 0u16;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if k == "sub" {
            if sub.is_none() {
                let clean = clean_sub(&v);
                sub = (!clean.is_empty()).then(|| clean.into_boxed_str());
            }
            continue;
        }
        let Some(out) = out.as_deref_mut() else { continue };
        let Some(i) = crate::links::destination::forwardable_index(&k) else {
            continue;
        };
        let bit = 1u16 << i;
        if dest.is_pinned(i) || seen & bit != 0 || v.is_empty() || v.len() > MAX_EXTRA {
            continue;
        }
        seen |= bit;
        push_extra(out, dest.extras, FORWARDABLE[i], &v);
    }
    sub
}

/// `sub` as the click record keeps it: `[A-Za-z0-9._~:-]` only, at most `MAX_SUB` characters.
pub fn clean_sub(v: &str) -> String {
    v.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~' | ':'))
        .take(MAX_SUB)
        .collect()
}

fn push_extra(out: &mut String, mode: Extras, key: &str, value: &str) {
    match mode {
        Extras::Query => {
            out.push('&');
            out.push_str(key);
            out.push('=');
            out.extend(form_urlencoded::byte_serialize(value.as_bytes()));
        }
        Extras::Attribution => {
            out.push_str("&attribution%2F");
            out.push_str(key);
            out.push('=');
            out.extend(form_urlencoded::byte_serialize(value.as_bytes()));
        }
        Extras::Nested => {
            // The pair lives inside an encoded URL, so it is encoded twice.
            let mut pair = String::with_capacity(key.len() + value.len() * 3 + 2);
            pair.push('&');
            pair.push_str(key);
            pair.push('=');
            pair.extend(form_urlencoded::byte_serialize(value.as_bytes()));
            out.extend(form_urlencoded::byte_serialize(pair.as_bytes()));
        }
    }
}

/// The wall clock at `at`, in milliseconds since the epoch, from the wall clock read at most once
/// a second per thread and the request's own monotonic start: a request reads the clock twice
/// (to time itself) instead of three times.
fn unix_ms(at: Instant) -> u64 {
    thread_local! {
        /// A monotonic instant and the wall clock then, in nanoseconds since the epoch.
        static ANCHOR: Cell<Option<(Instant, u64)>> = const { Cell::new(None) };
    }
    ANCHOR.with(|anchor| {
        if let Some((then, ns)) = anchor.get() {
            if let Some(d) = at.checked_duration_since(then).filter(|d| d.as_secs() == 0) {
                return (ns + u64::from(d.subsec_nanos())) / 1_000_000;
            }
        }
        let ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        anchor.set(Some((at, ns)));
        ns / 1_000_000
    })
}

/// UUIDv7: 48-bit millisecond timestamp, 74 random bits (thread-local CSPRNG, no lock).
pub fn new_click_id(now_ms: u64) -> uuid::Uuid {
    let mut rnd = [0u8; 10];
    rand::rng().fill(&mut rnd);
    uuid::Builder::from_unix_timestamp_millis(now_ms, &rnd).into_uuid()
}

fn redirect(status: u16, location: String, set_cookie: Option<String>, no_referrer: bool) -> Response<Body> {
    // Every part was URL-encoded or validated at load time, so these checks never fail; if
    // one did, the visitor gets a clean 400 rather than a malformed header.
    let Some(loc) = header_value(location) else {
        return bad_request();
    };
    let cookie = match set_cookie.map(header_value) {
        Some(None) => return bad_request(),
        c => c.flatten(),
    };
    let mut resp = Response::new(Body::new(Bytes::new()));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::FOUND);
    let h = resp.headers_mut();
    h.insert(LOCATION, loc);
    h.insert(CACHE_CONTROL, NO_STORE);
    if let Some(c) = cookie {
        h.insert(SET_COOKIE, c);
    }
    if no_referrer {
        h.insert(REFERRER_POLICY, NO_REFERRER);
    }
    resp
}

/// The bytes `HeaderValue::from_maybe_shared` accepts (visible ASCII, space, tab, obs-text),
/// checked by a fold that vectorizes where its check goes byte by byte (about 500 of a
/// request's instructions for the two headers).
#[allow(clippy::disallowed_methods)]
fn header_value(s: String) -> Option<HeaderValue> {
    let ok = s
        .bytes()
        .fold(true, |ok, b| ok & ((b >= 0x20 && b != 0x7f) | (b == b'\t')));
    // SAFETY: the only requirement is UTF-8, which a String is; the bytes were checked just
    // above as the checked constructor would (debug builds check again and panic). The one
    // unchecked header value in the code; clippy.toml refuses any other.
    ok.then(|| unsafe { HeaderValue::from_maybe_shared_unchecked(Bytes::from(s)) })
}

fn plain(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(Body::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, TEXT);
    resp.headers_mut().insert(CACHE_CONTROL, NO_STORE);
    resp
}

/// The one answer for every unknown, forged, truncated or malformed link.
fn not_found(app: &App) -> Response<Body> {
    app.metrics.outcomes.not_found.increment(1);
    plain(StatusCode::NOT_FOUND, "not found\n")
}

pub fn bad_request() -> Response<Body> {
    plain(StatusCode::BAD_REQUEST, "bad request\n")
}

fn method_not_allowed() -> Response<Body> {
    let mut resp = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    resp.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
    resp
}

/// `/healthz` on the public port, for the CDN: 503 once draining so it stops sending.
fn health(app: &App) -> Response<Body> {
    if app.is_draining() {
        plain(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        plain(StatusCode::OK, "ok\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"id":"ab","creator":"c","campaign":"k","target":{"type":"url","url":"https://a.example/"},"variants":[{"weight":70,"target":{"type":"url","url":"https://a.example/x"}},{"weight":20,"target":{"type":"url","url":"https://a.example/y"}},{"weight":10,"target":{"type":"url","url":"https://a.example/z"}}]}"#;

    #[test]
    fn the_clicks_wall_clock_follows_the_system_clock_across_re_anchoring() {
        let wall = || SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let started = Instant::now();
        // Past a second, so the per-thread anchor is replaced at least once.
        while started.elapsed() < std::time::Duration::from_millis(1300) {
            let before = wall();
            let got = unix_ms(Instant::now());
            let after = wall();
            // A millisecond either way for the pairing of the two clocks at the anchor.
            assert!(before <= got + 1 && got <= after + 1, "{before} <= {got} <= {after}");
            std::thread::sleep(std::time::Duration::from_millis(7));
        }
    }

    #[test]
    fn ab_split_follows_weights_and_sticks() {
        let table = crate::links::parse(LINE, "t", &crate::links::signature::demo()).unwrap();
        let link = table.get(b"ab").unwrap();
        let mut counts = [0u32; 3];
        let n = 100_000u32;
        for i in 0..n {
            let ip = IpAddr::from((0x0a00_0000u32 + i).to_be_bytes());
            let mut h = HeaderMap::new();
            h.insert(
                http::header::USER_AGENT,
                HeaderValue::from_static("Mozilla/5.0 (iPhone)"),
            );
            counts[pick_variant(link.variants(), visitor_hash(link, &h, ip))] += 1;
        }
        for (got, want) in counts.iter().zip([0.70, 0.20, 0.10]) {
            let share = f64::from(*got) / f64::from(n);
            assert!(
                (share - want).abs() <= 0.02,
                "share {share} for weight {want}: {counts:?}"
            );
        }
        let mut h = HeaderMap::new();
        h.insert(http::header::USER_AGENT, HeaderValue::from_static("UA"));
        let ip: IpAddr = "203.0.113.5".parse().unwrap();
        let first = pick_variant(link.variants(), visitor_hash(link, &h, ip));
        for _ in 0..100 {
            assert_eq!(
                pick_variant(link.variants(), visitor_hash(link, &h, ip)),
                first,
                "sticky"
            );
        }
    }
}
