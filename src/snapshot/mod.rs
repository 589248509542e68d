//! Full snapshots of a paused VM, and the files they live in.
//!
//! A snapshot is two files: the state (`file.rs`: every vCPU's registers,
//! the irqchip and clock, every device, the machine's description) and the
//! guest RAM (`memory_file.rs`). `capture` writes them from a paused VM;
//! `src/restore.rs` builds a VM from them.

pub(crate) mod file;
pub(crate) mod memory_file;
pub(crate) mod vcpu_state;
pub(crate) mod vm_state;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ember_devices::i8042::I8042State;
use ember_devices::serial::{IrqLine, SerialSnapshot};
use ember_devices::virtio::mmio::{MmioTransport, QueueServer, TransportSnapshot};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};
use vm_memory::GuestMemoryMmap;

use crate::pause::{PauseError, PauseGate};
use vcpu_state::{VcpuState, VcpuStateError};
use vm_state::{VmState, VmStateError};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("the VM has ended")]
    Ended,
    #[error("a container run has no snapshots yet: its host side (the shares' open files, the streams) is not saved")]
    Container,
    #[error("cannot snapshot a running VM: pause it first")]
    NotPaused,
    #[error("cannot reach the paused vCPUs")]
    Vcpus(#[source] PauseError),
    #[error(transparent)]
    VcpuState(#[from] VcpuStateError),
    #[error(transparent)]
    VmState(#[from] VmStateError),
    #[error("cannot read the MSRs KVM saves")]
    MsrList(#[source] kvm_ioctls::Error),
    #[error(transparent)]
    File(#[from] file::FileError),
    #[error(transparent)]
    MemoryFile(#[from] memory_file::MemoryFileError),
    #[error("the snapshot and the memory file are the same file: {0}")]
    SamePath(PathBuf),
}

/// A disk as the snapshot's guest knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedDisk {
    pub path: PathBuf,
    pub read_only: bool,
    /// The size the guest saw: a disk restored in its place must match.
    pub bytes: u64,
}

/// A network interface as the snapshot's guest knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedNet {
    pub tap: String,
    pub mac: [u8; 6],
}

/// What the VM was made of: enough to build its twin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedMachine {
    pub cpus: u8,
    pub memory: u64,
    pub pit: bool,
    /// For people reading a snapshot: the kernel it booted and how.
    pub kernel: PathBuf,
    pub cmdline: String,
    /// Disks first, then interfaces: the virtio devices in slot order.
    pub disks: Vec<SavedDisk>,
    pub nets: Vec<SavedNet>,
    /// Snapshotted on a host that emulates guest kernel mode.
    pub emulating: bool,
    /// A container template: its console and this many 9P shares follow
    /// the disks and interfaces (src/container/template.rs).
    pub container_shares: Option<u8>,
}

/// The snapshot file's body.
#[derive(Serialize, Deserialize)]
pub(crate) struct Snapshot {
    /// Also in the memory file's trailer: the two files belong together.
    pub memory_id: u64,
    pub machine: SavedMachine,
    pub vm: VmState,
    pub vcpus: Vec<VcpuState>,
    pub serial: SerialSnapshot,
    pub i8042: I8042State,
    pub virtio: Vec<TransportSnapshot>,
}

/// What a snapshot cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Bytes of the state file.
    pub state_bytes: u64,
    /// Logical size of the memory file (its holes not subtracted).
    pub memory_bytes: u64,
    pub took: Duration,
}

pub(crate) type SharedSerial =
    Arc<Mutex<ember_devices::serial::SerialDevice<crate::console::SerialOut>>>;
pub(crate) type SharedI8042 = Arc<Mutex<ember_devices::i8042::I8042<IrqLine>>>;

/// Everything of a running machine a snapshot reads, lent by the machine
/// to its control handle until its teardown starts.
pub(crate) struct SnapshotSource {
    pub vm: Arc<VmFd>,
    pub memory: GuestMemoryMmap,
    pub serial: SharedSerial,
    /// The keyboard controller (its Ctrl-Alt-Del is pressed through here).
    pub i8042: SharedI8042,
    /// Transports and their devices, in slot order.
    pub virtio: Vec<(Arc<Mutex<MmioTransport>>, QueueServer)>,
    pub machine: SavedMachine,
    /// Devices with host state a snapshot cannot hold (a container's).
    pub unsaveable: bool,
}

/// Writes a snapshot of the paused VM behind `source` and `gate`.
pub(crate) fn capture(
    source: &SnapshotSource,
    gate: &PauseGate,
    state_path: &Path,
    mem_path: &Path,
) -> Result<SnapshotInfo, SnapshotError> {
    let start = Instant::now();
    if source.unsaveable {
        return Err(SnapshotError::Container);
    }
    if same_file(state_path, mem_path) {
        return Err(SnapshotError::SamePath(state_path.to_path_buf()));
    }
    let msr_list: Vec<u32> = kvm_ioctls::Kvm::new()
        .and_then(|k| k.get_msr_index_list())
        .map_err(SnapshotError::MsrList)?
        .as_slice()
        .to_vec();
    let cpus = usize::from(source.machine.cpus);
    let stuck = |e| match e {
        PauseError::Ended => SnapshotError::Ended,
        PauseError::NotPaused => SnapshotError::NotPaused,
        e => SnapshotError::Vcpus(e),
    };
    // Nothing resumes the VM until both files are written.
    let _paused = gate.hold_paused().map_err(stuck)?;
    // No queue work runs from here to the memory file's end, so the ring
    // positions saved match the rings in the memory saved; and no device
    // raises an interrupt after the LAPICs below are read (an edge would
    // be lost to the snapshot with its used-ring entry saved).
    let held: Vec<_> = source.virtio.iter().map(|(_, s)| s.hold()).collect();
    type Slots = Mutex<Vec<Option<Result<VcpuState, VcpuStateError>>>>;
    let slots: Arc<Slots> = Arc::new(Mutex::new((0..cpus).map(|_| None).collect()));
    let errand_slots = slots.clone();
    gate.on_each_parked(
        cpus,
        Arc::new(move |cpu, vcpu| {
            let state = VcpuState::save(vcpu, cpu, &msr_list);
            if let Some(slot) = crate::lock(&errand_slots).get_mut(usize::from(cpu)) {
                *slot = Some(state);
            }
        }),
    )
    .map_err(stuck)?;
    let mut vcpus = Vec::with_capacity(cpus);
    for slot in crate::lock(&slots).drain(..) {
        match slot {
            Some(state) => vcpus.push(state?),
            None => {
                return Err(SnapshotError::Vcpus(PauseError::NoAnswer {
                    done: vcpus.len(),
                    vcpus: cpus,
                    waited: start.elapsed(),
                }))
            }
        }
    }
    let virtio = source
        .virtio
        .iter()
        .zip(&held)
        .map(|((t, _), h)| crate::lock(t).snapshot(h))
        .collect();
    let serial = crate::lock(&source.serial).snapshot();
    let i8042 = crate::lock(&source.i8042).state();
    let vm = VmState::save(&source.vm, source.machine.pit)?;
    let memory_id = random_id();
    let memory_bytes = memory_file::write(&source.memory, mem_path, memory_id)?;
    drop(held);
    let snapshot = Snapshot {
        memory_id,
        machine: source.machine.clone(),
        vm,
        vcpus,
        serial,
        i8042,
        virtio,
    };
    let state_bytes = file::write(state_path, &snapshot)?;
    Ok(SnapshotInfo {
        state_bytes,
        memory_bytes,
        took: start.elapsed(),
    })
}

/// A random id tying a state file to its memory file.
fn random_id() -> u64 {
    let mut id = [0u8; 8];
    // SAFETY: getrandom writes at most 8 bytes into the 8-byte buffer.
    let n = unsafe { libc::getrandom(id.as_mut_ptr().cast(), id.len(), 0) };
    if n != id.len() as isize {
        // No randomness: still unique per snapshot within this host.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        return t ^ (u64::from(std::process::id()) << 32);
    }
    u64::from_ne_bytes(id)
}

/// Whether `a` and `b` name one file (or the same path).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    if a == b {
        return true;
    }
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}
