//! Tiny hand-assembled guest payloads on this machine's /dev/kvm (the bytes are in the test,
//! the assembly is in the comments). They exercise vCPU setup for each entry mode, port I/O
//! through the bus (serial, i8042 reset), MMIO exits, and the exit-reason plumbing.
//!
//! Needs /dev/kvm (root); fails with a clear message otherwise.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::sync::{Arc, Mutex};

use hull_vmm::devices::bus::{Bus, BusDevice};
use hull_vmm::devices::i8042::I8042;
use hull_vmm::devices::serial::SerialDevice;
use hull_vmm::exit::{ExitReason, ExitSignal};
use hull_vmm::kvm::{KvmVm, KvmVmOptions};
use hull_vmm::memory::GuestRam;
use hull_vmm::regs::BootEntry;
use hull_vmm::vcpu::Vcpu;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// A `Write` whose bytes the test can read back.
#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SharedBuf {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Records every access (port 0x80 "debug port", or an MMIO window).
#[derive(Default)]
struct Recorder {
    reads: Vec<(u64, usize)>,
    writes: Vec<(u64, Vec<u8>)>,
    read_value: u32,
}

impl BusDevice for Recorder {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.reads.push((offset, data.len()));
        let v = self.read_value.to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&v[..n]);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.writes.push((offset, data.to_vec()));
    }
}

struct TestVm {
    ram: GuestRam,
    vm: KvmVm,
    exit: Arc<ExitSignal>,
    console: SharedBuf,
    port80: Arc<Mutex<Recorder>>,
    mmio_dev: Arc<Mutex<Recorder>>,
}

fn kvm_or_explain() {
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "these tests need /dev/kvm (run as root on a host with KVM)"
    );
}

impl TestVm {
    fn new(irqchip: bool) -> Self {
        kvm_or_explain();
        let ram = GuestRam::new(32).unwrap();
        let vm = KvmVm::new(KvmVmOptions { irqchip }).unwrap();
        vm.register_memory(&ram).unwrap();
        Self {
            ram,
            vm,
            exit: Arc::new(ExitSignal::new().unwrap()),
            console: SharedBuf::default(),
            port80: Arc::new(Mutex::new(Recorder::default())),
            mmio_dev: Arc::new(Mutex::new(Recorder {
                read_value: 0x7472_6976,
                ..Default::default()
            })),
        }
    }

    fn buses(&self) -> (Arc<Bus>, Arc<Bus>) {
        let mut pio = Bus::new();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        if self.vm.has_irqchip() {
            self.vm.register_irqfd(&irq, 4).unwrap();
        }
        let serial = SerialDevice::new(irq, self.console.clone());
        pio.insert(0x3f8, 8, Arc::new(Mutex::new(serial))).unwrap();
        pio.insert(0x60, 5, Arc::new(Mutex::new(I8042::new(self.exit.clone()))))
            .unwrap();
        pio.insert(0x80, 4, self.port80.clone()).unwrap();
        let mut mmio = Bus::new();
        mmio.insert(0xc000_0000, 0x1000, self.mmio_dev.clone())
            .unwrap();
        (Arc::new(pio), Arc::new(mmio))
    }

    /// Load `code` at `addr`, set up vCPU 0 for `entry`, run to the end.
    fn run(&self, code: &[u8], addr: u64, entry: BootEntry) -> (ExitReason, Vcpu) {
        self.ram
            .memory
            .write_slice(code, GuestAddress(addr))
            .unwrap();
        let (pio, mmio) = self.buses();
        let mut vcpu = Vcpu::new(&self.vm, 0, pio, mmio, self.exit.clone()).unwrap();
        vcpu.configure(&self.vm, &self.ram.memory, entry, 1)
            .unwrap();
        let reason = vcpu.run();
        (reason, vcpu)
    }
}

#[test]
fn real_mode_serial_and_i8042_reset() {
    // mov $0x3f8,%dx; mov $'H',%al; out %al,%dx; mov $'i',%al; out %al,%dx;
    // mov $'\n',%al; out %al,%dx; mov $0xfe,%al; out %al,$0x64; hlt
    let code = [
        0xba, 0xf8, 0x03, 0xb0, 0x48, 0xee, 0xb0, 0x69, 0xee, 0xb0, 0x0a, 0xee, 0xb0, 0xfe, 0xe6,
        0x64, 0xf4,
    ];
    let t = TestVm::new(false);
    let (reason, vcpu) = t.run(&code, 0x1000, BootEntry::RealMode { ip: 0x1000 });
    assert_eq!(reason, ExitReason::GuestShutdown);
    assert_eq!(t.console.text(), "Hi\n");
    let m = vcpu.metrics();
    assert_eq!(m.io_exits.load(std::sync::atomic::Ordering::Relaxed), 4);
    assert_eq!(t.exit.reason(), Some(ExitReason::GuestShutdown));
}

