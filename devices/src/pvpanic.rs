//! The pvpanic device (QEMU's "QEMU0001", one I/O port): the guest kernel's
//! panic notifier writes PANICKED to it, so the VMM can tell a kernel panic
//! from an ordinary reboot.

use crate::bus::BusDevice;
use crate::ratelimit::LogLimiter;
use crate::SignalLine;

/// Event bit: the guest kernel panicked.
pub const PVPANIC_PANICKED: u8 = 1 << 0;
/// Event bit: a crash kernel was loaded (reported, not acted on).
pub const PVPANIC_CRASH_LOADED: u8 = 1 << 1;

pub struct PvPanic {
    panicked: SignalLine,
    /// The guest chooses what is logged: rate-limited.
    log: LogLimiter,
}

impl PvPanic {
    pub fn new(panicked: SignalLine) -> Self {
        Self {
            panicked,
            log: LogLimiter::new(),
        }
    }
}

impl BusDevice for PvPanic {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // The capability byte: which events this device understands.
        data.fill(0);
        data[0] = PVPANIC_PANICKED;
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let [value] = data else { return };
        if value & PVPANIC_PANICKED != 0 {
            self.panicked.raise();
        } else if value & PVPANIC_CRASH_LOADED != 0 {
            self.log.log(
                log::Level::Info,
                "crash-loaded",
                format_args!("pvpanic: guest reports a crash kernel loaded"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panicked_event_raises_the_line() {
        let (line, watch) = SignalLine::counter();
        let mut dev = PvPanic::new(line);
        let mut caps = [0u8];
        dev.read(0, &mut caps);
        assert_eq!(caps, [PVPANIC_PANICKED]);
        dev.write(0, &[PVPANIC_CRASH_LOADED]);
        assert_eq!(watch.load(std::sync::atomic::Ordering::SeqCst), 0);
        dev.write(0, &[PVPANIC_PANICKED]);
        assert_eq!(watch.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
