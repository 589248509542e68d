//! Ember's top-level error: which step of starting a VM failed, and why.

use crate::config::ConfigError;
use crate::loader::LoadError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("cannot open /dev/kvm (is KVM available and are you allowed to use it?)")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("KVM: cannot {what}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Disk(#[from] crate::virtio_devices::DiskError),
    #[error(transparent)]
    Container(#[from] crate::container::ContainerError),
    #[error(transparent)]
    Template(#[from] crate::container::TemplateError),
    #[error(transparent)]
    Net(#[from] crate::virtio_devices::NetError),
    #[error(transparent)]
    Attach(#[from] crate::virtio_devices::AttachError),
    #[error(transparent)]
    Memory(#[from] crate::memory::MemoryError),
    #[error(transparent)]
    Regs(#[from] crate::x86_64::regs::RegsError),
    #[error(transparent)]
    Msrs(#[from] crate::x86_64::msrs::MsrError),
    #[error(transparent)]
    Acpi(#[from] crate::x86_64::acpi::AcpiError),
    #[error(transparent)]
    MpTable(#[from] crate::x86_64::mptable::MpTableError),
    #[error(transparent)]
    BootParams(#[from] crate::x86_64::boot_params::BootParamsError),
    #[error("cannot place {what} on the bus")]
    Bus {
        what: &'static str,
        #[source]
        source: ember_devices::bus::BusError,
    },
    #[error("cannot {what}")]
    Host {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Restore(#[from] crate::restore::RestoreError),
    #[error("cannot restore the VM's irqchip and clock")]
    RestoreVm(#[source] crate::snapshot::vm_state::VmStateError),
    #[error("cannot restore the serial port")]
    RestoreSerial(#[source] ember_devices::serial::SerialStateError),
    #[error("cannot restore the i8042")]
    RestoreI8042(#[source] ember_devices::i8042::I8042StateError),
    #[error("cannot restore a vCPU")]
    RestoreVcpu(#[source] crate::snapshot::vcpu_state::VcpuStateError),
    /// A failure a test asked for (see `inject_start_failure`).
    #[error("injected start failure at step \"{step}\"")]
    Injected { step: &'static str },
}

/// An error and its sources on one line: "what failed: why: why".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl Error {
    /// True when the user's input was wrong (bad flag, bad file): the CLI
    /// exits 2 for these, 1 for host failures.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Error::Config(_)
                | Error::Load(_)
                | Error::Disk(_)
                | Error::Net(_)
                | Error::Restore(_)
                | Error::RestoreVm(_)
                | Error::RestoreSerial(_)
                | Error::RestoreI8042(_)
                | Error::RestoreVcpu(_)
        )
    }

    pub(crate) fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
        move |source| Error::Kvm { what, source }
    }

    pub(crate) fn host(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
        move |source| Error::Host { what, source }
    }
}
