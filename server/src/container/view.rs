//! What the CRI reports about a container (ListContainers, ContainerStatus) and the
//! ListContainers / ListContainerStats filters, from hulld's records.

use hull_cri_api as cri;

use crate::state::{ContainerRecord, ContainerState};

pub fn cri_state(s: ContainerState) -> cri::ContainerState {
    match s {
        ContainerState::Created => cri::ContainerState::ContainerCreated,
        ContainerState::Running => cri::ContainerState::ContainerRunning,
        ContainerState::Exited => cri::ContainerState::ContainerExited,
        ContainerState::Unknown => cri::ContainerState::ContainerUnknown,
    }
}

fn image_spec(r: &ContainerRecord) -> cri::ImageSpec {
    let mut spec = r.config.image.clone().unwrap_or_default();
    if spec.image.is_empty() {
        spec.image = r.image_ref.clone();
    }
    spec
}

/// The ListContainers entry.
pub fn to_container(r: &ContainerRecord) -> cri::Container {
    cri::Container {
        id: r.id.clone(),
        pod_sandbox_id: r.sandbox_id.clone(),
        metadata: r.config.metadata.clone(),
        image: Some(image_spec(r)),
        image_ref: r.image_id.clone(),
        state: cri_state(r.state) as i32,
        created_at: r.created_at,
        labels: r.config.labels.clone(),
        annotations: r.config.annotations.clone(),
        image_id: r.image_id.clone(),
    }
}

/// The ContainerStatus body.
pub fn to_status(r: &ContainerRecord) -> cri::ContainerStatus {
    let resources = r
        .config
        .linux
        .as_ref()
        .and_then(|l| l.resources.clone())
        .map(|linux| cri::ContainerResources {
            linux: Some(linux),
            windows: None,
        });
    cri::ContainerStatus {
        id: r.id.clone(),
        metadata: r.config.metadata.clone(),
        state: cri_state(r.state) as i32,
        created_at: r.created_at,
        started_at: r.started_at,
        finished_at: r.finished_at,
        exit_code: r.exit_code,
        image: Some(image_spec(r)),
        image_ref: r.image_id.clone(),
        reason: r.reason.clone(),
        message: r.message.clone(),
        labels: r.config.labels.clone(),
        annotations: r.config.annotations.clone(),
        mounts: r.config.mounts.clone(),
        log_path: r.log_path.clone(),
        resources,
        image_id: r.image_id.clone(),
        user: None,
    }
}

/// ListContainers' filter: id and sandbox id match by prefix (crictl sends truncated
/// ids), state exactly, and every label of the selector.
pub fn matches(r: &ContainerRecord, f: &cri::ContainerFilter) -> bool {
    (f.id.is_empty() || r.id.starts_with(&f.id))
        && (f.pod_sandbox_id.is_empty() || r.sandbox_id.starts_with(&f.pod_sandbox_id))
        && f.state
            .as_ref()
            .is_none_or(|s| s.state == cri_state(r.state) as i32)
        && labels_match(r, &f.label_selector)
}

/// ListContainerStats' filter (no state: kubelet wants running containers' stats, and
/// only those have any).
pub fn matches_stats(r: &ContainerRecord, f: &cri::ContainerStatsFilter) -> bool {
    (f.id.is_empty() || r.id.starts_with(&f.id))
        && (f.pod_sandbox_id.is_empty() || r.sandbox_id.starts_with(&f.pod_sandbox_id))
        && labels_match(r, &f.label_selector)
}

fn labels_match(r: &ContainerRecord, selector: &std::collections::HashMap<String, String>) -> bool {
    selector
        .iter()
        .all(|(k, v)| r.config.labels.get(k) == Some(v))
}

