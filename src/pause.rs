//! Pausing a running VM: every vCPU thread parked outside KVM_RUN, so the
//! guest runs no instruction, until it is resumed or the VM ends. Devices
//! keep finishing what the guest queued before the pause; the guest's clock
//! (kvm-clock) goes on, so the guest sees the paused time pass.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Whether the guest runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Running,
    Paused,
}

#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    #[error("the VM has ended")]
    Ended,
    #[error("{parked} of {vcpus} vCPUs stopped within {waited:?}; the VM was left running")]
    Stuck {
        parked: usize,
        vcpus: usize,
        waited: Duration,
    },
    #[error("the VM is running (pause it first)")]
    NotPaused,
    #[error("a snapshot is being written; the VM resumes after it")]
    Busy,
    #[error("{done} of {vcpus} vCPUs answered within {waited:?}")]
    NoAnswer {
        done: usize,
        vcpus: usize,
        waited: Duration,
    },
}

/// Work a parked vCPU thread does on its own vCPU (`T`, its VcpuFd), such
/// as reading its state for a snapshot: a vCPU's fd has one owner, its
/// thread, and nothing else touches it.
pub(crate) type Errand<T> = Arc<dyn Fn(u8, &T) + Send + Sync>;

struct Gate<T> {
    paused: bool,
    /// vCPU threads waiting in `park_if_paused`.
    parked: usize,
    /// The VM ended: nothing parks any more.
    ended: bool,
    /// The errand for every parked vCPU, with its number (from 1).
    errand: Option<(u64, Errand<T>)>,
    errands: u64,
    /// vCPUs that did the current errand.
    done: usize,
    /// A snapshot is being written: the VM must stay paused.
    busy: bool,
}

/// Shared by the vCPU threads (which park at it) and the VM's owner.
pub(crate) struct PauseGate<T = kvm_ioctls::VcpuFd> {
    gate: Mutex<Gate<T>>,
    changed: Condvar,
}

/// How long a pause waits for every vCPU, kicking them again meanwhile.
const PAUSE_LIMIT: Duration = Duration::from_secs(2);
const KICK_EVERY: Duration = Duration::from_millis(10);

/// How long an errand may take on every vCPU.
const ERRAND_LIMIT: Duration = Duration::from_secs(5);

impl<T> PauseGate<T> {
    /// A gate that starts paused or running (a restored VM may start
    /// paused: its vCPUs then park before their first KVM_RUN).
    pub(crate) fn new(paused: bool) -> Self {
        Self {
            gate: Mutex::new(Gate {
                paused,
                parked: 0,
                ended: false,
                errand: None,
                errands: 0,
                done: 0,
                busy: false,
            }),
            changed: Condvar::new(),
        }
    }

