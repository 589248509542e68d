//! One thread per vCPU. `handle_exit` decides what each KVM exit means and
//! is a plain function, testable without threads or KVM.

use std::cell::Cell;
use std::sync::{Arc, Once};

use ember_devices::bus::Bus;
use kvm_bindings::{
    kvm_run, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::control::VmControl;
use crate::exit::{Crash, CrashKind, ExitSignal, HostFailure, VmExit};
use crate::guest_profile::GuestProfile;
use crate::pause::PauseGate;

/// What the vCPU loop does after an exit.
#[derive(Debug, PartialEq, Eq)]
pub enum VcpuAction {
    Resume,
    Exit(VmExit),
}

/// The buses a vCPU dispatches to.
pub struct Buses {
    pub pio: Bus,
    pub mmio: Bus,
}

/// Maps one KVM exit to an action. Port and MMIO accesses go to the buses;
/// accesses to unmapped addresses read as all ones and are otherwise ignored.
/// `pio_width` is the size of one port access: a string instruction
/// (`rep insb`, `rep outsw`) arrives as one exit of `count` elements, which
/// are dispatched one by one, as the CPU would.
pub fn handle_exit(exit: VcpuExit, buses: &Buses, pio_width: usize) -> VcpuAction {
    match exit {
        VcpuExit::IoIn(port, data) => {
            for element in data.chunks_mut(pio_width.max(1)) {
                buses.pio.read(u64::from(port), element);
            }
            VcpuAction::Resume
        }
        VcpuExit::IoOut(port, data) => {
            for element in data.chunks(pio_width.max(1)) {
                buses.pio.write(u64::from(port), element);
            }
            VcpuAction::Resume
        }
        VcpuExit::MmioRead(addr, data) => {
            buses.mmio.read(addr, data);
            VcpuAction::Resume
        }
        VcpuExit::MmioWrite(addr, data) => {
            buses.mmio.write(addr, data);
            VcpuAction::Resume
        }
        VcpuExit::Hlt | VcpuExit::IrqWindowOpen | VcpuExit::Intr => VcpuAction::Resume,
        VcpuExit::Shutdown => crash(CrashKind::TripleFault),
        VcpuExit::InternalError => crash(CrashKind::InternalError { suberror: 0 }),
        VcpuExit::FailEntry(reason, _cpu) => crash(CrashKind::FailEntry { reason }),
        VcpuExit::SystemEvent(kind, _) => match kind {
            KVM_SYSTEM_EVENT_SHUTDOWN => VcpuAction::Exit(VmExit::Poweroff),
            KVM_SYSTEM_EVENT_RESET => VcpuAction::Exit(VmExit::Reboot),
            KVM_SYSTEM_EVENT_CRASH => crash(CrashKind::GuestPanic),
            other => crash(CrashKind::UnexpectedExit(format!("system event {other}"))),
        },
        other => crash(CrashKind::UnexpectedExit(format!("{other:?}"))),
    }
}

fn crash(kind: CrashKind) -> VcpuAction {
    VcpuAction::Exit(VmExit::Crash(Crash::new(kind)))
}

thread_local! {
    /// This thread's `kvm_run`, while it runs a vCPU: the kick handler sets
    /// `immediate_exit` there, so a kick that lands just before KVM_RUN is
    /// not lost (KVM returns EINTR at once instead of entering the guest).
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The signal that kicks a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Async-signal-safe: a const-initialised thread local with no
    // destructor, and one byte written into this thread's own kvm_run.
    let _ = KVM_RUN.try_with(|p| {
        let run = p.get();
        if !run.is_null() {
            // SAFETY: the pointer is this thread's live kvm_run mapping; it
            // is cleared before the VcpuFd (and the mapping) is dropped.
            unsafe { std::ptr::write_volatile(&mut (*run).immediate_exit, 1) };
        }
    });
}

/// Installs the kick handler once per process.
pub fn install_kick_handler() -> std::io::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()));
    });
    result
}

