//! The HTTP sink: each batch is one `POST` of a JSON Lines body
//! (`Content-Type: application/x-ndjson`, optionally `Content-Encoding: gzip`), which is what
//! ClickHouse's HTTP interface (`INSERT … FORMAT JSONEachRow`), Vector's `http_server` source and
//! Tinybird's Events API accept as-is (see docs/pipeline.md). Success is any 2xx; everything
//! else is classified by [`super::retry::classify_status`]. Credentials come from the
//! environment only and are marked sensitive so they are never logged.
//!
//! `https://` uses rustls (ring) with the web PKI roots, plus the CAs in `http_ca_file` for a
//! collector behind a private CA. Connections are kept alive and reused between batches.

use super::batch::Batch;
use super::retry::{classify_status, ErrorKind, SinkError};
use crate::config::{parse_header, PipelineConfig, SinkAuth};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::io::Write;
use std::time::Duration;

pub struct HttpSink {
    client: HttpClient,
    uri: Uri,
    gzip: bool,
    headers: Vec<(HeaderName, HeaderValue)>,
    timeout: Duration,
}

impl HttpSink {
    pub fn new(url: &str, auth: &SinkAuth, cfg: &PipelineConfig) -> Result<HttpSink, String> {
        let shown = crate::config::redact_url(url);
        let uri: Uri = url.parse().map_err(|e| format!("sink `{shown}`: {e}"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(format!("sink `{shown}`: must be http:// or https://"));
        }
        let mut headers = Vec::new();
        let mut add = |name: &str, value: &str, sensitive: bool| -> Result<(), String> {
            let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("bad header name `{name}`"))?;
            // The value may be a secret: the error never shows it.
            let mut v = HeaderValue::from_str(value).map_err(|_| format!("bad value for header `{name}`"))?;
            v.set_sensitive(sensitive);
            headers.push((n, v));
            Ok(())
        };
        for h in &cfg.http_headers {
            let (n, v) = parse_header(h).ok_or_else(|| format!("pipeline.http_headers: `{h}` is not `Name: value`"))?;
            add(&n, &v, false)?;
        }
        if let Some(token) = &auth.bearer {
            add("authorization", &format!("Bearer {token}"), true)?;
        }
        if let Some((n, v)) = &auth.header {
            add(n, v, true)?;
        }
        let timeout = Duration::from_millis(cfg.http_timeout_ms);
        let client = client(timeout, &cfg.http_ca_file, "pipeline.http_ca_file")?;
        Ok(HttpSink {
            client,
            uri,
            gzip: cfg.http_gzip,
            headers,
            timeout,
        })
    }

    pub async fn send(&self, batch: &Batch) -> Result<(), SinkError> {
        let body = if self.gzip {
            let mut enc =
                flate2::write::GzEncoder::new(Vec::with_capacity(batch.bytes() / 4), flate2::Compression::fast());
            enc.write_all(batch.body())
                .and_then(|()| enc.finish())
                .map(Bytes::from)
                .map_err(|e| SinkError::new(ErrorKind::Io, format!("gzip: {e}")))?
        } else {
            Bytes::copy_from_slice(batch.body())
        };
        let mut req = Request::post(self.uri.clone())
            .header(http::header::CONTENT_TYPE, "application/x-ndjson")
            .body(Full::new(body))
            .map_err(|e| SinkError::new(ErrorKind::Io, e.to_string()))?;
        if self.gzip {
            req.headers_mut()
                .insert(http::header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        for (n, v) in &self.headers {
            req.headers_mut().insert(n.clone(), v.clone());
        }
        exchange(&self.client, req, self.timeout).await
    }
}

/// A keep-alive HTTP/1.1 client for `http://` and `https://` (rustls, web PKI roots plus the
/// CAs in `ca_file`, named `ca_key` in errors); also what the payout sender posts with.
pub(crate) fn client(timeout: Duration, ca_file: &str, ca_key: &str) -> Result<HttpClient, String> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    http.set_connect_timeout(Some(timeout));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config(ca_file, ca_key)?)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector))
}

pub(crate) type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Sends one request and classifies the answer ([`classify_status`]); no answer within
/// `timeout` is [`ErrorKind::Timeout`], a transport failure [`ErrorKind::Connect`].
pub(crate) async fn exchange(
    client: &HttpClient,
    req: Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<(), SinkError> {
    let exchange = async {
        // Refused, reset mid-request, closed before the answer: all transport failures.
        let resp = client
            .request(req)
            .await
            .map_err(|e| SinkError::new(ErrorKind::Connect, error_chain(&e)))?;
        let status = resp.status().as_u16();
        // Read the answer to the end so the connection goes back to the pool.
        let _ = resp.into_body().collect().await;
        match classify_status(status) {
            None => Ok(()),
            Some(kind) => Err(SinkError::new(kind, format!("HTTP {status}"))),
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(SinkError::new(
            ErrorKind::Timeout,
            format!("no answer within {timeout:?}"),
        )),
    }
}

/// rustls with the ring provider; web PKI roots plus the PEM certificates in `ca_file`.
fn tls_config(ca_file: &str, ca_key: &str) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if !ca_file.is_empty() {
        let certs = CertificateDer::pem_file_iter(ca_file)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("{ca_key} `{ca_file}`: {e}"))?;
        if certs.is_empty() {
            return Err(format!("{ca_key} `{ca_file}`: no certificate in it"));
        }
        for c in certs {
            roots.add(c).map_err(|e| format!("{ca_key} `{ca_file}`: {e}"))?;
        }
    }
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        .map_err(|e| format!("TLS: {e}"))
}

/// The error and its sources in one line (no secrets: hyper errors do not carry headers).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
