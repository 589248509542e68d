//! Ember: a microVM monitor on Linux KVM.
//!
//! ```no_run
//! use std::time::Duration;
//! use ember::{ConsoleMode, Vm, VmConfig, VmExit};
//!
//! let mut config = VmConfig::new("target/guest/vmlinux");
//! config.initrd = Some("target/guest/initramfs.cpio".into());
//! config.cpus = 2;
//! config.console = ConsoleMode::Scripted { echo: false };
//! let mut vm = Vm::start(&config)?;
//! let console = vm.console();
//! console.wait_for(r"# $", Duration::from_secs(300))?;
//! console.send_line("poweroff")?;
//! assert_eq!(vm.wait(), VmExit::Poweroff);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod api;
mod builder;
pub mod cli;
pub mod config;
mod console;
mod console_input;
mod console_match;
pub mod container;
mod control;
mod error;
mod event_loop;
mod exit;
#[doc(hidden)]
pub mod fuzzing;
mod guest_profile;
pub mod layout;
mod loader;
mod machine;
mod memory;
mod pause;
pub mod platform;
pub mod reaper;
mod restore;
pub mod seccomp;
mod signals;
mod snapshot;
mod stdin;
pub mod terminal;
mod vcpu;
mod virtio_devices;
mod vm;
mod x86_64;

pub use config::{parse_size, ConfigError, ConsoleMode, DiskConfig, NetConfig, VmConfig};
pub use console::{Console, ConsoleError, LogWriter};
pub use control::{KeyPressError, VmControl};
pub use error::{error_chain, Error};
pub use exit::{Crash, CrashKind, HostFailure, StopReason, VmExit};
pub use loader::LoadError;
pub use pause::{PauseError, RunState};
pub use restore::{RestoreConfig, RestoreError};
pub use signals::StopSignals;
pub use snapshot::{SnapshotError, SnapshotInfo};
pub use vm::Vm;

#[doc(hidden)]
pub use builder::inject_start_failure;

/// Locks a mutex even if a panicking thread poisoned it: the data behind
/// Ember's locks stays consistent at every await point.
pub(crate) fn lock<T: ?Sized>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
