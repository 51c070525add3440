//! Unwinding of RunPodSandbox with fakes: a failure at every step leaves no live network,
//! no live VM, no record, no run dir and a free name; a failed undo leaves the record
//! NOTREADY with the name reserved until Remove; Stop/Remove are idempotent; recovery.

use std::sync::Arc;

use hull_cri_api as cri;
use hull_network::fake::{FakeFailures, FakePodNetwork};

use super::fakes::{FakeAgent, FakeHypervisor, ShutdownBehaviour};
use super::*;
use crate::config::Config;
use crate::cri::status::CriError;
use crate::state::{SandboxRecord, SandboxState, Store};

struct Env {
    _dir: tempfile::TempDir,
    mgr: Arc<SandboxManager>,
    net: Arc<FakePodNetwork>,
    vm: FakeHypervisor,
    agent: FakeAgent,
    store: Store,
    config: Arc<Config>,
}

fn env() -> Env {
    // No grace: Stop kills the fake VM at once without asking the agent, as before the
    // shutdown step (the fake agent's PowerOff ends every VM, so tests of it run one pod).
    env_with_grace(0)
}

fn env_with_grace(stop_grace_secs: u64) -> Env {
    env_with(|c| c.vm.stop_grace_secs = stop_grace_secs)
}

/// The fakes and a manager on a config that `tweak` has changed.
fn env_with(tweak: impl FnOnce(&mut Config)) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        root_dir: dir.path().join("lib"),
        state_dir: dir.path().join("run"),
        ..Config::default()
    };
    tweak(&mut config);
    std::fs::create_dir_all(&config.root_dir).unwrap();
    let config = Arc::new(config);
    let store = Store::open(&config.metadata_path(), &crate::state::tables()).unwrap();
    let net = Arc::new(FakePodNetwork::new());
    let vm = FakeHypervisor::default();
    let agent = FakeAgent::default();
    agent.state.lock().unwrap().vms = Some(Arc::clone(&vm.state));
    let backends = Backends {
        network: net.clone(),
        hypervisor: Ok(Arc::new(vm.clone())),
        agent: Arc::new(agent.clone()),
    };
    let mgr = Arc::new(SandboxManager::new(
        Arc::clone(&config),
        store.clone(),
        backends,
    ));
    Env {
        _dir: dir,
        mgr,
        net,
        vm,
        agent,
        store,
        config,
    }
}

impl Env {
    /// A manager on the same store and fakes, as after a hulld restart.
    fn restarted(&self) -> Arc<SandboxManager> {
        let backends = Backends {
            network: self.net.clone(),
            hypervisor: Ok(Arc::new(self.vm.clone())),
            agent: Arc::new(self.agent.clone()),
        };
        Arc::new(SandboxManager::new(
            Arc::clone(&self.config),
            self.store.clone(),
            backends,
        ))
    }

    fn assert_nothing_left(&self) {
        assert!(
            self.net.live().is_empty(),
            "network left: {:?}",
            self.net.live()
        );
        assert!(self.vm.live().is_empty(), "VM left: {:?}", self.vm.live());
        assert!(
            self.store.list::<SandboxRecord>().unwrap().is_empty(),
            "record left"
        );
        assert!(self.mgr.list().is_empty(), "sandbox still known");
        let dirs = std::fs::read_dir(self.mgr.sandboxes_dir())
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(dirs, 0, "run dir left");
    }
}

fn request(name: &str) -> cri::RunPodSandboxRequest {
    cri::RunPodSandboxRequest {
        config: Some(cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                namespace: "default".into(),
                uid: format!("uid-{name}"),
                attempt: 0,
            }),
            labels: [("app".to_string(), name.to_string())].into(),
            ..Default::default()
        }),
        runtime_handler: String::new(),
    }
}

