//! Helpers shared by the QEMU backend integration tests (qemu_boot.rs, qemu_net.rs).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hull_agent_api::v1::{self as pb, OutputStream};
use hull_agent_api::{AGENT_VSOCK_PORT, AgentClient};
use hull_vm::hypervisor::{VmConfig, VmHandle};
use tonic::transport::Channel;

/// Reads a whole output stream of a process.
pub async fn collect_output(
    mut client: AgentClient<Channel>,
    id: &str,
    exec_id: &str,
    stream: OutputStream,
) -> String {
    let req = pb::ReadOutputRequest {
        container_id: id.into(),
        exec_id: exec_id.into(),
        stream: stream as i32,
        limit: 0,
    };
    let mut s = client
        .read_output(req)
        .await
        .expect("read_output")
        .into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = s.message().await.expect("output chunk") {
        out.extend_from_slice(&chunk.data);
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub type Client = AgentClient<Channel>;

/// Runs `steps` against the VM in their own task, so that a failed assertion or a timeout
/// still returns here and the caller can stop the VM before failing the test with it.
pub async fn guarded<F, Fut>(
    vm: &Arc<dyn VmHandle>,
    limit: Duration,
    steps: F,
) -> Result<(), String>
where
    F: FnOnce(Arc<dyn VmHandle>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut task = tokio::spawn(steps(vm.clone()));
    match tokio::time::timeout(limit, &mut task).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) if e.is_panic() => {
            let panic = e.into_panic();
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "non-string panic".to_owned());
            Err(msg)
        }
        Ok(Err(e)) => Err(format!("steps task failed: {e}")),
        Err(_) => {
            task.abort();
            Err(format!("steps timed out after {limit:?}"))
        }
    }
}

/// The status code of a call that must fail.
pub fn code<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> tonic::Code {
    result
        .expect_err("the agent must refuse this request")
        .code()
}

pub async fn wait_process(
    client: &mut Client,
    id: &str,
    exec_id: &str,
) -> Result<pb::WaitProcessResponse, tonic::Status> {
    let req = pb::WaitProcessRequest {
        container_id: id.into(),
        exec_id: exec_id.into(),
    };
    client
        .wait_process(req)
        .await
        .map(tonic::Response::into_inner)
}

pub fn guest_file(name: &str) -> PathBuf {
    let dir = std::env::var_os("HULL_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/lib/hull/guest".into());
    let path = dir.join(name);
    assert!(
        path.exists(),
        "guest {name} missing at {}: build it with packaging/guest/build.sh (kernel ~12 min, initramfs ~1 min)",
        path.display()
    );
    path
}

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test boots VMs and must run as root"
    );
}

/// A busybox rootfs (Debian's busybox-static) at `root`.
pub fn busybox_rootfs(root: &Path) {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "/bin/busybox missing: apt-get install busybox-static"
    );
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir rootfs");
    }
    std::fs::copy(busybox, root.join("bin/busybox")).expect("copy busybox");
    for applet in [
        "ip", "ping", "grep", "stty", "head", "tr", "nc", "sh", "echo", "cat", "ls", "hostname",
        "sleep", "read", "id",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))
            .expect("symlink applet");
    }
}

pub fn spec_json(args: &[&str]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "ociVersion": "1.0.2",
        "process": { "args": args, "env": ["PATH=/bin"], "cwd": "/", "user": { "uid": 0, "gid": 0 } },
        "root": { "path": "rootfs" },
        "hostname": "ctr",
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc" },
            { "destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"] },
            { "destination": "/etc/resolv.conf", "type": "bind", "source": "/etc/resolv.conf", "options": ["rbind", "ro"] }
        ],
        "linux": {
            "namespaces": [{ "type": "pid" }, { "type": "mount" }, { "type": "ipc" }, { "type": "uts" }, { "type": "network", "path": "/proc/1/ns/net" }],
            "resources": { "memory": { "limit": 67108864 }, "pids": { "limit": 64 } }
        }
    }))
    .expect("spec json")
}

pub fn config(dir: &Path, id: &str) -> VmConfig {
    VmConfig {
        id: id.into(),
        vcpus: 1,
        memory_mib: 256,
        kernel: guest_file("vmlinux"),
        initramfs: guest_file("initramfs.img"),
        cmdline: String::new(),
        run_dir: dir.join("run"),
        netns: None,
        net: None,
        shared_dir: Some(dir.join("share")),
        host: None,
    }
}

/// Every trace a VM could leave: processes naming the dir, sockets in it, mounts under it.
pub fn leftovers(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let needle = dir.to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            found.push(format!(
                "process {pid}: {}",
                String::from_utf8_lossy(&cmdline).replace('\0', " ")
            ));
        }
    }
    for entry in walk(&dir.join("run")) {
        use std::os::unix::fs::FileTypeExt;
        let meta = std::fs::symlink_metadata(&entry).expect("stat");
        if meta.file_type().is_socket() || entry.extension().is_some_and(|e| e == "pid") {
            found.push(format!("file {}", entry.display()));
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    found.extend(
        mounts
            .lines()
            .filter(|l| l.contains(&needle))
            .map(|l| format!("mount {l}")),
    );
    found
}

pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten().map(|e| e.path()).collect()
}

pub async fn connect(vm: &dyn VmHandle) -> AgentClient<Channel> {
    let ready = vm
        .wait_agent_ready(std::time::Instant::now() + Duration::from_secs(90))
        .await;
    ready.unwrap_or_else(|e| panic!("agent not ready: {e}"));
    assert_eq!(
        hull_vm::hypervisor::AGENT_READY_MARKER,
        hull_agent_api::READY_MARKER
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    match hull_agent_api::connect(&vm.agent_socket(), AGENT_VSOCK_PORT, deadline).await {
        Ok(c) => c,
        Err(e) => {
            let vsock_log = vm.agent_socket().with_file_name("vhost-vsock.log");
            panic!(
                "agent unreachable: {e}\nconsole:\n{}\nvhost-device-vsock log:\n{}",
                std::fs::read_to_string(vm.console_log()).unwrap_or_default(),
                std::fs::read_to_string(vsock_log).unwrap_or_default()
            )
        }
    }
}
