//! One vCPU's architectural state as KVM exposes it: read from a vCPU
//! parked outside KVM_RUN (after a KVM_RUN that completed any pending I/O,
//! src/vcpu.rs), written back into a fresh vCPU before it first runs.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES,
    KVM_VCPUEVENT_VALID_NMI_PENDING, KVM_VCPUEVENT_VALID_SIPI_VECTOR,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    #[error("vCPU {cpu}: cannot {what}")]
    Kvm {
        cpu: u8,
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {cpu}: KVM took {set} of {wanted} saved MSRs (MSR {failed:#x} refused)")]
    MsrsRefused {
        cpu: u8,
        set: usize,
        wanted: usize,
        failed: u32,
    },
    #[error("vCPU {cpu}: this host cannot run the guest's TSC at {khz} kHz")]
    TscRate {
        cpu: u8,
        khz: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {cpu}: {what} holds {len} entries, more than KVM takes")]
    TooMany {
        cpu: u8,
        what: &'static str,
        len: usize,
    },
}

/// Everything KVM keeps for one vCPU that a guest can observe.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub mp_state: kvm_mp_state,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debug_regs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    pub msrs: Vec<kvm_msr_entry>,
    pub events: kvm_vcpu_events,
    /// The guest's TSC frequency, where KVM reports one.
    pub tsc_khz: Option<u32>,
}

impl std::fmt::Debug for VcpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuState")
            .field("rip", &format_args!("{:#x}", self.regs.rip))
            .field("msrs", &self.msrs.len())
            .finish_non_exhaustive()
    }
}

/// MSRs read per KVM_GET_MSRS call.
const MSR_BATCH: usize = 64;

impl VcpuState {
    /// Reads vCPU `cpu`'s state. `msr_list` is what KVM says it saves
    /// (KVM_GET_MSR_INDEX_LIST); MSRs this vCPU cannot read (features its
    /// CPUID lacks) are left out.
    pub fn save(vcpu: &VcpuFd, cpu: u8, msr_list: &[u32]) -> Result<Self, VcpuStateError> {
        let kvm = |what| move |source| VcpuStateError::Kvm { cpu, what, source };
        // The order follows what KVM documents for migration: the MP state
        // first (it may flush pending LAPIC events into the registers).
        let mp_state = vcpu.get_mp_state().map_err(kvm("read the MP state"))?;
        let regs = vcpu.get_regs().map_err(kvm("read the registers"))?;
        let sregs = vcpu
            .get_sregs()
            .map_err(kvm("read the special registers"))?;
        let xsave = vcpu.get_xsave().map_err(kvm("read the XSAVE state"))?;
        let xcrs = vcpu.get_xcrs().map_err(kvm("read the XCRs"))?;
        let debug_regs = vcpu
            .get_debug_regs()
            .map_err(kvm("read the debug registers"))?;
        let lapic = vcpu.get_lapic().map_err(kvm("read the LAPIC"))?;
        let msrs = read_msrs(vcpu, cpu, msr_list)?;
        let events = vcpu.get_vcpu_events().map_err(kvm("read pending events"))?;
        let cpuid = vcpu
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm("read the CPUID"))?
            .as_slice()
            .to_vec();
        let tsc_khz = vcpu.get_tsc_khz().ok();
        Ok(Self {
            cpuid,
            mp_state,
            regs,
            sregs,
            xsave,
            xcrs,
            debug_regs,
            lapic,
            msrs,
            events,
            tsc_khz,
        })
    }

    /// Writes the state into a fresh vCPU (created, never run).
    pub fn restore(&self, vcpu: &VcpuFd, cpu: u8) -> Result<(), VcpuStateError> {
        let kvm = |what| move |source| VcpuStateError::Kvm { cpu, what, source };
        let cpuid = CpuId::from_entries(&self.cpuid).map_err(|_| VcpuStateError::TooMany {
            cpu,
            what: "the CPUID",
            len: self.cpuid.len(),
        })?;
        vcpu.set_cpuid2(&cpuid).map_err(kvm("set the CPUID"))?;
        if let Some(khz) = self.tsc_khz {
            if vcpu.get_tsc_khz().ok() != Some(khz) {
                // A guest that counts time in TSC ticks (its clocksource,
                // the TSC-deadline timer) would run at the wrong rate.
                vcpu.set_tsc_khz(khz)
                    .map_err(|source| VcpuStateError::TscRate { cpu, khz, source })?;
            }
        }
        vcpu.set_mp_state(self.mp_state)
            .map_err(kvm("set the MP state"))?;
        vcpu.set_regs(&self.regs)
            .map_err(kvm("set the registers"))?;
        vcpu.set_sregs(&self.sregs)
            .map_err(kvm("set the special registers"))?;
        // SAFETY: a kvm_xsave read from KVM_GET_XSAVE (the legacy 4 KiB
        // area, no dynamic features), which is what KVM_SET_XSAVE reads.
        unsafe { vcpu.set_xsave(&self.xsave) }.map_err(kvm("set the XSAVE state"))?;
        vcpu.set_xcrs(&self.xcrs).map_err(kvm("set the XCRs"))?;
        vcpu.set_debug_regs(&self.debug_regs)
            .map_err(kvm("set the debug registers"))?;
        vcpu.set_lapic(&self.lapic).map_err(kvm("set the LAPIC"))?;
        write_msrs(vcpu, cpu, &self.msrs)?;
        // KVM_GET_VCPU_EVENTS does not mark the pending NMI and the SIPI
        // vector valid; without these flags KVM_SET_VCPU_EVENTS drops them.
        let mut events = self.events;
        events.flags |= KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR;
        vcpu.set_vcpu_events(&events)
            .map_err(kvm("set pending events"))?;
        Ok(())
    }
}

