//! Ferry's networked server and the `ferry` command-line tool.
//!
//! [`server::Server`] runs one [`ferry_replication::Node`] behind the public
//! gRPC API of `ferry-client`'s `proto/ferry.proto` (KV, Watch, Cluster,
//! Maintenance, plus standard health and reflection) and etcd's v3 API
//! ([`etcd`]) and an HTTP port
//! for Prometheus metrics, health probes and the status page ([`http`]). [`cli`] and [`demo`] are the
//! `ferry` tool's commands.
//!
//! Invariants: every RPC asks [`auth::Gate`] first, so with auth on an
//! unauthenticated or forbidden call is refused (UNAUTHENTICATED,
//! PERMISSION_DENIED) before it does anything; a request over a configured
//! limit is refused before it reaches Raft, so it changes nothing; no
//! request names a path on the server (exports and snapshots stream to the
//! client). On Ferry's API a follower never forwards writes or
//! linearizable reads, it names the leader instead (see [`service`]); on
//! etcd's ([`etcd`], served on the same port) it hands them to the leader,
//! as etcd's members do, after checking the caller's permissions itself.

pub mod auth;
pub mod certs;
pub mod cli;
pub mod config;
pub mod demo;
pub mod etcd;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod memory;
pub mod metrics;
pub mod server;
pub mod service;
pub mod status;
pub mod watch_slots;
