//! Raw mode for an interactive console, restored on every way out: the
//! guard's Drop, `restore_terminal()` from the CLI's error and signal paths,
//! and the panic hook.

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// The terminal settings to put back, if Ember changed them.
static SAVED: Mutex<Option<libc::termios>> = Mutex::new(None);

/// A copy of SAVED for a signal handler, which cannot take a lock: written
/// before raw mode is entered, valid while HAVE_COPY is set.
static mut SAVED_COPY: MaybeUninit<libc::termios> = MaybeUninit::uninit();
static HAVE_COPY: AtomicBool = AtomicBool::new(false);

/// Restores the saved settings from a signal handler (async-signal-safe:
/// an atomic load and tcsetattr).
pub(crate) fn restore_terminal_from_signal() {
    if HAVE_COPY.load(Ordering::Acquire) {
        // SAFETY: SAVED_COPY was fully written before HAVE_COPY was set and
        // is not written again while it is set.
        unsafe {
            let t = std::ptr::addr_of!(SAVED_COPY).cast::<libc::termios>();
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, t);
        }
    }
}

pub fn is_tty(fd: i32) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

/// Restores stdin's saved terminal settings, if any. Idempotent.
pub fn restore_terminal() {
    let mut saved = crate::lock(&SAVED);
    HAVE_COPY.store(false, Ordering::Release);
    if let Some(t) = saved.take() {
        // SAFETY: `t` came from tcgetattr on the same descriptor.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) };
    }
}

/// Puts stdin in raw mode while alive.
pub struct RawMode(());

impl RawMode {
    /// Switches stdin to raw mode if it is a terminal; None otherwise.
    pub fn enter() -> std::io::Result<Option<Self>> {
        Self::enter_with(true)
    }

    /// Raw mode with output processing off too: every byte written
    /// reaches the terminal as it is (a container's terminal, whose own
    /// line discipline already turned "\n" into "\r\n").
    pub fn enter_fully() -> std::io::Result<Option<Self>> {
        Self::enter_with(false)
    }

    fn enter_with(output_processing: bool) -> std::io::Result<Option<Self>> {
        if !is_tty(libc::STDIN_FILENO) {
            return Ok(None);
        }
        // SAFETY: termios is plain data; tcgetattr fills it.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: valid descriptor and pointer.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut t) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        *crate::lock(&SAVED) = Some(t);
        if !HAVE_COPY.load(Ordering::Acquire) {
            // SAFETY: no handler reads SAVED_COPY while HAVE_COPY is clear.
            unsafe { std::ptr::addr_of_mut!(SAVED_COPY).write(MaybeUninit::new(t)) };
            HAVE_COPY.store(true, Ordering::Release);
        }
        let mut raw = t;
        // SAFETY: cfmakeraw edits the struct in place.
        unsafe { libc::cfmakeraw(&mut raw) };
        // Keep output post-processing so "\n" from Ember's own messages
        // still returns the carriage; the guest's output is raw anyway.
        if output_processing {
            raw.c_oflag |= libc::OPOST;
        }
        // SAFETY: valid descriptor and pointer.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
            let e = std::io::Error::last_os_error();
            restore_terminal();
            return Err(e);
        }
        Ok(Some(RawMode(())))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Makes a panic restore the terminal before the message is printed.
pub fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_terminal();
        if crate::seccomp::filtered() {
            // Without the backtrace the default hook would resolve (its
            // files are outside the thread's filter).
            let name = std::thread::current().name().unwrap_or("?").to_string();
            eprintln!("thread '{name}' {info}");
            return;
        }
        previous(info);
    }));
}

/// The size (rows, columns) of the terminal on stdin or stdout, if either
/// is one.
pub fn window_size() -> Option<(u16, u16)> {
    [libc::STDIN_FILENO, libc::STDOUT_FILENO]
        .into_iter()
        .find_map(|fd| {
            let mut w = libc::winsize {
                ws_row: 0,
                ws_col: 0,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            // SAFETY: TIOCGWINSZ writes one winsize.
            let ok = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut w) } == 0;
            (ok && w.ws_row > 0 && w.ws_col > 0).then_some((w.ws_row, w.ws_col))
        })
}
