//! virtio-fs against a real virtiofsd the test starts on a temporary shared dir: the
//! vhost-user handshake at creation, activation through the virtio-mmio transport (memory
//! table, vrings, kick/call), then real FUSE requests (INIT, LOOKUP) that virtiofsd reads
//! from and answers into our guest memory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::*;
use crate::devices::bus::BusDevice;
use crate::devices::mmio::MmioTransport;
use crate::devices::test_utils::{add_chain, desc, used_entry};
use crate::devices::virtio::status;
use crate::exit::ExitSignal;
use crate::memory::GuestRam;

/// virtiofsd from PATH or the dir `packaging/guest/install-tools.sh` installs it to (where
/// hull-vm's `find_program` looks too; this crate does not depend on hull-vm).
fn find_virtiofsd() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            [
                "/usr/local/cargo-tools/bin",
                "/usr/libexec",
                "/root/.cargo/bin",
            ]
            .map(PathBuf::from),
        )
        .map(|d| d.join("virtiofsd"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("virtiofsd"))
}

/// virtiofsd on a temp dir holding `hello.txt`; killed on drop.
struct Virtiofsd {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Virtiofsd {
    fn start() -> Self {
        let bin = find_virtiofsd();
        assert!(
            bin.is_file(),
            "virtiofsd is needed for this test (cargo install virtiofsd; looked in PATH and /usr/local/cargo-tools/bin)"
        );
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::write(shared.join("hello.txt"), b"hello world").unwrap();
        let socket = dir.path().join("fs.sock");
        let child = Command::new(bin)
            .arg(format!("--socket-path={}", socket.display()))
            .arg(format!("--shared-dir={}", shared.display()))
            .args(["--sandbox=none", "--cache=never", "--log-level=error"])
            .spawn()
            .unwrap();
        wait_until("virtiofsd's socket", || socket.exists());
        Self {
            child,
            socket,
            _dir: dir,
        }
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn rd(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn wr(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

#[test]
fn config_space_layout() {
    let c = fs_config("hullfs");
    assert_eq!(&c[..6], b"hullfs");
    assert!(c[6..36].iter().all(|b| *b == 0));
    assert_eq!(&c[36..], &1u32.to_le_bytes());
    let long = "x".repeat(36);
    assert_eq!(&fs_config(&long)[..36], long.as_bytes());
}

#[test]
fn a_missing_backend_is_a_connect_error() {
    let err = Fs::new(Path::new("/nonexistent/fs.sock"), "t").unwrap_err();
    assert!(matches!(err, FsError::Connect { .. }), "{err}");
}

/// A FUSE request: `fuse_in_header` + `body`.
fn fuse_request(opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
    let mut r = Vec::new();
    r.extend_from_slice(&((40 + body.len()) as u32).to_le_bytes());
    r.extend_from_slice(&opcode.to_le_bytes());
    r.extend_from_slice(&unique.to_le_bytes());
    r.extend_from_slice(&nodeid.to_le_bytes());
    r.extend_from_slice(&[0u8; 16]); // uid, gid, pid, total_extlen, padding
    r.extend_from_slice(body);
    r
}

const FUSE_LOOKUP: u32 = 1;
const FUSE_INIT: u32 = 26;

struct Request<'a> {
    mem: &'a GuestMemoryMmap,
    q: &'a MockSplitQueue<'a, GuestMemoryMmap>,
}

impl Request<'_> {
    /// Put `req` at `addr` and a 4 KiB reply buffer after it as chain `index`, notify the
    /// request queue, wait for the reply and return it (`len` bytes).
    fn send(&self, t: &mut MmioTransport, req: &[u8], addr: u64, index: u16) -> Vec<u8> {
        self.mem.write_slice(req, GuestAddress(addr)).unwrap();
        let out = addr + 0x1000;
        add_chain(
            self.q,
            &[desc(addr, req.len() as u32, false), desc(out, 0x1000, true)],
            index,
        );
        let before = self.q.used().idx().load();
        wr(t, 0x50, 1);
        wait_until("virtiofsd's reply", || self.q.used().idx().load() > before);
        let (id, len) = used_entry(self.q, before);
        assert_eq!(id, u32::from(index));
        let mut reply = vec![0u8; len as usize];
        self.mem.read_slice(&mut reply, GuestAddress(out)).unwrap();
        reply
    }
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn setup_queue(t: &mut MmioTransport, index: u32, q: &MockSplitQueue<'_, GuestMemoryMmap>) {
    wr(t, 0x30, index);
    assert_eq!(rd(t, 0x34), u32::from(QUEUE_SIZE));
    wr(t, 0x38, 16);
    for (reg, addr) in [
        (0x80, q.desc_table_addr()),
        (0x90, q.avail_addr()),
        (0xa0, q.used_addr()),
    ] {
        wr(t, reg, addr.0 as u32);
        wr(t, reg + 4, (addr.0 >> 32) as u32);
    }
    wr(t, 0x44, 1);
}

#[test]
fn virtiofsd_answers_fuse_requests_through_the_transport() {
    fuse_round_trip();
}

/// Device threads run under the Device seccomp filter in hull-vmm: run the fs and net
/// activation paths in a child process with filters enabled (a forbidden syscall kills it
/// with SIGSYS).
#[test]
fn fs_and_net_run_under_the_device_seccomp_filter() {
    if std::env::var_os("HULL_DEVICE_SECCOMP_CHILD").is_some() {
        crate::seccomp::enable();
        fuse_round_trip();
        crate::devices::net::tests::transport_round_trip();
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let name = test_path("fs_and_net_run_under_the_device_seccomp_filter");
    let out = Command::new(exe)
        .args(["--exact", &name, "--nocapture", "--test-threads=1"])
        .env("HULL_DEVICE_SECCOMP_CHILD", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "child failed ({:?}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));
}

/// The libtest name of `test` in this module (the module path without the crate's name), so
/// the re-run above finds it wherever the module moves.
fn test_path(test: &str) -> String {
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    format!("{module}::{test}")
}

fn fuse_round_trip() {
    let fsd = Virtiofsd::start();
    let fs = Fs::new(&fsd.socket, "hullfs").unwrap();
    assert_eq!(fs.device_type(), device_type::FS);
    assert_ne!(fs.device_features() & VIRTIO_F_VERSION_1, 0);
    let ram = GuestRam::new(16).unwrap();
    let mem = ram.memory.clone();
    let exit = Arc::new(ExitSignal::new().unwrap());
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let mut t = MmioTransport::new(Box::new(fs), mem.clone(), irq, exit.clone()).unwrap();
    assert_eq!(rd(&mut t, 0x08), device_type::FS);
    let mut tag = [0u8; 36];
    t.read(0x100, &mut tag);
    assert_eq!(&tag[..7], b"hullfs\0");
    assert_eq!(rd(&mut t, 0x100 + 36), 1, "num_request_queues");

    // Accept every offered feature.
    let drv = status::ACKNOWLEDGE | status::DRIVER;
    wr(&mut t, 0x70, status::ACKNOWLEDGE);
    wr(&mut t, 0x70, drv);
    for sel in 0..2 {
        wr(&mut t, 0x14, sel);
        let f = rd(&mut t, 0x10);
        wr(&mut t, 0x24, sel);
        wr(&mut t, 0x20, f);
    }
    wr(&mut t, 0x70, drv | status::FEATURES_OK);
    let hiprio = MockSplitQueue::create(&mem, GuestAddress(0x10_0000), 16);
    let request = MockSplitQueue::create(&mem, GuestAddress(0x11_0000), 16);
    setup_queue(&mut t, 0, &hiprio);
    setup_queue(&mut t, 1, &request);
    let dok = drv | status::FEATURES_OK | status::DRIVER_OK;
    wr(&mut t, 0x70, dok);
    assert_eq!(t.status(), dok);

    let r = Request {
        mem: &mem,
        q: &request,
    };
    // FUSE_INIT 7.31 (the short fuse_init_in: major, minor, max_readahead, flags).
    let mut init = Vec::new();
    for v in [7u32, 31, 0x2_0000, 0] {
        init.extend_from_slice(&v.to_le_bytes());
    }
    let reply = r.send(&mut t, &fuse_request(FUSE_INIT, 1, 0, &init), 0x20_0000, 0);
    // fuse_out_header: len, error, unique; then fuse_init_out: major, minor, ...
    assert_eq!(le32(&reply, 0) as usize, reply.len());
    assert_eq!(le32(&reply, 4), 0, "FUSE_INIT succeeded");
    assert_eq!(le64(&reply, 8), 1, "unique echoed");
    assert_eq!(le32(&reply, 16), 7, "FUSE major version");
    wait_until("the call relayed as an interrupt", || {
        t.interrupt().status() & INT_VRING != 0
    });

    // LOOKUP hello.txt in the root (nodeid 1): fuse_entry_out.attr.size is the file size.
    let lookup = fuse_request(FUSE_LOOKUP, 2, 1, b"hello.txt\0");
    let reply = r.send(&mut t, &lookup, 0x30_0000, 2);
    assert_eq!(le32(&reply, 4), 0, "LOOKUP succeeded");
    assert_eq!(le64(&reply, 8), 2);
    assert_eq!(le64(&reply, 16 + 40 + 8), 11, "size of hello.txt");
    let missing = fuse_request(FUSE_LOOKUP, 3, 1, b"nope\0");
    let reply = r.send(&mut t, &missing, 0x40_0000, 4);
    assert_eq!(le32(&reply, 4) as i32, -libc::ENOENT);
    assert!(exit.reason().is_none(), "the device did not stop the VM");

    // Reset: the device thread stops the backend's rings and the VM keeps running.
    wr(&mut t, 0x70, 0);
    std::thread::sleep(Duration::from_millis(100));
    assert!(exit.reason().is_none());
}

#[test]
fn a_backend_that_dies_stops_the_vm() {
    let mut fsd = Virtiofsd::start();
    let fs = Fs::new(&fsd.socket, "t").unwrap();
    let ram = GuestRam::new(16).unwrap();
    let mem = ram.memory.clone();
    let exit = Arc::new(ExitSignal::new().unwrap());
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let mut t = MmioTransport::new(Box::new(fs), mem.clone(), irq, exit.clone()).unwrap();
    let drv = status::ACKNOWLEDGE | status::DRIVER;
    wr(&mut t, 0x70, status::ACKNOWLEDGE);
    wr(&mut t, 0x70, drv);
    wr(&mut t, 0x24, 1);
    wr(&mut t, 0x20, 1);
    wr(&mut t, 0x70, drv | status::FEATURES_OK);
    let q0 = MockSplitQueue::create(&mem, GuestAddress(0x10_0000), 16);
    let q1 = MockSplitQueue::create(&mem, GuestAddress(0x11_0000), 16);
    setup_queue(&mut t, 0, &q0);
    setup_queue(&mut t, 1, &q1);
    wr(&mut t, 0x70, drv | status::FEATURES_OK | status::DRIVER_OK);
    std::thread::sleep(Duration::from_millis(200));
    assert!(exit.reason().is_none());
    let _ = fsd.child.kill();
    let _ = fsd.child.wait();
    wait_until("the VM stops", || exit.reason().is_some());
    assert_eq!(exit.reason(), Some(ExitReason::VmmError));
}
