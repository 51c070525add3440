//! Shared setup of the pod sandbox integration tests: a throw-away "host" netns where the
//! CNI plugins run (bridge, veths, iptables rules never touch the real host), a conflist
//! with a unique bridge/subnet/network name, a hulld config pointing at the real guest
//! and running the pod VMM `HULL_TEST_VMM` names (see [`vmm`]), and checks that nothing of a
//! sandbox is left.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod vmm;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use hull_network::netns::Netns;

use crate::common::Hulld;
pub use vmm::TestVmm;

pub const CNI_BIN: &str = "/usr/lib/cni";
static COUNTER: AtomicU32 = AtomicU32::new(0);

pub fn guest_file(name: &str) -> PathBuf {
    let dir = std::env::var_os("HULL_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/lib/hull/guest".into());
    let path = dir.join(name);
    assert!(
        path.exists(),
        "guest {name} missing at {}: build it with packaging/guest/build.sh",
        path.display()
    );
    path
}

/// Fails with a clear message when the test cannot run here.
pub fn require_prerequisites() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (netns, tap, VMs)"
    );
    for p in ["bridge", "host-local", "portmap", "loopback"] {
        assert!(
            Path::new(CNI_BIN).join(p).exists(),
            "CNI plugin {CNI_BIN}/{p} missing: apt-get install containernetworking-plugins"
        );
    }
    for p in TestVmm::current().helpers() {
        let found = hull_vm::qemu::find_program(p);
        assert!(
            found.is_file(),
            "{p} missing: cargo install {p} (see packaging/guest/install-tools.sh)"
        );
    }
    guest_file("vmlinux");
    guest_file("initramfs.img");
}

pub struct PodEnv {
    pub tag: String,
    pub net_name: String,
    pub bridge: String,
    /// First three octets of the /24 subnet.
    pub prefix: String,
    pub host: Netns,
    pub extra_bin: tempfile::TempDir,
}

impl PodEnv {
    pub fn new() -> Self {
        require_prerequisites();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{:x}{n}", std::process::id() % 0xffff);
        let host = Netns::create_named(&format!("hullsbt-host-{tag}")).unwrap();
        Netns::run(&host, || {
            Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status()
        })
        .unwrap()
        .unwrap();
        Self {
            net_name: format!("hullsbt-{tag}"),
            bridge: format!("hsb{tag}"),
            prefix: format!("10.{}.{}", 150 + (n % 50), std::process::id() % 250),
            tag,
            host,
            extra_bin: tempfile::tempdir().unwrap(),
        }
    }

    pub fn gateway(&self) -> String {
        format!("{}.1", self.prefix)
    }

