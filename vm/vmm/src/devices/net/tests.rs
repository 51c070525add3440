//! virtio-net driven through real queues in guest memory (MockSplitQueue); the "tap" is one
//! end of a datagram socket pair (frame boundaries kept, like a tap), except in
//! `real_tap_answers_arp`, which uses a real tap in a network namespace the test creates.

use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::Duration;

use virtio_queue::desc::{RawDescriptor, split::Descriptor as D};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::queues::{ChainError, MAX_FRAME, NET_HDR_LEN};
use super::*;
use crate::devices::test_utils::{add_chain, desc, test_memory, used_entry};
use crate::devices::virtio::{INT_VRING, VirtioInterrupt};
use crate::memory::GuestMemoryMmap;

struct Rig<'a> {
    rx: MockSplitQueue<'a, GuestMemoryMmap>,
    tx: MockSplitQueue<'a, GuestMemoryMmap>,
    q: NetQueues,
    /// The host side of the "tap".
    peer: UnixDatagram,
}

/// RX and TX queues of 16 at guest addresses `at`, and the device side over them, its
/// frames going to `tap` (`None`: no backend).
fn queues<'a>(
    mem: &'a GuestMemoryMmap,
    at: (u64, u64),
    tap: Option<File>,
) -> (
    MockSplitQueue<'a, GuestMemoryMmap>,
    MockSplitQueue<'a, GuestMemoryMmap>,
    NetQueues,
) {
    let rx = MockSplitQueue::create(mem, GuestAddress(at.0), 16);
    let tx = MockSplitQueue::create(mem, GuestAddress(at.1), 16);
    let interrupt = Arc::new(VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    let q = NetQueues::new(
        mem.clone(),
        rx.create_queue().unwrap(),
        tx.create_queue().unwrap(),
        interrupt,
        tap,
        Arc::new(NetCounters::default()),
    );
    (rx, tx, q)
}

fn rig(mem: &GuestMemoryMmap) -> Rig<'_> {
    let (ours, peer) = UnixDatagram::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    peer.set_nonblocking(true).unwrap();
    let tap = File::from(std::os::fd::OwnedFd::from(ours));
    let (rx, tx, q) = queues(mem, (0x1000, 0x3000), Some(tap));
    Rig { rx, tx, q, peer }
}

