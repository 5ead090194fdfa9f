//! Parquet exports streamed to the client (`Maintenance.ExportState`,
//! `Maintenance.ExportHistory`): the export is written into a sink whose
//! files are chunks of the response stream, so the server holds one row
//! group and a few chunks per export, and writes nothing on its disk.

use super::Context;
use ferry_client::pb::{self, export_chunk::Chunk};
use ferry_engine::columnar::PartSink;
use ferry_replication::export::{self, ExportReport};
use std::io;
use std::pin::Pin;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

pub type ExportStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ExportChunk, Status>> + Send>>;

/// Data chunks of at most this many bytes.
const CHUNK_BYTES: usize = 1 << 20;
/// Chunks buffered towards a client that reads slowly.
const BUFFERED_CHUNKS: usize = 4;

type Sender = mpsc::Sender<Result<pb::ExportChunk, Status>>;

fn send(sender: &Sender, chunk: Chunk) -> io::Result<()> {
    sender
        .blocking_send(Ok(pb::ExportChunk { chunk: Some(chunk) }))
        .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
}

/// A sink whose files are messages of the response stream.
struct StreamSink {
    sender: Sender,
}

/// One file being streamed: data is sent in chunks as it is written.
struct StreamFile {
    sender: Sender,
    buffer: Vec<u8>,
    crc: crc32fast::Hasher,
    size: u64,
}

impl io::Write for StreamFile {
    /// Takes at most what fills the current chunk (`write_all` comes back
    /// for the rest): a page of one large value arrives in one write, and
    /// a chunk must stay under the client's message limit.
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        debug_assert!(
            self.buffer.len() < CHUNK_BYTES,
            "a full chunk is sent at once"
        );
        let bytes = &bytes[..bytes.len().min(CHUNK_BYTES - self.buffer.len())];
        self.crc.update(bytes);
        self.size += bytes.len() as u64;
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= CHUNK_BYTES {
            self.flush()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buffer.is_empty() {
            let data = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK_BYTES));
            send(&self.sender, Chunk::Data(data))?;
        }
        Ok(())
    }
}

impl PartSink for StreamSink {
    type Part = StreamFile;

    fn create(&mut self, name: &str) -> io::Result<StreamFile> {
        send(&self.sender, Chunk::File(name.to_owned()))?;
        Ok(StreamFile {
            sender: self.sender.clone(),
            buffer: Vec::with_capacity(CHUNK_BYTES),
            crc: crc32fast::Hasher::new(),
            size: 0,
        })
    }

    fn finish(&mut self, _name: &str, mut file: StreamFile) -> io::Result<u64> {
        io::Write::flush(&mut file)?;
        let end = pb::ExportFileEnd {
            size: file.size,
            crc: file.crc.finalize(),
        };
        send(&self.sender, Chunk::End(end))?;
        Ok(file.size)
    }
}

/// What to export.
pub enum Export {
    State,
    History { from: u64, to: u64 },
}

/// Starts an export on a blocking thread (it reads the engine) and returns
/// its stream; `permit` (a place among the concurrent exports) is held
/// until the export ends.
pub fn start(context: &Context, what: Export, permit: OwnedSemaphorePermit) -> ExportStream {
    let (sender, receiver) = mpsc::channel(BUFFERED_CHUNKS);
    let db = context.node.state().db();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let view = db.snapshot();
        let options = export::streaming_options();
        let sink = StreamSink {
            sender: sender.clone(),
        };
        let info = |revision, estimated_bytes| {
            send(
                &sender,
                Chunk::Info(pb::ExportInfo {
                    revision,
                    estimated_bytes,
                }),
            )
        };
        let result: io::Result<ExportReport> = (|| {
            let revision = ferry_replication::state_machine::applied_index(&view)?;
            Ok(match what {
                Export::State => {
                    let estimate = db.statistics().level_bytes.iter().sum();
                    info(revision, estimate)?;
                    export::state::export(&view, &options, sink, &mut |_| {})?.0
                }
                Export::History { from, to } => {
                    info(revision, 0)?;
                    export::history::export(&view, from, to, &options, sink, &mut |_| {})?.0
                }
            })
        })();
        let last = match result {
            Ok(report) => Ok(pb::ExportChunk {
                chunk: Some(Chunk::Summary(pb::ExportSummary {
                    rows: report.manifest.rows,
                    files: report.manifest.parts.len() as u32 + 1,
                    bytes: report.bytes,
                    checksum: report.manifest.checksum,
                })),
            }),
            Err(error) if error.kind() == io::ErrorKind::BrokenPipe => return,
            Err(error) => Err(export_status(error)),
        };
        let _ = sender.blocking_send(last);
    });
    Box::pin(ReceiverStream::new(receiver))
}

fn export_status(error: io::Error) -> Status {
    if let Some(compacted) = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<ferry_replication::state_machine::history::Compacted>())
    {
        return ferry_client::compacted_status(compacted.requested, compacted.compacted);
    }
    Status::internal(format!("export: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_write_goes_out_in_chunks_of_the_bound() {
        let (sender, mut receiver) = mpsc::channel(16);
        let mut file = StreamSink { sender }.create("part").unwrap();
        let large: Vec<u8> = (0..CHUNK_BYTES * 3 + 5).map(|i| i as u8).collect();
        io::Write::write_all(&mut file, &large).unwrap();
        io::Write::flush(&mut file).unwrap();
        drop(file);
        let mut received = Vec::new();
        while let Ok(chunk) = receiver.try_recv() {
            if let Some(Chunk::Data(data)) = chunk.unwrap().chunk {
                assert!(data.len() <= CHUNK_BYTES, "{}", data.len());
                received.extend(data);
            }
        }
        assert_eq!(received, large);
    }
}
