//! Destinations rendered once, when the links table loads.
//!
//! Each destination is one URL string, built with the `url` crate, holding a placeholder where
//! the click ID goes. A request copies the part before it, writes the 36-character click ID,
//! optionally appends forwarded extras (`fbclid`, unpinned `utm_*`…), and copies the rest.
//! The click parameter is always the last query parameter, so cutting it out gives the same URL
//! without a click ID (for bots and HEAD probes).

use super::config::{
    BigFormat, BigTarget, Platform, ShopifyFormat, ShopifyTarget, TargetConfig, UrlTarget, UtmConfig, WooFormat,
    WooTarget,
};
use url::Url;

/// Where the click ID goes at load time; 36 bytes like a hyphenated UUID, URL-safe, and not
/// something a real link contains (checked: exactly one occurrence after rendering).
pub(crate) const PLACEHOLDER: &str = "clickid0placeholder0000000000000000x";
pub const CLICK_ID_LEN: usize = 36;

/// Query keys a visitor may add to the destination when the link does not own them.
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

#[cfg(test)]
#[test]
fn forwardable_index_matches_the_list() {
    for (i, k) in FORWARDABLE.iter().enumerate() {
        assert_eq!(forwardable_index(k), Some(i));
    }
    assert_eq!(forwardable_index("utm_"), None);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetType {
    Url,
    ShopifyCart,
    WoocommerceCart,
    BigcommerceCart,
}

impl TargetType {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetType::Url => "url",
            TargetType::ShopifyCart => "shopify_cart",
            TargetType::WoocommerceCart => "woocommerce_cart",
            TargetType::BigcommerceCart => "bigcommerce_cart",
        }
    }
}

/// Position of `key` in [`FORWARDABLE`].
pub fn forwardable_index(key: &str) -> Option<usize> {
    Some(match key {
        "fbclid" => 0,
        "ttclid" => 1,
        "gclid" => 2,
        "utm_source" => 3,
        "utm_medium" => 4,
        "utm_campaign" => 5,
        "utm_content" => 6,
        "utm_term" => 7,
        "utm_id" => 8,
        _ => return None,
    })
}

/// How forwarded extras are written into this destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Extras {
    /// `&key=value` in the destination's own query.
    Query,
    /// Inside a query value that is itself a URL (Shopify `/discount/CODE?redirect=…`):
    /// encoded once more.
    Nested,
    /// UCP `/buy`: as `attribution/key=value`.
    Attribution,
}

/// A pre-rendered destination.
#[derive(Debug)]
pub struct Destination {
    url: Box<str>,
    cut_from: u32,
    click_at: u32,
    pub(crate) extras: Extras,
    /// Bit i set: `FORWARDABLE[i]` is owned by the link and never taken from the visitor.
    pub(crate) pinned: u16,
    pub target_type: TargetType,
    /// UCP `/buy` must answer 303 with `Referrer-Policy: no-referrer`.
    pub see_other: bool,
}

impl Destination {
    /// Starts loading the URL into the cache (see [`crate::prefetch`]): all of it, since the
    /// answer copies all of it; a cart URL with its attribution parameters is often more than
    /// three lines long. Capped, for the odd very long URL.
    pub fn prefetch(&self) {
        crate::prefetch::read(self.url.as_ptr(), self.url.len().min(512));
    }

    /// The URL up to the click ID (includes the click parameter's key).
    pub fn head(&self) -> &str {
        &self.url[..self.click_at as usize]
    }
    /// What follows the click ID (usually empty, or a fragment).
    pub fn tail(&self) -> &str {
        &self.url[self.click_at as usize + CLICK_ID_LEN..]
    }
    /// The URL without any click ID, in two parts.
    pub fn plain(&self) -> (&str, &str) {
        (&self.url[..self.cut_from as usize], self.tail())
    }
    pub fn plain_len(&self) -> usize {
        self.cut_from as usize + self.tail().len()
    }
    pub fn is_pinned(&self, forwardable_index: usize) -> bool {
        self.pinned & (1 << forwardable_index) != 0
    }
}

/// What every destination of one link shares.
pub(crate) struct LinkParams<'a> {
    /// Written into Shopify carts (`attributes[cl_link]`) so orders name their link.
    pub link_id: &'a str,
    pub creator: &'a str,
    pub discount: Option<&'a str>,
    pub utm: &'a [(&'static str, &'a str)],
}

