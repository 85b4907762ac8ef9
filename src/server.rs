//! Listeners, connections and the shutdown phases.
//!
//! Phases after SIGTERM (or SIGINT): **drain** — `/readyz` and the public `/healthz` answer
//! 503 while the public listener keeps serving for `drain.delay_ms`, so the CDN moves away;
//! **close** — the public listener stops accepting and every connection is told to finish
//! (HTTP/1.1 `Connection: close`, HTTP/2 GOAWAY), waiting at most `drain.grace_ms`;
//! **flush** — the caller then closes the click queue and writes out what it holds.
//! The admin listener stays up until the end so metrics can be scraped during the drain.
//!
//! Every wait a client can cause has a named deadline: TLS handshake (`tls.handshake_timeout_ms`),
//! request head (`http.header_read_timeout_ms`), idle connection (`http.keepalive_idle_ms`) and
//! stalled write (`http.write_timeout_ms`) — all three in [`io::Deadlines`], except the admin
//! listener's request head, which is hyper's timer. Each listener holds at most
//! `http.max_connections` connections; past
//! `http.max_inflight` public requests are answered 503 + `Retry-After: 1` from a response built
//! once, except `/healthz`.

pub mod io;
pub mod request_line;
pub mod tls;

use crate::admin;
use crate::config::HttpConfig;
use crate::redirect::{self, Body};
use crate::state::App;
use bytes::Bytes;
use futures_util::future::Either;
use http::{HeaderValue, Method, StatusCode, Version};
use http_body_util::Limited;
use hyper::body::Incoming;
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::{ready, Future, Ready};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// Admission for the public listener, shared by all its connections: the in-flight cap and
/// the body limit, with the shed answer built once.
struct Gate {
    /// Shared with the metrics, which report it as `cartlink_inflight_requests`.
    inflight: Arc<AtomicUsize>,
    max_inflight: usize,
    max_body: usize,
    shed: Response<Body>,
}

impl Gate {
    fn new(http: &HttpConfig, inflight: Arc<AtomicUsize>) -> Gate {
        let mut shed = Response::new(Body::new(Bytes::from_static(b"overloaded, retry\n")));
        *shed.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        let h = shed.headers_mut();
        h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Gate {
            inflight,
            max_inflight: http.max_inflight,
            max_body: http.max_body_bytes,
            shed,
        }
    }

