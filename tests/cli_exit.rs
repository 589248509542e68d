//! `ember run`'s exit does not wait for the host kernel's VM teardown: a
//! holder process closes the VM after Ember has exited (src/reaper.rs).
//! This test binary makes itself the child subreaper, so the holder, once
//! orphaned, becomes its child and can be seen and reaped: it must exist,
//! hold none of Ember's output, and end on its own.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const LIMIT: Duration = Duration::from_secs(20);

/// Every child this process can still reap (`waitpid(-1)`), waiting up to
/// `limit` for each: (pid, raw status).
fn reap_orphans(limit: Duration) -> Vec<(i32, i32)> {
    let mut reaped = Vec::new();
    let start = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: waits for any child of this process; writes one int.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        match pid {
            0 if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(1)),
            0 => panic!("a child still running {limit:?} after ember's exit"),
            -1 => return reaped,
            pid => reaped.push((pid, status)),
        }
    }
}

#[test]
#[ignore = "needs /dev/kvm; make test runs it"]
fn vm_close_happens_in_a_holder_that_ends_by_itself_after_ember() {
    require_kvm();
    // SAFETY: prctl on this process only.
    assert_eq!(
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
        0
    );
    // Prints "ready" and resets at once.
    let elf = tiny_guest_with("cli_exit", "rx_then.S", ".set THEN, 0");
    let mut ember = Command::new(ember_bin())
        .args(["run", "--memory", "64M", "--kernel"])
        .arg(&elf)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ember");
    let ember_pid = ember.id() as i32;
    // Reading to EOF ends only when every holder of the pipe closed it.
    let mut out = Vec::new();
    ember.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    let mut err = String::new();
    ember
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(text(&out), "ready\n", "stderr: {err}");
    let status = ember.wait().unwrap();
    assert_eq!(status.code(), Some(0), "stderr: {err}");

    let orphans = reap_orphans(LIMIT);
    assert!(
        orphans.iter().all(|&(pid, _)| pid != ember_pid),
        "ember reaped twice: {orphans:?}"
    );
    assert_eq!(
        orphans.len(),
        1,
        "one holder process expected after ember's exit, got {orphans:?}"
    );
    let (_, holder_status) = orphans[0];
    assert!(
        libc::WIFEXITED(holder_status) && libc::WEXITSTATUS(holder_status) == 0,
        "holder ended with raw status {holder_status:#x}"
    );
}
