//! TLS of Ferry's ports, through rustls with the ring provider.
//!
//! - [`ServerTls`] serves a port over TLS: the client API (a client
//!   certificate optional or required), the peer port (mutual TLS
//!   required, optionally restricted to allowed common names).
//! - [`PeerConnector`] dials a peer with this node's certificate and checks
//!   the peer's against the cluster's CA.
//!
//! Certificates, keys and CAs are PEM files, read again when they change
//! ([`reload`]), so they rotate without a restart: a new connection uses
//! the new files, established ones keep the session they have. A change
//! that does not load (a half-written file, a key that does not match)
//! is logged and the previous configuration stays in use.
//!
//! The crypto provider is named wherever a configuration is built, never
//! taken from process-wide state, so linking another provider cannot
//! make a build fail at run time.

mod acceptor;
mod connector;
mod reload;

pub use acceptor::{incoming, ClientAuth, ServerTls};
pub use connector::{PeerConnector, PeerTls};
pub use reload::Reloading;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// What can go wrong loading TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no {what} in it")]
    Missing { path: PathBuf, what: &'static str },
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The process's crypto provider: ring, and only ring.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as the process-wide provider (for code that builds TLS
/// configurations without naming one). Harmless if one is installed.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The certificates of a PEM file (a chain: the leaf first).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Missing {
            path: path.to_owned(),
            what: "certificate",
        });
    }
    Ok(certs)
}

/// The private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })?
        .ok_or_else(|| TlsError::Missing {
            path: path.to_owned(),
            what: "private key",
        })
}

/// The trust anchors of a CA file.
pub fn load_roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

/// The common name of a DER certificate's subject, if it has exactly one.
/// A subject with several names none: tools disagree on which one counts
/// (Go, and so etcd, takes the last; others the first), and a name that
/// maps to a user or an allowed peer must not depend on the reader.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut names = certificate.subject().iter_common_name();
    let name = names.next()?.as_str().ok()?.to_owned();
    if names.next().is_some() {
        return None;
    }
    Some(name)
}
