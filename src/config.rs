//! Configuration: a TOML file, every key overridable by environment, validated into
//! [`Settings`]. Only `Settings` reach the server; the raw structs stop here.
//!
//! Environment names: top-level keys are `CARTLINK_<KEY>` (`listen` → `CARTLINK_LISTEN`), keys
//! in a section are `CARTLINK_<SECTION>_<KEY>` (`[cookie] domain` → `CARTLINK_COOKIE_DOMAIN`).
//! Lists are comma-separated. Secrets never live in the file: they come from
//! `CARTLINK_SIGNING_KEYS`, `CARTLINK_ADMIN_TOKEN`, `CARTLINK_SHOPIFY_WEBHOOK_SECRETS`,
//! `CARTLINK_PAYOUT_SECRET`, or from a file named by the same variable with `_FILE` appended.

use crate::links::signature::KeyRing;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_CONFIG: &str = "config/cartlink.toml";

/// The demo signing key used when none is configured; public, so links signed with it prove
/// nothing. `serve` warns loudly when it is in use.
pub const DEMO_SIGNING_KEYS: &str = "demo:Y2FydGxpbmstZGVtby1rZXktZG8tbm90LXVzZS1pbi1wcm9k";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: String,
    pub admin_listen: String,
    pub links: String,
    pub sink: String,
    pub data_dir: String,
    /// MaxMind-format country database; empty: country unknown.
    pub geoip: String,
    pub trusted_proxies: Vec<String>,
    /// From a trusted proxy, the CDN's client-address header (`CF-Connecting-IP`,
    /// `True-Client-IP`, `Fastly-Client-IP`); empty: use `X-Forwarded-For` / `Forwarded`.
    pub client_ip_header: String,
    /// From a trusted proxy, the CDN's country header; empty: the geo database only.
    pub country_header: String,
    /// Runtime worker threads; 0: one per core.
    pub workers: usize,
    /// Instance name written into every click record; empty: the host name.
    pub edge: String,
    /// Where links are served from publicly, for `cartlink mint`.
    pub public_base_url: String,
    /// Brand-wide fallback for paused, expired or capped links without their own.
    pub fallback: String,
    /// How often the links file is checked for changes; 0: never (SIGHUP and the admin API
    /// still reload).
    pub watch_links_ms: u64,
    pub cookie: CookieConfig,
    pub drain: DrainConfig,
    pub pipeline: PipelineConfig,
    pub http: HttpConfig,
    pub tls: TlsConfig,
    pub unique: UniqueConfig,
    pub payout: PayoutConfig,
}

/// Optional payouts: every commission record also POSTed, signed, to the payout system
/// (`commerce::payout`). The signing secret is `CARTLINK_PAYOUT_SECRET`, never in this file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PayoutConfig {
    /// `http://` or `https://` endpoint of the payout or store-credit system; empty: payouts off.
    pub url: String,
    /// Longest wait for one POST's answer (then it is retried).
    pub timeout_ms: u64,
    /// First retry delay after a failed POST; doubles per failure…
    pub retry_base_ms: u64,
    /// …up to this cap (each delay jittered into [cap/2, cap]). Retries never stop.
    pub retry_max_ms: u64,
    /// Over https: a PEM file of extra trusted CA certificates (a private CA); empty: web PKI
    /// roots only.
    pub ca_file: String,
}

impl Default for PayoutConfig {
    fn default() -> Self {
        PayoutConfig {
            url: String::new(),
            timeout_ms: 10_000,
            retry_base_ms: 500,
            retry_max_ms: 60_000,
            ca_file: String::new(),
        }
    }
}

/// Validated payouts: on when `payout.url` is set, and then always with a secret.
#[derive(Clone)]
pub struct PayoutSettings {
    pub url: http::Uri,
    /// The HMAC-SHA256 key of `X-Cartlink-Signature`; never printed (`Debug` redacts it).
    pub secret: String,
    pub timeout: Duration,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub ca_file: String,
}

impl std::fmt::Debug for PayoutSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayoutSettings")
            .field("url", &self.url)
            .field("secret", &"<set>")
            .field("timeout", &self.timeout)
            .field("retry_base", &self.retry_base)
            .field("retry_max", &self.retry_max)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// A TLS listener beside the plain one (which stays for CDN-terminated set-ups).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// `host:port` of the TLS listener; empty: no TLS listener.
    pub listen: String,
    /// PEM certificate chain, leaf first; re-read on SIGHUP.
    pub cert_file: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1); re-read on SIGHUP.
    pub key_file: String,
    /// Longest a client may take to finish the TLS handshake; 0: 10 s.
    pub handshake_timeout_ms: u64,
}

/// A validated `[tls]` section.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub listen: SocketAddr,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub handshake_timeout: Duration,
}

/// The unique-visitor filter (see `audience::unique`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UniqueConfig {
    /// Distinct (visitor, link) pairs expected per day; sizes the filter.
    pub expected_per_day: u64,
    /// Target false-positive rate at that size (a repeat visitor wrongly taken as seen).
    pub false_positive_rate: f64,
}

