//! COM1: a 16550A UART (vm-superio) whose output goes to the console log, and whose
//! interrupt is an irqfd on GSI 4. Guest input is not wired (the console is write-only).

use std::io::Write;

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::bus::BusDevice;

/// Bytes of console output kept per VM; the rest is dropped (a guest cannot fill the disk).
pub const MAX_CONSOLE_BYTES: u64 = 64 << 20;

/// An interrupt line backed by an eventfd (registered with KVM as an irqfd).
#[derive(Debug)]
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.write(1)
    }
}

/// A writer that stops accepting bytes after `limit` (and says so once).
#[derive(Debug)]
pub struct CappedWriter<W: Write> {
    inner: W,
    written: u64,
    limit: u64,
}

impl<W: Write> CappedWriter<W> {
    /// Wrap `inner`, keeping at most `limit` bytes.
    pub fn new(inner: W, limit: u64) -> Self {
        Self {
            inner,
            written: 0,
            limit,
        }
    }

    /// The wrapped writer.
    pub fn inner(&self) -> &W {
        &self.inner
    }
}

impl<W: Write> Write for CappedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = self.limit.saturating_sub(self.written);
        if room == 0 {
            return Ok(buf.len());
        }
        let take = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        self.inner.write_all(&buf[..take])?;
        self.written += take as u64;
        if self.written >= self.limit {
            tracing::warn!(
                limit = self.limit,
                "console log is full; dropping further output"
            );
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<W: Write + Send + 'static> std::fmt::Debug for SerialDevice<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialDevice").finish_non_exhaustive()
    }
}

/// The COM1 device on the port-I/O bus (8 registers at 0x3f8).
pub struct SerialDevice<W: Write + Send + 'static> {
    serial: Serial<IrqTrigger, vm_superio::serial::NoEvents, CappedWriter<W>>,
}

pub use vm_superio::serial::SerialState;

/// Serde for vm-superio's [`SerialState`] (which has none), field for field: a snapshot
/// field of that type takes `#[serde(with = "SerialStateDef")]`.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(remote = "SerialState")]
pub struct SerialStateDef {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

impl<W: Write + Send + 'static> SerialDevice<W> {
    /// A UART writing to `out`, raising `irq` when it wants attention.
    pub fn new(irq: EventFd, out: W) -> Self {
        Self {
            serial: Serial::new(IrqTrigger(irq), CappedWriter::new(out, MAX_CONSOLE_BYTES)),
        }
    }

    /// A UART in the state of a snapshot (it raises `irq` if that state has one pending).
    pub fn from_snapshot(irq: EventFd, out: W, state: &SerialState) -> std::io::Result<Self> {
        let out = CappedWriter::new(out, MAX_CONSOLE_BYTES);
        let serial = Serial::from_state(state, IrqTrigger(irq), vm_superio::serial::NoEvents, out)
            .map_err(|e| std::io::Error::other(format!("serial state: {e:?}")))?;
        Ok(Self { serial })
    }

    /// The registers, for a snapshot.
    pub fn snapshot(&self) -> SerialState {
        self.serial.state()
    }

    /// Where the output goes.
    pub fn writer(&self) -> &W {
        self.serial.writer().inner()
    }
}

impl<W: Write + Send + 'static> BusDevice for SerialDevice<W> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (Ok(off), [byte]) = (u8::try_from(offset), data) {
            *byte = self.serial.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), [byte]) = (u8::try_from(offset), data)
            && let Err(err) = self.serial.write(off, *byte)
        {
            tracing::debug!(?err, "serial write failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[test]
    fn bytes_written_to_thr_reach_the_log() {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(irq.try_clone().unwrap(), Vec::new());
        for b in b"hi\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(dev.writer(), b"hi\n");
        // Line status register says the transmitter is empty.
        let mut lsr = [0u8];
        dev.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0);
    }

    #[test]
    fn enabling_thr_interrupt_raises_the_irq() {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(irq.try_clone().unwrap(), Vec::new());
        dev.write(1, &[0x02]); // IER: THR empty interrupt
        assert!(irq.read().unwrap() >= 1);
    }

    #[test]
    fn a_snapshot_keeps_the_registers() {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(irq.try_clone().unwrap(), Vec::new());
        dev.write(3, &[0x03]); // LCR: 8N1
        dev.write(7, &[0x5a]); // scratch
        dev.write(1, &[0x02]); // IER: THR empty interrupt
        let snap = dev.snapshot();
        let irq2 = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut restored =
            SerialDevice::from_snapshot(irq2.try_clone().unwrap(), Vec::new(), &snap).unwrap();
        assert_eq!(restored.snapshot(), snap);
        let mut scratch = [0u8];
        restored.read(7, &mut scratch);
        assert_eq!(scratch[0], 0x5a);
        // The pending THR-empty interrupt is raised again on the new line.
        assert!(irq2.read().unwrap() >= 1);
    }

    #[test]
    fn wide_accesses_are_ignored() {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(irq, Vec::new());
        dev.write(0, b"ab");
        let mut two = [7u8; 2];
        dev.read(0, &mut two);
        assert!(dev.writer().is_empty());
        assert_eq!(two, [7, 7]);
    }

    #[test]
    fn capped_writer_drops_the_excess() {
        let mut w = CappedWriter::new(Vec::new(), 4);
        assert_eq!(w.write(b"abcdef").unwrap(), 6);
        assert_eq!(w.write(b"gh").unwrap(), 2);
        assert_eq!(w.inner(), b"abcd");
    }
}
