//! Helpers for driving devices through real queues in guest memory in unit tests
//! (Firecracker `devices/virtio/test_utils.rs`, on virtio-queue's `MockSplitQueue`).

use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestAddress;

use crate::memory::GuestMemoryMmap;

/// 64 KiB of guest memory: queues at 0x1000, buffers from 0x8000.
pub fn test_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1_0000)]).expect("test memory")
}

/// A descriptor: `write` = device-writable; NEXT is set by [`add_chain`].
pub fn desc(addr: u64, len: u32, write: bool) -> RawDescriptor {
    let flags = if write {
        virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16
    } else {
        0
    };
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
}

/// Put `descs` as one chain at descriptor index `first`, linked with NEXT, and publish it.
pub fn add_chain(q: &MockSplitQueue<'_, GuestMemoryMmap>, descs: &[RawDescriptor], first: u16) {
    let n = descs.len();
    let linked: Vec<RawDescriptor> = descs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let d = SplitDescriptor::from(*d);
            let next_flag = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
            let (flags, next) = if i + 1 < n {
                (d.flags() | next_flag, first + i as u16 + 1)
            } else {
                (d.flags() & !next_flag, 0)
            };
            RawDescriptor::from(SplitDescriptor::new(d.addr().0, d.len(), flags, next))
        })
        .collect();
    q.add_desc_chains(&linked, first).expect("add chain");
}

/// The (id, len) of used-ring entry `i`.
pub fn used_entry(q: &MockSplitQueue<'_, GuestMemoryMmap>, i: u16) -> (u32, u32) {
    let e = q
        .used()
        .ring()
        .ref_at(usize::from(i))
        .expect("used entry")
        .load();
    (e.id(), e.len())
}
