//! Fakes of the hypervisor and the agent for the unwinding tests (the pod network fake is
//! hull-network's `FakePodNetwork`). Each records what is live and fails on demand.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hull_agent_api::v1 as pb;
use hull_agent_api::{AgentClient, ConnectError};
use hull_vm::hypervisor::{Backend, Hypervisor, HypervisorError, VmConfig, VmExit, VmHandle};
use tonic::transport::{Channel, Endpoint};

use super::AgentConnector;

#[derive(Debug, Default)]
pub struct VmState {
    pub live: BTreeSet<String>,
    pub fail_start: bool,
    pub fail_stop: bool,
    /// VMs that were still running when their handle's `stop` was called (killed).
    pub killed: Vec<String>,
    /// The grace each `stop` was given.
    pub stop_graces: Vec<Duration>,
    /// The config of every VM started, and of every `warm` call.
    pub started: Vec<VmConfig>,
    pub warmed: Vec<VmConfig>,
}

#[derive(Debug, Default, Clone)]
pub struct FakeHypervisor {
    pub state: Arc<Mutex<VmState>>,
}

impl FakeHypervisor {
    pub fn live(&self) -> Vec<String> {
        self.state.lock().unwrap().live.iter().cloned().collect()
    }
    /// Makes a VM die (as if QEMU crashed).
    pub fn kill(&self, id: &str) {
        self.state.lock().unwrap().live.remove(id);
    }
}

struct FakeVm {
    id: String,
    run_dir: PathBuf,
    state: Arc<Mutex<VmState>>,
}

#[async_trait::async_trait]
impl VmHandle for FakeVm {
    fn pid(&self) -> u32 {
        4242
    }
    fn agent_socket(&self) -> PathBuf {
        self.run_dir.join("agent.vsock")
    }
    fn console_log(&self) -> PathBuf {
        self.run_dir.join("console.log")
    }
    async fn stop(&self, grace: Duration) -> Result<VmExit, HypervisorError> {
        let mut s = self.state.lock().unwrap();
        if s.fail_stop {
            return Err(HypervisorError::Stop("injected stop failure".into()));
        }
        s.stop_graces.push(grace);
        if s.live.remove(&self.id) {
            s.killed.push(self.id.clone());
        }
        Ok(VmExit::Shutdown)
    }
    fn is_running(&self) -> bool {
        self.state.lock().unwrap().live.contains(&self.id)
    }
}

#[async_trait::async_trait]
impl Hypervisor for FakeHypervisor {
    fn backend(&self) -> Backend {
        Backend::Qemu
    }
    async fn start(&self, config: &VmConfig) -> Result<Box<dyn VmHandle>, HypervisorError> {
        let mut s = self.state.lock().unwrap();
        if s.fail_start {
            return Err(HypervisorError::Boot("injected: kernel panic".into()));
        }
        // A VM pod has all three; a host pod (hostNetwork: no netns) has none of a VM's NIC.
        let vm = config.netns.is_some() && config.net.is_some() && config.shared_dir.is_some();
        assert!(
            vm || (config.host.is_some() && config.net.is_none()),
            "{config:?}"
        );
        s.live.insert(config.id.clone());
        s.started.push(config.clone());
        Ok(Box::new(FakeVm {
            id: config.id.clone(),
            run_dir: config.run_dir.clone(),
            state: Arc::clone(&self.state),
        }))
    }
    async fn warm(&self, config: &VmConfig) -> Result<bool, HypervisorError> {
        self.state.lock().unwrap().warmed.push(config.clone());
        Ok(true)
    }
    async fn reattach(&self, config: &VmConfig) -> Result<Box<dyn VmHandle>, HypervisorError> {
        if !self.state.lock().unwrap().live.contains(&config.id) {
            return Err(HypervisorError::Missing {
                what: "pid file",
                path: config.run_dir.join("qemu.pid"),
            });
        }
        Ok(Box::new(FakeVm {
            id: config.id.clone(),
            run_dir: config.run_dir.clone(),
            state: Arc::clone(&self.state),
        }))
    }
}

/// What the fake agent does on `Shutdown`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownBehaviour {
    /// Answers, and every VM of [`AgentState::vms`] powers off (tests run one pod).
    #[default]
    PowerOff,
    /// Answers, but the guest keeps running.
    Ignore,
    /// Never answers (a hung guest).
    Hang,
}

#[derive(Debug, Default)]
pub struct AgentState {
    pub fail_connect: bool,
    pub fail_setup: bool,
    pub setups: Vec<pb::SetupSandboxRequest>,
    pub shutdown: ShutdownBehaviour,
    pub shutdowns: usize,
    /// The hypervisor fake's VMs, which `PowerOff` ends.
    pub vms: Option<Arc<Mutex<VmState>>>,
}

#[derive(Debug, Default, Clone)]
pub struct FakeAgent {
    pub state: Arc<Mutex<AgentState>>,
}

#[async_trait::async_trait]
impl AgentConnector for FakeAgent {
    async fn connect(
        &self,
        socket: &Path,
        _deadline: tokio::time::Instant,
    ) -> Result<AgentClient<Channel>, ConnectError> {
        if self.state.lock().unwrap().fail_connect {
            return Err(ConnectError::Deadline {
                path: socket.to_owned(),
                port: 1024,
                last: "injected: connection refused".into(),
            });
        }
        Ok(AgentClient::new(
            Endpoint::from_static("http://fake-agent.invalid").connect_lazy(),
        ))
    }
    async fn setup_sandbox(
        &self,
        _client: AgentClient<Channel>,
        req: pb::SetupSandboxRequest,
    ) -> Result<(), tonic::Status> {
        let mut s = self.state.lock().unwrap();
        if s.fail_setup {
            return Err(tonic::Status::failed_precondition(
                "injected: no NIC with that MAC",
            ));
        }
        s.setups.push(req);
        Ok(())
    }
    async fn shutdown(&self, _client: AgentClient<Channel>) -> Result<(), tonic::Status> {
        let behaviour = {
            let mut s = self.state.lock().unwrap();
            s.shutdowns += 1;
            if s.shutdown == ShutdownBehaviour::PowerOff
                && let Some(vms) = &s.vms
            {
                vms.lock().unwrap().live.clear();
            }
            s.shutdown
        };
        if behaviour == ShutdownBehaviour::Hang {
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}
