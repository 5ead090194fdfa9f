//! `ferry history`: the store's event history, for people and tools.

use super::snapshot::{print_export, receive_export};
use super::{connect, exit, leader_channel, status_fail, Common};
use clap::Subcommand;
use ferry_client::pb;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum HistoryCommand {
    /// Download the history as Parquet into a new local directory: one row
    /// per change (revision, time, key, op, value, prev_revision), by
    /// default from the compacted revision to the latest.
    Export {
        dir: PathBuf,
        /// First revision (default: the compacted revision).
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Last revision (default: the latest).
        #[arg(long, default_value_t = 0)]
        to: u64,
    },
}

pub async fn history(common: &Common, command: HistoryCommand) -> i32 {
    match history_inner(common, command).await {
        Ok(code) | Err(code) => code,
    }
}

async fn history_inner(common: &Common, command: HistoryCommand) -> Result<i32, i32> {
    let client = connect(common).await?;
    let channel = leader_channel(&client).await?;
    let mut maintenance =
        pb::maintenance_client::MaintenanceClient::new(channel).max_decoding_message_size(8 << 20);
    match command {
        HistoryCommand::Export { dir, from, to } => {
            let stream = maintenance
                .export_history(pb::ExportHistoryRequest {
                    from_revision: from,
                    to_revision: to,
                })
                .await
                .map_err(status_fail)?
                .into_inner();
            let (info, summary) = receive_export(stream, &dir, !common.json).await?;
            print_export(common, "history", &dir, &info, &summary);
        }
    }
    Ok(exit::OK)
}
