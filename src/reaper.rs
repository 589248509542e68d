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
//!
//! A process cannot end before its descriptors are released, so a process
//! that exits right after its VM (the CLI) would still wait for the close.
//! [`hold_until_exit`] and [`exit`] move that wait out of it: the VM
//! descriptors are kept, and at exit a holder child process, forked with
//! copies of them and nothing else, waits for this process to end and
//! then closes them, paying the teardown where nobody waits for it.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};

/// Teardowns that may wait at once before `Vm::start` waits for one.
pub const MAX_PENDING: usize = 64;
/// Reaper threads at most: each one mostly waits in the kernel.
const MAX_THREADS: usize = 16;

/// What a VM leaves behind: dropping it closes the descriptors and unmaps
/// the guest memory.
pub(crate) trait Teardown: Send {
    /// The descriptors whose last close is the slow part (see [`exit`]).
    fn slow_fds(&self) -> Vec<RawFd>;
}

pub(crate) type Remains = Box<dyn Teardown>;

/// Set by [`hold_until_exit`]: teardowns wait in the queue for [`exit`].
static HOLD: AtomicBool = AtomicBool::new(false);

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
/// `seccomp`: a reaper thread started for it runs under its filter.
pub(crate) fn hand_over(remains: Remains, seccomp: bool) {
    let r = reaper();
    let mut s = lock(r);
    s.pending += 1;
    s.queue.push_back(remains);
    if HOLD.load(Ordering::Relaxed) {
        return;
    }
    // Every thread is closing a VM or about to take the next: one more is
    // needed while the teardowns outnumber the threads.
    if s.threads >= MAX_THREADS || s.threads >= s.pending {
        return;
    }
    s.threads += 1;
    drop(s);
    let spawned = std::thread::Builder::new()
        .name("ember-reaper".into())
        .spawn(move || {
            crate::signals::block_stop_signals_here();
            if seccomp {
                crate::seccomp::install_or_log(crate::seccomp::ThreadKind::Reaper);
            }
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

/// For a process that ends soon after its VMs: from now on their teardowns
/// wait for [`exit`] instead of running on reaper threads. At most
/// [`MAX_PENDING`] are held (`Vm::start` waits for room as before, so a
/// process holding that many must not start another).
pub fn hold_until_exit() {
    HOLD.store(true, Ordering::Relaxed);
}

/// Ends the process with `code` without waiting for the held teardowns: a
/// holder child gets copies of their slow descriptors (and no other
/// descriptor: not stdin, stdout or stderr, so a reader of this process's
/// output sees its end at once), waits until this process has ended, and
/// closes them. Without held teardowns, or if the child cannot be made,
/// the kernel closes them as this process exits (slower, nothing lost).
/// Everything a caller can observe (disks flushed, TAPs closed, terminal
/// restored) was done when the VM was dropped, before its teardown was
/// queued.
pub fn exit(code: u8) -> ! {
    let mut keep: Vec<RawFd> = lock(reaper())
        .queue
        .iter()
        .flat_map(|t| t.slow_fds())
        .collect();
    if !keep.is_empty() {
        if let Err(e) = fork_holder(&mut keep) {
            log::debug!("no holder process for the VM close ({e}); closing it on exit");
        }
    }
    log::logger().flush();
    std::process::exit(i32::from(code))
}

/// Forks the holder child; returns in the parent.
fn fork_holder(keep: &mut Vec<RawFd>) -> std::io::Result<()> {
    let mut pipe = [0 as RawFd; 2];
    // SAFETY: pipe2() writes two descriptors into the array. Close-on-exec:
    // a process another thread starts meanwhile must not hold the write
    // end (the holder would wait for it too).
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let [parent_exited, alive] = pipe;
    keep.push(parent_exited);
    keep.sort_unstable();
    keep.dedup();
    // SAFETY: the child runs only async-signal-safe system calls (close_range,
    // read, _exit) on memory allocated before the fork: no lock another
    // thread held at the fork can stop it.
    match unsafe { libc::fork() } {
        -1 => {
            let e = std::io::Error::last_os_error();
            // SAFETY: both ends are ours and unused.
            unsafe {
                libc::close(parent_exited);
                libc::close(alive);
            }
            Err(e)
        }
        0 => holder(keep, parent_exited),
        _ => {
            // `alive` stays open until this process ends: the child's read
            // then sees end-of-file.
            // SAFETY: the read end is ours; only the child uses it.
            unsafe { libc::close(parent_exited) };
            Ok(())
        }
    }
}

/// The holder child: every descriptor but `keep` closed, then it waits for
/// the parent's end and exits, which closes the VM descriptors.
fn holder(keep: &[RawFd], parent_exited: RawFd) -> ! {
    // Named so that `pgrep ember` does not count it once `ember` has gone.
    // SAFETY: prctl(PR_SET_NAME) with a NUL-terminated literal.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"ember-holder".as_ptr()) };
    let mut next: u32 = 0;
    for &fd in keep {
        let fd = fd as u32;
        if fd > next {
            close_range(next, fd - 1);
        }
        next = fd + 1;
    }
    close_range(next, u32::MAX);
    let mut byte = 0u8;
    loop {
        // SAFETY: reads at most one byte into a local.
        let n = unsafe { libc::read(parent_exited, (&raw mut byte).cast(), 1) };
        if n >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break;
        }
    }
    // SAFETY: _exit ends the child without running the parent's atexit work.
    unsafe { libc::_exit(0) }
}

fn close_range(first: u32, last: u32) {
    // SAFETY: closes descriptors of this (child) process only.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) };
    if r != 0 {
        // Kernels before 5.9: one close per descriptor, up to a bound.
        for fd in first..=last.min(65_535) {
            // SAFETY: as above.
            unsafe { libc::close(fd as i32) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Condvar, Mutex};

    /// A teardown that says it started, then waits for the gate to open.
    struct Gated(Arc<(Mutex<(usize, bool)>, Condvar)>);
    impl Teardown for Gated {
        fn slow_fds(&self) -> Vec<RawFd> {
            Vec::new()
        }
    }
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
            hand_over(Box::new(Gated(gate.clone())), false);
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
