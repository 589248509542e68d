//! Containers in a VM: `ember run --rootfs DIR -- CMD`. The guest runs
//! Ember's own init (`ember-init`, carried inside Ember) from an initramfs
//! Ember builds for the run; the root and volumes are live 9P shares of
//! host directories (`file_server`), CMD's streams and exit status cross
//! one virtio-console port (`stream`), in `ember-guest-proto`'s messages.

mod config;
pub(crate) mod file_server;
pub(crate) mod initramfs;
pub(crate) mod stream;
pub mod template;
mod template_cache;

use std::path::PathBuf;

use ember_devices::virtio::console::Console;
use ember_devices::virtio::p9::NineP;
use ember_guest_proto::PORT_NAME;

use crate::builder::ExtraDevice;
use crate::config::VmConfig;
pub(crate) use stream::ContainerHandle;

pub use config::{ContainerConfig, ContainerConfigError, VolumeConfig};
pub use stream::{ContainerEnd, ContainerStdio};
pub use template::{start, start_with, StartMode, TemplateError, TEMPLATE_SHARES};

/// What the guest kernel is told for a container run: no console chatter
/// on the way (it goes to the console log); a panic resets the guest at
/// once, which ends the VM (the run exits 125).
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
    #[error("{given} shares (the root and volumes), over the template's {slots}")]
    TooManyShares { given: usize, slots: u8 },
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
    /// A template (no command: its init waits for one) with this many
    /// shares; None for a run.
    template_shares: Option<u8>,
}

/// A share slot of a template that a run leaves unused: every request is
/// refused (the guest never mounts it).
struct NoShare;

impl ember_devices::virtio::p9::P9Backend for NoShare {
    fn request(&mut self, _: &[u8]) -> std::io::Result<Vec<u8>> {
        Err(std::io::Error::other("this share slot is not in use"))
    }
}

/// The console and share devices of a run: the stream sends the spec at
/// `start`; shares beyond the run's (up to `slots`) refuse requests.
fn run_devices(
    config: &ContainerConfig,
    start: stream::Start,
    slots: usize,
    stdio: Option<ContainerStdio>,
) -> Result<(Vec<ExtraDevice>, ContainerHandle), ContainerError> {
    check_directories(config)?;
    let (backend, handle) = stream::StreamBackend::new(Some(config.spec()), start, stdio)
        .map_err(ContainerError::Streams)?;
    let mut devices = vec![ExtraDevice {
        device: Box::new(Console::new(PORT_NAME, Box::new(backend))),
        own_thread: None,
    }];
    let shares = config.shares();
    for i in 0..slots.max(shares.len()) {
        let (tag, backend): (String, Box<dyn ember_devices::virtio::p9::P9Backend>) =
            match shares.get(i) {
                Some((tag, dir, read_only)) => (
                    tag.clone(),
                    Box::new(file_server::FileServer::start(dir, *read_only).map_err(
                        |source| ContainerError::FileServer {
                            path: dir.to_path_buf(),
                            source,
                        },
                    )?),
                ),
                None => (config::share_tag(i), Box::new(NoShare)),
            };
        devices.push(ExtraDevice {
            device: Box::new(NineP::new(&tag, backend)?),
            // A share's requests wait on the host's file system: a thread
            // of their own, like a disk's.
            own_thread: Some(format!("ember-9p{i}")),
        });
    }
    Ok((devices, handle))
}

/// The host side of a template: a console whose stream has no command
/// yet, `shares` share slots that refuse requests.
pub(crate) fn prepare_template(shares: u8) -> Result<Prepared, ContainerError> {
    let initramfs = initramfs::Initramfs::build().map_err(ContainerError::Initramfs)?;
    let (backend, handle) = stream::StreamBackend::new(None, stream::Start::AtReady, None)
        .map_err(ContainerError::Streams)?;
    let mut devices = vec![ExtraDevice {
        device: Box::new(Console::new(PORT_NAME, Box::new(backend))),
        own_thread: None,
    }];
    for i in 0..usize::from(shares) {
        devices.push(ExtraDevice {
            device: Box::new(NineP::new(&config::share_tag(i), Box::new(NoShare))?),
            own_thread: Some(format!("ember-9p{i}")),
        });
    }
    Ok(Prepared {
        devices,
        handle,
        initramfs,
        template_shares: Some(shares),
    })
}

/// A run restored from a template with `slots` share slots: its devices,
/// the spec sent at once (the template's init said Ready already).
pub(crate) fn attach_to_template(
    config: &ContainerConfig,
    slots: u8,
    stdio: Option<ContainerStdio>,
) -> Result<(Vec<ExtraDevice>, ContainerHandle), ContainerError> {
    if config.shares().len() > usize::from(slots) {
        return Err(ContainerError::TooManyShares {
            given: config.shares().len(),
            slots,
        });
    }
    run_devices(config, stream::Start::Now, slots.into(), stdio)
}

/// Checks the directories, starts a file server per share and builds
/// the initramfs.
pub(crate) fn prepare(
    config: &ContainerConfig,
    stdio: Option<ContainerStdio>,
) -> Result<Prepared, ContainerError> {
    let initramfs = initramfs::Initramfs::build().map_err(ContainerError::Initramfs)?;
    let (devices, handle) = run_devices(config, stream::Start::AtReady, 0, stdio)?;
    Ok(Prepared {
        devices,
        handle,
        initramfs,
        template_shares: None,
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

    pub(crate) fn template_shares(&self) -> Option<u8> {
        self.template_shares
    }
}
