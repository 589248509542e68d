//! The Linux "zero page" (struct boot_params) with its e820 memory map.

use linux_loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::layout::{ACPI_END, ACPI_START, CMDLINE_ADDR, EBDA_START, HIMEM_START, ZERO_PAGE_ADDR};
use crate::loader::LoadedInitrd;

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
/// "HdrS": the setup header is present.
const HDR_MAGIC: u32 = 0x5372_6448;
/// 0xAA55 boot signature.
const BOOT_FLAG: u16 = 0xaa55;
/// type_of_loader: "undefined" boot loader.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// The kernel's alignment when it relocates itself (2 MiB pages).
const KERNEL_ALIGNMENT: u32 = 0x0100_0000;
/// loadflags: the kernel is loaded high (at 1 MiB or above).
const LOADED_HIGH: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum BootParamsError {
    #[error("too many e820 entries ({0}, the zero page holds 128)")]
    TooManyE820Entries(usize),
    #[error("cannot write boot_params to guest memory")]
    Write(#[source] linux_loader::configurator::Error),
}

/// The e820 map: conventional memory, the BIOS area with the ACPI tables,
/// then every RAM range from 1 MiB up (the MMIO gap is left out).
pub fn e820_map(ram: &[(GuestAddress, u64)]) -> Vec<boot_e820_entry> {
    let entry = |addr, size, kind| boot_e820_entry {
        addr,
        size,
        r#type: kind,
    };
    let mut map = vec![
        entry(0, EBDA_START, E820_RAM),
        entry(ACPI_START, ACPI_END - ACPI_START, E820_RESERVED),
    ];
    for &(start, size) in ram {
        let end = start.0 + size;
        let start = start.0.max(HIMEM_START);
        if end > start {
            map.push(entry(start, end - start, E820_RAM));
        }
    }
    map
}

/// Everything the zero page says, in one place.
pub struct ZeroPage<'a> {
    pub setup_header: Option<setup_header>,
    pub cmdline_len: usize,
    pub initrd: Option<LoadedInitrd>,
    pub ram: &'a [(GuestAddress, u64)],
    pub rsdp: GuestAddress,
}

pub fn build(zp: &ZeroPage) -> Result<boot_params, BootParamsError> {
    let mut params = boot_params::default();
    if let Some(hdr) = zp.setup_header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.boot_flag = BOOT_FLAG;
    params.hdr.header = HDR_MAGIC;
    params.hdr.loadflags |= LOADED_HIGH;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = zp.cmdline_len as u32;
    if params.hdr.kernel_alignment == 0 {
        params.hdr.kernel_alignment = KERNEL_ALIGNMENT;
    }
    if let Some(initrd) = zp.initrd {
        params.hdr.ramdisk_image = initrd.addr.0 as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    params.acpi_rsdp_addr = zp.rsdp.0;
    let map = e820_map(zp.ram);
    if map.len() > params.e820_table.len() {
        return Err(BootParamsError::TooManyE820Entries(map.len()));
    }
    params.e820_entries = map.len() as u8;
    params.e820_table[..map.len()].copy_from_slice(&map);
    Ok(params)
}

pub fn write(mem: &GuestMemoryMmap, params: &boot_params) -> Result<(), BootParamsError> {
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(params, GuestAddress(ZERO_PAGE_ADDR)),
        mem,
    )
    .map_err(BootParamsError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{MMIO_GAP_END, MMIO_GAP_START};
    use crate::memory::ram_ranges;

    #[test]
    fn e820_skips_the_bios_area_and_the_mmio_gap() {
        let map = e820_map(&ram_ranges(4 << 30));
        let got: Vec<(u64, u64, u32)> = map.iter().map(|e| (e.addr, e.size, e.r#type)).collect();
        assert_eq!(
            got,
            vec![
                (0, EBDA_START, E820_RAM),
                (ACPI_START, ACPI_END - ACPI_START, E820_RESERVED),
                (HIMEM_START, MMIO_GAP_START - HIMEM_START, E820_RAM),
                (MMIO_GAP_END, (4 << 30) - MMIO_GAP_START, E820_RAM),
            ]
        );
    }

    #[test]
    fn zero_page_carries_cmdline_initrd_and_map() {
        let ram = ram_ranges(128 << 20);
        let p = build(&ZeroPage {
            setup_header: None,
            cmdline_len: 20,
            initrd: Some(LoadedInitrd {
                addr: GuestAddress(0x700_0000),
                size: 1234,
            }),
            ram: &ram,
            rsdp: GuestAddress(ACPI_START),
        })
        .unwrap();
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_ADDR as u32);
        assert_eq!({ p.hdr.cmdline_size }, 20);
        assert_eq!({ p.hdr.ramdisk_image }, 0x700_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 1234);
        assert_eq!({ p.hdr.header }, HDR_MAGIC);
        assert_eq!(p.e820_entries, 3);
        assert_eq!({ p.acpi_rsdp_addr }, ACPI_START);
    }
}