impl Default for UniqueConfig {
    fn default() -> Self {
        UniqueConfig {
            expected_per_day: 1_000_000,
            false_positive_rate: 0.001,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CookieConfig {
    pub name: String,
    /// The brand's registrable domain (`brand.example`); empty: host-only cookie.
    pub domain: String,
    pub window_days: u64,
    /// `last_click` or `first_click`.
    pub policy: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DrainConfig {
    /// After SIGTERM, `/readyz` answers 503 and the listener keeps serving this long, so the
    /// CDN stops sending before connections close.
    pub delay_ms: u64,
    /// Longest wait for in-flight requests and the click flush after the listener closes.
    pub grace_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    pub queue_capacity: usize,
    pub batch_max_records: usize,
    pub batch_max_bytes: usize,
    pub batch_max_age_ms: u64,
    /// The file sink starts a new file past this size…
    pub file_max_bytes: u64,
    /// …or this age.
    pub file_max_age_s: u64,
    /// Longest time written clicks stay in the page cache before `fdatasync`.
    pub file_fsync_ms: u64,
    /// Drop a file's pages from the page cache once `fdatasync` has made them durable, so the
    /// click files do not grow the page cache by tens of MB a second (see docs/pipeline.md).
    /// Off when something tails the files and should read them from memory.
    pub file_drop_cache: bool,
    /// Batches handed to the sink stage but not yet acknowledged, held in memory; past this the
    /// batcher spills to disk instead of waiting.
    pub inflight_batches: usize,
    /// Queue depth (percent of `queue_capacity`) past which batches go straight to the spill.
    pub spill_watermark_pct: u64,
    /// Size cap of the disk spill under `data_dir/spill`; a batch that does not fit is dropped
    /// (counted as `dropped{reason="spill_full"}`).
    pub spill_max_bytes: u64,
    /// A spill segment is sealed past this size.
    pub spill_segment_bytes: u64,
    /// Longest time spilled records stay in the page cache before `fdatasync`.
    pub spill_fsync_ms: u64,
    /// First retry delay after a failed sink write; doubles per failure…
    pub retry_base_ms: u64,
    /// …up to this cap (each delay jittered into [cap/2, cap]).
    pub retry_max_ms: u64,
    /// HTTP sink: longest wait for one batch's response (then it is retried).
    pub http_timeout_ms: u64,
    /// HTTP sink: batches sent at once while catching up on the spill (a slow collector).
    pub http_concurrency: usize,
    /// HTTP sink: gzip the body (`Content-Encoding: gzip`).
    pub http_gzip: bool,
    /// HTTP sink: extra non-secret headers, `Name: value`. Credentials go in
    /// `CARTLINK_SINK_BEARER_TOKEN` or `CARTLINK_SINK_AUTH_HEADER` (environment only).
    pub http_headers: Vec<String>,
    /// HTTP sink over https: a PEM file of extra trusted CA certificates (a private CA), added
    /// to the built-in web PKI roots; empty: web PKI roots only.
    pub http_ca_file: String,
    /// NATS sink: the JetStream stream, created if missing.
    pub nats_stream: String,
    /// NATS sink: the stream's subjects when it is created; empty: the sink's subject.
    pub nats_subjects: Vec<String>,
    /// NATS sink: `limits`, `interest` or `workqueue`.
    pub nats_retention: String,
    /// NATS sink: the stream's `max_age` when it is created; 0: unlimited.
    pub nats_max_age_s: u64,
    /// NATS sink: the stream's duplicate window (server-side dedup by `Nats-Msg-Id`).
    pub nats_duplicate_window_s: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub header_read_timeout_ms: u64,
    /// Largest request head (request line + headers); larger gets 431.
    pub max_header_bytes: usize,
    /// Longest HTTP/1 request line (method, target, version) on the public listeners; longer
    /// gets 414. Below `max_header_bytes`, which would otherwise answer 431 first.
    pub max_uri_bytes: usize,
    pub max_headers: usize,
    /// A connection with nothing read or written for this long is closed.
    pub keepalive_idle_ms: u64,
    pub h2_max_concurrent_streams: u32,
    /// A connection whose peer takes no bytes for this long while a response is being written
    /// is closed (clients that never read).
    pub write_timeout_ms: u64,
    /// `SO_SNDBUF` of accepted connections; 0: the kernel's autotuning. Small enough that a
    /// client that never reads stalls the server's writes (and meets `write_timeout_ms`).
    pub socket_send_buffer_bytes: usize,
    /// Open connections per listener; past it the listener stops accepting until one closes.
    pub max_connections: usize,
    /// Largest request body on public routes other than GET/HEAD; larger gets 413.
    pub max_body_bytes: usize,
    /// Public requests handled at once; past it 503 with `Retry-After: 1` (`/healthz` never).
    pub max_inflight: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "0.0.0.0:8080".into(),
            admin_listen: "127.0.0.1:9090".into(),
            links: "config/links.example.jsonl".into(),
            sink: "file://./data/clicks".into(),
            data_dir: "./data".into(),
            geoip: String::new(),
            trusted_proxies: Vec::new(),
            client_ip_header: String::new(),
            country_header: "CF-IPCountry".into(),
            workers: 0,
            edge: String::new(),
            public_base_url: "http://localhost:8080".into(),
            fallback: String::new(),
            watch_links_ms: 1000,
            cookie: CookieConfig::default(),
            drain: DrainConfig::default(),
            pipeline: PipelineConfig::default(),
            http: HttpConfig::default(),
            tls: TlsConfig::default(),
            unique: UniqueConfig::default(),
            payout: PayoutConfig::default(),
        }
    }
}

impl Default for CookieConfig {
    fn default() -> Self {
        CookieConfig {
            name: "cl_att".into(),
            domain: String::new(),
            window_days: 30,
            policy: "last_click".into(),
        }
    }
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig {
            delay_ms: 0,
            grace_ms: 10_000,
        }
    }
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            queue_capacity: 65_536,
            batch_max_records: 1_000,
            batch_max_bytes: 1 << 20,
            batch_max_age_ms: 200,
            file_max_bytes: 64 << 20,
            file_max_age_s: 3600,
            file_fsync_ms: 1000,
            file_drop_cache: true,
            inflight_batches: 4,
            spill_watermark_pct: 50,
            spill_max_bytes: 1 << 30,
            spill_segment_bytes: 16 << 20,
            spill_fsync_ms: 500,
            retry_base_ms: 50,
            retry_max_ms: 5_000,
            http_timeout_ms: 10_000,
            http_concurrency: 4,
            http_gzip: false,
            http_headers: Vec::new(),
            http_ca_file: String::new(),
            nats_stream: "CARTLINK_CLICKS".into(),
            nats_subjects: Vec::new(),
            nats_retention: "limits".into(),
            nats_max_age_s: 0,
            nats_duplicate_window_s: 120,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            header_read_timeout_ms: 10_000,
            max_header_bytes: 16 << 10,
            max_uri_bytes: 8 << 10,
            max_headers: 64,
            keepalive_idle_ms: 75_000,
            h2_max_concurrent_streams: 128,
            write_timeout_ms: 10_000,
            socket_send_buffer_bytes: 64 << 10,
            max_connections: 20_000,
            max_body_bytes: 1 << 20,
            max_inflight: 4096,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookiePolicy {
    LastClick,
    FirstClick,
}

/// The attribution cookie, with its attribute suffix rendered once.
#[derive(Debug, Clone)]
pub struct CookieSettings {
    pub name: String,
    pub policy: CookiePolicy,
    pub window: Duration,
    /// `; Max-Age=…; Domain=…; Path=/; Secure; HttpOnly; SameSite=Lax`
    pub attributes: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkSettings {
    File { dir: PathBuf },
    Http { url: String, auth: SinkAuth },
    Nats { server: String, subject: String },
}

/// Credentials for the HTTP sink, from the environment only (`CARTLINK_SINK_BEARER_TOKEN`,
/// `CARTLINK_SINK_AUTH_HEADER` = `Name: value`, or their `_FILE` forms). `Debug` redacts them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SinkAuth {
    pub bearer: Option<String>,
    pub header: Option<(String, String)>,
}

impl std::fmt::Debug for SinkAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkAuth")
            .field("bearer", &self.bearer.as_ref().map(|_| "<set>"))
            .field("header", &self.header.as_ref().map(|(n, _)| format!("{n}: <set>")))
            .finish()
    }
}

