//! SIGINT/SIGTERM/SIGHUP for a program that runs one VM (the CLI): the
//! handler only records the signal and writes an eventfd; the thread that
//! waits for the VM watches that eventfd next to the VM's exit eventfd, so
//! a signal is served however busy (or stuck) the VM's own threads are.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

static STOP_FD: AtomicI32 = AtomicI32::new(-1);
static LAST_SIGNAL: AtomicI32 = AtomicI32::new(0);

const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

extern "C" fn on_signal(signo: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    LAST_SIGNAL.store(signo, Ordering::SeqCst);
    let fd = STOP_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; 8 bytes from a valid u64.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

/// While alive, SIGINT, SIGTERM and SIGHUP make `fd()` readable instead of
/// killing the process. Dropping it restores the default actions.
pub struct SignalWatch {
    evt: EventFd,
}

impl SignalWatch {
    pub fn install() -> std::io::Result<Self> {
        let evt = EventFd::new(EFD_NONBLOCK)?;
        STOP_FD.store(evt.as_raw_fd(), Ordering::SeqCst);
        for sig in SIGNALS {
            vmm_sys_util::signal::register_signal_handler(sig, on_signal)
                .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
        }
        Ok(Self { evt })
    }

    pub fn fd(&self) -> RawFd {
        self.evt.as_raw_fd()
    }

    /// The signal that arrived, if one did since the last call.
    pub fn take(&self) -> Option<i32> {
        self.evt.read().ok()?;
        Some(LAST_SIGNAL.load(Ordering::SeqCst)).filter(|&n| n != 0)
    }
}

impl Drop for SignalWatch {
    fn drop(&mut self) {
        STOP_FD.store(-1, Ordering::SeqCst);
        for sig in SIGNALS {
            // SAFETY: restores the default action; no handler pointer involved.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
    }
}
