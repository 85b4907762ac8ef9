//! The links table: parsed from JSON Lines, validated, every destination pre-rendered, then
//! frozen. A table is immutable once built; reloads build a new one beside it
//! (see `state`). A file with any bad line is rejected whole, with `file:line: reason`.

mod arena;
pub mod config;
pub mod destination;
mod index;
pub mod signature;
pub mod stock;

use crate::clicks::Device;
use config::{LinkConfig, StatusConfig, TargetConfig};
use destination::{render, LinkParams};
pub use destination::{Destination, TargetType, CLICK_ID_LEN, FORWARDABLE};
use rustc_hash::FxHashMap;
use signature::KeyRing;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{mpsc, Arc};

/// One validated link, ready to serve.
#[derive(Debug)]
pub struct Link {
    /// The URL's signature (`/{id}.{sig}`) under the signing key, rendered at load time: a
    /// request under that key compares 16 bytes instead of computing an HMAC.
    pub sig: [u8; signature::SIG_CHARS],
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
    /// The target's stock rule, when the link watches stock and its target is a cart.
    pub stock: Option<Box<stock::StockRule>>,
    /// Most links have no other destination; those that do keep them out of line, so a
    /// million plain links stay small.
    routes: Option<Box<Routes>>,
}

#[derive(Debug, Default)]
struct Routes {
    /// Sorted by country code.
    geo: Box<[([u8; 2], Route)]>,
    device: Box<[(Device, Route)]>,
    /// Cumulative weights (last = total) with their destinations.
    variants: Box<[(u32, Route)]>,
    fallback: Option<Destination>,
    /// The store's home page: where a paused, expired or capped link goes when neither it nor
    /// the brand names a fallback. Rendered only for such links.
    home: Option<Destination>,
}

/// A geo, device or variant destination, with its own stock rule when the link watches stock
/// and the destination is a cart.
#[derive(Debug)]
pub struct Route {
    pub dest: Destination,
    pub stock: Option<Box<stock::StockRule>>,
}

impl Link {
    pub fn geo_target(&self, country: [u8; 2]) -> Option<&Route> {
        let geo = &self.routes.as_ref()?.geo;
        geo.binary_search_by(|(c, _)| c.cmp(&country)).ok().map(|i| &geo[i].1)
    }
    pub fn device_target(&self, device: Device) -> Option<&Route> {
        let r = self.routes.as_ref()?;
        r.device.iter().find(|(d, _)| *d == device).map(|(_, t)| t)
    }
    pub fn variants(&self) -> &[(u32, Route)] {
        self.routes.as_ref().map_or(&[], |r| &r.variants)
    }
    /// Every stock rule of the link: its target's and its routes'.
    pub fn stock_rules(&self) -> impl Iterator<Item = &stock::StockRule> {
        let routes = self.routes.iter().flat_map(|r| {
            let geo = r.geo.iter().map(|(_, route)| route);
            let device = r.device.iter().map(|(_, route)| route);
            let variants = r.variants.iter().map(|(_, route)| route);
            geo.chain(device)
                .chain(variants)
                .filter_map(|route| route.stock.as_deref())
        });
        self.stock.as_deref().into_iter().chain(routes)
    }
    pub fn fallback(&self) -> Option<&Destination> {
        self.routes.as_ref()?.fallback.as_ref()
    }
    pub fn home(&self) -> Option<&Destination> {
        self.routes.as_ref()?.home.as_ref()
    }
}

fn hash_id(id: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    rustc_hash::FxBuildHasher.hash_one(id)
}

/// A lookup under way, in three steps that let other work hide its two cache misses:
/// [`LinkTable::start_get`] asks for the slot, [`PendingGet::fetch`] reads it and asks for the
/// link, [`PendingGet::finish`] compares ids.
pub struct PendingGet<'a> {
    table: &'a LinkTable,
    id: &'a [u8],
    hash: u64,
    candidate: Option<&'a Arc<Link>>,
}

impl<'a> PendingGet<'a> {
    /// Reads the first link under the id's hash and starts loading its memory.
    pub fn fetch(mut self) -> Self {
        self.candidate = self.table.links.candidate(self.hash);
        if let Some(link) = self.candidate {
            // From the link back over the Arc's two counters, which come first.
            crate::prefetch::read(
                Arc::as_ptr(link).cast::<u8>().wrapping_sub(16),
                std::mem::size_of::<Link>() + 16,
            );
        }
        self
    }

    /// The link named by the id, if there is one.
    pub fn finish(self) -> Option<&'a Arc<Link>> {
        match self.candidate {
            Some(link) if link.id.as_bytes() == self.id => Some(link),
            // Another id under the same 64-bit hash, or not fetched: the full search decides.
            _ => self.table.find(self.hash, self.id),
        }
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

/// The frozen table. Its keys come only from the links file, never from visitors, so a fast
/// unkeyed hasher is safe here: an id a visitor makes up only probes, and probe lengths are
/// set by the file's ids.
#[derive(Debug, Default)]
pub struct LinkTable {
    links: index::Index,
    /// Upper-cased discount code → the first link (in file order) that carries it, for
    /// attributing orders that came without a click ID.
    by_discount: FxHashMap<Box<str>, Arc<Link>>,
    /// Counts the table in the arena its links live in (see `arena`). Last, so it drops after
    /// the links: the arena is purged when its last table is freed.
    _arena: arena::Hold,
}

impl LinkTable {
    pub fn get(&self, id: &[u8]) -> Option<&Arc<Link>> {
        self.find(hash_id(id), id)
    }

