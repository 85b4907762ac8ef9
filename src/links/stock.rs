//! Stock-aware carts. A link with a `stock` rule watches its cart items' availability; the
//! redirect path reads one atomic per item in stock (bound at install, see `commerce::inventory`). When
//! all are in stock the pre-rendered cart is served as usual; otherwise the rule decides —
//! drop the item, swap in its substitute, or send the follower to the fallback — and that rarer
//! cart is rendered for the request.

use super::config::{BigTarget, LinkConfig, ShopifyTarget, StockPolicy, TargetConfig, WooTarget};
use super::destination::{render, LinkParams};
use super::Destination;
use crate::commerce::inventory::{Inventory, Slot};
use std::sync::{Arc, OnceLock};

#[derive(Debug)]
pub struct StockItem {
    pub id: u64,
    pub inventory_item: Option<u64>,
    pub substitute: Option<u64>,
    /// The substitute's Shopify inventory item, when given.
    pub substitute_item: Option<u64>,
    slot: OnceLock<Arc<Slot>>,
    sub_slot: OnceLock<Arc<Slot>>,
}

#[derive(Debug)]
pub struct StockRule {
    pub policy: StockPolicy,
    pub threshold: i64,
    pub items: Vec<StockItem>,
    target: TargetConfig,
    link_id: String,
    creator: String,
    discount: Option<String>,
    utm: Vec<(&'static str, String)>,
}

/// What the rule decided for one request.
pub enum StockOutcome {
    AllInStock,
    /// A different cart, and the ids that were dropped or swapped.
    Changed(Destination, Box<[u64]>),
    /// Nothing sellable: the fallback, and the ids that were out.
    Fallback(Box<[u64]>),
}

fn item_ids(target: &TargetConfig) -> Result<Vec<(u64, Option<u64>)>, String> {
    match target {
        TargetConfig::ShopifyCart(t) => Ok(t.items.iter().map(|i| (i.variant, i.inventory_item)).collect()),
        TargetConfig::WoocommerceCart(t) => Ok(t
            .items
            .iter()
            .map(|i| (i.variation.unwrap_or(i.product), None))
            .collect()),
        TargetConfig::BigcommerceCart(t) => t
            .items
            .iter()
            .map(|i| {
                i.product
                    .map(|p| (p, None))
                    .ok_or_else(|| "stock rules need `product` ids, not `sku`".to_string())
            })
            .collect(),
        TargetConfig::Url(_) => Err("a `stock` rule needs a cart target".into()),
    }
}

/// `target` with the item at each index replaced by the given id, or left out (None).
fn with_items(target: &TargetConfig, ids: &[Option<u64>]) -> TargetConfig {
    let mut t = target.clone();
    match &mut t {
        TargetConfig::ShopifyCart(ShopifyTarget { items, .. }) => {
            let kept = items.iter().zip(ids).filter_map(|(it, id)| id.map(|v| (it, v)));
            *items = kept
                .map(|(it, v)| super::config::ShopifyItem {
                    variant: v,
                    ..it.clone()
                })
                .collect();
        }
        TargetConfig::WoocommerceCart(WooTarget { items, .. }) => {
            let kept = items.iter().zip(ids).filter_map(|(it, id)| id.map(|v| (it, v)));
            *items = kept
                .map(|(it, v)| match it.variation {
                    Some(_) => super::config::WooItem {
                        variation: Some(v),
                        ..it.clone()
                    },
                    None => super::config::WooItem {
                        product: v,
                        ..it.clone()
                    },
                })
                .collect();
        }
        TargetConfig::BigcommerceCart(BigTarget { items, .. }) => {
            let kept = items.iter().zip(ids).filter_map(|(it, id)| id.map(|v| (it, v)));
            *items = kept
                .map(|(it, v)| super::config::BigItem {
                    product: Some(v),
                    ..it.clone()
                })
                .collect();
        }
        TargetConfig::Url(_) => {}
    }
    t
}

/// Checks a link's `stock` section against all its carts: substitutes need the `swap` policy
/// and must name an item of one of the carts, and at least one destination must be a cart.
/// The target's cart must be one whose items can be watched; a route's cart that cannot (a
/// BigCommerce cart by `sku`) is simply not watched, as before routes were.
pub fn check(raw: &LinkConfig) -> Result<(), String> {
    let Some(cfg) = &raw.stock else { return Ok(()) };
    if !cfg.substitutes.is_empty() && cfg.policy != StockPolicy::Swap {
        return Err("`substitutes` need the `swap` policy".into());
    }
    let carts: Vec<&TargetConfig> = destinations(raw)
        .filter(|t| !matches!(t, TargetConfig::Url(_)))
        .collect();
    if carts.is_empty() {
        return Err("a `stock` rule needs a cart target".into());
    }
    if !matches!(raw.target, TargetConfig::Url(_)) {
        item_ids(&raw.target)?;
    }
    let ids: Vec<u64> = carts
        .into_iter()
        .filter_map(|t| item_ids(t).ok())
        .flatten()
        .map(|(id, _)| id)
        .collect();
    for key in cfg.substitutes.keys() {
        if !ids.iter().any(|id| id.to_string() == *key) {
            return Err(format!(
                "substitute for `{key}`, which is not an item of the link's carts"
            ));
        }
    }
    Ok(())
}

/// The target, then the geo, device and variant targets.
fn destinations(raw: &LinkConfig) -> impl Iterator<Item = &TargetConfig> {
    std::iter::once(&raw.target)
        .chain(raw.geo.iter().flat_map(|m| m.values()))
        .chain(raw.device.iter().flat_map(|m| m.values()))
        .chain(raw.variants.iter().flatten().map(|v| &v.target))
}

impl StockRule {
    /// The rule of the link's `stock` section for one of its destinations: None when the link
    /// watches no stock or the destination is a plain URL (nothing in it to watch). Each cart
    /// has its own rule, so a follower routed by country, device or A/B variant is never sent
    /// to an empty cart either. Call [`check`] first.
    pub fn for_target(raw: &LinkConfig, target: &TargetConfig) -> Result<Option<StockRule>, String> {
        let Some(cfg) = &raw.stock else { return Ok(None) };
        let ids = match item_ids(target) {
            Ok(ids) => ids,
            // A plain URL, or a route's cart whose items cannot be watched ([`check`] refused
            // such a target already).
            Err(_) => return Ok(None),
        };
        let items = ids
            .into_iter()
            .map(|(id, inventory_item)| StockItem {
                id,
                inventory_item,
                substitute: cfg.substitutes.get(&id.to_string()).map(|s| s.id()),
                substitute_item: cfg.substitutes.get(&id.to_string()).and_then(|s| s.inventory_item()),
                slot: OnceLock::new(),
                sub_slot: OnceLock::new(),
            })
            .collect();
        // Every variant a rule could produce must render; check them once now.
        let rule = StockRule {
            policy: cfg.policy,
            threshold: cfg.threshold,
            items,
            target: target.clone(),
            link_id: raw.id.clone(),
            creator: raw.creator.clone(),
            discount: raw.discount.clone(),
            utm: super::destination::LinkParams::utm_pairs(raw.utm.as_ref())
                .into_iter()
                .map(|(k, v)| (k, v.to_string()))
                .collect(),
        };
        let swapped: Vec<Option<u64>> = rule.items.iter().map(|i| Some(i.substitute.unwrap_or(i.id))).collect();
        rule.render(&swapped).map_err(|e| format!("stock: {e}"))?;
        Ok(Some(rule))
    }

