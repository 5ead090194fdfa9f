//! The client: endpoints, leader tracking, retries, exactly-once numbering.

use crate::batch::{Batcher, MAX_BATCHED_CALL_BYTES};
use crate::credentials::{intercepted, AuthChannel, Credentials, TlsOptions, TokenSlot};
use crate::error::{Error, Result};
use crate::pb::{
    self, batch_call, batch_reply, cluster_client::ClusterClient, kv_client::KvClient, Consistency,
    GetRequest, KeyValue, RangeRequest, RequestId, Staleness,
};
use crate::status::status_leader;
use crate::txn::{Txn, TxnResult};
use crate::watch::WatchStream;
use rand::Rng;
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tonic::transport::Endpoint;
use tonic::{Code, Status};

/// Tuning of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Deadline of one call, retries included.
    pub call_timeout: Duration,
    /// Deadline of one connection attempt.
    pub connect_timeout: Duration,
    /// Deadline of one attempt on one member, so that a member that hangs
    /// (frozen, partitioned) costs this much and not the whole call.
    pub attempt_timeout: Duration,
    /// First pause between retries; doubled each time, with jitter.
    pub backoff_initial: Duration,
    /// Longest pause between retries.
    pub backoff_max: Duration,
    /// Writes of this client in flight at once at most (the cluster keeps
    /// an answer per write in flight for exactly-once retries).
    pub max_in_flight_writes: usize,
    /// TLS towards the members (`None`: plain TCP, for servers started
    /// without certificates).
    pub tls: Option<TlsOptions>,
    /// A user and password, for clusters with auth enabled: traded for a
    /// token at connect, renewed before it expires and after the server
    /// refuses it. With neither these nor a client certificate, a cluster
    /// with auth enabled refuses every call ([`Error::Unauthenticated`]).
    pub credentials: Option<Credentials>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            call_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(1),
            attempt_timeout: Duration::from_secs(3),
            // An election ends a few hundred ms after a leader dies; a
            // long pause would add most of a pause to the recovery time.
            // Followers answer a misdirected call at once and cheaply, so
            // retrying every 50 ms at most (etcd's client: every 25 ms) costs
            // a member little and finds the new leader within 50 ms.
            backoff_initial: Duration::from_millis(5),
            backoff_max: Duration::from_millis(50),
            max_in_flight_writes: 256,
            tls: None,
            credentials: None,
        }
    }
}

/// A handle to a Ferry cluster; cheap to clone and share between tasks.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) options: ClientOptions,
    pub(crate) endpoints: Mutex<Vec<String>>,
    next: AtomicUsize,
    connections: Mutex<HashMap<String, Connection>>,
    leader: Mutex<Option<String>>,
    client_id: u64,
    sequences: Mutex<Sequences>,
    /// Woken whenever a write finishes, for writers waiting on the window.
    window: tokio::sync::Notify,
    in_flight: Semaphore,
    /// The token every call carries (with credentials).
    token: Arc<TokenSlot>,
    /// Held while a token is fetched, so that calls finding it stale at
    /// once fetch one, not one each (a password check costs the server
    /// tens of milliseconds).
    renewing: tokio::sync::Mutex<()>,
    /// Bumped with every new token: a batch stream carries the token it
    /// was opened with, so connections start a new one.
    token_generation: AtomicU64,
    /// Contender keys being withdrawn (see `recipe::withdraw`), each with
    /// what tells when it is done: a contender joining with the same key
    /// waits, or the withdrawal would delete the key it joined with.
    pub(crate) withdrawals: Mutex<HashMap<Vec<u8>, tokio::sync::watch::Receiver<bool>>>,
    /// Contender keys whose join is on its way (see `recipe::contend`):
    /// one join of a key at a time.
    pub(crate) joining: Mutex<std::collections::HashSet<Vec<u8>>>,
    /// The highest revision a recipe's join was answered at: a key created
    /// at or before it is not the key of a join sent after (see
    /// `recipe::withdraw`).
    pub(crate) joins_answered: AtomicU64,
}

/// A new write's sequence stays within this distance of the oldest write
/// still waiting for an answer. The cluster keeps the answers from that
/// oldest one on (at most 1024 per client), so a write stuck in retries
/// never has its answer pushed out by later ones, however many complete
/// meanwhile.
const ANSWER_WINDOW: u64 = 512;

struct Sequences {
    next: u64,
    outstanding: BTreeSet<u64>,
}

/// A write number in `outstanding`, taken out again when dropped: when its
/// write is answered, fails, or its future is dropped.
struct SequenceMark<'a> {
    inner: &'a Inner,
    request: RequestId,
}

impl Drop for SequenceMark<'_> {
    fn drop(&mut self) {
        // Not `expect`: a panic while the lock was held must not turn
        // into a second panic in this drop.
        let removed = self
            .inner
            .sequences
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .outstanding
            .remove(&self.request.sequence);
        debug_assert!(removed, "sequence {} released twice", self.request.sequence);
        self.inner.window.notify_waiters();
    }
}

/// One page of a range read.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub kvs: Vec<KeyValue>,
    /// Pass to [`Client::range_after`] to read the next page; `None` at the end.
    pub continuation: Option<Vec<u8>>,
    /// Keys counted (for count-only reads; otherwise the page's length).
    pub count: u64,
    /// The revision the page was read at.
    pub revision: u64,
}

