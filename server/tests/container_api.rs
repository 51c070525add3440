//! Container RPCs through a real hulld over its socket, before any pod exists: lists are
//! empty, unknown ids are NOT_FOUND, the event stream opens and stays quiet.

mod common;

use std::time::Duration;

use common::Hulld;
use futures::StreamExt;
use hull_cri_api as cri;

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
