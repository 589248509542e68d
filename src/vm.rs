//! A running VM, as a library user holds it: wait for it to end, stop it,
//! script its console. Dropping it stops every vCPU, joins every thread,
//! flushes the disks, closes every fd and restores the terminal.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::VmConfig;
use crate::console::Console;
use crate::control::{KeyPressError, VmControl};
use crate::error::Error;
use crate::exit::{ExitSignal, StopReason, VmExit};
use crate::machine::Machine;
use crate::pause::{PauseError, RunState};
use crate::restore::RestoreConfig;
use crate::signals::StopSignals;
use crate::snapshot::{SnapshotError, SnapshotInfo};

/// A running microVM.
pub struct Vm {
    machine: Option<Machine>,
    exit: Arc<ExitSignal>,
    control: VmControl,
    console: Console,
    result: Option<VmExit>,
    signals: Option<StopSignals>,
    /// A container run: its end, and CMD for the stop signals.
    container: Option<crate::container::ContainerHandle>,
    /// A stop signal forwarded to CMD, and when the VM is stopped if CMD
    /// has not ended by then.
    forwarded: Option<(i32, Instant)>,
}

/// How long CMD has to end after a stop signal Ember forwarded to it
/// (podman's default stop timeout).
pub const CONTAINER_STOP_GRACE: Duration = Duration::from_secs(10);

impl Vm {
    /// Validates `config`, builds the VM and starts its vCPUs. On error
    /// nothing is left running: every thread started is joined.
    pub fn start(config: &VmConfig) -> Result<Vm, Error> {
        // Bounds the VMs still closing on the reaper (src/reaper.rs).
        crate::reaper::before_start();
        Self::own(crate::builder::build(config)?)
    }

    /// Builds a VM from a snapshot's two files (see [`RestoreConfig`]); it
    /// runs from where the snapshot was taken, or waits paused. Two VMs
    /// restored from one snapshot are independent, but alike: the same
    /// MACs (unless given others), the same guest RNG state.
    pub fn restore(config: &RestoreConfig) -> Result<Vm, Error> {
        crate::reaper::before_start();
        Self::own(crate::restore::restore(config)?)
    }

    /// Boots a container template (src/container/template.rs).
    pub(crate) fn start_template(
        config: &VmConfig,
        container: crate::container::Prepared,
    ) -> Result<Vm, Error> {
        crate::reaper::before_start();
        Self::own(crate::builder::build_template(config, container)?)
    }

    /// Boots a container run whose CMD streams are `stdio`.
    pub(crate) fn start_container(
        config: &VmConfig,
        stdio: crate::container::ContainerStdio,
    ) -> Result<Vm, Error> {
        crate::reaper::before_start();
        config.validate()?;
        let c = config
            .container
            .as_ref()
            .ok_or(crate::config::ConfigError::NoContainer)?;
        let prepared = crate::container::prepare(c, Some(stdio))?;
        Self::own(crate::builder::build_container(config, prepared)?)
    }

    /// Restores a container template for a run whose CMD streams are
    /// `stdio` (Ember's own when None).
    pub(crate) fn restore_container(
        config: &RestoreConfig,
        stdio: Option<crate::container::ContainerStdio>,
    ) -> Result<Vm, Error> {
        crate::reaper::before_start();
        Self::own(crate::restore::restore_with(config, stdio)?)
    }

    /// A container guest's init has said it is ready for its command.
    pub(crate) fn container_ready(&self) -> bool {
        self.container.as_ref().is_some_and(|c| c.init_ready())
    }

    fn own(mut machine: Machine) -> Result<Vm, Error> {
        Ok(Self {
            exit: machine.exit().clone(),
            control: machine.control().clone(),
            console: machine.console().console(),
            container: machine.container().cloned(),
            machine: Some(machine),
            result: None,
            signals: None,
            forwarded: None,
        })
    }

    /// Writes a full snapshot of the paused VM: its state to `state_path`
    /// and its RAM to `mem_path`. Pause it first; it stays paused.
    pub fn snapshot(
        &self,
        state_path: impl AsRef<std::path::Path>,
        mem_path: impl AsRef<std::path::Path>,
    ) -> Result<SnapshotInfo, SnapshotError> {
        self.control
            .snapshot(state_path.as_ref(), mem_path.as_ref())
    }

    /// The console handle (meaningful with `ConsoleMode::Scripted`).
    pub fn console(&self) -> Console {
        self.console.clone()
    }

    /// Blocks until the VM ends; then releases everything. Calling it again
    /// returns the same reason.
    pub fn wait(&mut self) -> VmExit {
        loop {
            if let Some(r) = self.wait_timeout(None) {
                return r;
            }
        }
    }