    fn find(&self, hash: u64, id: &[u8]) -> Option<&Arc<Link>> {
        self.links.find(hash, id)
    }

    /// Starts a lookup: hashes the id and asks for the slot where its search starts, without
    /// waiting for it (see [`PendingGet`]).
    pub fn start_get<'a>(&'a self, id: &'a [u8]) -> PendingGet<'a> {
        let hash = hash_id(id);
        crate::prefetch::read(self.links.home(hash), 16);
        PendingGet {
            table: self,
            id,
            hash,
            candidate: None,
        }
    }
    pub fn len(&self) -> usize {
        self.links.len()
    }
    pub fn is_empty(&self) -> bool {
        self.links.len() == 0
    }
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Link>> {
        self.links.iter().map(|(_, link)| link)
    }
    /// Ids in file order are not kept; this gives them sorted, for stable exports.
    pub fn sorted_ids(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self.iter().map(|link| &*link.id).collect();
        ids.sort_unstable();
        ids
    }
    /// The link a discount code belongs to (codes compare case-insensitively, as Shopify's do).
    pub fn by_discount(&self, code: &str) -> Option<&Arc<Link>> {
        self.by_discount.get(code.to_ascii_uppercase().as_str())
    }

    /// Connects stock rules to the shared stock state.
    pub fn bind_stock(&self, inventory: &crate::commerce::inventory::Inventory) {
        for link in self.iter() {
            for rule in link.stock_rules() {
                rule.bind(inventory);
            }
        }
    }

