//! A one-way line from a device to the VMM: the device raises it, the VMM's
//! event loop sees the `EventFd` become readable.

use std::io;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Wraps an `EventFd` that a device writes when something happened
/// (reset requested, power off requested, guest panicked).
#[derive(Debug)]
pub struct SignalLine(EventFd);

impl SignalLine {
    pub fn new() -> io::Result<Self> {
        Ok(Self(EventFd::new(EFD_NONBLOCK)?))
    }

    /// Raises the line. A failure (the counter is full, which takes 2^64-1
    /// raises) is logged: the VMM has then been told already.
    pub fn raise(&self) {
        if let Err(e) = self.0.write(1) {
            log::warn!("cannot raise device signal line: {e}");
        }
    }

    /// The `EventFd` the VMM waits on.
    pub fn event_fd(&self) -> &EventFd {
        &self.0
    }

    /// A second handle on the same line, for the VMM side.
    pub fn try_clone(&self) -> io::Result<EventFd> {
        self.0.try_clone()
    }
}
