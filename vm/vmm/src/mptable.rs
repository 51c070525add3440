//! The Intel MultiProcessor table (spec 1.4) that tells a guest without ACPI how many CPUs,
//! which IOAPIC and which interrupt routing it has (Firecracker `arch/x86_64/mptable.rs`).
//! Written byte by byte, so no `ByteValued` impls (and no `unsafe`) are needed.

use hull_vmm_api::config::MAX_VCPUS;
use vm_memory::{Bytes, GuestAddress, GuestMemoryError};

use super::layout;
use super::memory::GuestMemoryMmap;

/// Errors from writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    #[error("{0} vCPUs do not fit the MP table (at most {MAX_VCPUS})")]
    TooManyCpus(u32),
    #[error("Failed to write the MP table")]
    Write(#[source] GuestMemoryError),
}

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const CPU_STEPPING: u32 = 0x600;
const CPU_FEATURE_APIC: u32 = 0x200;
const CPU_FEATURE_FPU: u32 = 0x001;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;

/// Bytes the table takes for `cpus` CPUs: floating pointer, header, entries.
pub const fn table_size(cpus: u32) -> u64 {
    16 + 44 + 20 * cpus as u64 + 8 + 8 + 8 * (layout::IRQ_MAX as u64 + 1) + 8 * 2
}

const _: () = assert!(layout::EBDA_START + table_size(MAX_VCPUS) <= layout::LOW_RAM_END);

fn checksum(bytes: &[u8]) -> u8 {
    let sum = bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    0u8.wrapping_sub(sum)
}

/// The table's entries (after the 44-byte header) for `cpus` CPUs.
fn entries(cpus: u8) -> (Vec<u8>, u16) {
    let mut e = Vec::new();
    let mut count = 0u16;
    for id in 0..cpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BOOTPROCESSOR } else { 0 };
        e.extend_from_slice(&[0, id, APIC_VERSION, flags]);
        e.extend_from_slice(&CPU_STEPPING.to_le_bytes());
        e.extend_from_slice(&(CPU_FEATURE_APIC | CPU_FEATURE_FPU).to_le_bytes());
        e.extend_from_slice(&[0; 8]);
        count += 1;
    }
    e.extend_from_slice(&[1, 0, b'I', b'S', b'A', b' ', b' ', b' ']); // bus 0: ISA
    let ioapic_id = cpus + 1;
    e.extend_from_slice(&[2, ioapic_id, IOAPIC_VERSION, 1]);
    e.extend_from_slice(&(layout::IOAPIC_START as u32).to_le_bytes());
    count += 2;
    for irq in 0..=(layout::IRQ_MAX as u8) {
        // I/O interrupt: ISA IRQ n → IOAPIC pin n, bus-default polarity and trigger.
        e.extend_from_slice(&[3, INT_TYPE_INT, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // Local interrupts: LINT0 = ExtINT on the BSP, LINT1 = NMI on all CPUs.
    e.extend_from_slice(&[4, INT_TYPE_EXTINT, 0, 0, 0, 0, 0, 0]);
    e.extend_from_slice(&[4, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;
    (e, count)
}

/// Write the MP floating pointer and configuration table at the start of the EBDA.
pub fn write_mptable(mem: &GuestMemoryMmap, cpus: u32) -> Result<(), MptableError> {
    let n = u8::try_from(cpus)
        .ok()
        .filter(|n| (1..=MAX_VCPUS).contains(&u32::from(*n)))
        .ok_or(MptableError::TooManyCpus(cpus))?;
    let table_addr = layout::EBDA_START + 16;
    let (body, count) = entries(n);
    let mut table = Vec::with_capacity(44 + body.len());
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&((44 + body.len()) as u16).to_le_bytes());
    table.push(4); // spec revision 1.4
    table.push(0); // checksum, below
    table.extend_from_slice(b"HULL    "); // OEM id
    table.extend_from_slice(b"HULL-VMM    "); // product id
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&(layout::APIC_START as u32).to_le_bytes());
    table.extend_from_slice(&[0; 4]); // extended table length/checksum, reserved
    table.extend_from_slice(&body);
    table[7] = checksum(&table);

    let mut fp = Vec::with_capacity(16);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&(table_addr as u32).to_le_bytes());
    fp.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]); // length (16-byte units), spec, checksum, features
    fp[10] = checksum(&fp);

    mem.write_slice(&fp, GuestAddress(layout::EBDA_START))
        .map_err(MptableError::Write)?;
    mem.write_slice(&table, GuestAddress(table_addr))
        .map_err(MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn read(m: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        m.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    #[test]
    fn tables_checksum_to_zero_and_count_cpus() {
        for cpus in [1, 2, MAX_VCPUS] {
            let m = mem();
            write_mptable(&m, cpus).unwrap();
            let fp = read(&m, layout::EBDA_START, 16);
            assert_eq!(&fp[..4], b"_MP_");
            assert_eq!(fp.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
            let addr = u64::from(u32::from_le_bytes([fp[4], fp[5], fp[6], fp[7]]));
            let hdr = read(&m, addr, 44);
            assert_eq!(&hdr[..4], b"PCMP");
            let len = usize::from(u16::from_le_bytes([hdr[4], hdr[5]]));
            assert_eq!(len as u64 + 16, table_size(cpus));
            let table = read(&m, addr, len);
            assert_eq!(table.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
            let procs = (0..cpus as usize)
                .filter(|i| table[44 + 20 * i] == 0)
                .count();
            assert_eq!(procs, cpus as usize);
            assert_eq!(table[44 + 3] & CPU_BOOTPROCESSOR, CPU_BOOTPROCESSOR);
        }
    }

    #[test]
    fn rejects_bad_cpu_counts() {
        assert!(matches!(
            write_mptable(&mem(), 0),
            Err(MptableError::TooManyCpus(0))
        ));
        assert!(matches!(
            write_mptable(&mem(), MAX_VCPUS + 1),
            Err(MptableError::TooManyCpus(_))
        ));
    }
}