#[tokio::test]
async fn run_stop_remove_and_idempotence() {
    let e = env();
    let id = e.mgr.run(request("web")).await.unwrap();
    let sb = e.mgr.get(&id).unwrap();
    assert_eq!(sb.state(), SandboxState::Ready);
    assert_eq!(
        e.mgr.get(&id[..8]).unwrap().id(),
        id,
        "unique prefix lookup"
    );
    assert!(sb.shared_dir().is_dir());
    let rec: SandboxRecord = e.store.get(&id).unwrap().unwrap();
    assert_eq!(rec.state, SandboxState::Ready);
    assert_eq!(rec.resources.ips, vec!["10.99.0.2".to_string()]);
    for phase in [
        "netns",
        "cni",
        "tap_tc",
        "vm_start",
        "agent_ready",
        "agent_setup",
        "total",
    ] {
        assert!(rec.resources.timings_ms.contains_key(phase), "{phase}");
    }
    assert_eq!(e.agent.state.lock().unwrap().setups[0].hostname, "web");
    sb.agent().await.unwrap();
    let dup = e.mgr.run(request("web")).await.unwrap_err();
    assert!(matches!(CriError::from(dup), CriError::AlreadyExists(_)));

    e.mgr.stop(&id).await.unwrap();
    assert_eq!(sb.state(), SandboxState::NotReady);
    assert!(matches!(
        sb.agent().await,
        Err(SandboxError::NotReady { .. })
    ));
    assert!(e.net.live().is_empty() && e.vm.live().is_empty());
    e.mgr.stop(&id).await.unwrap();
    e.mgr.remove(&id).await.unwrap();
    e.mgr.remove(&id).await.unwrap();
    e.mgr.stop("unknown").await.unwrap();
    e.mgr.remove("unknown").await.unwrap();
    e.assert_nothing_left();
    // The name is free again; Remove of a READY sandbox stops it first.
    let id = e.mgr.run(request("web")).await.unwrap();
    e.mgr.remove(&id).await.unwrap();
    e.assert_nothing_left();
}

/// Each injectable step, and the root error it must produce.
const STEPS: [&str; 5] = [
    "dirs",
    "network",
    "vm_start",
    "agent_connect",
    "agent_setup",
];

