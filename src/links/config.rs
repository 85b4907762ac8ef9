//! The links file as written by people: one JSON object per line (JSON Lines).
//! These raw structs are parsed strictly (`deny_unknown_fields`) and never reach a request;
//! `links::build` validates them into [`super::Link`]s.

use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkConfig {
    pub id: String,
    pub creator: String,
    pub campaign: String,
    #[serde(default)]
    pub discount: Option<String>,
    #[serde(default)]
    pub utm: Option<UtmConfig>,
    pub target: TargetConfig,
    #[serde(default)]
    pub fallback: Option<String>,
    #[serde(default)]
    pub redirect: Option<u16>,
    #[serde(default)]
    pub status: Option<StatusConfig>,
    #[serde(default)]
    pub expires_at: Option<String>,
    /// Country code (ISO 3166 alpha-2) → target.
    #[serde(default)]
    pub geo: Option<BTreeMap<String, TargetConfig>>,
    /// Device class (`ios`, `android`, `desktop`, `other`) → target.
    #[serde(default)]
    pub device: Option<BTreeMap<String, TargetConfig>>,
    /// Weighted A/B targets; sticky per visitor.
    #[serde(default)]
    pub variants: Option<Vec<VariantConfig>>,
    /// Human clicks, then `fallback`.
    #[serde(default)]
    pub max_clicks: Option<u64>,
    /// The creator's commission on sales attributed to this link.
    #[serde(default)]
    pub commission: Option<CommissionConfig>,
    /// What to do when a cart item is out of stock.
    #[serde(default)]
    pub stock: Option<StockConfig>,
}

/// Percent of the attributed subtotal (in basis points: 1050 = 10.5 %) or a flat amount in
/// minor units of the order's currency.
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum CommissionConfig {
    RateBp(u32),
    FlatMinor(i64),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StockConfig {
    pub policy: StockPolicy,
    /// Available quantity at or below this counts as out of stock (guards a spike).
    #[serde(default)]
    pub threshold: i64,
    /// Item id (as a string, JSON keys are strings) → the id to send instead when it is out.
    #[serde(default)]
    pub substitutes: BTreeMap<String, Substitute>,
}

/// A substitute: its id, or (Shopify) its variant and inventory item, so that the store's
/// `inventory_levels/update` webhooks reach its stock too.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Substitute {
    Id(u64),
    Shopify {
        variant: u64,
        #[serde(default)]
        inventory_item: Option<u64>,
    },
}

