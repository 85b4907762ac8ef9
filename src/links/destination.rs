//! Destinations rendered once, when the links table loads.
//!
//! Each destination is one URL string, built with the `url` crate, holding a placeholder where
//! the click ID goes. A request copies the part before it, writes the 36-character click ID,
//! optionally appends forwarded extras (`fbclid`, unpinned `utm_*`…), and copies the rest.
//! The click parameter is always the last query parameter, so cutting it out gives the same URL
//! without a click ID (for bots and HEAD probes).

use super::config::{BigFormat, Platform, ShopifyFormat, TargetConfig, UtmConfig, WooFormat};
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
        TargetConfig::Url { url, .. } => Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string))
            .unwrap_or_default(),
        TargetConfig::ShopifyCart { shop, .. }
        | TargetConfig::WoocommerceCart { shop, .. }
        | TargetConfig::BigcommerceCart { shop, .. } => shop.clone(),
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

fn shop_url(shop: &str) -> Result<Url, String> {
    let url = https_url(&format!("https://{shop}/")).map_err(|_| format!("shop `{shop}` is not a host name"))?;
    if url.host_str() != Some(shop) || url.port().is_some() {
        return Err(format!("shop `{shop}` must be a bare host name like `brand.example`"));
    }
    Ok(url)
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

/// Sets link-owned pairs (replacing any the destination already carries; other params are
/// kept) and returns every query key the destination ends up with.
fn set_pairs(url: &mut Url, pairs: &[(&str, &str)]) -> Vec<String> {
    let keep: Vec<(String, String)> = match url.query() {
        None => Vec::new(),
        Some(_) => url
            .query_pairs()
            .filter(|(k, _)| !pairs.iter().any(|(p, _)| p == k))
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect(),
    };
    url.set_query(None);
    let mut keys: Vec<String> = keep.iter().map(|(k, _)| k.clone()).collect();
    keys.extend(pairs.iter().map(|(k, _)| k.to_string()));
    if keys.is_empty() {
        return keys;
    }
    let mut q = url.query_pairs_mut();
    for (k, v) in &keep {
        q.append_pair(k, v);
    }
    for (k, v) in pairs {
        q.append_pair(k, v);
    }
    drop(q);
    keys
}

/// Renders one target into a [`Destination`] (`apply_discount` false for fallbacks).
pub(crate) fn render(target: &TargetConfig, p: &LinkParams, apply_discount: bool) -> Result<Destination, String> {
    let discount = p.discount.filter(|_| apply_discount);
    let utm: Vec<(&str, &str)> = p.utm.to_vec();
    match target {
        TargetConfig::Url { url, platform } => {
            let mut dest = https_url(url)?;
            let mut pairs = utm;
            match (discount, platform.unwrap_or(Platform::Generic)) {
                (Some(code), Platform::Shopify) => {
                    // https://shop/discount/CODE?redirect=/path?query&cl_click=ID
                    let keys = set_pairs(&mut dest, &pairs);
                    let mut inner_path = dest.path().to_string();
                    if let Some(q) = dest.query() {
                        inner_path.push('?');
                        inner_path.push_str(q);
                    }
                    let (with, without) = inner_with_click(&inner_path, dest.fragment(), "cl_click")?;
                    let mut outer = dest.clone();
                    outer.set_fragment(None);
                    outer.set_query(None);
                    outer
                        .path_segments_mut()
                        .map_err(|_| "bad base URL")?
                        .clear()
                        .push("discount")
                        .push(code);
                    let mut plain = outer.clone();
                    outer.query_pairs_mut().append_pair("redirect", &with);
                    plain.query_pairs_mut().append_pair("redirect", &without);
                    finish(
                        outer.as_str(),
                        plain.as_str(),
                        Extras::Nested,
                        TargetType::Url,
                        false,
                        &keys,
                    )
                }
                (code, _) => {
                    if let Some(code) = code {
                        // A generic store has no standard discount parameter; `discount=` is the
                        // most common one (Shopify storefront URLs honour it too).
                        pairs.push(("discount", code));
                    }
                    let keys = set_pairs(&mut dest, &pairs);
                    with_click_param(dest, "cl_click", Extras::Query, TargetType::Url, false, &keys)
                }
            }
        }
        TargetConfig::ShopifyCart {
            shop,
            items,
            format,
            locale,
            storefront,
        } => {
            let mut dest = shop_url(shop)?;
            let list = item_list(items.iter().map(|i| (i.variant.to_string(), i.qty)))?;
            {
                let mut seg = dest.path_segments_mut().map_err(|_| "bad base URL")?;
                seg.clear();
                if let Some(loc) = locale {
                    let ok =
                        (2..=5).contains(&loc.len()) && loc.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
                    if !ok {
                        return Err(format!("locale `{loc}` must look like `fr` or `en-ca`"));
                    }
                    seg.push(loc);
                }
                seg.push(if *format == ShopifyFormat::Buy { "buy" } else { "cart" });
                seg.push(&list);
            }
            match format {
                ShopifyFormat::Cart => {
                    let mut pairs: Vec<(&str, &str)> = Vec::new();
                    if let Some(code) = discount {
                        pairs.push(("discount", code));
                    }
                    pairs.push(("ref", p.creator));
                    if !p.link_id.is_empty() {
                        pairs.push(("attributes[cl_link]", p.link_id));
                    }
                    pairs.extend(utm);
                    if *storefront {
                        pairs.push(("storefront", "true"));
                    }
                    let keys = set_pairs(&mut dest, &pairs);
                    with_click_param(
                        dest,
                        "attributes[cl_click]",
                        Extras::Query,
                        TargetType::ShopifyCart,
                        false,
                        &keys,
                    )
                }
                ShopifyFormat::Buy => {
                    if *storefront {
                        return Err("`storefront` is only for the legacy `cart` format".into());
                    }
                    let mut owned: Vec<(String, &str)> = Vec::new();
                    if let Some(code) = discount {
                        owned.push(("discounts/codes/0".into(), code));
                    }
                    owned.push(("attribution/ref".into(), p.creator));
                    for (k, v) in utm {
                        owned.push((format!("attribution/{k}"), v));
                    }
                    let pairs: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (k.as_str(), *v)).collect();
                    let keys = set_pairs(&mut dest, &pairs);
                    with_click_param(
                        dest,
                        "attribution/cl_click",
                        Extras::Attribution,
                        TargetType::ShopifyCart,
                        true,
                        &keys,
                    )
                }
            }
        }
        TargetConfig::WoocommerceCart { shop, items, format } => {
            let mut dest = shop_url(shop)?;
            let mut pairs: Vec<(&str, String)> = Vec::new();
            match format {
                WooFormat::AddToCart => {
                    let [item] = items.as_slice() else {
                        return Err(
                            "woocommerce `add_to_cart` takes exactly one item; use `checkout_link` for several".into(),
                        );
                    };
                    check_qty(item.qty)?;
                    pairs.push(("add-to-cart", item.product.to_string()));
                    pairs.push(("quantity", item.qty.to_string()));
                    if let Some(v) = item.variation {
                        pairs.push(("variation_id", v.to_string()));
                    }
                }
                WooFormat::CheckoutLink => {
                    dest.set_path("/checkout-link/");
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
            commerce_query(dest, pairs, utm, TargetType::WoocommerceCart)
        }
        TargetConfig::BigcommerceCart { shop, items, format } => {
            let mut dest = shop_url(shop)?;
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
                BigFormat::Cart => {
                    let [item] = items.as_slice() else {
                        return Err("bigcommerce `cart` takes exactly one item; use `checkout` for several".into());
                    };
                    check_qty(item.qty)?;
                    dest.set_path("/cart.php");
                    pairs.push(("action", "add".into()));
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
                    dest.set_path("/checkout/");
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
            commerce_query(dest, pairs, utm, TargetType::BigcommerceCart)
        }
    }
}

fn commerce_query(
    mut dest: Url,
    pairs: Vec<(&str, String)>,
    utm: Vec<(&str, &str)>,
    kind: TargetType,
) -> Result<Destination, String> {
    let mut all: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    all.extend(utm);
    let keys = set_pairs(&mut dest, &all);
    with_click_param(dest, "cl_click", Extras::Query, kind, false, &keys)
}

/// `path?query` + `#fragment` as relative URLs: with `key=PLACEHOLDER` appended, and without.
fn inner_with_click(path_and_query: &str, fragment: Option<&str>, key: &str) -> Result<(String, String), String> {
    let base = Url::parse("https://inner.invalid/").expect("static URL parses");
    let mut inner = base.join(path_and_query).map_err(|e| e.to_string())?;
    let mut plain = inner.clone();
    plain.set_fragment(fragment);
    inner.query_pairs_mut().append_pair(key, PLACEHOLDER);
    inner.set_fragment(fragment);
    let rel = |u: &Url| u[url::Position::BeforePath..].to_string();
    Ok((rel(&inner), rel(&plain)))
}

fn with_click_param(
    mut dest: Url,
    key: &str,
    extras: Extras,
    kind: TargetType,
    see_other: bool,
    keys: &[String],
) -> Result<Destination, String> {
    let plain = dest.as_str().to_string();
    let fragment = dest.fragment().map(str::to_string);
    if fragment.is_some() {
        dest.set_fragment(None);
    }
    dest.query_pairs_mut().append_pair(key, PLACEHOLDER);
    if fragment.is_some() {
        dest.set_fragment(fragment.as_deref());
    }
    finish(dest.as_str(), &plain, extras, kind, see_other, keys)
}

fn finish(
    with: &str,
    plain: &str,
    extras: Extras,
    kind: TargetType,
    see_other: bool,
    keys: &[String],
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
    let prefix = if extras == Extras::Attribution {
        "attribution/"
    } else {
        ""
    };
    // One pass over the link's own keys (a loop of string compares per forwardable name
    // costed more than the rest of the load together at a million links).
    let mut pinned = 0u16;
    for key in keys {
        let bare = if prefix.is_empty() {
            Some(key.as_str())
        } else {
            key.strip_prefix(prefix)
        };
        if let Some(i) = bare.and_then(forwardable_index) {
            pinned |= 1 << i;
        }
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