/// Validated settings.
#[derive(Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub links: PathBuf,
    pub sink: SinkSettings,
    pub data_dir: PathBuf,
    pub geoip: Option<PathBuf>,
    pub client_ip: crate::audience::client_ip::ClientIp,
    pub country_header: Option<http::HeaderName>,
    pub workers: usize,
    pub edge: String,
    pub public_base_url: url::Url,
    pub fallback: Option<String>,
    pub watch_links: Option<Duration>,
    pub cookie: CookieSettings,
    pub drain_delay: Duration,
    pub drain_grace: Duration,
    pub pipeline: PipelineConfig,
    pub http: HttpConfig,
    pub tls: Option<TlsSettings>,
    pub unique: UniqueConfig,
    pub secrets: Secrets,
    /// `None`: payouts off.
    pub payout: Option<PayoutSettings>,
}

impl Settings {
    /// The settings a reload does not apply (it applies the links file, `cookie`, `fallback`,
    /// the client address, country header and geo database), each as an opaque fingerprint to
    /// compare: a reload that changes one of them says so, by name. Secrets are fingerprinted
    /// by a digest, never kept or shown.
    pub fn restart_only(&self) -> Vec<(&'static str, String)> {
        let digest = |parts: &[&str]| {
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            for p in parts {
                ctx.update(p.as_bytes());
                ctx.update(&[0]);
            }
            format!("{:?}", ctx.finish())
        };
        let secrets = &self.secrets;
        let webhook: Vec<&str> = secrets.shopify_webhook_secrets.iter().map(String::as_str).collect();
        vec![
            ("listen", self.listen.to_string()),
            ("admin_listen", self.admin_listen.to_string()),
            ("sink", format!("{:?}", self.sink)),
            ("data_dir", self.data_dir.display().to_string()),
            ("workers", self.workers.to_string()),
            ("edge", self.edge.clone()),
            ("public_base_url", self.public_base_url.to_string()),
            ("watch_links_ms", format!("{:?}", self.watch_links)),
            ("drain", format!("{:?} {:?}", self.drain_delay, self.drain_grace)),
            ("pipeline", format!("{:?}", self.pipeline)),
            ("http", format!("{:?}", self.http)),
            ("tls", format!("{:?}", self.tls)),
            ("unique", format!("{:?}", self.unique)),
            (
                "signing_keys",
                format!("{:?} {}", secrets.keys, secrets.keys.sign("cartlink:fingerprint")),
            ),
            ("admin_token", digest(&[secrets.admin_token.as_deref().unwrap_or("")])),
            ("shopify_webhook_secrets", digest(&webhook)),
            (
                "payout",
                match &self.payout {
                    Some(p) => format!("{:?} {}", p, digest(&[&p.secret])),
                    None => "off".into(),
                },
            ),
        ]
    }
}

pub struct Secrets {
    pub keys: std::sync::Arc<KeyRing>,
    pub demo_key: bool,
    pub admin_token: Option<String>,
    pub shopify_webhook_secrets: Vec<String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("keys", &self.keys)
            .field("demo_key", &self.demo_key)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "<set>"))
            .field("shopify_webhook_secrets", &self.shopify_webhook_secrets.len())
            .finish()
    }
}

