//! The host backend: a host-isolation pod has no VM. Its "VMM" is hull-agent in host mode,
//! one process per pod, running the pod's containers on the node with the same container
//! code the guest agent uses, behind the same agent API and handshake on a unix socket
//! (see `hull_agent_api::host`). hulld drives it through the same [`Hypervisor`] and
//! [`VmHandle`] as a VM, so RunPodSandbox, Stop/Remove and the recovery after a hulld
//! restart do not change with the isolation.
//!
//! Start: write `host-agent.json` into the run dir → spawn `hull-agent --host-mode` (own
//! session, pid file, inside the pod's netns when it has one; its output is the pod's
//! "console") → [`VmHandle::wait_agent_ready`] waits for its ready line. The agent pins the
//! pod's IPC/UTS namespaces under `ns/`, and is PID 1 of the pod's PID namespace unless the
//! pod shares the node's, so the agent's death ends every process of such a pod, as a VM's
//! would. Stop: SIGTERM (the agent kills its containers and exits), SIGKILL after the
//! grace period, then `hull-agent --host-cleanup` removes whatever a killed agent left (its
//! containers' cgroups, with any process still in them, and the namespace pins).
//! Re-attach: the pid file, as for a VMM.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hull_agent_api::host::{HOST_CLEANUP_ARG, HOST_MODE_ARG, HostModeConfig};

use crate::hypervisor::{Backend, Hypervisor, HypervisorError, VmConfig, VmExit, VmHandle};
use crate::procvm::{Spawn, VmProcs, check_id, must_exist, remove_files, started};
use crate::qemu::procs::{log_tail, wait_agent_marker};

/// How long the cleanup of a stopped host pod may take.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the backend finds hull-agent.
#[derive(Debug, Clone)]
pub struct HostConfig {
    pub agent: PathBuf,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            agent: PathBuf::from("/usr/local/bin/hull-agent"),
        }
    }
}

/// The files of a host pod in its run dir.
#[derive(Debug, Clone)]
pub struct HostFiles {
    pub config: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub pid: PathBuf,
    pub state_dir: PathBuf,
    pub ns_dir: PathBuf,
}

impl HostFiles {
    pub fn new(run_dir: &Path) -> Self {
        Self {
            config: run_dir.join("host-agent.json"),
            socket: run_dir.join("agent.sock"),
            log: run_dir.join("agent.log"),
            pid: run_dir.join("agent.pid"),
            state_dir: run_dir.join("agent"),
            ns_dir: run_dir.join("ns"),
        }
    }

    /// What a stop removes (the log and the config stay, for post-mortems).
    fn transient(&self) -> [&Path; 2] {
        [&self.socket, &self.pid]
    }
}

pub struct HostBackend {
    config: HostConfig,
}

impl HostBackend {
    pub fn new(config: HostConfig) -> Self {
        Self { config }
    }
}