/// Finds the one record whose id starts with `prefix`: `Ok(None)` when none does, an
/// error naming the count when several do.
pub fn resolve_prefix<'a>(
    records: &'a [ContainerRecord],
    prefix: &str,
) -> Result<Option<&'a ContainerRecord>, usize> {
    if let Some(exact) = records.iter().find(|r| r.id == prefix) {
        return Ok(Some(exact));
    }
    let mut found = records
        .iter()
        .filter(|r| !prefix.is_empty() && r.id.starts_with(prefix));
    match (found.next(), found.count()) {
        (None, _) => Ok(None),
        (Some(r), 0) => Ok(Some(r)),
        (Some(_), more) => Err(more + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, sandbox: &str, state: ContainerState, app: &str) -> ContainerRecord {
        ContainerRecord {
            id: id.into(),
            sandbox_id: sandbox.into(),
            state,
            config: cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: format!("n-{id}"),
                    attempt: 1,
                }),
                labels: [
                    ("app".to_owned(), app.to_owned()),
                    ("tier".to_owned(), "x".to_owned()),
                ]
                .into(),
                ..Default::default()
            },
            image_ref: "docker.io/library/busybox:latest".into(),
            image_id: "sha256:abc".into(),
            created_at: 1,
            started_at: 2,
            finished_at: 3,
            exit_code: 137,
            reason: "OOMKilled".into(),
            message: String::new(),
            log_path: "/var/log/pods/x/c/0.log".into(),
            runtime_spec: None,
        }
    }

    fn fixtures() -> Vec<ContainerRecord> {
        vec![
            record("aaa111", "pod1", ContainerState::Running, "web"),
            record("aaa222", "pod1", ContainerState::Exited, "db"),
            record("bbb333", "pod2", ContainerState::Created, "web"),
        ]
    }

    fn ids(f: &cri::ContainerFilter) -> Vec<String> {
        fixtures()
            .iter()
            .filter(|r| matches(r, f))
            .map(|r| r.id.clone())
            .collect()
    }

    #[test]
    fn every_filter() {
        assert_eq!(ids(&cri::ContainerFilter::default()).len(), 3);
        let by_id = cri::ContainerFilter {
            id: "aaa".into(),
            ..Default::default()
        };
        assert_eq!(ids(&by_id), ["aaa111", "aaa222"]);
        let by_state = cri::ContainerFilter {
            state: Some(cri::ContainerStateValue {
                state: cri::ContainerState::ContainerExited as i32,
            }),
            ..Default::default()
        };
        assert_eq!(ids(&by_state), ["aaa222"]);
        let by_pod = cri::ContainerFilter {
            pod_sandbox_id: "pod2".into(),
            ..Default::default()
        };
        assert_eq!(ids(&by_pod), ["bbb333"]);
        let by_label = cri::ContainerFilter {
            label_selector: [("app".to_owned(), "web".to_owned())].into(),
            ..Default::default()
        };
        assert_eq!(ids(&by_label), ["aaa111", "bbb333"]);
        let combined = cri::ContainerFilter {
            label_selector: [("app".to_owned(), "web".to_owned())].into(),
            pod_sandbox_id: "pod1".into(),
            ..Default::default()
        };
        assert_eq!(ids(&combined), ["aaa111"]);
        let no_label = cri::ContainerFilter {
            label_selector: [("app".to_owned(), "nope".to_owned())].into(),
            ..Default::default()
        };
        assert!(ids(&no_label).is_empty());
        let stats = cri::ContainerStatsFilter {
            pod_sandbox_id: "pod1".into(),
            label_selector: [("tier".to_owned(), "x".to_owned())].into(),
            ..Default::default()
        };
        assert_eq!(
            fixtures()
                .iter()
                .filter(|r| matches_stats(r, &stats))
                .count(),
            2
        );
    }

    #[test]
    fn conversions_carry_every_field() {
        let r = &fixtures()[1];
        let c = to_container(r);
        assert_eq!(c.state, cri::ContainerState::ContainerExited as i32);
        assert_eq!(c.pod_sandbox_id, "pod1");
        assert_eq!(
            c.image.map(|i| i.image).as_deref(),
            Some("docker.io/library/busybox:latest")
        );
        assert_eq!(c.labels.get("app").map(String::as_str), Some("db"));
        let s = to_status(r);
        assert_eq!((s.created_at, s.started_at, s.finished_at), (1, 2, 3));
        assert_eq!((s.exit_code, s.reason.as_str()), (137, "OOMKilled"));
        assert_eq!(s.log_path, "/var/log/pods/x/c/0.log");
        assert_eq!(s.image_ref, "sha256:abc");
        assert_eq!(s.metadata.map(|m| m.name).as_deref(), Some("n-aaa222"));
    }

    #[test]
    fn prefixes_resolve_uniquely() {
        let all = fixtures();
        assert_eq!(
            resolve_prefix(&all, "bbb").map(|r| r.map(|r| r.id.as_str())),
            Ok(Some("bbb333"))
        );
        assert_eq!(resolve_prefix(&all, "aaa").map(|r| r.is_some()), Err(2));
        assert_eq!(resolve_prefix(&all, "zzz").map(|r| r.is_some()), Ok(false));
        assert_eq!(resolve_prefix(&all, "").map(|r| r.is_some()), Ok(false));
        assert_eq!(
            resolve_prefix(&all, "aaa111").map(|r| r.map(|r| r.id.as_str())),
            Ok(Some("aaa111"))
        );
    }
}
