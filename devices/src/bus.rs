//! Address buses. A vCPU exit names an address; the bus finds the device
//! whose range holds it and passes the offset inside that range. Nothing
//! else in Ember maps addresses to devices.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device reachable through port I/O or MMIO.
pub trait BusDevice: Send {
    /// Fills `data` with the value at `offset`. `data` arrives pre-filled
    /// with 0xff, so a device may leave bytes it does not implement.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Stores `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range at {base:#x} has length 0")]
    EmptyRange { base: u64 },
    #[error("bus range {base:#x}+{len:#x} wraps the address space")]
    Overflow { base: u64, len: u64 },
    #[error("bus range {base:#x}+{len:#x} overlaps the device at {other:#x}+{other_len:#x}")]
    Overlap {
        base: u64,
        len: u64,
        other: u64,
        other_len: u64,
    },
}

pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Clone)]
struct Range {
    len: u64,
    device: SharedDevice,
}

/// A set of non-overlapping address ranges, each owned by one device.
#[derive(Clone, Default)]
pub struct Bus {
    ranges: BTreeMap<u64, Range>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `device` at `[base, base + len)`.
    pub fn insert(&mut self, base: u64, len: u64, device: SharedDevice) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::EmptyRange { base });
        }
        let end = base
            .checked_add(len - 1)
            .ok_or(BusError::Overflow { base, len })?;
        // The nearest range starting at or below `end` is the only one that
        // can overlap, since ranges never overlap each other.
        if let Some((&other, r)) = self.ranges.range(..=end).next_back() {
            if other + (r.len - 1) >= base {
                return Err(BusError::Overlap {
                    base,
                    len,
                    other,
                    other_len: r.len,
                });
            }
        }
        self.ranges.insert(base, Range { len, device });
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(u64, &SharedDevice)> {
        let (&base, r) = self.ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        // The whole access must stay inside the range.
        let last = offset.checked_add((size as u64).checked_sub(1)?)?;
        (last < r.len).then_some((offset, &r.device))
    }

    /// Reads from the device at `addr`. Returns false when nothing is
    /// mapped there; `data` is then all 0xff, as on an open bus.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        data.fill(0xff);
        match self.find(addr, data.len()) {
            Some((offset, dev)) => {
                lock(dev).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Writes to the device at `addr`. Returns false when nothing is mapped.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, dev)) => {
                lock(dev).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device even if a previous holder panicked: device state is plain
/// registers, and a wedged bus would hang the guest instead.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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
            data[0] = offset as u8;
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    fn dev() -> Arc<Mutex<Recorder>> {
        Arc::new(Mutex::new(Recorder::default()))
    }

    #[test]
    fn dispatches_by_offset_inside_range() {
        let mut bus = Bus::new();
        let d = dev();
        bus.insert(0x3f8, 8, d.clone()).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fd, &mut b));
        assert_eq!(b[0], 5);
        assert!(bus.write(0x3f8, &[0x41]));
        assert_eq!(d.lock().unwrap().writes, vec![(0, vec![0x41])]);
    }

    #[test]
    fn unmapped_reads_are_all_ones() {
        let bus = Bus::new();
        let mut b = [0u8; 4];
        assert!(!bus.read(0x1234, &mut b));
        assert_eq!(b, [0xff; 4]);
        assert!(!bus.write(0x1234, &[1]));
    }

    #[test]
    fn access_straddling_range_end_is_unmapped() {
        let mut bus = Bus::new();
        bus.insert(0x100, 4, dev()).unwrap();
        let mut b = [0u8; 4];
        assert!(!bus.read(0x102, &mut b));
        assert!(bus.read(0x100, &mut b));
    }

    #[test]
    fn rejects_overlap_empty_and_wrapping_ranges() {
        let mut bus = Bus::new();
        bus.insert(0x100, 0x10, dev()).unwrap();
        assert!(matches!(
            bus.insert(0x10f, 1, dev()),
            Err(BusError::Overlap { other: 0x100, .. })
        ));
        assert!(matches!(
            bus.insert(0xf0, 0x11, dev()),
            Err(BusError::Overlap { .. })
        ));
        assert_eq!(
            bus.insert(0x200, 0, dev()),
            Err(BusError::EmptyRange { base: 0x200 })
        );
        assert!(matches!(
            bus.insert(u64::MAX, 2, dev()),
            Err(BusError::Overflow { .. })
        ));
        bus.insert(0x110, 1, dev()).unwrap();
        bus.insert(u64::MAX, 1, dev()).unwrap();
    }
}
