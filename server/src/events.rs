//! The CRI event feed (`GetContainerEvents`, kubelet's Evented PLEG): container and pod
//! sandbox lifecycle events, broadcast to every subscriber.
//!
//! Publishers never wait: a subscriber that falls more than [`CAPACITY`] events behind
//! misses the oldest ones (logged), like containerd's event fan-out.

use std::pin::Pin;

use futures::Stream;
use hull_cri_api as cri;
use tokio::sync::broadcast;

pub use cri::ContainerEventType;

/// Events kept for a slow subscriber.
pub const CAPACITY: usize = 1024;

/// A subscriber's event stream, in the shape the tonic service returns.
pub type EventStream =
    Pin<Box<dyn Stream<Item = Result<cri::ContainerEventResponse, tonic::Status>> + Send>>;

/// The event broadcaster; cheap to clone.
#[derive(Debug, Clone)]
pub struct Events {
    tx: broadcast::Sender<cri::ContainerEventResponse>,
}

impl Default for Events {
    fn default() -> Self {
        Self::new()
    }
}

impl Events {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(CAPACITY);
        Self { tx }
    }

    /// Publishes an event to every current subscriber (none: the event is dropped).
    pub fn publish(&self, event: cri::ContainerEventResponse) {
        tracing::debug!(
            id = %event.container_id,
            kind = ?ContainerEventType::try_from(event.container_event_type),
            "event"
        );
        let _ = self.tx.send(event);
    }

    /// A container event: `status` is the container's status after the change, `sandbox`
    /// its pod's status when known.
    pub fn container(
        &self,
        kind: ContainerEventType,
        status: cri::ContainerStatus,
        sandbox: Option<cri::PodSandboxStatus>,
    ) {
        self.publish(cri::ContainerEventResponse {
            container_id: status.id.clone(),
            container_event_type: kind as i32,
            created_at: crate::state::now_nanos(),
            pod_sandbox_status: sandbox,
            containers_statuses: vec![status],
        });
    }

    /// A pod sandbox event (for the sandbox code: RunPodSandbox → `ContainerCreatedEvent`
    /// and `ContainerStartedEvent`, StopPodSandbox → `ContainerStoppedEvent`,
    /// RemovePodSandbox → `ContainerDeletedEvent`, as containerd does). `container_id` is
    /// the sandbox id, as kubelet expects.
    pub fn sandbox(
        &self,
        kind: ContainerEventType,
        sandbox: cri::PodSandboxStatus,
        containers: Vec<cri::ContainerStatus>,
    ) {
        self.publish(cri::ContainerEventResponse {
            container_id: sandbox.id.clone(),
            container_event_type: kind as i32,
            created_at: crate::state::now_nanos(),
            pod_sandbox_status: Some(sandbox),
            containers_statuses: containers,
        });
    }

    /// Subscribes: the stream yields every event published from now on.
    pub fn subscribe(&self) -> EventStream {
        let rx = self.tx.subscribe();
        Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(ev) => return Some((Ok(ev), rx)),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "event subscriber too slow: events dropped");
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        }))
    }

    /// Current subscribers.
    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    fn status(id: &str) -> cri::ContainerStatus {
        cri::ContainerStatus {
            id: id.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn subscribers_get_events_in_order() {
        let ev = Events::new();
        ev.container(
            ContainerEventType::ContainerCreatedEvent,
            status("gone"),
            None,
        );
        let mut a = ev.subscribe();
        let mut b = ev.subscribe();
        assert_eq!(ev.subscribers(), 2);
        ev.container(
            ContainerEventType::ContainerCreatedEvent,
            status("c1"),
            None,
        );
        ev.container(
            ContainerEventType::ContainerStartedEvent,
            status("c1"),
            None,
        );
        let sandbox = cri::PodSandboxStatus {
            id: "s1".into(),
            ..Default::default()
        };
        ev.sandbox(
            ContainerEventType::ContainerStoppedEvent,
            sandbox,
            vec![status("c1")],
        );
        for s in [&mut a, &mut b] {
            let e1 = s.next().await.expect("e1").expect("ok");
            assert_eq!(e1.container_id, "c1");
            assert_eq!(
                e1.container_event_type,
                ContainerEventType::ContainerCreatedEvent as i32
            );
            assert!(e1.created_at > 0);
            let e2 = s.next().await.expect("e2").expect("ok");
            assert_eq!(
                e2.container_event_type,
                ContainerEventType::ContainerStartedEvent as i32
            );
            let e3 = s.next().await.expect("e3").expect("ok");
            assert_eq!(e3.container_id, "s1");
            assert_eq!(e3.pod_sandbox_status.map(|p| p.id).as_deref(), Some("s1"));
            assert_eq!(e3.containers_statuses.len(), 1);
        }
        drop(a);
        assert_eq!(ev.subscribers(), 1);
    }

    #[tokio::test]
    async fn a_slow_subscriber_loses_old_events_not_the_stream() {
        let ev = Events::new();
        let mut s = ev.subscribe();
        for i in 0..CAPACITY + 10 {
            ev.container(
                ContainerEventType::ContainerCreatedEvent,
                status(&i.to_string()),
                None,
            );
        }
        let first = s.next().await.expect("event").expect("ok");
        assert_eq!(first.container_id, "10", "the 10 oldest were dropped");
        ev.container(
            ContainerEventType::ContainerDeletedEvent,
            status("last"),
            None,
        );
        let mut last = None;
        for _ in 0..CAPACITY {
            last = s.next().await;
        }
        assert_eq!(last.expect("event").expect("ok").container_id, "last");
    }
}
