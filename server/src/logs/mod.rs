//! The CRI log writer: one per container, fed with the container's stdout/stderr chunks
//! and writing the CRI log format (see [`mod@format`]) to the container's log path.
//!
//! Chunks go through a bounded queue to a writer on the blocking pool. With
//! [`LogWriter::write`] the producer never waits on the disk for longer than
//! [`LogConfig::max_block`]: a chunk that cannot be queued in time is dropped and counted
//! (logged with the running total). hulld's pumps use [`LogWriter::write_at`] instead,
//! see below. [`LogWriter::reopen`] is queued behind the data
//! already accepted, so a reopen (kubelet's log rotation) loses no line.
//!
//! **Offsets and restarts.** Chunks from the agent carry their stream offset (bytes since
//! the process started). The writer tracks, per stream, the offset of the next byte it
//! expects: an overlap (a resumed read that starts early) is skipped, a jump (bytes the
//! agent dropped because nobody read them in time) is counted and logged. After each
//! flush (at most every [`CHECKPOINT_EVERY`], and at open, reopen and close) it hands a
//! [`LogCheckpoint`] — log inode and length with the offsets of what the file holds — to
//! a sink (hulld stores it). A restarted hulld computes from it and the log file's tail
//! where each stream continues ([`resume::resume`]), so no line is lost or repeated.
//! [`LogWriter::write_at`] applies back-pressure instead of dropping: the agent's bounded
//! buffer is what absorbs a slow disk, so the container still never blocks.

pub mod format;
pub mod resume;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

pub use crate::state::LogCheckpoint;
pub use format::{LineFramer, Stream, rfc3339_nano};
pub use resume::Resume;

/// How often, at most, a writer with a sink reports a checkpoint while data flows.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(2);

