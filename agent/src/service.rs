//! The gRPC service: thin handlers that validate, call [`crate::container`] or
//! [`crate::sandbox`], and map errors to status codes. Bad requests get
//! `InvalidArgument`/`NotFound`/`AlreadyExists`/`FailedPrecondition`, never a crash.

use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hull_agent_api::v1::{self as pb, agent_server::Agent};
use hull_agent_api::{AGENT_VSOCK_PORT, AgentServer, VERSION};
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use crate::container::{self, ContainerError, Containers, Output, cgroup};
use crate::oom::OomMonitor;
use crate::reaper::Reaper;
use crate::sandbox::{self, SandboxError};
use crate::share;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn status(e: ContainerError) -> Status {
    use ContainerError as E;
    let msg = e.to_string();
    match e {
        E::Validate(_) | E::Spec(_) | E::Rootfs(_) => Status::invalid_argument(msg),
        E::NotFound(_) | E::ProcessNotFound { .. } => Status::not_found(msg),
        E::AlreadyExists(_) => Status::already_exists(msg),
        E::FailedPrecondition(_) => Status::failed_precondition(msg),
        E::Process(container::ProcessError::Setup(_)) => Status::failed_precondition(msg),
        other => Status::internal(format!("{other}: {}", source_chain(&other))),
    }
}

