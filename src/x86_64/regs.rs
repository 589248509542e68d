//! The boot vCPU's registers for the Linux 64-bit entry: long mode with
//! paging on, flat segments, RSI pointing at the zero page. Other vCPUs
//! wait in KVM for INIT/SIPI from the guest.

use kvm_bindings::{kvm_fpu, kvm_regs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::gdt::{self, CODE_INDEX, DATA_INDEX, GDT, TSS_INDEX};
use super::paging;
use crate::layout::{BOOT_STACK_TOP, GDT_ADDR, IDT_ADDR, ZERO_PAGE_ADDR};

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// RFLAGS bit 1 is reserved and always set.
const RFLAGS_RESERVED: u64 = 1 << 1;

/// LAPIC register offsets and delivery modes for LINT0/LINT1.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("cannot {what} of vCPU {cpu}")]
    Kvm {
        what: &'static str,
        cpu: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot write boot tables to guest memory")]
    Memory(#[from] GuestMemoryError),
}

fn kvm(what: &'static str, cpu: u8) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |source| RegsError::Kvm { what, cpu, source }
}

/// Writes the GDT, an empty IDT and the page tables into guest memory.
pub fn write_boot_tables(mem: &GuestMemoryMmap) -> Result<u64, RegsError> {
    for (i, e) in GDT.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT_ADDR + (i as u64) * 8))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))?;
    Ok(paging::write_identity_tables(mem)?)
}

/// Puts the boot vCPU in 64-bit mode at `entry`.
pub fn setup_boot_cpu(vcpu: &VcpuFd, entry: u64, cr3: u64) -> Result<(), RegsError> {
    let mut sregs = vcpu.get_sregs().map_err(kvm("read sregs", 0))?;
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (std::mem::size_of_val(&GDT) - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.cs = gdt::segment(CODE_INDEX);
    let data = gdt::segment(DATA_INDEX);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = gdt::segment(TSS_INDEX);
    sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
    sregs.cr3 = cr3;
    sregs.cr4 = X86_CR4_PAE;
    sregs.efer = EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs).map_err(kvm("set sregs", 0))?;

    let regs = kvm_regs {
        rflags: RFLAGS_RESERVED,
        rip: entry,
        rsp: BOOT_STACK_TOP,
        rbp: BOOT_STACK_TOP,
        rsi: ZERO_PAGE_ADDR,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm("set regs", 0))
}

/// x87 and SSE control words as after FINIT / reset.
pub fn setup_fpu(vcpu: &VcpuFd, cpu: u8) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("set FPU state", cpu))
}

/// LINT0 delivers ExtINT (the PIC), LINT1 delivers NMI, as on a PC.
pub fn setup_lint(vcpu: &VcpuFd, cpu: u8) -> Result<(), RegsError> {
    let mut lapic = vcpu.get_lapic().map_err(kvm("read LAPIC", cpu))?;
    for (reg, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let bytes: Vec<u8> = lapic.regs[reg..reg + 4].iter().map(|b| *b as u8).collect();
        let value = u32::from_le_bytes(bytes.try_into().unwrap_or_default());
        let value = (value & !0x700) | (mode << 8);
        for (dst, src) in lapic.regs[reg..reg + 4].iter_mut().zip(value.to_le_bytes()) {
            *dst = src as _;
        }
    }
    vcpu.set_lapic(&lapic).map_err(kvm("set LAPIC", cpu))
}
