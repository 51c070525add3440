use futures::StreamExt;

use super::*;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("m.redb"), &crate::state::tables()).expect("store");
    (dir, store)
}

fn record(id: &str, log_path: String) -> ContainerRecord {
    ContainerRecord {
        id: id.into(),
        sandbox_id: "pod".into(),
        state: ContainerState::Created,
        config: cri::ContainerConfig::default(),
        image_ref: "busybox".into(),
        image_id: "sha256:1".into(),
        created_at: crate::state::now_nanos(),
        started_at: 0,
        finished_at: 0,
        exit_code: 0,
        reason: String::new(),
        message: String::new(),
        log_path,
    }
}

#[tokio::test]
async fn lifecycle_is_persisted_and_announced() {
    let (dir, store) = store();
    let m = ContainerManager::new(store.clone(), Events::new());
    let mut events = m.events().subscribe();
    let log = dir.path().join("logs/c.log");
    m.add(&record("abc123", log.display().to_string()))
        .expect("add");
    m.add(&record("abd456", String::new())).expect("add");
    assert!(matches!(
        m.get("ab"),
        Err(ManagerError::Ambiguous { count: 2, .. })
    ));
    assert_eq!(m.get("abc").expect("prefix").id, "abc123");
    assert!(matches!(m.get("zz"), Err(ManagerError::NotFound(_))));
    assert!(matches!(
        m.reopen_log("abc123").await,
        Err(ReopenError::NotRunning(_))
    ));
    m.mark_started("abc123", 5).expect("start");
    let w = m
        .log_writer(&m.get("abc123").expect("get"))
        .expect("log")
        .expect("writer");
    w.write(crate::logs::Stream::Stdout, b"one\n".to_vec())
        .await;
    std::fs::rename(&log, dir.path().join("logs/c.log.1")).expect("rotate");
    m.reopen_log("abc").await.expect("reopen");
    w.write(crate::logs::Stream::Stdout, b"two\n".to_vec())
        .await;
    let exit = Exit {
        exit_code: 137,
        oom_killed: true,
        finished_at: 9,
    };
    let r = m.mark_exited("abc123", exit).expect("exit");
    assert_eq!(
        (r.reason.as_str(), r.exit_code, r.finished_at),
        ("OOMKilled", 137, 9)
    );
    // A second exit report is ignored.
    let again = Exit {
        exit_code: 1,
        oom_killed: false,
        finished_at: 10,
    };
    assert_eq!(m.mark_exited("abc123", again).expect("exit").exit_code, 137);
    let listed = m.list(None).expect("list");
    assert_eq!(listed.len(), 2);
    let status = m.status("abc123", true).expect("status");
    assert!(status.info["info"].contains("sandboxID"));
    assert_eq!(
        status.status.expect("status").state,
        cri::ContainerState::ContainerExited as i32
    );
    m.forget("abc123").await.expect("forget");
    m.forget("abc123").await.expect("forget is idempotent");
    assert_eq!(m.list(None).expect("list").len(), 1);
    let kinds: Vec<i32> = (0..5)
        .map(|_| {
            futures::executor::block_on(events.next())
                .expect("event")
                .expect("ok")
                .container_event_type
        })
        .collect();
    use ContainerEventType as E;
    assert_eq!(
        kinds,
        [
            E::ContainerCreatedEvent,
            E::ContainerCreatedEvent,
            E::ContainerStartedEvent,
            E::ContainerStoppedEvent,
            E::ContainerDeletedEvent
        ]
        .map(|e| e as i32)
    );
    let old = std::fs::read_to_string(dir.path().join("logs/c.log.1")).expect("old log");
    let new = std::fs::read_to_string(&log).expect("new log");
    assert!(
        old.ends_with(" stdout F one\n") && new.ends_with(" stdout F two\n"),
        "{old:?} {new:?}"
    );
}

#[test]
fn exit_reasons() {
    let e = |exit_code, oom_killed| {
        exit_reason(Exit {
            exit_code,
            oom_killed,
            finished_at: 0,
        })
    };
    assert_eq!(e(0, false), "Completed");
    assert_eq!(e(1, false), "Error");
    assert_eq!(e(137, true), "OOMKilled");
}
