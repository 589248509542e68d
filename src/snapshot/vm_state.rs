//! The VM-wide state KVM keeps: the in-kernel PICs and IOAPIC, the PIT
//! when there is one, and the kvm-clock.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum VmStateError {
    #[error("cannot {what}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("irqchip {0} is not one of KVM's (PIC master, PIC slave, IOAPIC)")]
    Chip(u32),
    #[error("the snapshot has a PIT state but the VM has no PIT, or the other way round")]
    Pit,
}

#[derive(Clone, Serialize, Deserialize)]
pub struct VmState {
    /// PIC master, PIC slave, IOAPIC.
    pub irqchips: Vec<kvm_irqchip>,
    pub pit: Option<kvm_pit_state2>,
    pub clock: kvm_clock_data,
}

const CHIPS: [u32; 3] = [
    KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
    KVM_IRQCHIP_IOAPIC,
];

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmStateError {
    move |source| VmStateError::Kvm { what, source }
}

impl VmState {
    pub fn save(vm: &VmFd, pit: bool) -> Result<Self, VmStateError> {
        let mut irqchips = Vec::with_capacity(CHIPS.len());
        for chip_id in CHIPS {
            let mut chip = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            vm.get_irqchip(&mut chip)
                .map_err(kvm("read the in-kernel irqchip"))?;
            irqchips.push(chip);
        }
        let pit = match pit {
            true => Some(vm.get_pit2().map_err(kvm("read the PIT"))?),
            false => None,
        };
        let clock = vm.get_clock().map_err(kvm("read the kvm-clock"))?;
        Ok(Self {
            irqchips,
            pit,
            clock,
        })
    }

    /// Into a VM whose irqchip (and PIT, if `pit`) exist and whose vCPUs
    /// have not run.
    pub fn restore(&self, vm: &VmFd, pit: bool) -> Result<(), VmStateError> {
        for chip in &self.irqchips {
            if !CHIPS.contains(&chip.chip_id) {
                return Err(VmStateError::Chip(chip.chip_id));
            }
            vm.set_irqchip(chip)
                .map_err(kvm("set the in-kernel irqchip"))?;
        }
        match (&self.pit, pit) {
            (Some(p), true) => vm.set_pit2(p).map_err(kvm("set the PIT"))?,
            (None, false) => {}
            _ => return Err(VmStateError::Pit),
        }
        // The guest's clock goes on from where it was saved: flags that
        // would make KVM add the time since (REALTIME) are left out.
        let clock = kvm_clock_data {
            clock: self.clock.clock,
            ..Default::default()
        };
        vm.set_clock(&clock).map_err(kvm("set the kvm-clock"))?;
        Ok(())
    }
}
