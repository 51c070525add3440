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
        runtime_spec: None,
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

#[tokio::test]
async fn a_new_manager_resumes_the_log_where_the_old_one_stopped() {
    let (dir, store) = store();
    let log = dir.path().join("logs/c.log");
    let old = ContainerManager::new(store.clone(), Events::new());
    let mut r = record("c1", log.display().to_string());
    old.add(&r).expect("add");
    r = old.mark_started("c1", 1).expect("start");
    let w = old.log_writer(&r).expect("log").expect("writer");
    let out = crate::logs::Stream::Stdout;
    assert!(w.write_at(out, Some(0), b"one\ntw".to_vec()).await);
    assert!(
        w.write_at(crate::logs::Stream::Stderr, Some(0), b"e\n".to_vec())
            .await
    );
    // Let the writer flush, as a running hulld would before it is killed; the
    // unterminated "tw" is still in its framer. The old writer is left as is (a killed
    // hulld closes nothing) until the end of the test.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let killed = (w, old);

    let new = ContainerManager::new(store.clone(), Events::new());
    let (w, at) = new.resume_log_writer(&r).expect("resume").expect("writer");
    assert_eq!(
        (at.stdout, at.stderr),
        (4, 2),
        "everything up to the torn tail"
    );
    // The agent replays from there: "tw" again, then more.
    assert!(w.write_at(out, Some(4), b"two\nthree\n".to_vec()).await);
    w.close().await;
    let text = std::fs::read_to_string(&log).expect("log");
    let lines: Vec<&str> = text
        .lines()
        .map(|l| l.split_once(' ').expect("ts").1)
        .collect();
    assert_eq!(
        lines,
        [
            "stdout F one",
            "stderr F e",
            "stdout F two",
            "stdout F three"
        ]
    );
    new.forget("c1").await.expect("forget");
    assert!(
        store
            .get::<LogCheckpointRecord>("c1")
            .expect("get")
            .is_none(),
        "the checkpoint goes with the container"
    );
    drop(killed);
}

#[test]
fn verbose_status_info_is_json_objects_as_containerd_gives() {
    let (_dir, store) = store();
    let m = ContainerManager::new(store, Events::new());
    let mut r = record("c1", String::new());
    r.config.metadata = Some(cri::ContainerMetadata {
        name: "app".into(),
        attempt: 2,
    });
    r.config.working_dir = "/srv".into();
    r.runtime_spec = Some(serde_json::json!({"process": {"args": ["sleep", "1"]}}));
    m.add(&r).expect("add");
    let resp = m.status("c1", true).expect("status");
    let info: serde_json::Value = serde_json::from_str(&resp.info["info"]).expect("json");
    assert_eq!(info["config"]["metadata"]["name"], "app", "{info}");
    assert_eq!(info["config"]["metadata"]["attempt"], 2, "{info}");
    assert_eq!(info["config"]["working_dir"], "/srv", "{info}");
    assert_eq!(info["runtimeSpec"]["process"]["args"][0], "sleep", "{info}");
    assert_eq!(info["sandboxID"], "pod", "{info}");
    assert!(m.status("c1", false).expect("status").info.is_empty());
}
