//! The output hub of one process stream (stdout or stderr).
//!
//! The agent reads every stream continuously, from the moment the process is spawned, into
//! a bounded ring ([`CAPACITY`] bytes per stream) that remembers the stream offset of each
//! byte (bytes since the process started). A process therefore never blocks on a slow or
//! absent reader: when the ring is full the oldest bytes are dropped, counted and logged.
//!
//! Any number of readers ([`OutputHub::subscribe_limited`]) follow the stream at once, each from
//! its own offset: hulld's log writer, an attach, and a log writer re-attaching after a
//! hulld restart from the offset its log file ended at. A reader's stream ends once the
//! process side closed (EOF: the process and everything holding the stream exited) and the
//! reader got every byte still held.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Read;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{mpsc, watch};

/// Bytes held per stream for readers that lag or are absent.
pub const CAPACITY: usize = 2 << 20;
/// Largest chunk handed to a reader (and read from the process at once).
pub const CHUNK: usize = 32 * 1024;

/// What [`OutputHub::read`] found at an offset.
#[derive(Debug, PartialEq, Eq)]
pub enum Fetch {
    /// Bytes starting at `offset`; `offset` is above the asked one when bytes were dropped.
    Data { offset: u64, data: Vec<u8> },
    /// Nothing yet; wait for more.
    Pending,
    /// The stream ended and everything from the offset on was delivered.
    Eof,
}

#[derive(Debug)]
struct Ring {
    data: VecDeque<u8>,
    /// Stream offset of `data[0]`.
    start: u64,
    eof: bool,
    dropped: u64,
    capacity: usize,
}

impl Ring {
    fn end(&self) -> u64 {
        self.start + self.data.len() as u64
    }
}

/// One stream's buffer and its readers' wake-up signal.
#[derive(Debug)]
pub struct OutputHub {
    label: String,
    ring: Mutex<Ring>,
    /// Bumped after every append and at EOF.
    changed: watch::Sender<u64>,
}

