//! How the SDK proves who it is: TLS (the server's CA, and optionally a
//! client certificate) and a user's password, traded for a token that every
//! call carries and that the client renews before it expires.

use crate::error::{Error, Result};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Request, Status};

/// The metadata a call's token travels in (etcd's name for it).
pub const TOKEN_METADATA: &str = "token";

/// TLS towards the cluster: the CA that signed the members' certificates
/// and, for servers started with `--client-cert-auth`, this client's own.
#[derive(Clone)]
pub struct TlsOptions {
    /// PEM of the CA certificate(s) the members' certificates chain to.
    pub ca_pem: Vec<u8>,
    /// PEM of this client's certificate and of its private key.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name to check the members' certificates against, when the
    /// addresses the client dials are not in them.
    pub domain: Option<String>,
}

impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsOptions")
            .field("client_certificate", &self.identity.is_some())
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

impl TlsOptions {
    /// From PEM files: the CA (`--cacert`), and optionally this client's
    /// certificate and key (`--cert`, `--key`).
    pub fn from_files(ca: &Path, cert_and_key: Option<(&Path, &Path)>) -> Result<TlsOptions> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| Error::Endpoint(format!("{}: {e}", path.display())))
        };
        Ok(TlsOptions {
            ca_pem: read(ca)?,
            identity: match cert_and_key {
                Some((cert, key)) => Some((read(cert)?, read(key)?)),
                None => None,
            },
            domain: None,
        })
    }

    pub(crate) fn config(&self, host: &str) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name(self.domain.clone().unwrap_or_else(|| host.to_owned()));
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        config
    }
}

/// A user and password, traded for a token at connect and when the token
/// nears its expiry.
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// The token a client holds, shared by its connections.
#[derive(Debug, Default)]
pub(crate) struct TokenSlot {
    token: Mutex<Option<Held>>,
}

#[derive(Debug, Clone)]
struct Held {
    /// `None`: the cluster needs no token (auth is off).
    value: Option<MetadataValue<tonic::metadata::Ascii>>,
    renew_at: Instant,
}

impl TokenSlot {
    pub(crate) fn set(&self, token: &str, ttl: Duration) -> Result<()> {
        let value = token
            .parse()
            .map_err(|_| Error::Endpoint("the server sent a token that is not ASCII".into()))?;
        // Renewed at two thirds of its life: calls never carry one about
        // to expire. (The TTL is the server's word: bounded before the
        // arithmetic, which would overflow on a huge one.)
        let life = ttl.min(Duration::from_secs(365 * 24 * 3600));
        let renew_at = Instant::now() + life * 2 / 3;
        *self.lock() = Some(Held {
            value: Some(value),
            renew_at,
        });
        Ok(())
    }

    /// The cluster has auth off: no token until `recheck` has passed.
    pub(crate) fn set_unneeded(&self, recheck: Duration) {
        *self.lock() = Some(Held {
            value: None,
            renew_at: Instant::now() + recheck,
        });
    }

    pub(crate) fn clear(&self) {
        *self.lock() = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Held>> {
        // Nothing can panic while it is held.
        self.token
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether there is no token, or it should be renewed.
    pub(crate) fn stale(&self) -> bool {
        self.lock()
            .as_ref()
            .is_none_or(|held| Instant::now() >= held.renew_at)
    }

    fn value(&self) -> Option<MetadataValue<tonic::metadata::Ascii>> {
        self.lock().as_ref().and_then(|held| held.value.clone())
    }
}

/// Adds the client's current token to every call.
#[derive(Clone, Debug)]
pub struct TokenInterceptor {
    slot: Arc<TokenSlot>,
}

impl Interceptor for TokenInterceptor {
    fn call(&mut self, mut request: Request<()>) -> std::result::Result<Request<()>, Status> {
        if let Some(token) = self.slot.value() {
            request.metadata_mut().insert(TOKEN_METADATA, token);
        }
        Ok(request)
    }
}

/// A channel to one member that carries the client's token: what the
/// generated stubs (`pb::*_client`) take, for the API's calls this crate
/// has no method for (see [`crate::Client::call_raw`]).
pub type AuthChannel = InterceptedService<Channel, TokenInterceptor>;

pub(crate) fn intercepted(channel: Channel, slot: &Arc<TokenSlot>) -> AuthChannel {
    InterceptedService::new(channel, TokenInterceptor { slot: slot.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_ttl_from_the_server_is_bounded_not_overflowed() {
        let slot = TokenSlot::default();
        slot.set("token", Duration::from_secs(u64::MAX)).unwrap();
        assert!(!slot.stale());
    }
}