/// A stale read's value and how stale it may be.
#[derive(Debug, Clone, PartialEq)]
pub struct StaleRead<T> {
    pub value: T,
    pub revision: u64,
    pub staleness: Option<Staleness>,
}

/// Reads served by any member without a quorum round: see [`Client::stale`].
pub struct Stale<'a> {
    client: &'a Client,
}

impl Client {
    /// Connects to a cluster through any of its members' client addresses
    /// (`host:port`), with default options.
    ///
    /// ```no_run
    /// # async fn demo() -> ferry_client::Result<()> {
    /// let client = ferry_client::Client::connect(["127.0.0.1:7400", "127.0.0.1:7410"]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect<I, S>(endpoints: I) -> Result<Client>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::connect_with(endpoints, ClientOptions::default()).await
    }

    /// [`Client::connect`] with options. Fails if no member answers within
    /// the call timeout.
    pub async fn connect_with<I, S>(endpoints: I, options: ClientOptions) -> Result<Client>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let endpoints: Vec<String> = endpoints.into_iter().map(Into::into).collect();
        if endpoints.is_empty() {
            return Err(Error::Endpoint("no endpoint given".into()));
        }
        for endpoint in &endpoints {
            endpoint_of(endpoint, options.tls.as_ref())?;
        }
        let client = Client {
            inner: Arc::new(Inner {
                in_flight: Semaphore::new(options.max_in_flight_writes.max(1)),
                options,
                endpoints: Mutex::new(endpoints),
                next: AtomicUsize::new(0),
                connections: Mutex::new(HashMap::new()),
                leader: Mutex::new(None),
                client_id: rand::rng().random(),
                sequences: Mutex::new(Sequences {
                    next: 1,
                    outstanding: BTreeSet::new(),
                }),
                window: tokio::sync::Notify::new(),
                token: Arc::new(TokenSlot::default()),
                renewing: tokio::sync::Mutex::new(()),
                token_generation: AtomicU64::new(0),
                withdrawals: Mutex::new(HashMap::new()),
                joining: Mutex::new(Default::default()),
                joins_answered: AtomicU64::new(0),
            }),
        };
        client.refresh_members().await?;
        Ok(client)
    }

    /// This client's id (random), under which its writes are numbered.
    pub fn id(&self) -> u64 {
        self.inner.client_id
    }

    /// The leader's address as last learned, if any.
    pub fn leader(&self) -> Option<String> {
        self.inner.leader.lock().expect("lock").clone()
    }

    /// Asks the cluster for its members and leader and remembers them.
    pub async fn refresh_members(&self) -> Result<pb::StatusResponse> {
        let status = self
            .call(false, |connection| async move {
                ClusterClient::new(connection.channel)
                    .status(pb::StatusRequest {})
                    .await
                    .map(tonic::Response::into_inner)
            })
            .await?;
        {
            let mut endpoints = self.inner.endpoints.lock().expect("lock");
            for member in &status.members {
                if !member.client_addr.is_empty() && !endpoints.contains(&member.client_addr) {
                    endpoints.push(member.client_addr.clone());
                }
            }
        }
        let leader = status
            .members
            .iter()
            .find(|m| m.id == status.leader_id && !m.client_addr.is_empty())
            .map(|m| m.client_addr.clone());
        if leader.is_some() {
            *self.inner.leader.lock().expect("lock") = leader;
        }
        Ok(status)
    }

    /// A channel to the current leader that carries this client's token
    /// (fetched first if needed), for the API's calls this crate has no
    /// method for, through the generated stubs ([`crate::pb`]). A stream
    /// opened on it is checked once, when it opens.
    ///
    /// ```no_run
    /// # async fn demo(client: ferry_client::Client) -> ferry_client::Result<()> {
    /// use ferry_client::pb::maintenance_client::MaintenanceClient;
    /// let mut maintenance = MaintenanceClient::new(client.leader_channel().await?);
    /// # Ok(()) }
    /// ```
    pub async fn leader_channel(&self) -> Result<AuthChannel> {
        self.refresh_members().await?;
        let leader = self.leader().ok_or_else(|| Error::DeadlineExceeded {
            deadline: self.inner.options.call_timeout,
            last: "no leader known".into(),
        })?;
        self.member_channel(&leader).await
    }

    /// [`Client::leader_channel`] to the member at `addr` (its client
    /// address), whatever its role.
    pub async fn member_channel(&self, addr: &str) -> Result<AuthChannel> {
        let channel = self.channel(addr)?;
        self.ensure_token(&channel)
            .await
            .map_err(|status| match status.code() {
                Code::Unauthenticated => Error::Unauthenticated(status.message().into()),
                code => Error::Server {
                    code,
                    message: status.message().into(),
                },
            })?;
        Ok(channel)
    }

    /// A channel to the member at `addr` that carries this client's token.
    /// Streams opened on it keep the token they opened with: call
    /// [`Client::ensure_token`] first.
    pub(crate) fn channel(&self, addr: &str) -> Result<AuthChannel> {
        Ok(self.connection(addr)?.channel)
    }

    fn connection(&self, addr: &str) -> Result<Connection> {
        let generation = self.inner.token_generation.load(Ordering::Acquire);
        let mut connections = self.inner.connections.lock().expect("lock");
        if let Some(connection) = connections.get_mut(addr) {
            // A batcher's task ends with the runtime that started it, and
            // so does the channel's: start both anew on this one.
            if !connection.batcher.ended() {
                if connection.generation != generation {
                    // Its stream carries an older token: later calls go on
                    // a new stream (the old one ends with its last call).
                    connection.batcher = Arc::new(Batcher::start(connection.channel.clone()));
                    connection.generation = generation;
                }
                return Ok(connection.clone());
            }
        }
        let channel = endpoint_of(addr, self.inner.options.tls.as_ref())?
            .connect_timeout(self.inner.options.connect_timeout)
            .tcp_nodelay(true)
            // A member that loses power or is cut off sends no FIN: a
            // connection waiting on it (a watch, the batch stream) hears
            // nothing, forever, unless it asks. HTTP/2 pings, also while
            // idle, find it gone within an interval and a timeout.
            .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .connect_lazy();
        let channel = intercepted(channel, &self.inner.token);
        let connection = Connection {
            batcher: Arc::new(Batcher::start(channel.clone())),
            channel,
            attempt: self.inner.options.attempt_timeout,
            generation,
        };
        connections.insert(addr.to_owned(), connection.clone());
        Ok(connection)
    }

    /// Fetches a token through `channel` if this client has credentials
    /// and holds no fresh token. Fails with `UNAUTHENTICATED` if the
    /// cluster refuses the user and password; with any other status the
    /// caller retries as for a failed call.
    ///
    /// Cancel-safe: dropped while waiting, it held only the renewal lock.
    pub(crate) async fn ensure_token(
        &self,
        channel: &AuthChannel,
    ) -> std::result::Result<(), Status> {
        let Some(credentials) = &self.inner.options.credentials else {
            return Ok(());
        };
        if !self.inner.token.stale() {
            return Ok(());
        }
        let _renewing = self.inner.renewing.lock().await;
        if !self.inner.token.stale() {
            // Another call fetched one meanwhile.
            return Ok(());
        }
        let answer = pb::auth_client::AuthClient::new(channel.clone())
            .authenticate(pb::AuthenticateRequest {
                name: credentials.user.clone(),
                password: credentials.password.clone(),
            })
            .await;
        match answer {
            Ok(response) => {
                let response = response.into_inner();
                self.inner
                    .token
                    .set(&response.token, Duration::from_secs(response.ttl_seconds))
                    .map_err(|e| Status::internal(e.to_string()))?;
                self.inner.token_generation.fetch_add(1, Ordering::AcqRel);
                Ok(())
            }
            Err(status) if status.code() == Code::FailedPrecondition => {
                // Auth is off: calls need no token. Asked again after a
                // refusal (auth was enabled since) or after a while.
                self.inner.token.set_unneeded(Duration::from_secs(60));
                Ok(())
            }
            // The member's login queue is full (many clients logging in at
            // once, after a failover say): back off and try again, as for
            // a member that cannot answer.
            Err(status) if status.code() == Code::ResourceExhausted => Err(Status::unavailable(
                format!("logging in: {}", status.message()),
            )),
            Err(status) => Err(status),
        }
    }

    /// Forgets the token, so the next call fetches a new one.
    pub(crate) fn drop_token(&self) {
        self.inner.token.clear();
    }

    fn next_endpoint(&self) -> String {
        let endpoints = self.inner.endpoints.lock().expect("lock");
        let i = self.inner.next.fetch_add(1, Ordering::Relaxed);
        endpoints[i % endpoints.len()].clone()
    }

    /// Runs one RPC with retries: to the leader if `to_leader` (as far as it
    /// is known; a follower's not-leader answer names it), else to any member.
    pub(crate) async fn call<T, F, Fut>(&self, to_leader: bool, rpc: F) -> Result<T>
    where
        F: FnMut(Connection) -> Fut,
        Fut: Future<Output = std::result::Result<T, Status>>,
    {
        let deadline = Instant::now() + self.inner.options.call_timeout;
        self.call_until(deadline, to_leader, rpc).await
    }

    /// [`Client::call`] within a deadline already running (a write's
    /// starts before it waits for a place in the window).
    ///
    /// Cancel-safe: it holds nothing across an await but the attempt's
    /// future, whose drop resets a unary call's HTTP/2 stream or cancels
    /// a batched call (see [`Batcher::call`]).
    async fn call_until<T, F, Fut>(
        &self,
        deadline: Instant,
        to_leader: bool,
        mut rpc: F,
    ) -> Result<T>
    where
        F: FnMut(Connection) -> Fut,
        Fut: Future<Output = std::result::Result<T, Status>>,
    {
        let options = &self.inner.options;
        let mut backoff = options.backoff_initial;
        let mut redirects = 0;
        let mut last = String::from("no member tried");
        // A refused token is replaced once per call; a second refusal is
        // the answer.
        let mut token_refused = false;
        loop {
            let known_leader = if to_leader { self.leader() } else { None };
            let target = known_leader.clone().unwrap_or_else(|| self.next_endpoint());
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(Error::DeadlineExceeded {
                    deadline: options.call_timeout,
                    last,
                });
            }
            let attempt = remaining.min(options.attempt_timeout);
            let connection = self.connection(&target)?;
            let run = async {
                self.ensure_token(&connection.channel)
                    .await
                    .map_err(|status| {
                        if status.code() == Code::Unauthenticated {
                            // The user and password were refused: final.
                            Err(Error::Unauthenticated(status.message().into()))
                        } else {
                            Ok(status)
                        }
                    })?;
                // The connection again: a new token means a new batch stream.
                let connection = Connection {
                    attempt,
                    ..self.connection(&target).map_err(Err)?
                };
                rpc(connection).await.map_err(Ok)
            };
            let status = match tokio::time::timeout(attempt, run).await {
                Ok(Ok(response)) => return Ok(response),
                Ok(Err(Ok(status))) => status,
                Ok(Err(Err(error))) => return Err(error),
                Err(_) => Status::unavailable(format!("no answer within {attempt:?}")),
            };
            last = format!("{target}: {:?}: {}", status.code(), status.message());
            match status.code() {
                Code::FailedPrecondition => {
                    // Not the leader: go where it points, at once the first
                    // few times; with no leader known (an election), back off.
                    match status_leader(&status) {
                        Some(leader) if leader != target && redirects < 3 => {
                            redirects += 1;
                            let mut endpoints = self.inner.endpoints.lock().expect("lock");
                            if !endpoints.contains(&leader) {
                                endpoints.push(leader.clone());
                            }
                            *self.inner.leader.lock().expect("lock") = Some(leader);
                            continue;
                        }
                        _ => *self.inner.leader.lock().expect("lock") = None,
                    }
                }
                Code::Unavailable
                | Code::Unknown
                | Code::Cancelled
                | Code::Aborted
                | Code::DeadlineExceeded
                | Code::Internal => {
                    if known_leader.as_deref() == Some(target.as_str()) {
                        *self.inner.leader.lock().expect("lock") = None;
                    }
                }
                Code::Unauthenticated => {
                    if self.inner.options.credentials.is_some() && !token_refused {
                        // Expired, or the user's password changed: fetch
                        // a new token and try again at once.
                        token_refused = true;
                        self.drop_token();
                        continue;
                    }
                    return Err(Error::Unauthenticated(status.message().into()));
                }
                Code::PermissionDenied => {
                    return Err(Error::PermissionDenied(status.message().into()))
                }
                Code::InvalidArgument => {
                    return Err(Error::InvalidArgument(status.message().into()))
                }
                Code::ResourceExhausted => {
                    return Err(Error::ResourceExhausted(status.message().into()))
                }
                Code::OutOfRange => return Err(crate::status::out_of_range(&status)),
                code => {
                    return Err(Error::Server {
                        code,
                        message: status.message().into(),
                    })
                }
            }
            redirects = 0;
            let jittered = backoff.mul_f64(rand::rng().random_range(0.5..1.5));
            let pause = jittered.min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(options.backoff_max);
        }
    }

    /// Runs a write with the next request number, retried (same number)
    /// until answered or the deadline passes.
    ///
    /// The deadline covers all of its waiting: for one of
    /// `max_in_flight_writes`, for room in the answer window, and for the
    /// attempts. Cancel-safe: the permit and the sequence mark are guards,
    /// released when the future is dropped at any await point. A dropped
    /// write's number is never sent again, and the writes after it tell
    /// the cluster so (`first_incomplete`), so a copy of it still on its
    /// way is then refused rather than applied: it applies at most once.
    pub(crate) async fn write<T, F, Fut>(&self, mut rpc: F) -> Result<T>
    where
        F: FnMut(Connection, RequestId) -> Fut,
        Fut: Future<Output = std::result::Result<T, Status>>,
    {
        let call_timeout = self.inner.options.call_timeout;
        let deadline = Instant::now() + call_timeout;
        let waited = |what: &str| Error::DeadlineExceeded {
            deadline: call_timeout,
            last: format!("still waiting for {what}"),
        };
        let _permit = tokio::time::timeout_at(deadline, self.inner.in_flight.acquire())
            .await
            .map_err(|_| waited("one of max_in_flight_writes"))?
            .expect("never closed");
        let mark = tokio::time::timeout_at(deadline, self.next_sequence())
            .await
            .map_err(|_| waited("room in the answer window"))?;
        let request = mark.request;
        self.call_until(deadline, true, |connection| rpc(connection, request))
            .await
        // `mark` drops here: answered or given up, this number is never
        // sent again.
    }

    /// Takes the next write number once it is within [`ANSWER_WINDOW`] of
    /// the oldest write still outstanding.
    async fn next_sequence(&self) -> SequenceMark<'_> {
        loop {
            // Registered before the check, so a write finishing in between
            // still wakes this one.
            let finished = self.inner.window.notified();
            {
                let mut sequences = self.inner.sequences.lock().expect("lock");
                let oldest = sequences
                    .outstanding
                    .first()
                    .copied()
                    .unwrap_or(sequences.next);
                if sequences.next - oldest < ANSWER_WINDOW {
                    let sequence = sequences.next;
                    sequences.next += 1;
                    let fresh = sequences.outstanding.insert(sequence);
                    debug_assert!(fresh, "sequence {sequence} handed out twice");
                    return SequenceMark {
                        inner: &self.inner,
                        request: RequestId {
                            client_id: self.inner.client_id,
                            sequence,
                            first_incomplete: oldest.min(sequence),
                        },
                    };
                }
            }
            finished.await;
        }
    }

    /// Sets `key` to `value`; returns the revision that wrote it.
    ///
    /// Cancellation: dropping the future (a `timeout`, a `select!`) at any
    /// point releases everything the call held. Whether the write happened
    /// is then unknown: it applies at most once, never twice, because its
    /// number is never sent again. Read the key to find out.
    ///
    /// ```no_run
    /// # async fn demo(client: ferry_client::Client) -> ferry_client::Result<()> {
    /// let revision = client.put("job/42", "running").await?;
    /// # Ok(()) }
    /// ```
    pub async fn put(&self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Result<u64> {
        Ok(self
            .put_request(key.into(), value.into(), false, 0)
            .await?
            .0)
    }

    /// Sets `key` to `value`, attached to lease `lease` (see
    /// [`Client::lease_grant`]): the key is deleted when the lease expires
    /// or is revoked. A lease that does not exist fails the put with
    /// [`Error::LeaseNotFound`] and changes nothing. Cancellation: as
    /// [`Client::put`].
    ///
    /// ```no_run
    /// # async fn demo(client: ferry_client::Client, lease: u64) -> ferry_client::Result<()> {
    /// client.put_with_lease("workers/w1", "alive", lease).await?;
    /// # Ok(()) }
    /// ```
    pub async fn put_with_lease(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        lease: u64,
    ) -> Result<u64> {
        self.put_request(key.into(), value.into(), false, lease)
            .await
            .map(|(revision, _)| revision)
            .map_err(crate::lease::not_found(lease))
    }

    /// Sets `key` to `value`; returns the revision that wrote it and the
    /// key's previous value, if it had one.
    ///
    /// Cancellation: dropping the future (a `timeout`, a `select!`) at any
    /// point releases everything the call held. Whether the write happened
    /// is then unknown: it applies at most once, never twice, because its
    /// number is never sent again. Read the key to find out.
    ///
    /// ```no_run
    /// # async fn demo(client: ferry_client::Client) -> ferry_client::Result<()> {
    /// let (revision, previous) = client.replace("job/42", "running").await?;
    /// # Ok(()) }
    /// ```
    pub async fn replace(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<(u64, Option<KeyValue>)> {
        self.put_request(key.into(), value.into(), true, 0).await
    }

    async fn put_request(
        &self,
        key: Vec<u8>,
        value: Vec<u8>,
        prev_kv: bool,
        lease: u64,
    ) -> Result<(u64, Option<KeyValue>)> {
        let response = self
            .write(|connection, request| {
                let message = pb::PutRequest {
                    key: key.clone(),
                    value: value.clone(),
                    request: Some(request),
                    prev_kv,
                    lease,
                };
                async move { connection.put(message).await }
            })
            .await?;
        Ok((response.header.map_or(0, |h| h.revision), response.prev_kv))
    }

    /// Deletes `key`; returns whether it existed.
    ///
    /// Cancellation: dropping the future (a `timeout`, a `select!`) at any
    /// point releases everything the call held. Whether the write happened
    /// is then unknown: it applies at most once, never twice, because its
    /// number is never sent again. Read the key to find out.
    ///
    /// ```no_run
    /// # async fn demo(client: ferry_client::Client) -> ferry_client::Result<()> {
    /// let existed = client.delete("job/42").await?;
    /// # Ok(()) }
    /// ```
    pub async fn delete(&self, key: impl Into<Vec<u8>>) -> Result<bool> {
        Ok(self.delete_request(key.into(), false).await?.deleted)
    }

    /// Deletes `key`; returns the revision of the delete and the deleted
    /// value (`None`: the key did not exist, and nothing changed).
    ///
    /// Cancellation: dropping the future (a `timeout`, a `select!`) at any
    /// point releases everything the call held. Whether the write happened
    /// is then unknown: it applies at most once, never twice, because its
    /// number is never sent again. Read the key to find out.
    ///
    /// ```no_run
    /// # async fn demo(client: ferry_client::Client) -> ferry_client::Result<()> {
    /// let (revision, removed) = client.remove("job/42").await?;
    /// # Ok(()) }
    /// ```
    pub async fn remove(&self, key: impl Into<Vec<u8>>) -> Result<(u64, Option<KeyValue>)> {
        let response = self.delete_request(key.into(), true).await?;
        Ok((response.header.map_or(0, |h| h.revision), response.prev_kv))
    }

    async fn delete_request(&self, key: Vec<u8>, prev_kv: bool) -> Result<pb::DeleteResponse> {
        self.write(|connection, request| {
            let message = pb::DeleteRequest {
                key: key.clone(),
                request: Some(request),
                prev_kv,
            };
            async move { connection.delete(message).await }
        })
        .await
    }

    /// Runs a transaction atomically (exactly once).
    ///
    /// Cancellation: dropping the future (a `timeout`, a `select!`) at any
    /// point releases everything the call held. Whether the write happened
    /// is then unknown: it applies at most once, never twice, because its
    /// number is never sent again. Read the key to find out.
    ///
    /// ```no_run
    /// # async fn demo(client: ferry_client::Client) -> ferry_client::Result<()> {
    /// use ferry_client::Txn;
    /// let result = client
    ///     .txn(Txn::new().when_absent("lock").then_put("lock", "me").else_get("lock"))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn txn(&self, txn: Txn) -> Result<TxnResult> {
        let response = self
            .write(|connection, request| {
                let message = txn.to_request(request);
                async move { connection.txn(message).await }
            })
            .await?;
        Ok(TxnResult::from(response))
    }

    /// Reads `key` linearizably (from the leader, confirmed with a quorum).
    ///
    /// Cancellation: dropping the future at any point releases everything
    /// the call held and changes nothing.
    ///
    /// ```no_run
    /// # async fn demo(client: ferry_client::Client) -> ferry_client::Result<()> {
    /// if let Some(kv) = client.get("job/42").await? {
    ///     println!("{:?} at revision {}", kv.value, kv.mod_revision);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn get(&self, key: impl Into<Vec<u8>>) -> Result<Option<KeyValue>> {
        Ok(self
            .get_with(key.into(), Consistency::Linearizable)
            .await?
            .kv)
    }

    pub(crate) async fn get_with(
        &self,
        key: Vec<u8>,
        consistency: Consistency,
    ) -> Result<pb::GetResponse> {
        let to_leader = consistency != Consistency::Stale;
        self.call(to_leader, |connection| {
            let message = GetRequest {
                key: key.clone(),
                consistency: consistency as i32,
            };
            async move { connection.get(message).await }
        })
        .await
    }

    /// Reads up to `limit` keys of `[start, end)` (`end` empty: to the end).
    ///
    /// Cancellation: dropping the future at any point releases everything
    /// the call held and changes nothing.
    ///
    /// ```no_run
    /// # async fn demo(client: ferry_client::Client) -> ferry_client::Result<()> {
    /// let page = client.range("a", "b", 100).await?;
    /// # Ok(()) }
    /// ```
    pub async fn range(
        &self,
        start: impl Into<Vec<u8>>,
        end: impl Into<Vec<u8>>,
        limit: u32,
    ) -> Result<Page> {
        self.range_request(RangeRequest {
            start: start.into(),
            end: end.into(),
            limit,
            ..RangeRequest::default()
        })
        .await
    }

    /// Reads up to `limit` keys under `prefix`.
    ///
    /// Cancellation: dropping the future at any point releases everything
    /// the call held and changes nothing.
    ///
    /// ```no_run
    /// # async fn demo(client: ferry_client::Client) -> ferry_client::Result<()> {
    /// let jobs = client.prefix("job/", 1000).await?;
    /// # Ok(()) }
    /// ```
    pub async fn prefix(&self, prefix: impl Into<Vec<u8>>, limit: u32) -> Result<Page> {
        self.range_request(RangeRequest {
            prefix: prefix.into(),
            limit,
            ..RangeRequest::default()
        })
        .await
    }

    /// Reads the page after `continuation` of an earlier range or prefix read.
    ///
    /// Cancellation: dropping the future at any point releases everything
    /// the call held and changes nothing.
    ///
    /// ```no_run
    /// # async fn demo(client: ferry_client::Client) -> ferry_client::Result<()> {
    /// let mut page = client.prefix("job/", 100).await?;
    /// while let Some(token) = page.continuation.take() {
    ///     page = client.range_after("job/", token, 100).await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn range_after(
        &self,
        prefix: impl Into<Vec<u8>>,
        continuation: Vec<u8>,
        limit: u32,
    ) -> Result<Page> {
        self.range_request(RangeRequest {
            prefix: prefix.into(),
            continuation,
            limit,
            ..RangeRequest::default()
        })
        .await
    }

    /// A raw range request (keys only, count only, consistency…).
    ///
    /// Cancellation: dropping the future at any point releases everything
    /// the call held and changes nothing.
    ///
    /// ```no_run
    /// # async fn demo(client: ferry_client::Client) -> ferry_client::Result<()> {
    /// use ferry_client::pb::RangeRequest;
    /// let count = client
    ///     .range_request(RangeRequest { prefix: b"job/".to_vec(), count_only: true, ..Default::default() })
    ///     .await?
    ///     .count;
    /// # Ok(()) }
    /// ```
    pub async fn range_request(&self, request: RangeRequest) -> Result<Page> {
        let to_leader = request.consistency != Consistency::Stale as i32;
        let response = self
            .call(to_leader, |connection| {
                let message = request.clone();
                async move {
                    KvClient::new(connection.channel)
                        .range(message)
                        .await
                        .map(tonic::Response::into_inner)
                }
            })
            .await?;
        Ok(Page {
            revision: response.header.map_or(0, |h| h.revision),
            count: response.count,
            continuation: (!response.continuation.is_empty()).then_some(response.continuation),
            kvs: response.kvs,
        })
    }

    /// Reads `key` as it was at `revision` (linearizably confirmed). Below
    /// the compacted revision it fails with [`Error::Compacted`].
    ///
    /// Cancellation: dropping the future at any point releases everything
    /// the call held and changes nothing.
    ///
    /// ```no_run
    /// # async fn demo(client: ferry_client::Client) -> ferry_client::Result<()> {
    /// let then = client.get_at("job/42", 120).await?;
    /// # Ok(()) }
    /// ```
    pub async fn get_at(&self, key: impl Into<Vec<u8>>, revision: u64) -> Result<Option<KeyValue>> {
        let key = key.into();
        let page = self
            .range_request(RangeRequest {
                end: [key.as_slice(), &[0]].concat(),
                start: key,
                limit: 1,
                revision,
                ..RangeRequest::default()
            })
            .await?;
        Ok(page.kvs.into_iter().next())
    }

    /// Compacts the history below `revision`, cluster-wide: reads and
    /// watches below it fail with [`Error::Compacted`] from then on, and
    /// its space is reclaimed. Returns the compacted revision. A revision
    /// at or below the current compacted one fails with
    /// [`Error::Compacted`].
    ///
    /// Cancellation: dropping the future at any point releases everything
    /// the call held and changes nothing.
    /// (A compaction the server received still happens.)
    ///
    /// ```no_run
    /// # async fn demo(client: ferry_client::Client) -> ferry_client::Result<()> {
    /// let compacted = client.compact(1_000).await?;
    /// # Ok(()) }
    /// ```
    pub async fn compact(&self, revision: u64) -> Result<u64> {
        let mut attempts = 0u32;
        let answer = self
            .call(true, |connection| {
                attempts += 1;
                async move {
                    pb::maintenance_client::MaintenanceClient::new(connection.channel)
                        .compact(pb::CompactRequest { revision })
                        .await
                        .map(|response| response.into_inner().compacted)
                }
            })
            .await;
        match answer {
            // A retry finds the history compacted at or past `revision`:
            // an earlier attempt (or another caller) did what was asked.
            Err(Error::Compacted {
                requested,
                compacted,
            }) if attempts > 1 && compacted >= requested => Ok(compacted),
            answer => answer,
        }
    }

    /// A watch as described by a raw request (a key, a range or a prefix,
    /// a start revision, previous values); see [`Client::watch_prefix`].
    ///
    /// ```no_run
    /// # async fn demo(client: ferry_client::Client) {
    /// use ferry_client::pb::WatchRequest;
    /// let changes = client.watch(WatchRequest { prefix: b"job/".to_vec(), prev_kv: true, ..Default::default() });
    /// # }
    /// ```
    pub fn watch(&self, request: pb::WatchRequest) -> WatchStream {
        WatchStream::start(self.clone(), request)
    }

    /// Reads served by any member, each reporting how stale it may be.
    ///
    /// ```no_run
    /// # async fn demo(client: ferry_client::Client) -> ferry_client::Result<()> {
    /// let read = client.stale().get("job/42").await?;
    /// println!("applied index {:?}", read.staleness.map(|s| s.applied_index));
    /// # Ok(()) }
    /// ```
    pub fn stale(&self) -> Stale<'_> {
        Stale { client: self }
    }

    /// Whether the cluster has auth on, and who this client is to it.
    /// Any member answers.
    ///
    /// ```no_run
    /// # async fn demo(client: ferry_client::Client) -> ferry_client::Result<()> {
    /// let status = client.auth_status().await?;
    /// println!("auth enabled: {}, as {:?}", status.enabled, status.user);
    /// # Ok(()) }
    /// ```
    pub async fn auth_status(&self) -> Result<pb::AuthStatusResponse> {
        self.call(false, |connection| async move {
            pb::auth_client::AuthClient::new(connection.channel)
                .status(pb::AuthStatusRequest {})
                .await
                .map(tonic::Response::into_inner)
        })
        .await
    }

    /// The cluster's status as the leader sees it (as any member sees it
    /// while no leader is known).
    ///
    /// Cancellation: dropping the future at any point releases everything
    /// the call held and changes nothing.
    ///
    /// ```no_run
    /// # async fn demo(client: ferry_client::Client) -> ferry_client::Result<()> {
    /// let status = client.status().await?;
    /// println!("leader {} term {}", status.leader_id, status.term);
    /// # Ok(()) }
    /// ```
    pub async fn status(&self) -> Result<pb::StatusResponse> {
        // Learn the leader from anyone, then ask the leader: a member that
        // was removed keeps answering with the membership it last knew.
        self.refresh_members().await?;
        self.call(true, |connection| async move {
            ClusterClient::new(connection.channel)
                .status(pb::StatusRequest {})
                .await
                .map(tonic::Response::into_inner)
        })
        .await
    }

    /// Changes of `key` (or, with [`WatchStream`] options, a range or
    /// prefix) from `start_revision` on; resumes after a failover from the
    /// last revision seen.
    ///
    /// Cancellation: dropping the [`WatchStream`] ends its task and its
    /// stream on the server at once; polling it is cancel-safe (an event
    /// not yet returned stays for the next poll).
    ///
    /// ```no_run
    /// # async fn demo(client: ferry_client::Client) -> ferry_client::Result<()> {
    /// use futures_util::StreamExt;
    /// let mut changes = client.watch_prefix("job/", 0);
    /// while let Some(event) = changes.next().await {
    ///     let event = event?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn watch_prefix(&self, prefix: impl Into<Vec<u8>>, start_revision: u64) -> WatchStream {
        WatchStream::start(
            self.clone(),
            pb::WatchRequest {
                prefix: prefix.into(),
                start_revision,
                ..pb::WatchRequest::default()
            },
        )
    }

    /// Changes of one key from `start_revision` on (see [`Client::watch_prefix`]).
    ///
    /// ```no_run
    /// # async fn demo(client: ferry_client::Client) {
    /// let changes = client.watch_key("job/42", 0);
    /// # }
    /// ```
    pub fn watch_key(&self, key: impl Into<Vec<u8>>, start_revision: u64) -> WatchStream {
        WatchStream::start(
            self.clone(),
            pb::WatchRequest {
                key: key.into(),
                start_revision,
                ..pb::WatchRequest::default()
            },
        )
    }
}