    /// Takes an in-flight slot, or says no (the caller sheds).
    fn admit(&self) -> bool {
        if self.inflight.fetch_add(1, Ordering::AcqRel) >= self.max_inflight {
            self.inflight.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    fn release(&self) {
        self.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Pipelined HTTP/1 requests a connection answers before it lets the others run. hyper answers
/// up to 16 per poll and tokio looks for new I/O only every 61 polls, so without this one
/// client that pipelines hundreds of requests (or never reads) delays every other connection
/// on its worker by milliseconds. The yield is tokio's deferred one: the connection resumes
/// after the others' I/O has been polled. Clients that wait for their answers never reach it.
const PIPELINE_BURST: u32 = 2;

/// `TCP_NOTSENT_LOWAT` on accepted connections.
const UNSENT_LIMIT: u32 = 16 << 10;

/// Gives the slot back when an async request ends, however it ends (even if hyper drops it).
struct Slot(Arc<Gate>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// The public service. GET and HEAD (every link) stay synchronous, so their future is `Ready`
/// and nothing is boxed; other methods take the async path with a limited body.
#[derive(Clone)]
struct Public {
    app: Arc<App>,
    peer: IpAddr,
    gate: Arc<Gate>,
    pipeline: io::Pipeline,
}

type Boxed = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl Service<Request<Incoming>> for Public {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response<Body>, Infallible>>, Boxed>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        // HTTP/2 multiplexes by design and has its own stream limits.
        let http1 = matches!(req.version(), Version::HTTP_10 | Version::HTTP_11 | Version::HTTP_09);
        let burst = http1 && self.pipeline.answer() >= PIPELINE_BURST;
        let answer = self.answer(req);
        if !burst {
            return answer;
        }
        self.pipeline.restart();
        self.app.metrics.pipeline_yields.increment(1);
        Either::Right(Box::pin(async move {
            tokio::task::yield_now().await;
            answer.await
        }))
    }
}

impl Public {
    fn answer(&self, req: Request<Incoming>) -> <Self as Service<Request<Incoming>>>::Future {
        let sync = matches!(*req.method(), Method::GET | Method::HEAD);
        // Health checks are never shed: the CDN must keep seeing this origin as alive.
        let health = sync && req.uri().path() == "/healthz";
        if !health && !self.gate.admit() {
            self.app.metrics.shed.inflight.increment(1);
            return Either::Left(ready(Ok(self.gate.shed.clone())));
        }
        if sync {
            let resp = redirect::handle(&self.app, req.method(), req.uri(), req.headers(), self.peer);
            if !health {
                self.gate.release();
            }
            return Either::Left(ready(Ok(resp)));
        }
        let slot = Slot(self.gate.clone());
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.gate.max_body as u64) {
            drop(slot);
            return Either::Left(ready(Ok(redirect::other::too_large())));
        }
        let app = self.app.clone();
        let req = req.map(|b| Limited::new(b, self.gate.max_body));
        Either::Right(Box::pin(async move {
            let resp = redirect::handle_other(&app, req).await;
            drop(slot);
            Ok(resp)
        }))
    }
}

/// `hyper_head_timer`: hyper times the request head (the admin listener, whose bodies can be
/// long uploads); otherwise the connection's [`io::Deadlines`] do.
pub fn http_builder(cfg: &HttpConfig, hyper_head_timer: bool) -> auto::Builder<TokioExecutor> {
    let head = Duration::from_millis(cfg.header_read_timeout_ms);
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(hyper_head_timer.then_some(head))
        .max_headers(cfg.max_headers)
        .max_buf_size(cfg.max_header_bytes)
        .keep_alive(true);
    if !hyper_head_timer {
        // The public answers are a head and at most a short body: one buffer and one write
        // instead of an iovec array set up per answer.
        b.http1().writev(false);
    }
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(cfg.h2_max_concurrent_streams)
        .max_header_list_size(cfg.max_header_bytes as u32)
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(1024)
        .keep_alive_interval(Duration::from_millis(cfg.keepalive_idle_ms));
    b
}

/// One listener: what it accepts on, whether it speaks TLS, and its per-connection limits.
struct Listener {
    tcp: TcpListener,
    tls: Option<Arc<tls::Tls>>,
    what: &'static str,
    max_connections: usize,
    timeouts: io::Timeouts,
    send_buffer: usize,
    /// Longest HTTP/1 request line (public listeners); longer gets 414.
    max_request_line: Option<usize>,
}

impl Listener {
    /// `head_in_io`: the connection times the request head itself (public listeners, whose
    /// requests carry no body); otherwise hyper does (see `http_builder`).
    fn new(
        tcp: TcpListener,
        tls: Option<Arc<tls::Tls>>,
        what: &'static str,
        http: &HttpConfig,
        head_in_io: bool,
    ) -> Listener {
        Listener {
            tcp,
            tls,
            what,
            max_connections: http.max_connections,
            timeouts: io::Timeouts {
                write: Duration::from_millis(http.write_timeout_ms),
                idle: Duration::from_millis(http.keepalive_idle_ms),
                head: head_in_io.then(|| Duration::from_millis(http.header_read_timeout_ms)),
            },
            send_buffer: http.socket_send_buffer_bytes,
            max_request_line: head_in_io.then_some(http.max_uri_bytes),
        }
    }
}

/// Accepts until `stop` turns true, then asks every connection to finish and waits up to
/// `grace` for them. Past `max_connections` open connections it stops accepting (the kernel
/// backlog holds new ones) until one closes.
async fn accept_loop<S, F>(
    l: Listener,
    builder: Arc<auto::Builder<TokioExecutor>>,
    mut stop: watch::Receiver<bool>,
    grace: impl Future<Output = Duration>,
    make: F,
) where
    F: Fn(IpAddr, io::Pipeline) -> S,
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    let what = l.what;
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(l.max_connections));
    loop {
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                tracing::debug!(
                    listener = what,
                    max = l.max_connections,
                    "connection cap reached; not accepting"
                );
                tokio::select! {
                    biased;
                    _ = stop.changed() => break,
                    p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
                }
            }
        };
        let accepted = tokio::select! {
            biased;
            _ = stop.changed() => break,
            accepted = l.tcp.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors or similar: back off instead of spinning.
                tracing::warn!(listener = what, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        if l.send_buffer > 0 {
            // A fixed send buffer (instead of the kernel's autotuning to MiBs) makes the writes to
            // a client that never reads stall early, so the write deadline can close it.
            let _ = socket2::SockRef::from(&stream).set_send_buffer_size(l.send_buffer);
        }
        // Writes wait once 16 KiB of answers sit unsent (Linux counts this apart from the send
        // buffer): a client that pipelines without reading stalls after about a hundred
        // answers instead of eight hundred, and no normal answer comes near it.
        let _ = socket2::SockRef::from(&stream).set_tcp_notsent_lowat(UNSENT_LIMIT);
        let pipeline = io::Pipeline::default();
        let service = make(peer.ip(), pipeline.clone());
        let stream = io::Deadlines::new(stream, l.timeouts, pipeline);
        let watcher = graceful.watcher();
        let builder = builder.clone();
        match &l.tls {
            None => {
                let stream = request_line::RequestLine::new(stream, l.max_request_line);
                let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                let conn = watcher.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                    drop(permit);
                });
            }
            Some(tls) => {
                let tls = tls.clone();
                let max_request_line = l.max_request_line;
                tokio::spawn(async move {
                    let handshake = tokio::time::timeout(tls.handshake_timeout, tls.acceptor().accept(stream)).await;
                    let Ok(Ok(mut stream)) = handshake else {
                        return;
                    };
                    stream.get_mut().0.await_request();
                    let stream = request_line::RequestLine::new(stream, max_request_line);
                    // ALPN chose h2 or http/1.1; the auto builder reads the preface either way.
                    let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                    let _ = watcher.watch(conn).await;
                    drop(permit);
                });
            }
        }
    }
    drop(l);
    let open = graceful.count();
    if tokio::time::timeout(grace.await, graceful.shutdown()).await.is_err() {
        tracing::warn!(
            listener = what,
            open,
            "grace period over; closing remaining connections"
        );
    }
}

