//! `POST /webhooks/shopify/orders` and `POST /webhooks/shopify/inventory` on the public
//! listener (reached through `redirect::other`, which limits the body to `http.max_body_bytes`).
//! Answered as soon as the records are kept (well inside Shopify's 5 s): the ledger changes
//! synced to the commission ledger, then, with payouts on, the commission records synced into
//! the payout outbox, never after the payout system answers. If the ledger cannot take them,
//! 503 and nothing is applied. If the outbox cannot, 503 too: the ledger holds them, and
//! Shopify's retry makes the records again from it for the outbox (see [`super::ledger`]), so
//! nothing is posted that the ledger does not hold and nothing the ledger holds is left out.

use super::inventory::Update;
use super::ledger::Change;
use super::webhooks::{OrderRecords, Seen, WebhookError};
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
pub async fn shopify(app: &App, path: &str, headers: &HeaderMap, body: &[u8]) -> Response<Body> {
    let m = &app.metrics.webhooks;
    let inventory = match path {
        "/webhooks/shopify/orders" => false,
        "/webhooks/shopify/inventory" => true,
        _ => return answer(StatusCode::NOT_FOUND, "not found\n"),
    };
    let hooks = &app.webhooks;
    match hooks.verify(body, headers.get("x-shopify-hmac-sha256").map(|v| v.as_bytes())) {
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
    let mut claim = match hooks.first_delivery(delivery, now_ms) {
        Seen::First => Claim {
            hooks,
            delivery,
            records: Vec::new(),
            settled: false,
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
    // Orders deliveries one at a time, from reading the commission ledger to writing it.
    let _orders = if inventory {
        None
    } else {
        Some(hooks.orders.lock().await)
    };
    let result = if inventory {
        serde_json::from_slice::<Update>(body)
            .map_err(|e| e.to_string())
            .and_then(|u| app.inventory.apply(&u).map(|_| OrderRecords::default()))
    } else {
        // The snapshot is not held past this block (the outbox write below awaits).
        let snap = app.state.load();
        let ts = crate::clicks::record::rfc3339_ms(now_ms);
        hooks
            .order_records(topic, body, &snap.links, &ts, now_ms, app.payouts.is_some())
            .map(|mut out| {
                for r in &mut out.records {
                    r["edge"] = Value::from(&*snap.edge);
                }
                out
            })
            .map_err(|e| e.to_string())
    };
    match result {
        Ok(OrderRecords {
            records,
            changes,
            replayed,
        }) => {
            claim.records = records;
            let records = &claim.records;
            // Encoded once: the stream and the payout system get the same bytes.
            let encoded: Vec<Vec<u8>> = records
                .iter()
                .map(|r| serde_json::to_vec(r).expect("a JSON value encodes"))
                .collect();
            // The ledger first, then the payout outbox; the stream gets the records once both
            // are kept (a replay's only if the outbox took them now: else the stream had them).
            let queued = match keep(app, records, &encoded, changes).await {
                Ok(queued) => queued,
                Err((what, e)) => {
                    // `claim` forgets the delivery and its records as it drops.
                    tracing::error!(topic, error = %e, "{what} write failed; answered 503 for Shopify to retry");
                    return answer(StatusCode::SERVICE_UNAVAILABLE, "try again\n");
                }
            };
            if !replayed || queued > 0 {
                for e in &encoded {
                    app.recorder.emit(e);
                }
            }
            hooks.applied(delivery);
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

/// A delivery being applied. Unless it was applied, dropping it forgets the delivery id and
/// the records it made, so Shopify's retry applies it: after a refused write, and also when
/// the request is dropped half-way (Shopify hung up at its 5 s limit, or a deadline closed
/// the connection), which would otherwise leave the id "under way" for the whole window.
struct Claim<'a> {
    hooks: &'a super::webhooks::Webhooks,
    delivery: &'a str,
    records: Vec<Value>,
    settled: bool,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.hooks.forget_records(&self.records);
            self.hooks.forget_delivery(self.delivery);
        }
    }
}

/// Writes the ledger changes to the commission ledger, then (with payouts on) the commission
/// records to the payout outbox, each synced, off the request threads. Answers how many
/// records the outbox queued (it skips those it knows); the error names which write failed.
async fn keep(
    app: &App,
    records: &[Value],
    encoded: &[Vec<u8>],
    changes: Vec<Change>,
) -> Result<usize, (&'static str, std::io::Error)> {
    if !changes.is_empty() {
        let ledger = app.webhooks.ledger.clone();
        tokio::task::spawn_blocking(move || ledger.apply(&changes))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(|e| ("commission ledger", e))?;
    }
    let Some(payouts) = &app.payouts else {
        return Ok(0);
    };
    let commissions: Vec<(Arc<str>, Bytes)> = records
        .iter()
        .zip(encoded)
        .filter(|(r, _)| r["type"] == "commission")
        .filter_map(|(r, e)| Some((r["commission_id"].as_str()?.into(), Bytes::copy_from_slice(e))))
        .collect();
    if commissions.is_empty() {
        return Ok(0);
    }
    payouts.enqueue(commissions).await.map_err(|e| ("payout outbox", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commerce::ledger::Ledger;
    use crate::commerce::webhooks::Webhooks;

    #[test]
    fn a_claim_dropped_before_it_settles_frees_the_delivery_for_the_retry() {
        let hooks = Webhooks::new(&["s".into()], Ledger::in_memory());
        assert_eq!(hooks.first_delivery("d-1", 1000), Seen::First);
        let claim = Claim {
            hooks: &hooks,
            delivery: "d-1",
            records: Vec::new(),
            settled: false,
        };
        assert_eq!(hooks.first_delivery("d-1", 1000), Seen::UnderWay);
        // The request's future dropped half-way (the client hung up).
        drop(claim);
        assert_eq!(hooks.first_delivery("d-1", 1000), Seen::First, "the retry is applied");
        let mut claim = Claim {
            hooks: &hooks,
            delivery: "d-1",
            records: Vec::new(),
            settled: false,
        };
        hooks.applied("d-1");
        claim.settled = true;
        drop(claim);
        assert_eq!(hooks.first_delivery("d-1", 1000), Seen::Applied);
    }
}
