//! `ferry snapshot`: build, download, export as Parquet, restore.

use super::download::Download;
use super::output::report_new_cluster;
use super::{connect, exit, leader_channel, status_fail, Common};
use clap::Subcommand;
use ferry_client::pb;
use serde_json::json;
use std::path::{Path, PathBuf};

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Build a snapshot now on the leader.
    Create,
    /// Download the current snapshot into a new directory (a checkpoint
    /// that `ferry-engine` opens as a database).
    Download { dir: PathBuf },
    /// Download the user state as Parquet into a new local directory: one
    /// row per key (key, value, create_revision, mod_revision, version,
    /// lease), readable by DuckDB, pyarrow, Spark.
    ExportParquet { dir: PathBuf },
    /// Offline: make a fresh data directory that starts as a new
    /// single-node cluster holding a downloaded snapshot's state, or a
    /// Parquet state export's. Never let members of the old cluster join it.
    Restore {
        /// A snapshot directory (from `ferry snapshot download`), or a file
        /// that `etcdctl snapshot save` wrote from a Ferry member.
        #[arg(
            long,
            conflicts_with = "from_parquet",
            required_unless_present = "from_parquet"
        )]
        from: Option<PathBuf>,
        /// A Parquet state export (from `ferry snapshot export-parquet`).
        #[arg(long)]
        from_parquet: Option<PathBuf>,
        /// The new node's data directory (must not exist).
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 1)]
        id: u64,
        #[arg(long, default_value = "127.0.0.1:7401")]
        raft_addr: String,
        #[arg(long, default_value = "127.0.0.1:7400")]
        client_addr: String,
    },
}

pub async fn snapshot(common: &Common, command: SnapshotCommand) -> i32 {
    match snapshot_inner(common, command).await {
        Ok(code) | Err(code) => code,
    }
}

async fn snapshot_inner(common: &Common, command: SnapshotCommand) -> Result<i32, i32> {
    if let SnapshotCommand::Restore {
        from,
        from_parquet,
        data_dir,
        id,
        raft_addr,
        client_addr,
    } = command
    {
        let node = ferry_replication::types::FerryNode {
            raft_addr: raft_addr.clone(),
            client_addr: client_addr.clone(),
        };
        // A file is a snapshot that `etcdctl snapshot save` wrote: unpack
        // it next to the new data directory first.
        let mut unpacked = None;
        let from = match from {
            Some(file) if file.is_file() => {
                let parent = data_dir
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                let scratch = tempfile::Builder::new()
                    .prefix(".ferry-unpack")
                    .tempdir_in(parent)
                    .map_err(|e| {
                        eprintln!("error: {}: {e}", parent.display());
                        exit::FAILED
                    })?;
                let dir = scratch.path().join("snapshot");
                unpack(&file, &dir, !common.json)?;
                unpacked = Some(scratch);
                Some(dir)
            }
            other => other,
        };
        let recovered = match (from, from_parquet) {
            (Some(from), _) => {
                ferry_replication::recovery::restore_as_single_node(
                    &ferry_engine::fs::OsFs::shared(),
                    &from,
                    &data_dir,
                    id,
                    node,
                )
                .await
            }
            (None, Some(export)) => {
                let bar = indicatif::ProgressBar::with_draw_target(
                    None,
                    if common.json {
                        indicatif::ProgressDrawTarget::hidden()
                    } else {
                        indicatif::ProgressDrawTarget::stderr()
                    },
                );
                bar.set_style(
                    indicatif::ProgressStyle::with_template("{spinner} {pos} rows {per_sec}")
                        .expect("static template"),
                );
                let restored = ferry_replication::export::restore::from_state_export(
                    &ferry_engine::fs::OsFs::shared(),
                    &export,
                    &data_dir,
                    id,
                    node,
                    &mut |rows| bar.set_position(rows),
                )
                .await;
                bar.finish_and_clear();
                restored.map(|report| report.recovered)
            }
            (None, None) => unreachable!("clap requires one of them"),
        };
        drop(unpacked);
        return report_new_cluster(common, recovered, &data_dir, id, &raft_addr, &client_addr);
    }
    let client = connect(common).await?;
    let channel = leader_channel(&client).await?;
    let mut maintenance =
        pb::maintenance_client::MaintenanceClient::new(channel).max_decoding_message_size(8 << 20);
    match command {
        SnapshotCommand::Create => {
            let response = maintenance
                .checkpoint(pb::CheckpointRequest {})
                .await
                .map_err(status_fail)?
                .into_inner();
            if common.json {
                println!(
                    "{}",
                    json!({ "index": response.index, "bytes": response.bytes, "files": response.files })
                );
            } else {
                println!(
                    "snapshot at index {}: {} files, {} bytes",
                    response.index, response.files, response.bytes
                );
            }
        }
        SnapshotCommand::Download { dir } => {
            let mut receiver = SnapshotFiles::new(Download::new(&dir, !common.json)?);
            let mut stream = maintenance
                .snapshot(pb::SnapshotRequest {})
                .await
                .map_err(status_fail)?
                .into_inner();
            while let Some(chunk) = stream.message().await.map_err(status_fail)? {
                receiver.take(chunk)?;
            }
            let info = receiver.finish()?;
            if common.json {
                println!(
                    "{}",
                    json!({ "dir": dir.display().to_string(), "index": info.index, "bytes": info.total_bytes, "files": info.files })
                );
            } else {
                println!(
                    "downloaded the snapshot at index {} ({} files, {} bytes) into {}",
                    info.index,
                    info.files,
                    info.total_bytes,
                    dir.display()
                );
            }
        }
        SnapshotCommand::Restore { .. } => unreachable!("handled above"),
        SnapshotCommand::ExportParquet { dir } => {
            let stream = maintenance
                .export_state(pb::ExportStateRequest {})
                .await
                .map_err(status_fail)?
                .into_inner();
            let (info, summary) = receive_export(stream, &dir, !common.json).await?;
            print_export(common, "state", &dir, &info, &summary);
        }
    }
    Ok(exit::OK)
}

