//! Container RPCs through a real hulld over its socket, before any pod exists: lists are
//! empty, unknown ids are NOT_FOUND, the event stream opens and stays quiet.

mod common;

use std::time::Duration;

use common::Hulld;
use futures::StreamExt;
use hull_cri_api as cri;
use hulld::state::{ContainerRecord, ContainerState, Store};

#[tokio::test]
async fn container_reads_on_an_empty_node() {
    let mut hulld = Hulld::configure("");
    hulld.write_cni_config();
    hulld.start();
    let mut rt = hulld.runtime().await;

    let list = rt
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                id: "abc".into(),
                ..Default::default()
            }),
        })
        .await
        .expect("list")
        .into_inner();
    assert!(list.containers.is_empty());

    let err = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: "nope".into(),
            verbose: true,
        })
        .await
        .expect_err("unknown container");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert!(err.message().contains("nope"));

    let err = rt
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: "nope".into(),
        })
        .await
        .expect_err("unknown container");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");

    let mut events = rt
        .get_container_events(cri::GetEventsRequest {})
        .await
        .expect("events")
        .into_inner();
    let quiet = tokio::time::timeout(Duration::from_millis(300), events.next()).await;
    assert!(quiet.is_err(), "no container, no event: {quiet:?}");
}

fn record(id: &str, state: ContainerState) -> ContainerRecord {
    ContainerRecord {
        id: id.into(),
        sandbox_id: "gone-pod".into(),
        state,
        config: cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: id.into(),
                attempt: 0,
            }),
            labels: [("app".to_owned(), id.to_owned())].into(),
            ..Default::default()
        },
        image_ref: "busybox".into(),
        image_id: "sha256:x".into(),
        created_at: 1,
        started_at: 2,
        finished_at: 0,
        exit_code: 0,
        reason: String::new(),
        message: String::new(),
        log_path: String::new(),
        runtime_spec: None,
    }
}

/// What a hulld that was killed left in its store is listed by the next one; a container
/// recorded as running whose pod VM is gone is EXITED (255) after the restart.
#[tokio::test]
async fn containers_survive_a_restart_and_lost_ones_are_exited() {
    let mut hulld = Hulld::configure("");
    hulld.write_cni_config();
    {
        let path = hulld.root().join("lib/metadata.redb");
        let store = Store::open(&path, &hulld::state::tables()).expect("store");
        store
            .put(&record("running1", ContainerState::Running))
            .expect("put");
        store
            .put(&record("created1", ContainerState::Created))
            .expect("put");
    }
    hulld.start();
    let mut rt = hulld.runtime().await;
    let list = rt
        .list_containers(cri::ListContainersRequest { filter: None })
        .await
        .expect("list")
        .into_inner()
        .containers;
    let mut ids: Vec<&str> = list.iter().map(|c| c.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["created1", "running1"]);
    let status = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: "runn".into(),
            verbose: false,
        })
        .await
        .expect("status by prefix")
        .into_inner()
        .status
        .expect("status");
    assert_eq!(status.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(status.exit_code, 255);
    assert!(status.finished_at > 0);
    let exited = rt
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                state: Some(cri::ContainerStateValue {
                    state: cri::ContainerState::ContainerCreated as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .expect("list")
        .into_inner()
        .containers;
    assert_eq!(exited.len(), 1);
    assert_eq!(exited[0].id, "created1");
}
