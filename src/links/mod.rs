//! The links table: parsed from JSON Lines, validated, every destination pre-rendered, then
//! frozen. A table is immutable once built; reloads build a new one beside it
//! (see `state`). A file with any bad line is rejected whole, with `file:line: reason`.

pub mod config;
pub mod destination;
pub mod signature;
pub mod stock;

use crate::clicks::Device;
use config::{LinkConfig, StatusConfig, TargetConfig};
use destination::{render, LinkParams};
pub use destination::{Destination, TargetType, CLICK_ID_LEN, FORWARDABLE};
use rustc_hash::{FxHashMap, FxHashSet};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// One validated link, ready to serve.
#[derive(Debug)]
pub struct Link {
    /// Kept inline (up to 24 bytes) so comparing it during a lookup touches no other memory
    /// than the link itself.
    pub id: compact_str::CompactString,
    pub creator: Arc<str>,
    pub campaign: Arc<str>,
    /// The creator's discount code, if any.
    pub discount: Option<Box<str>>,
    pub paused: bool,
    /// Unix milliseconds after which the link goes to its fallback.
    pub expires_at_ms: Option<u64>,
    pub redirect: u16,
    pub target: Destination,
    pub max_clicks: Option<u64>,
    /// Human clicks counted toward `max_clicks`; carried over from the previous table on reload.
    pub clicks: AtomicU64,
    pub commission: Option<config::CommissionConfig>,
    /// Cart links that watch stock.
    pub stock: Option<Box<stock::StockRule>>,
    /// Most links have no other destination; those that do keep them out of line, so a
    /// million plain links stay small.
    routes: Option<Box<Routes>>,
}

#[derive(Debug, Default)]
struct Routes {
    /// Sorted by country code.
    geo: Box<[([u8; 2], Destination)]>,
    device: Box<[(Device, Destination)]>,
    /// Cumulative weights (last = total) with their destinations.
    variants: Box<[(u32, Destination)]>,
    fallback: Option<Destination>,
    /// The store's home page: where a paused, expired or capped link goes when neither it nor
    /// the brand names a fallback. Rendered only for such links.
    home: Option<Destination>,
}

impl Link {
    pub fn geo_target(&self, country: [u8; 2]) -> Option<&Destination> {
        let geo = &self.routes.as_ref()?.geo;
        geo.binary_search_by(|(c, _)| c.cmp(&country)).ok().map(|i| &geo[i].1)
    }
    pub fn device_target(&self, device: Device) -> Option<&Destination> {
        let r = self.routes.as_ref()?;
        r.device.iter().find(|(d, _)| *d == device).map(|(_, t)| t)
    }
    pub fn variants(&self) -> &[(u32, Destination)] {
        self.routes.as_ref().map_or(&[], |r| &r.variants)
    }
    pub fn fallback(&self) -> Option<&Destination> {
        self.routes.as_ref()?.fallback.as_ref()
    }
    pub fn home(&self) -> Option<&Destination> {
        self.routes.as_ref()?.home.as_ref()
    }
}

/// Table entry: the link itself, hashed and compared by id, so the id is stored once.
#[derive(Debug)]
struct ById(Arc<Link>);

impl std::hash::Hash for ById {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.id.hash(state)
    }
}
impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}
impl Eq for ById {}
impl std::borrow::Borrow<str> for ById {
    fn borrow(&self) -> &str {
        &self.0.id
    }
}

/// A load error, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {reason}")]
pub struct LinkError {
    pub file: String,
    pub line: usize,
    pub reason: String,
}

/// All the problems of a rejected file (the first few; loading stops counting at 20).
#[derive(Debug, Clone, thiserror::Error)]
pub struct LoadError(pub Vec<LinkError>);

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// The frozen table. Lookups only ever happen after the link id's signature verified, so
/// visitors cannot choose keys and a fast non-keyed hasher is safe here.
#[derive(Debug, Default)]
pub struct LinkTable {
    links: FxHashSet<ById>,
    /// Upper-cased discount code → the first link (in file order) that carries it, for
    /// attributing orders that came without a click ID.
    by_discount: FxHashMap<Box<str>, Arc<Link>>,
}

impl LinkTable {
    pub fn get(&self, id: &[u8]) -> Option<&Arc<Link>> {
        // Ids are validated ASCII at load; a non-UTF-8 id cannot match any of them.
        std::str::from_utf8(id)
            .ok()
            .and_then(|id| self.links.get(id))
            .map(|e| &e.0)
    }
    pub fn len(&self) -> usize {
        self.links.len()
    }
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Link>> {
        self.links.iter().map(|e| &e.0)
    }
    /// Ids in file order are not kept; this gives them sorted, for stable exports.
    pub fn sorted_ids(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self.links.iter().map(|e| &*e.0.id).collect();
        ids.sort_unstable();
        ids
    }
    /// The link a discount code belongs to (codes compare case-insensitively, as Shopify's do).
    pub fn by_discount(&self, code: &str) -> Option<&Arc<Link>> {
        self.by_discount.get(code.to_ascii_uppercase().as_str())
    }

