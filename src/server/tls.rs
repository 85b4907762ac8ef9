//! TLS for the optional second public listener: rustls (ring provider), ALPN `h2` then
//! `http/1.1`, and a certificate that can be replaced while serving.
//!
//! The certificate lives behind an `ArcSwap` inside the resolver; each handshake loads it once.
//! [`Tls::reload_tls`] reads the files aside, checks that the key matches the certificate, and
//! only then swaps, so a bad file on SIGHUP keeps the old certificate serving. Established
//! connections keep the session they negotiated; nothing is dropped.

use crate::config::TlsSettings;
use arc_swap::ArcSwap;
use rustls::crypto::ring as provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::TlsAcceptor;

/// Why certificate files could not be used; never includes key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: cannot read: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {message}")]
    Pem { path: String, message: String },
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

#[derive(Debug)]
struct Resolver {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The acceptor for the TLS listener and the handle that reloads its certificate.
pub struct Tls {
    resolver: Arc<Resolver>,
    acceptor: TlsAcceptor,
    cert_file: PathBuf,
    key_file: PathBuf,
    pub handshake_timeout: Duration,
}

impl Tls {
    pub fn try_new(s: &TlsSettings) -> Result<Tls, TlsError> {
        let key = load_certified_key(&s.cert_file, &s.key_file)?;
        let resolver = Arc::new(Resolver {
            current: ArcSwap::from_pointee(key),
        });
        let mut config = ServerConfig::builder_with_provider(Arc::new(provider::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Tls {
            resolver,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            cert_file: s.cert_file.clone(),
            key_file: s.key_file.clone(),
            handshake_timeout: s.handshake_timeout,
        })
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Re-reads the certificate and key; on any problem the old pair keeps serving.
    pub fn reload_tls(&self) -> Result<(), TlsError> {
        let key = load_certified_key(&self.cert_file, &self.key_file)?;
        self.resolver.current.store(Arc::new(key));
        Ok(())
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn load_certified_key(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, TlsError> {
    let pem_err = |path: &Path, message: String| TlsError::Pem {
        path: path.display().to_string(),
        message,
    };
    let certs = CertificateDer::pem_slice_iter(&read(cert_file)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(cert_file, format!("bad PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(pem_err(cert_file, "no certificate in the file".into()));
    }
    // The key's parse error is not echoed: it could quote key bytes.
    let key = PrivateKeyDer::from_pem_slice(&read(key_file)?)
        .map_err(|_| pem_err(key_file, "no usable PEM private key".into()))?;
    let signing = provider::sign::any_supported_type(&key)
        .map_err(|_| pem_err(key_file, "unsupported private key type".into()))?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match()
        .map_err(|e| pem_err(key_file, format!("key does not match the certificate: {e}")))?;
    Ok(ck)
}
