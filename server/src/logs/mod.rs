//! The CRI log writer: one per container, fed with the container's stdout/stderr chunks
//! and writing the CRI log format (see [`format`]) to the container's log path.
//!
//! The producer (the task reading the agent's output streams) never waits on the disk for
//! longer than [`LogConfig::max_block`]: chunks go through a bounded queue to a writer on
//! the blocking pool, and a chunk that cannot be queued in time is dropped and counted
//! (logged with the running total). [`LogWriter::reopen`] is queued behind the data
//! already accepted, so a reopen (kubelet's log rotation) loses no line.

pub mod format;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

pub use format::{LineFramer, Stream, rfc3339_nano};

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("Cannot open the container log {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot create the container log dir {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("The log writer for {0} has stopped")]
    Stopped(PathBuf),
}

/// Bounds of a log writer.
#[derive(Debug, Clone, Copy)]
pub struct LogConfig {
    /// Longest line content before it is split into `P` lines (containerd: 16 KiB).
    pub max_line: usize,
    /// Chunks queued between producer and disk.
    pub queue: usize,
    /// How long a producer may wait for room in the queue before its chunk is dropped.
    pub max_block: Duration,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            max_line: 16 * 1024,
            queue: 256,
            max_block: Duration::from_millis(200),
        }
    }
}

enum Msg {
    Data {
        stream: Stream,
        ts: i64,
        data: Vec<u8>,
    },
    Eof(Stream),
    Reopen(oneshot::Sender<Result<(), LogError>>),
    Close(oneshot::Sender<()>),
}

/// Handle on a container's log writer; cheap to clone.
#[derive(Clone)]
pub struct LogWriter {
    path: Arc<PathBuf>,
    tx: mpsc::Sender<Msg>,
    max_block: Duration,
    dropped_chunks: Arc<AtomicU64>,
    dropped_bytes: Arc<AtomicU64>,
}

impl std::fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogWriter")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn open_log(path: &Path) -> Result<File, LogError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| LogError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| LogError::Open {
            path: path.to_owned(),
            source,
        })
}

impl LogWriter {
    /// Opens (appending) `path` and starts the writer. Needs a tokio runtime.
    pub fn open(path: &Path, config: LogConfig) -> Result<Self, LogError> {
        let file = open_log(path)?;
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let path = Arc::new(path.to_owned());
        let worker_path = Arc::clone(&path);
        tokio::task::spawn_blocking(move || write_loop(&worker_path, file, rx, config.max_line));
        Ok(Self {
            path,
            tx,
            max_block: config.max_block,
            dropped_chunks: Arc::new(AtomicU64::new(0)),
            dropped_bytes: Arc::new(AtomicU64::new(0)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues a chunk of `stream`, stamped now. Waits at most `max_block` for room;
    /// then drops the chunk and counts it. Returns whether the chunk was accepted.
    pub async fn write(&self, stream: Stream, data: Vec<u8>) -> bool {
        if data.is_empty() {
            return true;
        }
        let len = data.len() as u64;
        let msg = Msg::Data {
            stream,
            ts: crate::state::now_nanos(),
            data,
        };
        let sent = match self.tx.try_send(msg) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
            Err(mpsc::error::TrySendError::Full(msg)) => {
                matches!(
                    tokio::time::timeout(self.max_block, self.tx.send(msg)).await,
                    Ok(Ok(()))
                )
            }
        };
        if !sent {
            let chunks = self.dropped_chunks.fetch_add(1, Ordering::Relaxed) + 1;
            let bytes = self.dropped_bytes.fetch_add(len, Ordering::Relaxed) + len;
            if chunks.is_power_of_two() {
                tracing::warn!(log = %self.path.display(), chunks, bytes,
                    "container log is not keeping up: output dropped");
            }
        }
        sent
    }

    /// The stream ended: its unterminated tail is written as a partial line.
    pub async fn end(&self, stream: Stream) {
        let _ = self.tx.send(Msg::Eof(stream)).await;
    }

    /// Chunks and bytes dropped so far because the writer did not keep up.
    pub fn dropped(&self) -> (u64, u64) {
        (
            self.dropped_chunks.load(Ordering::Relaxed),
            self.dropped_bytes.load(Ordering::Relaxed),
        )
    }

    /// Closes and reopens the log path (after kubelet renamed it), once every chunk
    /// accepted before this call has been written to the old file.
    pub async fn reopen(&self) -> Result<(), LogError> {
        let (tx, rx) = oneshot::channel();
        let stopped = || LogError::Stopped(self.path.to_path_buf());
        self.tx.send(Msg::Reopen(tx)).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Writes what is queued (tails as partial lines) and stops the writer.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

fn write_loop(path: &Path, file: File, mut rx: mpsc::Receiver<Msg>, max_line: usize) {
    let mut file = Some(file);
    let mut out = Vec::with_capacity(64 * 1024);
    let mut stdout = LineFramer::new(Stream::Stdout, max_line);
    let mut stderr = LineFramer::new(Stream::Stderr, max_line);
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            Msg::Data { stream, ts, data } => {
                let framer = match stream {
                    Stream::Stdout => &mut stdout,
                    Stream::Stderr => &mut stderr,
                };
                framer.feed(ts, &data, &mut out);
            }
            Msg::Eof(Stream::Stdout) => stdout.finish(&mut out),
            Msg::Eof(Stream::Stderr) => stderr.finish(&mut out),
            Msg::Reopen(reply) => {
                flush(path, &mut file, &mut out);
                let reopened = open_log(path);
                let _ = reply.send(reopened.map(|f| {
                    file = Some(f);
                }));
                continue;
            }
            Msg::Close(reply) => {
                stdout.finish(&mut out);
                stderr.finish(&mut out);
                flush(path, &mut file, &mut out);
                let _ = reply.send(());
                return;
            }
        }
        // Batch: write once the queue is drained or the buffer is large.
        if rx.is_empty() || out.len() >= 64 * 1024 {
            flush(path, &mut file, &mut out);
        }
    }
    stdout.finish(&mut out);
    stderr.finish(&mut out);
    flush(path, &mut file, &mut out);
}

fn flush(path: &Path, file: &mut Option<File>, out: &mut Vec<u8>) {
    if out.is_empty() {
        return;
    }
    if let Some(f) = file.as_mut()
        && let Err(e) = f.write_all(out)
    {
        tracing::warn!(log = %path.display(), error = %e, bytes = out.len(),
            "cannot write container log");
    }
    out.clear();
}

#[cfg(test)]
mod tests;
