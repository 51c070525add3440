//! Shared setup of the root integration tests: a throw-away "host" netns in which the CNI
//! plugins run (so bridges, veths and iptables rules never touch the real host), a
//! conflist with a unique bridge and network name, temp conf and cache dirs, and a tap
//! responder that plays the VMM.

#![allow(dead_code, clippy::unwrap_used)]

pub mod frames;

use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use hull_network::cni::CniConfig;
use hull_network::netns::Netns;
use hull_network::{PodNetwork, PodNetworkConfig};

pub const CNI_BIN: &str = "/usr/lib/cni";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Fails the test with a clear message when it cannot run here.
pub fn require_root_and_plugins() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (netns, veth, tap, iptables)"
    );
    for p in ["bridge", "host-local", "portmap"] {
        assert!(
            Path::new(CNI_BIN).join(p).exists(),
            "this test needs the CNI plugin {CNI_BIN}/{p} (apt-get install containernetworking-plugins)"
        );
    }
}

pub struct TestEnv {
    pub tag: String,
    pub net_name: String,
    pub bridge: String,
    pub subnet: String,
    pub host: Netns,
    pub conf_dir: tempfile::TempDir,
    pub cache_dir: tempfile::TempDir,
    pub extra_bin: tempfile::TempDir,
}

impl TestEnv {
    /// A fresh environment; `plugins_tail` is appended to the bridge plugin's chain.
    pub fn new(plugins_tail: &[serde_json::Value]) -> Self {
        require_root_and_plugins();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{:x}{n}", std::process::id() % 0xffff);
        let host = Netns::create_named(&format!("hulltest-host-{tag}")).unwrap();
        let env = Self {
            net_name: format!("hulltest-{tag}"),
            bridge: format!("hbr{tag}"),
            subnet: format!("10.{}.{}.0/24", 200 + (n % 50), std::process::id() % 250),
            tag,
            host,
            conf_dir: tempfile::tempdir().unwrap(),
            cache_dir: tempfile::tempdir().unwrap(),
            extra_bin: tempfile::tempdir().unwrap(),
        };
        env.write_conflist("10-test.conflist", &env.net_name.clone(), plugins_tail);
        Netns::run(&env.host, || {
            Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status()
        })
        .unwrap()
        .unwrap();
        env
    }

    pub fn write_conflist(&self, file: &str, net_name: &str, tail: &[serde_json::Value]) {
        let mut plugins = vec![serde_json::json!({
            "type": "bridge", "bridge": self.bridge, "isGateway": true, "ipMasq": true,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": self.subnet}]], "routes": [{"dst": "0.0.0.0/0"}]}
        })];
        plugins.extend(tail.iter().cloned());
        let list = serde_json::json!({"cniVersion": "1.0.0", "name": net_name, "plugins": plugins});
        std::fs::write(
            self.conf_dir.path().join(file),
            serde_json::to_vec_pretty(&list).unwrap(),
        )
        .unwrap();
    }

    pub fn portmap() -> serde_json::Value {
        serde_json::json!({"type": "portmap", "capabilities": {"portMappings": true}, "snat": true})
    }

    pub fn config(&self) -> PodNetworkConfig {
        PodNetworkConfig {
            cni: CniConfig {
                conf_dir: self.conf_dir.path().into(),
                bin_dirs: vec![self.extra_bin.path().into(), CNI_BIN.into()],
                cache_dir: self.cache_dir.path().into(),
                plugin_timeout: Duration::from_secs(30),
                runtime_netns: Some(self.host.path().into()),
            },
            netns_prefix: format!("hulltest-{}-", self.tag),
            ..PodNetworkConfig::default()
        }
    }

    pub fn network(&self) -> PodNetwork {
        PodNetwork::new(self.config())
    }

    /// Output of a command run inside the test's host netns.
    pub fn host_cmd(&self, args: &[&str]) -> String {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let out = self
            .host
            .run(move || Command::new(&args[0]).args(&args[1..]).output())
            .unwrap()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Names of the links in the host netns.
    pub fn host_links(&self) -> Vec<String> {
        self.host_cmd(&["ip", "-o", "link", "show"])
            .lines()
            .filter_map(|l| {
                l.split(':')
                    .nth(1)
                    .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
            })
            .collect()
    }

    pub fn reservation_dir(&self) -> PathBuf {
        Path::new("/var/lib/cni/networks").join(&self.net_name)
    }

    pub fn reserved_ips(&self) -> Vec<String> {
        std::fs::read_dir(self.reservation_dir())
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn netns_files(&self) -> Vec<String> {
        let prefix = format!("hulltest-{}-", self.tag);
        std::fs::read_dir("/run/netns")
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&prefix))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        for f in self.netns_files() {
            let _ = Netns::delete(&Path::new("/run/netns").join(f));
        }
        let _ = Netns::delete(self.host.path());
        let _ = std::fs::remove_dir_all(self.reservation_dir());
    }
}