    /// Carries `max_clicks` counters over from the table this one replaces.
    pub fn inherit_counters(&self, old: &LinkTable) {
        use std::sync::atomic::Ordering::Relaxed;
        for (hash, link) in self.links.iter() {
            if let Some(prev) = old.find(hash, link.id.as_bytes()) {
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

fn build(raw: LinkConfig, interner: &mut Interner, keys: &KeyRing) -> Result<Link, String> {
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
    stock::check(&raw)?;
    let route = |t: &TargetConfig, at: &str| -> Result<Route, String> {
        Ok(Route {
            dest: render(t, &params, true).map_err(|e| format!("{at}: {e}"))?,
            stock: stock::StockRule::for_target(&raw, t)
                .map_err(|e| format!("{at}: {e}"))?
                .map(Box::new),
        })
    };
    let redirect = match (raw.redirect, target.see_other) {
        (None, true) => 303,
        (None, false) => 302,
        (Some(code), true) if code != 303 => {
            return Err(format!(
                "the Shopify `/buy` format answers 303 (UCP requires it), not `redirect` {code}: leave `redirect` out"
            ))
        }
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
        geo.push(([cc[0], cc[1]], route(t, &format!("geo.{country}"))?));
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
        device.push((d, route(t, &format!("device.{name}"))?));
    }
    let mut variants = Vec::new();
    let mut total = 0u32;
    for (i, v) in raw.variants.iter().flatten().enumerate() {
        if v.weight == 0 || v.weight > 10_000 {
            return Err(format!("variants[{i}].weight must be 1-10000"));
        }
        total += v.weight;
        variants.push((total, route(&v.target, &format!("variants[{i}]"))?));
    }
    if variants.len() > 16 {
        return Err("at most 16 variants".into());
    }
    let fallback = match &raw.fallback {
        Some(url) => {
            let t = TargetConfig::url(url.clone());
            let no_discount = LinkParams {
                discount: None,
                ..params
            };
            Some(render(&t, &no_discount, false).map_err(|e| format!("fallback: {e}"))?)
        }
        None => None,
    };
    let expires_at_ms = raw.expires_at.as_deref().map(parse_rfc3339_ms).transpose()?;
    let stock = stock::StockRule::for_target(&raw, &raw.target)?.map(Box::new);
    if let Some(config::CommissionConfig::RateBp(bp)) = raw.commission {
        if bp > 10_000 {
            return Err(format!("commission rate_bp {bp} is above 100 %"));
        }
    }
    let paused = raw.status == Some(StatusConfig::Paused);
    let home = if fallback.is_none()
        && (paused || expires_at_ms.is_some() || raw.max_clicks.is_some() || raw.stock.is_some())
    {
        let t = TargetConfig::url(destination::home_of(&raw.target));
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
        sig: keys.link_sig(&raw.id),
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

/// Below this many bytes a file is parsed on one thread (spawning costs more than it saves).
const MIN_PIECE_BYTES: usize = 4 << 20;

/// What one parser thread made of its piece of the file: links with their line numbers,
/// errors, and how many lines the piece had.
struct Piece {
    bytes: usize,
    links: Vec<(usize, Arc<Link>)>,
    errors: Vec<LinkError>,
    lines: usize,
}

/// Parses and validates JSON Lines text. `name` is what errors call the file; `keys` sign
/// each link's URL (see [`Link::sig`]).
pub fn parse(text: &str, name: &str, keys: &KeyRing) -> Result<LinkTable, LoadError> {
    parse_bytes(text.as_bytes(), name, keys)
}

/// Splits `data` after line ends into up to `n` pieces of at least `min` bytes each.
fn pieces(data: &[u8], n: usize, min: usize) -> Vec<&[u8]> {
    let size = data.len().div_ceil(n.max(1)).max(min.max(1));
    let mut out = Vec::with_capacity(n);
    let mut rest = data;
    while rest.len() > size {
        let cut = memchr::memchr(b'\n', &rest[size..]).map_or(rest.len(), |i| size + i + 1);
        let (piece, tail) = rest.split_at(cut);
        out.push(piece);
        rest = tail;
    }
    if !rest.is_empty() || out.is_empty() {
        out.push(rest);
    }
    out
}

/// One thread's share: every line of `piece`, numbered from 1 within the piece. Each link's
/// `Arc` is allocated here, in the links arena (huge pages, see `arena`), so the merge on the
/// calling thread only moves pointers.
fn parse_piece(piece: &[u8], name: &str, keys: &KeyRing, arena: arena::Arena) -> Piece {
    arena.scope(|| parse_piece_here(piece, name, keys))
}

fn parse_piece_here(piece: &[u8], name: &str, keys: &KeyRing) -> Piece {
    let mut interner = Interner::default();
    let mut out = Piece {
        bytes: piece.len(),
        links: Vec::with_capacity(piece.len() / 256),
        errors: Vec::new(),
        lines: 0,
    };
    // Every piece but the last ends with a line end; without it, split yields exactly the lines.
    let body = piece.strip_suffix(b"\n").unwrap_or(piece);
    for (i, raw) in body.split(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        out.lines = line;
        let res = match std::str::from_utf8(raw).map(str::trim) {
            Ok("") => continue,
            Ok(text) => serde_json::from_str::<LinkConfig>(text)
                .map_err(|e| e.to_string())
                .and_then(|raw| build(raw, &mut interner, keys)),
            Err(_) => Err("not UTF-8".to_string()),
        };
        match res {
            Ok(link) => out.links.push((line, Arc::new(link))),
            Err(reason) if out.errors.len() < MAX_REPORTED => out.errors.push(LinkError {
                file: name.into(),
                line,
                reason,
            }),
            Err(_) => {}
        }
    }
    out
}

fn parse_bytes(data: &[u8], name: &str, keys: &KeyRing) -> Result<LinkTable, LoadError> {
    let threads = parser_threads();
    // More pieces than threads, so the merge below overlaps with the parsing of later pieces.
    parse_in_pieces(data, name, keys, pieces(data, threads * 4, MIN_PIECE_BYTES), threads)
}

fn parser_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(8)
}

/// Parses text already in memory, cut into `pieces`, on `threads` threads.
fn parse_in_pieces(
    data: &[u8],
    name: &str,
    keys: &KeyRing,
    pieces: Vec<&[u8]>,
    threads: usize,
) -> Result<LinkTable, LoadError> {
    if let [piece] = pieces[..] {
        // One piece (files up to 8 MiB, admin uploads of that size): no thread to start.
        let arena = arena::Arena::for_new_table();
        let mut merge = Merge::new(Text::Bytes(data), name, data.len(), arena);
        merge.add(parse_piece(piece, name, keys, arena));
        return merge.finish();
    }
    parse_in_parallel(Text::Bytes(data), name, keys, data.len(), threads, move |jobs, _| {
        for (i, piece) in pieces.into_iter().enumerate() {
            if jobs.send((i, Chunk::Slice(piece))).is_err() {
                break;
            }
        }
        Ok(())
    })
}

/// The text being loaded, for the rare second look at it: where a duplicate id first appears.
#[derive(Clone, Copy)]
enum Text<'a> {
    Bytes(&'a [u8]),
    File(&'a Path),
}

/// A piece of the text for a parser thread: borrowed from memory, or the first `len` bytes of
/// one of the file reader's buffers (handed back for reuse once parsed).
enum Chunk<'a> {
    Slice(&'a [u8]),
    Buf(Vec<u8>, usize),
}

impl Chunk<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Slice(s) => s,
            Chunk::Buf(buf, len) => &buf[..*len],
        }
    }
}

type Jobs<'a> = mpsc::Sender<(usize, Chunk<'a>)>;

/// Runs `feed` on its own thread to hand out numbered chunks that end after a line end;
/// `threads` threads parse them while this one merges them, in file order, as they come in.
/// Parsed buffers go back to `feed` through the receiver it is given.
fn parse_in_parallel<'a, F>(
    text: Text<'a>,
    name: &str,
    keys: &KeyRing,
    bytes: usize,
    threads: usize,
    feed: F,
) -> Result<LinkTable, LoadError>
where
    F: FnOnce(Jobs<'a>, mpsc::Receiver<Vec<u8>>) -> std::io::Result<()> + Send,
{
    let (jobs, job_rx) = mpsc::channel::<(usize, Chunk<'a>)>();
    let job_rx = std::sync::Mutex::new(job_rx);
    let (spent, spent_rx) = mpsc::channel::<Vec<u8>>();
    let (done, done_rx) = mpsc::channel::<(usize, Piece)>();
    let arena = arena::Arena::for_new_table();
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            let (job_rx, done, spent) = (&job_rx, done.clone(), spent.clone());
            s.spawn(move || loop {
                let next = job_rx.lock().expect("links parser panicked").recv();
                let Ok((i, chunk)) = next else { return };
                let piece = parse_piece(chunk.bytes(), name, keys, arena);
                if let Chunk::Buf(buf, _) = chunk {
                    let _ = spent.send(buf);
                }
                if done.send((i, piece)).is_err() {
                    return;
                }
            });
        }
        drop((done, spent));
        let feeder = s.spawn(move || feed(jobs, spent_rx));
        let mut merge = Merge::new(text, name, bytes, arena);
        // Pieces arrive in any order; they are merged in file order.
        let mut waiting = std::collections::BTreeMap::new();
        let mut due = 0usize;
        for (i, piece) in done_rx {
            waiting.insert(i, piece);
            while let Some(piece) = waiting.remove(&due) {
                merge.add(piece);
                due += 1;
            }
        }
        feeder
            .join()
            .expect("links reader panicked")
            .map_err(|e| cannot_read(name, e))?;
        debug_assert!(waiting.is_empty());
        merge.finish()
    })
}

/// The table being assembled from parsed pieces, in file order.
struct Merge<'a> {
    text: Text<'a>,
    name: &'a str,
    /// Size of the whole text, to size the table from the first piece.
    bytes: usize,
    errors: Vec<LinkError>,
    /// Duplicate ids to report, with their lines. Where each first appears is looked up once,
    /// at the end, for all of them.
    duplicates: Vec<(usize, compact_str::CompactString)>,
    links: index::Index,
    by_discount: FxHashMap<Box<str>, Arc<Link>>,
    /// Lines in the pieces merged so far.
    before: usize,
    /// Counts the table in its arena from the start, so a load that fails also gives the
    /// arena back (dropped after the links, being last).
    arena: arena::Hold,
}

