//! Dialing peers over mutual TLS.

use super::{load_certs, load_key, load_roots, provider, Reloading, TlsError};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::TlsConnector;

/// The peer port's TLS: this node's certificate (presented both when it
/// serves and when it dials), and the CA that signs every member's.
#[derive(Debug, Clone)]
pub struct PeerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub trusted_ca_file: PathBuf,
    /// Peers must present one of these common names (empty: any the CA
    /// signed).
    pub allowed_cn: Vec<String>,
}

impl PeerTls {
    /// How the peer port serves: a certificate from the CA required.
    pub fn server(&self) -> super::ServerTls {
        super::ServerTls {
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            client_auth: super::ClientAuth::Required(self.trusted_ca_file.clone()),
            allowed_cn: self.allowed_cn.clone(),
        }
    }

    fn build(&self) -> Result<ClientConfig, TlsError> {
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(load_roots(&self.trusted_ca_file)?)
            .with_client_auth_cert(load_certs(&self.cert_file)?, load_key(&self.key_file)?)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    /// A connector for every peer, reloading the files when they change.
    pub fn connector(&self) -> Result<PeerConnector, TlsError> {
        let files = vec![
            self.cert_file.clone(),
            self.key_file.clone(),
            self.trusted_ca_file.clone(),
        ];
        let this = self.clone();
        Ok(PeerConnector {
            config: Arc::new(Reloading::new(files, move || this.build())?),
            allowed_cn: Arc::new(self.allowed_cn.clone()),
        })
    }
}

/// Dials `host:port` and runs the TLS handshake, checking the peer's
/// certificate against the CA and the host it was dialed by (so member
/// certificates carry their addresses as SANs), and its common name
/// against the allowed ones. A tower service, for tonic's
/// `Endpoint::connect_with_connector`.
#[derive(Clone)]
pub struct PeerConnector {
    config: Arc<Reloading<ClientConfig>>,
    allowed_cn: Arc<Vec<String>>,
}

type Connecting =
    Pin<Box<dyn Future<Output = Result<TokioIo<TlsStream<TcpStream>>, std::io::Error>> + Send>>;

impl tower_service::Service<http::Uri> for PeerConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Connecting {
        let connector = TlsConnector::from(self.config.current());
        let allowed_cn = self.allowed_cn.clone();
        Box::pin(async move {
            let invalid =
                |what: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
            let host = uri
                .host()
                .ok_or_else(|| invalid(format!("{uri}: no host")))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri
                .port_u16()
                .ok_or_else(|| invalid(format!("{uri}: no port")))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let name =
                ServerName::try_from(host.clone()).map_err(|e| invalid(format!("{host}: {e}")))?;
            let stream = connector.connect(name, tcp).await?;
            if !allowed_cn.is_empty() {
                let (_, session) = stream.get_ref();
                let name = session
                    .peer_certificates()
                    .and_then(|certs| certs.first())
                    .and_then(|leaf| super::common_name(leaf));
                if !name.as_ref().is_some_and(|n| allowed_cn.contains(n)) {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::PermissionDenied,
                        format!("peer {host}:{port} presents certificate name {name:?}, not an allowed one"),
                    ));
                }
            }
            Ok(TokioIo::new(stream))
        })
    }
}
