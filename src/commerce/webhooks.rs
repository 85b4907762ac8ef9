//! Shopify webhooks: verification, de-duplication, and what orders and inventory levels turn
//! into.
//!
//! - Verified before anything is parsed: `X-Shopify-Hmac-Sha256` is base64 of HMAC-SHA256 over
//!   the raw body; every configured secret is tried (two during a rotation), each compared in
//!   constant time. A bad or missing MAC is 401.
//! - De-duplicated by `X-Shopify-Webhook-Id` (kept 72 h, longer than Shopify's retry horizon):
//!   a repeated delivery is answered 200 and not applied again, however many arrive at once.
//!   One that arrives while the first is still being applied is answered 503, not 200: that
//!   first attempt may yet fail (and be forgotten), and a 200 would have told Shopify the
//!   event was delivered when it never was.
//! - Orders: `orders/paid` becomes a `conversion` record and, when the link pays commission, a
//!   `commission` record; `orders/cancelled` a negative commission (clawback); `refunds/create`
//!   a negative commission on the refunded subtotal. Each once per order (and refund).
//!   Attribution: the cart attribute `cl_click` (+ `cl_link`) → that click and link; else the
//!   discount code → its link; else unattributed.

use super::ledger::{Change, Entry, Ledger};
use super::money::{percent_of, to_minor};
use crate::links::config::CommissionConfig;
use crate::links::{Link, LinkTable};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use dashmap::DashMap;
use ring::hmac;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// How long a delivery id is remembered.
const DEDUP_TTL_MS: u64 = 72 * 3600 * 1000;
/// Remembered ids and orders are bounded; past this, expired entries are swept.
const MAX_REMEMBERED: usize = 1_000_000;

pub struct Webhooks {
    secrets: Vec<hmac::Key>,
    /// Delivery id → when it arrived, and whether it has been applied (else it is under way).
    deliveries: DashMap<Box<str>, (u64, bool)>,
    /// (order id, what was emitted: "paid" | "cancelled" | "refund:<id>") → when.
    emitted: DashMap<(u64, Box<str>), u64>,
    /// Paid commissions and their clawbacks, per order (on disk: they outlive restarts).
    pub ledger: Arc<Ledger>,
    /// Held by the orders webhook from reading the ledger to writing it, so a cancellation
    /// and a refund of one order arriving together do not both claw back the same amount.
    pub orders: Arc<tokio::sync::Mutex<()>>,
}

/// What one orders or refunds delivery makes: records, and the ledger changes they stand for.
#[derive(Debug, Default)]
pub struct OrderRecords {
    pub records: Vec<Made>,
    pub changes: Vec<Change>,
}

/// One record a delivery makes, and where it goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Made {
    pub record: Value,
    /// A commission for the payout outbox: payouts are on, and it is not the clawback of a
    /// payment made while they were off.
    pub payout: bool,
    /// Made again from the ledger, which an earlier attempt wrote: it goes to the stream only
    /// if the outbox newly queues this commission id (for a conversion: its order's paid
    /// commission), that is, only if that attempt never got as far.
    pub again: Option<String>,
}

impl Made {
    fn new(record: Value, payout: bool) -> Made {
        Made {
            record,
            payout,
            again: None,
        }
    }

    /// A commission made again from the ledger, for the outbox.
    fn again(record: Value) -> Made {
        let id = record["commission_id"].as_str().map(str::to_string);
        Made {
            record,
            payout: true,
            again: id,
        }
    }
}

/// What [`Webhooks::first_delivery`] knows of a delivery id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    First,
    Applied,
    /// Its first attempt is still being applied.
    UnderWay,
}

#[derive(Debug, Clone)]
pub struct Attribution {
    pub how: &'static str,
    pub click_id: Option<String>,
    pub link: Option<Arc<Link>>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("secrets", &self.secrets.len())
            .finish()
    }
}

#[derive(Deserialize)]
struct NameValue {
    name: String,
    value: Value,
}

#[derive(Deserialize)]
struct Code {
    code: String,
}

