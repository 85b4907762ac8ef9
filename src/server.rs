//! Listeners, connections and the shutdown phases.
//!
//! Phases after SIGTERM (or SIGINT): **drain** — `/readyz` and the public `/healthz` answer
//! 503 while the public listener keeps serving for `drain.delay_ms`, so the CDN moves away;
//! **close** — the public listener stops accepting and every connection is told to finish
//! (HTTP/1.1 `Connection: close`, HTTP/2 GOAWAY), waiting at most `drain.grace_ms`;
//! **flush** — the caller then closes the click queue and writes out what it holds.
//! The admin listener stays up until the end so metrics can be scraped during the drain.

use crate::admin;
use crate::commerce;
use crate::config::HttpConfig;
use crate::redirect::{self, Body};
use crate::state::App;
use futures_util::future::Either;
use hyper::body::Incoming;
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::{ready, Future, Ready};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

type BoxedAnswer = std::pin::Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

/// The public service: redirects are synchronous, so their future is `Ready` and nothing is
/// boxed; only webhook POSTs (which read a body) take the boxed, async path.
#[derive(Clone)]
struct Public {
    app: Arc<App>,
    peer: IpAddr,
}

impl Service<Request<Incoming>> for Public {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response<Body>, Infallible>>, BoxedAnswer>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        if req.method() == hyper::Method::POST && req.uri().path().starts_with("/webhooks/") {
            let app = self.app.clone();
            return Either::Right(Box::pin(async move { Ok(commerce::http::serve(app, req).await) }));
        }
        Either::Left(ready(Ok(redirect::handle(
            &self.app,
            req.method(),
            req.uri(),
            req.headers(),
            self.peer,
        ))))
    }
}

pub fn http_builder(cfg: &HttpConfig) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(cfg.header_read_timeout_ms))
        .max_headers(cfg.max_headers)
        .max_buf_size(cfg.max_header_bytes)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(cfg.h2_max_concurrent_streams)
        .max_header_list_size(cfg.max_header_bytes as u32)
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(1024)
        .keep_alive_interval(Duration::from_millis(cfg.keepalive_idle_ms));
    b
}

/// Accepts until `stop` turns true, then asks every connection to finish and waits up to
/// `grace` for them.
async fn accept_loop<S, F>(
    listener: TcpListener,
    builder: auto::Builder<TokioExecutor>,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
    make: F,
    what: &'static str,
) where
    F: Fn(IpAddr) -> S,
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let service = make(peer.ip());
                    let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                }
                Err(e) => {
                    // Out of file descriptors or similar: back off instead of spinning.
                    tracing::warn!(listener = what, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    drop(listener);
    let open = graceful.count();
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(
            listener = what,
            open,
            "grace period over; closing remaining connections"
        );
    }
}

/// Serves both listeners until `shutdown` resolves, then runs the drain and close phases.
pub async fn run(
    app: Arc<App>,
    public: TcpListener,
    admin: TcpListener,
    http: HttpConfig,
    drain_delay: Duration,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_public, public_rx) = watch::channel(false);
    let (stop_admin, admin_rx) = watch::channel(false);
    let builder = http_builder(&http);
    let public_task = {
        let app = app.clone();
        tokio::spawn(accept_loop(
            public,
            builder.clone(),
            public_rx,
            grace,
            move |peer| Public { app: app.clone(), peer },
            "public",
        ))
    };
    let admin_task = {
        let app = app.clone();
        let limits = http.clone();
        tokio::spawn(accept_loop(
            admin,
            builder,
            admin_rx,
            Duration::from_secs(1),
            move |_| admin::Admin::new(app.clone(), limits.clone()),
            "admin",
        ))
    };
    shutdown.await;
    app.draining.store(true, std::sync::atomic::Ordering::SeqCst);
    app.metrics.draining.set(1.0);
    tracing::info!(delay_ms = drain_delay.as_millis() as u64, "draining: readiness is 503");
    tokio::time::sleep(drain_delay).await;
    tracing::info!("closing the public listener");
    let _ = stop_public.send(true);
    let _ = public_task.await;
    let _ = stop_admin.send(true);
    let _ = admin_task.await;
}
