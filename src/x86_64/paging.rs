//! Identity page tables for the 64-bit entry: 4 GiB in 2 MiB pages, so a
//! kernel (or a tiny test guest) can touch RAM, the MMIO gap and the APICs.

use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use crate::layout::{PDPT_ADDR, PD_ADDR, PD_COUNT, PML4_ADDR};

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const HUGE: u64 = 1 << 7;
const ENTRIES: u64 = 512;
const TWO_MIB: u64 = 2 << 20;

/// Writes the tables and returns CR3.
pub fn write_identity_tables(mem: &GuestMemoryMmap) -> Result<u64, GuestMemoryError> {
    mem.write_obj(PDPT_ADDR | PRESENT | WRITABLE, GuestAddress(PML4_ADDR))?;
    for pd in 0..PD_COUNT {
        let pd_addr = PD_ADDR + pd * 0x1000;
        mem.write_obj(
            pd_addr | PRESENT | WRITABLE,
            GuestAddress(PDPT_ADDR + pd * 8),
        )?;
        for i in 0..ENTRIES {
            let phys = (pd * ENTRIES + i) * TWO_MIB;
            mem.write_obj(
                phys | PRESENT | WRITABLE | HUGE,
                GuestAddress(pd_addr + i * 8),
            )?;
        }
    }
    Ok(PML4_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;

    #[test]
    fn tables_map_4g_identity() {
        let mem = create_guest_memory(8 << 20).unwrap();
        assert_eq!(write_identity_tables(&mem).unwrap(), PML4_ADDR);
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_ADDR)).unwrap();
        assert_eq!(pml4 & !0xfff, PDPT_ADDR);
        // The LAPIC page at 0xfee00000 sits in PD 3, entry 503.
        let pdpt3: u64 = mem.read_obj(GuestAddress(PDPT_ADDR + 3 * 8)).unwrap();
        let pde: u64 = mem
            .read_obj(GuestAddress((pdpt3 & !0xfff) + 503 * 8))
            .unwrap();
        assert_eq!(pde & !0xfff, 0xfee0_0000 & !(TWO_MIB - 1));
        assert_eq!(pde & (PRESENT | HUGE), PRESENT | HUGE);
    }
}
