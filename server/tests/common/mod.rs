//! Starting a real `hulld` process for integration tests, and CRI clients to talk to it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hull_cri_api::client::{ImageServiceClient, RuntimeServiceClient};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

/// A hulld process with its own temp dirs and socket; killed on drop.
pub struct Hulld {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub socket: PathBuf,
    pub child: Option<Child>,
}

impl Hulld {
    /// Temp dirs and a config; `extra` is appended to the TOML (sections allowed).
    pub fn configure(extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("cni")).expect("cni dir");
        let socket = root.join("run/hull.sock");
        let config = format!(
            "root_dir = \"{r}/lib\"\nstate_dir = \"{r}/run\"\nsocket = \"{s}\"\nlog_level = \"debug\"\n{extra}\n[cni]\nconf_dir = \"{r}/cni\"\n",
            r = root.display(),
            s = socket.display(),
        );
        let config_path = root.join("config.toml");
        std::fs::write(&config_path, config).expect("write config");
        Self {
            dir,
            config_path,
            socket,
            child: None,
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a minimal valid CNI conflist into the configured conf dir.
    pub fn write_cni_config(&self) {
        std::fs::write(
            self.root().join("cni/10-test.conflist"),
            r#"{"cniVersion":"1.0.0","name":"test","plugins":[{"type":"bridge","bridge":"hulltest0"}]}"#,
        )
        .expect("write conflist");
    }

    /// Spawns hulld and waits until its socket accepts connections.
    pub fn start(&mut self) {
        self.spawn(
            Command::new(env!("CARGO_BIN_EXE_hulld")),
            &[],
            Stdio::inherit(),
        );
    }

    /// [`Hulld::start`] with extra environment variables (e.g. test pause points).
    pub fn start_env(&mut self, vars: &[(&str, &str)]) {
        self.spawn(
            Command::new(env!("CARGO_BIN_EXE_hulld")),
            vars,
            Stdio::inherit(),
        );
    }

    /// Where [`Hulld::start_logging`] sends hulld's log.
    pub fn log_path(&self) -> PathBuf {
        self.root().join("hulld.log")
    }

    /// Like [`Hulld::start`], with hulld's log in [`Hulld::log_path`] for the test to read.
    pub fn start_logging(&mut self) {
        let log = std::fs::File::create(self.log_path()).expect("create hulld.log");
        self.spawn(
            Command::new(env!("CARGO_BIN_EXE_hulld")),
            &[],
            Stdio::from(log),
        );
    }

    /// Like [`Hulld::start`], but hulld (and so its VMMs and virtiofsd) runs in a mount
    /// namespace of its own, a slave copy of the host's: whatever mounts it makes, or a
    /// hostile guest makes it make or lose, stay out of the host's mount table.
    pub fn start_in_own_mount_ns(&mut self) {
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "slave", "--"])
            .arg(env!("CARGO_BIN_EXE_hulld"));
        self.spawn(cmd, &[], Stdio::inherit());
    }

    /// The pid of the running hulld.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("hulld is running").id()
    }

    fn spawn(&mut self, mut cmd: Command, vars: &[(&str, &str)], stderr: Stdio) {
        let child = cmd
            .arg("--config")
            .arg(&self.config_path)
            .envs(vars.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn hulld");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("hulld exited early: {status}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "hulld did not listen on {} within 20s",
            self.socket.display()
        );
    }

    /// Sends a signal and waits for the exit status.
    pub fn stop_with(&mut self, signal: nix::sys::signal::Signal) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("hulld is running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("signal hulld");
        child.wait().expect("wait hulld")
    }

    pub async fn channel(&self) -> Channel {
        connect(&self.socket).await
    }

    pub async fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel().await)
    }

    pub async fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel().await)
    }
}

impl Drop for Hulld {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Pod VMMs outlive hulld by design; a test that failed before removing its pods
        // must not leave their VMs, netns or mounts on the machine.
        reap_leftovers(self.dir.path());
    }
}

/// Kills every process whose command line names `root`, then deletes the netns and
/// mounts of the sandboxes whose run dirs are below it.
fn reap_leftovers(root: &Path) {
    let needle = root.to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) && pid != std::process::id() as i32 {
            eprintln!("test cleanup: killing leftover pid {pid}");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    let sandboxes = root.join("run/sandboxes");
    for entry in std::fs::read_dir(&sandboxes)
        .into_iter()
        .flatten()
        .flatten()
    {
        let id = entry.file_name().to_string_lossy().into_owned();
        // A host-isolation pod's agent is dead now: its cleanup removes the containers'
        // cgroups (killing what is still in them, e.g. a hostPID pod's) and namespace pins.
        let host_config = entry.path().join("host-agent.json");
        let agent = std::env::current_exe()
            .ok()
            .and_then(|e| Some(e.parent()?.parent()?.join("hull-agent")));
        if let Some(agent) = agent.filter(|_| host_config.exists()) {
            eprintln!("test cleanup: host pod {id}");
            let _ = Command::new(agent)
                .arg("--host-cleanup")
                .arg(&host_config)
                .status();
        }
        let netns = Path::new("/run/netns").join(format!("hull-{id}"));
        if netns.exists() {
            eprintln!("test cleanup: deleting leftover netns {}", netns.display());
            let _ = Command::new("ip")
                .args(["netns", "delete", &format!("hull-{id}")])
                .status();
        }
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<&str> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(needle.as_str()))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Builds the test images (test/images/build.sh: umoci + skopeo from busybox-static) and
/// pushes them to the registry at `host`.
pub fn push_test_images(host: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../test/images/build.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .arg(host)
        .output()
        .expect("run test/images/build.sh");
    assert!(
        out.status.success(),
        "test/images/build.sh failed (needs umoci, skopeo, busybox-static):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A gRPC channel over a unix socket, the way kubelet connects.
pub async fn connect(socket: &Path) -> Channel {
    let socket = socket.to_owned();
    Endpoint::try_from("http://[::]:50051")
        .expect("static uri")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .expect("connect to hulld")
}