impl<'a> Merge<'a> {
    fn new(text: Text<'a>, name: &'a str, bytes: usize, arena: arena::Arena) -> Merge<'a> {
        Merge {
            text,
            name,
            bytes,
            errors: Vec::new(),
            duplicates: Vec::new(),
            links: index::Index::default(),
            by_discount: FxHashMap::default(),
            before: 0,
            arena: arena.hold(),
        }
    }

    fn add(&mut self, piece: Piece) {
        if self.links.len() == 0 {
            // Lines are about the same size: the first piece tells how big the table will be.
            let expected = piece.links.len() as u128 * self.bytes as u128 / piece.bytes.max(1) as u128;
            self.links = index::Index::with_capacity(usize::try_from(expected).unwrap_or(0));
        }
        let before = self.before;
        self.errors.extend(piece.errors.into_iter().map(|e| LinkError {
            line: e.line + before,
            ..e
        }));
        // Each insert reads a slot at random in a table far larger than the cache: the slots
        // a few links ahead are asked for first, so the misses overlap instead of queueing.
        const AHEAD: usize = 8;
        let hashes: Vec<u64> = piece.links.iter().map(|(_, l)| hash_id(l.id.as_bytes())).collect();
        for (i, ((line, link), hash)) in piece.links.into_iter().zip(&hashes).enumerate() {
            if let Some(next) = hashes.get(i + AHEAD) {
                crate::prefetch::read(self.links.home(*next), 16);
            }
            if let Some(code) = &link.discount {
                first_for_code(&mut self.by_discount, code, &link);
            }
            if let Err(link) = self.links.insert(*hash, link) {
                let line = line + before;
                // A file appended to itself has millions of duplicates: keep those that will be shown.
                let earlier = self.errors.iter().filter(|e| e.line < line).count()
                    + self.duplicates.iter().filter(|d| d.0 < line).count();
                if earlier < MAX_REPORTED {
                    self.duplicates.push((line, link.id.clone()));
                }
            }
        }
        self.before += piece.lines;
    }

    fn finish(self) -> Result<LinkTable, LoadError> {
        let mut errors = self.errors;
        if !self.duplicates.is_empty() {
            let ids: Vec<&str> = self.duplicates.iter().map(|d| d.1.as_str()).collect();
            let firsts = first_lines(self.text, &ids);
            errors.extend(self.duplicates.iter().zip(firsts).map(|((line, id), first)| LinkError {
                file: self.name.into(),
                line: *line,
                reason: format!("duplicate id `{id}` (first on line {first})"),
            }));
        }
        if !errors.is_empty() {
            errors.sort_by_key(|e| e.line);
            errors.truncate(MAX_REPORTED);
            return Err(LoadError(errors));
        }
        if self.links.len() == 0 {
            return Err(LoadError(vec![LinkError {
                file: self.name.into(),
                line: 0,
                reason: "no links: an empty file is refused".into(),
            }]));
        }
        Ok(LinkTable {
            links: self.links,
            by_discount: self.by_discount,
            _arena: self.arena,
        })
    }
}

