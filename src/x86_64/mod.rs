//! x86-64 specifics: the zero page and e820 map, GDT, page tables,
//! registers, CPUID and MSR policy, ACPI and MP tables.

pub mod acpi;
pub mod boot_params;
pub mod cpuid;
pub mod gdt;
pub mod mptable;
pub mod msrs;
pub mod paging;
pub mod regs;

/// The byte that makes `bytes` sum to zero modulo 256 when stored in a
/// checksum field that is zero in `bytes` (ACPI and MP tables).
pub fn byte_checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}