impl<'a> LinkParams<'a> {
    pub fn utm_pairs(utm: Option<&'a UtmConfig>) -> Vec<(&'static str, &'a str)> {
        let Some(u) = utm else { return Vec::new() };
        [
            ("utm_source", &u.source),
            ("utm_medium", &u.medium),
            ("utm_campaign", &u.campaign),
            ("utm_content", &u.content),
            ("utm_term", &u.term),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
        .collect()
    }
}

/// `https://host/` of a target (already validated by `render`).
pub(crate) fn home_of(target: &TargetConfig) -> String {
    let host = match target {
        TargetConfig::Url(t) => Url::parse(&t.url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string))
            .unwrap_or_default(),
        TargetConfig::ShopifyCart(ShopifyTarget { shop, .. })
        | TargetConfig::WoocommerceCart(WooTarget { shop, .. })
        | TargetConfig::BigcommerceCart(BigTarget { shop, .. }) => shop.clone(),
    };
    let mut u = Url::parse("https://home.invalid/").expect("static URL parses");
    let _ = u.set_host(Some(&host));
    u.into()
}

fn https_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("`{text}` is not a URL: {e}"))?;
    if url.scheme() != "https" {
        return Err(format!("`{text}`: only https destinations are allowed"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{text}` has no host"));
    }
    if url.path().starts_with("//") {
        // `https://shop//evil.example/x` would become a protocol-relative redirect path.
        return Err(format!("`{text}`: a path may not start with `//`"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("`{text}` must not carry credentials"));
    }
    Ok(url)
}

/// `https://shop` for a shop that is a bare host name.
fn shop_base(shop: &str) -> Result<String, String> {
    if !is_plain_host(shop) {
        // Anything unusual (upper case, IDNA, IP addresses, odd labels) goes through the url
        // crate, which accepts it only if it serialises back to exactly `shop`.
        let url = https_url(&format!("https://{shop}/")).map_err(|_| format!("shop `{shop}` is not a host name"))?;
        if url.host_str() != Some(shop) || url.port().is_some() {
            return Err(format!("shop `{shop}` must be a bare host name like `brand.example`"));
        }
    }
    Ok(format!("https://{shop}"))
}

/// Lower-case letter-digit-hyphen labels, which the url crate keeps exactly as written (no
/// IDNA mapping, no `xn--` label to check, and a last label that cannot read as an IPv4
/// number). Checked by hand: parsing a URL per link was a tenth of loading a large table.
fn is_plain_host(host: &str) -> bool {
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && !l.starts_with('-')
            && !l.ends_with('-')
            && !l.starts_with("xn--")
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    let last = host.rsplit('.').next().unwrap_or("");
    host.len() <= 253
        && host.split('.').all(label_ok)
        && last.bytes().any(|b| b.is_ascii_lowercase())
        && !last.starts_with("0x")
}

#[cfg(test)]
#[test]
fn plain_hosts_are_what_the_url_crate_keeps() {
    for h in [
        "brand.example",
        "a-b.c0.example",
        "shop1.myshopify.com",
        "x.y1z",
        "localhost",
    ] {
        assert!(is_plain_host(h), "{h}");
        let url = Url::parse(&format!("https://{h}/")).unwrap();
        assert_eq!(url.host_str(), Some(h));
    }
    for h in [
        "Brand.example",
        "1.2.3.4",
        "a.123",
        "a.0x1f",
        "xn--bcher-kva.example",
        "-a.example",
        "a-.example",
        "a..b",
        "",
        "a.example.",
        "bücher.example",
        "a_b.example",
    ] {
        assert!(!is_plain_host(h), "{h}");
    }
}

fn check_qty(qty: u32) -> Result<(), String> {
    if (1..=999).contains(&qty) {
        Ok(())
    } else {
        Err(format!("qty {qty} must be 1-999"))
    }
}

/// `items` joined as `A:Q,B:Q` — integers and validated SKUs only, so nothing to escape.
fn item_list<I: Iterator<Item = (String, u32)>>(items: I) -> Result<String, String> {
    let mut out = String::new();
    for (id, qty) in items {
        check_qty(qty)?;
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(&id);
        out.push(':');
        out.push_str(&qty.to_string());
    }
    if out.is_empty() {
        return Err("`items` must not be empty".into());
    }
    Ok(out)
}

/// A path segment as the url crate's `path_segments_mut().push` writes it in an https URL.
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'<')
    .add(b'>')
    .add(b'`')
    .add(b'#')
    .add(b'?')
    .add(b'{')
    .add(b'}')
    .add(b'/')
    .add(b'%')
    .add(b'\\');

/// `application/x-www-form-urlencoded`, byte for byte what `form_urlencoded` writes, straight
/// into `out` (the crate's iterator hands over one piece per escaped byte).
fn push_form(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.reserve(s.len());
    let mut run = 0;
    for (i, b) in s.bytes().enumerate() {
        if matches!(b, b'*' | b'-' | b'.' | b'0'..=b'9' | b'A'..=b'Z' | b'_' | b'a'..=b'z') {
            continue;
        }
        // Escaped bytes include every byte of a multi-byte character, so a run of unescaped
        // ones always starts and ends on character boundaries.
        if run < i {
            out.push_str(&s[run..i]);
        }
        run = i + 1;
        if b == b' ' {
            out.push('+');
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
    out.push_str(&s[run..]);
}

#[cfg(test)]
#[test]
fn push_form_matches_form_urlencoded() {
    let samples = [
        "",
        "plain",
        "a b+c&d=e/f?g#h%i",
        "Grüße, 東京 🎉",
        "attributes[cl_click]",
        "*-._~!$'()",
        "\u{0}\u{1f}\u{7f}",
    ];
    for s in samples {
        let mut out = String::from("x");
        push_form(&mut out, s);
        let want: String = form_urlencoded::byte_serialize(s.as_bytes()).collect();
        assert_eq!(out, format!("x{want}"), "{s:?}");
    }
}

/// A destination being rendered: scheme, host and path; the query so far; the fragment.
/// Built as strings: the url crate re-serialises a URL on every change, which made rendering
/// half of loading a large links file.
struct Draft {
    base: String,
    query: String,
    fragment: Option<String>,
    /// Forwardable keys the link owns, as plain keys and as `attribution/` keys.
    owned: u16,
    owned_attribution: u16,
}

impl Draft {
    fn new(base: String) -> Draft {
        Draft {
            base,
            // Room for a typical cart's pairs, so the query is not regrown pair by pair.
            query: String::with_capacity(192),
            fragment: None,
            owned: 0,
            owned_attribution: 0,
        }
    }

    /// A validated URL, keeping its query pairs except those named in `replaced`.
    fn from_url(url: &Url, replaced: &[(&str, &str)]) -> Draft {
        let mut d = Draft::new(url[..url::Position::AfterPath].to_string());
        d.fragment = url.fragment().map(str::to_string);
        if url.query().is_some() {
            for (k, v) in url.query_pairs() {
                if !replaced.iter().any(|(p, _)| *p == k) {
                    d.pair(&k, &v);
                }
            }
        }
        d
    }

    fn pair(&mut self, k: &str, v: &str) {
        if let Some(i) = forwardable_index(k) {
            self.owned |= 1 << i;
        }
        if let Some(i) = k.strip_prefix("attribution/").and_then(forwardable_index) {
            self.owned_attribution |= 1 << i;
        }
        if !self.query.is_empty() {
            self.query.push('&');
        }
        push_form(&mut self.query, k);
        self.query.push('=');
        push_form(&mut self.query, v);
    }

    fn pairs(&mut self, pairs: &[(&str, &str)]) {
        for (k, v) in pairs {
            self.pair(k, v);
        }
    }

    /// The URL from byte `at` of the base on, with `key=PLACEHOLDER` as the last query pair,
    /// and without it.
    fn with_and_without(&self, at: usize, key: &str) -> (String, String) {
        let fragment = self.fragment.as_ref().map_or(0, |f| f.len() + 1);
        let mut plain = String::with_capacity(self.base.len() - at + self.query.len() + 1 + fragment);
        plain.push_str(&self.base[at..]);
        if !self.query.is_empty() {
            plain.push('?');
            plain.push_str(&self.query);
        }
        let mut with = String::with_capacity(plain.len() + 3 * key.len() + 2 + CLICK_ID_LEN + fragment);
        with.push_str(&plain);
        with.push(if self.query.is_empty() { '?' } else { '&' });
        push_form(&mut with, key);
        with.push('=');
        with.push_str(PLACEHOLDER);
        if let Some(f) = &self.fragment {
            for s in [&mut plain, &mut with] {
                s.push('#');
                s.push_str(f);
            }
        }
        (with, plain)
    }

    fn finish(self, key: &str, extras: Extras, kind: TargetType, see_other: bool) -> Result<Destination, String> {
        let (with, plain) = self.with_and_without(0, key);
        let owned = match extras {
            Extras::Attribution => self.owned_attribution,
            Extras::Query | Extras::Nested => self.owned,
        };
        finish(&with, &plain, extras, kind, see_other, owned)
    }
}

/// Renders one target into a [`Destination`] (`apply_discount` false for fallbacks).
pub(crate) fn render(target: &TargetConfig, p: &LinkParams, apply_discount: bool) -> Result<Destination, String> {
    let discount = p.discount.filter(|_| apply_discount);
    match target {
        TargetConfig::Url(UrlTarget { url, platform }) => {
            let url = https_url(url)?;
            match (discount, platform.unwrap_or(Platform::Generic)) {
                (Some(code), Platform::Shopify) => {
                    // https://shop/discount/CODE?redirect=/path?query&cl_click=ID
                    let mut inner = Draft::from_url(&url, p.utm);
                    inner.pairs(p.utm);
                    let origin = &url[..url::Position::BeforePath];
                    let (with, without) = inner.with_and_without(origin.len(), "cl_click");
                    let mut outer = String::with_capacity(origin.len() + code.len() + 3 * with.len() / 2 + 24);
                    outer.push_str(origin);
                    outer.push_str("/discount/");
                    outer.extend(percent_encoding::utf8_percent_encode(code, PATH_SEGMENT));
                    outer.push_str("?redirect=");
                    let mut plain = outer.clone();
                    push_form(&mut outer, &with);
                    push_form(&mut plain, &without);
                    finish(&outer, &plain, Extras::Nested, TargetType::Url, false, inner.owned)
                }
                (code, _) => {
                    let mut pairs = p.utm.to_vec();
                    if let Some(code) = code {
                        // A generic store has no standard discount parameter; `discount=` is the
                        // most common one (Shopify storefront URLs honour it too).
                        pairs.push(("discount", code));
                    }
                    let mut d = Draft::from_url(&url, &pairs);
                    d.pairs(&pairs);
                    d.finish("cl_click", Extras::Query, TargetType::Url, false)
                }
            }
        }
        TargetConfig::ShopifyCart(ShopifyTarget {
            shop,
            items,
            format,
            locale,
            storefront,
        }) => {
            let mut base = shop_base(shop)?;
            let list = item_list(items.iter().map(|i| (i.variant.to_string(), i.qty)))?;
            if let Some(loc) = locale {
                let ok = (2..=5).contains(&loc.len()) && loc.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
                if !ok {
                    return Err(format!("locale `{loc}` must look like `fr` or `en-ca`"));
                }
                base.push('/');
                base.push_str(loc);
            }
            base.push_str(if *format == ShopifyFormat::Buy {
                "/buy/"
            } else {
                "/cart/"
            });
            base.push_str(&list);
            let mut d = Draft::new(base);
            match format {
                ShopifyFormat::Cart => {
                    if let Some(code) = discount {
                        d.pair("discount", code);
                    }
                    d.pair("ref", p.creator);
                    if !p.link_id.is_empty() {
                        d.pair("attributes[cl_link]", p.link_id);
                    }
                    d.pairs(p.utm);
                    if *storefront {
                        d.pair("storefront", "true");
                    }
                    d.finish("attributes[cl_click]", Extras::Query, TargetType::ShopifyCart, false)
                }
                ShopifyFormat::Buy => {
                    if *storefront {
                        return Err("`storefront` is only for the legacy `cart` format".into());
                    }
                    if let Some(code) = discount {
                        d.pair("discounts/codes/0", code);
                    }
                    d.pair("attribution/ref", p.creator);
                    if !p.link_id.is_empty() {
                        d.pair("attribution/cl_link", p.link_id);
                    }
                    for (k, v) in p.utm {
                        d.pair(&format!("attribution/{k}"), v);
                    }
                    d.finish(
                        "attribution/cl_click",
                        Extras::Attribution,
                        TargetType::ShopifyCart,
                        true,
                    )
                }
            }
        }
        TargetConfig::WoocommerceCart(WooTarget { shop, items, format }) => {
            let mut base = shop_base(shop)?;
            let mut pairs: Vec<(&str, String)> = Vec::new();
            match format {
                WooFormat::AddToCart => {
                    let [item] = items.as_slice() else {
                        return Err(
                            "woocommerce `add_to_cart` takes exactly one item; use `checkout_link` for several".into(),
                        );
                    };
                    check_qty(item.qty)?;
                    base.push('/');
                    pairs.push(("add-to-cart", item.product.to_string()));
                    pairs.push(("quantity", item.qty.to_string()));
                    if let Some(v) = item.variation {
                        pairs.push(("variation_id", v.to_string()));
                    }
                }
                WooFormat::CheckoutLink => {
                    base.push_str("/checkout-link/");
                    let list = item_list(
                        items
                            .iter()
                            .map(|i| (i.variation.unwrap_or(i.product).to_string(), i.qty)),
                    )?;
                    pairs.push(("products", list));
                }
            }
            if let Some(code) = discount {
                pairs.push(("coupon", code.to_string()));
            }
            commerce(base, &pairs, p.utm, TargetType::WoocommerceCart)
        }
        TargetConfig::BigcommerceCart(BigTarget { shop, items, format }) => {
            let mut base = shop_base(shop)?;
            let item_id = |i: &super::config::BigItem| -> Result<String, String> {
                match (i.product, &i.sku) {
                    (Some(p), None) => Ok(p.to_string()),
                    (None, Some(s))
                        if !s.is_empty()
                            && s.len() <= 64
                            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) =>
                    {
                        Ok(s.clone())
                    }
                    (None, Some(s)) => Err(format!("sku `{s}` must be 1-64 of [A-Za-z0-9._-]")),
                    _ => Err("each bigcommerce item needs exactly one of `product` or `sku`".into()),
                }
            };
            let mut pairs: Vec<(&str, String)> = Vec::new();
            match format {
                BigFormat::Cart | BigFormat::Buy => {
                    let [item] = items.as_slice() else {
                        return Err(
                            "bigcommerce `cart` and `buy` take exactly one item; use `checkout` for several".into(),
                        );
                    };
                    check_qty(item.qty)?;
                    base.push_str("/cart.php");
                    let action = if *format == BigFormat::Buy { "buy" } else { "add" };
                    pairs.push(("action", action.into()));
                    pairs.push((
                        if item.product.is_some() { "product_id" } else { "sku" },
                        item_id(item)?,
                    ));
                    pairs.push(("qty", item.qty.to_string()));
                    if let Some(code) = discount {
                        pairs.push(("couponcode", code.to_string()));
                    }
                }
                BigFormat::Checkout => {
                    base.push_str("/checkout/");
                    // `products=` takes ids and SKUs in one list: digits read as a product id.
                    if let Some(sku) = items
                        .iter()
                        .filter_map(|i| i.sku.as_deref())
                        .find(|s| s.bytes().all(|b| b.is_ascii_digit()))
                    {
                        return Err(format!(
                            "sku `{sku}` is all digits: BigCommerce's checkout URL would read it as a product id; give the item's `product` id instead"
                        ));
                    }
                    let ids = items
                        .iter()
                        .map(|i| item_id(i).map(|id| (id, i.qty)))
                        .collect::<Result<Vec<_>, _>>()?;
                    pairs.push(("products", item_list(ids.into_iter())?));
                    if let Some(code) = discount {
                        pairs.push(("coupon", code.to_string()));
                    }
                }
            }
            commerce(base, &pairs, p.utm, TargetType::BigcommerceCart)
        }
    }
}

/// A cart URL: the platform's pairs, then the link's UTM pairs, then the click ID.
fn commerce(
    base: String,
    pairs: &[(&str, String)],
    utm: &[(&str, &str)],
    kind: TargetType,
) -> Result<Destination, String> {
    let mut d = Draft::new(base);
    for (k, v) in pairs {
        d.pair(k, v);
    }
    d.pairs(utm);
    d.finish("cl_click", Extras::Query, kind, false)
}

fn finish(
    with: &str,
    plain: &str,
    extras: Extras,
    kind: TargetType,
    see_other: bool,
    pinned: u16,
) -> Result<Destination, String> {
    // Built once: making a searcher per link was 5 % of loading a large table.
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(PLACEHOLDER));
    let finder = &*FINDER;
    let click_at = finder.find(with.as_bytes());
    let once = click_at.is_some_and(|at| finder.find(&with.as_bytes()[at + 1..]).is_none());
    let (Some(click_at), true) = (click_at, once) else {
        return Err("destination contains the reserved click placeholder".into());
    };
    let mut cut_from = with
        .bytes()
        .zip(plain.bytes())
        .take_while(|(a, b)| a == b)
        .count()
        .min(click_at);
    // Never cut inside a percent-encoded triplet (`%26cl_click…` vs `%23fragment` share `%`).
    for back in [1, 2] {
        if cut_from >= back && with.as_bytes()[cut_from - back] == b'%' {
            cut_from -= back;
            break;
        }
    }
    if with[click_at + CLICK_ID_LEN..] != plain[cut_from..] {
        return Err("destination could not be split around its click ID".into());
    }
    if with.len() > 8000 {
        return Err(format!("destination is {} bytes; 8000 is the limit", with.len()));
    }
    Ok(Destination {
        url: with.into(),
        cut_from: cut_from as u32,
        click_at: click_at as u32,
        extras,
        pinned,
        target_type: kind,
        see_other,
    })
}