/// What the fake VMM saw on the tap.
#[derive(Debug, Default)]
pub struct Seen {
    pub arp_requests: AtomicU32,
    pub udp_echoed: AtomicU32,
    pub tcp_syns: AtomicU32,
}

/// Plays the VMM on the tap: answers ARP for `ip` with `mac`, echoes UDP to port 7777
/// reversed, and counts TCP SYNs to port 80.
pub struct Responder {
    stop: Arc<AtomicBool>,
    pub seen: Arc<Seen>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Responder {
    pub fn start(tap: OwnedFd, ip: Ipv4Addr, mac: [u8; 6]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Seen::default());
        let (s, n) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || respond(tap, ip, mac, &s, &n));
        Self {
            stop,
            seen,
            thread: Some(thread),
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn respond(tap: OwnedFd, ip: Ipv4Addr, mac: [u8; 6], stop: &AtomicBool, seen: &Seen) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut buf = vec![0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        let mut fds = [PollFd::new(
            std::os::fd::AsFd::as_fd(&tap),
            PollFlags::POLLIN,
        )];
        if poll(&mut fds, PollTimeout::from(50u16)).unwrap_or(0) == 0 {
            continue;
        }
        let Ok(n) = nix::unistd::read(&tap, &mut buf) else {
            continue;
        };
        let frame = &buf[..n];
        if let Some(reply) = frames::arp_reply(frame, ip, mac) {
            seen.arp_requests.fetch_add(1, Ordering::SeqCst);
            let _ = nix::unistd::write(&tap, &reply);
        } else if let Some((src, sport, payload, smac)) = frames::udp_to(frame, ip, 7777) {
            let reversed: Vec<u8> = payload.iter().rev().copied().collect();
            let reply = frames::udp_frame(smac, mac, (ip, 7777), (src, sport), &reversed);
            if nix::unistd::write(&tap, &reply).is_ok() {
                seen.udp_echoed.fetch_add(1, Ordering::SeqCst);
            }
        } else if frames::tcp_syn_to(frame, ip, 80) {
            seen.tcp_syns.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// From the host netns, sends UDP to `ip:7777` until the reversed payload comes back.
pub fn udp_roundtrip(host: &Netns, ip: Ipv4Addr) -> bool {
    host.run(move || {
        let sock = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 64];
        for _ in 0..25 {
            let _ = sock.send_to(b"hull-ping", (ip, 7777));
            if let Ok((n, from)) = sock.recv_from(&mut buf)
                && &buf[..n] == b"gnip-lluh"
                && from.ip() == ip
            {
                return true;
            }
        }
        false
    })
    .unwrap()
}

/// Writes a UDP datagram from pod A (`a`) to pod B (`b`, answered by a [`Responder`])
/// into A's tap and waits for B's reply to come out of A's tap.
pub fn pod_to_pod(a_tap: &OwnedFd, a: (Ipv4Addr, [u8; 6]), b: (Ipv4Addr, [u8; 6])) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let frame = frames::udp_frame(b.1, a.1, (a.0, 40000), (b.0, 7777), b"hull-ping");
    let mut buf = vec![0u8; 65536];
    for _ in 0..20 {
        let _ = nix::unistd::write(a_tap, &frame);
        let until = Instant::now() + Duration::from_millis(200);
        while Instant::now() < until {
            let mut fds = [PollFd::new(
                std::os::fd::AsFd::as_fd(a_tap),
                PollFlags::POLLIN,
            )];
            if poll(&mut fds, PollTimeout::from(50u16)).unwrap_or(0) == 0 {
                continue;
            }
            let Ok(n) = nix::unistd::read(a_tap, &mut buf) else {
                continue;
            };
            if let Some((src, 7777, payload, _)) = frames::udp_to(&buf[..n], a.0, 40000)
                && src == b.0
                && payload == b"gnip-lluh"
            {
                return true;
            }
        }
    }
    false
}