/// `e` and its sources, `a: b: c`.
pub fn chain(e: &dyn std::error::Error) -> String {
    let sources = source_chain(e);
    if sources.is_empty() {
        e.to_string()
    } else {
        format!("{e}: {sources}")
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out.join(": ")
}

fn nanos(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

pub struct AgentService {
    containers: Arc<Containers>,
    oom: OomMonitor,
    /// In a pod VM, or in host mode for a host-isolation pod.
    mode: Arc<Mode>,
}

/// Where the agent runs.
pub enum Mode {
    /// PID 1 of a pod VM.
    Guest,
    /// One host-isolation pod's agent on the node (see [`crate::host`]).
    Host(hull_agent_api::host::HostModeConfig),
}

impl AgentService {
    /// A reader of a process' output hub from `from` (`None`: from the current end).
    fn output(
        &self,
        id: &str,
        exec_id: &str,
        stream: i32,
        from: Option<u64>,
        limit: Option<u64>,
    ) -> Result<Response<BoxStream<pb::OutputChunk>>, Status> {
        let which = match pb::OutputStream::try_from(stream) {
            Ok(pb::OutputStream::Stdout) => Output::Stdout,
            Ok(pb::OutputStream::Stderr) => Output::Stderr,
            _ => return Err(Status::invalid_argument("stream must be STDOUT or STDERR")),
        };
        let process = self.containers.process(id, exec_id).map_err(status)?;
        let rx = process.output(which).subscribe_limited(from, limit);
        let chunks = ReceiverStream::new(rx).map(|(offset, data)| {
            Ok(pb::OutputChunk {
                data,
                offset: Some(offset),
            })
        });
        Ok(Response::new(Box::pin(chunks)))
    }
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn health(
        &self,
        _: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthResponse>, Status> {
        let kernel_release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        let uptime_seconds = std::fs::read_to_string("/proc/uptime")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        Ok(Response::new(pb::HealthResponse {
            agent_version: VERSION.to_owned(),
            kernel_release,
            uptime_seconds,
        }))
    }

    async fn setup_sandbox(
        &self,
        req: Request<pb::SetupSandboxRequest>,
    ) -> Result<Response<pb::SetupSandboxResponse>, Status> {
        let req = req.into_inner();
        let span = tracing::info_span!("setup_sandbox", sandbox_id = %req.sandbox_id);
        let _enter = span.enter();
        let result = match self.mode.as_ref() {
            Mode::Guest => sandbox::setup(&req),
            Mode::Host(config) => crate::host::setup_sandbox(&req, config),
        };
        result.map_err(|e| match e {
            // What the request asks for is wrong (hulld passes it on as the client's
            // mistake); a missing NIC is the VM's (or the node's), not the request's.
            SandboxError::Validate(_) => Status::invalid_argument(e.to_string()),
            SandboxError::NoInterface(_) => Status::failed_precondition(e.to_string()),
            other => Status::internal(format!("{other}: {}", source_chain(&other))),
        })?;
        tracing::info!("sandbox set up");
        Ok(Response::new(pb::SetupSandboxResponse {}))
    }

    async fn create_container(
        &self,
        req: Request<pb::CreateContainerRequest>,
    ) -> Result<Response<pb::CreateContainerResponse>, Status> {
        let r = req.into_inner();
        // hulld calls SetupSandbox first, which mounts the share; a client that did not
        // still gets the share its rootfs and bind mounts are on. (A host pod has no share:
        // its rootfs and volumes are host paths.)
        let share = match self.mode.as_ref() {
            Mode::Guest => share::ensure_mounted(),
            Mode::Host(_) => Ok(share::ShareState::Absent),
        };
        match share {
            Ok(share::ShareState::Mounted) => {
                tracing::warn!(container_id = %r.container_id, "virtio-fs share mounted by CreateContainer: SetupSandbox was not called first");
            }
            Ok(_) => {}
            Err(e) => return Err(Status::internal(format!("{e}: {}", source_chain(&e)))),
        }
        let pid = self
            .containers
            .create(&r.container_id, &r.oci_spec_json, &r.rootfs)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CreateContainerResponse { pid }))
    }

    async fn start_container(
        &self,
        req: Request<pb::StartContainerRequest>,
    ) -> Result<Response<pb::StartContainerResponse>, Status> {
        self.containers
            .start(&req.into_inner().container_id)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::StartContainerResponse {}))
    }

    async fn exec_process(
        &self,
        req: Request<pb::ExecProcessRequest>,
    ) -> Result<Response<pb::ExecProcessResponse>, Status> {
        let r = req.into_inner();
        let pid = self
            .containers
            .exec(&r.container_id, &r.exec_id, &r.oci_process_json)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ExecProcessResponse { pid }))
    }

    async fn signal_process(
        &self,
        req: Request<pb::SignalProcessRequest>,
    ) -> Result<Response<pb::SignalProcessResponse>, Status> {
        let r = req.into_inner();
        self.containers
            .signal(&r.container_id, &r.exec_id, r.signal)
            .map_err(status)?;
        Ok(Response::new(pb::SignalProcessResponse {}))
    }

    async fn wait_process(
        &self,
        req: Request<pb::WaitProcessRequest>,
    ) -> Result<Response<pb::WaitProcessResponse>, Status> {
        let r = req.into_inner();
        let (exit, oom_killed) = self
            .containers
            .wait(&r.container_id, &r.exec_id)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::WaitProcessResponse {
            exit_status: exit.status,
            signal: exit.signal,
            oom_killed,
            exited_at_unix_nanos: nanos(exit.at),
        }))
    }

    async fn remove_container(
        &self,
        req: Request<pb::RemoveContainerRequest>,
    ) -> Result<Response<pb::RemoveContainerResponse>, Status> {
        let r = req.into_inner();
        self.containers
            .remove(&r.container_id, r.force)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        _: Request<pb::ListContainersRequest>,
    ) -> Result<Response<pb::ListContainersResponse>, Status> {
        let containers = self
            .containers
            .list()
            .into_iter()
            .map(container_info)
            .collect();
        Ok(Response::new(pb::ListContainersResponse { containers }))
    }

    type ReadOutputStream = BoxStream<pb::OutputChunk>;

    async fn read_output(
        &self,
        req: Request<pb::ReadOutputRequest>,
    ) -> Result<Response<Self::ReadOutputStream>, Status> {
        let r = req.into_inner();
        let limit = (r.limit > 0).then_some(r.limit);
        self.output(&r.container_id, &r.exec_id, r.stream, Some(0), limit)
    }

    type ReadOutputFromStream = BoxStream<pb::OutputChunk>;

    async fn read_output_from(
        &self,
        req: Request<pb::ReadOutputFromRequest>,
    ) -> Result<Response<Self::ReadOutputFromStream>, Status> {
        let r = req.into_inner();
        let from = (!r.from_end).then_some(r.offset);
        self.output(&r.container_id, &r.exec_id, r.stream, from, None)
    }

    async fn update_container_resources(
        &self,
        req: Request<pb::UpdateContainerResourcesRequest>,
    ) -> Result<Response<pb::UpdateContainerResourcesResponse>, Status> {
        let r = req.into_inner();
        let c = self.containers.get(&r.container_id).map_err(status)?;
        if c.init.exit().is_some() {
            return Err(Status::failed_precondition(format!(
                "container {} is not running",
                r.container_id
            )));
        }
        let resources = r.resources.unwrap_or_default();
        let span = tracing::info_span!("update_resources", container_id = %r.container_id);
        let _enter = span.enter();
        cgroup::update(&c.cgroup, &resources).map_err(|e| match e {
            cgroup::CgroupError::Invalid(_) => Status::invalid_argument(e.to_string()),
            other => Status::internal(format!("{other}: {}", source_chain(&other))),
        })?;
        tracing::info!("resources updated");
        Ok(Response::new(pb::UpdateContainerResourcesResponse {}))
    }

    async fn write_stdin(
        &self,
        req: Request<Streaming<pb::StdinChunk>>,
    ) -> Result<Response<pb::WriteStdinResponse>, Status> {
        let mut stream = req.into_inner();
        let first = stream
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty stdin stream"))??;
        let process = self
            .containers
            .process(&first.container_id, &first.exec_id)
            .map_err(status)?;
        let mut written = 0u64;
        let mut chunk = Some(first);
        while let Some(c) = chunk.take() {
            if !c.data.is_empty() {
                let mut stdin = process
                    .stdin()
                    .ok_or_else(|| Status::failed_precondition("stdin is closed"))?;
                let data = c.data;
                let n = data.len() as u64;
                tokio::task::spawn_blocking(move || stdin.write_all(&data))
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?
                    .map_err(|e| Status::failed_precondition(format!("write stdin: {e}")))?;
                written += n;
            }
            if c.close_stdin {
                process.close_stdin();
                break;
            }
            chunk = stream.next().await.transpose()?;
        }
        Ok(Response::new(pb::WriteStdinResponse {
            bytes_written: written,
        }))
    }

    async fn resize_tty(
        &self,
        req: Request<pb::ResizeTtyRequest>,
    ) -> Result<Response<pb::ResizeTtyResponse>, Status> {
        let r = req.into_inner();
        let rows =
            u16::try_from(r.rows).map_err(|_| Status::invalid_argument("rows out of range"))?;
        let cols =
            u16::try_from(r.cols).map_err(|_| Status::invalid_argument("cols out of range"))?;
        let process = self
            .containers
            .process(&r.container_id, &r.exec_id)
            .map_err(status)?;
        process
            .resize(rows, cols)
            .map_err(Status::failed_precondition)?;
        Ok(Response::new(pb::ResizeTtyResponse {}))
    }

    async fn container_stats(
        &self,
        req: Request<pb::ContainerStatsRequest>,
    ) -> Result<Response<pb::ContainerStatsResponse>, Status> {
        let c = self
            .containers
            .get(&req.into_inner().container_id)
            .map_err(status)?;
        let now = nanos(SystemTime::now());
        // A v2 cgroup (the guest's, a v2 node's): every figure; v1 (a host pod on a v1 or
        // hybrid node): what runc reports from v1, the rest 0.
        let answer = match (&c.cgroup.unified, c.cgroup.is_v1()) {
            (Some(dir), false) => container::stats::read(dir, now),
            _ => {
                let s = cgroup::stats(&c.cgroup);
                pb::ContainerStatsResponse {
                    cpu_usage_usec: s.cpu_usage_usec,
                    cpu_user_usec: s.cpu_user_usec,
                    cpu_system_usec: s.cpu_system_usec,
                    memory_current_bytes: s.memory_current_bytes,
                    memory_max_bytes: s.memory_max_bytes,
                    memory_anon_bytes: s.memory_anon_bytes,
                    memory_file_bytes: s.memory_file_bytes,
                    oom_kills: s.oom_kills,
                    pids_current: s.pids_current,
                    timestamp_unix_nanos: now,
                    ..Default::default()
                }
            }
        };
        Ok(Response::new(answer))
    }

    type PortForwardStream = BoxStream<pb::PortForwardChunk>;

    async fn port_forward(
        &self,
        req: Request<Streaming<pb::PortForwardChunk>>,
    ) -> Result<Response<Self::PortForwardStream>, Status> {
        let rx = crate::portforward::start(req.into_inner()).await?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type OomEventsStream = BoxStream<pb::OomEvent>;

    async fn oom_events(
        &self,
        _: Request<pb::OomEventsRequest>,
    ) -> Result<Response<Self::OomEventsStream>, Status> {
        let rx = tokio_stream::wrappers::BroadcastStream::new(self.oom.subscribe());
        // A lagging reader skips events rather than failing the stream.
        Ok(Response::new(Box::pin(rx.filter_map(|e| e.ok().map(Ok)))))
    }

    async fn shutdown(
        &self,
        _: Request<pb::ShutdownRequest>,
    ) -> Result<Response<pb::ShutdownResponse>, Status> {
        tracing::info!("shutdown requested");
        let containers = self.containers.clone();
        let guest = matches!(self.mode.as_ref(), Mode::Guest);
        tokio::spawn(async move {
            // Let the reply reach the host first.
            tokio::time::sleep(Duration::from_millis(100)).await;
            containers.kill_all().await;
            // In host mode the agent may be PID 1 of the pod's PID namespace: never reboot.
            if guest && std::process::id() == 1 {
                crate::init::power_off();
            }
            std::process::exit(0);
        });
        Ok(Response::new(pb::ShutdownResponse {}))
    }
}

