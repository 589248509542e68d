//! The one owner of a started VM: its vCPU threads, its event loop, its
//! devices, its console and the KVM descriptors and guest memory under them.
//! The builder fills it in step by step, so a start that fails half-way
//! drops a partial machine, whose `Drop` stops and joins what was started.

use std::os::unix::thread::JoinHandleExt;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ember_devices::virtio::mmio::QueueServer;
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::signal::Killable;

use crate::console::ConsoleHost;
use crate::control::VmControl;
use crate::event_loop::{EventLoop, Manager};
use crate::exit::{ExitSignal, HostFailure, StopReason, VmExit};
use crate::seccomp::ThreadKind;
use crate::vcpu::{self, Buses};

/// How long a vCPU thread may take to notice a kick before Ember kicks again.
const KICK_RETRY: Duration = Duration::from_millis(20);

/// One vCPU thread. Dropping it ends the VM (if nothing ended it yet),
/// kicks the thread out of KVM_RUN and joins it.
struct VcpuThread {
    exit: Arc<ExitSignal>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for VcpuThread {
    fn drop(&mut self) {
        let Some(t) = self.thread.take() else { return };
        self.exit.trigger(VmExit::Stopped(StopReason::Requested));
        // One kick is enough: the handler sets `immediate_exit`, so even a
        // kick that lands just before KVM_RUN makes it return at once. The
        // retry only guards against a signal lost to something outside Ember.
        let mut last_kick: Option<Instant> = None;
        while !t.is_finished() {
            if last_kick.is_none_or(|k| k.elapsed() >= KICK_RETRY) {
                if last_kick.is_some() {
                    log::debug!("vCPU thread did not stop after a kick; kicking again");
                }
                let _ = t.kill(vcpu::kick_signal());
                last_kick = Some(Instant::now());
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        let _ = t.join();
    }
}

pub(crate) struct Machine {
    exit: Arc<ExitSignal>,
    // Stopped by Drop: the vCPUs and the loops are told to stop together,
    // then joined (vCPUs first); the devices flush only after every join,
    // then the console drains.
    vcpus: Vec<VcpuThread>,
    event_loop: Option<EventLoop>,
    /// One loop per disk: its queue work (pread/pwrite/fdatasync).
    workers: Vec<EventLoop>,
    devices: Vec<QueueServer>,
    console: ConsoleHost,
    /// Pause, resume and stop from any thread; the vCPUs park at its gate.
    control: VmControl,
    /// Handed to the reaper last, after every thread that used them has
    /// been joined; `Some` until then.
    kvm: Option<KvmParts>,
    /// Each thread of the machine installs its seccomp filter.
    seccomp: bool,
    /// A container run's end and signals.
    container: Option<crate::container::ContainerHandle>,
}

/// The KVM descriptors and the guest memory: closing the VM fd is the slow
/// part of a teardown (src/reaper.rs).
struct KvmParts {
    /// Shared with the snapshot source only while the machine runs
    /// (VmControl drops its clone before the teardown hands this over).
    vm_fd: Arc<VmFd>,
    kvm: Kvm,
    memory: GuestMemoryMmap,
}

impl crate::reaper::Teardown for KvmParts {
    fn slow_fds(&self) -> Vec<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        vec![self.vm_fd.as_raw_fd(), self.kvm.as_raw_fd()]
    }
}

impl Machine {
    pub(crate) fn new(
        kvm: Kvm,
        vm_fd: VmFd,
        memory: GuestMemoryMmap,
        exit: Arc<ExitSignal>,
        console: ConsoleHost,
        control: VmControl,
    ) -> Self {
        // The console's waiters learn of the end at once, not at teardown.
        exit.on_end(console.end_hook());
        Self {
            exit,
            control,
            vcpus: Vec::new(),
            event_loop: None,
            workers: Vec::new(),
            devices: Vec::new(),
            console,
            kvm: Some(KvmParts {
                vm_fd: Arc::new(vm_fd),
                kvm,
                memory,
            }),
            seccomp: false,
            container: None,
        }
    }

    pub(crate) fn set_seccomp(&mut self, on: bool) {
        self.seccomp = on;
    }

    fn parts(&self) -> &KvmParts {
        self.kvm
            .as_ref()
            .expect("the KVM parts live until Machine::drop")
    }

    pub(crate) fn vm_fd(&self) -> &VmFd {
        &self.parts().vm_fd
    }

    /// The VM fd for the snapshot source (src/control.rs).
    pub(crate) fn shared_vm_fd(&self) -> Arc<VmFd> {
        self.parts().vm_fd.clone()
    }

    pub(crate) fn memory(&self) -> &GuestMemoryMmap {
        &self.parts().memory
    }

    pub(crate) fn exit(&self) -> &Arc<ExitSignal> {
        &self.exit
    }

    pub(crate) fn console(&mut self) -> &mut ConsoleHost {
        &mut self.console
    }

    pub(crate) fn control(&self) -> &VmControl {
        &self.control
    }

    /// A virtio transport to flush when the VM ends.
    pub(crate) fn set_container(&mut self, handle: Option<crate::container::ContainerHandle>) {
        self.container = handle;
    }

    pub(crate) fn container(&self) -> Option<&crate::container::ContainerHandle> {
        self.container.as_ref()
    }

    pub(crate) fn add_device(&mut self, device: QueueServer) {
        self.devices.push(device);
    }

    pub(crate) fn start_event_loop(&mut self, manager: Manager) -> std::io::Result<()> {
        let name = "ember-events".to_string();
        let filter = self.seccomp.then_some(ThreadKind::EventLoop);
        self.event_loop = Some(EventLoop::spawn(name, manager, self.exit.clone(), filter)?);
        Ok(())
    }

    /// Starts a device's own loop (a disk's I/O worker).
    pub(crate) fn start_worker(&mut self, name: String, manager: Manager) -> std::io::Result<()> {
        let filter = self.seccomp.then_some(ThreadKind::DiskWorker);
        self.workers
            .push(EventLoop::spawn(name, manager, self.exit.clone(), filter)?);
        Ok(())
    }

    /// Starts vCPU `cpu` on a thread of its own.
    pub(crate) fn spawn_vcpu(
        &mut self,
        cpu: u8,
        fd: VcpuFd,
        buses: Arc<Buses>,
    ) -> std::io::Result<()> {
        let (mem, exit, control) = (
            self.memory().clone(),
            self.exit.clone(),
            self.control.clone(),
        );
        // The guest profiler's timer and output file are outside the vCPU
        // filter: profiling (a debugging aid) runs without it.
        let seccomp = self.seccomp && std::env::var_os("EMBER_GUEST_PROFILE").is_none();
        if self.seccomp && !seccomp && cpu == 0 {
            log::warn!("EMBER_GUEST_PROFILE: the vCPU threads run without their seccomp filter");
        }
        let thread = std::thread::Builder::new()
            .name(format!("ember-vcpu{cpu}"))
            .spawn(move || {
                crate::signals::block_stop_signals_here();
                // Before the guest's first instruction and before this
                // thread touches guest memory.
                if seccomp {
                    if let Err(e) = crate::seccomp::install(ThreadKind::Vcpu) {
                        exit.trigger(VmExit::HostError(HostFailure::seccomp(&e)));
                        return;
                    }
                }
                vcpu::run(fd, cpu, buses, mem, exit, control)
            })?;
        // Kicked when the VM ends (VmControl's end hook) and for pauses.
        self.control.add_vcpu_thread(thread.as_pthread_t());
        self.vcpus.push(VcpuThread {
            exit: self.exit.clone(),
            thread: Some(thread),
        });
        Ok(())
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        // Ends the VM if nothing did: the end hooks kick every vCPU, so
        // they stop in parallel before the joins.
        self.exit.trigger(VmExit::Stopped(StopReason::Requested));
        // No pause may kick a vCPU thread once the joins start.
        self.control.forget_vcpu_threads();
        // The loops stop while the vCPUs do, not after them: a chain a
        // vCPU still posts is left unserved, as at any end, and the disks'
        // flush below still comes after every loop is joined.
        for l in self.event_loop.iter().chain(&self.workers) {
            l.request_stop();
        }
        self.vcpus.clear();
        self.event_loop = None;
        // Each worker finishes the request it is in (in-flight I/O
        // completes), then stops.
        self.workers.clear();
        // Disks fdatasync'ed on every way out: poweroff, reboot, crash,
        // signal, stop(), drop, and a failed start.
        for d in self.devices.drain(..) {
            d.shutdown();
        }
        // Nothing uses the VM any more: its slow close happens elsewhere.
        // The console (output drain, terminal restore) goes with the field.
        if let Some(parts) = self.kvm.take() {
            crate::reaper::hand_over(Box::new(parts), self.seccomp);
        }
    }
}
