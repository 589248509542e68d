//! The ACPI hardware-reduced sleep control register (ACPI 6.x, 4.8.3.7).
//! The guest's ACPI driver writes SLP_TYP and SLP_EN to it to power off;
//! the FADT tells it where the register is and the DSDT's `_S5` which
//! SLP_TYP value means "soft off".

use crate::bus::BusDevice;
use crate::ratelimit::LogLimiter;
use crate::SignalLine;

/// SLP_TYP value for S5 that Ember's DSDT declares in `_S5`.
pub const S5_SLEEP_TYPE: u8 = 5;
const SLP_EN: u8 = 1 << 5;
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0b111;

pub struct SleepControl {
    poweroff: SignalLine,
    /// The guest chooses what is logged: rate-limited.
    log: LogLimiter,
}

impl SleepControl {
    pub fn new(poweroff: SignalLine) -> Self {
        Self {
            poweroff,
            log: LogLimiter::new(),
        }
    }
}

impl BusDevice for SleepControl {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [value] = data else { return };
        if offset != 0 || value & SLP_EN == 0 {
            return;
        }
        match (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK {
            S5_SLEEP_TYPE => self.poweroff.raise(),
            other => self.log.log(
                log::Level::Info,
                "sleep-type",
                format_args!("acpi: guest asked for unsupported sleep type {other}; ignored"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_slp_en_with_s5_powers_off() {
        let (line, watch) = SignalLine::counter();
        let mut dev = SleepControl::new(line);
        dev.write(0, &[S5_SLEEP_TYPE << 2]); // no SLP_EN
        dev.write(0, &[(3 << 2) | SLP_EN]); // S3: unsupported
        dev.write(0, &[0xff, 0xff]); // wrong width
        assert_eq!(watch.load(std::sync::atomic::Ordering::SeqCst), 0);
        dev.write(0, &[(S5_SLEEP_TYPE << 2) | SLP_EN]);
        assert_eq!(watch.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
