//! A device without a backend (VM templates): the same device to the guest, TX chains
//! validated and completed with their frames counted dropped, RX buffers left posted.

use virtio_queue::QueueT;

use super::device::{setup_queue, wait_until, wr};
use super::*;
use crate::devices::bus::BusDevice;
use crate::devices::mmio::MmioTransport;
use crate::devices::virtio::status;
use crate::exit::ExitSignal;

const MAC: [u8; 6] = [2, 0, 0, 0, 0, 7];

#[test]
fn tx_chains_are_completed_and_counted_dropped() {
    let mem = test_memory();
    let (_rx, tx, mut q) = queues(&mem, (0x1000, 0x3000), None);
    let f = frame(98, 0xcd);
    mem.write_slice(&f, GuestAddress(0x9000)).unwrap();
    add_chain(&tx, &[desc(0x8000, 12, false), desc(0x9000, 98, false)], 0);
    add_chain(&tx, &[desc(0xa000, 12 + 60, false)], 2);
    assert!(q.process_tx().unwrap());
    assert_eq!(tx.used().idx().load(), 2);
    assert_eq!(used_entry(&tx, 0), (0, 0));
    assert_eq!(used_entry(&tx, 1), (2, 0));
    let stats = q.stats();
    assert_eq!(
        (stats.tx_dropped, stats.tx_frames, stats.rejected),
        (2, 0, 0)
    );
    q.notify(false, true).unwrap();
    assert_eq!(q.interrupt.status() & INT_VRING, INT_VRING);
    assert_eq!(q.interrupt.irqfd().read().unwrap(), 1);
    assert!(!q.process_tx().unwrap(), "nothing more to do");
}

#[test]
fn malformed_tx_chains_are_still_refused() {
    let mem = test_memory();
    let (_rx, tx, mut q) = queues(&mem, (0x1000, 0x3000), None);
    add_chain(&tx, &[desc(0x8000, 100, true)], 0); // device-writable in TX
    add_chain(&tx, &[desc(0xfff0, 0x80, false)], 1); // partly outside guest memory
    add_chain(&tx, &[desc(0x8000, 12, false)], 2); // only a header
    add_chain(
        &tx,
        &[desc(0x8000, (NET_HDR_LEN + MAX_FRAME + 1) as u32, false)],
        3,
    );
    add_chain(&tx, &[desc(0x9000, 12 + 60, false)], 4); // good
    q.process_tx().unwrap();
    assert_eq!(tx.used().idx().load(), 5, "every chain returned");
    let stats = q.stats();
    assert_eq!(
        (stats.rejected, stats.tx_dropped, stats.tx_frames),
        (4, 1, 0)
    );
    tx.avail().idx().store(500);
    assert!(matches!(q.process_tx(), Err(NetError::BadQueue(_))));
}

#[test]
fn rx_does_nothing_and_leaves_guest_memory_alone() {
    let mem = test_memory();
    let (rx, _tx, mut q) = queues(&mem, (0x1000, 0x3000), None);
    mem.write_slice(&[0x5a; 0x2000], GuestAddress(0x8000))
        .unwrap();
    add_chain(&rx, &[desc(0x9000, 1600, false)], 0); // malformed: not even refused
    add_chain(&rx, &[desc(0x8000, 1600, true)], 1);
    let before = read_mem(&mem, 0, 0x1_0000);
    for _ in 0..3 {
        assert_eq!(q.process_rx().unwrap(), queues::RxPass::default());
        q.notify(false, false).unwrap();
    }
    assert_eq!(
        read_mem(&mem, 0, 0x1_0000),
        before,
        "guest memory untouched"
    );
    assert_eq!(q.rxq.next_avail(), 0, "no RX chain taken");
    assert_eq!(q.interrupt.status(), 0);
    assert_eq!(q.stats(), NetStats::default());
}

#[test]
fn features_and_config_match_a_1500_mtu_tap_device() {
    let (a, _b) = UnixDatagram::pair().unwrap();
    let tapped = Net::with_tap(
        File::from(std::os::fd::OwnedFd::from(a)),
        Some(MAC),
        Some(1500),
    );
    let tapped = tapped.unwrap();
    for mac in [Some(MAC), None] {
        let net = Net::without_backend(mac).unwrap();
        let mac_feature = if mac.is_some() { VIRTIO_NET_F_MAC } else { 0 };
        assert_eq!(
            net.device_features(),
            VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MTU | mac_feature
        );
        assert_eq!(net.device_type(), device_type::NET);
        assert_eq!(net.queue_max_sizes(), tapped.queue_max_sizes());
    }
    let net = Net::without_backend(Some(MAC)).unwrap();
    assert_eq!(net.device_features(), tapped.device_features());
    let (mut ours, mut theirs) = ([0xffu8; 12], [0u8; 12]);
    net.read_config(0, &mut ours);
    tapped.read_config(0, &mut theirs);
    assert_eq!(ours, theirs);
    assert_eq!(&ours[..6], &MAC);
    assert_eq!(
        ours[6..8],
        [0, 0],
        "status reads zero: no VIRTIO_NET_F_STATUS, link up"
    );
    assert_eq!(u16::from_le_bytes([ours[10], ours[11]]), 1500);
}