/// An optional TLS listener beside the plain public one.
pub struct TlsListener {
    pub tcp: TcpListener,
    pub tls: Arc<tls::Tls>,
}

/// Serves both listeners until `shutdown` resolves, then runs the drain and close phases.
/// Returns the end of the grace period, which started when the public listener closed: the
/// click flush that follows has what is left of it, so the process exits within
/// `drain_delay + grace` of the signal (plus the time to spill what is left to disk).
#[allow(clippy::too_many_arguments)] // each is a distinct part of the server's set-up
pub async fn run(
    app: Arc<App>,
    public: TcpListener,
    admin: TcpListener,
    tls: Option<TlsListener>,
    http: HttpConfig,
    drain_delay: Duration,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) -> std::time::Instant {
    let (stop_public, public_rx) = watch::channel(false);
    let (stop_admin, admin_rx) = watch::channel(false);
    // Connections get the grace less a reserve (a quarter, at most a second) that the click
    // flush has to itself, so a connection held to the end cannot leave it no time at all.
    let connections_grace = grace - (grace / 4).min(Duration::from_secs(1));
    let builder = Arc::new(http_builder(&http, false));
    let gate = Arc::new(Gate::new(&http, app.metrics.inflight.clone()));
    let public_service = {
        let app = app.clone();
        move |peer, pipeline| Public {
            app: app.clone(),
            peer,
            gate: gate.clone(),
            pipeline,
        }
    };
    let tls_task = tls.map(|t| {
        tokio::spawn(accept_loop(
            Listener::new(t.tcp, Some(t.tls), "tls", &http, true),
            builder.clone(),
            public_rx.clone(),
            ready(connections_grace),
            public_service.clone(),
        ))
    });
    let public_task = tokio::spawn(accept_loop(
        Listener::new(public, None, "public", &http, true),
        builder.clone(),
        public_rx,
        ready(connections_grace),
        public_service,
    ));
    // The admin listener closes last, within a second and within the grace period; the grace
    // is known only once the drain delay is over.
    let (admin_grace_tx, admin_grace) = tokio::sync::oneshot::channel::<Duration>();
    let admin_task = {
        let app = app.clone();
        let limits = http.clone();
        // Uploads to the admin listener can be long: hyper times only its request heads.
        let listener = Listener::new(admin, None, "admin", &http, false);
        let builder = Arc::new(http_builder(&http, listener.timeouts.head.is_none()));
        tokio::spawn(async move {
            let grace = async move { admin_grace.await.unwrap_or(Duration::ZERO) };
            accept_loop(listener, builder, admin_rx, grace, move |_, _| {
                admin::Admin::new(app.clone(), limits.clone())
            })
            .await
        })
    };
    shutdown.await;
    app.draining.store(true, std::sync::atomic::Ordering::SeqCst);
    app.metrics.draining.set(1.0);
    tracing::info!(delay_ms = drain_delay.as_millis() as u64, "draining: readiness is 503");
    tokio::time::sleep(drain_delay).await;
    tracing::info!("closing the public listener");
    let deadline = std::time::Instant::now() + grace;
    let _ = stop_public.send(true);
    let _ = public_task.await;
    if let Some(t) = tls_task {
        let _ = t.await;
    }
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    let _ = admin_grace_tx.send(left.min(Duration::from_secs(1)));
    let _ = stop_admin.send(true);
    let _ = admin_task.await;
    deadline
}
