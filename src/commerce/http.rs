//! `POST /webhooks/shopify/orders`, `/webhooks/shopify/inventory` and
//! `/webhooks/shopify/products` on the public listener (reached through `redirect::other`,
//! which limits the body to `http.max_body_bytes`).
//! Answered as soon as the records are kept (well inside Shopify's 5 s), never after the payout
//! system answers:
//!
//! 1. the ledger changes, synced to the commission ledger; if that fails, 503 and nothing is
//!    applied;
//! 2. the records, to the stream;
//! 3. with payouts on, the commission records, synced into the payout outbox. If that fails,
//!    503: the ledger holds them, and Shopify's retry makes them again from it (see
//!    [`super::webhooks::Made::again`]; a restart does too, see [`super::payout`]). Nothing is
//!    posted that the ledger does not hold. A record made again reaches the stream only if the
//!    outbox queues it now; one whose outbox write failed after step 2 is in the stream twice
//!    (same id).
use super::inventory::{InventoryItem, Product, Update};
use super::ledger::Change;
use super::webhooks::{Made, OrderRecords, Seen, WebhookError};
use crate::redirect::Body;
use crate::state::App;
use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use serde_json::Value;
use std::sync::Arc;

fn answer(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
    r
}

/// Handles one verified-or-not delivery; its records go to the stream (and commissions to the
/// payout outbox).
pub async fn shopify(app: &Arc<App>, path: &str, headers: &HeaderMap, body: Bytes) -> Response<Body> {
    let m = &app.metrics.webhooks;
    let route = match path {
        "/webhooks/shopify/orders" => Route::Orders,
        "/webhooks/shopify/inventory" => Route::Inventory,
        "/webhooks/shopify/products" => Route::Products,
        _ => return answer(StatusCode::NOT_FOUND, "not found\n"),
    };
    let hooks = &app.webhooks;
    match hooks.verify(&body, headers.get("x-shopify-hmac-sha256").map(|v| v.as_bytes())) {
        Ok(()) => {}
        Err(WebhookError::Disabled) => return answer(StatusCode::NOT_FOUND, "not found\n"),
        Err(_) => {
            m.unauthorized.increment(1);
            return answer(StatusCode::UNAUTHORIZED, "unauthorized\n");
        }
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    let (delivery, topic) = (header("x-shopify-webhook-id"), header("x-shopify-topic"));
    if delivery.is_empty() {
        m.bad_payload.increment(1);
        return answer(StatusCode::BAD_REQUEST, "X-Shopify-Webhook-Id missing\n");
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let claim = match hooks.first_delivery(delivery, now_ms) {
        Seen::First => Claim {
            hooks: app.webhooks.clone(),
            delivery: delivery.into(),
            records: Vec::new(),
            settled: false,
            _orders: None,
        },
        Seen::Applied => {
            m.duplicate.increment(1);
            return answer(StatusCode::OK, "duplicate\n");
        }
        // The first attempt may still fail: Shopify must try again, not count it delivered.
        Seen::UnderWay => {
            m.under_way.increment(1);
            return answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "a delivery with this id is being applied; retry\n",
            );
        }
    };
    // Applied in a task of its own: a request dropped half-way (Shopify hangs up at its 5 s
    // limit, a deadline closes the connection) does not cut the writes short, and the orders
    // lock is held until they end.
    let topic = topic.to_string();
    match tokio::spawn(apply(app.clone(), claim, topic, route, body, now_ms)).await {
        Ok(resp) => resp,
        Err(_) => answer(StatusCode::SERVICE_UNAVAILABLE, "try again\n"),
    }
}

#[derive(Clone, Copy)]
enum Route {
    Orders,
    /// `inventory_levels/update` and `/disconnect`; `inventory_items/create` and `/update`
    /// (whether the item's stock is tracked).
    Inventory,
    /// `products/create` and `products/update`: policies and item → variant.
    Products,
}

async fn apply(
    app: Arc<App>,
    mut claim: Claim,
    topic: String,
    route: Route,
    body: Bytes,
    now_ms: u64,
) -> Response<Body> {
    let (m, hooks, topic) = (&app.metrics.webhooks, &app.webhooks, topic.as_str());
    let result = match route {
        Route::Inventory if topic.starts_with("inventory_items/") => {
            stock(&body, |i: &InventoryItem| app.inventory.apply_item(i))
        }
        // A subscription of another topic pointed here by mistake is refused, not dropped.
        Route::Inventory if !topic.starts_with("inventory_levels/") => {
            Err(format!("topic `{topic}` is not an inventory topic"))
        }
        Route::Inventory => stock(&body, |u: &Update| app.inventory.apply(u)),
        Route::Products if !topic.starts_with("products/") => Err(format!("topic `{topic}` is not a products topic")),
        Route::Products => stock(&body, |p: &Product| app.inventory.apply_product(p)),
        Route::Orders => {
            // Orders deliveries one at a time, from reading the commission ledger to writing
            // it (held by the claim, so a failed delivery is forgotten before the next one
            // reads).
            claim._orders = Some(hooks.orders.clone().lock_owned().await);
            order_records(&app, topic, &body, now_ms)
        }
    };
    match result {
        Ok(OrderRecords { records, changes }) => {
            claim.records = records;
            if let Err((what, e)) = keep(&app, &claim.records, changes).await {
                // `claim` forgets the delivery and its records as it drops.
                tracing::error!(topic, error = %e, "{what} write failed; answered 503 for Shopify to retry");
                return answer(StatusCode::SERVICE_UNAVAILABLE, "try again\n");
            }
            hooks.applied(&claim.delivery);
            claim.settled = true;
            m.applied.increment(1);
            answer(StatusCode::OK, "ok\n")
        }
        Err(e) => {
            // Not applied, so a corrected retry may be: `claim` forgets the delivery id.
            m.bad_payload.increment(1);
            tracing::warn!(topic, error = %e, "shopify webhook refused");
            answer(StatusCode::BAD_REQUEST, "bad payload\n")
        }
    }
}

/// A stock delivery, parsed as `T` and applied whole, or why not. It makes no records.
fn stock<T: serde::de::DeserializeOwned, R>(
    body: &[u8],
    apply: impl FnOnce(&T) -> Result<R, String>,
) -> Result<OrderRecords, String> {
    let update = serde_json::from_slice::<T>(body).map_err(|e| e.to_string())?;
    apply(&update).map(|_| OrderRecords::default())
}

/// An orders delivery's records and ledger changes. The snapshot is not held past this (the
/// outbox write awaits).
fn order_records(app: &App, topic: &str, body: &[u8], now_ms: u64) -> Result<OrderRecords, String> {
    let snap = app.state.load();
    let ts = crate::clicks::record::rfc3339_ms(now_ms);
    app.webhooks
        .order_records(topic, body, &snap.links, &ts, now_ms, app.payouts.is_some())
        .map(|mut out| {
            for m in &mut out.records {
                m.record["edge"] = Value::from(&*snap.edge);
            }
            out
        })
        .map_err(|e| e.to_string())
}

/// A delivery being applied. Unless it was applied, dropping it forgets the delivery id and
/// the records it made, so Shopify's retry applies it (after a refused write, or a task that
/// never ran). An orders delivery holds the orders lock here, released only after that.
struct Claim {
    hooks: Arc<super::webhooks::Webhooks>,
    delivery: String,
    records: Vec<Made>,
    settled: bool,
    _orders: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        if !self.settled {
            self.hooks.forget_records(&self.records);
            self.hooks.forget_delivery(&self.delivery);
        }
        // `_orders` is released after this, with the other fields.
    }
}

