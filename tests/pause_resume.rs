//! Pausing and resuming a running VM through the library: a paused guest
//! runs no instruction (its output stops), resumes where it was, and a
//! paused VM still stops at once.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ember::{ConsoleMode, PauseError, RunState, StopReason, Vm, VmConfig, VmExit};

const LIMIT: Duration = Duration::from_secs(20);

/// Waits until the transcript is longer than `len` bytes.
fn grows_past(vm: &Vm, len: usize) -> usize {
    let deadline = Instant::now() + LIMIT;
    loop {
        let now = vm.console().transcript().len();
        if now > len {
            return now;
        }
        assert!(Instant::now() < deadline, "no guest output for {LIMIT:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
#[ignore = "needs /dev/kvm; make test runs it"]
fn a_paused_guest_runs_nothing_resumes_and_still_stops_at_once() {
    require_kvm();
    let elf = tiny_guest("pause_ticker", "ticker.S");
    let mut config = VmConfig::new(&elf);
    config.memory = 16 << 20;
    // The second vCPU waits for a SIPI inside KVM_RUN: it must park too.
    config.cpus = 2;
    config.console = ConsoleMode::Scripted { echo: false };
    let mut vm = Vm::start(&config).unwrap();
    vm.console().wait_for("ready", LIMIT).unwrap();
    let ticking = grows_past(&vm, "ready\n".len());
    assert_eq!(vm.run_state(), Some(RunState::Running));

    vm.pause().unwrap();
    assert_eq!(vm.run_state(), Some(RunState::Paused));
    vm.pause().unwrap();
    // What the guest wrote before the pause may still be on its way.
    std::thread::sleep(Duration::from_millis(100));
    let paused_at = vm.console().transcript().len();
    assert!(paused_at >= ticking);
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        vm.console().transcript().len(),
        paused_at,
        "the guest wrote while paused"
    );

    vm.resume().unwrap();
    assert_eq!(vm.run_state(), Some(RunState::Running));
    grows_past(&vm, paused_at);

    vm.pause().unwrap();
    let asked = Instant::now();
    assert_eq!(vm.stop(), VmExit::Stopped(StopReason::Requested));
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    assert!(matches!(vm.pause(), Err(PauseError::Ended)));
    assert!(matches!(vm.resume(), Err(PauseError::Ended)));
    assert_eq!(vm.run_state(), None);
}