/// KVM_GET_MSRS stops at the first MSR it cannot read: read in batches,
/// skipping each one it refuses.
fn read_msrs(vcpu: &VcpuFd, cpu: u8, list: &[u32]) -> Result<Vec<kvm_msr_entry>, VcpuStateError> {
    let mut out = Vec::with_capacity(list.len());
    let mut rest = list;
    while !rest.is_empty() {
        let batch = &rest[..rest.len().min(MSR_BATCH)];
        let entries: Vec<kvm_msr_entry> = batch
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| VcpuStateError::TooMany {
            cpu,
            what: "the MSR list",
            len: entries.len(),
        })?;
        let read = vcpu
            .get_msrs(&mut msrs)
            .map_err(|source| VcpuStateError::Kvm {
                cpu,
                what: "read the MSRs",
                source,
            })?;
        let read = read.min(batch.len());
        out.extend_from_slice(&msrs.as_slice()[..read]);
        // A batch read short stopped at an MSR KVM refused: skip that one.
        let skip = if read < batch.len() { read + 1 } else { read };
        rest = &rest[skip..];
    }
    Ok(out)
}

fn write_msrs(vcpu: &VcpuFd, cpu: u8, saved: &[kvm_msr_entry]) -> Result<(), VcpuStateError> {
    for (n, batch) in saved.chunks(MSR_BATCH).enumerate() {
        let msrs = Msrs::from_entries(batch).map_err(|_| VcpuStateError::TooMany {
            cpu,
            what: "the MSR list",
            len: batch.len(),
        })?;
        let set = vcpu.set_msrs(&msrs).map_err(|source| VcpuStateError::Kvm {
            cpu,
            what: "set the MSRs",
            source,
        })?;
        if set != batch.len() {
            return Err(VcpuStateError::MsrsRefused {
                cpu,
                set: n * MSR_BATCH + set,
                wanted: saved.len(),
                failed: batch[set].index,
            });
        }
    }
    Ok(())
}