    /// vCPU side, between KVM_RUNs when no exit awaits completion: waits
    /// while the VM is paused, doing the errands it is given on `vcpu`.
    /// Returns whether it waited.
    pub(crate) fn park_if_paused(&self, cpu: u8, vcpu: &T) -> bool {
        let mut g = crate::lock(&self.gate);
        if !g.paused || g.ended {
            return false;
        }
        g.parked += 1;
        self.changed.notify_all();
        let mut did = 0u64;
        while g.paused && !g.ended {
            if let Some((n, errand)) = g.errand.clone().filter(|(n, _)| *n > did) {
                drop(g);
                errand(cpu, vcpu);
                did = n;
                g = crate::lock(&self.gate);
                if g.errand.as_ref().is_some_and(|(current, _)| *current == n) {
                    g.done += 1;
                    self.changed.notify_all();
                }
                continue;
            }
            g = self.changed.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        g.parked -= 1;
        self.changed.notify_all();
        true
    }

    /// Has each of the `vcpus` parked vCPU threads run `errand` on its
    /// own vCPU; returns when all have. The VM must be paused.
    pub(crate) fn on_each_parked(&self, vcpus: usize, errand: Errand<T>) -> Result<(), PauseError> {
        let start = Instant::now();
        let mut g = crate::lock(&self.gate);
        // A VM restored paused may not have parked every vCPU yet.
        while g.paused && !g.ended && g.parked != vcpus {
            let waited = start.elapsed();
            if waited >= PAUSE_LIMIT {
                return Err(PauseError::Stuck {
                    parked: g.parked,
                    vcpus,
                    waited,
                });
            }
            g = self
                .changed
                .wait_timeout(g, PAUSE_LIMIT - waited)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        if g.ended {
            return Err(PauseError::Ended);
        }
        if !g.paused {
            return Err(PauseError::NotPaused);
        }
        g.errands += 1;
        g.errand = Some((g.errands, errand));
        g.done = 0;
        self.changed.notify_all();
        let result = loop {
            if g.ended {
                break Err(PauseError::Ended);
            }
            if g.done == vcpus {
                break Ok(());
            }
            if !g.paused {
                break Err(PauseError::NotPaused);
            }
            let waited = start.elapsed();
            if waited >= ERRAND_LIMIT {
                break Err(PauseError::NoAnswer {
                    done: g.done,
                    vcpus,
                    waited,
                });
            }
            g = self
                .changed
                .wait_timeout(g, ERRAND_LIMIT - waited)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        };
        g.errand = None;
        result
    }

    /// The VM ended: parked vCPUs go on (to see the end and stop), and
    /// no pause waits any more.
    pub(crate) fn end(&self) {
        crate::lock(&self.gate).ended = true;
        self.changed.notify_all();
    }

    pub(crate) fn state(&self) -> RunState {
        if crate::lock(&self.gate).paused {
            RunState::Paused
        } else {
            RunState::Running
        }
    }

    /// Pauses the VM: marks it paused, calls `kick` (which must make every
    /// vCPU thread leave KVM_RUN) until all `vcpus` are parked. Pausing a
    /// paused VM does nothing.
    pub(crate) fn pause(&self, vcpus: usize, kick: impl Fn()) -> Result<(), PauseError> {
        let start = Instant::now();
        let mut g = crate::lock(&self.gate);
        if g.ended {
            return Err(PauseError::Ended);
        }
        g.paused = true;
        loop {
            if g.ended {
                return Err(PauseError::Ended);
            }
            if g.parked == vcpus {
                return Ok(());
            }
            if start.elapsed() >= PAUSE_LIMIT {
                let parked = g.parked;
                g.paused = false;
                self.changed.notify_all();
                return Err(PauseError::Stuck {
                    parked,
                    vcpus,
                    waited: start.elapsed(),
                });
            }
            drop(g);
            kick();
            g = crate::lock(&self.gate);
            if g.parked != vcpus && !g.ended {
                g = self
                    .changed
                    .wait_timeout(g, KICK_EVERY)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
    }

    /// Keeps a paused VM paused until the hold is dropped (resume fails
    /// with `Busy` meanwhile): a snapshot's state and memory stay one.
    pub(crate) fn hold_paused(&self) -> Result<HoldPaused<'_, T>, PauseError> {
        let mut g = crate::lock(&self.gate);
        if g.ended {
            return Err(PauseError::Ended);
        }
        if !g.paused {
            return Err(PauseError::NotPaused);
        }
        if g.busy {
            return Err(PauseError::Busy);
        }
        g.busy = true;
        Ok(HoldPaused(self))
    }

    /// Lets every parked vCPU run again; resuming a running VM does nothing.
    pub(crate) fn resume(&self) -> Result<(), PauseError> {
        let mut g = crate::lock(&self.gate);
        if g.ended {
            return Err(PauseError::Ended);
        }
        if g.busy {
            return Err(PauseError::Busy);
        }
        g.paused = false;
        self.changed.notify_all();
        Ok(())
    }
}

/// See `PauseGate::hold_paused`.
pub(crate) struct HoldPaused<'a, T>(&'a PauseGate<T>);

impl<T> Drop for HoldPaused<'_, T> {
    fn drop(&mut self) {
        crate::lock(&self.0.gate).busy = false;
        self.0.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    /// Threads that count while not parked, as vCPU threads run the guest.
    fn workers(gate: &Arc<PauseGate<()>>, stop: &Arc<AtomicBool>, n: usize) -> Arc<AtomicU64> {
        let count = Arc::new(AtomicU64::new(0));
        for _ in 0..n {
            let (gate, stop, count) = (gate.clone(), stop.clone(), count.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    gate.park_if_paused(0, &());
                    count.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_micros(100));
                }
            });
        }
        count
    }

    #[test]
    fn pause_parks_every_vcpu_and_resume_lets_them_go_on() {
        let gate = Arc::new(PauseGate::<()>::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let count = workers(&gate, &stop, 3);
        gate.pause(3, || {}).unwrap();
        assert_eq!(gate.state(), RunState::Paused);
        let before = count.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            count.load(Ordering::SeqCst),
            before,
            "nothing ran while paused"
        );
        gate.pause(3, || {}).unwrap();
        gate.resume().unwrap();
        assert_eq!(gate.state(), RunState::Running);
        let deadline = Instant::now() + Duration::from_secs(5);
        while count.load(Ordering::SeqCst) == before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(count.load(Ordering::SeqCst) > before, "running again");
        stop.store(true, Ordering::SeqCst);
    }

    #[test]
    fn errands_run_once_on_every_parked_vcpu_and_only_when_paused() {
        let gate = Arc::new(PauseGate::<()>::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let _count = workers(&gate, &stop, 3);
        let ran = Arc::new(AtomicU64::new(0));
        let errand = |ran: &Arc<AtomicU64>| -> Errand<()> {
            let ran = ran.clone();
            Arc::new(move |_, _| {
                ran.fetch_add(1, Ordering::SeqCst);
            })
        };
        assert!(matches!(
            gate.on_each_parked(3, errand(&ran)),
            Err(PauseError::NotPaused)
        ));
        gate.pause(3, || {}).unwrap();
        gate.on_each_parked(3, errand(&ran)).unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), 3);
        let hold = gate.hold_paused().unwrap();
        assert!(matches!(gate.hold_paused(), Err(PauseError::Busy)));
        gate.on_each_parked(3, errand(&ran)).unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), 6, "a second errand runs again");
        assert!(matches!(gate.resume(), Err(PauseError::Busy)));
        drop(hold);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(ran.load(Ordering::SeqCst), 6, "and each only once");
        gate.resume().unwrap();
        stop.store(true, Ordering::SeqCst);
    }

    #[test]
    fn a_gate_made_paused_parks_its_vcpus_before_they_run() {
        let gate = Arc::new(PauseGate::<()>::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let count = workers(&gate, &stop, 2);
        gate.pause(2, || {}).unwrap();
        assert_eq!(count.load(Ordering::SeqCst), 0);
        gate.resume().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while count.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(count.load(Ordering::SeqCst) > 0);
        stop.store(true, Ordering::SeqCst);
    }

    #[test]
    fn the_end_releases_parked_vcpus_and_refuses_pauses() {
        let gate = Arc::new(PauseGate::<()>::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let count = workers(&gate, &stop, 2);
        gate.pause(2, || {}).unwrap();
        let before = count.load(Ordering::SeqCst);
        gate.end();
        let deadline = Instant::now() + Duration::from_secs(5);
        while count.load(Ordering::SeqCst) == before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(count.load(Ordering::SeqCst) > before, "released by the end");
        assert!(matches!(gate.pause(2, || {}), Err(PauseError::Ended)));
        assert!(matches!(gate.resume(), Err(PauseError::Ended)));
        stop.store(true, Ordering::SeqCst);
    }

    #[test]
    fn a_vcpu_that_never_parks_leaves_the_vm_running_with_an_error() {
        let gate = PauseGate::<()>::new(false);
        let kicks = AtomicU64::new(0);
        let e = gate
            .pause(1, || {
                kicks.fetch_add(1, Ordering::SeqCst);
            })
            .unwrap_err();
        assert!(
            matches!(
                e,
                PauseError::Stuck {
                    parked: 0,
                    vcpus: 1,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(gate.state(), RunState::Running);
        assert!(
            kicks.load(Ordering::SeqCst) > 1,
            "kicked again while waiting"
        );
    }
}
