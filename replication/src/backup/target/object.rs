//! A backup chain in object storage (S3 and S3-compatible servers), over
//! the `object_store` crate.
//!
//! What makes the target's guarantees hold here:
//! - whole or nothing: a single PUT, or a multipart upload, is visible only
//!   once complete;
//! - no put replaces a name: PUT with `If-None-Match: *` (S3's conditional
//!   write). Files above [`SINGLE_PUT_MAX`] go up in parts, which S3 cannot
//!   make conditional; only checkpoint files are that large, and their
//!   names are their content (CRC and size), so a racing upload can only
//!   store the same bytes again;
//! - compare-and-swap of a record: PUT with `If-Match: <ETag>`.
//!
//! The store is asynchronous and the [`BackupTarget`] calls are not: each
//! call runs on this target's own small runtime and the calling thread
//! waits, so it works from any thread (shipper and restore call it from
//! blocking threads).

use super::{conflict, BackupTarget, Version};
use crate::backup::cpu::ThreadSet;
use bytes::Bytes;
use ferry_engine::fs::{FileSystem, OsFs};
use futures_util::StreamExt;
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path as StorePath;
use object_store::{
    ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig, UpdateVersion,
    WriteMultipart,
};
use std::future::Future;
use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Files up to this size go up in one conditional PUT (read into memory
/// once); larger ones stream up in parts of [`PART_SIZE`].
pub const SINGLE_PUT_MAX: u64 = 80 << 20;
const PART_SIZE: usize = 8 << 20;
/// Parts in flight at once per upload.
const PARTS_IN_FLIGHT: usize = 4;

/// Where and as whom to reach S3. Every field left `None` comes from the
/// standard AWS environment variables (`AWS_ENDPOINT`, `AWS_REGION`,
/// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, ...).
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// e.g. `http://127.0.0.1:9000` for a local S3-compatible server
    /// (plain HTTP is allowed only when the endpoint says `http://`).
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

/// A backup target in an object store, under a prefix.
pub struct ObjectTarget {
    store: Arc<dyn ObjectStore>,
    /// The folder inside the bucket (no leading or trailing `/`).
    prefix: String,
    url: String,
    /// Local files go through it, like every file of a node.
    fs: Arc<dyn FileSystem>,
    runtime: Option<tokio::runtime::Runtime>,
    /// The runtime's threads, for the CPU time the target costs.
    threads: Arc<ThreadSet>,
}

impl std::fmt::Debug for ObjectTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectTarget")
            .field("url", &self.url)
            .finish()
    }
}