/// A configuration problem and where it is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}:{line}: {message}")]
    Parse { path: String, line: usize, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// Reads environment variables; a function so tests can pass their own.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl Config {
    /// The file (if it exists, or if it was named explicitly) with the environment on top.
    pub fn load(path: &Path, explicit: bool, env: Env) -> Result<Config, ConfigError> {
        let mut value = toml::Value::try_from(Config::default()).expect("defaults serialize");
        match std::fs::read_to_string(path) {
            Ok(text) => {
                // Deserialized once on its own so errors point at the file's own lines.
                toml::from_str::<Config>(&text).map_err(|e| parse_error(path, &text, e))?;
                let file: toml::Table = toml::from_str(&text).map_err(|e| parse_error(path, &text, e))?;
                merge(&mut value, toml::Value::Table(file));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {}
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })
            }
        }
        overlay_env(&mut value, "CARTLINK", env)?;
        let text = toml::to_string(&value).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        // The file was read on its own above: what fails now came from the environment.
        toml::from_str(&text).map_err(|e| {
            let var = e.span().and_then(|span| env_var_at(&text, span.start));
            ConfigError::Invalid(format!("{}: {}", var.as_deref().unwrap_or("environment"), e.message()))
        })
    }

    /// Validates everything, collecting every problem.
    pub fn validate(self, env: Env) -> Result<Settings, ConfigError> {
        let mut errs: Vec<String> = Vec::new();
        let addr = |name: &str, v: &str, errs: &mut Vec<String>| {
            v.parse::<SocketAddr>()
                .map_err(|_| errs.push(format!("{name} `{v}` is not host:port")))
                .ok()
        };
        let listen = addr("listen", &self.listen, &mut errs);
        let admin_listen = addr("admin_listen", &self.admin_listen, &mut errs);
        let sink = parse_sink(&self.sink)
            .and_then(|s| with_sink_auth(s, env))
            .map_err(|e| errs.push(e))
            .ok();
        let public_base_url = url::Url::parse(&self.public_base_url)
            .map_err(|e| format!("public_base_url `{}`: {e}", self.public_base_url))
            .and_then(|u| {
                // Links are served at the root (`/{id}.{sig}`): a path here would be dropped.
                if !matches!(u.path(), "" | "/") || u.query().is_some() || u.fragment().is_some() {
                    return Err(format!(
                        "public_base_url `{}` must be a scheme and host only (links are served at `/{{id}}.{{sig}}`); a path, query or fragment is not kept",
                        self.public_base_url
                    ));
                }
                if !matches!(u.scheme(), "http" | "https") || u.host().is_none() {
                    return Err(format!("public_base_url `{}` must be an http(s) URL with a host", self.public_base_url));
                }
                Ok(u)
            })
            .map_err(|e| errs.push(e))
            .ok();
        let fallback = (!self.fallback.is_empty()).then(|| self.fallback.clone());
        if let Some(f) = &fallback {
            if !f.starts_with("https://") || url::Url::parse(f).is_err() {
                errs.push(format!("fallback `{f}` must be an https URL"));
            }
        }
        let policy = match self.cookie.policy.as_str() {
            "last_click" => CookiePolicy::LastClick,
            "first_click" => CookiePolicy::FirstClick,
            other => {
                errs.push(format!("cookie.policy `{other}` must be `last_click` or `first_click`"));
                CookiePolicy::LastClick
            }
        };
        let name_ok = !self.cookie.name.is_empty()
            && self.cookie.name.len() <= 64
            && self
                .cookie
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !name_ok {
            errs.push(format!(
                "cookie.name `{}` must be 1-64 of [A-Za-z0-9_-]",
                self.cookie.name
            ));
        }
        if self.cookie.name.starts_with("__Host-") && !self.cookie.domain.is_empty() {
            errs.push("cookie.domain must be empty for a `__Host-` cookie".into());
        }
        let domain_ok = self
            .cookie
            .domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
        if !domain_ok {
            errs.push(format!("cookie.domain `{}` is not a domain name", self.cookie.domain));
        }
        if !(1..=400).contains(&self.cookie.window_days) {
            errs.push("cookie.window_days must be 1-400 (browsers cap cookies at 400 days)".into());
        }
        let p = &self.pipeline;
        if p.queue_capacity == 0 || p.batch_max_records == 0 || p.batch_max_bytes == 0 || p.batch_max_age_ms == 0 {
            errs.push("pipeline sizes and ages must be above 0".into());
        }
        if p.inflight_batches == 0
            || p.spill_segment_bytes == 0
            || p.retry_base_ms == 0
            || p.http_timeout_ms == 0
            || p.http_concurrency == 0
        {
            errs.push(
                "pipeline.inflight_batches, spill_segment_bytes, retry_base_ms, http_timeout_ms and http_concurrency must be above 0"
                    .into(),
            );
        }
        if p.spill_watermark_pct > 100 {
            errs.push("pipeline.spill_watermark_pct must be 0-100".into());
        }
        if !matches!(p.nats_retention.as_str(), "limits" | "interest" | "workqueue") {
            errs.push(format!(
                "pipeline.nats_retention `{}` must be limits, interest or workqueue",
                p.nats_retention
            ));
        }
        for h in &p.http_headers {
            if parse_header(h).is_none() {
                errs.push(format!("pipeline.http_headers: `{h}` is not `Name: value`"));
            }
        }
        if self.http.max_header_bytes < 8192 {
            errs.push("http.max_header_bytes must be at least 8192".into());
        }
        if self.http.max_uri_bytes < 1024 || self.http.max_uri_bytes >= self.http.max_header_bytes {
            errs.push("http.max_uri_bytes must be at least 1024 and below http.max_header_bytes".into());
        }
        if self.http.max_headers == 0 || self.http.header_read_timeout_ms == 0 {
            errs.push("http.max_headers and http.header_read_timeout_ms must be above 0".into());
        }
        let h = &self.http;
        if h.keepalive_idle_ms == 0
            || h.write_timeout_ms == 0
            || h.max_connections == 0
            || h.max_body_bytes == 0
            || h.max_inflight == 0
        {
            errs.push(
                "http.keepalive_idle_ms, write_timeout_ms, max_connections, max_body_bytes and max_inflight must be above 0 (max_inflight 0 would shed every request)".into(),
            );
        }
        let tls = self.tls_settings().map_err(|e| errs.push(e)).ok().flatten();
        let client_ip = crate::audience::client_ip::ClientIp::new(&self.trusted_proxies, &self.client_ip_header)
            .map_err(|e| errs.push(e))
            .ok();
        let country_header = match self.country_header.trim() {
            "" => None,
            h => http::HeaderName::from_bytes(h.as_bytes())
                .map_err(|_| errs.push(format!("country_header `{h}` is not a header name")))
                .ok(),
        };
        if !(self.unique.false_positive_rate > 0.0 && self.unique.false_positive_rate < 0.5)
            || self.unique.expected_per_day == 0
        {
            errs.push("unique.expected_per_day must be above 0 and unique.false_positive_rate in (0, 0.5)".into());
        }
        let secrets = load_secrets(env).map_err(|e| errs.push(e)).ok();
        let payout = self.payout_settings(env).map_err(|e| errs.push(e)).ok().flatten();
        if !errs.is_empty() {
            return Err(ConfigError::Invalid(errs.join("\n")));
        }
        let window = Duration::from_secs(self.cookie.window_days * 86_400);
        let mut attributes = format!("; Max-Age={}", window.as_secs());
        if !self.cookie.domain.is_empty() {
            attributes.push_str("; Domain=");
            attributes.push_str(&self.cookie.domain);
        }
        attributes.push_str("; Path=/; Secure; HttpOnly; SameSite=Lax");
        let edge = if self.edge.is_empty() {
            hostname()
        } else {
            self.edge.clone()
        };
        let some = "checked above";
        Ok(Settings {
            listen: listen.expect(some),
            admin_listen: admin_listen.expect(some),
            links: PathBuf::from(&self.links),
            sink: sink.expect(some),
            data_dir: PathBuf::from(&self.data_dir),
            geoip: (!self.geoip.is_empty()).then(|| PathBuf::from(&self.geoip)),
            client_ip: client_ip.expect(some),
            country_header,
            workers: self.workers,
            edge,
            public_base_url: public_base_url.expect(some),
            fallback,
            watch_links: (self.watch_links_ms > 0).then(|| Duration::from_millis(self.watch_links_ms)),
            cookie: CookieSettings {
                name: self.cookie.name.clone(),
                policy,
                window,
                attributes,
            },
            drain_delay: Duration::from_millis(self.drain.delay_ms),
            drain_grace: Duration::from_millis(self.drain.grace_ms),
            pipeline: self.pipeline.clone(),
            http: self.http.clone(),
            tls,
            unique: self.unique.clone(),
            secrets: secrets.expect(some),
            payout,
        })
    }
}

