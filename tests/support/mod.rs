//! Test support: a real `cartlink serve` process on loopback ports, a raw HTTP/1.1 client (so
//! tests see the exact bytes on the wire), and readers for the click files and metrics.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
pub const OLD_KEYS: &str = "k0:HxwdHhsaGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQA";
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 Instagram 305.0.0.0";

pub fn sign(keys: &str, id: &str) -> String {
    cartlink::links::signature::KeyRing::parse(keys).unwrap().sign(id)
}

pub fn path_for(id: &str) -> String {
    format!("/{id}.{}", sign(KEYS, id))
}

pub struct Server {
    pub child: Child,
    pub dir: PathBuf,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    /// The TLS listener, when `[tls] listen` is set.
    pub tls: Option<SocketAddr>,
    stderr: PathBuf,
}

/// A scratch directory under the target dir, removed at drop.
pub fn scratch(name: &str) -> PathBuf {
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}-{}", std::process::id(), rand_suffix()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

impl Server {
    /// Starts `cartlink serve` in a fresh directory holding `links` as its links file.
    pub fn start(name: &str, links: &str, env: &[(&str, &str)]) -> Server {
        let dir = scratch(name);
        std::fs::write(dir.join("links.jsonl"), links).unwrap();
        Server::start_in(dir, env)
    }

    pub fn start_in(dir: PathBuf, env: &[(&str, &str)]) -> Server {
        let stderr = dir.join("stderr.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cartlink"));
        cmd.arg("serve")
            .current_dir(&dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .env("CARTLINK_LISTEN", "127.0.0.1:0")
            .env("CARTLINK_ADMIN_LISTEN", "127.0.0.1:0")
            .env("CARTLINK_LINKS", dir.join("links.jsonl"))
            .env("CARTLINK_SINK", format!("file://{}", dir.join("clicks").display()))
            .env("CARTLINK_DATA_DIR", dir.join("data"))
            .env("CARTLINK_SIGNING_KEYS", KEYS)
            .env("CARTLINK_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("CARTLINK_WORKERS", "2")
            .env("CARTLINK_EDGE", "test-edge")
            .env("CARTLINK_PIPELINE_BATCH_MAX_AGE_MS", "20");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn cartlink");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = |key: &str| -> SocketAddr {
            let part = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .unwrap_or_else(|| {
                    panic!(
                        "no `{key}` in {line:?}; stderr: {}",
                        std::fs::read_to_string(&stderr).unwrap_or_default()
                    )
                });
            part.parse().unwrap()
        };
        let (public, admin) = (addr("public="), addr("admin="));
        let tls = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("tls="))
            .map(|a| a.parse().unwrap());
        Server {
            child,
            dir,
            public,
            admin,
            tls,
            stderr,
        }
    }

    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        request(self.public, "GET", path, headers, b"")
    }

    pub fn admin(&self, method: &str, path: &str, body: &[u8]) -> Resp {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        request(self.admin, method, path, &[("Authorization", &auth)], body)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits for the process to exit (after SIGTERM) and returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> i32 {
        let end = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < end,
                "server did not exit within {within:?}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One sample of `/metrics`, by full series name (`name{labels}`).
    pub fn metric(&self, series: &str) -> f64 {
        let text = request(self.admin, "GET", "/metrics", &[], b"").body_text();
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or_else(|| panic!("no series {series} in metrics:\n{text}"))
    }

    /// Every click record written so far.
    pub fn clicks(&self) -> Vec<serde_json::Value> {
        read_records(&self.dir.join("clicks"))
    }

    /// Waits until at least `n` records are written.
    pub fn wait_clicks(&self, n: usize) -> Vec<serde_json::Value> {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let c = self.clicks();
            if c.len() >= n {
                return c;
            }
            assert!(Instant::now() < end, "only {} of {n} click records arrived", c.len());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub fn read_records(dir: &Path) -> Vec<serde_json::Value> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
            out.push(serde_json::from_str(line).unwrap_or_else(|e| panic!("bad record {line:?}: {e}")));
        }
    }
    out
}

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub raw: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
    pub fn location(&self) -> &str {
        self.header("location")
            .unwrap_or_else(|| panic!("no Location in {self:?}"))
    }
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The `cl_click` (or cart attribute) value in the Location.
    pub fn click_id(&self) -> String {
        click_id_of(self.location()).unwrap_or_else(|| panic!("no click id in {}", self.location()))
    }
    pub fn cookie(&self) -> Option<String> {
        self.header("set-cookie")
            .map(|c| c.split(';').next().unwrap().to_string())
    }
}