    /// Connects stock rules to the shared stock state.
    pub fn bind_stock(&self, inventory: &crate::commerce::inventory::Inventory) {
        for ById(link) in &self.links {
            if let Some(rule) = &link.stock {
                rule.bind(inventory);
            }
        }
    }

    /// Carries `max_clicks` counters over from the table this one replaces.
    pub fn inherit_counters(&self, old: &LinkTable) {
        use std::sync::atomic::Ordering::Relaxed;
        for ById(link) in &self.links {
            if let Some(ById(prev)) = old.links.get(&*link.id) {
                link.clicks.store(prev.clicks.load(Relaxed), Relaxed);
            }
        }
    }
}

pub fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn clean_label(what: &str, value: &str, max: usize) -> Result<(), String> {
    if value.is_empty() || value.len() > max {
        return Err(format!("`{what}` must be 1-{max} bytes"));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("`{what}` must not contain control characters"));
    }
    Ok(())
}

/// Interns repeated strings (creators, campaigns) so a million links share a few hundred.
#[derive(Default)]
struct Interner(FxHashMap<String, Arc<str>>);

impl Interner {
    fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.0.get(s) {
            return a.clone();
        }
        let a: Arc<str> = s.into();
        self.0.insert(s.to_string(), a.clone());
        a
    }
}

fn parse_rfc3339_ms(text: &str) -> Result<u64, String> {
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("`expires_at` `{text}` is not RFC 3339: {e}"))?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).map_err(|_| "`expires_at` is before 1970".to_string())
}

fn build(raw: LinkConfig, interner: &mut Interner) -> Result<Link, String> {
    if !valid_id(&raw.id) {
        return Err(format!(
            "id `{}` must be 1-64 of [A-Za-z0-9_-]",
            raw.id.chars().take(80).collect::<String>()
        ));
    }
    clean_label("creator", &raw.creator, 128)?;
    clean_label("campaign", &raw.campaign, 128)?;
    if let Some(code) = &raw.discount {
        clean_label("discount", code, 255)?;
        if code.contains(',') {
            return Err("`discount` must not contain a comma (Shopify cannot pass it)".into());
        }
    }
    let utm = LinkParams::utm_pairs(raw.utm.as_ref());
    for (k, v) in &utm {
        clean_label(k, v, 255)?;
    }
    let params = LinkParams {
        link_id: &raw.id,
        creator: &raw.creator,
        discount: raw.discount.as_deref(),
        utm: &utm,
    };
    let target = render(&raw.target, &params, true).map_err(|e| format!("target: {e}"))?;
    let redirect = match (raw.redirect, target.see_other) {
        (None, true) => 303,
        (None, false) => 302,
        (Some(301 | 308), true) => return Err("the Shopify `/buy` format must not answer 301 or 308".into()),
        (Some(code @ (301 | 302 | 303 | 307 | 308)), _) => code,
        (Some(code), _) => return Err(format!("`redirect` {code} must be one of 301, 302, 303, 307, 308")),
    };
    let mut geo = Vec::new();
    for (country, t) in raw.geo.iter().flatten() {
        let cc = country.as_bytes();
        if cc.len() != 2 || !cc.iter().all(u8::is_ascii_uppercase) {
            return Err(format!(
                "geo key `{country}` must be an ISO 3166 alpha-2 code like `US`"
            ));
        }
        let d = render(t, &params, true).map_err(|e| format!("geo.{country}: {e}"))?;
        geo.push(([cc[0], cc[1]], d));
    }
    geo.sort_by_key(|(c, _)| *c);
    let mut device = Vec::new();
    for (name, t) in raw.device.iter().flatten() {
        let d = match name.as_str() {
            "ios" => Device::Ios,
            "android" => Device::Android,
            "desktop" => Device::Desktop,
            "other" => Device::Other,
            _ => return Err(format!("device key `{name}` must be ios, android, desktop or other")),
        };
        device.push((d, render(t, &params, true).map_err(|e| format!("device.{name}: {e}"))?));
    }
    let mut variants = Vec::new();
    let mut total = 0u32;
    for (i, v) in raw.variants.iter().flatten().enumerate() {
        if v.weight == 0 || v.weight > 10_000 {
            return Err(format!("variants[{i}].weight must be 1-10000"));
        }
        total += v.weight;
        variants.push((
            total,
            render(&v.target, &params, true).map_err(|e| format!("variants[{i}]: {e}"))?,
        ));
    }
    if variants.len() > 16 {
        return Err("at most 16 variants".into());
    }
    let fallback = match &raw.fallback {
        Some(url) => {
            let t = TargetConfig::Url {
                url: url.clone(),
                platform: None,
            };
            let no_discount = LinkParams {
                discount: None,
                ..params
            };
            Some(render(&t, &no_discount, false).map_err(|e| format!("fallback: {e}"))?)
        }
        None => None,
    };
    let expires_at_ms = raw.expires_at.as_deref().map(parse_rfc3339_ms).transpose()?;
    let stock = stock::StockRule::from_config(&raw)?.map(Box::new);
    if let Some(config::CommissionConfig::RateBp(bp)) = raw.commission {
        if bp > 10_000 {
            return Err(format!("commission rate_bp {bp} is above 100 %"));
        }
    }
    let paused = raw.status == Some(StatusConfig::Paused);
    let home = if fallback.is_none()
        && (paused || expires_at_ms.is_some() || raw.max_clicks.is_some() || raw.stock.is_some())
    {
        let t = TargetConfig::Url {
            url: destination::home_of(&raw.target),
            platform: None,
        };
        Some(
            render(
                &t,
                &LinkParams {
                    discount: None,
                    ..params
                },
                false,
            )
            .map_err(|e| format!("home page: {e}"))?,
        )
    } else {
        None
    };
    Ok(Link {
        id: raw.id.into(),
        creator: interner.get(&raw.creator),
        campaign: interner.get(&raw.campaign),
        paused,
        expires_at_ms,
        redirect,
        target,
        max_clicks: raw.max_clicks,
        clicks: AtomicU64::new(0),
        stock,
        discount: raw.discount.as_deref().map(Into::into),
        commission: raw.commission,
        routes: (!geo.is_empty() || !device.is_empty() || !variants.is_empty() || fallback.is_some() || home.is_some())
            .then(|| {
                Box::new(Routes {
                    geo: geo.into(),
                    device: device.into(),
                    variants: variants.into(),
                    fallback,
                    home,
                })
            }),
    })
}

