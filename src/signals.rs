//! SIGINT/SIGTERM/SIGHUP for a program that runs one VM (the CLI): the
//! handler only records the signal and writes an eventfd; the thread that
//! waits for the VM (`Vm::wait`) watches that eventfd next to the VM's exit
//! eventfd. Every thread Ember starts blocks these signals, so they land on
//! the program's own threads, never in the middle of a vCPU's or a disk's
//! system call. Once the VM has ended and is being torn down, a signal ends
//! the process at once (terminal restored, exit 128+N): the user insists.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::OnceLock;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Process-lifetime eventfd (never closed, so a handler racing with a drop
/// never writes into a reused descriptor number).
static EVT: OnceLock<EventFd> = OnceLock::new();
static EVT_FD: AtomicI32 = AtomicI32::new(-1);
static ARMED: AtomicBool = AtomicBool::new(false);
static TEARING_DOWN: AtomicBool = AtomicBool::new(false);
static LAST_SIGNAL: AtomicI32 = AtomicI32::new(0);
/// A SIGWINCH arrived since the last `window_changed` (watched only for a
/// container run with `-t`).
static WINDOW_CHANGED: AtomicBool = AtomicBool::new(false);
static WATCHING_WINDOW: AtomicBool = AtomicBool::new(false);

const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Wakes the waiting thread through the eventfd (async-signal-safe).
fn wake() {
    let fd = EVT_FD.load(Ordering::SeqCst);
    if fd >= 0 && ARMED.load(Ordering::SeqCst) {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; 8 bytes from a valid u64
        // into an eventfd that is never closed.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

extern "C" fn on_window_change(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    WINDOW_CHANGED.store(true, Ordering::SeqCst);
    wake();
}

extern "C" fn on_signal(signo: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    LAST_SIGNAL.store(signo, Ordering::SeqCst);
    if TEARING_DOWN.load(Ordering::SeqCst) {
        crate::terminal::restore_terminal_from_signal();
        crate::api::unlink_from_signal();
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(128 + signo) };
    }
    wake();
}

/// While alive, SIGINT, SIGTERM and SIGHUP are recorded for `Vm::wait`
/// instead of killing the process. Install it before `Vm::start`, so a
/// signal during the start is served too; dropping it restores the
/// default actions.
pub struct StopSignals(());

impl StopSignals {
    pub fn install() -> std::io::Result<Self> {
        let evt = match EVT.get() {
            Some(e) => e,
            None => {
                let e = EventFd::new(EFD_NONBLOCK)?;
                EVT.get_or_init(|| e)
            }
        };
        EVT_FD.store(evt.as_raw_fd(), Ordering::SeqCst);
        TEARING_DOWN.store(false, Ordering::SeqCst);
        ARMED.store(true, Ordering::SeqCst);
        let guard = StopSignals(());
        for sig in SIGNALS {
            // On an error `guard` drops and puts the defaults back.
            vmm_sys_util::signal::register_signal_handler(sig, on_signal)
                .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
        }
        Ok(guard)
    }

    /// Readable once a stop signal has arrived (for poll).
    pub fn fd(&self) -> RawFd {
        EVT_FD.load(Ordering::SeqCst)
    }

    /// The stop signal that arrived, if one did since the last call.
    pub fn take(&self) -> Option<i32> {
        EVT.get()?.read().ok()?;
        Some(LAST_SIGNAL.swap(0, Ordering::SeqCst)).filter(|&n| n != 0)
    }

    /// Also wakes the waiting thread on SIGWINCH (the terminal was
    /// resized), for `window_changed`: a container run with `-t` passes
    /// the new size on to CMD's terminal.
    /// SA_RESTART: a resize must not make a system call of the main
    /// thread fail with EINTR (a run waiting for a template's lock).
    pub fn watch_window_size(&self) -> std::io::Result<()> {
        // SAFETY: a zeroed sigaction is valid; the handler only touches
        // atomics and write(2), and the struct lives across the call.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_window_change as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(libc::SIGWINCH, &action, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        WATCHING_WINDOW.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Whether the terminal was resized since the last call.
    pub fn window_changed(&self) -> bool {
        WINDOW_CHANGED.swap(false, Ordering::SeqCst)
    }

    /// The VM has ended: from now on a signal ends the process at once.
    pub(crate) fn tearing_down(&self) {
        TEARING_DOWN.store(true, Ordering::SeqCst);
    }
}

impl Drop for StopSignals {
    fn drop(&mut self) {
        ARMED.store(false, Ordering::SeqCst);
        for sig in SIGNALS {
            // SAFETY: restores the default action; no handler pointer involved.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
        if WATCHING_WINDOW.swap(false, Ordering::SeqCst) {
            // SAFETY: as above.
            unsafe { libc::signal(libc::SIGWINCH, libc::SIG_DFL) };
        }
        TEARING_DOWN.store(false, Ordering::SeqCst);
    }
}

/// Blocks SIGINT, SIGTERM, SIGHUP and SIGWINCH in the calling thread
/// (every thread Ember starts calls this first).
pub(crate) fn block_stop_signals_here() {
    // SAFETY: sigset_t is plain data, filled by sigemptyset/sigaddset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in SIGNALS {
            libc::sigaddset(&mut set, sig);
        }
        libc::sigaddset(&mut set, libc::SIGWINCH);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}
