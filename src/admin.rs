//! The private admin listener: `/metrics`, `/healthz`, `/readyz`, and, with the bearer token,
//! `POST /admin/reload`, `PUT /admin/links`, `GET /admin/links/{id}`.
//! Without `CARTLINK_ADMIN_TOKEN` the `/admin/*` routes answer 404.

use crate::commerce::inventory::{Applied, Update};
use crate::config::{process_env, HttpConfig};
use crate::redirect::Body;
use crate::state::{App, ReloadError};
use bytes::Bytes;
use http::header::{CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::Service;
use hyper::Request;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Largest `PUT /admin/links` body: a million links is about 250 MiB of JSON Lines.
const MAX_LINKS_BODY: usize = 512 << 20;

#[derive(Clone)]
pub struct Admin {
    app: Arc<App>,
}

impl Admin {
    pub fn new(app: Arc<App>, _http: HttpConfig) -> Admin {
        Admin { app }
    }
}

impl Service<Request<Incoming>> for Admin {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let app = self.app.clone();
        Box::pin(async move { Ok(route(app, req).await) })
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>, content_type: &'static str) -> Response<Body> {
    let mut resp = Response::new(Body::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    let mut body = serde_json::to_vec(&value).unwrap_or_default();
    body.push(b'\n');
    text(status, body, "application/json")
}

/// Constant-time comparison of the presented bearer token.
fn authorized(app: &App, req: &Request<Incoming>) -> bool {
    let Some(token) = app.admin_token.as_deref() else {
        return false;
    };
    let presented = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| {
            let v = v.as_bytes();
            // The scheme name is case-insensitive (RFC 9110 §11.1).
            (v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ")).then(|| &v[7..])
        })
        .unwrap_or(b"");
    presented.len() == token.len() && bool::from(presented.ct_eq(token.as_bytes()))
}

async fn route(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/metrics") => text(StatusCode::OK, app.metrics.render(), "text/plain; version=0.0.4"),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n", "text/plain"),
        (&Method::GET, "/readyz") if app.is_draining() => {
            text(StatusCode::SERVICE_UNAVAILABLE, "draining\n", "text/plain")
        }
        (&Method::GET, "/readyz") => text(StatusCode::OK, "ready\n", "text/plain"),
        (_, p) if p.starts_with("/admin/") => {
            if app.admin_token.is_none() {
                return text(StatusCode::NOT_FOUND, "not found\n", "text/plain");
            }
            if !authorized(&app, &req) {
                let mut r = text(StatusCode::UNAUTHORIZED, "unauthorized\n", "text/plain");
                r.headers_mut()
                    .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return r;
            }
            admin_api(app, req, path).await
        }
        _ => wrong_method_or_not_found(&path),
    }
}

/// The methods each admin-listener path answers, for the `Allow` header of a 405.
fn allowed_methods(path: &str) -> Option<&'static str> {
    match path {
        "/metrics" | "/healthz" | "/readyz" => Some("GET"),
        "/admin/reload" | "/admin/inventory" => Some("POST"),
        "/admin/links" => Some("PUT"),
        p if p.starts_with("/admin/inventory/") || p.starts_with("/admin/links/") => Some("GET"),
        _ => None,
    }
}

/// A known path asked with a method it does not have is a 405 naming the ones it has.
fn wrong_method_or_not_found(path: &str) -> Response<Body> {
    match allowed_methods(path) {
        Some(allow) => {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n", "text/plain");
            r.headers_mut()
                .insert(http::header::ALLOW, HeaderValue::from_static(allow));
            r
        }
        None => text(StatusCode::NOT_FOUND, "not found\n", "text/plain"),
    }
}

