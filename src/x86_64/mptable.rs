//! The Intel MultiProcessor table (MP spec 1.4): a floating pointer at the
//! top of base memory and a configuration table (CPUs, the ISA bus, the
//! IOAPIC and its interrupt routing) in the BIOS area.
//!
//! Linux boots from the ACPI MADT and ignores this table when the MADT is
//! there, but before it reads ACPI it *looks* for the floating pointer:
//! 16 bytes at a time through the first KiB, the last KiB of base memory and
//! the 64 KiB BIOS area, remapping the rest of the range at every step
//! (`smp_scan_config`). On hosts that emulate the guest kernel that scan of
//! 4,224 remaps took 4.5 s of boot; with the pointer at the start of the
//! second range it stops after 65. It also keeps an `acpi=off` guest working.

use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use crate::layout::{
    IOAPIC_ADDR, IRQ_MAX, LAPIC_ADDR, MPTABLE_CONFIG_ADDR, MPTABLE_CONFIG_END,
    MP_FLOATING_POINTER_ADDR,
};

use super::byte_checksum;

const SPEC_REVISION: u8 = 4;
const LAPIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOT_PROCESSOR: u8 = 2;
/// CPUID-style signature and feature flags of the processor entries: the
/// kernel reads the real ones with CPUID, these only say "has FPU and APIC".
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);
const ISA_BUS_ID: u8 = 0;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// Polarity and trigger "conforming to the bus": edge, active high on ISA.
const INT_FLAGS_CONFORMING: u16 = 0;
const ALL_LAPICS: u8 = 0xff;

#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    #[error("the MP table for {cpus} vCPUs needs {size:#x} bytes, more than the {room:#x} reserved for it")]
    TooLarge { cpus: u8, size: usize, room: u64 },
    #[error("cannot write the MP table")]
    Write(#[from] GuestMemoryError),
}