impl ObjectTarget {
    /// The chain at `s3://bucket/prefix`.
    pub fn s3(bucket: &str, prefix: &str, options: &S3Options) -> io::Result<Self> {
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            // Fail a round within a minute rather than retry for minutes:
            // the shipper retries the whole round next interval anyway.
            .with_retry(RetryConfig {
                max_retries: 4,
                retry_timeout: Duration::from_secs(30),
                ..RetryConfig::default()
            });
        if let Some(endpoint) = &options.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        } else if let Ok(endpoint) = std::env::var("AWS_ENDPOINT") {
            builder = builder.with_allow_http(endpoint.starts_with("http://"));
        }
        if let Some(region) = &options.region {
            builder = builder.with_region(region);
        }
        if let Some(id) = &options.access_key_id {
            builder = builder.with_access_key_id(id);
        }
        if let Some(secret) = &options.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        let store = builder.build().map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("s3://{bucket}: {e}"))
        })?;
        let prefix = prefix.trim_matches('/').to_string();
        if !prefix.is_empty() {
            ferry_engine::fs::check_relative_path(&prefix).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("backup URL prefix: {e}"),
                )
            })?;
        }
        let url = format!("s3://{bucket}/{prefix}");
        Self::new(Arc::new(store), prefix, url)
    }

    /// A chain in any object store (tests use `object_store::memory`).
    pub fn new(store: Arc<dyn ObjectStore>, prefix: String, url: String) -> io::Result<Self> {
        let (runtime, threads) = ThreadSet::runtime("ferry-backup-io", 2)?;
        Ok(ObjectTarget {
            store,
            prefix,
            url,
            fs: Arc::new(OsFs),
            runtime: Some(runtime),
            threads,
        })
    }

    /// Local files (sources of puts, destinations of gets) go through `fs`.
    pub fn with_fs(mut self, fs: Arc<dyn FileSystem>) -> Self {
        self.fs = fs;
        self
    }

    fn path(&self, name: &str) -> io::Result<StorePath> {
        ferry_engine::fs::check_relative_path(name).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("backup name: {e}"))
        })?;
        Ok(StorePath::from(self.full(name)))
    }

    fn full(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.prefix)
        }
    }

    /// Runs `work` on the target's runtime; the calling thread waits.
    fn run<T: Send + 'static>(
        &self,
        work: impl Future<Output = T> + Send + 'static,
    ) -> io::Result<T> {
        let runtime = self.runtime.as_ref().expect("runtime lives until drop");
        let (done, wait) = std::sync::mpsc::sync_channel(1);
        runtime.spawn(async move {
            let _ = done.send(work.await);
        });
        wait.recv()
            .map_err(|_| io::Error::other(format!("{}: the I/O task stopped", self.url)))
    }

    fn error(&self, name: &str, error: object_store::Error) -> io::Error {
        let kind = match &error {
            object_store::Error::NotFound { .. } => io::ErrorKind::NotFound,
            object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. } => io::ErrorKind::AlreadyExists,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(
            kind,
            format!("{}/{name}: {error}", self.url.trim_end_matches('/')),
        )
    }

    fn put_in_parts(&self, name: &str, path: StorePath, from: &Path) -> io::Result<()> {
        if self.exists(name)? {
            return Err(conflict(format!("{} is stored already", self.full(name))));
        }
        let store = self.store.clone();
        let upload = self
            .run(async move { store.put_multipart(&path).await })?
            .map_err(|e| self.error(name, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut file = self.fs.open_sequential(from)?;
        let mut buffer = vec![0u8; PART_SIZE];
        let failed = loop {
            let n = match file.read(&mut buffer) {
                Ok(0) => break None,
                Ok(n) => n,
                Err(e) => break Some(e),
            };
            let piece = Bytes::copy_from_slice(&buffer[..n]);
            // Uploads of parts are spawned on the runtime, so the write runs
            // there too. Bounded memory: at most PARTS_IN_FLIGHT parts wait.
            let (w, waited) = self.run(async move {
                writer.put(piece);
                let waited = writer.wait_for_capacity(PARTS_IN_FLIGHT).await;
                (writer, waited)
            })?;
            writer = w;
            if let Err(e) = waited {
                break Some(self.error(name, e));
            }
        };
        match failed {
            None => self
                .run(writer.finish())?
                .map(drop)
                .map_err(|e| self.error(name, e)),
            Some(error) => {
                let _ = self.run(writer.abort());
                Err(error)
            }
        }
    }
}

impl Drop for ObjectTarget {
    fn drop(&mut self) {
        // Dropping a runtime inside another one's task panics; this does not
        // wait for the I/O threads (every call has finished by now).
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl ObjectTarget {
    /// One PUT of the whole object, only if `name` is not stored yet.
    fn put_whole(&self, name: &str, path: StorePath, bytes: Vec<u8>) -> io::Result<()> {
        let payload = PutPayload::from(Bytes::from(bytes));
        let store = self.store.clone();
        let options = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        self.run(async move { store.put_opts(&path, payload, options).await })?
            .map(drop)
            .map_err(|e| self.error(name, e))
    }
}

impl BackupTarget for ObjectTarget {
    fn put(&self, name: &str, from: &Path) -> io::Result<()> {
        let path = self.path(name)?;
        let size = self.fs.file_size(from)?;
        if size > SINGLE_PUT_MAX {
            return self.put_in_parts(name, path, from);
        }
        self.put_whole(name, path, self.fs.read_all(from)?)
    }

    fn put_bytes(&self, name: &str, bytes: Vec<u8>) -> io::Result<()> {
        let path = self.path(name)?;
        if bytes.len() as u64 > SINGLE_PUT_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name}: {} bytes is over the single-put limit", bytes.len()),
            ));
        }
        self.put_whole(name, path, bytes)
    }

    fn get(&self, name: &str, to: &Path) -> io::Result<u64> {
        let path = self.path(name)?;
        let store = self.store.clone();
        let mut stream = self
            .run(async move { store.get(&path).await.map(|r| r.into_stream()) })?
            .map_err(|e| self.error(name, e))?;
        let mut out = self.fs.create(to)?;
        let mut bytes = 0;
        loop {
            // One piece of the body at a time: memory stays bounded.
            let (s, piece) = self.run(async move {
                let piece = stream.next().await;
                (stream, piece)
            })?;
            stream = s;
            match piece {
                None => break,
                Some(Err(e)) => return Err(self.error(name, e)),
                Some(Ok(piece)) => {
                    out.append(&piece)?;
                    bytes += piece.len() as u64;
                }
            }
        }
        out.finish()?;
        Ok(bytes)
    }

    fn exists(&self, name: &str) -> io::Result<bool> {
        let path = self.path(name)?;
        let store = self.store.clone();
        match self.run(async move { store.head(&path).await })? {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.error(name, e)),
        }
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        let folder = self.path(prefix)?;
        let root = match self.prefix.is_empty() {
            true => String::new(),
            false => format!("{}/", self.prefix),
        };
        let store = self.store.clone();
        let listed: Vec<_> = self
            .run(async move {
                store.list_with_delimiter(Some(&folder)).await.map(|l| {
                    l.objects
                        .into_iter()
                        .map(|o| o.location.to_string())
                        .collect()
                })
            })?
            .map_err(|e| self.error(prefix, e))?;
        let mut names: Vec<String> = listed
            .into_iter()
            .filter_map(|full| full.strip_prefix(&root).map(str::to_string))
            .collect();
        names.sort();
        Ok(names)
    }

    fn delete(&self, name: &str) -> io::Result<()> {
        let path = self.path(name)?;
        let store = self.store.clone();
        match self.run(async move { store.delete(&path).await })? {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(name, e)),
        }
    }

    fn read_versioned(&self, name: &str) -> io::Result<Option<(Vec<u8>, Version)>> {
        let path = self.path(name)?;
        let store = self.store.clone();
        let read = self.run(async move {
            let result = store.get(&path).await?;
            let tag = result.meta.e_tag.clone();
            Ok::<_, object_store::Error>((result.bytes().await?, tag))
        })?;
        match read {
            Ok((bytes, Some(tag))) => Ok(Some((bytes.to_vec(), Version(tag)))),
            Ok((_, None)) => Err(io::Error::other(format!(
                "{}: the object store gave no ETag, so it cannot fence a backup chain",
                self.full(name)
            ))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(name, e)),
        }
    }

    fn swap(&self, name: &str, bytes: &[u8], expected: Option<&Version>) -> io::Result<()> {
        let path = self.path(name)?;
        let mode = match expected {
            None => PutMode::Create,
            Some(version) => PutMode::Update(UpdateVersion {
                e_tag: Some(version.0.clone()),
                version: None,
            }),
        };
        let payload = PutPayload::from(Bytes::copy_from_slice(bytes));
        let store = self.store.clone();
        let options = PutOptions {
            mode,
            ..PutOptions::default()
        };
        self.run(async move { store.put_opts(&path, payload, options).await })?
            .map(drop)
            .map_err(|e| self.error(name, e))
    }

    fn describe(&self) -> String {
        self.url.clone()
    }

    fn cpu_ns(&self) -> u64 {
        self.threads.cpu_ns()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> ObjectTarget {
        let store = Arc::new(object_store::memory::InMemory::new());
        ObjectTarget::new(store, "chains/a".into(), "memory://chains/a".into()).unwrap()
    }

    #[test]
    fn put_get_list_delete_and_swap() {
        let dir = tempfile::tempdir().unwrap();
        let target = memory();
        let source = dir.path().join("src");
        std::fs::write(&source, b"hello").unwrap();
        target.put("log/a.log", &source).unwrap();
        target.put("log/b.log", &source).unwrap();
        target.put("checkpoints/1.ckpt", &source).unwrap();
        let error = target.put("log/a.log", &source).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::AlreadyExists, "{error}");
        assert_eq!(target.list("log").unwrap(), vec!["log/a.log", "log/b.log"]);
        assert!(target.exists("log/a.log").unwrap());
        assert!(!target.exists("log/c.log").unwrap());
        let back = dir.path().join("back");
        assert_eq!(target.get("log/b.log", &back).unwrap(), 5);
        assert_eq!(std::fs::read(&back).unwrap(), b"hello");
        assert_eq!(
            target.get("log/c.log", &back).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        target.delete("log/a.log").unwrap();
        target.delete("log/a.log").unwrap();
        assert_eq!(target.list("log").unwrap(), vec!["log/b.log"]);
        assert!(target.put("../x", &source).is_err());

        assert!(target.read_versioned("head").unwrap().is_none());
        target.swap("head", b"one", None).unwrap();
        assert!(target.swap("head", b"two", None).is_err());
        let (bytes, version) = target.read_versioned("head").unwrap().unwrap();
        assert_eq!(bytes, b"one");
        target.swap("head", b"two", Some(&version)).unwrap();
        assert!(target.swap("head", b"x", Some(&version)).is_err());
    }

    #[test]
    fn large_files_go_up_in_parts_and_come_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let target = memory();
        let source = dir.path().join("big");
        let data: Vec<u8> = (0..SINGLE_PUT_MAX + 3 * PART_SIZE as u64 + 17)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        std::fs::write(&source, &data).unwrap();
        target.put("objects/big", &source).unwrap();
        assert!(target.put("objects/big", &source).is_err());
        let back = dir.path().join("back");
        assert_eq!(target.get("objects/big", &back).unwrap(), data.len() as u64);
        assert!(std::fs::read(&back).unwrap() == data);
    }
}