/// Remembers the first link (in file order) carrying each code, upper-cased; allocates only
/// for a code not seen before.
fn first_for_code(by_discount: &mut FxHashMap<Box<str>, Arc<Link>>, code: &str, link: &Arc<Link>) {
    let mut buf = [0u8; 255]; // codes are validated to 1-255 bytes
    let upper = &mut buf[..code.len()];
    upper.copy_from_slice(code.as_bytes());
    upper.make_ascii_uppercase();
    let upper = std::str::from_utf8(upper).expect("ASCII case change keeps UTF-8");
    if !by_discount.contains_key(upper) {
        by_discount.insert(upper.into(), link.clone());
    }
}

/// Rare path (duplicate ids): the line where each of `ids` first appears, in one pass over the
/// text (a file is read again).
fn first_lines(text: Text, ids: &[&str]) -> Vec<usize> {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: String,
    }
    let mut firsts = vec![0; ids.len()];
    let mut look = |i: usize, line: &[u8]| {
        if let Ok(x) = serde_json::from_slice::<IdOnly>(line) {
            for (first, _) in firsts.iter_mut().zip(ids).filter(|(f, id)| **f == 0 && **id == x.id) {
                *first = i + 1;
            }
        }
    };
    match text {
        Text::Bytes(data) => data.split(|&b| b == b'\n').enumerate().for_each(|(i, l)| look(i, l)),
        Text::File(path) => {
            use std::io::BufRead;
            if let Ok(file) = std::fs::File::open(path) {
                let lines = std::io::BufReader::new(file).split(b'\n').map_while(Result::ok);
                lines.enumerate().for_each(|(i, l)| look(i, &l));
            }
        }
    }
    firsts
}

fn cannot_read(name: &str, e: std::io::Error) -> LoadError {
    LoadError(vec![LinkError {
        file: name.into(),
        line: 0,
        reason: format!("cannot read: {e}"),
    }])
}

/// Reads and parses a links file. A large one is read in chunks into a few reused buffers
/// while earlier chunks are parsed: a 10M-link file is 2.6 GB, and holding it whole cost that
/// much fresh memory besides the table.
pub fn load(path: &Path, keys: &KeyRing) -> Result<LinkTable, LoadError> {
    let name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| cannot_read(&name, e))?;
    let meta = file.metadata().map_err(|e| cannot_read(&name, e))?;
    let len = usize::try_from(meta.len()).unwrap_or(usize::MAX);
    // Small files, pipes and the like: one plain read to the end.
    if !meta.is_file() || len < 2 * MIN_PIECE_BYTES {
        let data = std::fs::read(path).map_err(|e| cannot_read(&name, e))?;
        return parse_bytes(&data, &name, keys);
    }
    load_in_chunks(file, len, path, &name, keys, CHUNK_BYTES, parser_threads())
}

/// How much of a large file each parser thread takes at a time.
const CHUNK_BYTES: usize = 8 << 20;

fn load_in_chunks(
    file: std::fs::File,
    len: usize,
    path: &Path,
    name: &str,
    keys: &KeyRing,
    chunk: usize,
    threads: usize,
) -> Result<LinkTable, LoadError> {
    // Enough buffers that every parser has one while the next is being read.
    let buffers = threads + 2;
    parse_in_parallel(Text::File(path), name, keys, len, threads, move |jobs, spent| {
        read_chunks(file, len, chunk, buffers, jobs, spent)
    })
}

/// Reads `file` to its end into at most `buffers` buffers, each cut after its last line end
/// (the rest starts the next), and sends them numbered in order. A line longer than a buffer
/// grows it.
fn read_chunks(
    mut file: std::fs::File,
    len: usize,
    chunk: usize,
    buffers: usize,
    jobs: Jobs,
    spent: mpsc::Receiver<Vec<u8>>,
) -> std::io::Result<()> {
    use std::io::Read;
    let mut made = 1;
    let mut buf = vec![0u8; chunk];
    let (mut filled, mut total, mut i) = (0, 0, 0);
    loop {
        let n = match file.read(&mut buf[filled..]) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            read => read?,
        };
        let (at_end, full) = (n == 0, filled + n == buf.len());
        filled += n;
        total += n;
        if !at_end && !full {
            continue;
        }
        if at_end {
            if filled > 0 {
                let _ = jobs.send((i, Chunk::Buf(buf, filled)));
            }
            break;
        }
        let Some(cut) = memchr::memrchr(b'\n', &buf[..filled]).map(|at| at + 1) else {
            buf.resize(buf.len() * 2, 0);
            continue;
        };
        let carried = filled - cut;
        let mut next = match spent.try_recv() {
            Ok(b) => b,
            Err(_) if made < buffers => {
                made += 1;
                vec![0u8; chunk]
            }
            Err(_) => match spent.recv() {
                Ok(b) => b,
                Err(_) => return Ok(()), // every parser is gone; the panic is reported by the scope
            },
        };
        if next.len() <= carried {
            next.resize(carried + chunk, 0);
        }
        next[..carried].copy_from_slice(&buf[cut..filled]);
        if jobs
            .send((i, Chunk::Buf(std::mem::replace(&mut buf, next), cut)))
            .is_err()
        {
            return Ok(());
        }
        i += 1;
        filled = carried;
    }
    // Written to while being read (a reload should rename a finished file into place).
    if total != len {
        return Err(std::io::Error::other(format!(
            "the file changed while being read ({len} bytes, then {total})"
        )));
    }
    Ok(())
}