fn inject(e: &Env, step: &str, on: bool) {
    match step {
        "dirs" => {
            if on {
                std::fs::create_dir_all(&e.config.state_dir).unwrap();
                std::fs::write(e.mgr.sandboxes_dir(), "not a dir").unwrap();
            } else {
                let _ = std::fs::remove_file(e.mgr.sandboxes_dir());
            }
        }
        "network" => e.net.set_failures(FakeFailures {
            setup: on,
            ..Default::default()
        }),
        "vm_start" => e.vm.state.lock().unwrap().fail_start = on,
        "agent_connect" => e.agent.state.lock().unwrap().fail_connect = on,
        "agent_setup" => e.agent.state.lock().unwrap().fail_setup = on,
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn failure_at_every_step_leaves_nothing() {
    for step in STEPS {
        let e = env();
        inject(&e, step, true);
        let err = e.mgr.run(request("web")).await.unwrap_err();
        let root_ok = matches!(
            (step, err.root()),
            ("dirs", SandboxError::CreateDir { .. })
                | ("network", SandboxError::NetworkSetup(_))
                | ("vm_start", SandboxError::VmStart(_))
                | ("agent_connect", SandboxError::AgentTimeout { .. })
                | ("agent_setup", SandboxError::AgentSetup(_))
        );
        assert!(root_ok, "step {step}: unexpected error {err:?}");
        let msg = error_chain(&err);
        assert!(msg.contains("injected") || step == "dirs", "{step}: {msg}");
        assert!(msg.contains("cleaned up"), "{step}: {msg}");
        e.assert_nothing_left();
        inject(&e, step, false);
        let id = e
            .mgr
            .run(request("web"))
            .await
            .unwrap_or_else(|e| panic!("{step}: name not released: {e}"));
        e.mgr.remove(&id).await.unwrap();
        e.assert_nothing_left();
    }
}

#[tokio::test]
async fn failed_undo_keeps_record_notready_until_remove() {
    let e = env();
    e.agent.state.lock().unwrap().fail_setup = true;
    e.net.set_failures(FakeFailures {
        teardown: true,
        ..Default::default()
    });
    let err = e.mgr.run(request("web")).await.unwrap_err();
    let msg = error_chain(&err);
    assert!(msg.contains("cleanup failed at network"), "{msg}");
    let sbs = e.mgr.list();
    assert_eq!(sbs.len(), 1);
    let rec = sbs[0].record();
    assert_eq!(rec.state, SandboxState::NotReady);
    assert!(rec.resources.error.contains("cleanup failed"));
    assert!(
        e.vm.live().is_empty(),
        "the VM undo ran before the failing one"
    );
    let again = e.mgr.run(request("web")).await.unwrap_err();
    assert!(matches!(again.root(), SandboxError::NameReserved { .. }));
    let err = e.mgr.remove(&rec.id).await.unwrap_err();
    assert!(matches!(err, SandboxError::NetworkTeardown(_)));
    e.net.set_failures(FakeFailures::default());
    e.mgr.remove(&rec.id).await.unwrap();
    e.assert_nothing_left();
}

#[tokio::test]
async fn validation_and_backend_errors() {
    let e = env();
    let mut r = request("web");
    r.config
        .as_mut()
        .unwrap()
        .metadata
        .as_mut()
        .unwrap()
        .uid
        .clear();
    assert!(
        matches!(CriError::from(e.mgr.run(r).await.unwrap_err()), CriError::InvalidArgument(m) if m.contains("uid"))
    );
    let r = cri::RunPodSandboxRequest {
        config: None,
        runtime_handler: String::new(),
    };
    assert!(matches!(
        CriError::from(e.mgr.run(r).await.unwrap_err()),
        CriError::InvalidArgument(_)
    ));
    let mut r = request("web");
    r.config.as_mut().unwrap().linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                network: cri::NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    // hostNetwork needs host isolation, which pods of "default" are not allowed.
    let err = CriError::from(e.mgr.run(r).await.unwrap_err());
    assert!(
        matches!(&err, CriError::PermissionDenied(m) if m.contains("hostNetwork") && m.contains("\"default\"")),
        "{err}"
    );
    let mut r = request("web");
    r.runtime_handler = "runc".into();
    assert!(matches!(
        CriError::from(e.mgr.run(r).await.unwrap_err()),
        CriError::InvalidArgument(_)
    ));
    e.assert_nothing_left();

    let backends = Backends {
        network: e.net.clone(),
        hypervisor: Err("hull-vmm is not available".into()),
        agent: Arc::new(e.agent.clone()),
    };
    let mgr = Arc::new(SandboxManager::new(
        Arc::clone(&e.config),
        e.store.clone(),
        backends,
    ));
    let err = CriError::from(mgr.run(request("web")).await.unwrap_err());
    assert!(
        matches!(&err, CriError::FailedPrecondition(m) if m.contains("hull-vmm")),
        "{err}"
    );
    e.assert_nothing_left();
}

#[tokio::test]
async fn concurrent_pods_and_same_name_races() {
    let e = env();
    let runs = (0..4).map(|i| {
        let mgr = Arc::clone(&e.mgr);
        tokio::spawn(async move { mgr.run(request(&format!("p{}", i % 2))).await })
    });
    let results: Vec<_> = futures::future::join_all(runs)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let ok: Vec<&String> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(ok.len(), 2, "one winner per name: {results:?}");
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(
            matches!(r.root(), SandboxError::NameReserved { .. }),
            "{r:?}"
        );
    }
    assert_eq!(e.vm.live().len(), 2);
    let stops = ok.iter().map(|id| {
        let (mgr, id) = (Arc::clone(&e.mgr), (*id).clone());
        tokio::spawn(async move { mgr.remove(&id).await })
    });
    for r in futures::future::join_all(stops).await {
        r.unwrap().unwrap();
    }
    e.assert_nothing_left();
}

#[tokio::test]
async fn recovery_reattaches_marks_dead_and_unwinds_creating() {
    let e = env();
    let alive = e.mgr.run(request("alive")).await.unwrap();
    let dead = e.mgr.run(request("dead")).await.unwrap();
    let half = e.mgr.run(request("half")).await.unwrap();
    e.vm.kill(&dead);
    // A crash in the middle of RunPodSandbox leaves a `creating` record with resources.
    e.store
        .update::<SandboxRecord>(&half, |r| r.state = SandboxState::Creating)
        .unwrap();

    let mgr = e.restarted();
    let report = mgr.recover().await;
    assert_eq!(report.ready, vec![alive.clone()]);
    assert_eq!(report.not_ready, vec![dead.clone()]);
    assert_eq!(report.unwound, vec![half.clone()]);
    assert!(report.errors.is_empty(), "{report:?}");
    assert!(mgr.get(&half).is_none());
    assert_eq!(e.vm.live(), vec![alive.clone()]);
    assert_eq!(mgr.get(&alive).unwrap().state(), SandboxState::Ready);
    assert!(mgr.get(&alive).unwrap().vm().is_some());
    assert_eq!(mgr.get(&dead).unwrap().state(), SandboxState::NotReady);
    // Names survive the restart.
    let dup = mgr.run(request("alive")).await.unwrap_err();
    assert!(matches!(dup.root(), SandboxError::NameReserved { .. }));
    for id in [&alive, &dead] {
        mgr.remove(id).await.unwrap();
    }
    assert!(e.net.live().is_empty() && e.vm.live().is_empty());
    assert!(e.store.list::<SandboxRecord>().unwrap().is_empty());
}

/// StopPodSandbox asks the agent to shut down first; a guest that powers off is not
/// killed, one that ignores the request or whose agent hangs or is unreachable is killed
/// once the grace (2 s here) is over, and never later.
///
/// With fakes every wait is hulld's own timer. The bounds tell hulld's waits apart with a
/// margin of a second or more for a loaded machine: a powered-off guest costs no wait (under
/// half the grace), a kill comes at the grace (not before: a lower bound load cannot trip),
/// and nothing waits a second grace or the agent's own timeout on top (under 1.5 graces).
#[tokio::test]
async fn stop_asks_the_agent_then_kills_within_the_grace() {
    use std::time::{Duration, Instant};
    let grace = Duration::from_secs(2);
    // (agent behaviour, connect fails, restart first, killed, minimum duration)
    let cases = [
        (
            ShutdownBehaviour::PowerOff,
            false,
            false,
            false,
            Duration::ZERO,
        ),
        (
            ShutdownBehaviour::PowerOff,
            false,
            true,
            false,
            Duration::ZERO,
        ),
        (ShutdownBehaviour::Ignore, false, false, true, grace),
        (ShutdownBehaviour::Hang, false, false, true, Duration::ZERO),
        (ShutdownBehaviour::Hang, true, true, true, Duration::ZERO),
    ];
    for (behaviour, fail_connect, restart, killed, min) in cases {
        let case = format!("{behaviour:?} fail_connect={fail_connect} restart={restart}");
        let e = env_with_grace(grace.as_secs());
        let id = e.mgr.run(request("web")).await.unwrap();
        let mgr = if restart {
            let mgr = e.restarted();
            mgr.recover().await;
            mgr
        } else {
            Arc::clone(&e.mgr)
        };
        {
            let mut a = e.agent.state.lock().unwrap();
            a.shutdown = behaviour;
            a.fail_connect = fail_connect;
        }
        let t = Instant::now();
        mgr.stop(&id).await.unwrap();
        let took = t.elapsed();
        let a = e.agent.state.lock().unwrap();
        let v = e.vm.state.lock().unwrap();
        let asked = usize::from(!fail_connect);
        assert_eq!(a.shutdowns, asked, "{case}: Shutdown calls");
        assert_eq!(v.killed.len(), usize::from(killed), "{case}: killed");
        assert!(v.live.is_empty(), "{case}: VM left");
        assert!(
            took >= min,
            "{case}: stopped after {took:?}, before {min:?}"
        );
        assert!(
            took < grace + grace / 2,
            "{case}: stop took {took:?}, grace {grace:?}"
        );
        if behaviour == ShutdownBehaviour::PowerOff {
            assert!(
                took < grace / 2,
                "{case}: powered-off guest waited {took:?}"
            );
        }
        assert!(
            v.stop_graces.iter().all(|g| *g <= grace),
            "{case}: backend stop given {:?}",
            v.stop_graces
        );
    }
}

#[tokio::test]
async fn the_warmed_vm_template_is_the_one_a_default_pod_needs() {
    let e = env();
    let warming = e
        .mgr
        .warm_vm_template()
        .expect("templates are on by default");
    assert!(warming.await.unwrap());
    let id = e.mgr.run(request("web")).await.unwrap();
    let s = e.vm.state.lock().unwrap();
    let (warm, pod) = (&s.warmed[0], &s.started[0]);
    assert_eq!(pod.id, id);
    // What a VM template is made of (hull_vm::hull::template::template_key), the templates
    // dir (the run dir's parent) included.
    assert_eq!((warm.vcpus, warm.memory_mib), (pod.vcpus, pod.memory_mib));
    assert_eq!(
        (&warm.kernel, &warm.initramfs),
        (&pod.kernel, &pod.initramfs)
    );
    assert_eq!(warm.cmdline, pod.cmdline);
    assert_eq!(warm.run_dir.parent(), pod.run_dir.parent());
    assert_eq!(warm.net.is_some(), pod.net.is_some());
    assert_eq!(warm.shared_dir.is_some(), pod.shared_dir.is_some());
    // Nothing of the warm-up is left where pods live.
    assert!(!warm.run_dir.exists());
}

#[tokio::test]
async fn no_warm_up_with_templates_off() {
    let e = env_with(|c| c.vm.templates = false);
    assert!(e.mgr.warm_vm_template().is_none());
    assert!(e.vm.state.lock().unwrap().warmed.is_empty());
}

#[tokio::test]
async fn a_pod_the_node_cannot_hold_is_refused_before_anything_is_taken() {
    use super::capacity::{CapacityError, NodeCapacity, NodeMemory};
    let mut e = env();
    // 1000 MiB available, 512 kept free, 64 per pod outside guest RAM: a default 256 MiB
    // VM fits (320 <= 488), a pod with a 1 GiB limit (1024 + 64 guest overhead) does not.
    let source = Arc::new(|| {
        Ok(NodeMemory {
            available_kib: 1000 * 1024,
        })
    });
    Arc::get_mut(&mut e.mgr)
        .expect("only the env holds the manager")
        .capacity = NodeCapacity::with_source(&e.config.node, source);
    let mut big = request("big");
    if let Some(c) = big.config.as_mut() {
        c.linux = Some(cri::LinuxPodSandboxConfig {
            resources: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 1 << 30,
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let err = e.mgr.run(big).await.unwrap_err();
    assert!(
        matches!(
            err.root(),
            SandboxError::Admission(CapacityError::NodeFull {
                need_mib: 1152,
                available_mib: 1000,
                ..
            })
        ),
        "{err:?}"
    );
    let status = tonic::Status::from(CriError::from(err));
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("node.memory_headroom_mib"),
        "{status:?}"
    );
    // Nothing was taken: no network, no VM, no record, no dir, no name.
    assert_eq!(e.net.calls(), (0, 0));
    assert!(e.vm.state.lock().unwrap().started.is_empty());
    e.assert_nothing_left();
    assert!(lock(&e.mgr.names).is_empty(), "name reserved");
    // A pod of the default size fits; its promise is given back once it is up.
    let id = e.mgr.run(request("small")).await.unwrap();
    assert_eq!(e.mgr.get(&id).unwrap().state(), SandboxState::Ready);
    assert_eq!(e.mgr.capacity.in_flight_mib(), 0);
}
