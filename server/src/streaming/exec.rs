//! Exec and attach over a [`Session`]: the agent calls behind them. Exec starts a new
//! process (ExecProcess) in the container; attach joins the container's main process.
//! Both then pump output (ReadOutput) to the client, client stdin to WriteStdin, terminal
//! sizes to ResizeTty, and end with the exit status on the error stream.

use std::time::Duration;

use hull_agent_api::AgentClient;
use hull_agent_api::v1 as pb;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use super::remotecommand::{Chan, ChanWriter, Outcome, Session, TermSize, Wanted};

/// How long output may still drain after the process exited (a background child can
/// hold the pipes open forever).
const DRAIN: Duration = Duration::from_secs(10);

/// An exec to run: resolved by the CRI call, run when the client connects.
#[derive(Clone, Debug)]
pub struct ExecTarget {
    pub agent: AgentClient<Channel>,
    pub container_id: String,
    pub cmd: Vec<String>,
    /// `KEY=value` pairs added to the container's environment.
    pub env: Vec<String>,
    pub wanted: Wanted,
}

/// The container's main process to attach to.
#[derive(Clone, Debug)]
pub struct AttachTarget {
    pub agent: AgentClient<Channel>,
    pub container_id: String,
    pub wanted: Wanted,
    /// The container's `stdin_once`: the client's EOF closes the process' stdin.
    pub stdin_once: bool,
}

fn exec_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("stream-{nanos:x}-{n}")
}

/// Runs an exec session to its end.
pub async fn run_exec(t: ExecTarget, mut s: Session) {
    let exec_id = exec_id();
    let mut agent = t.agent.clone();
    // The agent runs an exec as the container's process (user, groups, capabilities,
    // env, cwd) with these fields replaced, as containerd builds an exec spec.
    let mut process = serde_json::json!({"args": t.cmd, "terminal": t.wanted.tty});
    if !t.env.is_empty() {
        process["env"] = serde_json::json!(t.env);
    }
    let req = pb::ExecProcessRequest {
        container_id: t.container_id.clone(),
        exec_id: exec_id.clone(),
        oci_process_json: process.to_string().into_bytes(),
    };
    if let Err(e) = agent.exec_process(req).await {
        tracing::warn!(container = %t.container_id, error = %e, "exec failed to start");
        let msg = format!(
            "failed to exec in container {}: {}",
            t.container_id,
            e.message()
        );
        s.finish(&Outcome::Failed(msg), &t.cmd).await;
        return;
    }
    tracing::info!(container = %t.container_id, exec_id, tty = t.wanted.tty, "exec started");
    let io = match Pumps::start(&agent, &t.container_id, &exec_id, &mut s, true).await {
        Ok(io) => io,
        Err(e) => {
            s.finish(&Outcome::Failed(e.message().to_owned()), &t.cmd)
                .await;
            return;
        }
    };
    let wait = pb::WaitProcessRequest {
        container_id: t.container_id.clone(),
        exec_id: exec_id.clone(),
    };
    let mut gone = s.gone.clone();
    let outcome = tokio::select! {
        r = agent.wait_process(wait) => match r {
            Ok(w) => Outcome::Exited(exit_code(&w.into_inner())),
            Err(e) => Outcome::Failed(format!("waiting for the exec: {}", e.message())),
        },
        _ = client_gone(&mut gone) => {
            tracing::info!(container = %t.container_id, exec_id, "client went away; killing the exec");
            let kill = pb::SignalProcessRequest {
                container_id: t.container_id.clone(),
                exec_id: exec_id.clone(),
                signal: nix::libc::SIGKILL,
            };
            let _ = agent.signal_process(kill).await;
            io.abort();
            return;
        }
    };
    io.drain().await;
    tracing::info!(container = %t.container_id, exec_id, ?outcome, "exec ended");
    s.finish(&outcome, &t.cmd).await;
}

/// Runs an attach session: ends when the main process' output ends or the client leaves.
pub async fn run_attach(t: AttachTarget, mut s: Session) {
    let agent = t.agent.clone();
    let io = match Pumps::start(&agent, &t.container_id, "", &mut s, t.stdin_once).await {
        Ok(io) => io,
        Err(e) => {
            let msg = format!("cannot attach to {}: {}", t.container_id, e.message());
            tracing::warn!(container = %t.container_id, error = %msg, "attach failed");
            s.finish(&Outcome::Failed(msg), &[]).await;
            return;
        }
    };
    tracing::info!(container = %t.container_id, tty = t.wanted.tty, "attached");
    let mut gone = s.gone.clone();
    let Pumps { outputs, others } = io;
    let all_out = async {
        for o in outputs {
            let _ = o.await;
        }
    };
    tokio::select! {
        _ = all_out => {}
        _ = client_gone(&mut gone) => {}
    }
    for o in others {
        o.abort();
    }
    tracing::info!(container = %t.container_id, "attach ended");
    s.finish(&Outcome::Exited(0), &[]).await;
}

/// Resolves when the client's connection is gone.
async fn client_gone(gone: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = gone.wait_for(|g| *g).await;
}

fn exit_code(w: &pb::WaitProcessResponse) -> i32 {
    if w.exit_status == 0 && w.signal != 0 {
        128 + w.signal
    } else {
        w.exit_status
    }
}

