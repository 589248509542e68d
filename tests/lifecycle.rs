//! VM lifecycle in one process: many VMs side by side, and dropping them
//! returns the process's threads and descriptors to their baseline. Alone
//! in its own test binary, so no other test's threads blur the counts.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ember::{ConsoleMode, Vm, VmConfig};

const LIMIT: Duration = Duration::from_secs(60);

fn guest(test: &str, file: &str) -> std::path::PathBuf {
    tiny_guest(test, file)
}

fn count_entries(dir: &str) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

#[test]
#[ignore = "needs /dev/kvm; make test runs it"]
fn several_vms_in_one_process_and_drop_releases_threads_and_fds() {
    require_kvm();
    let elf = guest("many", "idle.S");
    let mut config = VmConfig::new(&elf);
    config.memory = 8 << 20;
    config.cpus = 2;
    config.console = ConsoleMode::Scripted { echo: false };
    // Warm up process-wide state (signal handlers, allocator arenas).
    drop(Vm::start(&config).unwrap());
    ember::reaper::wait_idle();
    let (fds, threads) = (
        count_entries("/proc/self/fd"),
        count_entries("/proc/self/task"),
    );
    for _round in 0..10 {
        let vms: Vec<Vm> = (0..3).map(|_| Vm::start(&config).unwrap()).collect();
        for vm in &vms {
            vm.console().wait_for("ready", LIMIT).unwrap();
        }
        drop(vms);
    }
    // The reaper closes the VMs after drop returns (src/reaper.rs);
    // threads end just after their handles are joined: give them a moment.
    ember::reaper::wait_idle();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline
        && (count_entries("/proc/self/fd") > fds || count_entries("/proc/self/task") > threads)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(count_entries("/proc/self/fd") <= fds, "fd leak");
    assert!(count_entries("/proc/self/task") <= threads, "thread leak");
}