fn container_info(c: container::ContainerSummary) -> pb::ContainerInfo {
    let init_exited = c.processes.first().is_some_and(|(_, p)| p.exit().is_some());
    let state = match (c.created, init_exited) {
        (_, true) => pb::ContainerState::Exited,
        (true, false) => pb::ContainerState::Created,
        (false, false) => pb::ContainerState::Running,
    };
    let processes = c
        .processes
        .into_iter()
        .map(|(exec_id, p)| {
            let exit = p.exit();
            pb::ProcessInfo {
                exec_id,
                pid: p.pid as u32,
                exited: exit.is_some(),
                exit_status: exit.map(|e| e.status).unwrap_or(0),
                signal: exit.map(|e| e.signal).unwrap_or(0),
                exited_at_unix_nanos: exit.map(|e| nanos(e.at)).unwrap_or(0),
            }
        })
        .collect();
    pb::ContainerInfo {
        container_id: c.id,
        state: state as i32,
        processes,
    }
}

/// The service over `containers` (the reaper must be running), with the OOM monitor.
pub fn service(containers: Arc<Containers>, mode: Mode) -> AgentServer<AgentService> {
    let of = Arc::clone(&containers);
    let counts: crate::oom::KillCounts = Arc::new(move || {
        of.ids()
            .into_iter()
            .map(|c| (c.id.clone(), cgroup::stats(&c.cgroup).oom_kills))
            .collect()
    });
    let oom = OomMonitor::new(counts, crate::oom::OOM_POLL);
    AgentServer::new(AgentService {
        containers,
        oom,
        mode: Arc::new(mode),
    })
}

/// Serves the API on vsock port 1024 until the process ends (Shutdown powers off).
pub async fn serve() -> anyhow::Result<()> {
    let reaper = Reaper::start()?;
    let containers = Arc::new(Containers::new(
        reaper,
        cgroup::Placement::guest(),
        container::GUEST_STATE_DIR.into(),
        container::PodPid::Pause,
    ));
    let addr = tokio_vsock::VsockAddr::new(tokio_vsock::VMADDR_CID_ANY, AGENT_VSOCK_PORT);
    let listener = tokio_vsock::VsockListener::bind(addr)?;
    // The plain marker line VMM backends wait for (see hull_agent_api::READY_MARKER).
    eprintln!("{}", hull_agent_api::READY_MARKER);
    tracing::info!(port = AGENT_VSOCK_PORT, version = VERSION, "listening");
    tonic::transport::Server::builder()
        .add_service(service(containers, Mode::Guest))
        .serve_with_incoming(listener.incoming())
        .await?;
    Ok(())
}