#[derive(Deserialize)]
pub struct Order {
    id: u64,
    #[serde(default)]
    note_attributes: Vec<NameValue>,
    #[serde(default)]
    discount_codes: Vec<Code>,
    #[serde(default)]
    current_subtotal_price: Option<String>,
    #[serde(default)]
    subtotal_price: Option<String>,
    #[serde(default)]
    currency: Option<String>,
}

#[derive(Deserialize)]
struct Money {
    amount: String,
    currency_code: String,
}

#[derive(Deserialize)]
struct MoneySet {
    shop_money: Money,
}

#[derive(Deserialize)]
struct RefundLine {
    subtotal_set: MoneySet,
}

#[derive(Deserialize)]
pub struct Refund {
    id: u64,
    order_id: u64,
    #[serde(default)]
    refund_line_items: Vec<RefundLine>,
}

/// A refused webhook, and the status it gets.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WebhookError {
    #[error("signature missing or wrong")]
    Unauthorized,
    #[error("Shopify webhooks are off: no CARTLINK_SHOPIFY_WEBHOOK_SECRETS")]
    Disabled,
    #[error("payload: {0}")]
    BadPayload(String),
}

impl Webhooks {
    pub fn new(secrets: &[String], ledger: Ledger) -> Webhooks {
        Webhooks {
            secrets: secrets
                .iter()
                .map(|s| hmac::Key::new(hmac::HMAC_SHA256, s.as_bytes()))
                .collect(),
            deliveries: DashMap::new(),
            emitted: DashMap::new(),
            ledger: Arc::new(ledger),
            orders: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    pub fn enabled(&self) -> bool {
        !self.secrets.is_empty()
    }

    /// Checks `X-Shopify-Hmac-Sha256` against every secret, in constant time each.
    pub fn verify(&self, body: &[u8], header: Option<&[u8]>) -> Result<(), WebhookError> {
        if !self.enabled() {
            return Err(WebhookError::Disabled);
        }
        let given = header
            .and_then(|h| STANDARD.decode(h.trim_ascii()).ok())
            .ok_or(WebhookError::Unauthorized)?;
        let mut ok = subtle::Choice::from(0);
        for key in &self.secrets {
            ok |= hmac::sign(key, body).as_ref().ct_eq(&given);
        }
        if bool::from(ok) {
            Ok(())
        } else {
            Err(WebhookError::Unauthorized)
        }
    }

    /// Whether this delivery id is new within the window (the caller applies it, then calls
    /// [`Webhooks::applied`] or [`Webhooks::forget_delivery`]), was applied, or is under way.
    pub fn first_delivery(&self, webhook_id: &str, now_ms: u64) -> Seen {
        self.sweep(now_ms);
        let mut seen = Seen::First;
        self.deliveries
            .entry(webhook_id.into())
            .and_modify(|(at, done)| {
                if now_ms.saturating_sub(*at) > DEDUP_TTL_MS {
                    (*at, *done) = (now_ms, false);
                } else {
                    seen = if *done { Seen::Applied } else { Seen::UnderWay };
                }
            })
            .or_insert((now_ms, false));
        seen
    }

    /// The delivery was applied: its repeats are answered 200 from now on.
    pub fn applied(&self, webhook_id: &str) {
        if let Some(mut d) = self.deliveries.get_mut(webhook_id) {
            d.1 = true;
        }
    }

    /// Forgets a delivery that could not be applied, so Shopify's retry is not a "replay".
    pub fn forget_delivery(&self, webhook_id: &str) {
        self.deliveries.remove(webhook_id);
    }

    /// Undoes [`Webhooks::order_records`] for records that could not be kept (the ledger or
    /// the payout outbox refused them), so Shopify's retry of the delivery makes them again.
    pub fn forget_records(&self, records: &[Made]) {
        for Made { record: r, .. } in records {
            let Some(order) = r["order_id"].as_u64() else { continue };
            // Commissions are `shopify:ORDER:WHAT`; a conversion comes only from `paid`.
            let what = r["commission_id"]
                .as_str()
                .and_then(|id| id.splitn(3, ':').nth(2))
                .unwrap_or("paid");
            self.emitted.remove(&(order, what.into()));
        }
    }

    fn once(&self, order: u64, what: &str, now_ms: u64) -> bool {
        let mut fresh = false;
        self.emitted.entry((order, what.into())).or_insert_with(|| {
            fresh = true;
            now_ms
        });
        fresh
    }

    fn sweep(&self, now_ms: u64) {
        if self.deliveries.len() > MAX_REMEMBERED {
            self.deliveries
                .retain(|_, (t, _)| now_ms.saturating_sub(*t) <= DEDUP_TTL_MS);
        }
        if self.emitted.len() > MAX_REMEMBERED {
            self.emitted.retain(|_, t| now_ms.saturating_sub(*t) <= DEDUP_TTL_MS);
        }
    }

    /// Records for one order or refund topic (none when already emitted), and the ledger
    /// changes they stand for. Clawbacks are taken against the ledger: never more than was
    /// paid, and nothing for an order it has no paid commission for. `payouts`: payouts are
    /// on; commissions are marked for the outbox, and what the ledger holds for it is made
    /// again (see [`Made::again`]).
    pub fn order_records(
        &self,
        topic: &str,
        body: &[u8],
        table: &LinkTable,
        ts: &str,
        now_ms: u64,
        payouts: bool,
    ) -> Result<OrderRecords, WebhookError> {
        let bad = |e: serde_json::Error| WebhookError::BadPayload(e.to_string());
        let mut out = OrderRecords::default();
        match topic {
            "orders/paid" => {
                let order: Order = serde_json::from_slice(body).map_err(bad)?;
                let currency = order.currency.clone().unwrap_or_else(|| "USD".into());
                let subtotal = order
                    .current_subtotal_price
                    .as_deref()
                    .or(order.subtotal_price.as_deref())
                    .unwrap_or("0");
                let subtotal = to_minor(subtotal, &currency).map_err(WebhookError::BadPayload)?;
                if !self.once(order.id, "paid", now_ms) {
                    return Ok(out);
                }
                let attribution = attribute(&order, table);
                let conversion = conversion(&order, &attribution, subtotal, &currency, ts);
                // The ledger outlives restarts: an order it holds was paid before, whatever
                // this process remembers.
                if let Some(paid) = self.ledger.get(order.id) {
                    if payouts && paid.payout == Some(true) {
                        let made = Made::again(paid_commission(order.id, &paid, ts));
                        out.records.push(Made {
                            again: made.again.clone(),
                            ..Made::new(conversion, false)
                        });
                        out.records.push(made);
                    }
                    return Ok(out);
                }
                out.records.push(Made::new(conversion, false));
                if let Some(mut paid) = paid_entry(&attribution, subtotal, &currency) {
                    paid.payout = Some(payouts);
                    out.records
                        .push(Made::new(paid_commission(order.id, &paid, ts), payouts));
                    out.changes.push(Change::Paid { order: order.id, paid });
                }
            }
            "orders/cancelled" => {
                let order: Order = serde_json::from_slice(body).map_err(bad)?;
                if !self.once(order.id, "cancelled", now_ms) {
                    return Ok(out);
                }
                out.claw_back(&self.ledger, order.id, "cancelled", None, ts, payouts);
            }
            "refunds/create" => {
                let refund: Refund = serde_json::from_slice(body).map_err(bad)?;
                let what = format!("refund:{}", refund.id);
                let mut basis = 0i64;
                for line in &refund.refund_line_items {
                    let m = &line.subtotal_set.shop_money;
                    basis += to_minor(&m.amount, &m.currency_code).map_err(WebhookError::BadPayload)?;
                }
                if !self.once(refund.order_id, &what, now_ms) {
                    return Ok(out);
                }
                out.claw_back(&self.ledger, refund.order_id, &what, Some(basis), ts, payouts);
            }
            _ => {}
        }
        Ok(out)
    }
}

impl OrderRecords {
    /// A negative commission for what `basis` (`None`: all that is left) takes back.
    fn claw_back(&mut self, ledger: &Ledger, order: u64, what: &str, basis: Option<i64>, ts: &str, payouts: bool) {
        let Some(paid) = ledger.get(order) else {
            return;
        };
        // The payment's own commission first: an attempt that wrote the ledger may not have
        // got it into the outbox, and a clawback must not reach the payout system alone.
        let for_payouts = payouts && paid.payout == Some(true);
        if for_payouts {
            self.records.push(Made::again(paid_commission(order, &paid, ts)));
        }
        // Already on the ledger: Shopify delivered it again after this process forgot it (or
        // after the outbox write that followed the ledger's failed). Made again, as taken.
        if let Some(c) = paid.clawbacks.iter().find(|c| c.what == what) {
            if for_payouts && c.payout == Some(true) {
                self.records
                    .push(Made::again(commission(order, what, &paid, -c.basis, -c.amount, ts)));
            }
            return;
        }
        let (basis, amount) = paid.clawback(basis);
        if amount == 0 {
            return;
        }
        // A payment made while payouts were off never reached the payout system: its
        // clawback goes to the stream only. (Lines older than the flag are settled from the
        // outbox at start-up, see `Ledger::settle_payouts`.)
        self.records.push(Made::new(
            commission(order, what, &paid, -basis, -amount, ts),
            for_payouts,
        ));
        self.changes.push(Change::Clawed {
            order,
            basis,
            amount,
            what: Some(what.into()),
            payout: Some(for_payouts),
        });
    }
}

/// `shopify:<order>:<what>`: `what` is `paid`, `cancelled` or `refund:<id>`.
pub fn commission_id(order: u64, what: &str) -> String {
    format!("shopify:{order}:{what}")
}

/// The commission record of a payment on the ledger.
fn paid_commission(order: u64, paid: &Entry, ts: &str) -> Value {
    commission(order, "paid", paid, paid.basis, paid.amount, ts)
}

/// The commission records a payment written while payouts were on stands for on the ledger
/// (the payment's, and its clawbacks' that were for the outbox), made again with `ts`.
pub fn payout_records(order: u64, paid: &Entry, ts: &str) -> Vec<Value> {
    let mut out = vec![paid_commission(order, paid, ts)];
    for c in paid.clawbacks.iter().filter(|c| c.payout == Some(true)) {
        out.push(commission(order, &c.what, paid, -c.basis, -c.amount, ts));
    }
    out
}

fn attribute(order: &Order, table: &LinkTable) -> Attribution {
    let attr = |name: &str| {
        order
            .note_attributes
            .iter()
            .find(|a| a.name == name)
            .and_then(|a| match &a.value {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
    };
    let by_code = || {
        order
            .discount_codes
            .iter()
            .find_map(|c| table.by_discount(&c.code))
            .cloned()
    };
    let click = attr("cl_click").filter(|c| uuid::Uuid::parse_str(c).is_ok());
    if let Some(click_id) = click {
        // Under `first_click` the cart names the first click's link too; a link no longer in
        // the table (renamed, removed) leaves the discount code to say whose sale it was.
        // The first click's link when the cart names one (never the cart's own then: that is
        // the later click's), else the cart's own.
        let named = attr("cl_first_link").or_else(|| attr("cl_link"));
        let link = named.and_then(|id| table.get(id.as_bytes()).cloned()).or_else(by_code);
        return Attribution {
            how: "click",
            click_id: Some(click_id),
            link,
        };
    }
    if let Some(link) = by_code() {
        return Attribution {
            how: "discount",
            click_id: None,
            link: Some(link),
        };
    }
    Attribution {
        how: "none",
        click_id: None,
        link: None,
    }
}

fn conversion(order: &Order, a: &Attribution, subtotal: i64, currency: &str, ts: &str) -> Value {
    json!({
        "v": 1,
        "type": "conversion",
        "conversion_id": format!("shopify:{}", order.id),
        "ts": ts,
        "order_id": order.id,
        "attribution": a.how,
        "click_id": a.click_id,
        "link_id": a.link.as_ref().map(|l| &*l.id),
        "creator": a.link.as_ref().map(|l| &*l.creator),
        "campaign": a.link.as_ref().map(|l| &*l.campaign),
        "discount_codes": order.discount_codes.iter().map(|c| c.code.as_str()).collect::<Vec<_>>(),
        "subtotal_minor": subtotal,
        "currency": currency,
    })
}

/// The commission an attributed order pays, when its link pays one.
fn paid_entry(a: &Attribution, basis: i64, currency: &str) -> Option<Entry> {
    let link = a.link.as_ref()?;
    let rule = link.commission?;
    let amount = match rule {
        CommissionConfig::RateBp(bp) => percent_of(basis, bp),
        CommissionConfig::FlatMinor(m) => m,
    };
    Some(Entry {
        click_id: a.click_id.clone(),
        link_id: link.id.to_string(),
        creator: link.creator.to_string(),
        campaign: link.campaign.to_string(),
        rule,
        currency: currency.into(),
        basis,
        amount,
        clawed_basis: 0,
        clawed: 0,
        payout: None,
        clawbacks: Vec::new(),
    })
}

/// A commission record: `basis` and `amount` are negative for a clawback.
fn commission(order: u64, what: &str, paid: &Entry, basis: i64, amount: i64, ts: &str) -> Value {
    let rule = match paid.rule {
        CommissionConfig::RateBp(bp) => format!("rate_bp:{bp}"),
        CommissionConfig::FlatMinor(m) => format!("flat_minor:{m}"),
    };
    json!({
        "v": 1,
        "type": "commission",
        "commission_id": commission_id(order, what),
        "ts": ts,
        "order_id": order,
        "reason": what.split(':').next(),
        "click_id": paid.click_id,
        "link_id": paid.link_id,
        "creator": paid.creator,
        "campaign": paid.campaign,
        "basis_minor": basis,
        "amount_minor": amount,
        "currency": paid.currency,
        "rule": rule,
        "rounding": "half away from zero, to the minor unit",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINKS: &str = r#"{"id":"jane-kit","creator":"jane","campaign":"s26","discount":"JANE15","target":{"type":"url","url":"https://b.example/"},"commission":{"rate_bp":1000}}
{"id":"sam","creator":"sam","campaign":"m","discount":"SAM10","target":{"type":"url","url":"https://b.example/"},"commission":{"flat_minor":500}}"#;

    fn sign(secret: &str, body: &[u8]) -> String {
        STANDARD.encode(hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()), body).as_ref())
    }

    #[test]
    fn verification_rotation_and_tampering() {
        let w = Webhooks::new(&["new-secret".into(), "old-secret".into()], Ledger::in_memory());
        let body = br#"{"id":1}"#;
        assert_eq!(w.verify(body, Some(sign("new-secret", body).as_bytes())), Ok(()));
        assert_eq!(w.verify(body, Some(sign("old-secret", body).as_bytes())), Ok(()));
        assert_eq!(
            w.verify(body, Some(sign("other", body).as_bytes())),
            Err(WebhookError::Unauthorized)
        );
        assert_eq!(
            w.verify(br#"{"id":2}"#, Some(sign("new-secret", body).as_bytes())),
            Err(WebhookError::Unauthorized)
        );
        assert_eq!(w.verify(body, None), Err(WebhookError::Unauthorized));
        assert_eq!(
            Webhooks::new(&[], Ledger::in_memory()).verify(body, None),
            Err(WebhookError::Disabled)
        );
    }

    #[test]
    fn attribution_three_ways_and_commission_to_the_cent() {
        let table = crate::links::parse(LINKS, "t", &crate::links::signature::demo()).unwrap();
        let w = Webhooks::new(&["s".into()], Ledger::in_memory());
        let paid = |id: u64, extra: &str| {
            format!(r#"{{"id":{id},"currency":"USD","current_subtotal_price":"19.95",{extra}"note":null}}"#)
        };
        let by_click = paid(
            5_000_000_000_000_001,
            r#""note_attributes":[{"name":"cl_click","value":"0192f3a1-7c2e-7b3d-9f00-5a1b2c3d4e5f"},{"name":"cl_link","value":"jane-kit"}],"discount_codes":[{"code":"SAM10"}],"#,
        );
        // As the webhook does: the records, then their ledger changes once they are kept.
        let run = |topic: &str, body: &str| {
            let out = w.order_records(topic, body.as_bytes(), &table, "t", 0, false).unwrap();
            w.ledger.apply(&out.changes).unwrap();
            values(&out.records)
        };
        let r = run("orders/paid", &by_click);
        assert_eq!(r[0]["attribution"], "click");
        assert_eq!(r[0]["order_id"], 5_000_000_000_000_001u64);
        assert_eq!(r[0]["creator"], "jane");
        assert_eq!(
            (r[1]["type"].as_str(), r[1]["amount_minor"].as_i64()),
            (Some("commission"), Some(200))
        );
        assert!(run("orders/paid", &by_click).is_empty(), "once per order");
        let by_code = paid(2, r#""discount_codes":[{"code":"sam10"}],"#);
        let r = run("orders/paid", &by_code);
        assert_eq!(
            (r[0]["attribution"].as_str(), r[1]["amount_minor"].as_i64()),
            (Some("discount"), Some(500))
        );
        let none = paid(3, "");
        let r = run("orders/paid", &none);
        assert_eq!((r.len(), r[0]["attribution"].as_str()), (1, Some("none")));
        // Refund of 9.99 on the clicked order: 10 % → −1.00; the cancellation then takes what
        // is left of the 2.00 (−1.00), and a refund after it nothing.
        let refund = r#"{"id":77,"order_id":5000000000000001,"refund_line_items":[{"subtotal":9.99,"subtotal_set":{"shop_money":{"amount":"9.99","currency_code":"USD"}}}]}"#;
        let r = run("refunds/create", refund);
        assert_eq!(
            (
                r[0]["amount_minor"].as_i64(),
                r[0]["basis_minor"].as_i64(),
                r[0]["creator"].as_str()
            ),
            (Some(-100), Some(-999), Some("jane"))
        );
        let out = w
            .order_records("orders/cancelled", by_click.as_bytes(), &table, "t", 0, false)
            .unwrap();
        assert_eq!(
            (
                out.records[0].record["amount_minor"].as_i64(),
                out.records[0].record["basis_minor"].as_i64()
            ),
            (Some(-100), Some(-996))
        );
        // Forgotten records (their ledger write failed, so their changes were not applied)
        // are made again, the same, by the retry.
        w.forget_records(&out.records);
        let again = run("orders/cancelled", &by_click);
        assert_eq!(again, values(&out.records));
        assert!(run("refunds/create", refund).is_empty(), "not forgotten: still once");
        let late = r#"{"id":78,"order_id":5000000000000001,"refund_line_items":[{"subtotal_set":{"shop_money":{"amount":"5.00","currency_code":"USD"}}}]}"#;
        assert!(
            run("refunds/create", late).is_empty(),
            "all of it was clawed back already"
        );
        // Flat: a partial refund leaves it, a cancellation takes it whole; an order never paid
        // (or paid before this ledger) has nothing to claw back.
        let flat_refund = r#"{"id":79,"order_id":2,"refund_line_items":[{"subtotal_set":{"shop_money":{"amount":"5.00","currency_code":"USD"}}}]}"#;
        assert!(run("refunds/create", flat_refund).is_empty());
        assert_eq!(run("orders/cancelled", &by_code)[0]["amount_minor"], -500);
        assert!(run("orders/cancelled", &paid(4, r#""discount_codes":[{"code":"SAM10"}],"#)).is_empty());
    }

    fn values(made: &[Made]) -> Vec<Value> {
        made.iter().map(|m| m.record.clone()).collect()
    }

    /// (commission_id or conversion_id, for the outbox, made again for) of each record.
    fn shape(made: &[Made]) -> Vec<(String, bool, Option<String>)> {
        made.iter()
            .map(|m| {
                let id = m.record["commission_id"]
                    .as_str()
                    .or(m.record["conversion_id"].as_str());
                (id.unwrap().to_string(), m.payout, m.again.clone())
            })
            .collect()
    }

    fn owned(v: &[(&str, bool, Option<&str>)]) -> Vec<(String, bool, Option<String>)> {
        v.iter()
            .map(|(id, p, a)| (id.to_string(), *p, a.map(str::to_string)))
            .collect()
    }

    #[test]
    fn what_the_ledger_holds_is_made_again_for_the_outbox_and_clawbacks_follow_their_payment() {
        let table = crate::links::parse(LINKS, "t", &crate::links::signature::demo()).unwrap();
        let w = Webhooks::new(&["s".into()], Ledger::in_memory());
        let jane = r#"{"id":7,"currency":"USD","current_subtotal_price":"19.95","discount_codes":[{"code":"JANE15"}]}"#;
        let refund = r#"{"id":70,"order_id":7,"refund_line_items":[{"subtotal_set":{"shop_money":{"amount":"9.99","currency_code":"USD"}}}]}"#;
        // As the webhook does when the ledger takes the changes and the outbox then fails:
        // the records are forgotten and Shopify retries.
        let attempt = |topic: &str, body: &str, payouts: bool| {
            let out = w
                .order_records(topic, body.as_bytes(), &table, "t", 0, payouts)
                .unwrap();
            w.ledger.apply(&out.changes).unwrap();
            w.forget_records(&out.records);
            out
        };
        let first = attempt("orders/paid", jane, true);
        assert_eq!(
            shape(&first.records),
            owned(&[("shopify:7", false, None), ("shopify:7:paid", true, None)])
        );
        assert_eq!(first.records[1].record["amount_minor"], 200);
        let retry = attempt("orders/paid", jane, true);
        assert!(retry.changes.is_empty(), "the ledger is not written twice");
        // Both follow the commission: to the stream only if the outbox takes it now.
        let paid = Some("shopify:7:paid");
        assert_eq!(
            shape(&retry.records),
            owned(&[("shopify:7", false, paid), ("shopify:7:paid", true, paid)])
        );
        assert_eq!(
            retry.records[1].record, first.records[1].record,
            "the same, from the ledger"
        );

        // A refund: the payment's commission comes first, in case its outbox write is the one
        // that failed; a clawback must not reach the payout system alone.
        let first = attempt("refunds/create", refund, true);
        assert_eq!(
            shape(&first.records),
            owned(&[("shopify:7:paid", true, paid), ("shopify:7:refund:70", true, None)])
        );
        assert_eq!(first.records[1].record["amount_minor"], -100);
        let retry = attempt("refunds/create", refund, true);
        assert!(retry.changes.is_empty());
        let refunded = Some("shopify:7:refund:70");
        assert_eq!(
            shape(&retry.records),
            owned(&[("shopify:7:paid", true, paid), ("shopify:7:refund:70", true, refunded)])
        );
        assert_eq!(retry.records[1].record, first.records[1].record);
        assert_eq!(w.ledger.get(7).unwrap().clawed, 100, "clawed back once");
        // At start-up the payout side checks the same records against its outbox.
        let all = payout_records(7, &w.ledger.get(7).unwrap(), "t");
        assert_eq!(values(&retry.records), all);

        // Paid while payouts were off: nothing goes to the outbox for it, not even a later
        // clawback once they are on (the payout system never saw the payment).
        let sam = r#"{"id":8,"currency":"USD","current_subtotal_price":"10.00","discount_codes":[{"code":"SAM10"}]}"#;
        assert_eq!(
            shape(&attempt("orders/paid", sam, false).records),
            owned(&[("shopify:8", false, None), ("shopify:8:paid", false, None)])
        );
        assert!(attempt("orders/paid", sam, true).records.is_empty());
        let cancel = attempt("orders/cancelled", sam, true);
        assert_eq!(shape(&cancel.records), owned(&[("shopify:8:cancelled", false, None)]));
        assert!(payout_records(8, &w.ledger.get(8).unwrap(), "t").len() == 1 && w.ledger.for_payout().len() == 1);
        // With payouts off, nothing is made again.
        assert!(attempt("orders/paid", jane, false).records.is_empty());

        // Lines older than the flag: settled from what the outbox knows at start-up.
        for order in [9, 10] {
            let mut paid = w.ledger.get(8).unwrap();
            (paid.payout, paid.clawed, paid.clawed_basis, paid.clawbacks) = (None, 0, 0, Vec::new());
            w.ledger.apply(&[Change::Paid { order, paid }]).unwrap();
        }
        w.ledger.settle_payouts(|order, what| order == 9 && what == "paid");
        let cancel = |id: u64| format!(r#"{{"id":{id},"currency":"USD"}}"#);
        assert_eq!(
            shape(&attempt("orders/cancelled", &cancel(9), true).records),
            owned(&[
                ("shopify:9:paid", true, Some("shopify:9:paid")),
                ("shopify:9:cancelled", true, None)
            ])
        );
        assert_eq!(
            shape(&attempt("orders/cancelled", &cancel(10), true).records),
            owned(&[("shopify:10:cancelled", false, None)]),
            "never sent, so neither is its clawback"
        );
    }

    #[test]
    fn the_first_clicks_link_wins_and_an_unknown_link_falls_back_to_the_code() {
        let table = crate::links::parse(LINKS, "t", &crate::links::signature::demo()).unwrap();
        let w = Webhooks::new(&["s".into()], Ledger::in_memory());
        let creator = |id: u64, attrs: &str| {
            let body = format!(
                r#"{{"id":{id},"currency":"USD","current_subtotal_price":"10.00","note_attributes":[{{"name":"cl_click","value":"0192f3a1-7c2e-7b3d-9f00-5a1b2c3d4e5f"}},{attrs}],"discount_codes":[{{"code":"SAM10"}}]}}"#
            );
            let r = w
                .order_records("orders/paid", body.as_bytes(), &table, "t", 0, false)
                .unwrap()
                .records;
            let r = values(&r);
            (r[0]["attribution"].clone(), r[0]["creator"].clone())
        };
        // A first_click cart: sam's link, jane's first click.
        assert_eq!(
            creator(
                1,
                r#"{"name":"cl_link","value":"sam"},{"name":"cl_first_link","value":"jane-kit"}"#
            ),
            ("click".into(), "jane".into())
        );
        // The link was renamed since: the discount code says whose sale it was.
        assert_eq!(
            creator(2, r#"{"name":"cl_link","value":"gone"}"#),
            ("click".into(), "sam".into())
        );
        // The first click's link is gone: the code, not the cart's own (the later) link.
        assert_eq!(
            creator(
                3,
                r#"{"name":"cl_link","value":"jane-kit"},{"name":"cl_first_link","value":"gone"}"#
            ),
            ("click".into(), "sam".into())
        );
    }

    #[test]
    fn ten_concurrent_replays_apply_once() {
        let w = Arc::new(Webhooks::new(&["s".into()], Ledger::in_memory()));
        let firsts: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..10)
                .map(|_| s.spawn(|| (w.first_delivery("d-1", 1000) == Seen::First) as usize))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(firsts, 1);
        assert_eq!(w.first_delivery("d-1", 1000), Seen::UnderWay, "not applied yet");
        w.applied("d-1");
        assert_eq!(w.first_delivery("d-1", 1000), Seen::Applied);
        assert_eq!(
            w.first_delivery("d-1", 1000 + DEDUP_TTL_MS + 1),
            Seen::First,
            "remembered only for the window"
        );
        // A first attempt that failed is forgotten: its retry is applied.
        w.forget_delivery("d-1");
        assert_eq!(w.first_delivery("d-1", 2000), Seen::First);
    }
}
