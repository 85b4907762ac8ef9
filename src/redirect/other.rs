//! Public requests that are not GET or HEAD. Links are only ever GET/HEAD, so these take the
//! slow, async path: the server hands over the body already wrapped in `Limited` at
//! `http.max_body_bytes`, and a body past it gets 413 before any route sees it.
//!
//! `POST /webhooks/shopify/*` goes to `commerce::http`; everything else answers 405 with
//! `Allow: GET, HEAD`.

use super::Body;
use crate::state::App;
use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use std::sync::Arc;

const NO_STORE: HeaderValue = HeaderValue::from_static("private, no-store");
const TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");

/// Answers one public request whose method is neither GET nor HEAD.
pub async fn handle_other<B>(app: &Arc<App>, req: Request<Limited<B>>) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    route(app, req).await
}

async fn route<B>(app: &Arc<App>, req: Request<Limited<B>>) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = req.into_parts();
    let body: Bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            if parts.uri.path().starts_with("/webhooks/") {
                app.metrics.webhooks.bad_payload.increment(1);
            }
            return too_large();
        }
        Err(_) => return super::bad_request(),
    };
    if parts.method == http::Method::POST && parts.uri.path().starts_with("/webhooks/") {
        return crate::commerce::http::shopify(app, parts.uri.path(), &parts.headers, body).await;
    }
    app.metrics.outcomes.method_not_allowed.increment(1);
    let mut resp = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    resp.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
    resp
}

/// 413; the server also answers it without reading when `Content-Length` is already too big.
pub fn too_large() -> Response<Body> {
    plain(StatusCode::PAYLOAD_TOO_LARGE, "payload too large\n")
}

fn plain(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(Body::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, TEXT);
    resp.headers_mut().insert(CACHE_CONTROL, NO_STORE);
    resp
}
