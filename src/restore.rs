//! A VM built from a snapshot's two files: the machine it describes, its
//! RAM mapped privately from the memory file, every device and vCPU put
//! back in its saved state. The snapshot is untrusted input: everything in
//! it is checked (by the format's checksum, then by each device and by
//! KVM) before the guest runs an instruction.

use std::path::PathBuf;

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;

use crate::builder::{self, Parts, SavedDevices};
use crate::config::{ConsoleMode, DiskConfig, NetConfig, VmConfig};
use crate::error::Error;
use crate::machine::Machine;
use crate::memory;
use crate::platform::Host;
use crate::snapshot::{file, memory_file, SavedDisk, SavedNet, Snapshot};
use crate::virtio_devices;
use crate::x86_64::cpuid;

/// How to restore a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreConfig {
    /// The state file `Vm::snapshot` (or `PUT /snapshot/create`) wrote.
    pub snapshot: PathBuf,
    /// Its memory file.
    pub memory: PathBuf,
    pub console: ConsoleMode,
    /// Disks in place of the snapshot's own (same count and sizes);
    /// `None`: reopen the ones the snapshot names.
    pub disks: Option<Vec<DiskConfig>>,
    /// Interfaces in place of the snapshot's own (same count); a MAC not
    /// given is the snapshot's.
    pub nets: Option<Vec<NetConfig>>,
    /// Run the guest at once; otherwise it waits, paused, for `resume`.
    pub resume: bool,
    /// Seccomp filters on the VM's threads (as `VmConfig::seccomp`).
    pub seccomp: bool,
    /// The run for a container template's snapshot (its init waits for
    /// a command): required for one, refused for any other.
    pub container: Option<crate::container::ContainerConfig>,
}

impl RestoreConfig {
    pub fn new(snapshot: impl Into<PathBuf>, memory: impl Into<PathBuf>) -> Self {
        Self {
            snapshot: snapshot.into(),
            memory: memory.into(),
            console: ConsoleMode::Terminal,
            disks: None,
            nets: None,
            resume: true,
            seccomp: true,
            container: None,
        }
    }
}