impl Config {
    fn tls_settings(&self) -> Result<Option<TlsSettings>, String> {
        let t = &self.tls;
        if t.listen.is_empty() {
            if !t.cert_file.is_empty() || !t.key_file.is_empty() {
                return Err("tls.cert_file and tls.key_file need tls.listen".into());
            }
            return Ok(None);
        }
        let listen = t
            .listen
            .parse::<SocketAddr>()
            .map_err(|_| format!("tls.listen `{}` is not host:port", t.listen))?;
        if t.cert_file.is_empty() || t.key_file.is_empty() {
            return Err("tls.listen needs tls.cert_file and tls.key_file".into());
        }
        let ms = if t.handshake_timeout_ms == 0 {
            10_000
        } else {
            t.handshake_timeout_ms
        };
        Ok(Some(TlsSettings {
            listen,
            cert_file: PathBuf::from(&t.cert_file),
            key_file: PathBuf::from(&t.key_file),
            handshake_timeout: Duration::from_millis(ms),
        }))
    }
}

impl Config {
    fn payout_settings(&self, env: Env) -> Result<Option<PayoutSettings>, String> {
        let p = &self.payout;
        let url = p.url.trim();
        if url.is_empty() {
            return Ok(None);
        }
        // Messages name the scheme, never the whole URL: it could carry credentials.
        let parsed = url::Url::parse(url).map_err(|e| format!("payout.url is not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!(
                "payout.url must be http:// or https://, not `{}:`",
                parsed.scheme()
            ));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err("payout.url must not carry credentials: the receiver checks X-Cartlink-Signature".into());
        }
        let uri: http::Uri = url.parse().map_err(|_| "payout.url is not a request URI".to_string())?;
        if p.timeout_ms == 0 || p.retry_base_ms == 0 {
            return Err("payout.timeout_ms and payout.retry_base_ms must be above 0".into());
        }
        let secret = secret(env, "CARTLINK_PAYOUT_SECRET")?.ok_or(
            "payout.url is set but CARTLINK_PAYOUT_SECRET (or CARTLINK_PAYOUT_SECRET_FILE) is not: payouts are always signed",
        )?;
        if secret.len() < 16 {
            return Err("CARTLINK_PAYOUT_SECRET must be at least 16 characters".into());
        }
        Ok(Some(PayoutSettings {
            url: uri,
            secret,
            timeout: Duration::from_millis(p.timeout_ms),
            retry_base: Duration::from_millis(p.retry_base_ms),
            retry_max: Duration::from_millis(p.retry_max_ms.max(p.retry_base_ms)),
            ca_file: p.ca_file.clone(),
        }))
    }
}

fn parse_error(path: &Path, text: &str, e: toml::de::Error) -> ConfigError {
    let line = e
        .span()
        .map_or(0, |s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    ConfigError::Parse {
        path: path.display().to_string(),
        line,
        message: e.message().to_string(),
    }
}

fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// Every leaf of the (defaults + file) tree can be replaced by `PREFIX_<PATH>`.
/// The environment variable of a key: `CARTLINK_HTTP` + `max_inflight` → `CARTLINK_HTTP_MAX_INFLIGHT`.
fn env_name(prefix: &str, key: &str) -> String {
    format!("{prefix}_{}", key.to_ascii_uppercase())
}

/// The variable that set the value at byte `at` of the merged config's TOML text: its key, and
/// the `[table]` header above it, if any.
fn env_var_at(text: &str, at: usize) -> Option<String> {
    let line_start = text.get(..at)?.rfind('\n').map_or(0, |i| i + 1);
    let key = text[line_start..].split('=').next()?.trim();
    let table = text[..line_start]
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix('[')?.strip_suffix(']'));
    let prefix = table
        .into_iter()
        .flat_map(|t| t.split('.'))
        .fold("CARTLINK".to_string(), |name, part| env_name(&name, part.trim()));
    Some(env_name(&prefix, key))
}

