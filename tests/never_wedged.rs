//! No pipe and no guest can stall Ember: with stdin an idle pipe (a script
//! that writes only after it sees a prompt), the guest's end, a signal and
//! late input are all served at once. Tiny guests, the real `ember` binary.

mod common;

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Far above what any of these takes (milliseconds), far below how long
/// the idle pipe stays open: a wedged Ember fails instead of passing late.
const LIMIT: Duration = Duration::from_secs(20);

/// Starts `ember run --kernel KERNEL` with stdin a pipe this test holds
/// open and never writes unless it says so.
fn spawn_with_idle_pipe(kernel: &std::path::Path) -> (Child, ChildStdin) {
    let mut child = Command::new(ember_bin())
        .args(["run", "--memory", "64M", "--kernel"])
        .arg(kernel)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ember");
    let stdin = child.stdin.take().unwrap();
    (child, stdin)
}

/// Waits for the child to exit within LIMIT; returns its code and how long
/// it took from `since`.
fn exit_within(child: &mut Child, since: Instant) -> (Option<i32>, Duration) {
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status.code(), since.elapsed());
        }
        if since.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("ember still running {LIMIT:?} after the guest ended; stderr: {err}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn read_ready(child: &mut Child) {
    let mut ready = [0u8; 6];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut ready)
        .unwrap();
    assert_eq!(&ready, b"ready\n");
}

/// Boots rx_then.S in mode `then` with an idle pipe on stdin and checks
/// that Ember exits with `code` (the guest ends at once).
fn guest_end_with_idle_pipe(test: &str, then: u32, code: i32) {
    let elf = tiny_guest_with(test, "rx_then.S", &format!(".set THEN, {then}"));
    let start = Instant::now();
    let (mut child, _idle) = spawn_with_idle_pipe(&elf);
    let (got, took) = exit_within(&mut child, start);
    assert_eq!(got, Some(code), "after {took:?}");
}

#[test]
#[ignore = "needs /dev/kvm; make test runs it"]
fn idle_pipe_uart_read_then_reset_exits_0_at_once() {
    require_kvm();
    guest_end_with_idle_pipe("rx_reset", 0, 0);
}

#[test]
#[ignore = "needs /dev/kvm; make test runs it"]
fn idle_pipe_triple_fault_exits_3() {
    require_kvm();
    guest_end_with_idle_pipe("rx_triple", 1, 3);
}

#[test]
#[ignore = "needs /dev/kvm; make test runs it"]
fn idle_pipe_sigterm_exits_143() {
    require_kvm();
    // The guest drains the FIFO once, then sleeps in KVM forever.
    let elf = tiny_guest_with("rx_sigterm", "rx_then.S", ".set THEN, 2");
    let (mut child, _idle) = spawn_with_idle_pipe(&elf);
    read_ready(&mut child);
    let sent = Instant::now();
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let (code, took) = exit_within(&mut child, sent);
    assert_eq!(code, Some(143), "after {took:?}");
    eprintln!("SIGTERM -> exit: {took:?}");
}

#[test]
#[ignore = "needs /dev/kvm; make test runs it"]
fn input_written_after_two_seconds_still_reaches_the_guest() {
    require_kvm();
    let elf = tiny_guest("rx_late", "echo.S");
    let (mut child, mut stdin) = spawn_with_idle_pipe(&elf);
    read_ready(&mut child);
    std::thread::sleep(Duration::from_secs(2));
    stdin.write_all(b"late\n").unwrap();
    let start = Instant::now();
    let (code, _) = exit_within(&mut child, start);
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(out, "LATE\nbye\n");
    assert_eq!(code, Some(0));
}

#[test]
#[ignore = "needs /dev/kvm; make test runs it"]
fn the_first_platform_event_is_the_exit_reason_every_time() {
    require_kvm();
    let elf = tiny_guest("panic_race", "panic_reset_triple.S");
    for run in 0..20 {
        let out = run_ember(&["--kernel", elf.to_str().unwrap()], LIMIT);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "run {run}: {err}");
        assert!(err.contains("guest kernel panic"), "run {run}: {err}");
    }
}

#[test]
#[ignore = "needs /dev/kvm; make test runs it"]
fn stdin_keeps_its_blocking_mode_for_the_parent() {
    require_kvm();
    let mut fds = [0; 2];
    // SAFETY: fds has room for two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let elf = tiny_guest_with("rx_flags", "rx_then.S", ".set THEN, 0");
    // SAFETY: fds[0] is a fresh descriptor handed to the child as stdin.
    let stdin = unsafe { <Stdio as std::os::fd::FromRawFd>::from_raw_fd(libc::dup(fds[0])) };
    let out = run_ember_with_stdin(&["--kernel", elf.to_str().unwrap()], stdin, LIMIT);
    assert_eq!(out.status.code(), Some(0));
    // SAFETY: F_GETFL only reads the shared description's flags.
    let flags = unsafe { libc::fcntl(fds[0], libc::F_GETFL) };
    assert_eq!(
        flags & libc::O_NONBLOCK,
        0,
        "Ember left O_NONBLOCK on the parent's pipe"
    );
    // SAFETY: closing the pipe made above.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
}
