//! `make soak`: COUNT create -> boot -> exit cycles of a tiny guest in one
//! process, each VM with a virtio-blk disk and, when run as root (in a
//! network namespace of its own), a TAP: the process's descriptors,
//! threads and RSS must be back at their baseline at the end (RSS within
//! 1 MiB), or it exits 1. Prints VMs/s.
//!
//!   cargo bench --bench soak -- [COUNT]     (default 1000)

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use ember::{ConsoleMode, DiskConfig, NetConfig, Vm, VmConfig, VmExit};

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
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

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run as/ld (install binutils)");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// tests/guests/hello.S (prints a line, resets), assembled and linked here.
fn guest(dir: &Path) -> PathBuf {
    let root = env!("CARGO_MANIFEST_DIR");
    let asm = format!(
        "{}\n{}",
        std::fs::read_to_string(format!("{root}/tests/guests/prelude.S")).unwrap(),
        std::fs::read_to_string(format!("{root}/tests/guests/hello.S")).unwrap()
    );
    let (src, obj, elf) = (dir.join("g.S"), dir.join("g.o"), dir.join("g.elf"));
    std::fs::write(&src, asm).unwrap();
    run(Command::new("as").args(["--64", "-o"]).arg(&obj).arg(&src));
    run(Command::new("ld")
        .args([
            "-m",
            "elf_x86_64",
            "--build-id=none",
            "-z",
            "max-page-size=4096",
        ])
        .args(["-e", "_start", "-Ttext=0x200000", "-o"])
        .arg(&elf)
        .arg(&obj));
    elf
}

fn main() {
    let args: Vec<String> = std::env::args().filter(|a| a != "--bench").collect();
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let dir = std::env::temp_dir().join(format!("ember-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut config = VmConfig::new(guest(&dir));
    config.memory = 8 << 20;
    config.console = ConsoleMode::Scripted { echo: false };
    let disk = dir.join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    config.disks = vec![DiskConfig {
        path: disk,
        read_only: false,
    }];
    // A network namespace of this process's own (root only): its TAP
    // goes away with the process.
    // SAFETY: unshare on this single-threaded process, before any thread.
    let netns = unsafe { libc::geteuid() == 0 && libc::unshare(libc::CLONE_NEWNET) == 0 };
    if netns {
        config.nets = vec![NetConfig {
            tap: "ember-soak0".into(),
            mac: None,
        }];
    } else {
        println!("soak: not root (or no network namespace): VMs get no TAP");
    }
    let cycle = |config: &VmConfig| {
        let mut vm = Vm::start(config).expect("start a VM");
        assert_eq!(vm.wait(), VmExit::Reboot, "{}", vm.console().transcript());
    };
    // The first VM sets up what lives as long as the process (the reaper,
    // the kick handler, the log pump).
    cycle(&config);
    ember::reaper::wait_idle();
    let (fds, threads, rss) = (count("/proc/self/fd"), count("/proc/self/task"), rss_kib());
    let start = Instant::now();
    for _ in 0..n {
        cycle(&config);
    }
    let took = start.elapsed();
    ember::reaper::wait_idle();
    let (fds_after, threads_after, rss_after) =
        (count("/proc/self/fd"), count("/proc/self/task"), rss_kib());
    println!(
        "soak  {n} VMs (1 vCPU, 8M, a disk{}) created, booted to their reset and dropped in {:.2} s = {:.0} VMs/s; fds {fds} -> {fds_after}, threads {threads} -> {threads_after}, RSS {rss} -> {rss_after} KiB",
        if netns { ", a TAP" } else { "" },
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
    );
    let _ = std::fs::remove_dir_all(&dir);
    if fds_after > fds || threads_after > threads || rss_after > rss + 1024 {
        eprintln!(
            "soak: LEAK: descriptors, threads or RSS (+1 MiB) did not return to their baseline"
        );
        std::process::exit(1);
    }
}
