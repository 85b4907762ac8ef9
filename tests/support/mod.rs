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

/// Query parameters of a URL, decoded.
pub fn query_of(url: &str) -> HashMap<String, String> {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}