/// Reading this process's own mappings, for the tests that check where memory lives.
#[cfg(test)]
mod smaps {
    /// `field` (in kB, e.g. `"AnonHugePages:"`) of the mapping that holds `addr`, from
    /// `/proc/self/smaps`.
    pub fn kb_at(addr: usize, field: &str) -> Option<u64> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ').filter(|(r, _)| r.contains('-')) {
                let (a, b) = range.split_once('-')?;
                let (a, b) = (usize::from_str_radix(a, 16).ok()?, usize::from_str_radix(b, 16).ok()?);
                inside = (a..b).contains(&addr);
            } else if let Some(kb) = line.strip_prefix(field).filter(|_| inside) {
                return kb.trim().trim_end_matches("kB").trim().parse().ok();
            }
        }
        None
    }

    /// Whether transparent huge pages can be had here (`always` or `madvise`).
    pub fn thp_on() -> bool {
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
        !thp.is_empty() && !thp.contains("[never]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> KeyRing {
        signature::demo()
    }

    fn line(id: &str) -> String {
        format!(
            r#"{{"id":"{id}","creator":"c","campaign":"k","discount":"code-{id}","target":{{"type":"url","url":"https://a.example/{id}"}}}}"#
        )
    }

    /// Errors as `line: reason`, for comparing two parses.
    fn outcome(r: Result<LinkTable, LoadError>) -> Result<Vec<String>, Vec<String>> {
        match r {
            Ok(t) => Ok(t.sorted_ids().into_iter().map(str::to_string).collect()),
            Err(e) => Err(e.0.iter().map(|e| format!("{}: {}", e.line, e.reason)).collect()),
        }
    }

    /// 40 lines: two blank, one bad JSON (line 14), one indented CRLF duplicate of `l3` (line
    /// 22), and with `long`, one line longer than the small chunks the chunked reader is given.
    fn mixed_lines(long: bool) -> String {
        let mut text = String::new();
        for i in 0..40 {
            match i {
                7 | 8 => text.push('\n'),
                13 => text.push_str("{\"id\":\"broken\"\n"),
                21 => text.push_str(&format!("  {}\r\n", line("l3"))),
                30 if long => text.push_str(&format!("{}{}\n", line("long"), " ".repeat(700))),
                _ => text.push_str(&format!("{}\n", line(&format!("l{i}")))),
            }
        }
        text
    }

    /// `mixed_lines` without its bad JSON and its duplicate.
    fn good_lines(text: &str) -> String {
        text.lines()
            .filter(|l| !l.contains("broken") && !l.starts_with("  "))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    #[test]
    fn pieces_cover_the_input_and_end_after_line_ends() {
        let data = b"aaaa\nbb\n\ncccccc\nd";
        for n in 1..8 {
            for min in 1..6 {
                let p = pieces(data, n, min);
                assert_eq!(p.concat(), data, "n={n} min={min}");
                assert!(p[..p.len() - 1].iter().all(|x| x.ends_with(b"\n")));
                assert!(p.iter().all(|x| !x.is_empty()));
            }
        }
        assert_eq!(pieces(b"", 4, 1), vec![b"" as &[u8]]);
    }

    #[test]
    fn many_pieces_number_lines_and_find_duplicates_as_one_piece_does() {
        let text = mixed_lines(false);
        let whole = outcome(parse_in_pieces(text.as_bytes(), "f", &keys(), vec![text.as_bytes()], 1));
        let want = Err(vec![
            "14: EOF while parsing an object at line 1 column 14".to_string(),
            "22: duplicate id `l3` (first on line 4)".to_string(),
        ]);
        assert_eq!(whole, want);
        for threads in 1..4 {
            for min in [1, 50, 300] {
                let split = pieces(text.as_bytes(), 64, min);
                let got = outcome(parse_in_pieces(text.as_bytes(), "f", &keys(), split, threads));
                assert_eq!(got, want, "threads={threads} min={min}");
            }
        }
        // Without the bad lines, every link is in the table, whichever way it was split.
        let good = good_lines(&text);
        let split = pieces(good.as_bytes(), 64, 1);
        let ids = outcome(parse_in_pieces(good.as_bytes(), "f", &keys(), split, 3)).unwrap();
        assert_eq!(ids.len(), 36);
        let table = parse(&good, "f", &keys()).unwrap();
        assert_eq!(&*table.by_discount("CODE-L0").unwrap().id, "l0");
    }

    /// `text` written to a file of its own, then loaded in chunks of `chunk` bytes.
    fn load_chunked(text: &str, chunk: usize, threads: usize) -> Result<Vec<String>, Vec<String>> {
        let path = std::env::temp_dir().join(format!(
            "cartlink-chunks-{}-{chunk}-{threads}-{}.jsonl",
            std::process::id(),
            text.len()
        ));
        std::fs::write(&path, text).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let got = outcome(load_in_chunks(file, text.len(), &path, "f", &keys(), chunk, threads));
        std::fs::remove_file(&path).unwrap();
        got
    }

    #[test]
    fn a_file_read_in_chunks_reads_as_one_piece_of_memory_does() {
        let text = mixed_lines(true);
        let good = good_lines(&text);
        let unended = good.trim_end().to_string();
        for text in [&text, &good, &unended] {
            let want = outcome(parse_in_pieces(text.as_bytes(), "f", &keys(), vec![text.as_bytes()], 1));
            for chunk in [1, 50, 333, 4096, 1 << 20] {
                for threads in [1, 3] {
                    assert_eq!(
                        load_chunked(text, chunk, threads),
                        want,
                        "chunk={chunk} threads={threads}"
                    );
                }
            }
        }
        assert_eq!(load_chunked(&good, 64, 2).unwrap().len(), 36);
        assert!(load_chunked(&text, 64, 2).unwrap_err()[1].starts_with("22: duplicate id `l3` (first on line 4)"));
    }

    #[test]
    fn load_reads_a_large_file_in_chunks_with_line_numbers_across_them() {
        // Past 2 × MIN_PIECE_BYTES, so `load` takes the chunked reader (8 MiB chunks).
        let mut text = String::new();
        let mut i = 0;
        while text.len() <= 2 * MIN_PIECE_BYTES + CHUNK_BYTES / 2 {
            text.push_str(&line(&format!("l{i}")));
            text.push('\n');
            i += 1;
        }
        let path = std::env::temp_dir().join(format!("cartlink-large-{}.jsonl", std::process::id()));
        std::fs::write(&path, &text).unwrap();
        let table = load(&path, &keys()).unwrap();
        assert_eq!(table.len(), i);
        assert_eq!(
            &*table.get(format!("l{}", i - 1).as_bytes()).unwrap().id,
            format!("l{}", i - 1)
        );
        // A duplicate of the first line, last: its line and the first one's, past every chunk edge.
        std::fs::write(&path, format!("{text}{}\n", line("l0"))).unwrap();
        let errors = outcome(load(&path, &keys())).unwrap_err();
        assert_eq!(errors, vec![format!("{}: duplicate id `l0` (first on line 1)", i + 1)]);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_file_that_changes_while_read_in_chunks_is_refused() {
        let text: String = (0..50).map(|i| line(&format!("l{i}")) + "\n").collect();
        let path = std::env::temp_dir().join(format!("cartlink-changed-{}.jsonl", std::process::id()));
        std::fs::write(&path, &text).unwrap();
        for len in [text.len() - 1, text.len() + 1] {
            let file = std::fs::File::open(&path).unwrap();
            let err = load_in_chunks(file, len, &path, "f", &keys(), 100, 2).unwrap_err();
            assert!(err.0[0].reason.contains("the file changed while being read"), "{err}");
        }
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_buy_target_takes_no_redirect_but_303() {
        let buy =
            r#""target":{"type":"shopify_cart","format":"buy","shop":"b.example","items":[{"variant":1,"qty":1}]}"#;
        for code in [301, 302, 307, 308] {
            let l = format!(r#"{{"id":"b","creator":"c","campaign":"k",{buy},"redirect":{code}}}"#);
            let e = parse(&l, "f", &keys()).unwrap_err().to_string();
            assert!(e.contains("f:1:") && e.contains("answers 303"), "{code}: {e}");
        }
        for l in [
            format!(r#"{{"id":"b","creator":"c","campaign":"k",{buy},"redirect":303}}"#),
            format!(r#"{{"id":"b","creator":"c","campaign":"k",{buy}}}"#),
        ] {
            assert_eq!(parse(&l, "f", &keys()).unwrap().get(b"b").unwrap().redirect, 303);
        }
    }

    #[test]
    fn every_cart_of_a_link_gets_the_stock_rule_and_bad_sections_are_refused() {
        let cart =
            |v: u64| format!(r#"{{"type":"shopify_cart","shop":"b.example","items":[{{"variant":{v},"qty":1}}]}}"#);
        let url = r#"{"type":"url","url":"https://b.example/x"}"#;
        let link =
            |target: &str, rest: &str| format!(r#"{{"id":"s","creator":"c","campaign":"k","target":{target}{rest}}}"#);
        let ok = link(
            url,
            &format!(
                r#","geo":{{"FR":{},"DE":{url}}},"device":{{"ios":{}}},"variants":[{{"weight":1,"target":{}}}],"stock":{{"policy":"swap","substitutes":{{"2":9}}}}"#,
                cart(2),
                cart(3),
                cart(4)
            ),
        );
        let table = parse(&ok, "f", &keys()).unwrap();
        let l = table.get(b"s").unwrap();
        assert!(l.stock.is_none(), "a URL target has nothing to watch");
        let watched: Vec<Vec<(u64, Option<u64>)>> = l
            .stock_rules()
            .map(|r| r.items.iter().map(|i| (i.id, i.substitute)).collect())
            .collect();
        assert_eq!(watched, vec![vec![(2, Some(9))], vec![(3, None)], vec![(4, None)]]);
        // A route's cart whose items cannot be watched (BigCommerce by sku) is not watched; the
        // link still loads. As the target, it is refused.
        let by_sku = r#"{"type":"bigcommerce_cart","shop":"b.example","items":[{"sku":"TEE-1","qty":1}]}"#;
        let table = parse(
            &link(
                &cart(2),
                &format!(r#","geo":{{"FR":{by_sku}}},"stock":{{"policy":"drop"}}"#),
            ),
            "f",
            &keys(),
        )
        .unwrap();
        assert_eq!(table.get(b"s").unwrap().stock_rules().count(), 1);
        let e = parse(&link(by_sku, r#","stock":{"policy":"drop"}"#), "f", &keys())
            .unwrap_err()
            .to_string();
        assert!(e.contains("`product` ids"), "{e}");
        for (line, why) in [
            (link(url, r#","stock":{"policy":"drop"}"#), "needs a cart target"),
            (
                link(&cart(2), r#","stock":{"policy":"drop","substitutes":{"2":9}}"#),
                "need the `swap` policy",
            ),
            (
                link(&cart(2), r#","stock":{"policy":"swap","substitutes":{"7":9}}"#),
                "`7`, which is not an item of the link's carts",
            ),
        ] {
            let e = parse(&line, "f", &keys()).unwrap_err().to_string();
            assert!(e.contains("f:1:") && e.contains(why), "{line}: {e}");
        }
    }

    #[test]
    fn an_all_digit_sku_in_a_bigcommerce_checkout_is_refused() {
        let checkout = |sku: &str| {
            format!(
                r#"{{"id":"b","creator":"c","campaign":"k","target":{{"type":"bigcommerce_cart","format":"checkout","shop":"t.example","items":[{{"product":77,"qty":1}},{{"sku":"{sku}","qty":2}}]}}}}"#
            )
        };
        let e = parse(&checkout("10042"), "f", &keys()).unwrap_err().to_string();
        assert!(e.contains("f:1:") && e.contains("`10042` is all digits"), "{e}");
        assert!(parse(&checkout("CAP-1"), "f", &keys()).is_ok());
    }

    #[test]
    fn a_lookup_started_early_finds_what_get_finds_even_when_hashes_collide() {
        let text: String = ["a", "b", "c"].iter().map(|id| line(id) + "\n").collect();
        let parsed = parse(&text, "f", &keys()).unwrap();
        // First under b's hash, an entry that holds a: a lookup of b meets it before b's own,
        // and only the link whose id matches may come back.
        let mut table = LinkTable::default();
        let hash = hash_id(b"b");
        assert!(table.links.insert(hash, parsed.get(b"a").unwrap().clone()).is_ok());
        for link in parsed.iter() {
            assert!(table.links.insert(hash_id(link.id.as_bytes()), link.clone()).is_ok());
        }
        assert_eq!(table.links.candidate(hash).map(|l| &*l.id), Some("a"), "met first");
        for id in ["a", "b", "c", "d", ""] {
            let early = table
                .start_get(id.as_bytes())
                .fetch()
                .finish()
                .map(|l| l.id.to_string());
            assert_eq!(early.as_deref(), table.get(id.as_bytes()).map(|l| &*l.id), "{id}");
            assert_eq!(early.as_deref(), ["a", "b", "c"].contains(&id).then_some(id));
            // Not fetched: the full search still answers.
            let unfetched = table.start_get(id.as_bytes()).finish().map(|l| l.id.to_string());
            assert_eq!(unfetched, early, "{id}");
        }
    }

    #[test]
    fn a_file_appended_to_itself_reports_the_first_duplicates_only() {
        let text: String = (0..3000).map(|i| line(&format!("l{}", i % 100)) + "\n").collect();
        let errors = outcome(parse_in_pieces(
            text.as_bytes(),
            "f",
            &keys(),
            pieces(text.as_bytes(), 8, 1),
            2,
        ))
        .unwrap_err();
        assert_eq!(errors.len(), MAX_REPORTED);
        assert_eq!(errors[0], "101: duplicate id `l0` (first on line 1)");
        assert_eq!(errors[19], "120: duplicate id `l19` (first on line 20)");
    }
}