/// Keeps a delivery's records, in the order the module's top describes: the ledger, the
/// stream, the payout outbox, and then the records made again that the outbox queued now.
/// The error names the write that failed.
async fn keep(app: &App, records: &[Made], changes: Vec<Change>) -> Result<(), (&'static str, std::io::Error)> {
    if !changes.is_empty() {
        let ledger = app.webhooks.ledger.clone();
        tokio::task::spawn_blocking(move || ledger.apply(&changes))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(|e| ("commission ledger", e))?;
    }
    // Encoded once: the stream and the payout system get the same bytes.
    let encoded: Vec<Vec<u8>> = records
        .iter()
        .map(|m| serde_json::to_vec(&m.record).expect("a JSON value encodes"))
        .collect();
    for (m, e) in records.iter().zip(&encoded) {
        if m.again.is_none() {
            app.recorder.emit(e);
        }
    }
    let Some(payouts) = &app.payouts else {
        return Ok(());
    };
    let commissions: Vec<(Arc<str>, Bytes)> = records
        .iter()
        .zip(&encoded)
        .filter(|(m, _)| m.payout)
        .filter_map(|(m, e)| Some((m.record["commission_id"].as_str()?.into(), Bytes::copy_from_slice(e))))
        .collect();
    if commissions.is_empty() {
        return Ok(());
    }
    let queued = payouts.enqueue(commissions).await.map_err(|e| ("payout outbox", e))?;
    for (m, e) in records.iter().zip(&encoded) {
        if m.again.as_deref().is_some_and(|id| queued.iter().any(|q| &**q == id)) {
            app.recorder.emit(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commerce::ledger::Ledger;
    use crate::commerce::webhooks::Webhooks;

    #[test]
    fn a_claim_dropped_before_it_settles_frees_the_delivery_for_the_retry() {
        let hooks = Arc::new(Webhooks::new(&["s".into()], Ledger::in_memory()));
        assert_eq!(hooks.first_delivery("d-1", 1000), Seen::First);
        let claim = Claim {
            hooks: hooks.clone(),
            delivery: "d-1".into(),
            records: Vec::new(),
            settled: false,
            _orders: None,
        };
        assert_eq!(hooks.first_delivery("d-1", 1000), Seen::UnderWay);
        // The task that applies it dropped before it settled.
        drop(claim);
        assert_eq!(hooks.first_delivery("d-1", 1000), Seen::First, "the retry is applied");
        let mut claim = Claim {
            hooks: hooks.clone(),
            delivery: "d-1".into(),
            records: Vec::new(),
            settled: false,
            _orders: None,
        };
        hooks.applied("d-1");
        claim.settled = true;
        drop(claim);
        assert_eq!(hooks.first_delivery("d-1", 1000), Seen::Applied);
    }
}
