//! Who is calling, and whether they may: every RPC of the public API asks
//! the [`Gate`] before it does anything.
//!
//! With auth off (the replicated flag, see `ferry_replication::auth`),
//! everything is allowed. With auth on, a call must carry a token (metadata
//! `token`, from `Auth.Authenticate`) or, with `--client-cert-auth`, come
//! over a TLS connection whose client certificate's common name is the
//! user. No credential: UNAUTHENTICATED. A credential whose user may not
//! do the call: PERMISSION_DENIED. Either way nothing is done.

pub mod password;
pub mod token;

use ferry_replication::auth::{is_stale_check, Access, AccessKind, AuthState, ROOT};
use ferry_replication::types::{now_ms, Command, Response, Txn};
use ferry_replication::{Consistency, Node};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tonic::{Request, Status};

/// The role that may read the status page (besides root). It needs no
/// permissions of its own: `ferry role add status`.
pub const STATUS_ROLE: &str = "status";

/// The request metadata that carries a token (etcd's name for it).
pub const TOKEN_METADATA: &str = "token";

/// Why a call without a credential is refused while auth is on.
pub const NO_CREDENTIAL: &str =
    "auth is enabled: a call needs a token (Auth.Authenticate) or a client certificate";

/// Checks and proposals a write makes at most, when auth keeps changing
/// under it (see [`Gate::write`]).
pub const WRITE_CHECKS: usize = 3;

/// Where [`Gate::write`] proposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propose {
    /// On this member, which answers "not the leader" unless it leads
    /// (Ferry's API: its SDK finds the leader).
    Here,
    /// On the leader, forwarded there if need be (etcd's API: its clients
    /// send anything to any member).
    OnLeader,
}

/// Password checks running at once at most: argon2id costs tens of
/// milliseconds and MiBs each, and `Authenticate` is open to anyone.
const PASSWORD_CHECKS: usize = 2;
/// Logins waiting for a password check at most. Past it a login is refused
/// at once (RESOURCE_EXHAUSTED), so that a flood of wrong passwords costs
/// a bounded queue, and a client sees a clear refusal, not a hang.
const PASSWORD_WAITERS: usize = 64;

/// A hash no password matches in practice, checked for a user that does not
/// exist or has no password: every refusal then costs the same time, so the
/// time of an answer does not tell which user names exist.
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        password::hash("a decoy: no user has this password").expect("hashing a constant")
    })
}

/// What a call presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    Anonymous,
    Token(String),
    /// The common name of the verified client certificate.
    Certificate(String),
}

/// Who a call acts as, once checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// `None`: auth is off.
    pub user: Option<String>,
    pub root: bool,
}

pub struct Gate {
    node: Arc<Node>,
    client_cert_auth: bool,
    token_ttl: Duration,
    password_checks: Semaphore,
    /// Places for logins waiting for or running a check.
    password_queue: Semaphore,
}

impl Gate {
    pub fn new(node: Arc<Node>, client_cert_auth: bool, token_ttl: Duration) -> Gate {
        Gate {
            node,
            client_cert_auth,
            token_ttl,
            password_checks: Semaphore::new(PASSWORD_CHECKS),
            password_queue: Semaphore::new(PASSWORD_CHECKS + PASSWORD_WAITERS),
        }
    }

    /// What `request` presents: a token if it carries one, else (with
    /// `--client-cert-auth`) its client certificate's name.
    pub fn credential<T>(&self, request: &Request<T>) -> Credential {
        if let Some(token) = request
            .metadata()
            .get(TOKEN_METADATA)
            .and_then(|v| v.to_str().ok())
        {
            return Credential::Token(token.to_owned());
        }
        if self.client_cert_auth {
            if let Some(name) = request.peer_certs().and_then(|certs| {
                certs
                    .first()
                    .and_then(|c| ferry_replication::tls::common_name(c))
            }) {
                return Credential::Certificate(name);
            }
        }
        Credential::Anonymous
    }

    /// The user `credential` stands for under `state`; with `expiring`,
    /// an expired token stands for no one.
    fn user(
        &self,
        state: &AuthState,
        credential: &Credential,
        expiring: bool,
    ) -> Result<String, Status> {
        match credential {
            Credential::Anonymous => Err(Status::unauthenticated(NO_CREDENTIAL)),
            Credential::Certificate(name) => {
                if state.users.contains_key(name) {
                    Ok(name.clone())
                } else {
                    Err(Status::unauthenticated(format!(
                        "the client certificate names user {name:?}, who does not exist"
                    )))
                }
            }
            Credential::Token(token) => {
                let key = state
                    .token_key
                    .as_ref()
                    .ok_or_else(|| Status::unauthenticated("auth has no token key"))?;
                let claims = token::verify(key, token)
                    .map_err(|e| Status::unauthenticated(format!("invalid token: {e}")))?;
                if expiring && claims.expires_ms <= now_ms() {
                    return Err(Status::unauthenticated("the token has expired"));
                }
                match state.users.get(&claims.user) {
                    Some(user) if user.epoch == claims.epoch => Ok(claims.user),
                    _ => Err(Status::unauthenticated(
                        "the token's user was deleted or changed its password",
                    )),
                }
            }
        }
    }

