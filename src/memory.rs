//! Guest RAM: one or two anonymous mappings around the MMIO gap, registered
//! with KVM as memory slots, and left out of child processes.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::mmap::FromRangesError;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::layout::{MMIO_GAP_END, MMIO_GAP_START};

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot map {size} bytes of guest memory")]
    Map {
        size: u64,
        #[source]
        source: FromRangesError,
    },
    #[error("KVM refused guest memory slot {slot} ({size:#x} bytes at {base:#x})")]
    Slot {
        slot: u32,
        base: u64,
        size: u64,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot keep guest memory ({size:#x} bytes at {base:#x}) out of child processes")]
    DontFork {
        base: u64,
        size: u64,
        #[source]
        source: std::io::Error,
    },
}

/// The guest-physical RAM ranges for `size` bytes: below the MMIO gap,
/// and the rest from 4 GiB up.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, u64)> {
    let low = size.min(MMIO_GAP_START);
    let mut ranges = vec![(GuestAddress(0), low)];
    if size > low {
        ranges.push((GuestAddress(MMIO_GAP_END), size - low));
    }
    ranges
}

/// End of the RAM range that starts at 0 (where boot structures, the
/// kernel and the initrd go).
pub fn low_ram_end(size: u64) -> u64 {
    size.min(MMIO_GAP_START)
}

pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(size)
        .into_iter()
        .map(|(a, s)| (a, s as usize))
        .collect();
    let mem = GuestMemoryMmap::from_ranges(&ranges)
        .map_err(|source| MemoryError::Map { size, source })?;
    keep_out_of_forks(&mem)?;
    Ok(mem)
}

/// A child process never needs guest memory (the CLI's holder process,
/// src/reaper.rs; a library user's fork): without this, fork copies its
/// page tables and write-protects every touched page in this process.
pub fn keep_out_of_forks(mem: &GuestMemoryMmap) -> Result<(), MemoryError> {
    for region in mem.iter() {
        // SAFETY: advice on a mapping the region owns; it changes what a
        // fork copies, not the mapping's contents.
        let r = unsafe {
            libc::madvise(
                region.as_ptr().cast(),
                region.len() as usize,
                libc::MADV_DONTFORK,
            )
        };
        if r != 0 {
            return Err(MemoryError::DontFork {
                base: region.start_addr().raw_value(),
                size: region.len(),
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

/// Hands every region to KVM, one slot each.
pub fn register_with_kvm(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), MemoryError> {
    for (slot, region) in mem.iter().enumerate() {
        let slot = slot as u32;
        let base = region.start_addr().raw_value();
        let size = region.len();
        let host = region.as_ptr() as u64;
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: base,
            memory_size: size,
            userspace_addr: host,
        };
        // SAFETY: the region maps `size` bytes at `host` and lives in the
        // GuestMemoryMmap, which the Vm keeps until after the VmFd is closed.
        unsafe { vm.set_user_memory_region(region) }.map_err(|source| MemoryError::Slot {
            slot,
            base,
            size,
            source,
        })?;
    }
    Ok(())
}

/// The host's total RAM in bytes, from /proc/meminfo; None if unreadable.
pub fn host_memory_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_range() {
        assert_eq!(ram_ranges(256 << 20), vec![(GuestAddress(0), 256 << 20)]);
        assert_eq!(low_ram_end(256 << 20), 256 << 20);
    }

    #[test]
    fn memory_above_the_gap_moves_to_4g() {
        let four_g = 4u64 << 30;
        assert_eq!(
            ram_ranges(four_g),
            vec![
                (GuestAddress(0), MMIO_GAP_START),
                (GuestAddress(MMIO_GAP_END), four_g - MMIO_GAP_START)
            ]
        );
        assert_eq!(low_ram_end(four_g), MMIO_GAP_START);
    }

    #[test]
    fn guest_memory_maps_the_ranges() {
        let mem = create_guest_memory(8 << 20).unwrap();
        assert_eq!(mem.num_regions(), 1);
        assert_eq!(mem.last_addr(), GuestAddress((8 << 20) - 1));
    }
}