/// Finds a 36-char UUID following `cl_click` in any of its encodings.
pub fn click_id_of(location: &str) -> Option<String> {
    for key in ["cl_click%5D=", "cl_click=", "cl_click%3D"] {
        if let Some(i) = location.find(key) {
            let id = &location[i + key.len()..];
            return id.get(..36).map(str::to_string);
        }
    }
    None
}

/// One request on a fresh connection (`Connection: close`), returning the raw bytes too.
pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    s.write_all(&bytes).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    parse_response(raw, method == "HEAD")
}

/// Sends raw bytes and returns the raw answer (for CRLF and malformed-request tests).
pub fn raw_request(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    raw
}

pub fn parse_response(raw: Vec<u8>, head_only: bool) -> Resp {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(&raw)));
    let head = std::str::from_utf8(&raw[..end]).unwrap().to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect();
    let body = if head_only { Vec::new() } else { raw[end + 4..].to_vec() };
    Resp {
        status,
        headers,
        body,
        raw,
    }
}

/// A keep-alive HTTP/1.1 connection for load loops.
pub struct Conn {
    stream: BufReader<TcpStream>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_nodelay(true)?;
        Ok(Conn {
            stream: BufReader::new(s),
        })
    }

    /// GET on the open connection; an error means the connection failed (not a bad status).
    pub fn get(&mut self, path: &str, ua: &str) -> std::io::Result<Resp> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nUser-Agent: {ua}\r\n\r\n");
        self.stream.get_mut().write_all(req.as_bytes())?;
        let mut raw = Vec::new();
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            if self.stream.read_line(&mut line)? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed mid-response",
                ));
            }
            raw.extend_from_slice(line.as_bytes());
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; len];
        self.stream.read_exact(&mut body)?;
        raw.extend_from_slice(&body);
        Ok(parse_response(raw, false))
    }
}

/// Shopify's `X-Shopify-Hmac-Sha256`: base64 of HMAC-SHA256 over the raw body.
pub fn shopify_hmac(secret: &str, body: &[u8]) -> String {
    use base64::Engine;
    use ring::hmac;
    base64::engine::general_purpose::STANDARD
        .encode(hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()), body).as_ref())
}

/// Posts one Shopify webhook delivery signed with `secret`; returns the status.
pub fn deliver_webhook(s: &Server, path: &str, topic: &str, id: &str, body: &[u8], secret: &str) -> u16 {
    let mac = shopify_hmac(secret, body);
    request(
        s.public,
        "POST",
        path,
        &[
            ("X-Shopify-Topic", topic),
            ("X-Shopify-Webhook-Id", id),
            ("X-Shopify-Hmac-Sha256", &mac),
            ("Content-Type", "application/json"),
        ],
        body,
    )
    .status
}

/// Query parameters of a URL, decoded.
pub fn query_of(url: &str) -> HashMap<String, String> {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Click pipeline support: a collector that can be told to fail, a load loop, metric sums.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Links for pipeline tests: one plain URL link, so every 302 carries `cl_click=`.
pub const PIPELINE_LINKS: &str = "{\"id\":\"p\",\"creator\":\"jane\",\"campaign\":\"c\",\"target\":{\"type\":\"url\",\"url\":\"https://brand.example/p\"}}\n";

/// What the collector does with the next request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Store the batch, answer 200.
    Up,
    /// Listener closed and every open connection dropped: connection refused.
    Refuse,
    /// Answer this status without storing.
    Status(u16),
    /// Wait this many milliseconds, then store and answer 200.
    Delay(u64),
    /// Store the batch, then close the connection without an answer (the answer was "lost").
    StoreThenReset,
    /// Read the batch, then close the connection without storing or answering.
    ResetBeforeStore,
}

