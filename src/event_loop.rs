//! The event-loop thread: owns every descriptor a device waits on (console
//! input, the reset/poweroff/panic lines, the stop eventfd) and turns the
//! platform lines into the VM's exit reason.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::eventfd::EventFd;

use crate::exit::{Crash, CrashKind, ExitSignal, StopReason, VmExit};

pub type Manager = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// The device lines that end a VM, and the stop/wake eventfds.
pub struct PlatformEvents {
    pub reset: EventFd,
    pub poweroff: EventFd,
    pub panic: EventFd,
    /// Written by signal handlers (see `signals`).
    pub stop: EventFd,
    /// Written by `Vm` to make the loop look at its stop flag.
    pub wake: EventFd,
    pub exit: Arc<ExitSignal>,
}

impl MutEventSubscriber for PlatformEvents {
    fn init(&mut self, ops: &mut EventOps) {
        for fd in [
            &self.reset,
            &self.poweroff,
            &self.panic,
            &self.stop,
            &self.wake,
        ] {
            if let Err(e) = ops.add(Events::new(fd, EventSet::IN)) {
                log::error!("event loop: cannot watch a platform line: {e}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        // A panic is reported as such even when the reset that `panic=-1`
        // causes arrives in the same batch: look at the panic line first.
        if self.panic.read().is_ok() {
            self.exit
                .trigger(VmExit::Crash(Crash::new(CrashKind::GuestPanic)));
        }
        if fd == self.reset.as_raw_fd() && self.reset.read().is_ok() {
            self.exit.trigger(VmExit::Reboot);
        } else if fd == self.poweroff.as_raw_fd() && self.poweroff.read().is_ok() {
            self.exit.trigger(VmExit::Poweroff);
        } else if fd == self.stop.as_raw_fd() && self.stop.read().is_ok() {
            let sig = crate::signals::last_signal().unwrap_or(libc::SIGTERM);
            self.exit.trigger(VmExit::Stopped(StopReason::Signal(sig)));
        } else if fd == self.wake.as_raw_fd() {
            let _ = self.wake.read();
        }
    }
}

/// Runs the loop until `stop` is set (and the wake eventfd written).
pub fn spawn(
    mut manager: Manager,
    stop: Arc<AtomicBool>,
    exit: Arc<ExitSignal>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("ember-events".into())
        .spawn(move || {
            while !stop.load(Ordering::Acquire) {
                if let Err(e) = manager.run() {
                    exit.trigger(VmExit::HostError(format!("event loop failed: {e}")));
                    return;
                }
            }
        })
}

pub fn new_manager() -> Result<Manager, event_manager::Error> {
    EventManager::new()
}

pub fn add<S: MutEventSubscriber + Send + 'static>(manager: &mut Manager, s: S) {
    manager.add_subscriber(Arc::new(Mutex::new(s)));
}
