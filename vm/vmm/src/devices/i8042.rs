//! Just enough of the i8042 keyboard controller for Linux's `reboot=k`: a write of the
//! pulse-reset command (0xfe) to the command port stops the VM as a guest shutdown. Reads
//! return an idle controller (no data, input buffer empty).

use std::sync::Arc;

use super::bus::BusDevice;
use crate::exit::{ExitReason, ExitSignal};

/// The command that pulses the CPU reset line.
pub const CMD_RESET_CPU: u8 = 0xfe;
/// Offset of the command/status port (0x64) from the data port (0x60).
pub const COMMAND_OFFSET: u64 = 4;

/// The i8042 at ports 0x60..=0x64.
#[derive(Debug)]
pub struct I8042 {
    exit: Arc<ExitSignal>,
}

impl I8042 {
    /// A controller that reports resets to `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        Self { exit }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data == [CMD_RESET_CPU] {
            tracing::info!("guest pulsed the i8042 reset line");
            self.exit.stop(ExitReason::GuestShutdown);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_stops_the_vm() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut dev = I8042::new(exit.clone());
        dev.write(0, &[CMD_RESET_CPU]); // data port: ignored
        dev.write(COMMAND_OFFSET, &[0xd1]); // another command: ignored
        assert!(!exit.is_stopping());
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(exit.reason(), Some(ExitReason::GuestShutdown));
    }
}