/// Adds RIP and the instruction bytes there to a crash report.
fn describe_crash(vcpu: &VcpuFd, mem: &GuestMemoryMmap, crash: &mut Crash) {
    let Ok(regs) = vcpu.get_regs() else { return };
    crash.rip = Some(regs.rip);
    let Ok(t) = vcpu.translate_gva(regs.rip) else {
        return;
    };
    if t.valid == 0 {
        return;
    }
    let mut code = [0u8; 16];
    for (i, b) in code.iter_mut().enumerate() {
        match mem.read_obj::<u8>(GuestAddress(t.physical_address + i as u64)) {
            Ok(v) => *b = v,
            Err(_) => {
                crash.code = code[..i].to_vec();
                return;
            }
        }
    }
    crash.code = code.to_vec();
}

/// Runs a vCPU until the VM's exit signal is set: by this vCPU (an exit
/// that ends the VM, or a device line raised during its port write), by
/// another thread, or by the owner stopping the VM (which then kicks it).
/// A panic on this thread ends the VM as a host failure instead of leaving
/// it running with one vCPU gone.
pub(crate) fn run(
    vcpu: VcpuFd,
    cpu: u8,
    buses: Arc<Buses>,
    mem: GuestMemoryMmap,
    exit: Arc<ExitSignal>,
    control: VmControl,
) {
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_loop(vcpu, cpu, &buses, &mem, &exit, control.gate())
    }));
    if ran.is_err() {
        exit.trigger(VmExit::HostError(HostFailure::VcpuPanicked { cpu }));
    }
}

/// Makes this thread's kvm_run the kick handler's target while alive.
struct KickTarget;

impl KickTarget {
    fn set(run: *mut kvm_run) -> Self {
        KVM_RUN.with(|p| p.set(run));
        KickTarget
    }
}

impl Drop for KickTarget {
    fn drop(&mut self) {
        KVM_RUN.with(|p| p.set(std::ptr::null_mut()));
    }
}

fn run_loop(
    mut vcpu: VcpuFd,
    cpu: u8,
    buses: &Buses,
    mem: &GuestMemoryMmap,
    exit: &ExitSignal,
    pause: &PauseGate,
) {
    let run_ptr: *mut kvm_run = vcpu.get_kvm_run();
    // Dropped before `vcpu` (a parameter outlives the locals), also when
    // unwinding: the handler never writes to an unmapped kvm_run.
    let _target = KickTarget::set(run_ptr);
    let mut profile = GuestProfile::from_env(cpu, kick_signal());
    // No exit waits for KVM_RUN to complete it (an I/O read's value, an
    // MMIO read's): only then may the vCPU park, so that a paused vCPU's
    // state (a snapshot's) is whole. A pause's kick sets immediate_exit,
    // so the KVM_RUN after an exit completes it and returns at once.
    let mut settled = true;
    while !exit.is_set() {
        if settled && pause.park_if_paused(cpu, &vcpu) {
            // Tells a guest with kvm-clock that it was stopped, so its
            // watchdogs do not take the pause for a lockup. A guest that
            // has no kvm-clock refuses it, harmlessly.
            let _ = vcpu.kvmclock_ctrl();
            continue;
        }
        let action = match vcpu.run() {
            Ok(e) => {
                settled = false;
                let width = pio_width(run_ptr);
                handle_exit(e, buses, width)
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                settled = true;
                vcpu.set_kvm_immediate_exit(0);
                if let Some(p) = profile.as_mut() {
                    if let Ok(regs) = vcpu.get_regs() {
                        p.record(regs.rip);
                    }
                }
                continue;
            }
            Err(source) => VcpuAction::Exit(VmExit::HostError(HostFailure::KvmRun { cpu, source })),
        };
        if let VcpuAction::Exit(mut reason) = action {
            if let VmExit::Crash(c) = &mut reason {
                c.cpu = Some(cpu);
                if let CrashKind::InternalError { suberror } = &mut c.kind {
                    // SAFETY: the exit reason was INTERNAL_ERROR, so the
                    // `internal` member of the union is the one KVM filled.
                    *suberror = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror };
                }
                describe_crash(&vcpu, mem, c);
            }
            exit.trigger(reason);
        }
    }
}