fn frame(len: usize, fill: u8) -> Vec<u8> {
    let mut f = vec![fill; len];
    f[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f
}

fn read_mem(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
    b
}

#[test]
fn rx_scatters_header_and_frame_and_interrupts() {
    let mem = test_memory();
    let mut r = rig(&mem);
    let f = frame(60, 0xab);
    r.peer.send(&f).unwrap();
    // Header split from the frame, the frame across two buffers.
    add_chain(
        &r.rx,
        &[
            desc(0x8000, 12, true),
            desc(0x9000, 30, true),
            desc(0xa000, 1600, true),
        ],
        0,
    );
    let pass = r.q.process_rx().unwrap();
    assert!(pass.used);
    assert!(pass.starved, "the only buffer is used");
    assert_eq!(used_entry(&r.rx, 0), (0, (NET_HDR_LEN + 60) as u32));
    let mut hdr = [0u8; 12];
    hdr[10] = 1; // num_buffers
    assert_eq!(read_mem(&mem, 0x8000, 12), hdr);
    assert_eq!(read_mem(&mem, 0x9000, 30), f[..30]);
    assert_eq!(read_mem(&mem, 0xa000, 30), f[30..]);
    r.q.notify(pass.used, false).unwrap();
    assert_eq!(r.q.interrupt.status() & INT_VRING, INT_VRING);
    assert_eq!(r.q.interrupt.irqfd().read().unwrap(), 1);
    assert_eq!(r.q.stats().rx_frames, 1);
}

#[test]
fn rx_without_buffers_leaves_frames_in_the_tap() {
    let mem = test_memory();
    let mut r = rig(&mem);
    r.peer.send(&frame(60, 1)).unwrap();
    r.peer.send(&frame(70, 2)).unwrap();
    let pass = r.q.process_rx().unwrap();
    assert_eq!(
        pass,
        queues::RxPass {
            used: false,
            starved: true
        }
    );
    // The guest adds one buffer: one frame moves, the other waits.
    add_chain(&r.rx, &[desc(0x8000, 1600, true)], 0);
    let pass = r.q.process_rx().unwrap();
    assert!(pass.used && pass.starved);
    assert_eq!(used_entry(&r.rx, 0).1, (NET_HDR_LEN + 60) as u32);
    add_chain(&r.rx, &[desc(0x9000, 1600, true)], 1);
    add_chain(&r.rx, &[desc(0xa000, 1600, true)], 2);
    let pass = r.q.process_rx().unwrap();
    assert!(pass.used && !pass.starved, "tap drained, a buffer left");
    assert_eq!(used_entry(&r.rx, 1).1, (NET_HDR_LEN + 70) as u32);
    assert_eq!(read_mem(&mem, 0x9000 + 12, 70), frame(70, 2));
    assert_eq!(r.rx.used().idx().load(), 2);
}

#[test]
fn rx_frame_larger_than_the_buffer_is_dropped_and_the_buffer_kept() {
    let mem = test_memory();
    let mut r = rig(&mem);
    r.peer.send(&frame(200, 1)).unwrap();
    r.peer.send(&frame(50, 2)).unwrap();
    add_chain(&r.rx, &[desc(0x8000, 12 + 100, true)], 0);
    r.q.process_rx().unwrap();
    assert_eq!(r.q.stats().rx_dropped, 1);
    assert_eq!(r.rx.used().idx().load(), 1);
    assert_eq!(used_entry(&r.rx, 0), (0, (NET_HDR_LEN + 50) as u32));
    assert_eq!(read_mem(&mem, 0x8000 + 12, 50), frame(50, 2));
}

#[test]
fn malformed_rx_chains_are_refused_without_writing() {
    let mem = test_memory();
    let mut r = rig(&mem);
    mem.write_slice(&[0x5a; 64], GuestAddress(0x8000)).unwrap();
    r.peer.send(&frame(60, 7)).unwrap();
    // Wrong direction (a device-readable buffer in RX).
    add_chain(
        &r.rx,
        &[desc(0x8000, 16, true), desc(0x9000, 1600, false)],
        0,
    );
    // Partly outside guest memory (64 KiB).
    add_chain(
        &r.rx,
        &[desc(0x8000, 16, true), desc(0xfff0, 0x20, true)],
        2,
    );
    // Address wraps the address space.
    add_chain(&r.rx, &[desc(u64::MAX - 4, 1600, true)], 4);
    // Too short for a header and an Ethernet header.
    add_chain(&r.rx, &[desc(0x8000, 20, true)], 5);
    r.q.process_rx().unwrap();
    assert_eq!(r.q.stats().rejected, 4);
    for i in 0..4 {
        assert_eq!(used_entry(&r.rx, i).1, 0, "chain {i} returned empty");
    }
    assert_eq!(
        read_mem(&mem, 0x8000, 64),
        vec![0x5a; 64],
        "nothing written"
    );
    // The frame was not consumed by the bad chains: a good one gets it.
    add_chain(&r.rx, &[desc(0xa000, 1600, true)], 6);
    r.q.process_rx().unwrap();
    assert_eq!(used_entry(&r.rx, 4).1, (NET_HDR_LEN + 60) as u32);
}

#[test]
fn rx_jumbo_frame_spans_a_big_packet_chain() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x4_0000)]).unwrap();
    let mut r = rig(&mem);
    let f = frame(9014, 0x77);
    r.peer.send(&f).unwrap();
    // Linux's "big packets" layout: the header alone, then page-sized buffers.
    add_chain(
        &r.rx,
        &[
            desc(0x1_0000, 12, true),
            desc(0x1_1000, 4096, true),
            desc(0x1_2000, 4096, true),
            desc(0x1_3000, 4096, true),
        ],
        0,
    );
    r.q.process_rx().unwrap();
    assert_eq!(used_entry(&r.rx, 0), (0, (NET_HDR_LEN + 9014) as u32));
    let mut got = read_mem(&mem, 0x1_1000, 4096);
    got.extend(read_mem(&mem, 0x1_2000, 4096));
    got.extend(read_mem(&mem, 0x1_3000, 9014 - 8192));
    assert_eq!(got, f);
}

#[test]
fn tx_strips_the_header_and_writes_the_frame() {
    let mem = test_memory();
    let mut r = rig(&mem);
    let f = frame(98, 0xcd);
    mem.write_slice(&[0u8; 12], GuestAddress(0x8000)).unwrap();
    mem.write_slice(&f[..40], GuestAddress(0x9000)).unwrap();
    mem.write_slice(&f[40..], GuestAddress(0xa000)).unwrap();
    add_chain(
        &r.tx,
        &[
            desc(0x8000, 12, false),
            desc(0x9000, 40, false),
            desc(0xa000, 58, false),
        ],
        0,
    );
    assert!(r.q.process_tx().unwrap());
    let mut got = [0u8; 256];
    let n = r.peer.recv(&mut got).unwrap();
    assert_eq!(&got[..n], &f[..]);
    assert_eq!(used_entry(&r.tx, 0), (0, 0));
    assert_eq!(r.q.stats().tx_frames, 1);
}

fn store(
    q: &MockSplitQueue<'_, GuestMemoryMmap>,
    i: u16,
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
) {
    q.desc_table()
        .store(i, RawDescriptor::from(D::new(addr, len, flags, next)))
        .unwrap();
}

fn publish(q: &MockSplitQueue<'_, GuestMemoryMmap>, heads: &[u16]) {
    for (i, h) in heads.iter().enumerate() {
        q.avail().ring().ref_at(i).unwrap().store(*h);
    }
    q.avail().idx().store(heads.len() as u16);
}