impl Stale<'_> {
    /// Reads `key` from any member.
    ///
    /// Cancellation: dropping the future at any point releases everything
    /// the call held and changes nothing.
    pub async fn get(&self, key: impl Into<Vec<u8>>) -> Result<StaleRead<Option<KeyValue>>> {
        let response = self.client.get_with(key.into(), Consistency::Stale).await?;
        Ok(StaleRead {
            revision: response.header.map_or(0, |h| h.revision),
            value: response.kv,
            staleness: response.staleness,
        })
    }

    /// Reads up to `limit` keys under `prefix` from any member.
    ///
    /// Cancellation: dropping the future at any point releases everything
    /// the call held and changes nothing.
    pub async fn prefix(&self, prefix: impl Into<Vec<u8>>, limit: u32) -> Result<Page> {
        self.client
            .range_request(RangeRequest {
                prefix: prefix.into(),
                limit,
                consistency: Consistency::Stale as i32,
                ..RangeRequest::default()
            })
            .await
    }
}

/// One member's channel and its batch stream.
#[derive(Clone)]
pub(crate) struct Connection {
    pub(crate) channel: AuthChannel,
    batcher: Arc<Batcher>,
    /// The token generation the batch stream was started under.
    generation: u64,
    /// How long this attempt waits: a batched call tells the server, which
    /// stops the call then, as a unary call is dropped when its caller is.
    attempt: Duration,
}

