//! A handle on a running VM for other threads (the API server): pause,
//! resume, its state, stop. Cheap to clone, and safe to keep after the VM
//! has ended: every call then is an error or does nothing.

use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::exit::{ExitSignal, StopReason, VmExit};
use crate::pause::{PauseError, PauseGate, RunState};
use crate::snapshot::{SnapshotError, SnapshotInfo, SnapshotSource};

#[derive(Clone)]
pub struct VmControl(Arc<Shared>);

/// Why a key press did not reach the guest.
#[derive(Debug, thiserror::Error)]
pub enum KeyPressError {
    #[error("the VM is not running")]
    Ended,
    #[error("the key press was not delivered")]
    Keyboard(#[source] ember_devices::i8042::KeyError),
}

struct Shared {
    gate: PauseGate,
    /// The vCPU threads to kick for a pause; `None` from the moment the
    /// VM's teardown starts joining them (a joined thread's id is gone).
    threads: Mutex<Option<Vec<libc::pthread_t>>>,
    /// What a snapshot reads; `None` before the machine is whole and from
    /// the moment its teardown starts (a snapshot in progress finishes
    /// first: the teardown waits for this lock).
    source: Mutex<Option<SnapshotSource>>,
    exit: Arc<ExitSignal>,
    cpus: u8,
    memory: u64,
    /// The VM's threads run under seccomp filters (the API thread too).
    seccomp: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// Kicks every listed vCPU thread out of KVM_RUN.
    fn kick_all(&self) {
        if let Some(threads) = crate::lock(&self.threads).as_ref() {
            for &id in threads {
                // SAFETY: the thread is not joined while it is listed
                // (forget_vcpu_threads takes this lock first); the
                // handler only sets immediate_exit.
                unsafe { libc::pthread_kill(id, crate::vcpu::kick_signal()) };
            }
        }
    }
}

impl VmControl {
    /// `paused`: the vCPUs park before their first KVM_RUN (a restored
    /// VM that is not resumed yet).
    pub(crate) fn new(exit: Arc<ExitSignal>, cpus: u8, memory: u64, paused: bool) -> Self {
        let control = Self(Arc::new(Shared {
            gate: PauseGate::new(paused),
            threads: Mutex::new(Some(Vec::new())),
            source: Mutex::new(None),
            exit: exit.clone(),
            cpus,
            memory,
            seccomp: std::sync::atomic::AtomicBool::new(false),
        }));
        // When the VM ends, whoever ends it: a paused VM lets its vCPUs go,
        // and every vCPU is kicked out of the guest, so they stop in
        // parallel. The kicks go through the locked thread list, so a hook
        // still running on another thread (an API stop, a vCPU's exit)
        // cannot signal a thread the teardown has joined meanwhile.
        // Weak: the exit signal's hooks must not keep this alive (a cycle
        // through `exit` would leak both, eventfd included).
        let c = Arc::downgrade(&control.0);
        exit.on_end(Box::new(move || {
            if let Some(c) = c.upgrade() {
                c.gate.end();
                c.kick_all();
            }
        }));
        control
    }

    pub(crate) fn gate(&self) -> &PauseGate {
        &self.0.gate
    }

    /// A vCPU thread to kick when pausing.
    pub(crate) fn add_vcpu_thread(&self, id: libc::pthread_t) {
        if let Some(t) = crate::lock(&self.0.threads).as_mut() {
            t.push(id);
        }
    }

    /// Called before the vCPU threads are joined: no kick after this, and
    /// no snapshot (the machine's parts are released).
    pub(crate) fn forget_vcpu_threads(&self) {
        *crate::lock(&self.0.source) = None;
        *crate::lock(&self.0.threads) = None;
    }

    /// The machine is whole: snapshots may read it.
    pub(crate) fn set_snapshot_source(&self, source: SnapshotSource) {
        *crate::lock(&self.0.source) = Some(source);
    }

    /// Writes a full snapshot of the paused VM: its state to `state_path`,
    /// its RAM to `mem_path` (both created or replaced). The VM stays
    /// paused.
    pub fn snapshot(
        &self,
        state_path: &Path,
        mem_path: &Path,
    ) -> Result<SnapshotInfo, SnapshotError> {
        let source = crate::lock(&self.0.source);
        let source = source.as_ref().ok_or(SnapshotError::Ended)?;
        if self.run_state() != Some(RunState::Paused) {
            return Err(SnapshotError::NotPaused);
        }
        crate::snapshot::capture(source, &self.0.gate, state_path, mem_path)
    }

    /// Presses and releases Ctrl-Alt-Del on the guest's keyboard (the
    /// i8042): Linux then signals its init, or reboots. A paused VM gets
    /// the keys when it resumes.
    pub fn ctrl_alt_del(&self) -> Result<(), KeyPressError> {
        let source = crate::lock(&self.0.source);
        let source = source.as_ref().ok_or(KeyPressError::Ended)?;
        if self.0.exit.is_set() {
            return Err(KeyPressError::Ended);
        }
        let pressed = crate::lock(&source.i8042).press_ctrl_alt_del();
        pressed.map_err(KeyPressError::Keyboard)
    }

    /// Pauses the guest: returns once no vCPU runs guest code (devices
    /// finish what was queued before). Pausing a paused VM does nothing.
    pub fn pause(&self) -> Result<(), PauseError> {
        let vcpus = crate::lock(&self.0.threads)
            .as_ref()
            .ok_or(PauseError::Ended)?
            .len();
        self.0.gate.pause(vcpus, || self.0.kick_all())
    }

    /// Lets a paused guest run again; resuming a running VM does nothing.
    pub fn resume(&self) -> Result<(), PauseError> {
        self.0.gate.resume()
    }

    /// Running or paused, while the VM has not ended.
    pub fn run_state(&self) -> Option<RunState> {
        (!self.0.exit.is_set()).then(|| self.0.gate.state())
    }

    /// Ends the VM as `Vm::stop` does; whoever waits on it sees
    /// `VmExit::Stopped(StopReason::Requested)`.
    pub fn stop(&self) {
        self.0.exit.trigger(VmExit::Stopped(StopReason::Requested));
    }

    pub(crate) fn set_seccomp(&self, on: bool) {
        self.0
            .seccomp
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the VM's threads run under seccomp filters.
    pub fn seccomp(&self) -> bool {
        self.0.seccomp.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn cpus(&self) -> u8 {
        self.0.cpus
    }

    /// Guest RAM in bytes.
    pub fn memory(&self) -> u64 {
        self.0.memory
    }
}