const MAX_REPORTED: usize = 20;

/// One parser thread's links (with their line numbers) and errors.
type ChunkResult = (Vec<(usize, Link)>, Vec<LinkError>);

// `ById` hashes only the immutable id; the atomic click counter inside does not affect it.
#[allow(clippy::mutable_key_type)]
/// Parses and validates JSON Lines text. `name` is what errors call the file.
pub fn parse(text: &str, name: &str) -> Result<LinkTable, LoadError> {
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty())
        .collect();
    // Large files are parsed on every core; results are merged in file order.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    let chunk = lines.len().div_ceil(threads).max(20_000);
    let parts: Vec<ChunkResult> = std::thread::scope(|s| {
        let handles: Vec<_> = lines
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    let mut interner = Interner::default();
                    let mut ok = Vec::with_capacity(part.len());
                    let mut errs = Vec::new();
                    for &(line, text) in part {
                        let res = serde_json::from_str::<LinkConfig>(text)
                            .map_err(|e| e.to_string())
                            .and_then(|raw| build(raw, &mut interner));
                        match res {
                            Ok(link) => ok.push((line, link)),
                            Err(reason) if errs.len() < MAX_REPORTED => errs.push(LinkError {
                                file: name.into(),
                                line,
                                reason,
                            }),
                            Err(_) => {}
                        }
                    }
                    (ok, errs)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("link parser thread panicked"))
            .collect()
    });
    let mut errors: Vec<LinkError> = Vec::new();
    let mut links: FxHashSet<ById> = FxHashSet::default();
    let mut by_discount: FxHashMap<Box<str>, Arc<Link>> = FxHashMap::default();
    links.reserve(lines.len());
    for (ok, errs) in parts {
        errors.extend(errs);
        for (line, link) in ok {
            let id = link.id.clone();
            let link = Arc::new(link);
            if let Some(code) = &link.discount {
                by_discount
                    .entry(code.to_ascii_uppercase().into_boxed_str())
                    .or_insert_with(|| link.clone());
            }
            if !links.insert(ById(link)) {
                // Rare: find where the id first appeared.
                #[derive(serde::Deserialize)]
                struct IdOnly {
                    id: String,
                }
                let first = lines
                    .iter()
                    .find(|(_, t)| serde_json::from_str::<IdOnly>(t).is_ok_and(|x| *x.id == *id))
                    .map_or(0, |(l, _)| *l);
                errors.push(LinkError {
                    file: name.into(),
                    line,
                    reason: format!("duplicate id `{id}` (first on line {first})"),
                });
            }
        }
    }
    if !errors.is_empty() {
        errors.sort_by_key(|e| e.line);
        errors.truncate(MAX_REPORTED);
        return Err(LoadError(errors));
    }
    if links.is_empty() {
        return Err(LoadError(vec![LinkError {
            file: name.into(),
            line: 0,
            reason: "no links: an empty file is refused".into(),
        }]));
    }
    Ok(LinkTable { links, by_discount })
}

/// Reads and parses a links file.
pub fn load(path: &Path) -> Result<LinkTable, LoadError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        LoadError(vec![LinkError {
            file: name.clone(),
            line: 0,
            reason: format!("cannot read: {e}"),
        }])
    })?;
    parse(&text, &name)
}