async fn admin_api(app: Arc<App>, req: Request<Incoming>, path: String) -> Response<Body> {
    match (req.method().clone(), path.as_str()) {
        (Method::POST, "/admin/reload") => {
            let result = tokio::task::spawn_blocking({
                let app = app.clone();
                move || app.reload(&process_env)
            })
            .await;
            reload_answer(result.unwrap_or_else(|e| Err(ReloadError::Other(e.to_string()))))
        }
        (Method::PUT, "/admin/links") => {
            let body = match Limited::new(req.into_body(), MAX_LINKS_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return json(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        serde_json::json!({"error": e.to_string()}),
                    )
                }
            };
            let Ok(text) = String::from_utf8(body.to_vec()) else {
                return json(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({"error": "body is not UTF-8"}),
                );
            };
            let result = tokio::task::spawn_blocking({
                let app = app.clone();
                move || app.replace_links(&text)
            })
            .await;
            reload_answer(result.unwrap_or_else(|e| Err(ReloadError::Other(e.to_string()))))
        }
        (Method::POST, "/admin/inventory") => {
            let body = match Limited::new(req.into_body(), 16 << 20).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return json(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        serde_json::json!({"error": e.to_string()}),
                    )
                }
            };
            // One update or a list of them: `{"variant":V,"available":N}` or Shopify's
            // `{"inventory_item_id":I,"location_id":L,"available":N,"updated_at":"…"}`.
            #[derive(serde::Deserialize)]
            #[serde(untagged)]
            enum Body {
                Many(Vec<Update>),
                One(Update),
            }
            let updates = match serde_json::from_slice::<Body>(&body) {
                Ok(Body::Many(v)) => v,
                Ok(Body::One(u)) => vec![u],
                Err(e) => return json(StatusCode::BAD_REQUEST, serde_json::json!({"error": e.to_string()})),
            };
            // All checked before any is applied: a list is applied whole or not at all.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            if let Some((i, e)) = updates
                .iter()
                .enumerate()
                .find_map(|(i, u)| u.level_time_ms(now).err().map(|e| (i, e)))
            {
                return json(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({"error": format!("update {}: {e}", i + 1), "applied": 0}),
                );
            }
            let (mut applied, mut stale) = (0, 0);
            for u in &updates {
                match app.inventory.apply(u) {
                    Ok(Applied::Updated { .. }) => applied += 1,
                    Ok(Applied::Stale) => stale += 1,
                    Err(e) => {
                        return json(
                            StatusCode::BAD_REQUEST,
                            serde_json::json!({"error": e, "applied": applied}),
                        )
                    }
                }
            }
            json(StatusCode::OK, serde_json::json!({"applied": applied, "stale": stale}))
        }
        (Method::GET, p) if p.starts_with("/admin/inventory/") => {
            let Ok(variant) = p["/admin/inventory/".len()..].parse::<u64>() else {
                return json(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({"error": "variant id must be an integer"}),
                );
            };
            json(
                StatusCode::OK,
                serde_json::json!({
                    "variant": variant,
                    "available": app.inventory.available(variant),
                    "inventory_policy": app.inventory.policy(variant),
                    "sells_when_out": app.inventory.sells_when_out(variant),
                }),
            )
        }
        (Method::GET, p) if p.starts_with("/admin/links/") => {
            let id = &p["/admin/links/".len()..];
            let snap = app.state.load();
            match snap.links.get(id.as_bytes()) {
                Some(link) => {
                    let (head, tail) = link.target.plain();
                    json(
                        StatusCode::OK,
                        serde_json::json!({
                            "id": &*link.id,
                            "creator": &*link.creator,
                            "campaign": &*link.campaign,
                            "paused": link.paused,
                            "redirect": link.redirect,
                            "target_type": link.target.target_type.as_str(),
                            "destination": format!("{head}{tail}"),
                            "sig": snap.keys.sign(&link.id),
                            "max_clicks": link.max_clicks,
                            // Counted only toward a cap: the redirect path keeps no per-link
                            // counter otherwise (the click records count everything).
                            "human_clicks": link
                                .max_clicks
                                .map(|_| link.clicks.load(std::sync::atomic::Ordering::Relaxed)),
                            "generation": snap.generation,
                        }),
                    )
                }
                None => json(StatusCode::NOT_FOUND, serde_json::json!({"error": "no such link"})),
            }
        }
        _ => wrong_method_or_not_found(&path),
    }
}

fn reload_answer(result: Result<u64, ReloadError>) -> Response<Body> {
    match result {
        Ok(generation) => json(StatusCode::OK, serde_json::json!({"generation": generation})),
        Err(e) => json(
            StatusCode::UNPROCESSABLE_ENTITY,
            serde_json::json!({"error": e.to_string()}),
        ),
    }
}
