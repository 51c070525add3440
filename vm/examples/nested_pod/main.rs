//! The client the nested harness (test/nested/run.sh) runs inside its test host, where KVM
//! boots stock guests. Two modes:
//!
//! ```text
//! nested_pod pod   --dir D --kernel K --initramfs I --hull-vmm P --virtiofsd P [--net TAP] [--fs]
//!                  [--no-templates]
//! nested_pod bench --dir D --kernel K --initramfs I --hull-vmm P [--qemu P] [--runs N]
//!                  [--cmdline-extra ARGS] [--boot-timeout SECS]
//! ```
//!
//! `pod` runs three pods, one after the other, the way hulld runs them: the `hull` backend
//! ([`HullHypervisor`]) starts virtiofsd and hull-vmm; the first pod creates the VM template
//! (boot to agent-ready, snapshot) and is restored from it, the others are restored from the
//! template they find, the third on a settled test host (`--no-templates`: all boot cold). For each, the agent answers over the
//! hybrid vsock, SetupSandbox mounts the share and configures eth0 on the tap, a busybox
//! container runs from the virtio-fs share (CreateContainer, StartContainer, ReadOutput,
//! WaitProcess) and the test host pings the guest. The container also reports the pod's
//! identity (MAC, boot id, random numbers, clock): each pod's clock must be the host's, the
//! test host must see the pod's own MAC on the wire, and no two pods may share a MAC, boot
//! id or random numbers (`identity`). Every check prints a `NESTED-POD` line (the
//! distinctness ones `NESTED-POD-UNIQUE`), the path each pod took a `NESTED-POD-PATH`
//! line; any failure exits non-zero.
//!
//! `bench` boots the same guest N times with hull-vmm and with QEMU microvm (KVM), both with
//! a vsock device and the console in a file, and times launch → the agent's ready line on the
//! console (polled every millisecond, the same way for both); it also snapshots one hull-vmm
//! guest at agent-ready and times N restores, launch → the agent answering the hybrid-vsock
//! handshake. It prints the p50/p90 of each, the ratios to QEMU, hull-vmm's KVM exit counters
//! and its memory outside guest RAM (smaps).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use hull_vm::hypervisor::AGENT_READY_MARKER;

mod bench;
mod identity;
mod pod;
mod restore;

/// Command-line options (`--key value` pairs and `--flag`s).
struct Opts(Vec<String>);

impl Opts {
    fn get(&self, key: &str) -> Option<&str> {
        let i = self.0.iter().position(|a| a == key)?;
        self.0.get(i + 1).map(String::as_str)
    }
    fn path(&self, key: &str) -> anyhow::Result<PathBuf> {
        self.get(key)
            .map(PathBuf::from)
            .with_context(|| format!("{key} is required"))
    }
    fn flag(&self, key: &str) -> bool {
        self.0.iter().any(|a| a == key)
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    // The backend's logs (template hit/miss/creation, fallbacks) go with the output.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NESTED_POD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    ensure!(!args.is_empty(), "usage: nested_pod pod|bench [options]");
    let mode = args.remove(0);
    let opts = Opts(args);
    match mode.as_str() {
        "pod" => pod::pods(&opts).await,
        "bench" => bench::bench(&opts),
        other => bail!("unknown mode {other}"),
    }
}

/// One request line on hull-vmm's control API; the reply, parsed.
fn api_request(socket: &Path, request: &str) -> anyhow::Result<serde_json::Value> {
    let mut s = UnixStream::connect(socket).with_context(|| format!("{}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    writeln!(s, "{request}")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    Ok(serde_json::from_str(&line)?)
}

/// `{"op":"<op>"}` on hull-vmm's control API.
fn api(socket: &Path, op: &str) -> anyhow::Result<serde_json::Value> {
    api_request(socket, &format!("{{\"op\":\"{op}\"}}"))
}

fn print_metrics(socket: &Path) {
    match api(socket, "metrics") {
        Ok(m) => println!("NESTED-METRICS {m}"),
        Err(e) => println!("NESTED-METRICS unavailable: {e:#}"),
    }
}