#[test]
fn malformed_tx_chains_send_nothing() {
    let mem = test_memory();
    let mut r = rig(&mem);
    let next = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
    let write = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
    // 0: device-writable buffer in TX.
    store(&r.tx, 0, 0x8000, 100, write, 0);
    // 1: outside guest memory.
    store(&r.tx, 1, 0x2_0000, 100, 0, 0);
    // 2: partly outside.
    store(&r.tx, 2, 0xffc0, 0x80, 0, 0);
    // 3: only a header.
    store(&r.tx, 3, 0x8000, 12, 0, 0);
    // 4 -> 5 -> 4: a loop.
    store(&r.tx, 4, 0x8000, 40, next, 5);
    store(&r.tx, 5, 0x9000, 40, next, 4);
    // 6 -> 99: next outside the 16-entry table.
    store(&r.tx, 6, 0x8000, 100, next, 99);
    // 7: longer than any frame (and than guest memory).
    store(&r.tx, 7, 0x0, (NET_HDR_LEN + MAX_FRAME + 1) as u32, 0, 0);
    publish(&r.tx, &[0, 1, 2, 3, 4, 6, 7]);
    assert!(r.q.process_tx().unwrap());
    assert_eq!(r.q.stats().rejected, 7);
    assert_eq!(r.q.stats().tx_frames, 0);
    assert_eq!(r.tx.used().idx().load(), 7, "every chain returned");
    let mut got = [0u8; 256];
    assert_eq!(
        r.peer.recv(&mut got).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "nothing reached the tap"
    );
}

#[test]
fn chain_validation_names_the_fault() {
    let mem = test_memory();
    let d = |addr, len, flags, next| D::new(addr, len, flags, next);
    let write = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
    let next = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
    let v = |descs: Vec<D>, dir| queues::validate_chain(&mem, descs.into_iter(), dir, 4096);
    use queues::Direction::{FromGuest, ToGuest};
    assert_eq!(v(vec![], FromGuest).unwrap_err(), ChainError::Empty);
    assert_eq!(
        v(vec![d(0x8000, 8, write, 0)], FromGuest).unwrap_err(),
        ChainError::WrongDirection
    );
    assert_eq!(
        v(vec![d(0x8000, 8, 0, 0)], ToGuest).unwrap_err(),
        ChainError::WrongDirection
    );
    assert_eq!(
        v(vec![d(0x8000, 8, next, 1)], FromGuest).unwrap_err(),
        ChainError::Truncated
    );
    assert_eq!(
        v(vec![d(0x8000, 4097, 0, 0)], FromGuest).unwrap_err(),
        ChainError::Size(4097)
    );
    assert!(matches!(
        v(vec![d(0x1_0000, 1, 0, 0)], FromGuest),
        Err(ChainError::OutsideMemory { .. })
    ));
    let (bufs, total) = v(vec![d(0x8000, 8, next, 1), d(0x9000, 8, 0, 0)], FromGuest).unwrap();
    assert_eq!((bufs.len(), total), (2, 16));
}

#[test]
fn bogus_avail_index_is_a_protocol_error() {
    let mem = test_memory();
    let mut r = rig(&mem);
    r.tx.avail().idx().store(500);
    assert!(matches!(r.q.process_tx(), Err(NetError::BadQueue(_))));
    r.rx.avail().idx().store(500);
    assert!(matches!(r.q.process_rx(), Err(NetError::BadQueue(_))));
}

#[test]
fn config_space_has_the_mac_and_features_follow_it() {
    let (a, _b) = UnixDatagram::pair().unwrap();
    let tap = File::from(std::os::fd::OwnedFd::from(a));
    let net = Net::with_tap(tap, Some([2, 0, 0, 0, 0, 9]), Some(9000)).unwrap();
    assert_eq!(net.device_type(), device_type::NET);
    assert_eq!(
        net.device_features(),
        VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC | VIRTIO_NET_F_MTU
    );
    let mut mac = [0u8; 6];
    net.read_config(0, &mut mac);
    assert_eq!(mac, [2, 0, 0, 0, 0, 9]);
    let mut mtu = [0u8; 2];
    net.read_config(10, &mut mtu);
    assert_eq!(u16::from_le_bytes(mtu), 9000);
    let mut tail = [0xffu8; 4];
    net.read_config(10, &mut tail);
    assert_eq!(tail, [0; 4], "reads past the config space read zeros");
    for mtu in [None, Some(67), Some(65536)] {
        let (a, _b) = UnixDatagram::pair().unwrap();
        let tap = File::from(std::os::fd::OwnedFd::from(a));
        let net = Net::with_tap(tap, None, mtu).unwrap();
        assert_eq!(net.device_features(), VIRTIO_F_VERSION_1, "{mtu:?}");
    }
}

#[path = "tests_device.rs"]
mod device;
pub use device::transport_round_trip;

#[path = "tests_backendless.rs"]
mod backendless;