impl OutputHub {
    pub fn new(label: String, capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            label,
            ring: Mutex::new(Ring {
                data: VecDeque::new(),
                start: 0,
                eof: false,
                dropped: 0,
                capacity: capacity.max(1),
            }),
            changed: watch::channel(0).0,
        })
    }

    /// A hub that has already ended with no output (stderr of a process with a terminal).
    pub fn empty(label: String) -> Arc<Self> {
        let hub = Self::new(label, 1);
        hub.close();
        hub
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends output; drops the oldest bytes beyond the capacity.
    pub fn push(&self, bytes: &[u8]) {
        let mut r = self.ring();
        r.data.extend(bytes);
        let over = r.data.len().saturating_sub(r.capacity);
        if over > 0 {
            r.data.drain(..over);
            r.start += over as u64;
            let before = r.dropped;
            r.dropped += over as u64;
            // Logged when the total crosses a power of two: bounded log volume.
            if before == 0 || (before.ilog2() != r.dropped.ilog2()) {
                tracing::warn!(stream = %self.label, dropped_bytes = r.dropped,
                    "output not read in time: oldest bytes dropped");
            }
        }
        let end = r.end();
        drop(r);
        self.changed.send_replace(end);
    }

    /// The process side of the stream ended.
    pub fn close(&self) {
        let mut r = self.ring();
        r.eof = true;
        let end = r.end();
        drop(r);
        self.changed.send_replace(end);
    }

    /// The offset the next byte of output will have.
    pub fn end(&self) -> u64 {
        self.ring().end()
    }

    /// Bytes dropped so far because no reader took them in time.
    #[cfg(test)]
    pub fn dropped(&self) -> u64 {
        self.ring().dropped
    }

    /// Up to `max` bytes from `offset` (or from the oldest byte held, if that is later).
    pub fn read(&self, offset: u64, max: usize) -> Fetch {
        let r = self.ring();
        let from = offset.max(r.start);
        if from >= r.end() {
            return if r.eof { Fetch::Eof } else { Fetch::Pending };
        }
        // from - start < data.len() <= capacity: fits in usize.
        let skip = usize::try_from(from - r.start).unwrap_or(usize::MAX);
        let (a, b) = r.data.as_slices();
        let want = max.min(r.data.len() - skip);
        let mut data = Vec::with_capacity(want);
        if skip < a.len() {
            let take = want.min(a.len() - skip);
            data.extend_from_slice(&a[skip..skip + take]);
            data.extend_from_slice(&b[..want - take]);
        } else {
            let skip = skip - a.len();
            data.extend_from_slice(&b[skip..skip + want]);
        }
        Fetch::Data { offset: from, data }
    }

    /// A reader from `offset` (`None`: from the current end, only new output). Chunks
    /// carry their offset; the channel closes at EOF or when the receiver is dropped.
    #[cfg(test)]
    pub fn subscribe(self: &Arc<Self>, offset: Option<u64>) -> mpsc::Receiver<(u64, Vec<u8>)> {
        self.subscribe_limited(offset, None)
    }

    /// A reader from `offset` (`None`: from the current end, only new output) that also
    /// closes the channel once `limit` bytes were handed out (the last chunk cut to fit).
    pub fn subscribe_limited(
        self: &Arc<Self>,
        offset: Option<u64>,
        limit: Option<u64>,
    ) -> mpsc::Receiver<(u64, Vec<u8>)> {
        let (tx, rx) = mpsc::channel(4);
        let hub = Arc::clone(self);
        let mut pos = offset.unwrap_or_else(|| hub.end());
        let mut left = limit.unwrap_or(u64::MAX);
        tokio::spawn(async move {
            while left > 0 {
                // Subscribed before reading: an append after the read wakes us.
                let mut changed = hub.changed.subscribe();
                let max = usize::try_from(left).unwrap_or(usize::MAX).min(CHUNK);
                match hub.read(pos, max) {
                    Fetch::Data { offset, data } => {
                        pos = offset + data.len() as u64;
                        left -= data.len() as u64;
                        if tx.send((offset, data)).await.is_err() {
                            return;
                        }
                    }
                    Fetch::Eof => return,
                    Fetch::Pending => {
                        tokio::select! {
                            r = changed.changed() => if r.is_err() { return },
                            () = tx.closed() => return,
                        }
                    }
                }
            }
        });
        rx
    }
}

