//! SIGINT/SIGTERM/SIGHUP for the CLI: the handler only records the signal
//! and writes the VM's stop eventfd; the event loop does the rest.

use std::sync::atomic::{AtomicI32, Ordering};

static STOP_FD: AtomicI32 = AtomicI32::new(-1);
static LAST_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signo: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    LAST_SIGNAL.store(signo, Ordering::SeqCst);
    let fd = STOP_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; 8 bytes from a valid u64.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

/// Routes SIGINT, SIGTERM and SIGHUP to the VM whose stop eventfd is `fd`.
pub fn stop_vm_on_signals(fd: i32) -> std::io::Result<()> {
    STOP_FD.store(fd, Ordering::SeqCst);
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        vmm_sys_util::signal::register_signal_handler(sig, on_signal)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
    }
    Ok(())
}

/// Stops routing signals (the VM's eventfd is about to close).
pub fn forget_stop_fd() {
    STOP_FD.store(-1, Ordering::SeqCst);
}

/// The signal that last asked to stop, if any.
pub fn last_signal() -> Option<i32> {
    match LAST_SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        n => Some(n),
    }
}