/// The driver's side of a probe: features (MAC, MTU, VERSION_1) and both queues.
fn driver_ok(
    t: &mut MmioTransport,
    rx: &MockSplitQueue<'_, GuestMemoryMmap>,
    tx: &MockSplitQueue<'_, GuestMemoryMmap>,
) {
    let drv = status::ACKNOWLEDGE | status::DRIVER;
    wr(t, 0x70, status::ACKNOWLEDGE);
    wr(t, 0x70, drv);
    wr(t, 0x24, 0);
    wr(t, 0x20, (VIRTIO_NET_F_MAC | VIRTIO_NET_F_MTU) as u32);
    wr(t, 0x24, 1);
    wr(t, 0x20, 1);
    wr(t, 0x70, drv | status::FEATURES_OK);
    setup_queue(t, 0, rx);
    setup_queue(t, 1, tx);
    let dok = drv | status::FEATURES_OK | status::DRIVER_OK;
    wr(t, 0x70, dok);
    assert_eq!(t.status(), dok, "device activated");
}

/// One TX frame and one posted RX buffer: the frame is completed and dropped, the buffer
/// stays posted.
fn tx_one_rx_none(
    t: &mut MmioTransport,
    mem: &GuestMemoryMmap,
    (rx, tx): (
        &MockSplitQueue<'_, GuestMemoryMmap>,
        &MockSplitQueue<'_, GuestMemoryMmap>,
    ),
    counters: &NetCounters,
    dropped: u64,
) {
    mem.write_slice(&[0x5a; 1600], GuestAddress(0x8000))
        .unwrap();
    add_chain(rx, &[desc(0x8000, 1600, true)], 0);
    wr(t, 0x50, 0);
    add_chain(tx, &[desc(0xa000, 12 + 64, false)], 0);
    wr(t, 0x50, 1);
    wait_until("tx used", || tx.used().idx().load() == 1);
    wait_until("interrupt", || t.interrupt().status() & INT_VRING != 0);
    assert_eq!(t.interrupt().irqfd().read().unwrap(), 1);
    assert_eq!(counters.snapshot().tx_dropped, dropped);
    wr(t, 0x50, 0);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(rx.used().idx().load(), 0, "RX buffer still posted");
    assert_eq!(read_mem(mem, 0x8000, 1600), vec![0x5a; 1600]);
}

#[test]
fn activation_reset_and_reactivation_through_the_transport() {
    let mem = test_memory();
    let net = Net::without_backend(Some(MAC)).unwrap();
    let counters = net.counters();
    let exit = Arc::new(ExitSignal::new().unwrap());
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let mut t = MmioTransport::new(Box::new(net), mem.clone(), irq, exit.clone()).unwrap();
    let rx = MockSplitQueue::create(&mem, GuestAddress(0x1000), 16);
    let tx = MockSplitQueue::create(&mem, GuestAddress(0x3000), 16);
    driver_ok(&mut t, &rx, &tx);
    let mut mac = [0u8; 6];
    t.read(0x100, &mut mac);
    assert_eq!(mac, MAC);
    tx_one_rx_none(&mut t, &mem, (&rx, &tx), &counters, 1);

    // Reset, then the driver probes again on fresh rings: the worker serves again.
    wr(&mut t, 0x70, 0);
    assert_eq!(t.status(), 0);
    // No pause: the re-activation comes before the worker has seen the stop, and the new
    // activation must still be served (see spawn_device_thread's generation check).
    let rx = MockSplitQueue::create(&mem, GuestAddress(0x5000), 16);
    let tx = MockSplitQueue::create(&mem, GuestAddress(0x6000), 16);
    driver_ok(&mut t, &rx, &tx);
    tx_one_rx_none(&mut t, &mem, (&rx, &tx), &counters, 2);
    assert!(exit.reason().is_none(), "the device did not stop the VM");
    let stats = counters.snapshot();
    assert_eq!(
        (stats.tx_frames, stats.rx_frames, stats.rejected),
        (0, 0, 0)
    );
}