#[test]
fn long_mode_entry_has_paging_and_identity_map() {
    // mov $0x3f8,%dx; mov %cr0,%rax; shr $31,%rax; add $'0',%al; out %al,%dx
    // mov $0x1000000,%rbx; movabs $0x1122334455667788,%rcx; mov %rcx,(%rbx)
    // mov $'L',%al; out %al,%dx; hlt
    let code = [
        0x66, 0xba, 0xf8, 0x03, 0x0f, 0x20, 0xc0, 0x48, 0xc1, 0xe8, 0x1f, 0x04, 0x30, 0xee, 0x48,
        0xc7, 0xc3, 0x00, 0x00, 0x00, 0x01, 0x48, 0xb9, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22,
        0x11, 0x48, 0x89, 0x0b, 0xb0, 0x4c, 0xee, 0xf4,
    ];
    let t = TestVm::new(false);
    let (reason, vcpu) = t.run(&code, 0x10_0000, BootEntry::Linux64 { entry: 0x10_0000 });
    assert_eq!(reason, ExitReason::AllVcpusHalted);
    assert_eq!(t.console.text(), "1L", "CR0.PG must be set in 64-bit entry");
    let v: u64 = t.ram.memory.read_obj(GuestAddress(0x100_0000)).unwrap();
    assert_eq!(v, 0x1122_3344_5566_7788);
    let regs = vcpu.fd().get_regs().unwrap();
    assert_eq!(regs.rsi, hull_vmm::layout::ZERO_PAGE_START);
    let sregs = vcpu.fd().get_sregs().unwrap();
    assert_ne!(sregs.efer & 0x400, 0, "EFER.LMA");
}

#[test]
fn protected_mode_mmio_exits_reach_the_bus() {
    // mov $0xc0000000,%esi; mov (%esi),%eax; mov %eax,%ebx; mov $0xabcd1234,%eax
    // mov %eax,4(%esi); mov $0x3f8,%dx; mov $'P',%al; out %al,%dx
    // mov %ebx,%eax; out %eax,$0x80; hlt
    let code = [
        0xbe, 0x00, 0x00, 0x00, 0xc0, 0x8b, 0x06, 0x89, 0xc3, 0xb8, 0x34, 0x12, 0xcd, 0xab, 0x89,
        0x46, 0x04, 0x66, 0xba, 0xf8, 0x03, 0xb0, 0x50, 0xee, 0x89, 0xd8, 0xe7, 0x80, 0xf4,
    ];
    let t = TestVm::new(false);
    let (reason, vcpu) = t.run(&code, 0x10_0000, BootEntry::Pvh { entry: 0x10_0000 });
    assert_eq!(reason, ExitReason::AllVcpusHalted);
    assert_eq!(t.console.text(), "P");
    let dev = t.mmio_dev.lock().unwrap();
    assert_eq!(dev.reads, vec![(0, 4)]);
    assert_eq!(dev.writes, vec![(4, 0xabcd_1234u32.to_le_bytes().to_vec())]);
    // The value the guest read over MMIO came back out of port 0x80.
    let p80 = t.port80.lock().unwrap();
    assert_eq!(p80.writes, vec![(0, 0x7472_6976u32.to_le_bytes().to_vec())]);
    let m = vcpu.metrics();
    assert_eq!(m.mmio_exits.load(std::sync::atomic::Ordering::Relaxed), 2);
}

#[test]
fn irqchip_vm_with_lapic_runs_and_resets() {
    // Same real-mode payload, on a VM with the in-kernel PIC/IOAPIC/PIT and a configured LAPIC.
    let code = [
        0xba, 0xf8, 0x03, 0xb0, 0x48, 0xee, 0xb0, 0x69, 0xee, 0xb0, 0x0a, 0xee, 0xb0, 0xfe, 0xe6,
        0x64, 0xf4,
    ];
    let t = TestVm::new(true);
    let (reason, vcpu) = t.run(&code, 0x1000, BootEntry::RealMode { ip: 0x1000 });
    assert_eq!(reason, ExitReason::GuestShutdown);
    assert_eq!(t.console.text(), "Hi\n");
    let lapic = vcpu.fd().get_lapic().unwrap();
    let lvt0 = u32::from_le_bytes([
        lapic.regs[0x350] as u8,
        lapic.regs[0x351] as u8,
        lapic.regs[0x352] as u8,
        lapic.regs[0x353] as u8,
    ]);
    assert_eq!((lvt0 >> 8) & 7, 7, "LINT0 is ExtINT");
}

#[test]
fn unknown_ports_read_as_zero_and_are_counted() {
    // in $0x71,%al (CMOS data, no device); out %al,$0x80; hlt
    let code = [0xe4, 0x71, 0xe6, 0x80, 0xf4];
    let t = TestVm::new(false);
    let (reason, vcpu) = t.run(&code, 0x1000, BootEntry::RealMode { ip: 0x1000 });
    assert_eq!(reason, ExitReason::AllVcpusHalted);
    assert_eq!(t.port80.lock().unwrap().writes, vec![(0, vec![0])]);
    assert_eq!(
        vcpu.metrics()
            .unhandled
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}