#[derive(Default)]
struct CollectorState {
    mode: Option<Mode>,
    next: VecDeque<Mode>,
    ids: Vec<String>,
    requests: u64,
    /// Requests being answered now, and the most there ever were at once.
    in_flight: u64,
    max_in_flight: u64,
    headers: Option<http::HeaderMap>,
    accept: Option<tokio::task::JoinHandle<()>>,
}

/// A real HTTP collector on 127.0.0.1 (its own runtime thread), switchable at any time.
pub struct Collector {
    pub addr: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<Mutex<CollectorState>>,
    epoch: Arc<tokio::sync::watch::Sender<u64>>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Collector {
    pub fn start() -> Collector {
        Collector::start_with(None)
    }

    /// A collector speaking https with the given server config.
    pub fn start_tls(config: rustls::ServerConfig) -> Collector {
        Collector::start_with(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
    }

    fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> Collector {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(CollectorState {
            mode: Some(Mode::Up),
            ..Default::default()
        }));
        let (epoch, _) = tokio::sync::watch::channel(0u64);
        let c = Collector {
            addr,
            tls,
            state,
            epoch: Arc::new(epoch),
            rt: Some(rt),
        };
        c.spawn_accept(listener);
        c
    }

    /// `http://127.0.0.1:port/ingest`
    pub fn url(&self) -> String {
        format!("http://{}/ingest", self.addr)
    }

    fn spawn_accept(&self, listener: tokio::net::TcpListener) {
        let state = self.state.clone();
        let epoch = self.epoch.clone();
        let tls = self.tls.clone();
        let task = self.rt.as_ref().unwrap().spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                let mut killed = epoch.subscribe();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| collector_handle(state.clone(), req));
                    let http = hyper::server::conn::http1::Builder::new();
                    let serve = async move {
                        match tls {
                            Some(acceptor) => {
                                let Ok(stream) = acceptor.accept(stream).await else {
                                    return;
                                };
                                let _ = http.serve_connection(hyper_util::rt::TokioIo::new(stream), svc).await;
                            }
                            None => {
                                let _ = http.serve_connection(hyper_util::rt::TokioIo::new(stream), svc).await;
                            }
                        }
                    };
                    tokio::select! {
                        _ = serve => {}
                        _ = killed.changed() => {}
                    }
                });
            }
        });
        self.state.lock().unwrap().accept = Some(task);
    }

    /// Switches the collector's standing behaviour.
    pub fn set(&self, mode: Mode) {
        let was_refusing = {
            let mut st = self.state.lock().unwrap();
            let was = st.mode == Some(Mode::Refuse);
            st.mode = Some(mode);
            was
        };
        if mode == Mode::Refuse && !was_refusing {
            if let Some(t) = self.state.lock().unwrap().accept.take() {
                t.abort();
            }
            self.epoch.send_modify(|e| *e += 1);
            // Let the aborted accept task drop its listener.
            std::thread::sleep(Duration::from_millis(50));
        } else if mode != Mode::Refuse && was_refusing {
            let rt = self.rt.as_ref().unwrap();
            let mut tries = 0;
            let listener = loop {
                match rt.block_on(tokio::net::TcpListener::bind(self.addr)) {
                    Ok(l) => break l,
                    Err(e) => {
                        tries += 1;
                        assert!(tries < 100, "cannot re-bind collector on {}: {e}", self.addr);
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            };
            self.spawn_accept(listener);
        }
    }

    /// The next `n` requests get `mode`, then the standing behaviour resumes.
    pub fn fail_next(&self, n: usize, mode: Mode) {
        let mut st = self.state.lock().unwrap();
        st.next.extend(std::iter::repeat_n(mode, n));
    }

    /// Every click id stored, in arrival order, duplicates included.
    pub fn ids(&self) -> Vec<String> {
        self.state.lock().unwrap().ids.clone()
    }

    pub fn requests(&self) -> u64 {
        self.state.lock().unwrap().requests
    }

    /// The most requests it was answering at one time.
    pub fn max_in_flight(&self) -> u64 {
        self.state.lock().unwrap().max_in_flight
    }

    /// Headers of the last request.
    pub fn last_headers(&self) -> Option<http::HeaderMap> {
        self.state.lock().unwrap().headers.clone()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

async fn collector_handle(
    state: Arc<Mutex<CollectorState>>,
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<http_body_util::Full<bytes::Bytes>>, std::io::Error> {
    use http_body_util::BodyExt;
    struct InFlight(Arc<Mutex<CollectorState>>);
    impl Drop for InFlight {
        fn drop(&mut self) {
            self.0.lock().unwrap().in_flight -= 1;
        }
    }
    let _in_flight = InFlight(state.clone());
    let mode = {
        let mut st = state.lock().unwrap();
        st.requests += 1;
        st.in_flight += 1;
        st.max_in_flight = st.max_in_flight.max(st.in_flight);
        st.headers = Some(req.headers().clone());
        st.next.pop_front().or(st.mode).unwrap_or(Mode::Up)
    };
    let gzip = req
        .headers()
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes() == b"gzip");
    let body = req
        .into_body()
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    let text = if gzip {
        let mut out = String::new();
        flate2::read::GzDecoder::new(&body[..]).read_to_string(&mut out)?;
        out
    } else {
        String::from_utf8(body.to_vec()).map_err(std::io::Error::other)?
    };
    let store = |state: &Arc<Mutex<CollectorState>>| {
        let mut st = state.lock().unwrap();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line).expect("collector got a bad record");
            st.ids
                .push(v["click_id"].as_str().expect("record without click_id").to_string());
        }
    };
    let answer = |status: u16| {
        http::Response::builder()
            .status(status)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap()
    };
    match mode {
        Mode::Up => {
            store(&state);
            Ok(answer(200))
        }
        Mode::Delay(ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            store(&state);
            Ok(answer(200))
        }
        Mode::Status(s) => Ok(answer(s)),
        Mode::StoreThenReset => {
            store(&state);
            Err(std::io::Error::other("reset after store"))
        }
        Mode::ResetBeforeStore | Mode::Refuse => Err(std::io::Error::other("reset")),
    }
}

/// Keep-alive load from a few threads, each pausing `pause` between requests; records the
/// click id of every redirect it got.
pub struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<LoadResult>>,
}