    /// Like `wait`, giving up after `timeout` (None = forever); the VM keeps
    /// running if it gives up.
    pub fn wait_timeout(&mut self, timeout: Option<Duration>) -> Option<VmExit> {
        if let Some(r) = &self.result {
            return Some(r.clone());
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        let reason = loop {
            if let Some(r) = self.exit.reason() {
                break r;
            }
            if let Some((n, at)) = self.forwarded {
                if Instant::now() >= at {
                    log::warn!("CMD did not end within {CONTAINER_STOP_GRACE:?} of signal {n}: stopping the VM");
                    self.exit.trigger(VmExit::Stopped(StopReason::Signal(n)));
                    continue;
                }
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                return None;
            }
            let grace_left = self
                .forwarded
                .map(|(_, at)| at.saturating_duration_since(Instant::now()));
            let left = match (left, grace_left) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let signal_fd = self.signals.as_ref().map(StopSignals::fd);
            wait_readable(self.exit.event_fd().as_raw_fd(), signal_fd, left);
            // The eventfd first, then the flags: a signal after this read
            // leaves the eventfd set for the next wait.
            let stop = self.signals.as_ref().and_then(StopSignals::take);
            let resized = self
                .signals
                .as_ref()
                .is_some_and(StopSignals::window_changed);
            if let (true, Some(c)) = (resized, &self.container) {
                if let Some((rows, cols)) = crate::terminal::window_size() {
                    c.resize(rows, cols);
                }
            }
            if let Some(n) = stop {
                match (&self.container, self.forwarded) {
                    // A container's CMD gets the signal first (a second
                    // one stops the VM at once).
                    (Some(c), None) => {
                        c.signal(n);
                        self.forwarded = Some((n, Instant::now() + CONTAINER_STOP_GRACE));
                    }
                    _ => self.exit.trigger(VmExit::Stopped(StopReason::Signal(n))),
                }
            }
        };
        // Teardown: vCPUs kicked and joined, loops joined, disks flushed,
        // console drained, terminal restored, descriptors closed. A signal
        // now ends the process at once.
        if let Some(s) = &self.signals {
            s.tearing_down();
        }
        self.machine = None;
        self.result = Some(reason.clone());
        Some(reason)
    }

    /// How a container run's CMD ended (None: not a container run, or
    /// its status never came: the VM ended first). Meaningful once the
    /// VM has ended.
    pub fn container_end(&self) -> Option<crate::container::ContainerEnd> {
        self.container.as_ref().and_then(|c| c.end())
    }

    /// Sends a container run's CMD `signal` (nothing for a plain VM).
    pub fn signal_container(&self, signal: i32) {
        if let Some(c) = &self.container {
            c.signal(signal);
        }
    }

    /// Pauses the guest: returns once no vCPU runs guest code (devices
    /// finish what was queued before). Pausing a paused VM does nothing.
    pub fn pause(&self) -> Result<(), PauseError> {
        self.control.pause()
    }

    /// Lets a paused guest run again; resuming a running VM does nothing.
    pub fn resume(&self) -> Result<(), PauseError> {
        self.control.resume()
    }

    /// Presses Ctrl-Alt-Del on the guest's keyboard (Firecracker's
    /// `SendCtrlAltDel`): a Linux guest with an i8042 driver and a VT
    /// reboots in an orderly way, which ends the VM (`VmExit::Reboot`).
    pub fn ctrl_alt_del(&self) -> Result<(), KeyPressError> {
        self.control.ctrl_alt_del()
    }

    /// Running or paused; `None` once the VM has ended (`wait` says how).
    pub fn run_state(&self) -> Option<RunState> {
        self.control.run_state()
    }

    /// A handle for other threads: pause, resume, state, stop.
    pub fn control(&self) -> VmControl {
        self.control.clone()
    }

    /// Stops the VM (if still running) and returns why it ended.
    pub fn stop(&mut self) -> VmExit {
        self.exit.trigger(VmExit::Stopped(StopReason::Requested));
        self.wait()
    }

    /// Makes SIGINT, SIGTERM and SIGHUP stop this VM while `wait` runs (for
    /// a program that runs one VM, like the CLI). The signal is served by
    /// the waiting thread itself, never by one of the VM's threads.
    pub fn stop_on_signals(&mut self) -> Result<(), Error> {
        let signals = StopSignals::install().map_err(Error::host("install signal handlers"))?;
        self.stop_on(signals);
        Ok(())
    }

    /// Like `stop_on_signals`, with handlers installed before `Vm::start`
    /// (so a signal during the start is served as soon as it returns).
    pub fn stop_on(&mut self, signals: StopSignals) {
        self.signals = Some(signals);
    }
}

/// Waits until `a` or `b` is readable, or `timeout` passes.
fn wait_readable(a: RawFd, b: Option<RawFd>, timeout: Option<Duration>) {
    let mut fds = [
        libc::pollfd {
            fd: a,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: b.unwrap_or(-1),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let ms = timeout.map_or(-1, |t| t.as_millis().clamp(1, i32::MAX as u128) as i32);
    // SAFETY: two valid pollfd entries; a negative fd is ignored by poll.
    unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
}

impl Drop for Vm {
    fn drop(&mut self) {
        // Machine::drop stops the VM if it still runs; the signal routing
        // ends after it, so a signal during teardown is not lost to a
        // default action mid-flush.
        self.machine = None;
        self.signals = None;
    }
}
