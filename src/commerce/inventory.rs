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
//! The redirect path never touches a map: every link that watches a variant holds that
//! variant's [`Slot`] (one atomic), bound when the links table is installed. Updates take the
//! maps' shard locks and then store into the slot, so a change is visible to the very next
//! redirect.

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

/// Availability not reported yet: treated as in stock.
pub const UNKNOWN: i64 = i64::MIN;

#[derive(Debug)]
pub struct Slot(AtomicI64);

impl Slot {
    pub fn available(&self) -> Option<i64> {
        match self.0.load(Ordering::Relaxed) {
            UNKNOWN => None,
            n => Some(n),
        }
    }
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
    /// Newer than what was known: the variant's total changed to this.
    Updated { variant: Option<u64>, total: i64 },
    /// Older than (or as old as) the level already held: ignored.
    Stale,
}

#[derive(Default)]
pub struct Inventory {
    slots: DashMap<u64, Arc<Slot>>,
    /// inventory item → levels per location.
    levels: DashMap<u64, Vec<Level>>,
    /// inventory item → variant (Shopify: one to one), from the links file.
    item_variant: DashMap<u64, u64>,
    /// Where the state is saved; none: kept in memory only.
    file: Option<PathBuf>,
    /// Changed since the last save.
    dirty: AtomicBool,
}

/// The saved state: every known total, and the levels they are made of.
#[derive(Serialize, Deserialize)]
struct Saved {
    variants: BTreeMap<u64, i64>,
    levels: BTreeMap<u64, Vec<Level>>,
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
            inv.slot(variant).0.store(n, Ordering::Relaxed);
        }
        for (item, levels) in saved.levels {
            inv.levels.insert(item, levels);
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
            .or_insert_with(|| Arc::new(Slot(AtomicI64::new(UNKNOWN))))
            .clone()
    }

    pub fn map_item(&self, inventory_item: u64, variant: u64) {
        self.item_variant.insert(inventory_item, variant);
        // Levels that arrived before the mapping count now, for a variant with no total yet.
        // One it has (saved, or set since by variant) stays: the levels may be older.
        if let Some(levels) = self.levels.get(&inventory_item) {
            let _ = self.slot(variant).0.compare_exchange(
                UNKNOWN,
                levels.iter().map(|l| l.available).sum(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// Sets a variant's total directly (admin API, by variant).
    pub fn set_variant(&self, variant: u64, available: i64) {
        self.slot(variant).0.store(available, Ordering::Relaxed);
        self.dirty.store(true, Ordering::Relaxed);
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
            self.slot(v).0.store(total, Ordering::Relaxed);
        }
        self.dirty.store(true, Ordering::Relaxed);
        Applied::Updated { variant, total }
    }

    pub fn available(&self, variant: u64) -> Option<i64> {
        self.slots.get(&variant).and_then(|s| s.available())
    }
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
    /// A variant's total, set directly.
    Variant { variant: u64, available: i64 },
}

impl Inventory {
    /// Applies one update; `Err` names what was wrong with it.
    pub fn apply(&self, u: &Update) -> Result<Applied, String> {
        match u {
            Update::Variant { variant, available } => {
                self.set_variant(*variant, *available);
                Ok(Applied::Updated {
                    variant: Some(*variant),
                    total: *available,
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
        let Update::Level { updated_at, .. } = self else {
            return Ok(now_ms);
        };
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
