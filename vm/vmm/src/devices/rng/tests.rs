use std::sync::Arc;

use virtio_queue::Queue;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::*;
use crate::devices::test_utils::{add_chain, desc, test_memory, used_entry};

fn rng_queue<'a>(mem: &'a GuestMemoryMmap) -> (MockSplitQueue<'a, GuestMemoryMmap>, RngQueue) {
    let mock = MockSplitQueue::create(mem, GuestAddress(0x1000), 16);
    let queue: Queue = mock.create_queue().unwrap();
    let rq = RngQueue {
        mem: mem.clone(),
        queue,
        interrupt: Arc::new(VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap())),
        entropy: File::open("/dev/urandom").unwrap(),
        rejected: 0,
    };
    (mock, rq)
}

#[test]
fn fills_writable_buffers_and_interrupts() {
    let mem = test_memory();
    let (mock, mut rq) = rng_queue(&mem);
    add_chain(&mock, &[desc(0x8000, 64, true), desc(0x9000, 32, true)], 0);
    rq.process().unwrap();
    assert_eq!(mock.used().idx().load(), 1);
    assert_eq!(used_entry(&mock, 0), (0, 96));
    let mut buf = [0u8; 64];
    mem.read_slice(&mut buf, GuestAddress(0x8000)).unwrap();
    assert_ne!(buf, [0u8; 64], "64 random bytes are not all zero");
    assert_eq!(rq.interrupt.status() & INT_VRING, INT_VRING);
    assert_eq!(rq.interrupt.irqfd().read().unwrap(), 1);
}

#[test]
fn read_only_descriptor_is_refused_without_writing() {
    let mem = test_memory();
    let (mock, mut rq) = rng_queue(&mem);
    // A writable descriptor first, then a device-readable one: nothing may be written.
    add_chain(&mock, &[desc(0x8000, 16, true), desc(0x9000, 16, false)], 0);
    rq.process().unwrap();
    assert_eq!(used_entry(&mock, 0), (0, 0));
    let mut buf = [0xffu8; 16];
    mem.read_slice(&mut buf, GuestAddress(0x8000)).unwrap();
    assert_eq!(buf, [0u8; 16]);
    assert_eq!(rq.rejected, 1);
}

#[test]
fn buffer_outside_guest_memory_is_refused() {
    let mem = test_memory();
    let (mock, mut rq) = rng_queue(&mem);
    add_chain(
        &mock,
        &[desc(0x8000, 16, true), desc(0xfff0, 0x20, true)],
        0,
    );
    add_chain(&mock, &[desc(u64::MAX - 4, 16, true)], 2);
    add_chain(&mock, &[desc(0x2_0000, 16, true)], 3);
    rq.process().unwrap();
    assert_eq!(mock.used().idx().load(), 3);
    for i in 0..3 {
        assert_eq!(used_entry(&mock, i).1, 0);
    }
    let mut buf = [0xffu8; 16];
    mem.read_slice(&mut buf, GuestAddress(0x8000)).unwrap();
    assert_eq!(buf, [0u8; 16], "a partly bad chain writes nothing");
    assert_eq!(rq.rejected, 3);
}

#[test]
fn oversized_chain_is_refused() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x4_0000)]).unwrap();
    let (mock, mut rq) = rng_queue(&mem);
    add_chain(
        &mock,
        &[desc(0x1_0000, 0x1_0000, true), desc(0x2_0000, 1, true)],
        0,
    );
    rq.process().unwrap();
    assert_eq!(used_entry(&mock, 0), (0, 0));
    assert_eq!(rq.rejected, 1);
}

#[test]
fn looping_chain_terminates() {
    let mem = test_memory();
    let (mock, mut rq) = rng_queue(&mem);
    // Descriptor 0 -> 1 -> 0 -> ...: the chain's hop budget (queue size) ends it.
    let next = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
    let write = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
    use virtio_queue::desc::{RawDescriptor, split::Descriptor as D};
    mock.desc_table()
        .store(0, RawDescriptor::from(D::new(0x8000, 8, next | write, 1)))
        .unwrap();
    mock.desc_table()
        .store(1, RawDescriptor::from(D::new(0x9000, 8, next | write, 0)))
        .unwrap();
    mock.avail().ring().ref_at(0).unwrap().store(0);
    mock.avail().idx().store(1);
    rq.process().unwrap();
    assert_eq!(mock.used().idx().load(), 1);
    // 16 descriptors of 8 bytes at most: the budget, not an endless loop.
    assert!(used_entry(&mock, 0).1 <= 16 * 8);
}

#[test]
fn bogus_avail_index_is_a_protocol_error() {
    let mem = test_memory();
    let (mock, mut rq) = rng_queue(&mem);
    // The driver claims 1000 new buffers in a 16-entry queue.
    mock.avail().idx().store(1000);
    let err = rq.process().unwrap_err();
    assert!(matches!(
        err,
        RngError::BadQueue(QueueCheckError::InvalidAvailIdx {
            avail: 1000,
            next: 0
        })
    ));
    assert_eq!(mock.used().idx().load(), 0);
}
