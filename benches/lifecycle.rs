//! VM create/destroy rate in one process, with the process's descriptor
//! and thread counts before and after (they must match: nothing leaks).
//!
//!   cargo bench --bench lifecycle -- GUEST.elf [COUNT]
//!
//! GUEST is a tiny guest that prints "ready" and idles (bench/run.sh builds
//! tests/guests/idle.S). Each VM: start (1 vCPU, 8M), wait for "ready", drop.

use std::time::{Duration, Instant};

use ember::{ConsoleMode, Vm, VmConfig};

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().filter(|a| a != "--bench").collect();
    let Some(guest) = args.get(1) else {
        eprintln!("usage: lifecycle GUEST.elf [COUNT]");
        std::process::exit(2);
    };
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(200);
    let mut config = VmConfig::new(guest);
    config.memory = 8 << 20;
    config.console = ConsoleMode::Scripted { echo: false };
    drop(Vm::start(&config).expect("start a VM"));
    let (fds, threads) = (count("/proc/self/fd"), count("/proc/self/task"));
    let start = Instant::now();
    let mut per_vm = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let vm = Vm::start(&config).expect("start a VM");
        vm.console()
            .wait_for("ready", Duration::from_secs(30))
            .expect("guest output");
        drop(vm);
        per_vm.push(t.elapsed());
    }
    let total = start.elapsed();
    std::thread::sleep(Duration::from_millis(100));
    per_vm.sort();
    let (fds_after, threads_after) = (count("/proc/self/fd"), count("/proc/self/task"));
    println!(
        "create_destroy            {n} VMs in {:.2} s = {:.0} VMs/s; per VM median {:.2} ms, p99 {:.2} ms; fds {fds} -> {fds_after}, threads {threads} -> {threads_after}",
        total.as_secs_f64(),
        n as f64 / total.as_secs_f64(),
        per_vm[n / 2].as_secs_f64() * 1e3,
        per_vm[(n * 99 / 100).min(n - 1)].as_secs_f64() * 1e3,
    );
    if fds_after > fds || threads_after > threads {
        eprintln!("LEAK: descriptors or threads did not return to their baseline");
        std::process::exit(1);
    }
}
