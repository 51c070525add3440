use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::*;
use crate::devices::rng::Rng;
use crate::devices::test_utils::test_memory;
use crate::devices::virtio::device_type;

fn transport() -> MmioTransport {
    let exit = Arc::new(ExitSignal::new().unwrap());
    MmioTransport::new(
        Box::new(Rng::new().unwrap()),
        test_memory(),
        EventFd::new(EFD_NONBLOCK).unwrap(),
        exit,
    )
    .unwrap()
}

fn rd(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn wr(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

const ACK: u32 = status::ACKNOWLEDGE;
const DRV: u32 = status::ACKNOWLEDGE | status::DRIVER;
const FOK: u32 = DRV | status::FEATURES_OK;
const DOK: u32 = FOK | status::DRIVER_OK;

fn negotiate(t: &mut MmioTransport) {
    wr(t, 0x70, ACK);
    wr(t, 0x70, DRV);
    wr(t, 0x24, 1);
    wr(t, 0x20, 1); // VERSION_1 is bit 32
    wr(t, 0x70, FOK);
}

fn setup_queue(t: &mut MmioTransport, size: u32) {
    wr(t, 0x30, 0);
    wr(t, 0x38, size);
    wr(t, 0x80, 0x1000);
    wr(t, 0x84, 0);
    wr(t, 0x90, 0x2000);
    wr(t, 0xa0, 0x3000);
    wr(t, 0x44, 1);
}

#[test]
fn identity_registers() {
    let mut t = transport();
    assert_eq!(rd(&mut t, 0x00), MMIO_MAGIC);
    assert_eq!(rd(&mut t, 0x04), 2);
    assert_eq!(rd(&mut t, 0x08), device_type::RNG);
    assert_eq!(rd(&mut t, 0x34), 256);
    wr(&mut t, 0x14, 1);
    assert_eq!(rd(&mut t, 0x10), 1, "VERSION_1 in the high word");
    wr(&mut t, 0x14, 0);
    assert_eq!(rd(&mut t, 0x10), 0);
}

#[test]
fn only_four_byte_register_accesses() {
    let mut t = transport();
    let mut two = [0xaau8; 2];
    t.read(0, &mut two);
    assert_eq!(two, [0xaa, 0xaa]);
    t.write(0x70, &[1]);
    assert_eq!(t.status(), 0);
}

#[test]
fn full_handshake_activates() {
    let mut t = transport();
    negotiate(&mut t);
    assert_eq!(rd(&mut t, 0x70), FOK);
    setup_queue(&mut t, 16);
    assert_eq!(rd(&mut t, 0x44), 1);
    wr(&mut t, 0x70, DOK);
    assert_eq!(rd(&mut t, 0x70), DOK);
    // Queue registers are frozen after DRIVER_OK.
    wr(&mut t, 0x38, 8);
    wr(&mut t, 0x70, 0);
    assert_eq!(rd(&mut t, 0x70), 0, "reset");
}

#[test]
fn status_cannot_skip_steps() {
    let mut t = transport();
    wr(&mut t, 0x70, DRV);
    assert_eq!(t.status(), 0);
    wr(&mut t, 0x70, ACK);
    wr(&mut t, 0x70, DOK);
    assert_eq!(t.status(), ACK);
    wr(&mut t, 0x70, ACK | status::FAILED);
    assert_eq!(t.status() & status::FAILED, status::FAILED);
}

#[test]
fn features_ok_needs_version_1() {
    let mut t = transport();
    wr(&mut t, 0x70, ACK);
    wr(&mut t, 0x70, DRV);
    wr(&mut t, 0x70, FOK);
    assert_eq!(t.status(), DRV, "FEATURES_OK refused without VERSION_1");
    // Unoffered feature bits are dropped.
    wr(&mut t, 0x24, 0);
    wr(&mut t, 0x20, 0xffff_ffff);
    wr(&mut t, 0x70, FOK);
    assert_eq!(t.status(), DRV);
}

#[test]
fn features_frozen_after_features_ok() {
    let mut t = transport();
    negotiate(&mut t);
    wr(&mut t, 0x24, 1);
    wr(&mut t, 0x20, 0);
    assert_eq!(t.acked_features, VIRTIO_F_VERSION_1);
}

#[test]
fn bad_queue_sizes_are_rejected() {
    let mut t = transport();
    negotiate(&mut t);
    wr(&mut t, 0x38, 3); // not a power of two
    wr(&mut t, 0x38, 512); // above max
    wr(&mut t, 0x38, 0);
    assert_eq!(t.queues[0].size(), 256);
    wr(&mut t, 0x30, 7); // no such queue: writes go nowhere
    wr(&mut t, 0x38, 16);
    assert_eq!(rd(&mut t, 0x34), 0);
}

#[test]
fn queue_outside_memory_blocks_driver_ok() {
    let mut t = transport();
    negotiate(&mut t);
    setup_queue(&mut t, 256);
    wr(&mut t, 0xa0, 0xfff0); // used ring runs past the end of guest memory
    wr(&mut t, 0x70, DOK);
    assert_eq!(t.status(), FOK | status::DEVICE_NEEDS_RESET);
}

#[test]
fn misaligned_ring_is_ignored() {
    let mut t = transport();
    negotiate(&mut t);
    setup_queue(&mut t, 16);
    wr(&mut t, 0x80, 0x1004); // descriptor table must be 16-byte aligned
    assert_eq!(t.queues[0].desc_table(), 0x1000);
}

#[test]
fn notify_without_ioeventfd_signals_the_queue_eventfd() {
    let mut t = transport();
    wr(&mut t, QUEUE_NOTIFY_OFFSET, 0);
    assert_eq!(t.queue_evts()[0].read().unwrap(), 1);
    wr(&mut t, QUEUE_NOTIFY_OFFSET, 9); // no such queue
}

#[test]
fn interrupt_ack_clears_status() {
    let t = transport();
    t.interrupt().trigger(1).unwrap();
    let mut t = t;
    assert_eq!(rd(&mut t, 0x60), 1);
    wr(&mut t, 0x64, 1);
    assert_eq!(rd(&mut t, 0x60), 0);
    let _ = GuestAddress(0);
}

#[test]
fn no_shared_memory_regions() {
    let mut t = transport();
    wr(&mut t, 0xac, 0);
    for off in [0xb0, 0xb4, 0xb8, 0xbc] {
        assert_eq!(rd(&mut t, off), u32::MAX, "register {off:#x}");
    }
}

#[test]
fn a_restored_transport_is_live_where_the_used_ring_left_off() {
    let mut t = transport();
    negotiate(&mut t);
    setup_queue(&mut t, 16);
    wr(&mut t, 0x70, DOK);
    assert_eq!(t.status(), DOK);
    let state = t.state();
    assert_eq!(state.queues[0].size, 16);
    assert_eq!(state.queues[0].desc_table, 0x1000);
    // The device had completed 5 chains: used->idx (used ring + 2) says so.
    t.mem.write_obj(5u16, GuestAddress(0x3000 + 2)).unwrap();
    let mut fresh = transport();
    fresh.mem = t.mem.clone();
    fresh.restore(&state).unwrap();
    assert_eq!(fresh.status(), DOK);
    assert!(fresh.activated);
    assert_eq!(fresh.queues[0].next_avail(), 5);
    assert_eq!(fresh.queues[0].next_used(), 5);
    assert_eq!(rd(&mut fresh, 0x44), 1, "queue ready");
}

#[test]
fn a_snapshot_of_another_device_or_a_bad_queue_is_refused() {
    let mut t = transport();
    negotiate(&mut t);
    setup_queue(&mut t, 16);
    wr(&mut t, 0x70, DOK);
    let mut state = t.state();
    state.device_type = device_type::NET;
    assert!(matches!(
        transport().restore(&state),
        Err(MmioError::RestoreDeviceType { .. })
    ));
    let mut state = t.state();
    state.queues[0].size = 3;
    assert!(matches!(
        transport().restore(&state),
        Err(MmioError::RestoreQueue(0))
    ));
    for used_ring in [u64::MAX - 1, u64::MAX - 3] {
        // Misaligned, then aligned but outside guest memory.
        let mut state = t.state();
        state.queues[0].used_ring = used_ring;
        assert!(matches!(
            transport().restore(&state),
            Err(MmioError::RestoreQueue(0))
        ));
    }
    let mut state = t.state();
    state.queues.clear();
    assert!(matches!(
        transport().restore(&state),
        Err(MmioError::RestoreQueueCount { .. })
    ));
}
