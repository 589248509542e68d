//! How a VM ends: one reason, set once, by whichever part sees it first.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why the VM ended. `Vm::wait` returns it; the CLI maps it to an exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest powered off (ACPI S5 or a KVM shutdown event).
    Poweroff,
    /// The guest rebooted (i8042 reset line or a KVM reset event).
    Reboot,
    /// The guest crashed.
    Crash(Crash),
    /// Ember stopped the VM.
    Stopped(StopReason),
    /// Ember failed on the host while the guest ran.
    HostError(HostFailure),
}

/// What failed on the host while the guest ran (the source says why).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostFailure {
    #[error("KVM_RUN failed on vCPU {cpu}")]
    KvmRun {
        cpu: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("the event loop failed")]
    EventLoop(#[source] Arc<event_manager::Error>),
    #[error("the thread of vCPU {cpu} panicked (a bug in Ember)")]
    VcpuPanicked { cpu: u8 },
    #[error("{0}")]
    Seccomp(String),
}

impl HostFailure {
    /// A thread could not install its seccomp filter (the whole reason).
    pub(crate) fn seccomp(e: &crate::seccomp::SeccompError) -> Self {
        HostFailure::Seccomp(crate::error_chain(e))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// `Vm::stop` or dropping the `Vm`.
    Requested,
    /// The user typed the console quit sequence (Ctrl-A x).
    ConsoleQuit,
    /// The process got this signal (SIGINT, SIGTERM).
    Signal(i32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrashKind {
    /// KVM_EXIT_SHUTDOWN: the guest triple-faulted.
    TripleFault,
    /// KVM_EXIT_INTERNAL_ERROR: KVM could not run or emulate an instruction.
    InternalError { suberror: u32 },
    /// The guest kernel panicked (pvpanic or a KVM crash event).
    GuestPanic,
    /// KVM_EXIT_FAIL_ENTRY: the CPU refused to enter the guest.
    FailEntry { reason: u64 },
    /// An exit Ember does not expect from a guest.
    UnexpectedExit(String),
}

/// A guest crash, with what a person needs to start debugging it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crash {
    pub kind: CrashKind,
    pub cpu: Option<u8>,
    pub rip: Option<u64>,
    /// Instruction bytes at RIP, when guest memory could be read there.
    pub code: Vec<u8>,
}

impl Crash {
    pub fn new(kind: CrashKind) -> Self {
        Self {
            kind,
            cpu: None,
            rip: None,
            code: Vec::new(),
        }
    }
}

impl fmt::Display for CrashKind {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            CrashKind::TripleFault => write!(f, "triple fault (KVM_EXIT_SHUTDOWN)"),
            CrashKind::InternalError { suberror: 1 } => {
                write!(
                    f,
                    "KVM emulation failure (KVM_EXIT_INTERNAL_ERROR, suberror 1)"
                )
            }
            CrashKind::InternalError { suberror } => {
                write!(f, "KVM internal error (suberror {suberror})")
            }
            CrashKind::GuestPanic => write!(f, "guest kernel panic"),
            CrashKind::FailEntry { reason } => {
                write!(f, "VM entry failed (hardware reason {reason:#x})")
            }
            CrashKind::UnexpectedExit(what) => write!(f, "unexpected KVM exit {what}"),
        }
    }
}

impl fmt::Display for Crash {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "guest crashed: {}", self.kind)?;
        if let Some(cpu) = self.cpu {
            write!(f, " on vCPU {cpu}")?;
        }
        if let Some(rip) = self.rip {
            write!(f, " at RIP {rip:#x}")?;
        }
        if !self.code.is_empty() {
            let hex: Vec<String> = self.code.iter().map(|b| format!("{b:02x}")).collect();
            write!(f, ", instruction bytes: {}", hex.join(" "))?;
        }
        Ok(())
    }
}

impl fmt::Display for VmExit {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            VmExit::Poweroff => write!(f, "guest powered off"),
            VmExit::Reboot => write!(f, "guest rebooted"),
            VmExit::Crash(c) => c.fmt(f),
            VmExit::Stopped(StopReason::Requested) => write!(f, "stopped by request"),
            VmExit::Stopped(StopReason::ConsoleQuit) => {
                write!(f, "stopped from the console (Ctrl-A x)")
            }
            VmExit::Stopped(StopReason::Signal(n)) => write!(f, "stopped by signal {n}"),
            VmExit::HostError(e) => write!(f, "Ember failed: {}", crate::error_chain(e)),
        }
    }
}