/// Receives the writer's checkpoints (called on the writer's blocking thread).
pub type CheckpointSink = Arc<dyn Fn(LogCheckpoint) + Send + Sync>;

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
        /// Stream offset of `data[0]`; `None` (an agent without offsets): contiguous.
        offset: Option<u64>,
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
        Self::open_at(path, config, Resume::default(), None)
    }

    /// Opens (appending) `path` with both streams continuing at `resume`; checkpoints go
    /// to `sink`. Needs a tokio runtime.
    pub fn open_at(
        path: &Path,
        config: LogConfig,
        resume: Resume,
        sink: Option<CheckpointSink>,
    ) -> Result<Self, LogError> {
        let file = open_log(path)?;
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let path = Arc::new(path.to_owned());
        let dropped_bytes = Arc::new(AtomicU64::new(0));
        let worker = Worker {
            path: Arc::clone(&path),
            file: Some(file),
            out: Vec::with_capacity(64 * 1024),
            streams: [
                StreamState::new(Stream::Stdout, config.max_line, resume.stdout),
                StreamState::new(Stream::Stderr, config.max_line, resume.stderr),
            ],
            sink,
            last_checkpoint: None,
            lost: Arc::clone(&dropped_bytes),
        };
        tokio::task::spawn_blocking(move || worker.run(rx));
        Ok(Self {
            path,
            tx,
            max_block: config.max_block,
            dropped_chunks: Arc::new(AtomicU64::new(0)),
            dropped_bytes,
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
            offset: None,
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

    /// Queues a chunk of `stream` at stream `offset`, stamped now, waiting for room as
    /// long as it takes (back-pressure to the agent, whose buffer is bounded). Returns
    /// false once the writer has stopped.
    pub async fn write_at(&self, stream: Stream, offset: Option<u64>, data: Vec<u8>) -> bool {
        if data.is_empty() {
            return true;
        }
        let msg = Msg::Data {
            stream,
            ts: crate::state::now_nanos(),
            offset,
            data,
        };
        self.tx.send(msg).await.is_ok()
    }

    /// The stream ended: its unterminated tail is written as a partial line.
    pub async fn end(&self, stream: Stream) {
        let _ = self.tx.send(Msg::Eof(stream)).await;
    }

    /// Chunks and bytes dropped so far because the writer did not keep up (bytes include
    /// those the agent dropped, seen as offset jumps).
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

/// One stream's framing and position.
struct StreamState {
    framer: LineFramer,
    /// Offset of the next byte expected from the agent.
    next: u64,
}

impl StreamState {
    fn new(stream: Stream, max_line: usize, next: u64) -> Self {
        Self {
            framer: LineFramer::new(stream, max_line),
            next,
        }
    }

    /// Offset up to which the output is in `out` or the file (the framer's unterminated
    /// tail is not).
    fn committed(&self) -> u64 {
        self.next.saturating_sub(self.framer.pending_len() as u64)
    }
}

/// The blocking half of a writer: framing, batching, files and checkpoints.
struct Worker {
    path: Arc<PathBuf>,
    file: Option<File>,
    out: Vec<u8>,
    streams: [StreamState; 2],
    sink: Option<CheckpointSink>,
    last_checkpoint: Option<std::time::Instant>,
    lost: Arc<AtomicU64>,
}

impl Worker {
    fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        self.checkpoint(true);
        while let Some(msg) = rx.blocking_recv() {
            match msg {
                Msg::Data {
                    stream,
                    ts,
                    offset,
                    data,
                } => self.data(stream, ts, offset, &data),
                Msg::Eof(stream) => {
                    let s = &mut self.streams[index(stream)];
                    s.framer.finish(&mut self.out);
                }
                Msg::Reopen(reply) => {
                    self.flush();
                    let reopened = open_log(&self.path);
                    let _ = reply.send(reopened.map(|f| {
                        self.file = Some(f);
                    }));
                    self.checkpoint(true);
                    continue;
                }
                Msg::Close(reply) => {
                    self.finish();
                    let _ = reply.send(());
                    return;
                }
            }
            // Batch: write once the queue is drained or the buffer is large.
            if rx.is_empty() || self.out.len() >= 64 * 1024 {
                self.flush();
                self.checkpoint(false);
            }
        }
        self.finish();
    }

    fn data(&mut self, stream: Stream, ts: i64, offset: Option<u64>, data: &[u8]) {
        let s = &mut self.streams[index(stream)];
        let offset = offset.unwrap_or(s.next);
        let end = offset + data.len() as u64;
        if end <= s.next {
            return; // Already written (a resumed read starting early).
        }
        let data = if offset < s.next {
            &data[usize::try_from(s.next - offset).unwrap_or(data.len())..]
        } else {
            if offset > s.next {
                let lost = offset - s.next;
                let total = self.lost.fetch_add(lost, Ordering::Relaxed) + lost;
                tracing::warn!(log = %self.path.display(), stream = stream.as_str(), lost,
                    total, "container output lost (not read in time): gap in the log");
                // A line cut by the gap ends as a partial line, and the gap goes into a
                // checkpoint at once: counting lines back after a restart cannot see it.
                s.framer.finish(&mut self.out);
                s.next = offset;
                self.flush();
                self.checkpoint(true);
            }
            data
        };
        let s = &mut self.streams[index(stream)];
        s.framer.feed(ts, data, &mut self.out);
        s.next = end;
    }

    fn finish(&mut self) {
        for s in &mut self.streams {
            s.framer.finish(&mut self.out);
        }
        self.flush();
        self.checkpoint(true);
    }

    fn flush(&mut self) {
        if self.out.is_empty() {
            return;
        }
        if let Some(f) = self.file.as_mut()
            && let Err(e) = f.write_all(&self.out)
        {
            tracing::warn!(log = %self.path.display(), error = %e, bytes = self.out.len(),
                "cannot write container log");
        }
        self.out.clear();
    }

    /// Reports where the (flushed) file stands, if due or `force`d.
    fn checkpoint(&mut self, force: bool) {
        let Some(sink) = &self.sink else { return };
        let due = self
            .last_checkpoint
            .is_none_or(|t| t.elapsed() >= CHECKPOINT_EVERY);
        if !(force || due) || !self.out.is_empty() {
            return;
        }
        let Some(meta) = self.file.as_ref().and_then(|f| f.metadata().ok()) else {
            return;
        };
        self.last_checkpoint = Some(std::time::Instant::now());
        sink(LogCheckpoint {
            ino: std::os::unix::fs::MetadataExt::ino(&meta),
            log_len: meta.len(),
            stdout: self.streams[0].committed(),
            stderr: self.streams[1].committed(),
        });
    }
}

fn index(stream: Stream) -> usize {
    match stream {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

#[cfg(test)]
mod tests;
