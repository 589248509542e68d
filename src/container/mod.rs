//! Containers in a VM: `ember run --rootfs DIR -- CMD`. The guest runs
//! Ember's own init (`ember-init`, carried inside Ember) from an initramfs
//! Ember builds for the run; the root and volumes are live 9P shares of
//! host directories (`file_server`), CMD's streams and exit status cross
//! one virtio-console port (`stream`), in `ember-guest-proto`'s messages.

mod config;
pub(crate) mod file_server;
pub(crate) mod initramfs;
pub(crate) mod stream;

use std::path::PathBuf;

use ember_devices::virtio::console::Console;
use ember_devices::virtio::p9::NineP;
use ember_guest_proto::PORT_NAME;

use crate::builder::ExtraDevice;
use crate::config::VmConfig;
pub(crate) use stream::ContainerHandle;

pub use config::{ContainerConfig, ContainerConfigError, VolumeConfig};
pub use stream::ContainerEnd;

/// What the guest kernel is told for a container run: no console chatter
/// on the way (it goes to the console log), no reboot on a panic (Ember
/// reports it).
pub(crate) const CMDLINE: &str = "console=ttyS0 quiet loglevel=1 panic=-1 rdinit=/init";

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("--rootfs/-v {path}: not a directory")]
    NotADirectory { path: PathBuf },
    #[error("--rootfs/-v {path}: cannot open")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot build the container's initramfs")]
    Initramfs(#[source] std::io::Error),
    #[error("cannot start the file server for {path}")]
    FileServer {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up CMD's streams")]
    Streams(#[source] std::io::Error),
    #[error(transparent)]
    Device(#[from] ember_devices::virtio::p9::P9Error),
}

/// Checks that every shared directory is one.
pub(crate) fn check_directories(config: &ContainerConfig) -> Result<(), ContainerError> {
    for (_, dir, _) in config.shares() {
        let meta = std::fs::metadata(dir).map_err(|source| ContainerError::Open {
            path: dir.to_path_buf(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(ContainerError::NotADirectory {
                path: dir.to_path_buf(),
            });
        }
    }
    Ok(())
}

/// A container run's host side, made before the VM: the served shares,
/// the stream, and the initramfs to boot.
pub(crate) struct Prepared {
    devices: Vec<ExtraDevice>,
    handle: ContainerHandle,
    initramfs: initramfs::Initramfs,
}

/// Checks the directories, starts a file server per share and builds
/// the initramfs.
pub(crate) fn prepare(config: &ContainerConfig) -> Result<Prepared, ContainerError> {
    check_directories(config)?;
    let initramfs =
        initramfs::Initramfs::build(&config.spec()).map_err(ContainerError::Initramfs)?;
    let (backend, handle) = stream::StreamBackend::new().map_err(ContainerError::Streams)?;
    let mut devices = vec![ExtraDevice {
        device: Box::new(Console::new(PORT_NAME, Box::new(backend))),
        own_thread: None,
    }];
    for (i, (tag, dir, read_only)) in config.shares().into_iter().enumerate() {
        let server = file_server::FileServer::start(dir, read_only).map_err(|source| {
            ContainerError::FileServer {
                path: dir.to_path_buf(),
                source,
            }
        })?;
        devices.push(ExtraDevice {
            device: Box::new(NineP::new(&tag, Box::new(server))?),
            // A share's requests wait on the host's file system: a thread
            // of their own, like a disk's.
            own_thread: Some(format!("ember-9p{i}")),
        });
    }
    Ok(Prepared {
        devices,
        handle,
        initramfs,
    })
}

impl Prepared {
    /// The config the guest boots with: Ember's initramfs, and the
    /// container's kernel arguments before the user's own.
    pub(crate) fn boot_config(&self, config: &VmConfig) -> VmConfig {
        let mut boot = config.clone();
        boot.initrd = Some(self.initramfs.path());
        boot.cmdline = match config.cmdline.as_str() {
            crate::config::DEFAULT_CMDLINE => CMDLINE.to_string(),
            user => format!("{CMDLINE} {user}"),
        };
        boot
    }

    pub(crate) fn into_parts(self) -> (Vec<ExtraDevice>, ContainerHandle, initramfs::Initramfs) {
        (self.devices, self.handle, self.initramfs)
    }
}
