//! Client SDK for a Ferry cluster.
//!
//! Not built yet: leader discovery, retries, failover and exactly-once writes
//! arrive with the server. The public `.proto` and its generated types will
//! live here so that the server reuses them and an SDK user compiles neither
//! the engine nor openraft.
