//! Rate-limited logging for everything a guest can trigger.
//!
//! A hostile guest can make a device hit the same error path millions of
//! times a second; logging each one would fill the host's disk and burn the
//! event loop in formatting. A [`LogLimiter`] is held by each device: per
//! kind of message (a `&'static str` key), the first [`BURST`] lines are
//! emitted, then at most one line per [`INTERVAL`], carrying the number of
//! lines suppressed since the last one. No threads, no allocation per call
//! (a handful of kinds live in a small vector), one `Instant::now()` per
//! suppressed call.

use std::fmt;
use std::time::{Duration, Instant};

/// Lines emitted per kind before the limiter starts suppressing.
pub const BURST: u32 = 3;
/// Once suppressing, at most one line per kind per interval.
pub const INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
struct Slot {
    kind: &'static str,
    emitted: u32,
    suppressed: u64,
    last: Option<Instant>,
}

/// Per-kind log limiter; see the module documentation.
#[derive(Debug, Default)]
pub struct LogLimiter {
    slots: Vec<Slot>,
}

/// What the limiter decided for one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Emit it; `suppressed` lines of the same kind were dropped before it.
    Emit { suppressed: u64 },
    /// Drop it (counted).
    Suppress,
}

impl LogLimiter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decides for one line of `kind` at time `now` (tests pass their own).
    pub fn decide(&mut self, kind: &'static str, now: Instant) -> Decision {
        let slot = match self.slots.iter_mut().position(|s| s.kind == kind) {
            Some(i) => &mut self.slots[i],
            None => {
                self.slots.push(Slot {
                    kind,
                    emitted: 0,
                    suppressed: 0,
                    last: None,
                });
                let last = self.slots.len() - 1;
                &mut self.slots[last]
            }
        };
        let due = match slot.last {
            None => true,
            Some(t) => slot.emitted < BURST || now.saturating_duration_since(t) >= INTERVAL,
        };
        if due {
            let suppressed = std::mem::take(&mut slot.suppressed);
            slot.emitted = slot.emitted.saturating_add(1);
            slot.last = Some(now);
            Decision::Emit { suppressed }
        } else {
            slot.suppressed = slot.suppressed.saturating_add(1);
            Decision::Suppress
        }
    }

    /// Logs `args` at `level` under `kind`, unless the limiter drops it.
    pub fn log(&mut self, level: log::Level, kind: &'static str, args: fmt::Arguments) {
        // Skip the clock when the line would be filtered anyway.
        if level > log::max_level() {
            return;
        }
        match self.decide(kind, Instant::now()) {
            Decision::Emit { suppressed: 0 } => log::log!(level, "{args}"),
            Decision::Emit { suppressed } => {
                log::log!(level, "{args} ({suppressed} similar lines suppressed)")
            }
            Decision::Suppress => {}
        }
    }

    pub fn warn(&mut self, kind: &'static str, args: fmt::Arguments) {
        self.log(log::Level::Warn, kind, args);
    }

    pub fn error(&mut self, kind: &'static str, args: fmt::Arguments) {
        self.log(log::Level::Error, kind, args);
    }
}

/// A test logger: counts every record emitted on the calling thread (each
/// test runs on its own thread, so parallel tests do not mix counts).
#[cfg(test)]
pub(crate) mod capture {
    use std::cell::{Cell, RefCell};
    use std::sync::Once;

    struct Counter;

    thread_local! {
        static COUNT: Cell<usize> = const { Cell::new(0) };
        static LINES: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    }

    impl log::Log for Counter {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }
        fn log(&self, record: &log::Record) {
            COUNT.with(|c| c.set(c.get() + 1));
            LINES.with(|l| {
                let mut l = l.borrow_mut();
                if l.len() < 64 {
                    l.push(format!("{} {}", record.level(), record.args()));
                }
            });
        }
        fn flush(&self) {}
    }

    static LOGGER: Counter = Counter;
    static INIT: Once = Once::new();

    /// Installs the counting logger (once per test binary) at every level
    /// above debug, and clears this thread's count.
    pub fn start() {
        INIT.call_once(|| {
            log::set_logger(&LOGGER).expect("no other logger in the test binary");
            log::set_max_level(log::LevelFilter::Info);
        });
        COUNT.with(|c| c.set(0));
        LINES.with(|l| l.borrow_mut().clear());
    }

    /// Records logged on this thread since `start`, and the first of them.
    pub fn lines() -> (usize, Vec<String>) {
        (COUNT.with(|c| c.get()), LINES.with(|l| l.borrow().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_one_per_interval_with_the_suppressed_count() {
        let mut l = LogLimiter::new();
        let t0 = Instant::now();
        for _ in 0..BURST {
            assert_eq!(l.decide("a", t0), Decision::Emit { suppressed: 0 });
        }
        for _ in 0..1000 {
            assert_eq!(
                l.decide("a", t0 + Duration::from_secs(1)),
                Decision::Suppress
            );
        }
        // Another kind has its own budget.
        assert_eq!(l.decide("b", t0), Decision::Emit { suppressed: 0 });
        assert_eq!(
            l.decide("a", t0 + INTERVAL),
            Decision::Emit { suppressed: 1000 }
        );
        assert_eq!(l.decide("a", t0 + INTERVAL), Decision::Suppress);
    }

    #[test]
    fn a_flood_through_the_real_log_path_gives_a_handful_of_lines() {
        capture::start();
        let mut l = LogLimiter::new();
        for i in 0..100_000 {
            l.warn("flood", format_args!("bad thing {i}"));
        }
        let (n, lines) = capture::lines();
        assert!(n <= BURST as usize + 1, "{n} lines: {lines:?}");
        assert!(n >= 1);
    }
}