    /// Connects the items to the shared stock state (and tells it which inventory item is
    /// which variant).
    pub fn bind(&self, inventory: &Inventory) {
        for item in &self.items {
            let _ = item.slot.set(inventory.slot(item.id));
            if let Some(s) = item.substitute {
                let _ = item.sub_slot.set(inventory.slot(s));
                if let Some(inv_item) = item.substitute_item {
                    inventory.map_item(inv_item, s);
                }
            }
            if let Some(inv_item) = item.inventory_item {
                inventory.map_item(inv_item, item.id);
            }
        }
    }

    fn out(&self, slot: &OnceLock<Arc<Slot>>) -> bool {
        slot.get().is_some_and(|s| s.out(self.threshold))
    }

    fn render(&self, ids: &[Option<u64>]) -> Result<Destination, String> {
        let utm: Vec<(&str, &str)> = self.utm.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let params = LinkParams {
            link_id: &self.link_id,
            creator: &self.creator,
            discount: self.discount.as_deref(),
            utm: &utm,
        };
        render(&with_items(&self.target, ids), &params, true)
    }

    /// One atomic load per item when everything is in stock.
    pub fn evaluate(&self) -> StockOutcome {
        if !self.items.iter().any(|i| self.out(&i.slot)) {
            return StockOutcome::AllInStock;
        }
        let mut oos = Vec::new();
        let mut ids = Vec::with_capacity(self.items.len());
        for item in &self.items {
            if !self.out(&item.slot) {
                ids.push(Some(item.id));
                continue;
            }
            oos.push(item.id);
            ids.push(match (self.policy, item.substitute) {
                (StockPolicy::Swap, Some(s)) if !self.out(&item.sub_slot) => Some(s),
                _ => None,
            });
        }
        if self.policy == StockPolicy::Fallback || ids.iter().all(Option::is_none) {
            return StockOutcome::Fallback(oos.into());
        }
        match self.render(&ids) {
            Ok(dest) => StockOutcome::Changed(dest, oos.into()),
            // A single-item format cannot carry what is left: the fallback is the honest answer.
            Err(_) => StockOutcome::Fallback(oos.into()),
        }
    }
}