/// Why a snapshot cannot be restored here (the user's input is wrong: the
/// CLI exits 2).
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    File(#[from] file::FileError),
    #[error(transparent)]
    MemoryFile(#[from] memory_file::MemoryFileError),
    #[error("{path}: the snapshot describes an impossible machine")]
    Machine {
        path: PathBuf,
        #[source]
        source: crate::config::ConfigError,
    },
    #[error("{path}: {what} ({saved} in the machine, {found} in the snapshot)")]
    Inconsistent {
        path: PathBuf,
        what: &'static str,
        saved: usize,
        found: usize,
    },
    #[error("the snapshot's guest has {saved} {what}, {given} given")]
    DeviceCount {
        what: &'static str,
        saved: usize,
        given: usize,
    },
    #[error("--disk {path}: {size} bytes, but the snapshot's guest knows its disk {index} as {saved} bytes")]
    DiskSize {
        path: PathBuf,
        index: usize,
        size: u64,
        saved: u64,
    },
    #[error("--disk {path}: cannot read its size")]
    DiskStat {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: this host's CPU lacks features the snapshot's guest uses: {missing}")]
    CpuFeatures { path: PathBuf, missing: String },
    #[error("{path}: a container template restores only with a command to run")]
    TemplateWithoutCommand { path: PathBuf },
    #[error("{path}: not a container template: it cannot run a command")]
    CommandWithoutTemplate { path: PathBuf },
}

/// Builds the snapshot's VM and starts its threads; the vCPUs run the
/// guest from where it was (or park first, without `resume`).
pub(crate) fn restore(config: &RestoreConfig) -> Result<Machine, Error> {
    restore_with(config, None)
}

/// `restore`, a container template's run getting `stdio` for CMD.
pub(crate) fn restore_with(
    config: &RestoreConfig,
    stdio: Option<crate::container::ContainerStdio>,
) -> Result<Machine, Error> {
    let path = config.snapshot.clone();
    let snap: Snapshot = file::read(&path).map_err(RestoreError::from)?;
    let m = &snap.machine;
    check_consistent(&snap, &path)?;
    builder::check_memory_fits_host(m.memory)?;
    let disk_configs = disks_for(config, &m.disks)?;
    let net_configs = nets_for(config, &m.nets)?;
    let disks = virtio_devices::open_disks(&disk_configs)?;
    for (index, (d, saved)) in disks.iter().zip(&m.disks).enumerate() {
        if d.capacity_bytes() != saved.bytes {
            return Err(RestoreError::DiskSize {
                path: disk_configs[index].path.clone(),
                index,
                size: d.capacity_bytes(),
                saved: saved.bytes,
            }
            .into());
        }
    }
    let nets = virtio_devices::open_nets(&net_configs)?;
    let (extra, container) = match (m.container_shares, &config.container) {
        (Some(slots), Some(c)) => {
            c.validate().map_err(crate::config::ConfigError::from)?;
            let (devices, handle) = crate::container::attach_to_template(c, slots, stdio)?;
            (devices, Some(handle))
        }
        (None, None) => (Vec::new(), None),
        (Some(_), None) => {
            return Err(RestoreError::TemplateWithoutCommand { path: path.clone() }.into())
        }
        (None, Some(_)) => {
            return Err(RestoreError::CommandWithoutTemplate { path: path.clone() }.into())
        }
    };
    let mem = memory_file::map(
        &config.memory,
        &memory::ram_ranges(m.memory),
        snap.memory_id,
    )
    .map_err(RestoreError::from)?;
    memory::keep_out_of_forks(&mem)?;
    let mut machine = m.clone();
    machine.disks = disk_configs
        .iter()
        .zip(&m.disks)
        .map(|(d, s)| SavedDisk {
            path: d.path.clone(),
            read_only: d.read_only,
            bytes: s.bytes,
        })
        .collect();
    machine.nets = net_configs
        .iter()
        .zip(&nets)
        .map(|(n, dev)| SavedNet {
            tap: n.tap.clone(),
            mac: dev.mac(),
        })
        .collect();
    let parts = Parts {
        machine,
        mem,
        disks,
        nets,
        unsaveable: !extra.is_empty(),
        extra,
        console: &config.console,
        paused: !config.resume,
        seccomp: config.seccomp,
    };
    let saved = SavedDevices {
        vm: &snap.vm,
        serial: &snap.serial,
        i8042: &snap.i8042,
        virtio: &snap.virtio,
    };
    let cpus = snap.machine.cpus;
    let mut machine = builder::assemble(parts, Some(saved), |kvm, vm| {
        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(Error::kvm("read the supported CPUID"))?;
        let mut fds = Vec::with_capacity(snap.vcpus.len());
        let emulating = Host::detect().is_emulating();
        for (cpu, state) in snap.vcpus.iter().enumerate() {
            let fd = vm
                .create_vcpu(cpu as u64)
                .map_err(Error::kvm("create a vCPU"))?;
            // What a vCPU booted here would have: the table Ember gives a
            // fresh vCPU, as KVM then reports it (an emulating host adds
            // the host's own features to what it calls supported).
            let fresh = cpuid::for_vcpu(&supported, cpu as u8, cpus, emulating);
            fd.set_cpuid2(&fresh)
                .map_err(Error::kvm("set a vCPU's CPUID"))?;
            let here = fd
                .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
                .map_err(Error::kvm("read a vCPU's CPUID"))?;
            let missing = cpuid::missing_features(&state.cpuid, here.as_slice());
            if !missing.is_empty() {
                let missing = missing
                    .iter()
                    .map(|(leaf, reg, bits)| format!("leaf {leaf:#x} {reg} bits {bits:#x}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(RestoreError::CpuFeatures {
                    path: path.clone(),
                    missing,
                }
                .into());
            }
            state.restore(&fd, cpu as u8).map_err(Error::RestoreVcpu)?;
            fds.push(fd);
        }
        Ok(fds)
    })?;
    machine.set_container(container);
    // bench/snapshot.py times a restore up to this line.
    log::info!(
        "restored {}: {cpus} vCPU threads started ({})",
        path.display(),
        if config.resume { "running" } else { "paused" }
    );
    Ok(machine)
}

/// The machine a snapshot describes must be one Ember could have run, and
/// its parts must agree with it.
fn check_consistent(snap: &Snapshot, path: &std::path::Path) -> Result<(), RestoreError> {
    let m = &snap.machine;
    let mut config = VmConfig::new(&m.kernel);
    config.cpus = m.cpus;
    config.memory = m.memory;
    config.cmdline = m.cmdline.clone();
    config.disks = m
        .disks
        .iter()
        .map(|d| DiskConfig {
            path: d.path.clone(),
            read_only: d.read_only,
        })
        .collect();
    config.nets = m
        .nets
        .iter()
        .map(|n| NetConfig {
            tap: n.tap.clone(),
            mac: Some(n.mac),
        })
        .collect();
    config.validate().map_err(|source| RestoreError::Machine {
        path: path.to_path_buf(),
        source,
    })?;
    let inconsistent = |what, saved, found| RestoreError::Inconsistent {
        path: path.to_path_buf(),
        what,
        saved,
        found,
    };
    if snap.vcpus.len() != usize::from(m.cpus) {
        return Err(inconsistent("vCPU states", m.cpus.into(), snap.vcpus.len()));
    }
    let container = m.container_shares.map_or(0, |n| 1 + usize::from(n));
    let devices = m.disks.len() + m.nets.len() + container;
    if snap.virtio.len() != devices {
        return Err(inconsistent("virtio devices", devices, snap.virtio.len()));
    }
    Ok(())
}

fn disks_for(config: &RestoreConfig, saved: &[SavedDisk]) -> Result<Vec<DiskConfig>, Error> {
    let disks = match &config.disks {
        None => saved
            .iter()
            .map(|d| DiskConfig {
                path: d.path.clone(),
                read_only: d.read_only,
            })
            .collect(),
        Some(given) => given.clone(),
    };
    if disks.len() != saved.len() {
        return Err(RestoreError::DeviceCount {
            what: "disks",
            saved: saved.len(),
            given: disks.len(),
        }
        .into());
    }
    for d in &disks {
        std::fs::metadata(&d.path).map_err(|source| RestoreError::DiskStat {
            path: d.path.clone(),
            source,
        })?;
    }
    Ok(disks)
}

fn nets_for(config: &RestoreConfig, saved: &[SavedNet]) -> Result<Vec<NetConfig>, Error> {
    let nets: Vec<NetConfig> = match &config.nets {
        None => saved
            .iter()
            .map(|n| NetConfig {
                tap: n.tap.clone(),
                mac: Some(n.mac),
            })
            .collect(),
        Some(given) => given
            .iter()
            .zip(saved)
            .map(|(g, s)| NetConfig {
                tap: g.tap.clone(),
                mac: Some(g.mac.unwrap_or(s.mac)),
            })
            .collect(),
    };
    let given = config.nets.as_ref().map_or(saved.len(), Vec::len);
    if given != saved.len() {
        return Err(RestoreError::DeviceCount {
            what: "network interfaces",
            saved: saved.len(),
            given,
        }
        .into());
    }
    Ok(nets)
}