    /// Who `credential` is and whether `allowed` lets them in (`refusal`
    /// says why not), under this member's auth state; with auth off,
    /// everyone is root.
    fn admit(
        &self,
        credential: &Credential,
        allowed: impl Fn(&AuthState, &str) -> bool,
        refusal: impl Fn(&str) -> String,
    ) -> Result<Principal, Status> {
        self.admit_in(&self.node.auth(), credential, true, allowed, refusal)
    }

    /// `admit` under `state` (`expiring`: see [`Gate::user`]).
    fn admit_in(
        &self,
        state: &AuthState,
        credential: &Credential,
        expiring: bool,
        allowed: impl Fn(&AuthState, &str) -> bool,
        refusal: impl Fn(&str) -> String,
    ) -> Result<Principal, Status> {
        if !state.enabled {
            return Ok(Principal {
                user: None,
                root: true,
            });
        }
        let user = self.user(state, credential, expiring)?;
        if !allowed(state, &user) {
            return Err(Status::permission_denied(refusal(&user)));
        }
        Ok(Principal {
            root: state.is_root(&user),
            user: Some(user),
        })
    }

    /// Whether the caller presenting `credential` may do `access`.
    pub fn check(&self, credential: &Credential, access: &Access) -> Result<Principal, Status> {
        self.check_in(&self.node.auth(), credential, true, access)
    }

    /// [`Gate::check`] for what a call admitted by it goes on doing (an
    /// etcd watch): its token's expiry does not end it, since etcd's
    /// clients renew a token only for new calls and etcd checks a watch's
    /// token only when it is created; a deleted user, a changed password
    /// or a lost permission still do.
    pub fn check_continuing(
        &self,
        credential: &Credential,
        access: &Access,
    ) -> Result<Principal, Status> {
        self.check_in(&self.node.auth(), credential, false, access)
    }

    /// `check` under `state` (`expiring`: see [`Gate::user`]).
    fn check_in(
        &self,
        state: &AuthState,
        credential: &Credential,
        expiring: bool,
        access: &Access,
    ) -> Result<Principal, Status> {
        self.admit_in(
            state,
            credential,
            expiring,
            |state, user| state.allows(user, access),
            |user| match access {
                Access::Root => format!("only {ROOT} may do this; {user:?} may not"),
                Access::Keys { kind, start, end } => format!(
                    "user {user:?} has no {kind:?} permission on {}",
                    describe(start, end.as_deref())
                ),
                Access::Any => format!("user {user:?} may not call"),
            },
        )
    }

    /// Whether the caller presenting `credential` may read every one of
    /// `keys`: a lease's attached keys, whose names a user who may not
    /// read them must not learn (etcd checks the same for `keys`).
    pub fn check_readable(&self, credential: &Credential, keys: &[Vec<u8>]) -> Result<(), Status> {
        let state = self.node.auth();
        for key in keys {
            self.check_in(
                &state,
                credential,
                true,
                &Access::key(AccessKind::Read, key),
            )?;
        }
        Ok(())
    }

    /// `check` for a read, and again once `read` is done unless it may be
    /// stale.
    ///
    /// The first check judges by the auth state this member has applied,
    /// which may lag the leader's: right after an auth change commits, a
    /// lagging follower would still use the old rules. A read that is not
    /// stale waits until this member has applied everything committed
    /// before it began, so the second check sees every such change (etcd,
    /// too, checks permissions after a read's wait).
    pub async fn check_read<T>(
        &self,
        credential: &Credential,
        access: &Access,
        consistency: Consistency,
        read: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        self.check(credential, access)?;
        let value = read.await?;
        if consistency != Consistency::Stale {
            self.check(credential, access)?;
        }
        Ok(value)
    }

