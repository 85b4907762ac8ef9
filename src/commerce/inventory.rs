//! Stock state: available quantity per variant, fed by `POST /admin/inventory` (by variant, or
//! by Shopify `inventory_item_id` + `location_id`) and by Shopify's `inventory_levels/update`
//! webhook.
//!
//! A variant's availability is the sum over its locations. Each (item, location) level is
//! applied by its `updated_at`, so late or repeated deliveries never roll stock back. Shopify's
//! `updated_at` has whole seconds, and in a spike one item changes several times a second: a
//! level with the same time as the one held, but another quantity, is applied (the later
//! arrival wins), so neither a sale nor a restock within a second is lost when deliveries
//! come in order; only two of the same second delivered out of order end on the older one,
//! until the next update. Ids are u64 throughout (Shopify's exceed 2^53).
//!
//! Levels outlive restarts: the state is saved to `<data_dir>/commerce/inventory.json` (written
//! aside and renamed over, so it is whole or absent) once a second when it changed, and at
//! shutdown, and read back at start. Without it every sold-out item would count as in stock
//! after a deploy, until Shopify sent another update for it, which for an item nobody can buy
//! may never come. A crash loses at most the last second of updates.
//!
//! A variant that sells when out of stock never counts as out, whatever its level: Shopify's
//! "continue selling when out of stock" (`inventory_policy: "continue"`, pre-orders and
//! backorders, from the `products/*` webhooks, which also say which inventory item is which
//! variant, so a link need not), and stock Shopify does not track (`tracked: false`, from the
//! `inventory_items/*` webhooks; before API 2024-07 also `inventory_management: null` on the
//! product). Other stores set the policy by variant with `POST /admin/inventory`. Applied by
//! time and saved like levels.
//!
//! The redirect path never touches a map: every link that watches a variant holds that
//! variant's [`Slot`] (one atomic), bound when the links table is installed. Updates take the
//! maps' shard locks and then store into the slot, so a change is visible to the very next
//! redirect.

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, Ordering};
use std::sync::Arc;

/// Availability not reported yet: treated as in stock.
pub const UNKNOWN: i64 = i64::MIN;

#[derive(Debug)]
pub struct Slot {
    available: AtomicI64,
    /// Why the variant sells when out, if it does: [`CONTINUES`], [`UNTRACKED`].
    sells: AtomicU8,
}

/// The variant's policy is to continue selling when out of stock.
const CONTINUES: u8 = 1;
/// Shopify does not track the stock of the variant's inventory item.
const UNTRACKED: u8 = 2;

impl Slot {
    fn new() -> Slot {
        Slot {
            available: AtomicI64::new(UNKNOWN),
            sells: AtomicU8::new(0),
        }
    }

    pub fn available(&self) -> Option<i64> {
        match self.available.load(Ordering::Relaxed) {
            UNKNOWN => None,
            n => Some(n),
        }
    }

    /// Out of stock for a rule that counts `threshold` and below as out: never for a variant
    /// that sells when out, or whose stock nobody reported. One load for an item in stock.
    pub fn out(&self, threshold: i64) -> bool {
        self.available().is_some_and(|n| n <= threshold) && self.sells.load(Ordering::Relaxed) == 0
    }

    pub fn sells_when_out(&self) -> bool {
        self.sells.load(Ordering::Relaxed) != 0
    }

    fn set(&self, reason: u8, on: bool) {
        if on {
            self.sells.fetch_or(reason, Ordering::Relaxed);
        } else {
            self.sells.fetch_and(!reason, Ordering::Relaxed);
        }
    }
}

/// What a variant does when its stock runs out, in Shopify's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InventoryPolicy {
    /// Stops selling: counts as out at the rule's threshold (the default).
    Deny,
    /// Keeps selling (pre-orders, backorders): never counts as out.
    Continue,
}

/// A setting and the time it was set at, applied only if newer (or as new).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct At<T> {
    value: T,
    updated_ms: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Level {
    location: u64,
    available: i64,
    updated_ms: u64,
}

/// What happened to one update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Newer than what was known: the variant's total is now this ([`UNKNOWN`] if none was
    /// reported).
    Updated { variant: Option<u64>, total: i64 },
    /// Older than (or as old as) the level already held: ignored.
    Stale,
}

