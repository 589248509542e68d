//! Seccomp: each kind of Ember thread runs under a filter of its own, and a
//! thread that makes a call outside it ends the process with one line that
//! names the thread and the call. The test hook EMBER_SECCOMP_PROBE=<kind>
//! makes that thread call socket(2) right after installing its filter.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const LIMIT: Duration = Duration::from_secs(30);

/// Runs `ember run` on an idle guest with every kind of thread (a disk,
/// the API, the console on stdout) and the probe for `kind`; returns the
/// exit code and stderr.
fn run_with_probe(kind: &str, seccomp: &str, limit: Duration) -> (Option<i32>, String) {
    let dir = scratch(&format!("seccomp_{kind}_{seccomp}"));
    let elf = tiny_guest(&format!("seccomp_{kind}_{seccomp}_guest"), "idle.S");
    let disk = dir.join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let mut child = Command::new(ember_bin())
        .args(["run", "--memory", "16M", "--seccomp", seccomp, "--kernel"])
        .arg(&elf)
        .arg("--disk")
        .arg(&disk)
        .arg("--api-sock")
        .arg(dir.join("api.sock"))
        .env("EMBER_SECCOMP_PROBE", kind)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            return (status.code(), text(&out.stderr));
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            return (None, text(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
#[ignore = "needs /dev/kvm; make test runs it"]
fn each_thread_kind_that_breaks_its_filter_ends_the_process_naming_itself() {
    require_kvm();
    for (kind, label) in [
        ("vcpu", "vCPU"),
        ("events", "event loop"),
        ("disk", "disk I/O"),
        ("console", "console output"),
        ("api", "API"),
        ("main", "main"),
    ] {
        let (code, stderr) = run_with_probe(kind, "on", LIMIT);
        assert_eq!(code, Some(1), "{kind}: {stderr}");
        let want =
            format!("ember: seccomp: the {label} thread made a forbidden system call: socket (41)");
        assert!(stderr.contains(&want), "{kind}: {stderr}");
    }
}

#[test]
#[ignore = "needs /dev/kvm; make test runs it"]
fn without_filters_the_probe_is_harmless() {
    require_kvm();
    // The guest idles until killed: no filter, so no probe either, and
    // Ember runs on until the limit ends it.
    let (code, stderr) = run_with_probe("vcpu", "off", Duration::from_secs(2));
    assert_eq!(code, None, "{stderr}");
    assert!(!stderr.contains("seccomp:"), "{stderr}");
}

/// With EMBER_SECCOMP_CHILD set (by the test below, in a child process),
/// the reaper thread's probe ends this process; otherwise this checks that
/// a VM's teardown completes on a filtered reaper thread.
#[test]
#[ignore = "needs /dev/kvm; make test runs it"]
fn a_filtered_reaper_closes_a_vm() {
    require_kvm();
    let elf = tiny_guest(&format!("seccomp_reaper_{}", std::process::id()), "hello.S");
    let mut config = ember::VmConfig::new(&elf);
    config.memory = 16 << 20;
    config.console = ember::ConsoleMode::Scripted { echo: false };
    let mut vm = ember::Vm::start(&config).unwrap();
    assert_eq!(vm.wait(), ember::VmExit::Reboot);
    drop(vm);
    ember::reaper::wait_idle();
    assert_eq!(ember::reaper::pending(), 0);
    assert!(
        std::env::var_os("EMBER_SECCOMP_CHILD").is_none(),
        "the reaper's probe did not end the process"
    );
}

#[test]
#[ignore = "needs /dev/kvm; make test runs it"]
fn a_reaper_thread_that_breaks_its_filter_ends_the_process() {
    require_kvm();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_filtered_reaper_closes_a_vm",
            "--include-ignored",
        ])
        .env("EMBER_SECCOMP_CHILD", "1")
        .env("EMBER_SECCOMP_PROBE", "reaper")
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "ember: seccomp: the reaper thread made a forbidden system call: socket (41)"
        ),
        "{stderr}"
    );
}

#[test]
#[ignore = "needs /dev/kvm; make test runs it"]
fn a_stopped_and_continued_vmm_runs_on() {
    require_kvm();
    // SIGSTOP/SIGCONT makes the kernel resume interrupted waits through
    // restart_syscall, on every thread that was blocked.
    let dir = scratch("seccomp_stop_cont");
    let elf = tiny_guest("seccomp_stop_cont_guest", "idle.S");
    let sock = dir.join("api.sock");
    let mut child = Command::new(ember_bin())
        .args(["run", "--memory", "16M", "--kernel"])
        .arg(&elf)
        .arg("--api-sock")
        .arg(&sock)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + LIMIT;
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < deadline, "no API socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = child.id() as i32;
    for _ in 0..3 {
        // SAFETY: signals to our own child.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        std::thread::sleep(Duration::from_millis(100));
        unsafe { libc::kill(pid, libc::SIGCONT) };
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "ember ended after SIGSTOP/SIGCONT"
    );
    let stop = Command::new(ember_bin())
        .args(["stop", "--api-sock"])
        .arg(&sock)
        .output()
        .unwrap();
    assert!(stop.status.success(), "{}", text(&stop.stderr));
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}
