//! Serving a port over TLS: accepted connections handshake on their own
//! tasks, and only finished, verified ones reach the gRPC server.

use super::{load_certs, load_key, load_roots, provider, Reloading, TlsError};
use crate::log_limit::LogLimit;
use futures_util::Stream;
use std::collections::VecDeque;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// A handshake not done by then is dropped: a client that opens a TCP
/// connection and says nothing holds a task and a socket only this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once at most; a connection past it drops the
/// oldest handshake (see `accept`).
const MAX_HANDSHAKES: usize = 256;
/// Handshakes in progress from one address at most; a connection past it
/// is closed at once.
const MAX_HANDSHAKES_PER_ADDRESS: usize = 64;

/// Whether clients present certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificates asked for.
    None,
    /// A client may present one signed by this CA (and is refused if it
    /// presents another).
    Optional(PathBuf),
    /// A client must present one signed by this CA.
    Required(PathBuf),
}

/// A port's TLS: its certificate and key, which clients it asks for
/// certificates, and (with certificates) which common names it admits.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_auth: ClientAuth,
    /// Client certificates must name one of these (empty: any the CA signed).
    pub allowed_cn: Vec<String>,
}

impl ServerTls {
    fn build(&self) -> Result<ServerConfig, TlsError> {
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = match &self.client_auth {
            ClientAuth::None => builder.with_no_client_auth(),
            ClientAuth::Optional(ca) | ClientAuth::Required(ca) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(load_roots(ca)?),
                    provider,
                );
                let verifier = if matches!(self.client_auth, ClientAuth::Optional(_)) {
                    verifier.allow_unauthenticated().build()?
                } else {
                    verifier.build()?
                };
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config =
            builder.with_single_cert(load_certs(&self.cert_file)?, load_key(&self.key_file)?)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    /// The configuration, reloaded when its files change. Fails if they
    /// do not load now.
    pub fn reloading(&self) -> Result<Arc<Reloading<ServerConfig>>, TlsError> {
        let mut files = vec![self.cert_file.clone(), self.key_file.clone()];
        if let ClientAuth::Optional(ca) | ClientAuth::Required(ca) = &self.client_auth {
            files.push(ca.clone());
        }
        let this = self.clone();
        Ok(Arc::new(Reloading::new(files, move || this.build())?))
    }
}

/// Why a connection was dropped after its handshake.
fn admitted(stream: &TlsStream<TcpStream>, allowed_cn: &[String]) -> Result<(), String> {
    if allowed_cn.is_empty() {
        return Ok(());
    }
    let (_, session) = stream.get_ref();
    let name = session
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|leaf| super::common_name(leaf));
    match name {
        Some(name) if allowed_cn.contains(&name) => Ok(()),
        Some(name) => Err(format!("certificate name {name:?} is not allowed")),
        None => Err("no certificate name to check".into()),
    }
}

/// The TLS connections of `listener`, for tonic's `serve_with_incoming`.
/// Handshake failures are logged (rate-limited, per remote address) and
/// never reach the server; the stream yields only `Ok`.
pub fn incoming(
    listener: TcpListener,
    config: Arc<Reloading<ServerConfig>>,
    allowed_cn: Vec<String>,
    port: &'static str,
) -> impl Stream<Item = Result<TlsStream<TcpStream>, std::io::Error>> {
    let (sender, receiver) = mpsc::channel(64);
    tokio::spawn(accept(listener, config, Arc::new(allowed_cn), port, sender));
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}

async fn accept(
    listener: TcpListener,
    config: Arc<Reloading<ServerConfig>>,
    allowed_cn: Arc<Vec<String>>,
    port: &'static str,
    sender: mpsc::Sender<Result<TlsStream<TcpStream>, std::io::Error>>,
) {
    // Handshakes under way, oldest first, each with a flag set once its
    // handshake is done (it may still wait to hand the connection over).
    // The loop never waits for a place: connections that never speak (an
    // attacker's, or a client's that died) would otherwise hold every place
    // for the handshake timeout while real clients wait unaccepted. When
    // all places are taken, the oldest handshake not yet done is dropped
    // for the newest; one address holds at most `MAX_HANDSHAKES_PER_ADDRESS`
    // places, so a single source cannot push out everyone else's.
    let mut pending: VecDeque<(tokio::task::JoinHandle<()>, Arc<AtomicBool>, IpAddr)> =
        VecDeque::new();
    let refusals = Arc::new(LogLimit::new(Duration::from_secs(10)));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            // The server stopped: nobody takes connections any more.
            () = sender.closed() => return,
        };
        let (tcp, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors and the like: pause, as tonic's own
                // listener does, instead of spinning.
                if refusals.admit("accept").is_some() {
                    tracing::warn!(%error, port, "accept failed");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        pending.retain(|(handshake, ..)| !handshake.is_finished());
        let from_here = pending
            .iter()
            .filter(|(_, done, ip)| *ip == remote.ip() && !done.load(Ordering::Acquire))
            .count();
        if from_here >= MAX_HANDSHAKES_PER_ADDRESS {
            if let Some(suppressed) = refusals.admit(&remote.ip().to_string()) {
                tracing::warn!(%remote, port, suppressed, "too many TLS handshakes from one address");
            }
            continue;
        }
        if pending.len() >= MAX_HANDSHAKES {
            let oldest = pending
                .iter()
                .position(|(_, done, _)| !done.load(Ordering::Acquire));
            if let Some((handshake, ..)) = oldest.and_then(|at| pending.remove(at)) {
                handshake.abort();
            }
            if let Some(suppressed) = refusals.admit("full") {
                tracing::warn!(
                    port,
                    suppressed,
                    "{MAX_HANDSHAKES} TLS handshakes under way: dropping the oldest"
                );
            }
        }
        let _ = tcp.set_nodelay(true);
        let acceptor = TlsAcceptor::from(config.current());
        let sender = sender.clone();
        let allowed_cn = allowed_cn.clone();
        let refusals = refusals.clone();
        let done = Arc::new(AtomicBool::new(false));
        let handshake_done = done.clone();
        let task = tokio::spawn(async move {
            let refused = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            {
                Ok(Ok(stream)) => match admitted(&stream, &allowed_cn) {
                    Ok(()) => {
                        handshake_done.store(true, Ordering::Release);
                        let _ = sender.send(Ok(stream)).await;
                        return;
                    }
                    Err(reason) => reason,
                },
                Ok(Err(error)) => error.to_string(),
                Err(_) => format!("no handshake within {HANDSHAKE_TIMEOUT:?}"),
            };
            if let Some(suppressed) = refusals.admit(&remote.ip().to_string()) {
                tracing::warn!(%remote, port, reason = %refused, suppressed, "TLS connection refused");
            }
        });
        pending.push_back((task, done, remote.ip()));
    }
}