#[derive(Default)]
pub struct Inventory {
    slots: DashMap<u64, Arc<Slot>>,
    /// inventory item → levels per location.
    levels: DashMap<u64, Vec<Level>>,
    /// inventory item → variant (Shopify: one to one), from the links file and the products
    /// webhook.
    item_variant: DashMap<u64, u64>,
    /// The part of `item_variant` learned from the products webhook: saved, and it wins over
    /// the links file's (Shopify knows which item is which variant).
    learned: DashMap<u64, u64>,
    /// variant → its policy.
    policies: DashMap<u64, At<InventoryPolicy>>,
    /// inventory item → whether Shopify tracks its stock.
    tracked: DashMap<u64, At<bool>>,
    /// Where the state is saved; none: kept in memory only.
    file: Option<PathBuf>,
    /// Changed since the last save.
    dirty: AtomicBool,
}

/// The saved state: every known total, the levels they are made of, the policies and
/// tracking, and which item is which variant as learned from the products webhook (the links
/// file's are bound again at start, and a mapping removed from it must not come back).
#[derive(Serialize, Deserialize)]
struct Saved {
    variants: BTreeMap<u64, i64>,
    levels: BTreeMap<u64, Vec<Level>>,
    #[serde(default)]
    policies: BTreeMap<u64, At<InventoryPolicy>>,
    #[serde(default)]
    tracked: BTreeMap<u64, At<bool>>,
    #[serde(default)]
    learned_items: BTreeMap<u64, u64>,
}

