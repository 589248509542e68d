//! x86-64 specifics: the zero page and e820 map, GDT, page tables,
//! registers, CPUID and MSR policy, ACPI tables.

pub mod acpi;
pub mod boot_params;
pub mod cpuid;
pub mod gdt;
pub mod msrs;
pub mod paging;
pub mod regs;
