//! The VMM thread: starts the vCPUs, then waits on epoll for the exit signal, SIGTERM/SIGINT
//! (via signalfd) and the handlers registered by devices and the control API.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::api::{self, VmmInfo};
use super::builder::Vmm;
use super::exit::{ExitReason, ExitSignal};
use super::seccomp::{self, ThreadKind};

/// Errors from running the event loop.
#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    #[error("Failed to block termination signals")]
    BlockSignals(#[source] nix::Error),
    #[error("Failed to create the signalfd")]
    CreateSignalFd(#[source] nix::Error),
    #[error("Failed to create the epoll instance")]
    CreateEpoll(#[source] std::io::Error),
    #[error("Failed to register fd {0} with epoll")]
    AddFd(RawFd, #[source] std::io::Error),
    #[error("epoll_wait failed")]
    Wait(#[source] std::io::Error),
    #[error("Failed to install the VMM thread's seccomp filter")]
    Seccomp(#[source] seccomp::SeccompError),
    #[error("Failed to start the control API")]
    StartApi(#[source] super::api::ApiError),
    #[error("Failed to start vCPU threads")]
    StartVcpus(#[source] super::vcpu::VcpuError),
    #[error("Failed to drop privileges")]
    Jail(#[source] super::jail::JailError),
}

/// Something the event loop wakes when its fd is readable.
pub trait EventHandler: Send {
    /// The fd to watch (level-triggered, readable).
    fn fd(&self) -> RawFd;
    /// Handle readiness. Return an exit reason to stop the VM.
    fn handle(&mut self) -> Option<ExitReason>;
}

fn termination_signals() -> SigSet {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    mask
}

/// The loop's state.
pub struct EventLoop {
    epoll: Epoll,
    exit: Arc<ExitSignal>,
    signals: SignalFd,
    handlers: Vec<Box<dyn EventHandler>>,
    /// The jail's uid and gid, taken once the API socket is bound, before the vCPUs run.
    drop_to: Option<(u32, u32)>,
}

const EXIT_TOKEN: u64 = u64::MAX;
const SIGNAL_TOKEN: u64 = u64::MAX - 1;

impl EventLoop {
    /// Block SIGTERM/SIGINT in the calling thread; threads spawned afterwards inherit the
    /// mask, so only the event loop's signalfd sees them. Call first thing in `main`.
    pub fn block_termination_signals() -> Result<(), EventLoopError> {
        termination_signals()
            .thread_block()
            .map_err(EventLoopError::BlockSignals)
    }

    /// Watch SIGTERM/SIGINT (see [`Self::block_termination_signals`]) and `exit` via epoll.
    pub fn new(exit: Arc<ExitSignal>) -> Result<Self, EventLoopError> {
        Self::block_termination_signals()?;
        let mask = termination_signals();
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(EventLoopError::CreateSignalFd)?;
        let epoll = Epoll::new().map_err(EventLoopError::CreateEpoll)?;
        let this = Self {
            epoll,
            exit,
            signals,
            handlers: Vec::new(),
            drop_to: None,
        };
        this.watch(this.exit.eventfd().as_raw_fd(), EXIT_TOKEN)?;
        this.watch(this.signals.as_raw_fd(), SIGNAL_TOKEN)?;
        Ok(this)
    }

    fn watch(&self, fd: RawFd, token: u64) -> Result<(), EventLoopError> {
        self.epoll
            .ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
            .map_err(|e| EventLoopError::AddFd(fd, e))
    }

    /// Drop to `uid`/`gid` (see [`super::jail::drop_privileges`]) before any vCPU runs.
    pub fn with_privilege_drop(mut self, uid: u32, gid: u32) -> Self {
        self.drop_to = Some((uid, gid));
        self
    }

    /// Watch `handler`'s fd.
    pub fn add_handler(&mut self, handler: Box<dyn EventHandler>) -> Result<(), EventLoopError> {
        let token = self.handlers.len() as u64;
        self.watch(handler.fd(), token)?;
        self.handlers.push(handler);
        Ok(())
    }

    /// Start every vCPU on its own thread, then dispatch events until the VM stops. A stop
    /// for a snapshot is carried out here (the reason becomes `VmmError` if it fails).
    pub fn run(self, vmm: &mut Vmm) -> Result<ExitReason, EventLoopError> {
        let (reason, info) = self.dispatch(vmm)?;
        if reason != ExitReason::Snapshotted {
            return Ok(reason);
        }
        let dir = info
            .snapshot_dir
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(dir) = dir else {
            return Ok(ExitReason::VmmError);
        };
        match crate::snapshot::save_vm(vmm, &dir) {
            Ok(()) => Ok(reason),
            Err(err) => {
                tracing::error!(error = %crate::error_chain(&err), "snapshot failed");
                Ok(ExitReason::VmmError)
            }
        }
    }

    fn dispatch(mut self, vmm: &mut Vmm) -> Result<(ExitReason, Arc<VmmInfo>), EventLoopError> {
        let info = Arc::new(VmmInfo {
            id: vmm.config.id.clone(),
            started: std::time::Instant::now(),
            memory_mib: vmm.config.memory_mib,
            vcpus: vmm.vcpus.iter().map(|v| v.metrics()).collect(),
            net: vmm.net.clone(),
            snapshot_dir: Default::default(),
        });
        if let Some(path) = &vmm.config.api_socket {
            let on_start = || seccomp::apply(ThreadKind::Api).map_err(|e| e.to_string());
            api::spawn(path, info.clone(), self.exit.clone(), on_start)
                .map_err(EventLoopError::StartApi)?;
        }
        if let Some((uid, gid)) = self.drop_to {
            super::jail::drop_privileges(uid, gid).map_err(EventLoopError::Jail)?;
            tracing::info!(uid, gid, "privileges dropped");
        }
        for vcpu in vmm.vcpus.drain(..) {
            let on_start = || seccomp::apply(ThreadKind::Vcpu).map_err(|e| e.to_string());
            let thread = vcpu.spawn(on_start).map_err(EventLoopError::StartVcpus)?;
            vmm.vcpu_threads.push(thread);
        }
        seccomp::apply(ThreadKind::Vmm).map_err(EventLoopError::Seccomp)?;
        tracing::info!(vcpus = vmm.config.vcpus, "vCPUs started");
        let mut events = vec![EpollEvent::default(); 32];
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(EventLoopError::Wait(e)),
            };
            for ev in &events[..n] {
                match ev.data() {
                    EXIT_TOKEN => {}
                    SIGNAL_TOKEN => {
                        if let Ok(Some(info)) = self.signals.read_signal() {
                            tracing::info!(signal = info.ssi_signo, "termination signal");
                            self.exit.stop(ExitReason::ApiShutdown);
                        }
                    }
                    token => {
                        let idx = usize::try_from(token).unwrap_or(usize::MAX);
                        if let Some(h) = self.handlers.get_mut(idx)
                            && let Some(reason) = h.handle()
                        {
                            self.exit.stop(reason);
                        }
                    }
                }
            }
            if let Some(reason) = self.exit.reason() {
                let m = super::api::exit_counters(&info);
                tracing::info!(
                    exits = m.exits,
                    io_exits = m.io_exits,
                    mmio_exits = m.mmio_exits,
                    unhandled = m.unhandled,
                    uptime_ms = info.started.elapsed().as_millis() as u64,
                    "VM stopped"
                );
                return Ok((reason, info));
            }
        }
    }
}
