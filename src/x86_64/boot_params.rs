//! The Linux "zero page" (struct boot_params) with its e820 memory map.

use linux_loader::bootparam::{boot_e820_entry, boot_params, setup_header, SETUP_RNG_SEED};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use crate::layout::{
    BIOS_AREA_END, BIOS_AREA_START, CMDLINE_ADDR, EBDA_START, HIMEM_START, SETUP_DATA_ADDR,
    ZERO_PAGE_ADDR,
};
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
    #[error("cannot get a random seed for the guest from getrandom")]
    Seed(#[source] std::io::Error),
    #[error("cannot write the setup data to guest memory")]
    SetupData(#[source] GuestMemoryError),
}

/// Bytes of the guest RNG's seed: what Linux needs to consider its RNG
/// initialised (256 bits) when it trusts the boot loader.
const RNG_SEED_LEN: usize = 32;

/// Writes a SETUP_RNG_SEED setup_data entry (next = 0, type, length, the
/// seed from the host's getrandom) at SETUP_DATA_ADDR and returns its
/// address for the zero page. A Linux guest mixes the seed into its pool
/// (and zeroes it); with CONFIG_RANDOM_TRUST_BOOTLOADER or
/// `random.trust_bootloader=on` it also credits it, so its RNG is ready at
/// once instead of hashing the whole pool on every early random number.
pub fn write_rng_seed(mem: &GuestMemoryMmap) -> Result<GuestAddress, BootParamsError> {
    let mut seed = [0u8; RNG_SEED_LEN];
    // SAFETY: getrandom writes at most `seed.len()` bytes into `seed`.
    let got = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
    if got != RNG_SEED_LEN as isize {
        return Err(BootParamsError::Seed(std::io::Error::last_os_error()));
    }
    let mut entry = Vec::with_capacity(16 + RNG_SEED_LEN);
    entry.extend(0u64.to_le_bytes());
    entry.extend(SETUP_RNG_SEED.to_le_bytes());
    entry.extend((RNG_SEED_LEN as u32).to_le_bytes());
    entry.extend(seed);
    mem.write_slice(&entry, GuestAddress(SETUP_DATA_ADDR))
        .map_err(BootParamsError::SetupData)?;
    Ok(GuestAddress(SETUP_DATA_ADDR))
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
        entry(
            BIOS_AREA_START,
            BIOS_AREA_END - BIOS_AREA_START,
            E820_RESERVED,
        ),
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
    pub setup_data: Option<GuestAddress>,
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
    params.hdr.setup_data = zp.setup_data.map_or(0, |a| a.0);
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
    use crate::layout::{ACPI_START, MMIO_GAP_END, MMIO_GAP_START};
    use crate::memory::ram_ranges;

    #[test]
    fn e820_skips_the_bios_area_and_the_mmio_gap() {
        let map = e820_map(&ram_ranges(4 << 30));
        let got: Vec<(u64, u64, u32)> = map.iter().map(|e| (e.addr, e.size, e.r#type)).collect();
        assert_eq!(
            got,
            vec![
                (0, EBDA_START, E820_RAM),
                (
                    BIOS_AREA_START,
                    BIOS_AREA_END - BIOS_AREA_START,
                    E820_RESERVED
                ),
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
            setup_data: Some(GuestAddress(SETUP_DATA_ADDR)),
        })
        .unwrap();
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_ADDR as u32);
        assert_eq!({ p.hdr.cmdline_size }, 20);
        assert_eq!({ p.hdr.ramdisk_image }, 0x700_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 1234);
        assert_eq!({ p.hdr.header }, HDR_MAGIC);
        assert_eq!(p.e820_entries, 3);
        assert_eq!({ p.acpi_rsdp_addr }, ACPI_START);
        assert_eq!({ p.hdr.setup_data }, SETUP_DATA_ADDR);
    }

    #[test]
    fn rng_seed_is_a_terminated_setup_data_entry_of_fresh_bytes() {
        let mem = crate::memory::create_guest_memory(16 << 20).unwrap();
        let read = |mem: &GuestMemoryMmap| {
            let mut e = [0u8; 16 + RNG_SEED_LEN];
            mem.read_slice(&mut e, GuestAddress(SETUP_DATA_ADDR))
                .unwrap();
            e
        };
        assert_eq!(write_rng_seed(&mem).unwrap(), GuestAddress(SETUP_DATA_ADDR));
        let first = read(&mem);
        assert_eq!(&first[0..8], &[0; 8], "next: the chain ends here");
        assert_eq!(&first[8..12], &SETUP_RNG_SEED.to_le_bytes());
        assert_eq!(&first[12..16], &(RNG_SEED_LEN as u32).to_le_bytes());
        write_rng_seed(&mem).unwrap();
        assert_ne!(
            &read(&mem)[16..],
            &first[16..],
            "each boot gets its own seed"
        );
    }
}
