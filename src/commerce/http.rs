//! `POST /webhooks/shopify/orders` and `POST /webhooks/shopify/inventory` on the public
//! listener (reached through `redirect::other`, which limits the body to `http.max_body_bytes`).
//! Answered as soon as the records are queued (well inside Shopify's 5 s).

use super::inventory::Update;
use super::webhooks::WebhookError;
use crate::redirect::Body;
use crate::state::App;
use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};

fn answer(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
    r
}

/// Handles one verified-or-not delivery; `emit` receives the records to send to the sink.
pub fn shopify(
    app: &App,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
    emit: &mut dyn FnMut(serde_json::Value),
) -> Response<Body> {
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
    if !hooks.first_delivery(delivery, now_ms) {
        m.duplicate.increment(1);
        return answer(StatusCode::OK, "duplicate\n");
    }
    let result = if inventory {
        serde_json::from_slice::<Update>(body)
            .map_err(|e| e.to_string())
            .and_then(|u| app.inventory.apply(&u).map(|_| ()))
    } else {
        let snap = app.state.load();
        let ts = crate::clicks::record::rfc3339_ms(now_ms);
        hooks
            .order_records(topic, body, &snap.links, &ts, now_ms)
            .map(|records| records.into_iter().for_each(&mut *emit))
            .map_err(|e| e.to_string())
    };
    match result {
        Ok(()) => {
            m.applied.increment(1);
            answer(StatusCode::OK, "ok\n")
        }
        Err(e) => {
            // Not applied, so a corrected retry may be: forget the delivery id.
            hooks.forget_delivery(delivery);
            m.bad_payload.increment(1);
            tracing::warn!(topic, error = %e, "shopify webhook refused");
            answer(StatusCode::BAD_REQUEST, "bad payload\n")
        }
    }
}
