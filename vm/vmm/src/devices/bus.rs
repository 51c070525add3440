//! Port-I/O and MMIO address spaces: which device answers at which address.
//!
//! Built once before the vCPUs start and then only read, so lookups take no lock; each device
//! has its own mutex (vCPU threads and the event loop may reach the same device).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// A device on a bus. `offset` is relative to the base it was inserted at.
pub trait BusDevice: Send {
    /// A guest read of `data.len()` bytes. Fill `data`; leave it zeroed to read as 0.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// A guest write.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared between the bus and its owner.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors from building a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("Device range {base:#x}+{len:#x} overlaps another device or wraps")]
    Overlap { base: u64, len: u64 },
    #[error("Device range at {0:#x} has zero length")]
    Empty(u64),
}

#[derive(Clone)]
struct Entry {
    len: u64,
    device: SharedDevice,
}

/// One address space (port I/O or MMIO).
#[derive(Clone, Default)]
pub struct Bus {
    entries: BTreeMap<u64, Entry>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges: Vec<_> = self.entries.iter().map(|(b, e)| (*b, e.len)).collect();
        f.debug_struct("Bus").field("ranges", &ranges).finish()
    }
}

/// Lock a device even if a thread panicked while holding it: the device state is still the
/// best we have, and the VMM is about to stop anyway.
pub fn lock(device: &SharedDevice) -> MutexGuard<'_, dyn BusDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Put `device` at `base..base+len`.
    pub fn insert(&mut self, base: u64, len: u64, device: SharedDevice) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::Empty(base));
        }
        let end = base
            .checked_add(len)
            .ok_or(BusError::Overlap { base, len })?;
        if let Some((prev_base, prev)) = self.entries.range(..end).next_back()
            && prev_base + prev.len > base
        {
            return Err(BusError::Overlap { base, len });
        }
        self.entries.insert(base, Entry { len, device });
        Ok(())
    }

    /// The device covering the whole access `addr..addr+size`, and the offset into it.
    fn resolve(&self, addr: u64, size: usize) -> Option<(&Entry, u64)> {
        let (base, entry) = self.entries.range(..=addr).next_back()?;
        let offset = addr - base;
        let end = offset.checked_add(u64::try_from(size).ok()?)?;
        (end <= entry.len).then_some((entry, offset))
    }

    /// Route a read. Returns false (and leaves `data` alone) if no device covers it.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((entry, offset)) => {
                lock(&entry.device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Route a write. Returns false if no device covers it.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((entry, offset)) => {
                lock(&entry.device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_range_with_offsets() {
        let mut bus = Bus::new();
        let a = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(0x100, 0x10, a.clone()).unwrap();
        let mut buf = [0u8; 2];
        assert!(bus.read(0x104, &mut buf));
        assert_eq!(buf, [4, 4]);
        assert!(bus.write(0x10f, &[9]));
        assert_eq!(a.lock().unwrap().writes, vec![(0xf, vec![9])]);
    }

    #[test]
    fn accesses_outside_or_straddling_are_unclaimed() {
        let mut bus = Bus::new();
        bus.insert(0x100, 0x10, Arc::new(Mutex::new(Recorder::default())))
            .unwrap();
        let mut buf = [0xaau8; 4];
        assert!(!bus.read(0xff, &mut buf));
        assert!(!bus.read(0x10e, &mut buf)); // straddles the end
        assert!(!bus.write(0x110, &[1]));
        assert!(!bus.read(u64::MAX, &mut buf));
        assert_eq!(buf, [0xaa; 4]);
    }

    #[test]
    fn overlaps_are_rejected() {
        let mut bus = Bus::new();
        let d = || -> SharedDevice { Arc::new(Mutex::new(Recorder::default())) };
        bus.insert(0x100, 0x10, d()).unwrap();
        assert!(bus.insert(0x10f, 1, d()).is_err());
        assert!(bus.insert(0xf8, 0x9, d()).is_err());
        assert!(bus.insert(u64::MAX, 2, d()).is_err());
        assert_eq!(bus.insert(0x200, 0, d()), Err(BusError::Empty(0x200)));
        bus.insert(0x110, 0x10, d()).unwrap();
        bus.insert(0xf0, 0x10, d()).unwrap();
    }
}
