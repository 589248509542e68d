//! A one-way line from a device to the VMM: the device raises it and the
//! VMM's handler runs at once, on the thread that made the access (a vCPU
//! in the middle of its port write). So the VMM learns of a reset, power-off
//! or panic before that vCPU runs another guest instruction.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

type Handler = Arc<dyn Fn() + Send + Sync>;

/// What a device calls when something happened (reset requested, power off
/// requested, guest panicked).
#[derive(Clone)]
pub struct SignalLine(Handler);

impl SignalLine {
    /// A line whose raise runs `handler` synchronously.
    pub fn new(handler: impl Fn() + Send + Sync + 'static) -> Self {
        Self(Arc::new(handler))
    }

    /// A line that counts its raises (for tests and simple wiring).
    pub fn counter() -> (Self, Arc<AtomicU64>) {
        let count = Arc::new(AtomicU64::new(0));
        let c = count.clone();
        let line = Self::new(move || {
            c.fetch_add(1, Ordering::SeqCst);
        });
        (line, count)
    }

    /// Raises the line: runs the VMM's handler now.
    pub fn raise(&self) {
        (self.0)()
    }
}

impl fmt::Debug for SignalLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SignalLine")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raise_runs_the_handler_synchronously() {
        let (line, count) = SignalLine::counter();
        assert_eq!(count.load(Ordering::SeqCst), 0);
        line.raise();
        assert_eq!(count.load(Ordering::SeqCst), 1, "seen before raise returns");
        line.clone().raise();
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }
}
