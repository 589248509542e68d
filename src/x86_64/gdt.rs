//! The boot GDT: flat 64-bit code and data segments, as the Linux 64-bit
//! boot protocol expects (__BOOT_CS = 0x10, __BOOT_DS = 0x18).

use kvm_bindings::kvm_segment;

/// GDT entries: null, null, code, data, TSS.
pub const GDT: [u64; 5] = [
    0,
    0,
    entry(0xa09b, 0, 0xfffff), // code: present, DPL0, exec/read, L=1, G=1
    entry(0xc093, 0, 0xfffff), // data: present, DPL0, read/write, D/B=1, G=1
    entry(0x808b, 0, 0xfffff), // TSS: present, busy 64-bit TSS
];
pub const CODE_INDEX: usize = 2;
pub const DATA_INDEX: usize = 3;
pub const TSS_INDEX: usize = 4;

/// Packs flags (type/S/DPL/P in bits 0-7, AVL/L/DB/G in bits 12-15),
/// base and limit into a descriptor.
const fn entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The KVM segment register contents for GDT entry `index`.
pub fn segment(index: usize) -> kvm_segment {
    let e = GDT[index];
    let base = ((e >> 16) & 0xff_ffff) | ((e >> 32) & 0xff00_0000);
    let limit = ((e & 0xffff) | ((e >> 32) & 0xf_0000)) as u32;
    let g = ((e >> 55) & 1) as u8;
    kvm_segment {
        base,
        // With G=1 the limit counts 4 KiB pages.
        limit: if g == 1 { (limit << 12) | 0xfff } else { limit },
        selector: (index * 8) as u16,
        type_: ((e >> 40) & 0xf) as u8,
        present: ((e >> 47) & 1) as u8,
        dpl: ((e >> 45) & 3) as u8,
        db: ((e >> 54) & 1) as u8,
        s: ((e >> 44) & 1) as u8,
        l: ((e >> 53) & 1) as u8,
        g,
        avl: ((e >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_is_flat_64_bit_ring_0() {
        let cs = segment(CODE_INDEX);
        assert_eq!(cs.selector, 0x10);
        assert_eq!((cs.base, cs.limit), (0, 0xffff_ffff));
        assert_eq!((cs.l, cs.db, cs.dpl, cs.present, cs.s), (1, 0, 0, 1, 1));
        assert_eq!(cs.type_, 0xb);
        let ds = segment(DATA_INDEX);
        assert_eq!(ds.selector, 0x18);
        assert_eq!((ds.l, ds.db, ds.type_), (0, 1, 0x3));
        let tss = segment(TSS_INDEX);
        assert_eq!((tss.s, tss.type_), (0, 0xb));
    }
}