#[derive(Debug, Default)]
pub struct LoadResult {
    /// Click ids of every 302 received.
    pub ids: Vec<String>,
    /// Answers other than 302.
    pub non_redirects: u64,
    /// Connections that failed (refused, closed mid-response).
    pub conn_errors: u64,
}

impl Load {
    pub fn start(addr: SocketAddr, threads: usize, pause: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let path = path_for("p");
        let threads = (0..threads)
            .map(|_| {
                let (stop, sent, path) = (stop.clone(), sent.clone(), path.clone());
                std::thread::spawn(move || {
                    let mut out = LoadResult::default();
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(mut conn) = Conn::open(addr) else {
                            out.conn_errors += 1;
                            std::thread::sleep(Duration::from_millis(5));
                            continue;
                        };
                        while !stop.load(Ordering::Relaxed) {
                            match conn.get(&path, IPHONE) {
                                Ok(r) if r.status == 302 => {
                                    out.ids.push(r.click_id());
                                    sent.fetch_add(1, Ordering::Relaxed);
                                }
                                Ok(_) => out.non_redirects += 1,
                                Err(_) => {
                                    out.conn_errors += 1;
                                    break;
                                }
                            }
                            if !pause.is_zero() {
                                std::thread::sleep(pause);
                            }
                        }
                    }
                    out
                })
            })
            .collect();
        Load { stop, sent, threads }
    }

    /// Redirects received so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    pub fn finish(self) -> LoadResult {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = LoadResult::default();
        for t in self.threads {
            let r = t.join().unwrap();
            all.ids.extend(r.ids);
            all.non_redirects += r.non_redirects;
            all.conn_errors += r.conn_errors;
        }
        all
    }
}

/// Waits for `cond`, failing the test with `what` after `within`.
pub fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < end, "timed out after {within:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The click-pipeline counters at one scrape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Flow {
    pub accepted: f64,
    pub delivered: f64,
    pub dropped: f64,
    pub buffered: f64,
}

impl Server {
    /// Sum of every series of `name` (all label sets); 0 if none.
    pub fn metric_sum(&self, name: &str) -> f64 {
        let text = request(self.admin, "GET", "/metrics", &[], b"").body_text();
        metric_sum_in(&text, name)
    }