fn overlay_env(value: &mut toml::Value, prefix: &str, env: Env) -> Result<(), ConfigError> {
    let toml::Value::Table(table) = value else {
        return Ok(());
    };
    for (key, slot) in table.iter_mut() {
        let name = env_name(prefix, key);
        if slot.is_table() {
            overlay_env(slot, &name, env)?;
            continue;
        }
        let Some(text) = env(&name) else { continue };
        let bad = |what: &str| ConfigError::Invalid(format!("{name}=`{text}` is not {what}"));
        *slot = match slot {
            toml::Value::Integer(_) => toml::Value::Integer(text.trim().parse().map_err(|_| bad("an integer"))?),
            toml::Value::Float(_) => toml::Value::Float(text.trim().parse().map_err(|_| bad("a number"))?),
            toml::Value::Boolean(_) => toml::Value::Boolean(text.trim().parse().map_err(|_| bad("true or false"))?),
            toml::Value::Array(_) => toml::Value::Array(
                text.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.into()))
                    .collect(),
            ),
            _ => toml::Value::String(text.clone()),
        };
    }
    Ok(())
}

/// Secrets and credentials, read from the environment only (each also as `NAME_FILE`).
const ENV_SECRETS: [&str; 6] = [
    "CARTLINK_SIGNING_KEYS",
    "CARTLINK_ADMIN_TOKEN",
    "CARTLINK_SHOPIFY_WEBHOOK_SECRETS",
    "CARTLINK_PAYOUT_SECRET",
    "CARTLINK_SINK_BEARER_TOKEN",
    "CARTLINK_SINK_AUTH_HEADER",
];

/// The `CARTLINK_*` names among `names` that cartlink does not read: a misspelt override is
/// otherwise silently ignored.
pub fn unknown_env_names(names: impl Iterator<Item = String>) -> Vec<String> {
    fn known(value: &toml::Value, prefix: &str, out: &mut std::collections::HashSet<String>) {
        let toml::Value::Table(table) = value else { return };
        for (key, slot) in table {
            let name = env_name(prefix, key);
            // A section's own name (`CARTLINK_HTTP`) sets nothing: only its keys are read.
            if slot.is_table() {
                known(slot, &name, out);
            } else {
                out.insert(name);
            }
        }
    }
    let mut names_read = std::collections::HashSet::new();
    known(
        &toml::Value::try_from(Config::default()).expect("defaults serialize"),
        "CARTLINK",
        &mut names_read,
    );
    for name in ENV_SECRETS {
        names_read.insert(name.to_string());
        names_read.insert(format!("{name}_FILE"));
    }
    // Read by the scripts in loadtest/, which pass their environment on.
    names_read.extend(["CARTLINK_BIN".to_string(), "CARTLINK_BIN_B".to_string()]);
    let mut unknown: Vec<String> = names
        .filter(|n| n.starts_with("CARTLINK_") && !names_read.contains(n))
        .collect();
    unknown.sort();
    unknown
}

fn parse_sink(text: &str) -> Result<SinkSettings, String> {
    if let Some(rest) = text.strip_prefix("file://") {
        if rest.is_empty() {
            return Err("sink `file://` needs a directory".into());
        }
        return Ok(SinkSettings::File {
            dir: PathBuf::from(rest),
        });
    }
    if text.starts_with("http://") || text.starts_with("https://") {
        url::Url::parse(text).map_err(|e| format!("sink `{}`: {e}", redact_url(text)))?;
        return Ok(SinkSettings::Http {
            url: text.into(),
            auth: SinkAuth::default(),
        });
    }
    if text.starts_with("nats://") {
        let u = url::Url::parse(text).map_err(|e| format!("sink `{}`: {e}", redact_url(text)))?;
        let subject = u.path().trim_start_matches('/').to_string();
        if subject.is_empty() {
            return Err(format!(
                "sink `{}` needs a subject: nats://host:port/subject",
                redact_url(text)
            ));
        }
        let host = u.host_str().unwrap_or("127.0.0.1");
        return Ok(SinkSettings::Nats {
            server: format!("{host}:{}", u.port().unwrap_or(4222)),
            subject,
        });
    }
    Err(format!(
        "sink `{}` must start with file://, http://, https:// or nats://",
        redact_url(text)
    ))
}

/// A URL as it may be shown in logs and messages: scheme, host, port and path, without user
/// information, query or fragment, where credentials and tokens travel. What cannot be parsed
/// shows only its scheme.
pub fn redact_url(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(u) => {
            let hidden =
                !u.username().is_empty() || u.password().is_some() || u.query().is_some() || u.fragment().is_some();
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            let more = if hidden { "…" } else { "" };
            format!(
                "{}://{}{port}{}{more}",
                u.scheme(),
                u.host_str().unwrap_or(""),
                u.path()
            )
        }
        Err(_) => match text.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://…"),
            None => "…".into(),
        },
    }
}

impl std::fmt::Display for SinkSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SinkSettings::File { dir } => write!(f, "file://{}", dir.display()),
            SinkSettings::Http { url, .. } => f.write_str(&redact_url(url)),
            SinkSettings::Nats { server, subject } => write!(f, "nats://{server}/{subject}"),
        }
    }
}

/// `Name: value` with a valid header name and value.
pub fn parse_header(text: &str) -> Option<(String, String)> {
    let (name, value) = text.split_once(':')?;
    let (name, value) = (name.trim(), value.trim());
    http::HeaderName::from_bytes(name.as_bytes()).ok()?;
    http::HeaderValue::from_str(value).ok()?;
    Some((name.to_string(), value.to_string()))
}

/// Adds the HTTP sink's credentials from the environment.
fn with_sink_auth(sink: SinkSettings, env: Env) -> Result<SinkSettings, String> {
    let bearer = secret(env, "CARTLINK_SINK_BEARER_TOKEN")?;
    let header = match secret(env, "CARTLINK_SINK_AUTH_HEADER")? {
        // The value is a secret: the message names the variable, never its content.
        Some(h) => Some(parse_header(&h).ok_or("CARTLINK_SINK_AUTH_HEADER must be `Name: value`")?),
        None => None,
    };
    Ok(match sink {
        SinkSettings::Http { url, .. } => SinkSettings::Http {
            url,
            auth: SinkAuth { bearer, header },
        },
        other => other,
    })
}