/// The element size of the port access KVM_RUN last reported (read before
/// the next run; only meaningful after an I/O exit).
fn pio_width(run: *mut kvm_run) -> usize {
    // SAFETY: `run` is this thread's live kvm_run mapping; `io` is plain
    // data, and only read for I/O exits.
    usize::from(unsafe { std::ptr::read_volatile(&(*run).__bindgen_anon_1.io.size) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember_devices::bus::BusDevice;
    use std::sync::Mutex;

    struct Reg(u8);
    impl BusDevice for Reg {
        fn read(&mut self, _: u64, d: &mut [u8]) {
            d[0] = self.0;
        }
        fn write(&mut self, _: u64, d: &[u8]) {
            self.0 = d[0];
        }
    }

    fn buses() -> Buses {
        let mut pio = Bus::new();
        pio.insert(0x80, 1, Arc::new(Mutex::new(Reg(7)))).unwrap();
        Buses {
            pio,
            mmio: Bus::new(),
        }
    }

    #[test]
    fn port_io_goes_through_the_bus() {
        let b = buses();
        assert_eq!(
            handle_exit(VcpuExit::IoOut(0x80, &[9]), &b, 1),
            VcpuAction::Resume
        );
        let mut d = [0u8];
        assert_eq!(
            handle_exit(VcpuExit::IoIn(0x80, &mut d), &b, 1),
            VcpuAction::Resume
        );
        assert_eq!(d, [9]);
        let mut d = [0u8; 2];
        handle_exit(VcpuExit::MmioRead(0xd000_0000, &mut d), &b, 1);
        assert_eq!(d, [0xff, 0xff], "unmapped MMIO reads as all ones");
    }

    #[test]
    fn string_port_io_is_dispatched_element_by_element() {
        struct Counter(u8);
        impl BusDevice for Counter {
            fn read(&mut self, _: u64, d: &mut [u8]) {
                assert_eq!(d.len(), 1, "one element per access");
                self.0 += 1;
                d[0] = self.0;
            }
            fn write(&mut self, _: u64, d: &[u8]) {
                assert_eq!(d.len(), 2);
                self.0 = self.0.wrapping_add(d[0]);
            }
        }
        let mut pio = Bus::new();
        let dev = Arc::new(Mutex::new(Counter(0)));
        pio.insert(0x3f8, 2, dev.clone()).unwrap();
        let b = Buses {
            pio,
            mmio: Bus::new(),
        };
        // `rep insb` of 4 bytes: four 1-byte reads.
        let mut d = [0u8; 4];
        handle_exit(VcpuExit::IoIn(0x3f8, &mut d), &b, 1);
        assert_eq!(d, [1, 2, 3, 4]);
        // `rep outsw` of 2 words: two 2-byte writes.
        handle_exit(VcpuExit::IoOut(0x3f8, &[1, 0, 2, 0]), &b, 2);
        assert_eq!(dev.lock().unwrap().0, 7);
    }

    #[test]
    fn exits_map_to_vm_endings() {
        let b = buses();
        assert_eq!(
            handle_exit(VcpuExit::Shutdown, &b, 1),
            VcpuAction::Exit(VmExit::Crash(Crash::new(CrashKind::TripleFault)))
        );
        assert_eq!(
            handle_exit(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, &[]), &b, 1),
            VcpuAction::Exit(VmExit::Poweroff)
        );
        assert_eq!(
            handle_exit(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, &[]), &b, 1),
            VcpuAction::Exit(VmExit::Reboot)
        );
        assert!(matches!(
            handle_exit(VcpuExit::InternalError, &b, 1),
            VcpuAction::Exit(VmExit::Crash(Crash {
                kind: CrashKind::InternalError { .. },
                ..
            }))
        ));
        assert_eq!(handle_exit(VcpuExit::Hlt, &b, 1), VcpuAction::Resume);
        assert!(matches!(
            handle_exit(VcpuExit::Debug(Default::default()), &b, 1),
            VcpuAction::Exit(VmExit::Crash(Crash {
                kind: CrashKind::UnexpectedExit(_),
                ..
            }))
        ));
    }
}