/// The configuration table's bytes for `cpus` vCPUs (APIC IDs 0..cpus, the
/// IOAPIC's ID just above them), checksummed.
fn config_table(cpus: u8) -> Vec<u8> {
    let ioapic_id = cpus;
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOT_PROCESSOR } else { 0 };
        entries.extend([0, cpu, LAPIC_VERSION, flags]);
        entries.extend(CPU_SIGNATURE.to_le_bytes());
        entries.extend(CPU_FEATURES.to_le_bytes());
        entries.extend([0u8; 8]);
        count += 1;
    }
    entries.extend([1, ISA_BUS_ID]);
    entries.extend(b"ISA   ");
    entries.extend([2, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend((IOAPIC_ADDR as u32).to_le_bytes());
    count += 2;
    // ISA IRQ n on IOAPIC pin n, as the MADT implies (it has no overrides).
    for irq in 0..=IRQ_MAX as u8 {
        entries.extend([3, INT_TYPE_INT]);
        entries.extend(INT_FLAGS_CONFORMING.to_le_bytes());
        entries.extend([ISA_BUS_ID, irq, ioapic_id, irq]);
        count += 1;
    }
    for (kind, lint) in [(INT_TYPE_EXTINT, 0u8), (INT_TYPE_NMI, 1u8)] {
        entries.extend([4, kind]);
        entries.extend(INT_FLAGS_CONFORMING.to_le_bytes());
        entries.extend([ISA_BUS_ID, 0, ALL_LAPICS, lint]);
        count += 1;
    }

    let length = (44 + entries.len()) as u16;
    let mut table = Vec::with_capacity(length.into());
    table.extend(b"PCMP");
    table.extend(length.to_le_bytes());
    table.extend([SPEC_REVISION, 0]);
    table.extend(b"EMBER   ");
    table.extend(b"EMBERVM     ");
    table.extend(0u32.to_le_bytes()); // OEM table pointer
    table.extend(0u16.to_le_bytes()); // OEM table size
    table.extend(count.to_le_bytes());
    table.extend((LAPIC_ADDR as u32).to_le_bytes());
    table.extend(0u16.to_le_bytes()); // extended table length
    table.extend([0, 0]); // extended table checksum, reserved
    table.extend(entries);
    table[7] = byte_checksum(&table);
    table
}

/// The 16-byte floating pointer to a configuration table at `config`.
fn floating_pointer(config: u32) -> [u8; 16] {
    let mut mpf = [0u8; 16];
    mpf[0..4].copy_from_slice(b"_MP_");
    mpf[4..8].copy_from_slice(&config.to_le_bytes());
    mpf[8] = 1; // length in 16-byte units
    mpf[9] = SPEC_REVISION;
    // mpf[11..16]: feature bytes 0 = a configuration table is present,
    // virtual-wire interrupt mode.
    mpf[10] = byte_checksum(&mpf);
    mpf
}

/// Writes both structures for `cpus` vCPUs.
pub fn write(mem: &GuestMemoryMmap, cpus: u8) -> Result<(), MpTableError> {
    let config = config_table(cpus);
    let room = MPTABLE_CONFIG_END - MPTABLE_CONFIG_ADDR;
    if config.len() as u64 > room {
        return Err(MpTableError::TooLarge {
            cpus,
            size: config.len(),
            room,
        });
    }
    mem.write_slice(&config, GuestAddress(MPTABLE_CONFIG_ADDR))?;
    let mpf = floating_pointer(MPTABLE_CONFIG_ADDR as u32);
    mem.write_slice(&mpf, GuestAddress(MP_FLOATING_POINTER_ADDR))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::MAX_CPUS;
    use crate::memory::create_guest_memory;

    fn sums_to_zero(b: &[u8]) -> bool {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x)) == 0
    }

    /// Walks the table as Linux's mpparse does: returns (entry count read,
    /// processor APIC IDs, boot processor count).
    fn walk(table: &[u8]) -> (u16, Vec<u8>, usize) {
        let count = u16::from_le_bytes([table[34], table[35]]);
        let mut at = 44;
        let (mut seen, mut cpus, mut bsp) = (0, Vec::new(), 0);
        while at < table.len() {
            let len = match table[at] {
                0 => {
                    cpus.push(table[at + 1]);
                    if table[at + 3] & CPU_BOOT_PROCESSOR != 0 {
                        bsp += 1;
                    }
                    20
                }
                1..=4 => 8,
                other => panic!("unknown entry type {other} at {at}"),
            };
            at += len;
            seen += 1;
        }
        assert_eq!(at, table.len(), "entries overrun the table length");
        assert_eq!(seen, count);
        (count, cpus, bsp)
    }

    #[test]
    fn floating_pointer_finds_a_checksummed_table_of_every_cpu() {
        let mem = create_guest_memory(64 << 20).unwrap();
        write(&mem, 3).unwrap();
        let mut mpf = [0u8; 16];
        mem.read_slice(&mut mpf, GuestAddress(MP_FLOATING_POINTER_ADDR))
            .unwrap();
        assert_eq!(&mpf[0..4], b"_MP_");
        assert!(sums_to_zero(&mpf));
        assert_eq!(
            MP_FLOATING_POINTER_ADDR % 16,
            0,
            "the scan steps by 16 bytes"
        );
        let at = u32::from_le_bytes([mpf[4], mpf[5], mpf[6], mpf[7]]) as u64;
        let mut head = [0u8; 44];
        mem.read_slice(&mut head, GuestAddress(at)).unwrap();
        assert_eq!(&head[0..4], b"PCMP");
        let len = u16::from_le_bytes([head[4], head[5]]) as usize;
        let mut table = vec![0u8; len];
        mem.read_slice(&mut table, GuestAddress(at)).unwrap();
        assert!(sums_to_zero(&table));
        let (count, cpus, bsp) = walk(&table);
        assert_eq!(cpus, vec![0, 1, 2]);
        assert_eq!(bsp, 1);
        // 3 CPUs, bus, IOAPIC, 24 pins, 2 local interrupts.
        assert_eq!(count, 3 + 2 + 24 + 2);
    }

    #[test]
    fn the_largest_vm_fits_its_room() {
        let mem = create_guest_memory(64 << 20).unwrap();
        write(&mem, MAX_CPUS).unwrap();
        let (_, cpus, _) = walk(&config_table(MAX_CPUS));
        assert_eq!(cpus.len(), MAX_CPUS as usize);
    }
}
