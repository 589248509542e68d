//! A running VM: its threads, its exit reason, its console. Stopping or
//! dropping it stops every vCPU, joins every thread, closes every fd and
//! restores the terminal.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_ioctls::{Kvm, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

use crate::config::VmConfig;
use crate::console::{Console, ConsoleShared, OutputPump};
use crate::error::Error;
use crate::exit::{ExitSignal, StopReason, VmExit};
use crate::terminal::RawMode;

/// How long console output may take to drain when the VM ends.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// What the builder hands over.
pub(crate) struct VmParts {
    pub exit: Arc<ExitSignal>,
    pub stop: Arc<AtomicBool>,
    pub wake: EventFd,
    pub stop_evt: EventFd,
    pub vcpu_threads: Vec<JoinHandle<()>>,
    pub event_thread: JoinHandle<()>,
    pub console: Console,
    pub console_shared: Arc<ConsoleShared>,
    pub pumps: Vec<Arc<Mutex<OutputPump>>>,
    pub raw_mode: Option<RawMode>,
    // Held, never read: the VM lives as long as these, and they are
    // dropped last, after every thread that uses them has been joined.
    pub _vm_fd: VmFd,
    pub _kvm: Kvm,
    pub _memory: GuestMemoryMmap,
}

/// A running microVM.
pub struct Vm {
    parts: Option<VmParts>,
    result: Option<VmExit>,
    signals_routed: bool,
}

impl Vm {
    /// Validates `config`, builds the VM and starts its vCPUs.
    pub fn start(config: &VmConfig) -> Result<Vm, Error> {
        crate::builder::build(config)
    }

    pub(crate) fn from_parts(parts: VmParts) -> Self {
        Self {
            parts: Some(parts),
            result: None,
            signals_routed: false,
        }
    }

    /// The console handle (meaningful with `ConsoleMode::Scripted`).
    pub fn console(&self) -> Console {
        match &self.parts {
            Some(p) => p.console.clone(),
            None => unreachable!("parts live until Drop"),
        }
    }

    /// Blocks until the VM ends; then releases everything. Calling it again
    /// returns the same reason.
    pub fn wait(&mut self) -> VmExit {
        self.wait_timeout(None)
            .unwrap_or_else(|| VmExit::HostError("VM ended without a reason".into()))
    }

    /// Like `wait`, giving up after `timeout` (None = forever); the VM keeps
    /// running if it gives up.
    pub fn wait_timeout(&mut self, timeout: Option<Duration>) -> Option<VmExit> {
        if let Some(r) = &self.result {
            return Some(r.clone());
        }
        let reason = self.parts.as_ref()?.exit.wait_timeout(timeout)?;
        self.shutdown();
        self.result = Some(reason.clone());
        Some(reason)
    }

    /// Stops the VM (if still running) and returns why it ended.
    pub fn stop(&mut self) -> VmExit {
        if let Some(p) = &self.parts {
            p.exit.trigger(VmExit::Stopped(StopReason::Requested));
        }
        self.wait()
    }

    /// Makes SIGINT, SIGTERM and SIGHUP stop this VM (for a program that
    /// runs one VM, like the CLI).
    pub fn stop_on_signals(&mut self) -> Result<(), Error> {
        if let Some(p) = &self.parts {
            crate::signals::stop_vm_on_signals(p.stop_evt.as_raw_fd())
                .map_err(Error::host("install signal handlers"))?;
            self.signals_routed = true;
        }
        Ok(())
    }

    fn shutdown(&mut self) {
        let Some(p) = self.parts.as_mut() else { return };
        if std::mem::take(&mut self.signals_routed) {
            crate::signals::forget_stop_fd();
        }
        p.stop.store(true, Ordering::Release);
        let _ = p.wake.write(1);
        let kick = crate::vcpu::kick_signal();
        for t in p.vcpu_threads.drain(..) {
            // Kick until the thread notices: a kick that lands just before
            // it enters KVM_RUN would otherwise be lost.
            while !t.is_finished() {
                let _ = t.kill(kick);
                std::thread::sleep(Duration::from_micros(200));
            }
            let _ = t.join();
        }
        p.console_shared.mark_ended();
        for pump in &p.pumps {
            crate::lock(pump).finish(OUTPUT_GRACE);
        }
        p.raw_mode = None;
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if self.result.is_none() {
            self.stop();
        }
        if let Some(p) = self.parts.take() {
            // The event loop only ends once `stop` is set and it was woken.
            let _ = p.event_thread.join();
        }
    }
}
