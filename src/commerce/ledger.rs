//! The commission ledger: for each order that paid a commission, what was paid and how much
//! has been clawed back since, kept on disk under `<data_dir>/commerce/ledger.jsonl` so a
//! refund or cancellation after a restart claws back against the same figures.
//!
//! - A cancellation claws back what is left (paid minus earlier refunds), a refund the rate on
//!   its subtotal up to what is left: cancelling and refunding one order never takes back more
//!   than it paid.
//! - An order the ledger does not know paid nothing that can be clawed back.
//! - Each clawback names what it was for (`cancelled`, `refund:<id>`), and one that is already
//!   on the ledger is not taken again: a refund Shopify delivers again after a restart (the
//!   delivery ids are remembered in memory only) takes nothing twice.
//! - The ledger is written before the payout outbox, and each payment and clawback says
//!   whether it was meant for the payout system (`payout`). Its commission record can then be
//!   made again from the ledger when Shopify retries a delivery whose outbox write failed (or
//!   was cut off by a crash), and at start-up for any the outbox does not know: the outbox
//!   takes it if it does not know it yet. A commission is never posted unless the ledger
//!   holds it, so a later refund claws back against it.
//! - Append-only JSON Lines, `fdatasync`ed before the webhook is answered; a torn last line
//!   (a crash mid-append, never answered 200) is cut at open, and Shopify delivers it again.

use super::journal::Journal;
use crate::links::config::CommissionConfig;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use std::io;
use std::path::Path;
use std::sync::Mutex;

const FILE: &str = "ledger.jsonl";

/// A paid commission and what has been clawed back of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub click_id: Option<String>,
    pub link_id: String,
    pub creator: String,
    pub campaign: String,
    pub rule: CommissionConfig,
    pub currency: String,
    /// The subtotal the commission was paid on, and the commission, in minor units.
    pub basis: i64,
    pub amount: i64,
    /// Clawed back so far (positive), of the basis and of the commission.
    #[serde(default)]
    pub clawed_basis: i64,
    #[serde(default)]
    pub clawed: i64,
    /// Whether payouts were on when it was written (its commission record then went to the
    /// payout outbox, after the ledger); `None` on lines written before this was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payout: Option<bool>,
    /// The clawbacks taken, from the ledger's `Clawed` lines.
    #[serde(skip)]
    pub clawbacks: Vec<Clawback>,
}

/// One clawback on the ledger (positive figures).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clawback {
    /// `cancelled` or `refund:<id>`.
    pub what: String,
    pub basis: i64,
    pub amount: i64,
    /// Its (negative) commission record was for the payout outbox; `None`: not known.
    pub payout: Option<bool>,
}

impl Entry {
    /// What a clawback of `basis` (`None`: all that is left, a cancellation) takes back:
    /// (basis, amount), never more than is left. A flat commission is taken back only whole.
    pub fn clawback(&self, basis: Option<i64>) -> (i64, i64) {
        let (basis_left, left) = (self.basis - self.clawed_basis, self.amount - self.clawed);
        match (basis, self.rule) {
            (None, _) => (basis_left.max(0), left.max(0)),
            (Some(_), CommissionConfig::FlatMinor(_)) => (0, 0),
            (Some(b), CommissionConfig::RateBp(bp)) => {
                let b = b.clamp(0, basis_left.max(0));
                (b, super::money::percent_of(b, bp).min(left.max(0)))
            }
        }
    }
}

/// A change to apply once the records it made are kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Change {
    Paid {
        order: u64,
        paid: Entry,
    },
    Clawed {
        order: u64,
        basis: i64,
        amount: i64,
        /// `cancelled` or `refund:<id>`; absent on lines written before it was kept.
        #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
        what: Option<String>,
        /// Its record was for the payout outbox (absent on lines written before it was kept).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        payout: Option<bool>,
    },
}

pub struct Ledger {
    file: Mutex<Option<Journal>>,
    orders: DashMap<u64, Entry>,
}

impl Ledger {
    /// Nothing kept on disk (unit tests).
    pub fn in_memory() -> Ledger {
        Ledger {
            file: Mutex::new(None),
            orders: DashMap::new(),
        }
    }

