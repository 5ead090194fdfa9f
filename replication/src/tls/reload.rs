//! A configuration built from files, rebuilt when they change.

use super::TlsError;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Files are looked at no more often than this: a connection storm must
/// not turn into a storm of `stat` calls.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// What identifies a file's version without reading it.
type Stamp = Option<(SystemTime, u64)>;

/// `T` built from `files` by `build`, rebuilt when one of them changes
/// (its modification time or length). A rebuild that fails keeps the
/// previous `T`: a certificate being rewritten in place (briefly empty,
/// or not matching its key yet) never takes the port down.
pub struct Reloading<T> {
    files: Vec<PathBuf>,
    build: Box<dyn Fn() -> Result<T, TlsError> + Send + Sync>,
    state: Mutex<State<T>>,
}

struct State<T> {
    current: Arc<T>,
    stamps: Vec<Stamp>,
    checked: Instant,
}

fn stamps(files: &[PathBuf]) -> Vec<Stamp> {
    files
        .iter()
        .map(|path| {
            let meta = std::fs::metadata(path).ok()?;
            Some((meta.modified().ok()?, meta.len()))
        })
        .collect()
}

impl<T> Reloading<T> {
    /// Builds the first `T`; fails if the files do not load now.
    pub fn new(
        files: Vec<PathBuf>,
        build: impl Fn() -> Result<T, TlsError> + Send + Sync + 'static,
    ) -> Result<Self, TlsError> {
        let stamps = stamps(&files);
        let current = Arc::new(build()?);
        Ok(Reloading {
            files,
            build: Box::new(build),
            state: Mutex::new(State {
                current,
                stamps,
                checked: Instant::now(),
            }),
        })
    }

    /// The configuration for a new connection: rebuilt first if a file
    /// changed since it was built.
    pub fn current(&self) -> Arc<T> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.checked.elapsed() >= CHECK_EVERY {
            state.checked = Instant::now();
            let now = stamps(&self.files);
            if now != state.stamps {
                match (self.build)() {
                    Ok(built) => {
                        tracing::info!(files = ?self.files, "TLS files changed: reloaded");
                        state.current = Arc::new(built);
                        state.stamps = now;
                    }
                    // Not recorded as seen: tried again at the next check,
                    // when the writer may have finished.
                    Err(error) => {
                        tracing::warn!(%error, "TLS files changed but do not load; keeping the previous ones")
                    }
                }
            }
        }
        state.current.clone()
    }

    /// Makes the next [`Reloading::current`] look at the files at once.
    pub fn check_now(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        // `checked_sub`: an `Instant` has no value before the clock's start.
        if let Some(earlier) = Instant::now().checked_sub(CHECK_EVERY) {
            state.checked = earlier;
        }
    }
}
