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
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
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
    pub substitutes: BTreeMap<String, u64>,
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

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum TargetConfig {
    Url {
        url: String,
        /// `shopify`: apply the discount through Shopify's `/discount/CODE?redirect=PATH`.
        #[serde(default)]
        platform: Option<Platform>,
    },
    ShopifyCart {
        shop: String,
        items: Vec<ShopifyItem>,
        #[serde(default)]
        format: ShopifyFormat,
        #[serde(default)]
        locale: Option<String>,
        /// Land on the online-store cart instead of checkout (legacy `/cart` format only).
        #[serde(default)]
        storefront: bool,
    },
    WoocommerceCart {
        shop: String,
        items: Vec<WooItem>,
        #[serde(default)]
        format: WooFormat,
    },
    BigcommerceCart {
        shop: String,
        items: Vec<BigItem>,
        #[serde(default)]
        format: BigFormat,
    },
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
    /// Stencil `/cart.php?action=add&product_id=…`: one product.
    #[default]
    Cart,
    /// `/checkout/?products=ID:N,…&coupon=CODE`: a new cart on every visit.
    Checkout,
}