    /// Opens (or creates) `dir/ledger.jsonl` and replays it.
    pub fn open(dir: &Path) -> io::Result<Ledger> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(FILE);
        let (text, _torn) = super::journal::read(&path)?;
        let ledger = Ledger::in_memory();
        for (i, line) in text.split(|b| *b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let change: Change = serde_json::from_slice(line).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, format!("{}:{}: {e}", path.display(), i + 1))
            })?;
            ledger.remember(&change);
        }
        *ledger.file.lock().expect("ledger lock") = Some(Journal::open(&path, text.len() as u64)?);
        Ok(ledger)
    }

    /// True when `order` paid a commission (its records were sent then).
    pub fn holds(&self, order: u64) -> bool {
        self.orders.contains_key(&order)
    }

    /// The payments written while payouts were on, with their orders: what the payout
    /// outbox must know (see [`crate::commerce::payout`]'s start-up check).
    pub fn for_payout(&self) -> Vec<(u64, Entry)> {
        self.orders
            .iter()
            .filter(|e| e.payout == Some(true))
            .map(|e| (*e.key(), e.value().clone()))
            .collect()
    }

    /// Payments and clawbacks on lines older than the `payout` flag (`None`): whether each
    /// went to the payout outbox, as `sent(order, what)` says (the outbox keeps every id it
    /// ever queued), for as long as this process runs.
    pub fn settle_payouts(&self, sent: impl Fn(u64, &str) -> bool) {
        for mut e in self.orders.iter_mut() {
            let order = *e.key();
            let e = e.value_mut();
            if e.payout.is_none() {
                e.payout = Some(sent(order, "paid"));
            }
            for c in e.clawbacks.iter_mut().filter(|c| c.payout.is_none()) {
                c.payout = Some(sent(order, &c.what));
            }
        }
    }

    pub fn get(&self, order: u64) -> Option<Entry> {
        self.orders.get(&order).map(|e| e.clone())
    }

    /// Writes the changes (synced) and then applies them; on an error none is applied.
    pub fn apply(&self, changes: &[Change]) -> io::Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(journal) = file.as_mut() {
            let mut text = Vec::new();
            for c in changes {
                serde_json::to_writer(&mut text, c).expect("a change encodes");
                text.push(b'\n');
            }
            journal.append(&text)?;
        }
        for c in changes {
            self.remember(c);
        }
        Ok(())
    }

    fn remember(&self, change: &Change) {
        match change {
            Change::Paid { order, paid } => {
                // Never reset what was clawed back: the first record of a payment stands.
                self.orders.entry(*order).or_insert_with(|| paid.clone());
            }
            Change::Clawed {
                order,
                basis,
                amount,
                what,
                payout,
            } => {
                if let Some(mut e) = self.orders.get_mut(order) {
                    e.clawed_basis += basis;
                    e.clawed += amount;
                    if let Some(what) = what {
                        e.clawbacks.push(Clawback {
                            what: what.clone(),
                            basis: *basis,
                            amount: *amount,
                            payout: *payout,
                        });
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn entry(rule: CommissionConfig, basis: i64, amount: i64) -> Entry {
        Entry {
            click_id: None,
            link_id: "l".into(),
            creator: "c".into(),
            campaign: "k".into(),
            rule,
            currency: "USD".into(),
            basis,
            amount,
            clawed_basis: 0,
            clawed: 0,
            payout: None,
            clawbacks: Vec::new(),
        }
    }

    #[test]
    fn clawbacks_never_take_more_than_was_paid() {
        let mut e = entry(CommissionConfig::RateBp(1000), 5000, 500);
        assert_eq!(e.clawback(Some(1999)), (1999, 200));
        (e.clawed_basis, e.clawed) = (1999, 200);
        assert_eq!(e.clawback(None), (3001, 300), "a cancel takes what is left");
        (e.clawed_basis, e.clawed) = (5000, 500);
        assert_eq!(e.clawback(Some(5000)), (0, 0), "a refund after a cancel takes nothing");
        assert_eq!(e.clawback(None), (0, 0));
        let flat = entry(CommissionConfig::FlatMinor(500), 5000, 500);
        assert_eq!(flat.clawback(Some(1000)), (0, 0), "a partial refund leaves a flat one");
        assert_eq!(flat.clawback(None), (5000, 500));
    }

    #[test]
    fn the_ledger_survives_a_reopen_and_a_torn_tail() {
        let dir = crate::scratch_dir("ledger", "reopen");
        let l = Ledger::open(&dir).unwrap();
        let paid = entry(CommissionConfig::RateBp(1000), 5000, 500);
        l.apply(&[Change::Paid {
            order: 9_007_199_254_740_995,
            paid: paid.clone(),
        }])
        .unwrap();
        l.apply(&[Change::Clawed {
            order: 9_007_199_254_740_995,
            basis: 1000,
            amount: 100,
            what: Some("refund:77".into()),
            payout: Some(true),
        }])
        .unwrap();
        drop(l);
        let mut f = std::fs::OpenOptions::new().append(true).open(dir.join(FILE)).unwrap();
        f.write_all(br#"{"order":1,"basis":"#).unwrap();
        drop(f);
        let l = Ledger::open(&dir).unwrap();
        let e = l.get(9_007_199_254_740_995).unwrap();
        assert_eq!((e.clawed_basis, e.clawed, e.amount), (1000, 100, 500));
        let want = Clawback {
            what: "refund:77".into(),
            basis: 1000,
            amount: 100,
            payout: Some(true),
        };
        assert_eq!(e.clawbacks, [want], "what it was for survives the reopen");
        assert!(l.get(1).is_none());
        // A line written before clawbacks named what they were for still counts.
        l.apply(&[Change::Clawed {
            order: 9_007_199_254_740_995,
            basis: 4000,
            amount: 400,
            what: None,
            payout: None,
        }])
        .unwrap();
        let text = std::fs::read_to_string(dir.join(FILE)).unwrap();
        assert!(
            text.ends_with("{\"order\":9007199254740995,\"basis\":4000,\"amount\":400}\n"),
            "{text}"
        );
        let l = Ledger::open(&dir).unwrap();
        assert_eq!(
            l.get(9_007_199_254_740_995).unwrap().clawed,
            500,
            "appended after the cut"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