/// The agent's config for `config` (a host pod's [`VmConfig`]).
pub fn agent_config(config: &VmConfig) -> Result<HostModeConfig, HypervisorError> {
    let pod = config.host.as_ref().ok_or_else(|| {
        HypervisorError::InvalidConfig("the host backend runs host-isolation pods only".into())
    })?;
    let f = HostFiles::new(&config.run_dir);
    let agent = HostModeConfig {
        sandbox_id: config.id.clone(),
        socket: f.socket,
        state_dir: f.state_dir,
        ns_dir: f.ns_dir,
        node_network: pod.node_network,
        node_pid: pod.node_pid,
        node_ipc: pod.node_ipc,
        node_uts: pod.node_uts,
        cgroup_parent: pod.cgroup_parent.clone(),
    };
    agent.check().map_err(HypervisorError::InvalidConfig)?;
    Ok(agent)
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> HypervisorError {
    move |source| HypervisorError::Io { what, source }
}

#[async_trait::async_trait]
impl Hypervisor for HostBackend {
    fn backend(&self) -> Backend {
        Backend::Host
    }

    async fn start(&self, config: &VmConfig) -> Result<Box<dyn VmHandle>, HypervisorError> {
        check_id(config)?;
        let agent = agent_config(config)?;
        must_exist("hull-agent", &self.config.agent)?;
        if let Some(ns) = &config.netns {
            must_exist("netns", ns)?;
        }
        let f = HostFiles::new(&config.run_dir);
        std::fs::create_dir_all(&f.state_dir)
            .map_err(io(format!("agent state dir {}", f.state_dir.display())))?;
        remove_files(&f.transient());
        let _ = std::fs::remove_file(&f.log);
        let json = serde_json::to_vec_pretty(&agent)
            .map_err(|e| HypervisorError::InvalidConfig(format!("encoding {e}")))?;
        std::fs::write(&f.config, json).map_err(io(format!("{}", f.config.display())))?;
        tracing::info!(sandbox_id = %config.id, node_pid = agent.node_pid, node_ipc = agent.node_ipc,
            node_uts = agent.node_uts, netns = ?config.netns, "starting hull-agent in host mode");
        let mut pod = HostPodHandle {
            procs: VmProcs::new(exit_of),
            files: f,
            agent: self.config.agent.clone(),
        };
        let launched = pod.launch(config.netns.as_deref());
        Ok(Box::new(started(pod, launched).await?))
    }

    async fn reattach(&self, config: &VmConfig) -> Result<Box<dyn VmHandle>, HypervisorError> {
        let files = HostFiles::new(&config.run_dir);
        if !files.pid.exists() && !files.config.exists() {
            return Err(HypervisorError::Missing {
                what: "host agent pid file",
                path: files.pid.clone(),
            });
        }
        let procs = VmProcs::adopt(&config.run_dir, ("hull-agent", &files.pid), &[], exit_of);
        let pod = HostPodHandle {
            procs,
            files,
            agent: self.config.agent.clone(),
        };
        tracing::info!(sandbox_id = %config.id, running = pod.is_running(), "re-attached to the host agent");
        Ok(Box::new(pod))
    }
}

/// A host pod's agent process.
pub struct HostPodHandle {
    procs: VmProcs,
    files: HostFiles,
    agent: PathBuf,
}

impl HostPodHandle {
    fn launch(&mut self, netns: Option<&Path>) -> Result<(), HypervisorError> {
        let f = &self.files;
        let args: Vec<OsString> = vec![HOST_MODE_ARG.into(), f.config.clone().into_os_string()];
        let spawn = Spawn {
            what: "hull-agent",
            program: &self.agent,
            args,
            log: &f.log,
            pid_file: &f.pid,
        };
        let agent = self.procs.spawn_vmm(&spawn, netns)?;
        tracing::info!(pid = agent.pid, "host agent spawned");
        Ok(())
    }

    /// `hull-agent --host-cleanup`: the cgroups and namespace pins a killed agent left.
    async fn cleanup(&self) -> Result<(), HypervisorError> {
        if !self.files.config.exists() {
            return Ok(());
        }
        let mut cmd = tokio::process::Command::new(&self.agent);
        cmd.arg(HOST_CLEANUP_ARG).arg(&self.files.config);
        let out = tokio::time::timeout(CLEANUP_TIMEOUT, cmd.output())
            .await
            .map_err(|_| HypervisorError::Stop("host pod cleanup timed out".into()))?
            .map_err(|source| HypervisorError::Spawn {
                what: "hull-agent --host-cleanup",
                source,
            })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(HypervisorError::Stop(format!(
                "host pod cleanup failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }
}

#[async_trait::async_trait]
impl VmHandle for HostPodHandle {
    fn pid(&self) -> u32 {
        self.procs.pid()
    }

    fn agent_socket(&self) -> PathBuf {
        self.files.socket.clone()
    }

    fn console_log(&self) -> PathBuf {
        self.files.log.clone()
    }

    /// SIGTERM to the agent (it removes its containers and exits), SIGKILL after `grace`,
    /// then the cleanup of what is left; idempotent.
    async fn stop(&self, grace: Duration) -> Result<VmExit, HypervisorError> {
        let exit = self.procs.stop(grace, &self.files.transient()).await?;
        if let Err(e) = self.cleanup().await {
            tracing::warn!(error = %e, log = %log_tail(&self.files.log), "host pod cleanup failed");
            return Err(e);
        }
        Ok(exit)
    }

    fn is_running(&self) -> bool {
        self.procs.is_running()
    }

    async fn wait_agent_ready(&self, deadline: Instant) -> Result<(), HypervisorError> {
        let f = &self.files;
        wait_agent_marker(&f.log, self.procs.vmm(), &f.log, deadline).await
    }
}

/// The agent exits 0 after a stop it was asked for; anything else is a failure.
fn exit_of(status: std::process::ExitStatus) -> VmExit {
    use std::os::unix::process::ExitStatusExt;
    if status.success() {
        VmExit::Shutdown
    } else {
        VmExit::Failed {
            code: status.code(),
            signal: status.signal(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::HostPod;

    fn config(dir: &Path, host: Option<HostPod>) -> VmConfig {
        VmConfig {
            id: "pod1".into(),
            vcpus: 1,
            memory_mib: 64,
            kernel: PathBuf::new(),
            initramfs: PathBuf::new(),
            cmdline: String::new(),
            run_dir: dir.to_owned(),
            netns: None,
            net: None,
            shared_dir: None,
            host,
        }
    }

    #[test]
    fn agent_config_carries_the_namespaces_and_paths() {
        let pod = HostPod {
            node_network: false,
            node_pid: true,
            node_ipc: false,
            node_uts: true,
            cgroup_parent: "/kubepods/pod-1".into(),
        };
        let c = agent_config(&config(Path::new("/run/x/pod1"), Some(pod))).expect("config");
        assert_eq!(c.socket, Path::new("/run/x/pod1/agent.sock"));
        assert_eq!(c.ns_dir, Path::new("/run/x/pod1/ns"));
        assert!(c.node_pid && !c.node_ipc && c.node_uts);
        assert_eq!(c.cgroup_parent(), "/kubepods/pod-1");
        let err = agent_config(&config(Path::new("/run/x/pod1"), None)).expect_err("no host");
        assert!(matches!(err, HypervisorError::InvalidConfig(_)), "{err}");
    }

    #[tokio::test]
    async fn a_missing_agent_binary_fails_before_anything_starts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = HostBackend::new(HostConfig {
            agent: "/nonexistent/hull-agent".into(),
        });
        let err = backend
            .start(&config(dir.path(), Some(HostPod::default())))
            .await
            .err()
            .expect("must fail");
        assert!(matches!(err, HypervisorError::Missing { .. }), "{err}");
        assert!(!HostFiles::new(dir.path()).pid.exists());
    }
}
