//! The part of the i8042 keyboard controller a VM needs: the CPU reset line.
//! Linux with `reboot=k` writes 0xFE to the command port to reboot.

use crate::bus::BusDevice;
use crate::SignalLine;

/// Offset of the command/status port (0x64) from the data port (0x60).
pub const COMMAND_OFFSET: u64 = 4;
/// Command that pulses the CPU reset line.
const CMD_RESET_CPU: u8 = 0xfe;

pub struct I8042 {
    reset: SignalLine,
}

impl I8042 {
    pub fn new(reset: SignalLine) -> Self {
        Self { reset }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status 0: output buffer empty, input buffer empty, so the guest's
        // "wait until the controller is ready" loops end at once.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data == [CMD_RESET_CPU] {
            self.reset.raise();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_raises_the_line_and_nothing_else_does() {
        let (line, watch) = SignalLine::counter();
        let mut dev = I8042::new(line);
        dev.write(0, &[0xfe]); // data port: not a command
        dev.write(COMMAND_OFFSET, &[0xad]);
        assert_eq!(
            watch.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "no reset yet"
        );
        let mut status = [0xffu8];
        dev.read(COMMAND_OFFSET, &mut status);
        assert_eq!(status, [0]);
        dev.write(COMMAND_OFFSET, &[0xfe]);
        assert_eq!(watch.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