impl Connection {
    /// Runs a call over the batch stream if it can, else as its unary RPC.
    async fn run<M, T, Fut>(
        self,
        message: M,
        wrap: fn(M) -> batch_call::Request,
        unwrap: fn(batch_reply::Response) -> Option<T>,
        unary: impl FnOnce(KvClient<AuthChannel>, M) -> Fut,
    ) -> std::result::Result<T, Status>
    where
        M: prost::Message,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    {
        let bytes = message.encoded_len();
        if !self.batcher.usable() || bytes > MAX_BATCHED_CALL_BYTES {
            return unary(KvClient::new(self.channel), message)
                .await
                .map(tonic::Response::into_inner);
        }
        let reply = self
            .batcher
            .call(wrap(message), bytes, self.attempt)
            .await?;
        unwrap(reply).ok_or_else(|| Status::internal("a batch reply of another kind than its call"))
    }
}

/// A [`Connection`] method per call kind the batch stream carries: the
/// call's batch variant and its unary RPC.
macro_rules! batched_call {
    ($method:ident, $request:ty, $response:ty, $variant:ident) => {
        async fn $method(self, message: $request) -> std::result::Result<$response, Status> {
            let unwrap = |reply| match reply {
                batch_reply::Response::$variant(response) => Some(response),
                _ => None,
            };
            let unary = |mut kv: KvClient<AuthChannel>, m| async move { kv.$method(m).await };
            self.run(message, batch_call::Request::$variant, unwrap, unary)
                .await
        }
    };
}

impl Connection {
    batched_call!(get, pb::GetRequest, pb::GetResponse, Get);
    batched_call!(put, pb::PutRequest, pb::PutResponse, Put);
    batched_call!(delete, pb::DeleteRequest, pb::DeleteResponse, Delete);
    batched_call!(txn, pb::TxnRequest, pb::TxnResponse, Txn);
}

/// The endpoint of the member at `addr` (`host:port`), over TLS if `tls`.
/// How often a connection pings its member, and how long it waits for
/// the answer before it counts the member as gone.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);

fn endpoint_of(addr: &str, tls: Option<&TlsOptions>) -> Result<Endpoint> {
    let bad = |e: &dyn std::fmt::Display| Error::Endpoint(format!("{addr}: {e}"));
    match tls {
        None => Endpoint::from_shared(format!("http://{addr}")).map_err(|e| bad(&e)),
        Some(tls) => {
            let endpoint = Endpoint::from_shared(format!("https://{addr}")).map_err(|e| bad(&e))?;
            let host = endpoint.uri().host().unwrap_or(addr);
            // An IPv6 host comes bracketed; certificates name it bare.
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            endpoint.tls_config(tls.config(&host)).map_err(|e| bad(&e))
        }
    }
}
