//! Host-isolation pods through the sandbox manager with fakes: what a host pod gets (the
//! host backend, no VM NIC, no network at all for hostNetwork, a SetupSandbox without a
//! network), unwinding at every step, and the policy refusing before anything is taken.

use std::sync::Arc;

use hull_cri_api as cri;
use hull_network::fake::{FakeFailures, FakePodNetwork};

use super::fakes::{FakeAgent, FakeHypervisor};
use super::*;
use crate::state::Store;

struct Env {
    _dir: tempfile::TempDir,
    mgr: Arc<SandboxManager>,
    net: Arc<FakePodNetwork>,
    /// The VM backend: no host pod may reach it.
    vm: FakeHypervisor,
    /// The host backend.
    host: FakeHypervisor,
    agent: FakeAgent,
    store: Store,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        root_dir: dir.path().join("lib"),
        state_dir: dir.path().join("run"),
        ..Config::default()
    };
    config.vm.stop_grace_secs = 0;
    std::fs::create_dir_all(&config.root_dir).unwrap();
    let config = Arc::new(config);
    let store = Store::open(&config.metadata_path(), &crate::state::tables()).unwrap();
    let (net, vm, host, agent) = (
        Arc::new(FakePodNetwork::new()),
        FakeHypervisor::default(),
        FakeHypervisor::default(),
        FakeAgent::default(),
    );
    let backends = Backends {
        network: net.clone(),
        hypervisor: Ok(Arc::new(vm.clone())),
        agent: Arc::new(agent.clone()),
    };
    let mgr = SandboxManager::new(config, store.clone(), backends)
        .with_host_backend(Arc::new(host.clone()));
    Env {
        _dir: dir,
        mgr: Arc::new(mgr),
        net,
        vm,
        host,
        agent,
        store,
    }
}

impl Env {
    fn assert_nothing_left(&self) {
        assert!(self.net.live().is_empty(), "network: {:?}", self.net.live());
        assert!(self.host.live().is_empty() && self.vm.live().is_empty());
        assert!(self.store.list::<SandboxRecord>().unwrap().is_empty());
        let dirs = std::fs::read_dir(self.mgr.sandboxes_dir())
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(dirs, 0, "run dir left");
    }
}

fn request(namespace: &str, network: bool, handler: &str) -> cri::RunPodSandboxRequest {
    let mode = if network {
        cri::NamespaceMode::Node
    } else {
        cri::NamespaceMode::Pod
    };
    cri::RunPodSandboxRequest {
        config: Some(cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "agent".into(),
                namespace: namespace.into(),
                uid: "uid-agent".into(),
                attempt: 0,
            }),
            hostname: "agent-1".into(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: "/kubepods/pod1".into(),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: mode as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        runtime_handler: handler.into(),
    }
}

#[tokio::test]
async fn a_host_network_pod_runs_on_the_host_backend_without_a_pod_network() {
    let e = env();
    let id = e.mgr.run(request("kube-system", true, "")).await.unwrap();
    let sb = e.mgr.get(&id).unwrap();
    assert_eq!(
        (sb.state(), sb.isolation()),
        (SandboxState::Ready, Isolation::Host)
    );
    assert!(e.net.live().is_empty(), "no CNI for hostNetwork");
    assert_eq!(e.host.live(), vec![id.clone()]);
    assert!(e.vm.live().is_empty());
    let started = e.host.state.lock().unwrap().started[0].clone();
    let host = started.host.expect("a host pod config");
    assert!(host.node_network && host.node_uts && !host.node_pid && !host.node_ipc);
    assert_eq!(host.cgroup_parent, "/kubepods/pod1");
    assert_eq!(
        started.netns, None,
        "the node's network is hulld's own here"
    );
    // A host pod's agent works in hulld's staging tree (the read-only view is for VMs).
    assert_eq!(
        sb.agent_shared_dir(),
        sb.staging_dir().display().to_string()
    );
    let setup = e.agent.state.lock().unwrap().setups[0].clone();
    assert!(setup.interfaces.is_empty() && setup.routes.is_empty() && setup.entropy.is_empty());
    assert_eq!(setup.hostname, "", "the node's hostname is kept");
    e.mgr.remove(&id).await.unwrap();
    assert_eq!(e.net.calls().1, 0, "no CNI DEL either");
    e.assert_nothing_left();
}

#[tokio::test]
async fn a_host_handler_pod_gets_cni_without_a_tap_and_unwinds_at_every_step() {
    for step in [
        "none",
        "network",
        "vm_start",
        "agent_connect",
        "agent_setup",
    ] {
        let e = env();
        match step {
            "network" => e.net.set_failures(FakeFailures {
                setup: true,
                ..Default::default()
            }),
            "vm_start" => e.host.state.lock().unwrap().fail_start = true,
            "agent_connect" => e.agent.state.lock().unwrap().fail_connect = true,
            "agent_setup" => e.agent.state.lock().unwrap().fail_setup = true,
            _ => {}
        }
        let result = e.mgr.run(request("kube-system", false, "host")).await;
        if step != "none" {
            let err = result.expect_err(step);
            assert!(error_chain(&err).contains("cleaned up"), "{step}: {err}");
            e.assert_nothing_left();
            continue;
        }
        let id = result.unwrap();
        assert_eq!(e.net.live(), vec![id.clone()]);
        let started = e.host.state.lock().unwrap().started[0].clone();
        assert!(started.netns.is_some() && started.net.is_none());
        let host = started.host.expect("host pod");
        assert!(!host.node_network && !host.node_uts);
        assert_eq!(e.agent.state.lock().unwrap().setups[0].hostname, "agent-1");
        e.mgr.remove(&id).await.unwrap();
        e.assert_nothing_left();
    }
}

#[tokio::test]
async fn policy_refusals_take_nothing() {
    let e = env();
    let denied = e.mgr.run(request("default", true, "")).await.unwrap_err();
    assert!(
        matches!(denied, SandboxError::HostIsolationDenied { .. }),
        "{denied}"
    );
    let unknown = e
        .mgr
        .run(request("kube-system", false, "gvisor"))
        .await
        .unwrap_err();
    assert!(
        matches!(unknown, SandboxError::UnknownHandler { .. }),
        "{unknown}"
    );
    e.assert_nothing_left();
    assert_eq!(e.net.calls(), (0, 0));
    // The name was never reserved: the same pod runs once allowed.
    let id = e.mgr.run(request("kube-system", true, "")).await.unwrap();
    e.mgr.remove(&id).await.unwrap();
}