/// A secret from `NAME`, or from the file named by `NAME_FILE`. `NAME` must be in
/// [`ENV_SECRETS`], or the unknown-name check would warn that it is not a setting.
fn secret(env: Env, name: &str) -> Result<Option<String>, String> {
    debug_assert!(ENV_SECRETS.contains(&name), "{name} missing from ENV_SECRETS");
    if let Some(v) = env(name) {
        return Ok(Some(v.trim().to_string()).filter(|v| !v.is_empty()));
    }
    let file_var = format!("{name}_FILE");
    match env(&file_var) {
        Some(path) => std::fs::read_to_string(&path)
            .map(|v| Some(v.trim().to_string()).filter(|v| !v.is_empty()))
            .map_err(|e| format!("{file_var}: cannot read `{path}`: {e}")),
        None => Ok(None),
    }
}

fn load_secrets(env: Env) -> Result<Secrets, String> {
    let (spec, demo_key) = match secret(env, "CARTLINK_SIGNING_KEYS")? {
        Some(s) => (s, false),
        None => (DEMO_SIGNING_KEYS.to_string(), true),
    };
    let keys = KeyRing::parse(&spec).map_err(|e| format!("CARTLINK_SIGNING_KEYS: {e}"))?;
    let admin_token = secret(env, "CARTLINK_ADMIN_TOKEN")?;
    if admin_token.as_ref().is_some_and(|t| t.len() < 16) {
        return Err("CARTLINK_ADMIN_TOKEN must be at least 16 characters".into());
    }
    let shopify_webhook_secrets = secret(env, "CARTLINK_SHOPIFY_WEBHOOK_SECRETS")?
        .map(|s| {
            s.split(',')
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect()
        })
        .unwrap_or_default();
    Ok(Secrets {
        keys: std::sync::Arc::new(keys),
        demo_key,
        admin_token,
        shopify_webhook_secrets,
    })
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "cartlink".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn an_override_the_config_cannot_take_is_named_and_a_section_name_is_unknown() {
        for (name, value) in [("CARTLINK_WORKERS", "-1"), ("CARTLINK_HTTP_MAX_HEADERS", "-3")] {
            let e = Config::load(Path::new("/nonexistent.toml"), false, &env_of(&[(name, value)]))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(&format!("{name}: ")), "{e}");
        }
        let unknown = unknown_env_names(
            ["CARTLINK_HTTP", "CARTLINK_HTTP_MAX_HEADERS", "CARTLINK_WORKERS"]
                .map(String::from)
                .into_iter(),
        );
        assert_eq!(unknown, ["CARTLINK_HTTP"]);
    }

    #[test]
    fn urls_are_shown_without_credentials_query_or_fragment() {
        for (url, shown) in [
            ("https://payouts.example/in", "https://payouts.example/in"),
            (
                "https://ch:S3cret@ch.example:8443/?password=S3cret&q=1",
                "https://ch.example:8443/…",
            ),
            ("https://api.example/hook?token=S3cret", "https://api.example/hook…"),
            ("https://ch:84x3/?password=S3cret", "https://…"),
            ("not a url S3cret", "…"),
        ] {
            assert_eq!(redact_url(url), shown);
        }
        let e = parse_sink("https://u:S3cret@[bad/?token=S3cret").unwrap_err();
        assert!(!e.contains("S3cret"), "{e}");
    }

    #[test]
    fn env_overrides_every_level() {
        let env = env_of(&[
            ("CARTLINK_LISTEN", "127.0.0.1:1"),
            ("CARTLINK_COOKIE_DOMAIN", "brand.example"),
            ("CARTLINK_PIPELINE_QUEUE_CAPACITY", "7"),
            ("CARTLINK_TRUSTED_PROXIES", "10.0.0.0/8, 192.168.0.0/16"),
        ]);
        let c = Config::load(Path::new("/nonexistent.toml"), false, &env).unwrap();
        assert_eq!(c.listen, "127.0.0.1:1");
        assert_eq!(c.cookie.domain, "brand.example");
        assert_eq!(c.pipeline.queue_capacity, 7);
        assert_eq!(c.trusted_proxies, vec!["10.0.0.0/8", "192.168.0.0/16"]);
        let s = c.validate(&env).unwrap();
        assert!(s.secrets.demo_key);
        assert!(s.cookie.attributes.contains("; Domain=brand.example"));
    }

    #[test]
    fn sink_credentials_come_from_the_environment_and_are_never_printed() {
        let env = env_of(&[
            ("CARTLINK_SINK", "http://127.0.0.1:8123/?query=INSERT"),
            ("CARTLINK_SINK_BEARER_TOKEN", "tok-secret-1"),
            ("CARTLINK_SINK_AUTH_HEADER", "X-ClickHouse-Key: key-secret-2"),
            ("CARTLINK_PIPELINE_HTTP_HEADERS", "X-ClickHouse-User: cartlink"),
        ]);
        let s = Config::load(Path::new("/nonexistent.toml"), false, &env)
            .unwrap()
            .validate(&env)
            .unwrap();
        let SinkSettings::Http { auth, .. } = &s.sink else {
            panic!("{:?}", s.sink)
        };
        assert_eq!(auth.bearer.as_deref(), Some("tok-secret-1"));
        assert_eq!(
            auth.header,
            Some(("X-ClickHouse-Key".to_string(), "key-secret-2".to_string()))
        );
        let printed = format!("{:?}", s.sink);
        assert!(!printed.contains("secret"), "{printed}");
        assert_eq!(s.pipeline.http_headers, vec!["X-ClickHouse-User: cartlink"]);

        let env = env_of(&[("CARTLINK_SINK_AUTH_HEADER", "no colon secret-3")]);
        let e = Config::default().validate(&env).unwrap_err().to_string();
        assert!(
            e.contains("CARTLINK_SINK_AUTH_HEADER") && !e.contains("secret-3"),
            "{e}"
        );
        let env = env_of(&[("CARTLINK_PIPELINE_NATS_RETENTION", "forever")]);
        let e = Config::load(Path::new("/nonexistent.toml"), false, &env)
            .unwrap()
            .validate(&env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nats_retention"), "{e}");
    }

    #[test]
    fn payouts_need_an_http_url_and_a_secret_from_the_environment() {
        let settings = |pairs: &[(&str, &str)]| {
            let env = env_of(pairs);
            Config::load(Path::new("/nonexistent.toml"), false, &env)
                .unwrap()
                .validate(&env)
        };
        assert!(settings(&[]).unwrap().payout.is_none(), "off without a URL");
        let s = settings(&[
            ("CARTLINK_PAYOUT_URL", "https://payouts.example/hook"),
            ("CARTLINK_PAYOUT_SECRET", "payout-secret-0123456789"),
            ("CARTLINK_PAYOUT_RETRY_BASE_MS", "20"),
            ("CARTLINK_PAYOUT_RETRY_MAX_MS", "250"),
        ])
        .unwrap();
        let p = s.payout.as_ref().unwrap();
        assert_eq!(
            (p.url.to_string().as_str(), p.secret.as_str(), p.retry_max),
            (
                "https://payouts.example/hook",
                "payout-secret-0123456789",
                Duration::from_millis(250)
            )
        );
        let printed = format!("{s:?}");
        assert!(!printed.contains("payout-secret"), "{printed}");
        for (pairs, want) in [
            (
                &[
                    ("CARTLINK_PAYOUT_URL", "ftp://payouts.example/"),
                    ("CARTLINK_PAYOUT_SECRET", "payout-secret-0123456789"),
                ][..],
                "must be http:// or https://",
            ),
            (
                &[("CARTLINK_PAYOUT_URL", "https://payouts.example/")][..],
                "CARTLINK_PAYOUT_SECRET",
            ),
            (
                &[
                    ("CARTLINK_PAYOUT_URL", "https://payouts.example/"),
                    ("CARTLINK_PAYOUT_SECRET", "short-secret"),
                ][..],
                "at least 16",
            ),
            (
                &[
                    ("CARTLINK_PAYOUT_URL", "https://user:pw-secret@payouts.example/"),
                    ("CARTLINK_PAYOUT_SECRET", "payout-secret-0123456789"),
                ][..],
                "credentials",
            ),
        ] {
            let e = settings(pairs).unwrap_err().to_string();
            assert!(e.contains(want), "{pairs:?}: {e}");
            assert!(!e.contains("secret-"), "secrets never echoed: {e}");
        }
    }

    #[test]
    fn bad_values_are_named() {
        let env = env_of(&[("CARTLINK_WORKERS", "many")]);
        let e = Config::load(Path::new("/nonexistent.toml"), false, &env).unwrap_err();
        assert!(e.to_string().contains("CARTLINK_WORKERS"), "{e}");
        let env = env_of(&[("CARTLINK_SIGNING_KEYS", "k:c2hvcnQ")]);
        let e = Config::default().validate(&env).unwrap_err().to_string();
        assert!(e.contains("at least 32"), "{e}");
        assert!(!e.contains("c2hvcnQ"), "secrets never echoed: {e}");
        for base in [
            "https://go.brand.example/base/",
            "https://go.brand.example/?x=1",
            "ftp://go.brand.example",
        ] {
            let env = env_of(&[("CARTLINK_PUBLIC_BASE_URL", base)]);
            let c = Config::load(Path::new("/nonexistent.toml"), false, &env).unwrap();
            let e = c.validate(&env).unwrap_err().to_string();
            assert!(e.contains("public_base_url"), "{base}: {e}");
        }
        let env = env_of(&[("CARTLINK_PUBLIC_BASE_URL", "https://go.brand.example")]);
        let c = Config::load(Path::new("/nonexistent.toml"), false, &env).unwrap();
        assert_eq!(
            c.validate(&env).unwrap().public_base_url.as_str(),
            "https://go.brand.example/"
        );
        // 0 is no "unlimited" here: it would shed every redirect while /healthz says ok.
        let env = env_of(&[("CARTLINK_HTTP_MAX_INFLIGHT", "0")]);
        let c = Config::load(Path::new("/nonexistent.toml"), false, &env).unwrap();
        let e = c.validate(&env).unwrap_err().to_string();
        assert!(e.contains("max_inflight must be above 0"), "{e}");
    }

    #[test]
    fn unknown_environment_names_are_found_and_known_ones_are_not() {
        let names = [
            "CARTLINK_LISTEN",
            "CARTLINK_HTTP_MAX_INFLIGHT",
            "CARTLINK_PIPELINE_QUEUE_CAPACITY",
            "CARTLINK_PAYOUT_URL",
            "CARTLINK_SIGNING_KEYS_FILE",
            "CARTLINK_ADMIN_TOKEN",
            "CARTLINK_SINK_AUTH_HEADER",
            "CARTLINK_LISTN",
            "CARTLINK_HTTP_MAX_INFLIGT",
            "PATH",
        ];
        assert_eq!(
            unknown_env_names(names.iter().map(|n| n.to_string())),
            ["CARTLINK_HTTP_MAX_INFLIGT", "CARTLINK_LISTN"]
        );
    }

    #[test]
    fn file_errors_have_a_line() {
        let dir = std::env::temp_dir().join(format!("cartlink-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:1\"\nno_such_key = 1\n").unwrap();
        let e = Config::load(&path, true, &|_| None).unwrap_err().to_string();
        assert!(e.contains("c.toml:") && e.contains("no_such_key"), "{e}");
        std::fs::write(&path, "listen = \n").unwrap();
        let e = Config::load(&path, true, &|_| None).unwrap_err().to_string();
        assert!(e.contains("c.toml:1"), "{e}");
    }
}