/// The VM's one exit primitive: the first reason wins; later ones are
/// logged and dropped. Setting it tells every vCPU to stop at its next exit
/// (`is_set`) and makes `event_fd` readable for whoever waits on it.
pub struct ExitSignal {
    reason: Mutex<Option<VmExit>>,
    set: AtomicBool,
    evt: EventFd,
    /// Run once, by the first trigger (kick the vCPUs, end the console).
    hooks: Mutex<Vec<Hook>>,
}

type Hook = Box<dyn Fn() + Send + Sync>;

impl ExitSignal {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            reason: Mutex::new(None),
            set: AtomicBool::new(false),
            hooks: Mutex::new(Vec::new()),
            evt: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    pub fn trigger(&self, exit: VmExit) {
        {
            let mut r = crate::lock(&self.reason);
            if let Some(first) = &*r {
                log::debug!("VM exit {exit} after {first}: ignored");
                return;
            }
            log::debug!("VM exit: {exit}");
            *r = Some(exit);
            self.set.store(true, Ordering::SeqCst);
        }
        if let Err(e) = self.evt.write(1) {
            log::warn!("cannot signal the VM's end on its eventfd: {e}");
        }
        for hook in crate::lock(&self.hooks).iter() {
            hook();
        }
    }

    /// Runs `hook` when the VM ends (at once if it has ended already).
    pub fn on_end(&self, hook: Hook) {
        let mut hooks = crate::lock(&self.hooks);
        if self.is_set() {
            drop(hooks);
            hook();
        } else {
            hooks.push(hook);
        }
    }

    /// True once a reason is recorded. Cheap: vCPUs check it after every exit.
    pub fn is_set(&self) -> bool {
        self.set.load(Ordering::SeqCst)
    }

    /// Readable once a reason is recorded.
    pub fn event_fd(&self) -> &EventFd {
        &self.evt
    }

    pub fn reason(&self) -> Option<VmExit> {
        crate::lock(&self.reason).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let s = ExitSignal::new().unwrap();
        assert_eq!(s.reason(), None);
        assert!(!s.is_set());
        assert!(s.event_fd().read().is_err(), "not readable before a reason");
        s.trigger(VmExit::Crash(Crash::new(CrashKind::GuestPanic)));
        s.trigger(VmExit::Reboot);
        assert!(s.is_set());
        assert_eq!(
            s.event_fd().read().unwrap(),
            1,
            "written once, by the first reason"
        );
        assert_eq!(
            s.reason(),
            Some(VmExit::Crash(Crash::new(CrashKind::GuestPanic)))
        );
    }

    #[test]
    fn hooks_run_once_at_the_first_reason_or_at_once_after_it() {
        use std::sync::atomic::AtomicU32;
        let s = ExitSignal::new().unwrap();
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        s.on_end(Box::new(move || {
            r.fetch_add(1, Ordering::SeqCst);
        }));
        assert_eq!(runs.load(Ordering::SeqCst), 0);
        s.trigger(VmExit::Poweroff);
        s.trigger(VmExit::Reboot);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        let r = runs.clone();
        s.on_end(Box::new(move || {
            r.fetch_add(10, Ordering::SeqCst);
        }));
        assert_eq!(runs.load(Ordering::SeqCst), 11, "a late hook runs at once");
    }

    #[test]
    fn crash_line_names_reason_cpu_rip_and_bytes() {
        let c = Crash {
            kind: CrashKind::InternalError { suberror: 1 },
            cpu: Some(1),
            rip: Some(0xffff_ffff_8100_0000),
            code: vec![0x0f, 0x0b],
        };
        assert_eq!(
            c.to_string(),
            "guest crashed: KVM emulation failure (KVM_EXIT_INTERNAL_ERROR, suberror 1) on vCPU 1 at RIP 0xffffffff81000000, instruction bytes: 0f 0b"
        );
    }
}