impl Substitute {
    pub fn id(self) -> u64 {
        match self {
            Substitute::Id(id) | Substitute::Shopify { variant: id, .. } => id,
        }
    }
    pub fn inventory_item(self) -> Option<u64> {
        match self {
            Substitute::Id(_) => None,
            Substitute::Shopify { inventory_item, .. } => inventory_item,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StockPolicy {
    /// Leave out-of-stock items out of the cart (fallback when none is left).
    Drop,
    /// Send the configured substitute when it is in stock, else leave the item out.
    Swap,
    /// Any item out → the link's fallback.
    Fallback,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UtmConfig {
    pub source: Option<String>,
    pub medium: Option<String>,
    pub campaign: Option<String>,
    pub content: Option<String>,
    pub term: Option<String>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StatusConfig {
    Active,
    Paused,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantConfig {
    pub weight: u32,
    pub target: TargetConfig,
}

/// Where a link sends the visitor; `type` names the kind and the other keys are its fields.
#[derive(Debug, Clone)]
pub enum TargetConfig {
    Url(UrlTarget),
    ShopifyCart(ShopifyTarget),
    WoocommerceCart(WooTarget),
    BigcommerceCart(BigTarget),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UrlTarget {
    pub url: String,
    /// `shopify`: apply the discount through Shopify's `/discount/CODE?redirect=PATH`.
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShopifyTarget {
    pub shop: String,
    pub items: Vec<ShopifyItem>,
    #[serde(default)]
    pub format: ShopifyFormat,
    #[serde(default)]
    pub locale: Option<String>,
    /// Land on the online-store cart instead of checkout (legacy `/cart` format only).
    #[serde(default)]
    pub storefront: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WooTarget {
    pub shop: String,
    pub items: Vec<WooItem>,
    #[serde(default)]
    pub format: WooFormat,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BigTarget {
    pub shop: String,
    pub items: Vec<BigItem>,
    #[serde(default)]
    pub format: BigFormat,
}

impl TargetConfig {
    pub fn url(url: String) -> TargetConfig {
        TargetConfig::Url(UrlTarget { url, platform: None })
    }
}

enum Kind {
    Url,
    ShopifyCart,
    WoocommerceCart,
    BigcommerceCart,
}

impl Kind {
    fn named<E: serde::de::Error>(name: &str) -> Result<Kind, E> {
        Ok(match name {
            "url" => Kind::Url,
            "shopify_cart" => Kind::ShopifyCart,
            "woocommerce_cart" => Kind::WoocommerceCart,
            "bigcommerce_cart" => Kind::BigcommerceCart,
            other => {
                return Err(E::unknown_variant(
                    other,
                    &["url", "shopify_cart", "woocommerce_cart", "bigcommerce_cart"],
                ))
            }
        })
    }

    fn fields<'de, D: serde::Deserializer<'de>>(self, d: D) -> Result<TargetConfig, D::Error> {
        Ok(match self {
            Kind::Url => TargetConfig::Url(UrlTarget::deserialize(d)?),
            Kind::ShopifyCart => TargetConfig::ShopifyCart(ShopifyTarget::deserialize(d)?),
            Kind::WoocommerceCart => TargetConfig::WoocommerceCart(WooTarget::deserialize(d)?),
            Kind::BigcommerceCart => TargetConfig::BigcommerceCart(BigTarget::deserialize(d)?),
        })
    }
}

/// Read by hand rather than as a serde internally tagged enum, which buffers every target
/// into an intermediate tree first (a tenth of loading a large links file). With `type` as the
/// first key, as the examples and generators write it, the rest of the object is read straight
/// into the kind's fields; otherwise the object is buffered and read the same way.
impl<'de> Deserialize<'de> for TargetConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(TargetVisitor)
    }
}

struct TargetVisitor;

impl<'de> serde::de::Visitor<'de> for TargetVisitor {
    type Value = TargetConfig;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a target object with a `type`")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<TargetConfig, A::Error> {
        use serde::de::Error;
        let Some(first) = map.next_key::<String>()? else {
            return Err(A::Error::missing_field("type"));
        };
        if first == "type" {
            let kind = Kind::named(&map.next_value::<String>()?)?;
            return kind.fields(serde::de::value::MapAccessDeserializer::new(map));
        }
        let mut object = serde_json::Map::new();
        object.insert(first, map.next_value()?);
        while let Some((k, v)) = map.next_entry::<String, serde_json::Value>()? {
            if object.contains_key(&k) {
                return Err(A::Error::custom(format_args!("duplicate field `{k}`")));
            }
            object.insert(k, v);
        }
        let kind = object.remove("type").ok_or_else(|| A::Error::missing_field("type"))?;
        let kind = Kind::named(&String::deserialize(kind).map_err(A::Error::custom)?)?;
        kind.fields(serde_json::Value::Object(object)).map_err(A::Error::custom)
    }
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Platform {
    Shopify,
    Generic,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShopifyItem {
    pub variant: u64,
    pub qty: u32,
    /// The variant's Shopify inventory item, so `inventory_levels/update` webhooks find it.
    #[serde(default)]
    pub inventory_item: Option<u64>,
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ShopifyFormat {
    /// Legacy `/cart/V:Q,…` permalink (carries cart attributes and `ref`).
    #[default]
    Cart,
    /// UCP `/buy/V:Q,…` permalink, answered with 303.
    Buy,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WooItem {
    pub product: u64,
    #[serde(default)]
    pub variation: Option<u64>,
    pub qty: u32,
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WooFormat {
    /// Classic `/?add-to-cart=ID&quantity=N`: one product.
    #[default]
    AddToCart,
    /// `/checkout-link/?products=ID:N,…&coupon=CODE`: several products, straight to checkout.
    CheckoutLink,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BigItem {
    #[serde(default)]
    pub product: Option<u64>,
    #[serde(default)]
    pub sku: Option<String>,
    pub qty: u32,
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BigFormat {
    /// Stencil `/cart.php?action=add&product_id=…`: one product, to the cart.
    #[default]
    Cart,
    /// Stencil `/cart.php?action=buy&product_id=…`: one product, straight to checkout.
    Buy,
    /// `/checkout/?products=ID:N,…&coupon=CODE`: a new cart on every visit.
    Checkout,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(json: &str) -> Result<TargetConfig, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn type_may_come_anywhere_and_reads_the_same() {
        let first = target(
            r#"{"type":"shopify_cart","shop":"a.example","items":[{"variant":18446744073709551615,"qty":2}],"format":"buy"}"#,
        );
        let last = target(
            r#"{"shop":"a.example","items":[{"variant":18446744073709551615,"qty":2}],"format":"buy","type":"shopify_cart"}"#,
        );
        assert_eq!(format!("{first:?}"), format!("{last:?}"));
        let Ok(TargetConfig::ShopifyCart(t)) = first else {
            panic!("{first:?}")
        };
        assert_eq!(t.items[0].variant, u64::MAX);
        assert_eq!(t.format, ShopifyFormat::Buy);
    }

    #[test]
    fn bad_targets_say_what_is_wrong_wherever_type_is() {
        for (json, want) in [
            (r#"{"url":"https://a.example/"}"#, "missing field `type`"),
            (r#"{}"#, "missing field `type`"),
            (r#"{"type":"ftp"}"#, "unknown variant `ftp`"),
            (r#"{"url":"x","type":"ftp"}"#, "unknown variant `ftp`"),
            (r#"{"type":7}"#, "invalid type: integer `7`, expected a string"),
            (
                r#"{"type":"url","url":"https://a.example/","colour":1}"#,
                "unknown field `colour`",
            ),
            (
                r#"{"colour":1,"type":"url","url":"https://a.example/"}"#,
                "unknown field `colour`",
            ),
            (r#"{"type":"url","url":"a","url":"b"}"#, "duplicate field `url`"),
            (r#"{"url":"a","url":"b","type":"url"}"#, "duplicate field `url`"),
            (r#"{"type":"url","type":"url","url":"a"}"#, "unknown field `type`"),
            (r#"{"platform":"shopify","type":"url"}"#, "missing field `url`"),
            (r#""https://a.example/""#, "expected a target object with a `type`"),
        ] {
            let err = target(json).expect_err(json);
            assert!(err.contains(want), "{json}: {err}");
        }
    }
}
