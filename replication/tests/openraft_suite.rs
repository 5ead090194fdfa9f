//! openraft's storage test suite against our log store and state machine.

use ferry_replication::log_store::{LogStore, LogStoreOptions};
use ferry_replication::state_machine::StateMachine;
use ferry_replication::types::TypeConfig;
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;
use std::time::Duration;
use tempfile::TempDir;

struct FerryStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for FerryStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = LogStoreOptions {
            // Small segments so that the suite's truncations and purges cross segment files.
            segment_bytes: 256,
            cache_bytes: 64,
        };
        let log = LogStore::open(dir.path().join("raft"), options).expect("open log");
        let sm = StateMachine::open(dir.path(), Default::default()).expect("open state machine");
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite() {
    tokio::time::timeout(Duration::from_secs(300), Suite::test_all(FerryStoreBuilder))
        .await
        .expect("the suite finishes within 5 minutes")
        .expect("the suite passes");
}