    pub fn flow(&self) -> Flow {
        let text = request(self.admin, "GET", "/metrics", &[], b"").body_text();
        Flow {
            accepted: metric_sum_in(&text, "cartlink_clicks_accepted_total"),
            delivered: metric_sum_in(&text, "cartlink_clicks_delivered_total"),
            dropped: metric_sum_in(&text, "cartlink_clicks_dropped_total"),
            buffered: metric_sum_in(&text, "cartlink_clicks_buffered"),
        }
    }

    /// Waits until nothing is buffered and asserts conservation exactly:
    /// accepted == delivered + dropped (+ buffered, which is 0).
    pub fn wait_at_rest(&self, within: Duration) -> Flow {
        let mut last = self.flow();
        wait_until("the pipeline to come to rest", within, || {
            last = self.flow();
            last.buffered == 0.0 && last.accepted == last.delivered + last.dropped
        });
        last
    }
}

pub fn metric_sum_in(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let rest = if rest.starts_with('{') {
                &rest[rest.find('}')? + 1..]
            } else {
                rest
            };
            rest.strip_prefix(' ')?.trim().parse::<f64>().ok()
        })
        .sum()
}

/// Copies a directory tree (used to restart a server on the spill an earlier one left).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// A scratch directory `name` for a restart of the stopped server `s`: its data directory and
/// click files copied, `links` as its links file. `s` is dropped (its own directory removed).
pub fn dir_for_restart(s: Server, name: &str, links: &str) -> PathBuf {
    let dir = scratch(name);
    copy_tree(&s.dir.join("data"), &dir.join("data"));
    if s.dir.join("clicks").exists() {
        copy_tree(&s.dir.join("clicks"), &dir.join("clicks"));
    }
    std::fs::write(dir.join("links.jsonl"), links).unwrap();
    drop(s);
    dir
}

/// The NATS server the NATS tests use: `CARTLINK_TEST_NATS` or `127.0.0.1:4222`.
pub fn nats_addr() -> String {
    std::env::var("CARTLINK_TEST_NATS").unwrap_or_else(|_| "127.0.0.1:4222".to_string())
}

/// A small tmpfs mounted over a directory, to run a disk out of space; unmounted (and the
/// directory's parent removed) when the test ends, pass or fail.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`64k`) over `dir` (created). Where that is refused (not
    /// root) the test is skipped, saying so; under CI (`CI=true`, root) it fails instead.
    pub fn mount(dir: &Path, size: &str, test: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("cannot mount a tmpfs (CI runs as root; {test} must run there)");
            }
            say_skipped(
                test,
                "`mount -t tmpfs` failed (not root?); under CI=true this fails instead",
            );
            return None;
        }
        Some(Tmpfs(dir.to_path_buf()))
    }

    /// Fills what is left of it with a file (`fill`), until the kernel says ENOSPC.
    pub fn fill(&self) {
        let mut f = std::fs::File::create(self.0.join("fill")).unwrap();
        let block = [0u8; 4096];
        loop {
            match f.write_all(&block) {
                Ok(()) => continue,
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling {}: {e}", self.0.display()),
            }
        }
        let _ = f.sync_all();
    }

    /// Frees the space [`Tmpfs::fill`] took.
    pub fn free(&self) {
        std::fs::remove_file(self.0.join("fill")).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        if let Some(parent) = self.0.parent() {
            let _ = std::fs::remove_dir_all(parent);
        }
    }
}

/// Says that a test was skipped, on the real stderr (not the captured one), so `cargo test`
/// shows it even when the test passes.
pub fn say_skipped(test: &str, why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// Whether a NATS server is reachable at [`nats_addr`]. On a machine without one the caller
/// skips (saying so); under CI (`CI=true`) a missing server fails the test instead.
pub fn nats_available(test: &str) -> bool {
    let addr = nats_addr();
    let ok = std::net::ToSocketAddrs::to_socket_addrs(addr.as_str())
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok());
    if !ok {
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("{test}: no NATS server at {addr}, and CI=true: NATS tests must run in CI");
        }
        say_skipped(
            test,
            &format!("no NATS server at {addr} (start `nats-server -js`; under CI=true this fails instead)"),
        );
    }
    ok
}
