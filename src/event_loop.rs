//! Event-loop threads. The main one owns every descriptor a device waits on
//! (console input, net queue notifications, TAPs) and serves them with
//! bounded work per event; nothing on it blocks, so stopping it is one
//! wake-up and a join. Each disk gets a loop of its own (a worker), so a
//! slow disk or an fdatasync stalls only that disk, never the console, the
//! network or a signal.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::exit::{ExitSignal, HostFailure, VmExit};

pub type Manager = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

pub fn new_manager() -> std::io::Result<Manager> {
    EventManager::new().map_err(|e| std::io::Error::other(e.to_string()))
}

pub fn add<S: MutEventSubscriber + Send + 'static>(manager: &mut Manager, s: S) {
    manager.add_subscriber(Arc::new(Mutex::new(s)));
}

/// Reads the wake eventfd so the loop can look at its stop flag.
struct Wake(EventFd);

impl MutEventSubscriber for Wake {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.0, EventSet::IN)) {
            log::error!("event loop: cannot watch its wake-up eventfd: {e}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.0.read();
    }
}

/// The running loop. Dropping it stops and joins the thread.
pub struct EventLoop {
    stop: Arc<AtomicBool>,
    wake: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl EventLoop {
    /// Runs `manager` on a thread named `name` until `request_stop` or the
    /// handle's drop, under `filter`'s seccomp filter if one is given.
    pub fn spawn(
        name: String,
        mut manager: Manager,
        exit: Arc<ExitSignal>,
        filter: Option<crate::seccomp::ThreadKind>,
    ) -> std::io::Result<Self> {
        let wake = EventFd::new(EFD_NONBLOCK)?;
        add(&mut manager, Wake(wake.try_clone()?));
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            crate::signals::block_stop_signals_here();
            if let Some(kind) = filter {
                if let Err(e) = crate::seccomp::install(kind) {
                    exit.trigger(VmExit::HostError(HostFailure::seccomp(&e)));
                    return;
                }
            }
            while !flag.load(Ordering::Acquire) {
                if let Err(e) = manager.run() {
                    exit.trigger(VmExit::HostError(HostFailure::EventLoop(Arc::new(e))));
                    return;
                }
            }
        })?;
        Ok(Self {
            stop,
            wake,
            thread: Some(thread),
        })
    }
}

impl EventLoop {
    /// Asks the thread to stop once the batch of events it is serving is
    /// done, without waiting for it: a teardown asks every loop at once,
    /// then joins.
    pub(crate) fn request_stop(&self) {
        if self.stop.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Err(e) = self.wake.write(1) {
            log::error!("event loop: cannot wake it to stop: {e}");
        }
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        self.request_stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
