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

/// User + system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// Resident set size in KiB (VmRSS of /proc/self/status).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0)
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
    ember::reaper::wait_idle();
    let (fds, threads, rss) = (count("/proc/self/fd"), count("/proc/self/task"), rss_kib());
    let (start, cpu0) = (Instant::now(), cpu_seconds());
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
    // The last VMs' descriptors close on the reaper: wait for them before
    // counting (Vm's drop returns before the host's slow VM close).
    ember::reaper::wait_idle();
    let cpu = cpu_seconds() - cpu0;
    per_vm.sort();
    let (fds_after, threads_after, rss_after) =
        (count("/proc/self/fd"), count("/proc/self/task"), rss_kib());
    // VMs per CPU-second of the whole process (caller and reaper threads)
    // is the per-core rate: the reaper's waits overlap and cost no CPU.
    println!(
        "create_destroy            {n} VMs in {:.2} s = {:.0} VMs/s ({:.0} VMs per CPU-second); per VM median {:.2} ms, p99 {:.2} ms; fds {fds} -> {fds_after}, threads {threads} -> {threads_after}, RSS {rss} -> {rss_after} KiB",
        total.as_secs_f64(),
        n as f64 / total.as_secs_f64(),
        n as f64 / cpu,
        per_vm[n / 2].as_secs_f64() * 1e3,
        per_vm[(n * 99 / 100).min(n - 1)].as_secs_f64() * 1e3,
    );
    if fds_after > fds || threads_after > threads || rss_after > rss + 1024 {
        eprintln!("LEAK: descriptors, threads or RSS (+1 MiB) did not return to their baseline");
        std::process::exit(1);
    }
}