/// The tasks moving data between the client and one process.
struct Pumps {
    outputs: Vec<JoinHandle<()>>,
    others: Vec<JoinHandle<()>>,
}

impl Pumps {
    /// Opens the output streams first (so nothing is lost), then stdin and resize.
    async fn start(
        agent: &AgentClient<Channel>,
        id: &str,
        exec_id: &str,
        s: &mut Session,
        close_stdin_at_eof: bool,
    ) -> Result<Self, tonic::Status> {
        let mut outputs = Vec::new();
        let mut kinds = vec![(pb::OutputStream::Stdout, Chan::Stdout, s.wanted.stdout)];
        if !s.wanted.tty {
            kinds.push((pb::OutputStream::Stderr, Chan::Stderr, s.wanted.stderr));
        }
        for (kind, chan, wanted) in kinds {
            let stream = open_output(agent, id, exec_id, kind).await?;
            let out = s.out.clone_for(chan, wanted);
            outputs.push(tokio::spawn(pump_output(stream, out)));
        }
        let mut others = Vec::new();
        if let Some(stdin) = s.stdin.take() {
            others.push(tokio::spawn(pump_stdin(
                agent.clone(),
                id.to_owned(),
                exec_id.to_owned(),
                stdin,
                close_stdin_at_eof,
            )));
        }
        if let Some(resize) = s.resize.take() {
            others.push(tokio::spawn(pump_resize(
                agent.clone(),
                id.to_owned(),
                exec_id.to_owned(),
                resize,
            )));
        }
        Ok(Self { outputs, others })
    }

    /// Waits (up to [`DRAIN`]) for the output to end, then stops stdin and resize.
    async fn drain(self) {
        let outputs = async {
            for o in self.outputs {
                let _ = o.await;
            }
        };
        if tokio::time::timeout(DRAIN, outputs).await.is_err() {
            tracing::debug!("output still open after the process exited; cutting it");
        }
        for o in self.others {
            o.abort();
        }
    }

    fn abort(self) {
        for t in self.outputs.into_iter().chain(self.others) {
            t.abort();
        }
    }
}

/// An exec reads its output from the start; an attach (the main process, `exec_id` "")
/// only what is produced from now on. Agents without ReadOutputFrom get ReadOutput.
async fn open_output(
    agent: &AgentClient<Channel>,
    id: &str,
    exec_id: &str,
    kind: pb::OutputStream,
) -> Result<tonic::Streaming<pb::OutputChunk>, tonic::Status> {
    if exec_id.is_empty() {
        let req = pb::ReadOutputFromRequest {
            container_id: id.to_owned(),
            exec_id: String::new(),
            stream: kind as i32,
            offset: 0,
            from_end: true,
        };
        match agent.clone().read_output_from(req).await {
            Ok(s) => return Ok(s.into_inner()),
            Err(e) if e.code() == tonic::Code::Unimplemented => {}
            Err(e) => return Err(e),
        }
    }
    let req = pb::ReadOutputRequest {
        container_id: id.to_owned(),
        exec_id: exec_id.to_owned(),
        stream: kind as i32,
        limit: 0,
    };
    Ok(agent.clone().read_output(req).await?.into_inner())
}

async fn pump_output(mut stream: tonic::Streaming<pb::OutputChunk>, out: Option<ChanWriter>) {
    while let Ok(Some(chunk)) = stream.message().await {
        if let Some(out) = &out {
            out.write(&chunk.data).await;
        }
    }
}

async fn pump_stdin(
    mut agent: AgentClient<Channel>,
    id: String,
    exec_id: String,
    mut stdin: mpsc::Receiver<Vec<u8>>,
    close_at_eof: bool,
) {
    let (tx, rx) = mpsc::channel::<pb::StdinChunk>(8);
    let first = pb::StdinChunk {
        container_id: id.clone(),
        exec_id: exec_id.clone(),
        data: Vec::new(),
        close_stdin: false,
    };
    if tx.send(first).await.is_err() {
        return;
    }
    let call = tokio::spawn(async move {
        agent
            .write_stdin(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    while let Some(data) = stdin.recv().await {
        let chunk = pb::StdinChunk {
            data,
            ..Default::default()
        };
        if tx.send(chunk).await.is_err() {
            break;
        }
    }
    if close_at_eof {
        let close = pb::StdinChunk {
            close_stdin: true,
            ..Default::default()
        };
        let _ = tx.send(close).await;
    }
    drop(tx);
    if let Ok(Err(e)) = call.await {
        tracing::debug!(container = %id, exec_id, error = %e, "WriteStdin ended");
    }
}

async fn pump_resize(
    mut agent: AgentClient<Channel>,
    id: String,
    exec_id: String,
    mut sizes: mpsc::Receiver<TermSize>,
) {
    while let Some(size) = sizes.recv().await {
        let req = pb::ResizeTtyRequest {
            container_id: id.clone(),
            exec_id: exec_id.clone(),
            rows: u32::from(size.height),
            cols: u32::from(size.width),
        };
        if let Err(e) = agent.resize_tty(req).await {
            tracing::debug!(container = %id, exec_id, error = %e, "ResizeTty failed");
        }
    }
}
