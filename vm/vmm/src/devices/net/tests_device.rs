//! The whole device: activation through the virtio-mmio transport and the device thread
//! (socket-pair "tap"), and a real tap in a network namespace the test creates.

use std::os::fd::OwnedFd;
use std::process::Command;
use std::time::Instant;

use super::*;
use crate::devices::bus::BusDevice;
use crate::devices::mmio::MmioTransport;
use crate::devices::virtio::status;
use crate::exit::ExitSignal;

pub(super) fn wr(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

pub(super) fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub(super) fn setup_queue(
    t: &mut MmioTransport,
    index: u32,
    q: &MockSplitQueue<'_, GuestMemoryMmap>,
) {
    wr(t, 0x30, index);
    wr(t, 0x38, 16);
    let split = |a: GuestAddress| (a.0 as u32, (a.0 >> 32) as u32);
    for (reg, addr) in [
        (0x80, q.desc_table_addr()),
        (0x90, q.avail_addr()),
        (0xa0, q.used_addr()),
    ] {
        let (lo, hi) = split(addr);
        wr(t, reg, lo);
        wr(t, reg + 4, hi);
    }
    wr(t, 0x44, 1);
}

#[test]
fn activation_through_the_transport_moves_frames_both_ways() {
    transport_round_trip();
}

/// Activate through the transport, move frames both ways, check backpressure and reset.
pub fn transport_round_trip() {
    let mem = test_memory();
    let rx = MockSplitQueue::create(&mem, GuestAddress(0x1000), 16);
    let tx = MockSplitQueue::create(&mem, GuestAddress(0x3000), 16);
    let (ours, peer) = UnixDatagram::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let net = Net::with_tap(
        File::from(OwnedFd::from(ours)),
        Some([2, 0, 0, 0, 0, 3]),
        None,
    )
    .unwrap();
    let exit = Arc::new(ExitSignal::new().unwrap());
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let mut t = MmioTransport::new(Box::new(net), mem.clone(), irq, exit.clone()).unwrap();
    let drv = status::ACKNOWLEDGE | status::DRIVER;
    wr(&mut t, 0x70, status::ACKNOWLEDGE);
    wr(&mut t, 0x70, drv);
    wr(&mut t, 0x24, 0);
    wr(&mut t, 0x20, VIRTIO_NET_F_MAC as u32);
    wr(&mut t, 0x24, 1);
    wr(&mut t, 0x20, 1);
    wr(&mut t, 0x70, drv | status::FEATURES_OK);
    setup_queue(&mut t, 0, &rx);
    setup_queue(&mut t, 1, &tx);
    let dok = drv | status::FEATURES_OK | status::DRIVER_OK;
    wr(&mut t, 0x70, dok);
    assert_eq!(t.status(), dok, "device activated");
    let mut mac = [0u8; 6];
    t.read(0x100, &mut mac);
    assert_eq!(mac, [2, 0, 0, 0, 0, 3]);

    // RX: one buffer, then a frame from the host.
    add_chain(&rx, &[desc(0x8000, 1600, true)], 0);
    wr(&mut t, 0x50, 0);
    peer.send(&frame(64, 0x11)).unwrap();
    wait_until("first frame delivered", || rx.used().idx().load() == 1);
    assert_eq!(read_mem(&mem, 0x8000 + 12, 64), frame(64, 0x11));
    wait_until("interrupt", || t.interrupt().status() & INT_VRING != 0);
    assert_eq!(t.interrupt().irqfd().read().unwrap(), 1);

    // The guest has no buffer now: the next frame waits in the tap until it adds one.
    peer.send(&frame(80, 0x22)).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(rx.used().idx().load(), 1);
    add_chain(&rx, &[desc(0x9000, 1600, true)], 1);
    wr(&mut t, 0x50, 0);
    wait_until("second frame delivered", || rx.used().idx().load() == 2);
    assert_eq!(read_mem(&mem, 0x9000 + 12, 80), frame(80, 0x22));

    // TX.
    let f = frame(90, 0x33);
    mem.write_slice(&[0u8; 12], GuestAddress(0xa000)).unwrap();
    mem.write_slice(&f, GuestAddress(0xa00c)).unwrap();
    add_chain(&tx, &[desc(0xa000, 102, false)], 0);
    wr(&mut t, 0x50, 1);
    let mut got = [0u8; 200];
    let n = peer.recv(&mut got).unwrap();
    assert_eq!(&got[..n], &f[..]);
    wait_until("tx used", || tx.used().idx().load() == 1);
    assert!(exit.reason().is_none(), "the device did not stop the VM");

    // Reset ends the activation: frames stay in the tap.
    wr(&mut t, 0x70, 0);
    std::thread::sleep(Duration::from_millis(50));
    peer.send(&frame(64, 0x44)).unwrap();
    add_chain(&rx, &[desc(0xb000, 1600, true)], 2);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(rx.used().idx().load(), 2);
}

/// A network namespace with a tap that has an address; deleted on drop.
struct NetnsTap {
    name: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output();
    let out = out.unwrap_or_else(|e| panic!("`ip` (iproute2) is needed for this test: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?} failed (this test needs root): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetnsTap {
    fn new() -> Self {
        let name = format!("hullnet-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let ns = Self { name };
        let n = ns.name.as_str();
        for key in ["all", "default"] {
            let k = format!("net.ipv6.conf.{key}.disable_ipv6=1");
            ip(&["netns", "exec", n, "sysctl", "-q", "-w", &k]);
        }
        ip(&["-n", n, "tuntap", "add", "dev", "tap0", "mode", "tap"]);
        ip(&["-n", n, "addr", "add", "10.213.0.1/24", "dev", "tap0"]);
        ip(&["-n", n, "link", "set", "tap0", "mtu", "9000", "up"]);
        ns
    }

    /// Open tap0 and read its MTU from a thread that entered the namespace (the test
    /// process stays put).
    fn open(&self) -> (File, u32) {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = File::open(&path).unwrap();
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            (open_tap("tap0").unwrap(), interface_mtu("tap0").unwrap())
        })
        .join()
        .unwrap()
    }
}

impl Drop for NetnsTap {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// "who-has 10.213.0.1 tell 10.213.0.2" from [`GUEST_MAC`].
fn arp_request() -> Vec<u8> {
    let mut f = vec![0xffu8; 6];
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[10, 213, 0, 2]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&[10, 213, 0, 1]);
    f
}

#[test]
fn real_tap_answers_arp() {
    let ns = NetnsTap::new();
    let (tap, mtu) = ns.open();
    assert_eq!(mtu, 9000, "the tap's MTU, read in its namespace");
    let mem = test_memory();
    let rx = MockSplitQueue::create(&mem, GuestAddress(0x1000), 16);
    let tx = MockSplitQueue::create(&mem, GuestAddress(0x3000), 16);
    let interrupt = Arc::new(VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    let mut q = NetQueues::new(
        mem.clone(),
        rx.create_queue().unwrap(),
        tx.create_queue().unwrap(),
        interrupt,
        Some(tap),
        Arc::new(NetCounters::default()),
    );
    let bufs: Vec<u64> = (0..8).map(|i| 0x8000 + i * 0x800).collect();
    for (i, addr) in (0u16..).zip(&bufs) {
        add_chain(&rx, &[desc(*addr, 0x800, true)], i);
    }
    let req = arp_request();
    mem.write_slice(&[0u8; 12], GuestAddress(0x6000)).unwrap();
    mem.write_slice(&req, GuestAddress(0x600c)).unwrap();
    add_chain(&tx, &[desc(0x6000, 12 + req.len() as u32, false)], 0);
    assert!(q.process_tx().unwrap());
    assert_eq!(q.stats().tx_frames, 1, "the tap took the frame");
    let mut reply = None;
    let (mut tick, mut sent) = (0u32, 1u16);
    wait_until("an ARP reply from the namespace's kernel", || {
        // Ask again now and then, as ARP does: a reply sent while the tap's carrier was
        // still coming up (qdisc not yet attached by linkwatch) is dropped by the kernel.
        tick += 1;
        if tick % 50 == 0 && sent < 16 {
            add_chain(&tx, &[desc(0x6000, 12 + req.len() as u32, false)], sent);
            q.process_tx().unwrap();
            sent += 1;
        }
        q.process_rx().unwrap();
        for i in 0..rx.used().idx().load() {
            let (id, len) = used_entry(&rx, i);
            let f = read_mem(&mem, bufs[id as usize] + 12, len as usize - 12);
            // ARP (0x0806), opcode 2, sender 10.213.0.1, target our MAC.
            if f[12..14] == [8, 6] && f[20..22] == [0, 2] && f[28..32] == [10, 213, 0, 1] {
                reply = Some(f);
                return true;
            }
        }
        false
    });
    let reply = reply.unwrap();
    assert_eq!(&reply[..6], &GUEST_MAC, "unicast to the guest");
    assert_eq!(&reply[32..38], &GUEST_MAC);
    assert_eq!(q.stats().rejected, 0);
}