/// A snapshot's chunks written as files: each file's header names its
/// size and CRC; it ends where the next header (or the stream) begins.
struct SnapshotFiles {
    download: Download,
    expected: Option<(u64, u32)>,
    info: Option<pb::SnapshotInfo>,
}

impl SnapshotFiles {
    fn new(download: Download) -> SnapshotFiles {
        SnapshotFiles {
            download,
            expected: None,
            info: None,
        }
    }

    fn take(&mut self, chunk: pb::SnapshotChunk) -> Result<(), i32> {
        match chunk.chunk {
            Some(pb::snapshot_chunk::Chunk::Info(info)) => {
                self.download.expect_bytes(info.total_bytes);
                self.info = Some(info);
            }
            Some(pb::snapshot_chunk::Chunk::File(header)) => {
                if let Some((size, crc)) = self.expected.take() {
                    self.download.end(size, crc)?;
                }
                self.download.start(&header.name)?;
                self.expected = Some((header.size, header.crc));
            }
            Some(pb::snapshot_chunk::Chunk::Data(data)) => self.download.data(&data)?,
            None => {}
        }
        Ok(())
    }

    fn finish(mut self) -> Result<pb::SnapshotInfo, i32> {
        if let Some((size, crc)) = self.expected.take() {
            self.download.end(size, crc)?;
        }
        let Some(info) = self.info.take() else {
            eprintln!("error: the stream never said what the snapshot holds");
            return Err(exit::FAILED);
        };
        self.download.finish(info.files, Some(info.total_bytes))?;
        Ok(info)
    }
}

/// Unpacks a snapshot saved through etcd's API (`etcdctl snapshot save`)
/// into the new directory `dir`, checking its digest first.
fn unpack(file: &Path, dir: &Path, progress: bool) -> Result<(), i32> {
    let mut files = SnapshotFiles::new(Download::new(dir, progress)?);
    let mut failed = None;
    let read = crate::etcd::snapshot::read(&ferry_engine::fs::OsFs, file, |chunk| {
        if let Err(code) = files.take(chunk) {
            failed = Some(code);
            return Err(crate::etcd::snapshot::ArchiveError::Damaged("unwritable"));
        }
        Ok(())
    });
    if let Some(code) = failed {
        return Err(code);
    }
    if let Err(error) = read {
        eprintln!("error: {}: {error}", file.display());
        return Err(exit::FAILED);
    }
    files.finish().map(|_| ())
}

/// Receives an export's stream into `dir`; returns its info and summary.
pub(super) async fn receive_export(
    mut stream: tonic::Streaming<pb::ExportChunk>,
    dir: &std::path::Path,
    progress: bool,
) -> Result<(pb::ExportInfo, pb::ExportSummary), i32> {
    use pb::export_chunk::Chunk;
    let mut download = Download::new(dir, progress)?;
    let mut info = pb::ExportInfo::default();
    let summary = loop {
        let Some(chunk) = stream.message().await.map_err(status_fail)? else {
            eprintln!("error: the export ended without its summary");
            return Err(exit::FAILED);
        };
        match chunk.chunk {
            Some(Chunk::Info(i)) => {
                download.expect_bytes(i.estimated_bytes);
                info = i;
            }
            Some(Chunk::File(name)) => download.start(&name)?,
            Some(Chunk::Data(data)) => download.data(&data)?,
            Some(Chunk::End(end)) => download.end(end.size, end.crc)?,
            Some(Chunk::Summary(summary)) => break summary,
            None => {}
        }
    };
    download.finish(summary.files, None)?;
    Ok((info, summary))
}

/// Reports a finished export.
pub(super) fn print_export(
    common: &Common,
    what: &str,
    dir: &std::path::Path,
    info: &pb::ExportInfo,
    summary: &pb::ExportSummary,
) {
    if common.json {
        println!(
            "{}",
            json!({
                "dir": dir.display().to_string(), "revision": info.revision, "rows": summary.rows,
                "files": summary.files, "bytes": summary.bytes,
                "checksum": format!("{:016x}", summary.checksum),
            })
        );
    } else {
        println!(
            "exported the {what} at revision {} ({} rows, {} bytes of Parquet) into {}",
            info.revision,
            summary.rows,
            summary.bytes,
            dir.display()
        );
    }
}