/// Reads `file` (a pipe or a pty master) into `hub` on a thread of its own until EOF (or
/// EIO: a pty whose other side is closed), then closes the hub.
pub fn pump(mut file: File, hub: Arc<OutputHub>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("output".to_owned())
        .stack_size(64 * 1024)
        .spawn(move || {
            let mut buf = vec![0u8; CHUNK];
            loop {
                match file.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => hub.push(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            hub.close();
        })
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_offsets_and_drops_oldest() {
        let hub = OutputHub::new("t".into(), 8);
        hub.push(b"abcde");
        assert_eq!(
            hub.read(0, 100),
            Fetch::Data {
                offset: 0,
                data: b"abcde".to_vec()
            }
        );
        assert_eq!(
            hub.read(3, 1),
            Fetch::Data {
                offset: 3,
                data: b"d".to_vec()
            }
        );
        assert_eq!(hub.read(5, 100), Fetch::Pending);
        hub.push(b"fghij");
        // 10 bytes into 8: "ab" dropped; a reader at 0 resumes at 2.
        assert_eq!(hub.dropped(), 2);
        assert_eq!(
            hub.read(0, 100),
            Fetch::Data {
                offset: 2,
                data: b"cdefghij".to_vec()
            }
        );
        assert_eq!(hub.end(), 10);
        // Reads across the ring's wrap point, in small pieces.
        let mut got = Vec::new();
        let mut at = 2;
        while let Fetch::Data { offset, data } = hub.read(at, 3) {
            assert_eq!(offset, at);
            at += data.len() as u64;
            got.extend(data);
        }
        assert_eq!(got, b"cdefghij");
        hub.close();
        assert_eq!(hub.read(10, 100), Fetch::Eof);
        assert!(matches!(hub.read(9, 100), Fetch::Data { offset: 9, .. }));
    }

    async fn collect(mut rx: mpsc::Receiver<(u64, Vec<u8>)>) -> Vec<u8> {
        let mut out = Vec::new();
        let mut next = None;
        while let Some((off, data)) = rx.recv().await {
            if let Some(n) = next {
                assert_eq!(off, n, "chunks are contiguous");
            }
            next = Some(off + data.len() as u64);
            out.extend(data);
        }
        out
    }

    #[tokio::test]
    async fn many_readers_each_get_everything_from_their_offset() {
        let hub = OutputHub::new("t".into(), 1 << 20);
        hub.push(b"early ");
        let all = tokio::spawn(collect(hub.subscribe(Some(0))));
        let resumed = tokio::spawn(collect(hub.subscribe(Some(3))));
        let tail = hub.subscribe(None);
        let writer = {
            let hub = Arc::clone(&hub);
            std::thread::spawn(move || {
                for i in 0..1000 {
                    hub.push(format!("{i}\n").as_bytes());
                }
                hub.close();
            })
        };
        let tail = tokio::spawn(collect(tail));
        writer.join().expect("writer");
        let all = all.await.expect("all");
        let mut want = b"early ".to_vec();
        for i in 0..1000 {
            want.extend(format!("{i}\n").as_bytes());
        }
        assert_eq!(all, want);
        assert_eq!(resumed.await.expect("resumed"), want[3..]);
        let tail = tail.await.expect("tail");
        assert!(want.ends_with(&tail), "a tail reader gets a suffix");
        // A reader that arrives after EOF still gets what is held, then the end.
        assert_eq!(collect(hub.subscribe(Some(0))).await, want);
        assert!(
            collect(OutputHub::empty("e".into()).subscribe(Some(0)))
                .await
                .is_empty()
        );
    }

    #[tokio::test]
    async fn a_limited_reader_stops_at_its_limit() {
        let hub = OutputHub::new("t".into(), 1 << 20);
        hub.push(b"0123456789");
        let limited = hub.subscribe_limited(Some(2), Some(5));
        assert_eq!(
            collect(limited).await,
            b"23456",
            "cut to the limit, no EOF needed"
        );
        // An endless stream: the reader ends at the limit while the writer goes on.
        let rx = hub.subscribe_limited(Some(0), Some(100 << 10));
        let writer = {
            let hub = Arc::clone(&hub);
            tokio::spawn(async move {
                for _ in 0..64 {
                    hub.push(&[b'y'; 4096]);
                    tokio::task::yield_now().await;
                }
            })
        };
        let got = collect(rx).await;
        assert_eq!(got.len(), 100 << 10);
        writer.await.expect("writer");
    }

    #[test]
    fn a_writer_never_blocks_without_readers() {
        // 8 MiB into a 1 MiB hub nobody reads: the writer finishes (the pump drains the
        // pipe), the oldest 7 MiB are dropped and counted, the newest MiB is kept.
        let (r, w) = nix::unistd::pipe().expect("pipe");
        let hub = OutputHub::new("slow".into(), 1 << 20);
        pump(File::from(r), Arc::clone(&hub)).expect("pump");
        let writer = std::thread::spawn(move || {
            let mut w = File::from(w);
            let block = vec![b'x'; 64 * 1024];
            for _ in 0..128 {
                std::io::Write::write_all(&mut w, &block).expect("write");
            }
        });
        writer.join().expect("the writer finished");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while hub.end() < 8 << 20 {
            assert!(
                std::time::Instant::now() < deadline,
                "pump stuck at {}",
                hub.end()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(hub.dropped(), 7 << 20);
        assert!(matches!(hub.read(0, CHUNK), Fetch::Data { offset, .. } if offset == 7 << 20));
    }

    #[tokio::test]
    async fn pump_reads_a_pipe_to_eof() {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        let hub = OutputHub::new("p".into(), 1 << 20);
        pump(File::from(r), Arc::clone(&hub)).expect("pump");
        let rx = hub.subscribe(Some(0));
        let mut w = File::from(w);
        std::io::Write::write_all(&mut w, b"hello\nworld").expect("write");
        drop(w);
        assert_eq!(collect(rx).await, b"hello\nworld");
    }
}
