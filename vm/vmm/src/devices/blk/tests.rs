use std::io::Write;
use std::sync::Arc;

use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::*;
use crate::devices::test_utils::{add_chain, desc, used_entry};

const HDR: u64 = 0x8000;
const DATA: u64 = 0x9000;
const STATUS: u64 = 0xa000;

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x4_0000)]).unwrap()
}

fn disk(sectors: u64) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    for s in 0..sectors {
        f.write_all(&[s as u8; SECTOR as usize]).unwrap();
    }
    f
}

fn blk_queue<'a>(
    mem: &'a GuestMemoryMmap,
    file: &tempfile::NamedTempFile,
    read_only: bool,
) -> (MockSplitQueue<'a, GuestMemoryMmap>, BlkQueue) {
    let mock = MockSplitQueue::create(mem, GuestAddress(0x1000), 16);
    let q = BlkQueue {
        mem: mem.clone(),
        queue: mock.create_queue().unwrap(),
        interrupt: Arc::new(VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap())),
        disk: Arc::new(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(file.path())
                .unwrap(),
        ),
        capacity_sectors: file.as_file().metadata().unwrap().len() / SECTOR,
        read_only,
        id: *b"disk-id-for-tests\0\0\0",
        rejected: 0,
    };
    (mock, q)
}

fn header(mem: &GuestMemoryMmap, ty: u32, sector: u64) {
    mem.write_obj(ty, GuestAddress(HDR)).unwrap();
    mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
    mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
    mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
}

fn status(mem: &GuestMemoryMmap) -> u8 {
    mem.read_obj(GuestAddress(STATUS)).unwrap()
}

#[test]
fn read_then_write_then_flush() {
    let mem = memory();
    let f = disk(16);
    let (mock, mut q) = blk_queue(&mem, &f, false);
    header(&mem, T_IN, 3);
    add_chain(
        &mock,
        &[
            desc(HDR, 16, false),
            desc(DATA, 1024, true),
            desc(STATUS, 1, true),
        ],
        0,
    );
    q.process().unwrap();
    assert_eq!(status(&mem), S_OK);
    assert_eq!(used_entry(&mock, 0), (0, 1025));
    let mut buf = [0u8; 1024];
    mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
    assert!(buf[..512].iter().all(|b| *b == 3) && buf[512..].iter().all(|b| *b == 4));

    mem.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
    header(&mem, T_OUT, 15);
    add_chain(
        &mock,
        &[
            desc(HDR, 16, false),
            desc(DATA, 512, false),
            desc(STATUS, 1, true),
        ],
        3,
    );
    q.process().unwrap();
    assert_eq!(status(&mem), S_OK);
    let mut on_disk = [0u8; 512];
    q.disk.read_exact_at(&mut on_disk, 15 * SECTOR).unwrap();
    assert_eq!(on_disk, [0xab; 512]);

    header(&mem, T_FLUSH, 0);
    add_chain(&mock, &[desc(HDR, 16, false), desc(STATUS, 1, true)], 6);
    q.process().unwrap();
    assert_eq!(status(&mem), S_OK);
    assert_eq!(q.interrupt.status() & INT_VRING, INT_VRING);
}

#[test]
fn get_id() {
    let mem = memory();
    let f = disk(4);
    let (mock, mut q) = blk_queue(&mem, &f, false);
    header(&mem, T_GET_ID, 0);
    add_chain(
        &mock,
        &[
            desc(HDR, 16, false),
            desc(DATA, 20, true),
            desc(STATUS, 1, true),
        ],
        0,
    );
    q.process().unwrap();
    let mut id = [0u8; 20];
    mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..17], b"disk-id-for-tests");
}

/// Runs one chain and returns (status byte, the refusal count).
fn refused(
    descs: &[virtio_queue::desc::RawDescriptor],
    ty: u32,
    sector: u64,
    ro: bool,
) -> (u8, u64) {
    let mem = memory();
    let f = disk(16);
    let (mock, mut q) = blk_queue(&mem, &f, ro);
    header(&mem, ty, sector);
    mem.write_slice(&[0x5a; 512], GuestAddress(DATA)).unwrap();
    add_chain(&mock, descs, 0);
    q.process().unwrap();
    assert_eq!(mock.used().idx().load(), 1, "the chain is always returned");
    // Nothing was written to the disk by a refused request.
    let mut all = vec![0u8; 16 * 512];
    q.disk.read_exact_at(&mut all, 0).unwrap();
    assert!(
        all.chunks(512)
            .enumerate()
            .all(|(i, s)| s.iter().all(|b| *b == i as u8))
    );
    (status(&mem), q.rejected)
}

#[test]
fn one_test_per_parse_error() {
    let h = desc(HDR, 16, false);
    let st = desc(STATUS, 1, true);
    // Out of range: sector 15 + 2 sectors on a 16-sector disk.
    assert_eq!(
        refused(&[h, desc(DATA, 1024, false), st], T_OUT, 15, false),
        (S_IOERR, 1)
    );
    // Sector number that overflows when multiplied.
    assert_eq!(
        refused(&[h, desc(DATA, 512, false), st], T_OUT, u64::MAX / 2, false),
        (S_IOERR, 1)
    );
    // Partial sector.
    assert_eq!(
        refused(&[h, desc(DATA, 100, false), st], T_OUT, 0, false),
        (S_IOERR, 1)
    );
    // Wrong direction: a write whose data the device would have to write.
    assert_eq!(
        refused(&[h, desc(DATA, 512, true), st], T_OUT, 0, false),
        (S_IOERR, 1)
    );
    // Read-only disk.
    assert_eq!(
        refused(&[h, desc(DATA, 512, false), st], T_OUT, 0, true),
        (S_IOERR, 1)
    );
    // Unsupported type.
    assert_eq!(refused(&[h, st], 99, 0, false), (S_UNSUPP, 1));
    // Data outside guest memory.
    assert_eq!(
        refused(&[h, desc(0x3_ff00, 512, false), st], T_OUT, 0, false),
        (S_IOERR, 1)
    );
    // Too big.
    let big = desc(DATA, (MAX_REQUEST_BYTES + 512) as u32, true);
    assert_eq!(refused(&[h, big, st], T_IN, 0, false), (S_IOERR, 1));
    // Short header.
    assert_eq!(
        refused(&[desc(HDR, 8, false), st], T_FLUSH, 0, false),
        (S_IOERR, 1)
    );
    // Status not writable: no status can be written, the chain is returned with length 0.
    assert_eq!(
        refused(&[h, desc(STATUS, 1, false)], T_FLUSH, 0, false),
        (0xff, 1)
    );
    // Status outside memory.
    assert_eq!(
        refused(&[h, desc(0x10_0000, 1, true)], T_FLUSH, 0, false),
        (0xff, 1)
    );
}

#[test]
fn config_reports_capacity() {
    let f = disk(8);
    let dev = Blk::new(f.path(), true).unwrap();
    let mut b = [0u8; 8];
    dev.read_config(0, &mut b);
    assert_eq!(u64::from_le_bytes(b), 8);
    assert_ne!(dev.device_features() & VIRTIO_BLK_F_RO, 0);
}
