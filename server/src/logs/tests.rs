use super::*;

fn lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).expect("read log");
    text.lines()
        .map(|l| {
            let (ts, rest) = l.split_once(' ').expect("timestamp");
            assert!(ts.ends_with('Z') && ts.contains('T'), "timestamp {ts}");
            rest.to_owned()
        })
        .collect()
}

#[tokio::test]
async fn writes_both_streams_and_tails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sub/0.log");
    let w = LogWriter::open(&path, LogConfig::default()).expect("open");
    assert!(w.write(Stream::Stdout, b"hello\nwor".to_vec()).await);
    assert!(w.write(Stream::Stderr, b"oops\n".to_vec()).await);
    assert!(w.write(Stream::Stdout, b"ld\nno newline".to_vec()).await);
    w.end(Stream::Stdout).await;
    w.close().await;
    assert_eq!(
        lines(&path),
        [
            "stdout F hello",
            "stderr F oops",
            "stdout F world",
            "stdout P no newline"
        ]
    );
    assert_eq!(w.dropped(), (0, 0));
}

#[tokio::test]
async fn reopen_switches_files_without_losing_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.log");
    let w = LogWriter::open(&path, LogConfig::default()).expect("open");
    for i in 0..100 {
        w.write(Stream::Stdout, format!("line {i}\n").into_bytes())
            .await;
    }
    // kubelet rotates: rename, then ReopenContainerLog.
    let rotated = dir.path().join("c.log.1");
    std::fs::rename(&path, &rotated).expect("rename");
    for i in 100..150 {
        w.write(Stream::Stdout, format!("line {i}\n").into_bytes())
            .await;
    }
    w.reopen().await.expect("reopen");
    for i in 150..200 {
        w.write(Stream::Stdout, format!("line {i}\n").into_bytes())
            .await;
    }
    w.close().await;
    let mut all = lines(&rotated);
    let new = lines(&path);
    assert_eq!(new.len(), 50, "only lines after the reopen in the new file");
    all.extend(new);
    let want: Vec<String> = (0..200).map(|i| format!("stdout F line {i}")).collect();
    assert_eq!(all, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_disk_drops_instead_of_blocking() {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    // A FIFO nobody reads behaves like a disk that stopped: writes block once the pipe
    // buffer (64 KiB) is full.
    let path = dir.path().join("c.log");
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_nonblock())
        .open(&path)
        .expect("open reader");
    let config = LogConfig {
        max_line: 1024,
        queue: 4,
        max_block: Duration::from_millis(20),
    };
    let w = LogWriter::open(&path, config).expect("open");
    for _ in 0..200 {
        // A write that blocks on the stuck disk never returns (nobody reads the FIFO): the
        // timeout tells "returned" from "blocked", 250x max_block so that a loaded machine
        // cannot trip it. That chunks were dropped is checked below.
        tokio::time::timeout(
            Duration::from_secs(5),
            w.write(Stream::Stdout, vec![b'x'; 4096]),
        )
        .await
        .expect("write blocked on a stuck disk");
    }
    let (chunks, bytes) = w.dropped();
    assert!(
        chunks > 100,
        "a stuck disk must drop chunks, dropped {chunks}"
    );
    assert_eq!(bytes, chunks * 4096);
    // Unstick the disk and check every byte was written or counted.
    let drain = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        got
    });
    w.close().await;
    drop(w);
    let got = drain.join().expect("drain");
    let text = String::from_utf8(got).expect("utf8");
    let written: usize = text.lines().map(|l| l.matches('x').count()).sum();
    assert_eq!(
        written as u64 + bytes,
        200 * 4096,
        "every byte written or counted"
    );
}

fn libc_nonblock() -> i32 {
    nix::fcntl::OFlag::O_NONBLOCK.bits()
}

#[tokio::test]
async fn write_after_close_is_counted_as_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let w = LogWriter::open(&dir.path().join("c.log"), LogConfig::default()).expect("open");
    w.close().await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!w.write(Stream::Stdout, b"late\n".to_vec()).await);
    assert_eq!(w.dropped(), (1, 5));
    assert!(w.reopen().await.is_err());
}

#[tokio::test]
async fn offsets_skip_overlaps_count_gaps_and_resume_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.log");
    let seen = Arc::new(std::sync::Mutex::new(Vec::<LogCheckpoint>::new()));
    let sink: CheckpointSink = {
        let seen = Arc::clone(&seen);
        Arc::new(move |c| seen.lock().expect("lock").push(c))
    };
    let w = LogWriter::open_at(&path, LogConfig::default(), Resume::default(), Some(sink))
        .expect("open");
    assert!(w.write_at(Stream::Stdout, Some(0), b"a\nb".to_vec()).await);
    // A resumed read that starts one byte early: "b" is not written twice.
    assert!(
        w.write_at(Stream::Stdout, Some(2), b"b\nc\n".to_vec())
            .await
    );
    // The agent dropped bytes 6..10: a gap, counted.
    assert!(w.write_at(Stream::Stdout, Some(10), b"x\n".to_vec()).await);
    assert!(w.write_at(Stream::Stderr, Some(0), b"e\n".to_vec()).await);
    w.close().await;
    assert_eq!(
        lines(&path),
        [
            "stdout F a",
            "stdout F b",
            "stdout F c",
            "stdout F x",
            "stderr F e"
        ]
    );
    assert_eq!(w.dropped().1, 4);
    let last = *seen.lock().expect("lock").last().expect("a checkpoint");
    assert_eq!((last.stdout, last.stderr), (12, 2));
    assert_eq!(last.log_len, std::fs::metadata(&path).expect("meta").len());

    // The gap was checkpointed when it was seen. A crash after more lines than that
    // checkpoint knows, the last one torn: resuming counts the complete ones and cuts the
    // torn one.
    let at_gap = seen
        .lock()
        .expect("lock")
        .iter()
        .copied()
        .find(|c| c.stdout == 10)
        .expect("a checkpoint at the gap");
    let mut f = OpenOptions::new().append(true).open(&path).expect("open");
    f.write_all(b"2023-11-14T22:13:20Z stdout P to")
        .expect("torn");
    drop(f);
    let (at, _) = resume::resume(&path, Some(at_gap)).expect("resume");
    assert_eq!(
        at,
        Resume {
            stdout: 12,
            stderr: 2
        }
    );
    let w = LogWriter::open_at(&path, LogConfig::default(), at, None).expect("reopen");
    assert!(
        w.write_at(Stream::Stdout, Some(10), b"x\ny\n".to_vec())
            .await
    );
    w.close().await;
    assert_eq!(lines(&path).len(), 6, "{:?}", lines(&path));
    assert_eq!(lines(&path)[5], "stdout F y");
}
