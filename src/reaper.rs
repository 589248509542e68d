//! Closing a VM's KVM descriptors off the caller's path.
//!
//! Closing the last descriptor of a VM makes the host kernel tear it down,
//! which takes 15-20 ms of wall time on the hosts measured (bench/RESULTS.md)
//! but little CPU: it waits. Nothing a caller can observe depends on it once
//! the vCPU threads are joined, the disks flushed, the TAPs closed and the
//! terminal restored, so `Machine::drop` hands the VM fd, the KVM fd and the
//! guest memory mapping to the reaper and returns. Reaper threads close them
//! in parallel (the waits overlap), and end when nothing is left to close.
//!
//! Bounded: `Vm::start` waits while [`MAX_PENDING`] teardowns are queued, so
//! a caller that starts VMs in a loop cannot pile up descriptors and memory.
//! [`wait_idle`] waits for every teardown handed over so far; at process
//! exit the kernel closes whatever is left, with nothing lost.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, OnceLock};

/// Teardowns that may wait at once before `Vm::start` waits for one.
pub const MAX_PENDING: usize = 64;
/// Reaper threads at most: each one mostly waits in the kernel.
const MAX_THREADS: usize = 16;

/// What a VM leaves behind: dropping it closes the descriptors and unmaps
/// the guest memory.
pub(crate) type Remains = Box<dyn Send>;

#[derive(Default)]
struct State {
    queue: VecDeque<Remains>,
    /// Teardowns queued or in progress.
    pending: usize,
    threads: usize,
}

struct Reaper {
    state: Mutex<State>,
    /// Signalled whenever `pending` drops.
    done: Condvar,
}

fn reaper() -> &'static Reaper {
    static REAPER: OnceLock<Reaper> = OnceLock::new();
    REAPER.get_or_init(|| Reaper {
        state: Mutex::new(State::default()),
        done: Condvar::new(),
    })
}

fn lock(r: &Reaper) -> std::sync::MutexGuard<'_, State> {
    // A panic while holding the lock cannot leave the queue inconsistent
    // (every update is a single push/pop or counter step).
    r.state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Hands `remains` to a reaper thread. If no thread can be started, drops
/// them here: slower, never lost.
pub(crate) fn hand_over(remains: Remains) {
    let r = reaper();
    let mut s = lock(r);
    s.pending += 1;
    s.queue.push_back(remains);
    // Every thread is closing a VM or about to take the next: one more is
    // needed while the teardowns outnumber the threads.
    if s.threads >= MAX_THREADS || s.threads >= s.pending {
        return;
    }
    s.threads += 1;
    drop(s);
    let spawned = std::thread::Builder::new()
        .name("ember-reaper".into())
        .spawn(|| {
            crate::signals::block_stop_signals_here();
            serve(reaper())
        });
    if spawned.is_err() {
        lock(r).threads -= 1;
        log::debug!("no reaper thread; closing a VM on the caller's thread");
        serve_one_here(r);
    }
}

fn serve(r: &Reaper) {
    loop {
        let mut s = lock(r);
        let Some(next) = s.queue.pop_front() else {
            s.threads -= 1;
            return;
        };
        drop(s);
        drop(next);
        let mut s = lock(r);
        s.pending -= 1;
        r.done.notify_all();
    }
}

fn serve_one_here(r: &Reaper) {
    let next = lock(r).queue.pop_front();
    if let Some(next) = next {
        drop(next);
        lock(r).pending -= 1;
        r.done.notify_all();
    }
}

/// Waits until at most `limit` teardowns are pending.
fn wait_at_most(limit: usize) {
    let r = reaper();
    let mut s = lock(r);
    while s.pending > limit {
        s = r.done.wait(s).unwrap_or_else(|e| e.into_inner());
    }
}

/// Called before a VM starts: keeps the teardowns in flight bounded.
pub(crate) fn before_start() {
    wait_at_most(MAX_PENDING - 1);
}

/// Waits until every VM dropped so far is fully torn down: its KVM
/// descriptors closed and its guest memory unmapped. For callers that
/// count descriptors or memory, and for tests.
pub fn wait_idle() {
    wait_at_most(0);
}

/// Teardowns not yet finished.
pub fn pending() -> usize {
    lock(reaper()).pending
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Condvar, Mutex};

    /// A teardown that says it started, then waits for the gate to open.
    struct Gated(Arc<(Mutex<(usize, bool)>, Condvar)>);
    impl Drop for Gated {
        fn drop(&mut self) {
            let (m, cv) = &*self.0;
            let mut g = m.lock().unwrap();
            g.0 += 1;
            cv.notify_all();
            while !g.1 {
                g = cv.wait(g).unwrap();
            }
        }
    }

    #[test]
    fn teardowns_run_in_parallel_off_the_caller_and_wait_idle_waits_for_all() {
        let gate = Arc::new((Mutex::new((0usize, false)), Condvar::new()));
        // Returns although no teardown can finish: they run elsewhere.
        for _ in 0..8 {
            hand_over(Box::new(Gated(gate.clone())));
        }
        let (m, cv) = &*gate;
        let mut g = m.lock().unwrap();
        // All 8 are in progress at once (each blocks until the gate opens).
        while g.0 < 8 {
            g = cv.wait(g).unwrap();
        }
        assert!(pending() >= 8);
        g.1 = true;
        cv.notify_all();
        drop(g);
        wait_idle();
        assert_eq!(pending(), 0);
    }
}
