//! A start that fails at any step leaves nothing behind: threads and
//! descriptors return to their baseline and the TAP and disk can be used
//! again at once. Alone in its own test binary, so no other test's threads
//! blur the counts.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ember::{ConsoleMode, DiskConfig, Error, Vm, VmConfig};

fn count_entries(dir: &str) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

/// Waits for the reaper to close the VMs handed to it (src/reaper.rs);
/// threads end just after their handles are joined, so give them a moment.
fn settle(fds: usize, threads: usize) -> (usize, usize) {
    ember::reaper::wait_idle();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = (
            count_entries("/proc/self/fd"),
            count_entries("/proc/self/task"),
        );
        if (now.0 <= fds && now.1 <= threads) || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
#[ignore = "needs /dev/kvm; make test runs it"]
fn a_start_failing_at_each_step_releases_everything() {
    require_kvm();
    let ns = common::netns::Netns::new("fail");
    ns.enter();
    let dir = scratch("start_failure");
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let elf = tiny_guest("start_failure_guest", "idle.S");
    let mut config = VmConfig::new(elf);
    config.memory = 16 << 20;
    config.cpus = 2;
    config.console = ConsoleMode::Scripted { echo: false };
    config.disks = vec![DiskConfig {
        path: disk,
        read_only: false,
    }];
    config.nets = vec![ember::NetConfig {
        tap: common::netns::TAP.into(),
        mac: None,
    }];
    // Warm up process-wide state (signal handlers, allocator arenas).
    drop(Vm::start(&config).unwrap());
    std::thread::sleep(Duration::from_millis(100));
    let (fds, threads) = (
        count_entries("/proc/self/fd"),
        count_entries("/proc/self/task"),
    );
    let mut failed_steps = Vec::new();
    for step in 0.. {
        ember::inject_start_failure(Some(step));
        match Vm::start(&config) {
            Err(Error::Injected { step: name }) => failed_steps.push(name),
            Err(e) => panic!("step {step}: unexpected error {}", error_chain(&e)),
            Ok(vm) => {
                drop(vm);
                break;
            }
        }
        let now = settle(fds, threads);
        assert!(
            now.0 <= fds && now.1 <= threads,
            "after failing at {:?}: fds {} -> {}, threads {} -> {}",
            failed_steps.last(),
            fds,
            now.0,
            threads,
            now.1
        );
        // The TAP and the disk are free again at once.
        ember::inject_start_failure(None);
        let mut vm = Vm::start(&config).unwrap_or_else(|e| {
            panic!(
                "restart after failing at {:?}: {}",
                failed_steps.last(),
                error_chain(&e)
            )
        });
        vm.console()
            .wait_for("ready", Duration::from_secs(30))
            .unwrap();
        vm.stop();
        drop(vm);
    }
    ember::inject_start_failure(None);
    // Every step of the recipe was tried: two of them per vCPU.
    for step in [
        "load the boot payload",
        "create the VM",
        "start the console",
        "attach the devices",
        "start the event loop",
        "enter raw mode",
        "start a vCPU",
    ] {
        assert!(
            failed_steps.contains(&step),
            "{step} not tried: {failed_steps:?}"
        );
    }
    assert_eq!(
        failed_steps
            .iter()
            .filter(|s| **s == "start a vCPU")
            .count(),
        2
    );
}