    /// Writes `txn` if the caller presenting `credential` may do every one
    /// of `accesses`, proposing it `how`; `status` says what a failure of
    /// the node is to the caller.
    ///
    /// The check judges by the auth state this member has applied, which
    /// may lag the one the write is applied in (a follower's lags the
    /// leader's; even a leader applies a committed auth change a moment
    /// after it commits). So the transaction carries the auth revision it
    /// was checked under, and apply refuses it, changing nothing, if auth
    /// changed since (etcd refuses such a request likewise, as "revision
    /// of auth store is old"). Then this member catches up with the
    /// leader, checks again under the newer state and proposes again, up to
    /// [`WRITE_CHECKS`] times in all.
    pub async fn write(
        &self,
        credential: &Credential,
        accesses: &[Access],
        txn: Txn,
        how: Propose,
        status: impl Fn(ferry_replication::Error) -> Status,
    ) -> Result<Response, Status> {
        let mut checks = 0;
        loop {
            let state = self.node.auth();
            // A transaction that touches no key still needs a user.
            for access in accesses
                .iter()
                .chain(accesses.is_empty().then_some(&Access::Any))
            {
                self.check_in(&state, credential, true, access)?;
            }
            checks += 1;
            let command = Command::Txn(Txn {
                auth_revision: Some(state.revision),
                ..txn.clone()
            });
            let written = match how {
                Propose::Here => self.node.txn(command).await,
                Propose::OnLeader => self.node.txn_anywhere(command).await,
            };
            match written {
                Err(ferry_replication::Error::Rejected(reason))
                    if is_stale_check(&reason) && checks < WRITE_CHECKS =>
                {
                    // Boxed: rare, and inline it would make every write's
                    // future larger by its size.
                    Box::pin(self.node.catch_up()).await.map_err(&status)?;
                }
                written => return written.map_err(status),
            }
        }
    }

    /// Whether the caller presenting `credential` may read the status page:
    /// root, or a user with the role [`STATUS_ROLE`].
    pub fn check_status(&self, credential: &Credential) -> Result<Principal, Status> {
        self.admit(
            credential,
            |state, user| {
                state.is_root(user)
                    || state
                        .users
                        .get(user)
                        .is_some_and(|u| u.roles.contains(STATUS_ROLE))
            },
            |user| {
                format!(
                    "the status page is for {ROOT} and users with the role {STATUS_ROLE:?}; {user:?} is neither"
                )
            },
        )
    }

    /// `check` of the caller of `request`.
    pub fn authorize<T>(&self, request: &Request<T>, access: &Access) -> Result<Principal, Status> {
        self.check(&self.credential(request), access)
    }

    /// `authorize`, then again once this member has caught up with the
    /// leader: for the rare calls that must judge by every auth change
    /// committed before them (auth changes, reads of the auth state),
    /// where a follower a step behind, or a leader that has not applied a
    /// revoke it committed, would judge by an older state. The first check
    /// refuses the obvious cases without a round trip; `status` says what
    /// a failure of the catch-up is to the caller.
    pub async fn authorize_caught_up<T>(
        &self,
        request: &Request<T>,
        access: &Access,
        status: impl Fn(ferry_replication::Error) -> Status,
    ) -> Result<Principal, Status> {
        self.authorize(request, access)?;
        self.node.catch_up().await.map_err(status)?;
        self.authorize(request, access)
    }

    /// A token for `name` if `password` is theirs.
    pub async fn authenticate(
        &self,
        name: &str,
        password: &str,
    ) -> Result<(String, Duration), Status> {
        let state = self.node.auth();
        if !state.enabled {
            return Err(Status::failed_precondition("auth is not enabled"));
        }
        let refused = || Status::unauthenticated("wrong user name or password");
        let hash = state.users.get(name).and_then(|u| u.password_hash.clone());
        let _queued = self.password_queue.try_acquire().map_err(|_| {
            Status::resource_exhausted("too many logins in progress on this member; retry later")
        })?;
        let _place = self
            .password_checks
            .acquire()
            .await
            .map_err(|_| Status::unavailable("stopping"))?;
        let password = password.to_owned();
        let known = hash.is_some();
        let matches = tokio::task::spawn_blocking(move || {
            let checked = password::verify(&password, hash.as_deref().unwrap_or(decoy_hash()));
            checked && known
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        if !matches {
            return Err(refused());
        }
        let (Some(key), Some(user)) = (state.token_key, state.users.get(name)) else {
            return Err(refused());
        };
        if name.len() > token::MAX_USER_BYTES {
            // Only an earlier release allowed such a name.
            return Err(Status::unauthenticated(format!(
                "a user name longer than {} bytes cannot hold a token; rename the user",
                token::MAX_USER_BYTES
            )));
        }
        let claims = token::Claims {
            user: name.to_owned(),
            epoch: user.epoch,
            expires_ms: now_ms() + self.token_ttl.as_millis() as u64,
        };
        Ok((token::issue(&key, &claims), self.token_ttl))
    }
}

/// A key range for messages.
fn describe(start: &[u8], end: Option<&[u8]>) -> String {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match end {
        Some(end) if end == [start, &[0]].concat() => format!("key {:?}", text(start)),
        Some(end) => format!("keys [{:?}, {:?})", text(start), text(end)),
        None => format!("keys from {:?} on", text(start)),
    }
}
