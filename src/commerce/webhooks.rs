//! Shopify webhooks: verification, de-duplication, and what orders and inventory levels turn
//! into.
//!
//! - Verified before anything is parsed: `X-Shopify-Hmac-Sha256` is base64 of HMAC-SHA256 over
//!   the raw body; every configured secret is tried (two during a rotation), each compared in
//!   constant time. A bad or missing MAC is 401.
//! - De-duplicated by `X-Shopify-Webhook-Id` (kept 72 h, longer than Shopify's retry horizon):
//!   a repeated delivery is answered 200 and not applied again, however many arrive at once.
//! - Orders: `orders/paid` becomes a `conversion` record and, when the link pays commission, a
//!   `commission` record; `orders/cancelled` a negative commission (clawback); `refunds/create`
//!   a negative commission on the refunded subtotal. Each once per order (and refund).
//!   Attribution: the cart attribute `cl_click` (+ `cl_link`) → that click and link; else the
//!   discount code → its link; else unattributed.

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
    deliveries: DashMap<Box<str>, u64>,
    /// (order id, what was emitted: "paid" | "cancelled" | "refund:<id>") → when.
    emitted: DashMap<(u64, Box<str>), u64>,
    /// order id → the attribution of its paid record, for refunds (whose payload lacks it).
    attributed: DashMap<u64, Attribution>,
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
    pub fn new(secrets: &[String]) -> Webhooks {
        Webhooks {
            secrets: secrets
                .iter()
                .map(|s| hmac::Key::new(hmac::HMAC_SHA256, s.as_bytes()))
                .collect(),
            deliveries: DashMap::new(),
            emitted: DashMap::new(),
            attributed: DashMap::new(),
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

    /// True for the first delivery of this id within the window; later ones are replays.
    pub fn first_delivery(&self, webhook_id: &str, now_ms: u64) -> bool {
        self.sweep(now_ms);
        let mut fresh = false;
        self.deliveries
            .entry(webhook_id.into())
            .and_modify(|seen| {
                if now_ms.saturating_sub(*seen) > DEDUP_TTL_MS {
                    *seen = now_ms;
                    fresh = true;
                }
            })
            .or_insert_with(|| {
                fresh = true;
                now_ms
            });
        fresh
    }

    /// Forgets a delivery that could not be applied, so Shopify's retry is not a "replay".
    pub fn forget_delivery(&self, webhook_id: &str) {
        self.deliveries.remove(webhook_id);
    }

    /// Undoes [`Webhooks::order_records`] for records that could not be kept (the payout
    /// outbox refused them), so Shopify's retry of the delivery makes them again.
    pub fn forget_records(&self, records: &[Value]) {
        for r in records {
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
            self.deliveries.retain(|_, t| now_ms.saturating_sub(*t) <= DEDUP_TTL_MS);
        }
        if self.emitted.len() > MAX_REMEMBERED {
            self.emitted.retain(|_, t| now_ms.saturating_sub(*t) <= DEDUP_TTL_MS);
            self.attributed
                .retain(|k, _| self.emitted.contains_key(&(*k, "paid".into())));
        }
    }

    /// Records for one order or refund topic; empty when already emitted.
    pub fn order_records(
        &self,
        topic: &str,
        body: &[u8],
        table: &LinkTable,
        ts: &str,
        now_ms: u64,
    ) -> Result<Vec<Value>, WebhookError> {
        let bad = |e: serde_json::Error| WebhookError::BadPayload(e.to_string());
        match topic {
            "orders/paid" | "orders/cancelled" => {
                let order: Order = serde_json::from_slice(body).map_err(bad)?;
                let currency = order.currency.clone().unwrap_or_else(|| "USD".into());
                let subtotal = order
                    .current_subtotal_price
                    .as_deref()
                    .or(order.subtotal_price.as_deref())
                    .unwrap_or("0");
                let subtotal = to_minor(subtotal, &currency).map_err(WebhookError::BadPayload)?;
                let attribution = attribute(&order, table);
                let mut out = Vec::new();
                if topic == "orders/paid" {
                    if !self.once(order.id, "paid", now_ms) {
                        return Ok(out);
                    }
                    self.attributed.insert(order.id, attribution.clone());
                    out.push(conversion(&order, &attribution, subtotal, &currency, ts));
                    out.extend(commission(order.id, "paid", &attribution, subtotal, &currency, 1, ts));
                } else {
                    if !self.once(order.id, "cancelled", now_ms) {
                        return Ok(out);
                    }
                    out.extend(commission(
                        order.id,
                        "cancelled",
                        &attribution,
                        subtotal,
                        &currency,
                        -1,
                        ts,
                    ));
                }
                Ok(out)
            }
            "refunds/create" => {
                let refund: Refund = serde_json::from_slice(body).map_err(bad)?;
                if !self.once(refund.order_id, &format!("refund:{}", refund.id), now_ms) {
                    return Ok(Vec::new());
                }
                let mut basis = 0i64;
                let mut currency = String::from("USD");
                for line in &refund.refund_line_items {
                    currency = line.subtotal_set.shop_money.currency_code.clone();
                    basis +=
                        to_minor(&line.subtotal_set.shop_money.amount, &currency).map_err(WebhookError::BadPayload)?;
                }
                let attribution = self
                    .attributed
                    .get(&refund.order_id)
                    .map(|a| a.clone())
                    .unwrap_or(Attribution {
                        how: "unknown",
                        click_id: None,
                        link: None,
                    });
                let what = format!("refund:{}", refund.id);
                Ok(
                    commission(refund.order_id, &what, &attribution, basis, &currency, -1, ts)
                        .into_iter()
                        .collect(),
                )
            }
            _ => Ok(Vec::new()),
        }
    }
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
    let click = attr("cl_click").filter(|c| uuid::Uuid::parse_str(c).is_ok());
    if let Some(click_id) = click {
        let link = attr("cl_link").and_then(|id| table.get(id.as_bytes()).cloned());
        return Attribution {
            how: "click",
            click_id: Some(click_id),
            link,
        };
    }
    for code in &order.discount_codes {
        if let Some(link) = table.by_discount(&code.code) {
            return Attribution {
                how: "discount",
                click_id: None,
                link: Some(link.clone()),
            };
        }
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

/// A commission record when the attributed link pays one; `sign` −1 claws back.
fn commission(
    order: u64,
    what: &str,
    a: &Attribution,
    basis: i64,
    currency: &str,
    sign: i64,
    ts: &str,
) -> Option<Value> {
    let link = a.link.as_ref()?;
    let (amount, rule) = match link.commission? {
        CommissionConfig::RateBp(bp) => (percent_of(basis, bp), format!("rate_bp:{bp}")),
        // A flat commission is paid once per order and clawed back whole on cancellation;
        // partial refunds leave it.
        CommissionConfig::FlatMinor(m) if what == "paid" || what == "cancelled" => (m, format!("flat_minor:{m}")),
        CommissionConfig::FlatMinor(_) => return None,
    };
    Some(json!({
        "v": 1,
        "type": "commission",
        "commission_id": format!("shopify:{order}:{what}"),
        "ts": ts,
        "order_id": order,
        "reason": what.split(':').next(),
        "click_id": a.click_id,
        "link_id": &*link.id,
        "creator": &*link.creator,
        "campaign": &*link.campaign,
        "basis_minor": sign * basis,
        "amount_minor": sign * amount,
        "currency": currency,
        "rule": rule,
        "rounding": "half away from zero, to the minor unit",
    }))
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
        let w = Webhooks::new(&["new-secret".into(), "old-secret".into()]);
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
        assert_eq!(Webhooks::new(&[]).verify(body, None), Err(WebhookError::Disabled));
    }

    #[test]
    fn attribution_three_ways_and_commission_to_the_cent() {
        let table = crate::links::parse(LINKS, "t", &crate::links::signature::demo()).unwrap();
        let w = Webhooks::new(&["s".into()]);
        let paid = |id: u64, extra: &str| {
            format!(r#"{{"id":{id},"currency":"USD","current_subtotal_price":"19.95",{extra}"note":null}}"#)
        };
        let by_click = paid(
            5_000_000_000_000_001,
            r#""note_attributes":[{"name":"cl_click","value":"0192f3a1-7c2e-7b3d-9f00-5a1b2c3d4e5f"},{"name":"cl_link","value":"jane-kit"}],"discount_codes":[{"code":"SAM10"}],"#,
        );
        let r = w
            .order_records("orders/paid", by_click.as_bytes(), &table, "t", 0)
            .unwrap();
        assert_eq!(r[0]["attribution"], "click");
        assert_eq!(r[0]["order_id"], 5_000_000_000_000_001u64);
        assert_eq!(r[0]["creator"], "jane");
        assert_eq!(
            (r[1]["type"].as_str(), r[1]["amount_minor"].as_i64()),
            (Some("commission"), Some(200))
        );
        assert!(
            w.order_records("orders/paid", by_click.as_bytes(), &table, "t", 0)
                .unwrap()
                .is_empty(),
            "once per order"
        );
        let by_code = paid(2, r#""discount_codes":[{"code":"sam10"}],"#);
        let r = w
            .order_records("orders/paid", by_code.as_bytes(), &table, "t", 0)
            .unwrap();
        assert_eq!(
            (r[0]["attribution"].as_str(), r[1]["amount_minor"].as_i64()),
            (Some("discount"), Some(500))
        );
        let none = paid(3, "");
        let r = w.order_records("orders/paid", none.as_bytes(), &table, "t", 0).unwrap();
        assert_eq!((r.len(), r[0]["attribution"].as_str()), (1, Some("none")));
        // Refund of 9.99 on the clicked order: 10 % → −1.00; cancellation: −2.00.
        let refund = r#"{"id":77,"order_id":5000000000000001,"refund_line_items":[{"subtotal":9.99,"subtotal_set":{"shop_money":{"amount":"9.99","currency_code":"USD"}}}]}"#;
        let r = w
            .order_records("refunds/create", refund.as_bytes(), &table, "t", 0)
            .unwrap();
        assert_eq!(
            (r[0]["amount_minor"].as_i64(), r[0]["creator"].as_str()),
            (Some(-100), Some("jane"))
        );
        let r = w
            .order_records("orders/cancelled", by_click.as_bytes(), &table, "t", 0)
            .unwrap();
        assert_eq!(r[0]["amount_minor"], -200);
        // Forgotten records (their outbox write failed) are made again by the retry.
        w.forget_records(&r);
        let again = w
            .order_records("orders/cancelled", by_click.as_bytes(), &table, "t", 0)
            .unwrap();
        assert_eq!(again, r);
        let refunds = w
            .order_records("refunds/create", refund.as_bytes(), &table, "t", 0)
            .unwrap();
        assert!(refunds.is_empty(), "not forgotten: still once");
    }

    #[test]
    fn ten_concurrent_replays_apply_once() {
        let w = Arc::new(Webhooks::new(&["s".into()]));
        let firsts: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..10)
                .map(|_| s.spawn(|| w.first_delivery("d-1", 1000) as usize))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(firsts, 1);
        assert!(
            w.first_delivery("d-1", 1000 + DEDUP_TTL_MS + 1),
            "remembered only for the window"
        );
    }
}