    /// bridge + host-local + portmap (+ `tail`) with this env's names.
    pub fn conflist(&self, tail: &[serde_json::Value]) -> String {
        let mut plugins = vec![
            serde_json::json!({
                "type": "bridge", "bridge": self.bridge, "isGateway": true, "ipMasq": true, "hairpinMode": true,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": format!("{}.0/24", self.prefix)}]], "routes": [{"dst": "0.0.0.0/0"}]}
            }),
            serde_json::json!({"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}),
        ];
        plugins.extend(tail.iter().cloned());
        serde_json::to_string_pretty(
            &serde_json::json!({"cniVersion": "1.0.0", "name": self.net_name, "plugins": plugins}),
        )
        .unwrap()
    }

    /// A hulld with this env's network; `vm` keys override the `[vm]` section's
    /// (kernel and initramfs default to the built guest, the VMM to [`TestVmm::current`]).
    pub fn hulld(&self, conflist: &str, vm: &[(&str, String)]) -> Hulld {
        let mut keys = vec![
            ("kernel", format!("{:?}", guest_file("vmlinux"))),
            ("initramfs", format!("{:?}", guest_file("initramfs.img"))),
        ];
        keys.extend(TestVmm::current().vm_keys());
        for (k, v) in vm {
            keys.retain(|(key, _)| key != k);
            keys.push((k, v.clone()));
        }
        let vm_section: String = keys.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
        let hulld = Hulld::configure("");
        let r = hulld.root().to_owned();
        std::fs::write(r.join("cni/10-test.conflist"), conflist).unwrap();
        let config = format!(
            "root_dir = \"{r}/lib\"\nstate_dir = \"{r}/run\"\nsocket = \"{s}\"\nlog_level = \"info\"\n\
             [vm]\n{vm_section}\
             [cni]\nconf_dir = \"{r}/cni\"\nbin_dirs = [\"{b}\", \"{CNI_BIN}\"]\nruntime_netns = \"{n}\"\n",
            r = r.display(),
            s = hulld.socket.display(),
            b = self.extra_bin.path().display(),
            n = self.host.path().display(),
        );
        std::fs::write(&hulld.config_path, config).unwrap();
        hulld
    }

    /// Output and success of a command in the env's host netns.
    pub fn host_cmd(&self, args: &[&str]) -> (bool, String) {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let out = self
            .host
            .run(move || Command::new(&args[0]).args(&args[1..]).output())
            .unwrap()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    pub fn ping(&self, ip: &str) -> (bool, String) {
        self.host_cmd(&["/bin/busybox", "ping", "-c1", "-W10", ip])
    }

    /// Everything of the pod network that could be left in the host netns: veths,
    /// host-local reservations, portmap chains.
    pub fn network_leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        let (_, links) = self.host_cmd(&["ip", "-o", "link", "show"]);
        for l in links.lines() {
            let name = l
                .split(':')
                .nth(1)
                .unwrap_or("")
                .trim()
                .split('@')
                .next()
                .unwrap_or("");
            if name != "lo" && name != self.bridge {
                left.push(format!("link {name}"));
            }
        }
        let reservations = Path::new("/var/lib/cni/networks").join(&self.net_name);
        for e in std::fs::read_dir(reservations)
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.parse::<std::net::IpAddr>().is_ok() {
                left.push(format!("host-local reservation {name}"));
            }
        }
        let (_, nat) = self.host_cmd(&["iptables", "-t", "nat", "-S"]);
        for l in nat.lines() {
            if l.starts_with("-N CNI-DN-") || l.contains("CNI-HOSTPORT-DNAT -j CNI-DN") {
                left.push(format!("iptables {l}"));
            }
        }
        left
    }
}

impl Drop for PodEnv {
    fn drop(&mut self) {
        let _ = Netns::delete(self.host.path());
        let _ = std::fs::remove_dir_all(Path::new("/var/lib/cni/networks").join(&self.net_name));
    }
}

/// Every host trace of sandbox `id` under hulld's `state_dir`: its netns file, processes
/// naming its run dir, the run dir itself.
pub fn sandbox_leftovers(state_dir: &Path, id: &str) -> Vec<String> {
    let mut left = Vec::new();
    let netns = Path::new("/run/netns").join(format!("hull-{id}"));
    if netns.exists() {
        left.push(format!("netns {}", netns.display()));
    }
    let run_dir = state_dir.join("sandboxes").join(id);
    let needle = run_dir.to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if entry.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) {
            left.push(format!("process {:?}: {cmdline}", entry.file_name()));
        }
    }
    if run_dir.exists() {
        left.push(format!("dir {}", run_dir.display()));
    }
    left
}

/// A busybox rootfs (Debian's busybox-static) at `root`.
pub fn busybox_rootfs(root: &Path) {
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("/bin/busybox (busybox-static)");
    for applet in ["sh", "ping", "nc", "echo", "sleep"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
}

/// An OCI spec running `args` in the pod's network namespace (the guest's).
pub fn spec_json(args: &[&str]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "ociVersion": "1.0.2",
        "process": { "args": args, "env": ["PATH=/bin"], "cwd": "/", "user": { "uid": 0, "gid": 0 } },
        "root": { "path": "rootfs" },
        "hostname": "ctr",
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc" },
            { "destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"] }
        ],
        "linux": {
            "namespaces": [{ "type": "pid" }, { "type": "mount" }, { "type": "ipc" }, { "type": "uts" }, { "type": "network", "path": "/proc/1/ns/net" }],
            "resources": { "memory": { "limit": 67108864 }, "pids": { "limit": 64 } }
        }
    }))
    .unwrap()
}