impl Inventory {
    /// The state saved in `file`, if there is one, kept there from now on.
    pub fn open(file: PathBuf) -> io::Result<Inventory> {
        let inv = Inventory {
            file: Some(file.clone()),
            ..Inventory::default()
        };
        let text = match std::fs::read(&file) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(inv),
            Err(e) => return Err(e),
        };
        let saved: Saved = serde_json::from_slice(&text)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", file.display())))?;
        for (variant, n) in saved.variants {
            inv.slot(variant).available.store(n, Ordering::Relaxed);
        }
        for (item, levels) in saved.levels {
            inv.levels.insert(item, levels);
        }
        for (variant, p) in saved.policies {
            inv.slot(variant).set(CONTINUES, p.value == InventoryPolicy::Continue);
            inv.policies.insert(variant, p);
        }
        for (item, t) in saved.tracked {
            inv.tracked.insert(item, t);
        }
        for (item, variant) in saved.learned_items {
            inv.learned.insert(item, variant);
            inv.item_variant.insert(item, variant);
            inv.bind_item(item, variant);
        }
        Ok(inv)
    }

    /// Writes the state to its file if it changed since the last save: whole, or not at all.
    pub fn save(&self) -> io::Result<()> {
        let Some(file) = &self.file else { return Ok(()) };
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        let saved = Saved {
            variants: self
                .slots
                .iter()
                .filter_map(|e| e.value().available().map(|n| (*e.key(), n)))
                .collect(),
            levels: self.levels.iter().map(|e| (*e.key(), e.value().clone())).collect(),
            policies: self.policies.iter().map(|e| (*e.key(), *e.value())).collect(),
            tracked: self.tracked.iter().map(|e| (*e.key(), *e.value())).collect(),
            learned_items: self.learned.iter().map(|e| (*e.key(), *e.value())).collect(),
        };
        let written = super::journal::write_whole(file, &serde_json::to_vec(&saved).map_err(io::Error::other)?);
        if written.is_err() {
            self.dirty.store(true, Ordering::Relaxed);
        }
        written
    }

    /// The slot of a variant, created (unknown) on first use.
    pub fn slot(&self, variant: u64) -> Arc<Slot> {
        self.slots
            .entry(variant)
            .or_insert_with(|| Arc::new(Slot::new()))
            .clone()
    }

    /// Which variant an item is, from the links file. One learned from the products webhook
    /// wins.
    pub fn map_item(&self, inventory_item: u64, variant: u64) {
        if self.learned.contains_key(&inventory_item) {
            return;
        }
        self.item_variant.insert(inventory_item, variant);
        self.bind_item(inventory_item, variant);
    }

    /// Which variant an item is, from Shopify's products webhook: kept across restarts.
    fn learn_item(&self, inventory_item: u64, variant: u64) {
        if self.learned.insert(inventory_item, variant) != Some(variant) {
            self.dirty.store(true, Ordering::Relaxed);
        }
        self.item_variant.insert(inventory_item, variant);
        self.bind_item(inventory_item, variant);
    }

    /// What is known of an item reaches its variant's slot.
    fn bind_item(&self, inventory_item: u64, variant: u64) {
        let slot = self.slot(variant);
        // Levels that arrived before the mapping count now, for a variant with no total yet.
        // One it has (saved, or set since by variant) stays: the levels may be older.
        if let Some(levels) = self.levels.get(&inventory_item) {
            let _ = slot.available.compare_exchange(
                UNKNOWN,
                levels.iter().map(|l| l.available).sum(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        // Set under the read lock: a newer `tracked` waits for it, and then sets its own.
        if let Some(t) = self.tracked.get(&inventory_item) {
            slot.set(UNTRACKED, !t.value);
        }
    }

    /// Sets a variant's total directly (admin API, by variant).
    pub fn set_variant(&self, variant: u64, available: i64) {
        self.slot(variant).available.store(available, Ordering::Relaxed);
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Sets a variant's policy if it is newer than the one held, or as new (the later arrival
    /// wins, as for levels).
    pub fn apply_policy(&self, variant: u64, policy: InventoryPolicy, updated_ms: u64) -> Applied {
        // The slot is fetched first: under the `policies` lock only its atomics are touched.
        let slot = self.slot(variant);
        let then = || slot.set(CONTINUES, policy == InventoryPolicy::Continue);
        if !newer(&self.policies, variant, policy, updated_ms, &self.dirty, then) {
            return Applied::Stale;
        }
        Applied::Updated {
            variant: Some(variant),
            total: slot.available.load(Ordering::Relaxed),
        }
    }

    /// Sets whether Shopify tracks an item's stock, if newer than what is held (or as new).
    pub fn apply_tracked(&self, item: u64, tracked: bool, updated_ms: u64) -> Applied {
        // Locks: `tracked`, then `item_variant`, then `slots` (nothing takes them the other
        // way round; `bind_item` reads `tracked` last).
        let mut bound = None;
        let then = || {
            let variant = self.item_variant.get(&item).map(|v| *v);
            bound = variant.map(|v| {
                let slot = self.slot(v);
                slot.set(UNTRACKED, !tracked);
                (v, slot.available.load(Ordering::Relaxed))
            });
        };
        if !newer(&self.tracked, item, tracked, updated_ms, &self.dirty, then) {
            return Applied::Stale;
        }
        Applied::Updated {
            variant: bound.map(|(v, _)| v),
            total: bound.map_or(UNKNOWN, |(_, t)| t),
        }
    }

    pub fn policy(&self, variant: u64) -> InventoryPolicy {
        self.policies.get(&variant).map_or(InventoryPolicy::Deny, |p| p.value)
    }

    pub fn sells_when_out(&self, variant: u64) -> bool {
        self.slots.get(&variant).is_some_and(|s| s.sells_when_out())
    }

    /// Applies one (item, location) level if it is newer than the one held, or as new and
    /// different.
    pub fn apply_level(&self, item: u64, location: u64, available: i64, updated_ms: u64) -> Applied {
        let total = {
            let mut levels = self.levels.entry(item).or_default();
            match levels.iter_mut().find(|l| l.location == location) {
                Some(l) if l.updated_ms > updated_ms => return Applied::Stale,
                Some(l) if l.updated_ms == updated_ms && l.available == available => return Applied::Stale,
                Some(l) => {
                    l.available = available;
                    l.updated_ms = updated_ms;
                }
                None => levels.push(Level {
                    location,
                    available,
                    updated_ms,
                }),
            }
            levels.iter().map(|l| l.available).sum::<i64>()
        };
        let variant = self.item_variant.get(&item).map(|v| *v);
        if let Some(v) = variant {
            self.slot(v).available.store(total, Ordering::Relaxed);
        }
        self.dirty.store(true, Ordering::Relaxed);
        Applied::Updated { variant, total }
    }

    pub fn available(&self, variant: u64) -> Option<i64> {
        self.slots.get(&variant).and_then(|s| s.available())
    }
}

/// Stores `value` for `key` if `updated_ms` is at least the held time; marks the state dirty
/// only when the value changed (a products webhook comes with every sale).
fn newer<T: Copy + PartialEq>(
    map: &DashMap<u64, At<T>>,
    key: u64,
    value: T,
    updated_ms: u64,
    dirty: &AtomicBool,
    then: impl FnOnce(),
) -> bool {
    // `then` runs under the entry's lock, so two deliveries for one key reach the slot in
    // the order they reach the map.
    let changed = match map.entry(key) {
        dashmap::mapref::entry::Entry::Occupied(mut e) => {
            if e.get().updated_ms > updated_ms {
                return false;
            }
            let changed = e.get().value != value;
            *e.get_mut() = At { value, updated_ms };
            then();
            changed
        }
        dashmap::mapref::entry::Entry::Vacant(e) => {
            let _held = e.insert(At { value, updated_ms });
            then();
            true
        }
    };
    if changed {
        dirty.store(true, Ordering::Relaxed);
    }
    true
}

/// One update as the admin API and the Shopify webhook send it.
#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
pub enum Update {
    /// Shopify `inventory_levels/update` shape (extra Shopify fields are ignored by the caller).
    /// `inventory_levels/disconnect` carries only the item and location: no stock there, as
    /// of its arrival.
    Level {
        inventory_item_id: u64,
        location_id: u64,
        #[serde(default)]
        available: Option<i64>,
        #[serde(default)]
        updated_at: Option<String>,
    },
    /// A variant's total, its policy, or both, set directly.
    Variant {
        variant: u64,
        #[serde(default)]
        available: Option<i64>,
        #[serde(default)]
        inventory_policy: Option<InventoryPolicy>,
    },
}

impl Inventory {
    /// Applies one update; `Err` names what was wrong with it.
    pub fn apply(&self, u: &Update) -> Result<Applied, String> {
        match u {
            Update::Variant {
                variant,
                available,
                inventory_policy,
            } => {
                if available.is_none() && inventory_policy.is_none() {
                    return Err(format!(
                        "variant {variant}: nothing to set (give `available`, `inventory_policy` or both)"
                    ));
                }
                // A policy held with a time ahead of this clock (a webhook's, within the hour
                // allowed) makes one set now stale: said as such when it is all there was.
                let policy = inventory_policy.map(|p| self.apply_policy(*variant, p, now_ms()));
                if let Some(n) = available {
                    self.set_variant(*variant, *n);
                } else if policy == Some(Applied::Stale) {
                    return Ok(Applied::Stale);
                }
                Ok(Applied::Updated {
                    variant: Some(*variant),
                    total: self.slot(*variant).available.load(Ordering::Relaxed),
                })
            }
            Update::Level {
                inventory_item_id,
                location_id,
                available,
                ..
            } => {
                let ms = u.level_time_ms(now_ms())?;
                // `available: null` (a disconnected location) counts as zero there.
                Ok(self.apply_level(*inventory_item_id, *location_id, available.unwrap_or(0), ms))
            }
        }
    }
}

/// How far ahead of this machine's clock an `updated_at` may be: clock skew, not a typo such
/// as a year 2099, which would make every later level stale, restarts included.
const MAX_AHEAD_MS: u64 = 3600 * 1000;

impl Update {
    /// A level's time (now for one without `updated_at`), or why it cannot be applied. Checked
    /// for every update of a list before any is applied, so a list is applied whole or not at
    /// all.
    pub fn level_time_ms(&self, now_ms: u64) -> Result<u64, String> {
        match self {
            Update::Level { updated_at, .. } => time_ms(updated_at.as_deref(), now_ms),
            Update::Variant { .. } => Ok(now_ms),
        }
    }
}

/// An `updated_at`'s time (now without one), or why it cannot be used.
fn time_ms(updated_at: Option<&str>, now_ms: u64) -> Result<u64, String> {
    let Some(at) = updated_at else { return Ok(now_ms) };
    let t = time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("updated_at `{at}`: {e}"))?;
    let ms = u64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    if ms > now_ms + MAX_AHEAD_MS {
        return Err(format!(
            "updated_at `{at}` is more than an hour ahead of this server's clock"
        ));
    }
    Ok(ms)
}

/// Shopify's `products/create` and `products/update` payload, the parts stock needs
/// (`include_fields` may trim it to `variants.id`, `variants.inventory_item_id`,
/// `variants.inventory_policy`, `variants.updated_at` and `updated_at`). `products/delete`
/// carries only the id: no variants, nothing changes.
#[derive(Debug, Deserialize)]
pub struct Product {
    #[serde(default)]
    updated_at: Option<String>,
    #[serde(default)]
    variants: Vec<ProductVariant>,
}

#[derive(Debug, Deserialize)]
struct ProductVariant {
    id: u64,
    #[serde(default)]
    inventory_item_id: Option<u64>,
    #[serde(default)]
    inventory_policy: Option<InventoryPolicy>,
    /// API versions before 2024-07 only (later ones moved it to the inventory item's
    /// `tracked`): `null` says Shopify does not track this variant's stock, so it always sells;
    /// absent says nothing.
    #[serde(default, deserialize_with = "present")]
    inventory_management: Option<Option<String>>,
    #[serde(default)]
    updated_at: Option<String>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// Shopify's `inventory_items/create` and `inventory_items/update` payload, the parts stock
/// needs: whether Shopify tracks the item's stock (API versions from 2024-07 say it only here).
#[derive(Debug, Deserialize)]
pub struct InventoryItem {
    id: u64,
    #[serde(default)]
    tracked: Option<bool>,
    #[serde(default)]
    updated_at: Option<String>,
}

impl Inventory {
    /// Applies an inventory item's `tracked`, by its `updated_at`.
    pub fn apply_item(&self, item: &InventoryItem) -> Result<Applied, String> {
        let ms = time_ms(item.updated_at.as_deref(), now_ms())?;
        Ok(match item.tracked {
            Some(tracked) => self.apply_tracked(item.id, tracked, ms),
            None => Applied::Stale,
        })
    }
}

impl Inventory {
    /// Applies a product's variants: which inventory item is which variant, and each variant's
    /// policy (and, before API 2024-07, whether its stock is tracked) by its `updated_at` (the
    /// product's where a variant has none). Every time is checked first, so a product is
    /// applied whole or not at all. Returns how many policies were applied and how many were
    /// stale.
    pub fn apply_product(&self, product: &Product) -> Result<(usize, usize), String> {
        let now = now_ms();
        let times = product
            .variants
            .iter()
            .map(|v| time_ms(v.updated_at.as_deref().or(product.updated_at.as_deref()), now))
            .collect::<Result<Vec<u64>, String>>()?;
        let (mut applied, mut stale) = (0, 0);
        for (v, ms) in product.variants.iter().zip(times) {
            if let Some(item) = v.inventory_item_id {
                self.learn_item(item, v.id);
                if let Some(management) = &v.inventory_management {
                    self.apply_tracked(item, management.is_some(), ms);
                }
            }
            match v.inventory_policy.map(|p| self.apply_policy(v.id, p, ms)) {
                Some(Applied::Updated { .. }) => applied += 1,
                Some(Applied::Stale) => stale += 1,
                None => {}
            }
        }
        Ok((applied, stale))
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_state_reads_back_whole_and_a_damaged_file_is_named() {
        let dir = crate::scratch_dir("inventory", "save");
        let file = dir.join("inventory.json");
        let inv = Inventory::open(file.clone()).unwrap();
        inv.save().unwrap();
        assert!(!file.exists(), "nothing changed: nothing written");
        inv.set_variant(9_007_199_254_740_993, 3);
        inv.apply_level(271_878_346_596_884_015, 1, 5, 1000);
        inv.save().unwrap();
        let back = Inventory::open(file.clone()).unwrap();
        assert_eq!(back.available(9_007_199_254_740_993), Some(3));
        assert_eq!(back.apply_level(271_878_346_596_884_015, 1, 9, 999), Applied::Stale);
        back.map_item(271_878_346_596_884_015, 40);
        assert_eq!(back.available(40), Some(5));
        std::fs::write(&file, b"{\"variants\":").unwrap();
        let e = Inventory::open(file.clone()).err().unwrap().to_string();
        assert!(e.contains("inventory.json"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_total_already_held_is_not_overwritten_by_levels_when_the_item_is_mapped() {
        let inv = Inventory::default();
        inv.apply_level(7, 1, 5, 1000);
        // Sold out, set by variant (or read back from the saved state at start).
        inv.set_variant(40, 0);
        // The links table binds the item to the variant (at start, and on every reload).
        inv.map_item(7, 40);
        assert_eq!(inv.available(40), Some(0));
        // A variant with no total yet takes the levels' sum.
        inv.map_item(7, 41);
        assert_eq!(inv.available(41), Some(5));
    }

    #[test]
    fn a_disconnect_empties_its_location_until_a_later_update() {
        let inv = Inventory::default();
        inv.map_item(271_878_346_596_884_015, 40);
        let level = |at: &str, n: i64| {
            format!(
                r#"{{"inventory_item_id":271878346596884015,"location_id":9007199254740993,"available":{n},"updated_at":"{at}"}}"#
            )
        };
        let apply = |json: &str| inv.apply(&serde_json::from_str::<Update>(json).unwrap()).unwrap();
        apply(&level("2026-01-01T00:00:00Z", 7));
        assert_eq!(inv.available(40), Some(7));
        // Shopify's disconnect shape: no quantity, no time.
        apply(r#"{"inventory_item_id":271878346596884015,"location_id":9007199254740993}"#);
        assert_eq!(inv.available(40), Some(0));
        apply(&level("2026-01-02T00:00:00Z", 9));
        assert_eq!(inv.available(40), Some(0), "older than the disconnect");
        // Later than the disconnect (its time was this machine's clock), within the hour a
        // level may be ahead of it.
        let later = time::OffsetDateTime::now_utc() + time::Duration::minutes(5);
        let later = later.format(&time::format_description::well_known::Rfc3339).unwrap();
        apply(&level(&later, 9));
        assert_eq!(inv.available(40), Some(9));
        let typo = serde_json::from_str::<Update>(&level("2999-01-01T00:00:00Z", 1)).unwrap();
        assert!(inv.apply(&typo).unwrap_err().contains("ahead"));
        assert_eq!(inv.available(40), Some(9));
    }

    #[test]
    fn a_variant_that_sells_when_out_never_counts_as_out() {
        let inv = Inventory::default();
        let slot = inv.slot(9_007_199_254_740_993);
        inv.set_variant(9_007_199_254_740_993, 0);
        assert!(slot.out(0) && slot.out(2));
        assert_eq!(
            inv.apply_policy(9_007_199_254_740_993, InventoryPolicy::Continue, 2000),
            Applied::Updated {
                variant: Some(9_007_199_254_740_993),
                total: 0
            }
        );
        assert!(!slot.out(0) && !slot.out(2), "pre-orders keep selling");
        assert_eq!(slot.available(), Some(0), "the level itself is kept");
        assert_eq!(
            inv.apply_policy(9_007_199_254_740_993, InventoryPolicy::Deny, 1999),
            Applied::Stale,
            "a late delivery"
        );
        assert!(!slot.out(0));
        inv.apply_policy(9_007_199_254_740_993, InventoryPolicy::Deny, 2000);
        assert!(slot.out(0), "the later arrival of the same second wins");
        // Unknown stock is in stock whatever the policy.
        assert!(!inv.slot(1).out(0));
    }

    #[test]
    fn a_product_update_sets_policies_and_maps_items_whole_or_not_at_all() {
        let inv = Inventory::default();
        // Levels for an item no link named: they reach its variant once the product says
        // which variant it is.
        inv.apply_level(271_878_346_596_884_015, 1, 0, 1000);
        let product = |policy: &str, management: &str, at: &str| {
            format!(
                r#"{{"id":632910392,"title":"Kit","updated_at":"2026-01-01T00:00:00Z","variants":[
                {{"id":9007199254740993,"product_id":632910392,"inventory_policy":"{policy}","inventory_item_id":271878346596884015{management},"inventory_quantity":0,"updated_at":"{at}"}},
                {{"id":40000000002,"inventory_policy":"deny","inventory_item_id":341629}},
                {{"id":40000000003,"inventory_item_id":341630}}]}}"#
            )
        };
        let apply = |json: &str| inv.apply_product(&serde_json::from_str::<Product>(json).unwrap());
        let v1 = 9_007_199_254_740_993;
        assert_eq!(apply(&product("continue", "", "2026-01-02T00:00:00Z")), Ok((2, 0)));
        assert_eq!(inv.available(v1), Some(0), "the item's level reached it");
        assert_eq!(inv.policy(v1), InventoryPolicy::Continue);
        assert!(!inv.slot(v1).out(0));
        assert_eq!(inv.policy(40_000_000_002), InventoryPolicy::Deny);
        // A variant without a policy (a trimmed payload) keeps the one it has.
        assert!(!inv.policies.contains_key(&40_000_000_003));
        assert_eq!(inv.item_variant.get(&341_630).map(|v| *v), Some(40_000_000_003));
        // Older than the policy held.
        assert_eq!(apply(&product("deny", "", "2026-01-01T12:00:00Z")), Ok((1, 1)));
        assert_eq!(inv.policy(v1), InventoryPolicy::Continue);
        assert_eq!(apply(&product("deny", "", "2026-01-03T00:00:00Z")), Ok((2, 0)));
        assert!(inv.slot(v1).out(0));
        // Before API 2024-07: `inventory_management: null` is stock Shopify does not track,
        // which always sells, whatever the policy.
        let untracked = r#","inventory_management":null"#;
        assert_eq!(apply(&product("deny", untracked, "2026-01-04T00:00:00Z")), Ok((2, 0)));
        assert_eq!(inv.policy(v1), InventoryPolicy::Deny);
        assert!(!inv.slot(v1).out(0) && inv.sells_when_out(v1));
        let tracked = r#","inventory_management":"shopify""#;
        assert_eq!(apply(&product("deny", tracked, "2026-01-05T00:00:00Z")), Ok((2, 0)));
        assert!(inv.slot(v1).out(0));
        // One bad time: nothing applied.
        let e = apply(&product("continue", "", "2999-01-01T00:00:00Z")).unwrap_err();
        assert!(e.contains("ahead"), "{e}");
        assert_eq!(inv.policy(v1), InventoryPolicy::Deny);
        // `products/delete` has no variants.
        assert_eq!(apply(r#"{"id":632910392}"#), Ok((0, 0)));
    }

    #[test]
    fn a_policy_set_by_hand_behind_a_webhooks_clock_is_stale_and_a_repeat_saves_nothing() {
        let dir = crate::scratch_dir("inventory", "stale-policy");
        let file = dir.join("inventory.json");
        let inv = Inventory::open(file.clone()).unwrap();
        // A webhook's time may run up to an hour ahead of this clock.
        inv.apply_policy(40, InventoryPolicy::Continue, now_ms() + 30 * 60 * 1000);
        let by_hand = |json: &str| inv.apply(&serde_json::from_str::<Update>(json).unwrap()).unwrap();
        assert_eq!(by_hand(r#"{"variant":40,"inventory_policy":"deny"}"#), Applied::Stale);
        assert_eq!(inv.policy(40), InventoryPolicy::Continue);
        assert!(matches!(
            by_hand(r#"{"variant":40,"available":3,"inventory_policy":"deny"}"#),
            Applied::Updated { total: 3, .. }
        ));
        inv.save().unwrap();
        std::fs::remove_file(&file).unwrap();
        // The same policy again, later (a products/update comes with every sale): nothing to save.
        inv.apply_policy(40, InventoryPolicy::Continue, now_ms() + 40 * 60 * 1000);
        inv.save().unwrap();
        assert!(!file.exists(), "an unchanged policy is not written again");
        inv.apply_policy(40, InventoryPolicy::Deny, now_ms() + 41 * 60 * 1000);
        inv.save().unwrap();
        assert!(file.exists());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn concurrent_deliveries_leave_the_slot_as_the_map_says() {
        // Rounds of two deliveries racing, one newer than the other; after each, the slot
        // must say what the map holds (a slot set after the lock is let go can end on the
        // older delivery's value).
        let inv = Inventory::default();
        inv.map_item(7, 40);
        let go = std::sync::Barrier::new(3);
        let rounds = 20_000u64;
        std::thread::scope(|s| {
            for t in 0..2u64 {
                let (inv, go) = (&inv, &go);
                s.spawn(move || {
                    for r in 0..rounds {
                        go.wait();
                        let (ms, on) = (r * 2 + t, (r + t) % 2 == 0);
                        let policy = if on {
                            InventoryPolicy::Continue
                        } else {
                            InventoryPolicy::Deny
                        };
                        inv.apply_policy(40, policy, ms);
                        inv.apply_tracked(7, on, ms);
                        go.wait();
                    }
                });
            }
            // Checked after the threads end: a panic here would leave them at the barrier.
            let mut wrong = Vec::new();
            for r in 0..rounds {
                go.wait();
                go.wait();
                let untracked = inv.tracked.get(&7).is_some_and(|t| !t.value);
                let continues = inv.policy(40) == InventoryPolicy::Continue;
                let sells = inv.slot(40).sells.load(Ordering::Relaxed);
                if (sells & CONTINUES != 0, sells & UNTRACKED != 0) != (continues, untracked) {
                    wrong.push(r);
                }
            }
            assert!(
                wrong.is_empty(),
                "{} of {rounds} rounds ended with the slot unlike the map",
                wrong.len()
            );
        });
    }

    #[test]
    fn an_untracked_item_sells_and_learned_items_win_and_outlive_a_restart() {
        let dir = crate::scratch_dir("inventory", "items");
        let file = dir.join("inventory.json");
        let inv = Inventory::open(file.clone()).unwrap();
        let item = |json: &str| {
            inv.apply_item(&serde_json::from_str::<InventoryItem>(json).unwrap())
                .unwrap()
        };
        // `inventory_items/update` before the product that says which variant it is.
        let update = |tracked: bool, at: &str| {
            format!(
                r#"{{"id":341629,"sku":"KIT-1","tracked":{tracked},"updated_at":"{at}","admin_graphql_api_id":"gid://shopify/InventoryItem/341629"}}"#
            )
        };
        item(&update(false, "2026-01-02T00:00:00Z"));
        inv.set_variant(40, 0);
        assert!(inv.slot(40).out(0));
        // The links file names a wrong item for variant 40; the webhook knows better.
        inv.map_item(341_629, 41);
        inv.learn_item(341_629, 40);
        inv.map_item(341_629, 41);
        assert_eq!(inv.item_variant.get(&341_629).map(|v| *v), Some(40), "learned wins");
        assert!(!inv.slot(40).out(0), "untracked: sells");
        assert_eq!(item(&update(true, "2026-01-01T00:00:00Z")), Applied::Stale);
        assert!(!inv.slot(40).out(0));
        inv.map_item(7, 42); // from the links file: not saved
        inv.save().unwrap();
        let back = Inventory::open(file).unwrap();
        assert!(!back.slot(40).out(0), "untracked after a restart");
        assert_eq!(back.item_variant.get(&341_629).map(|v| *v), Some(40));
        assert!(
            !back.item_variant.contains_key(&7),
            "the links file's mappings are bound again, not saved"
        );
        back.apply_item(&serde_json::from_str(&update(true, "2026-01-03T00:00:00Z")).unwrap())
            .unwrap();
        assert!(back.slot(40).out(0), "tracked again");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn sums_locations_and_never_rolls_back() {
        let inv = Inventory::default();
        let item = 271_878_346_596_884_015u64; // above 2^53
        let slot = inv.slot(40_000_000_001);
        assert_eq!(slot.available(), None);
        inv.map_item(item, 40_000_000_001);
        assert_eq!(
            inv.apply_level(item, 1, 10, 1000),
            Applied::Updated {
                variant: Some(40_000_000_001),
                total: 10
            }
        );
        assert_eq!(
            inv.apply_level(item, 2, 5, 1000),
            Applied::Updated {
                variant: Some(40_000_000_001),
                total: 15
            }
        );
        assert_eq!(inv.apply_level(item, 1, 99, 999), Applied::Stale, "late delivery");
        assert_eq!(inv.apply_level(item, 1, 10, 1000), Applied::Stale, "repeat");
        assert_eq!(
            inv.apply_level(item, 1, 3, 1000),
            Applied::Updated {
                variant: Some(40_000_000_001),
                total: 8
            },
            "a sale in the same second"
        );
        assert_eq!(
            inv.apply_level(item, 1, 10, 1000),
            Applied::Updated {
                variant: Some(40_000_000_001),
                total: 15
            },
            "a restock in the same second"
        );
        assert_eq!(
            inv.apply_level(item, 1, 0, 2000),
            Applied::Updated {
                variant: Some(40_000_000_001),
                total: 5
            }
        );
        assert_eq!(slot.available(), Some(5), "the bound slot sees it");
        let other = 7u64;
        inv.apply_level(other, 1, 3, 1);
        inv.map_item(other, 8);
        assert_eq!(inv.available(8), Some(3), "levels before the mapping count");
    }
}
