//! Crash consistency with a real Linux guest (tier 3), through the CLI:
//! what the guest flushed is in the host file after `ember` is SIGKILLed,
//! and what it wrote without a flush is there after a SIGTERM (Ember syncs
//! every disk on its way out). One boot: the kit is snapshotted at its
//! prompt (its disk copied while paused), the first case runs on the
//! booted VM, the second on a restore of the snapshot.
//!
//! What this can see: the records reached Ember's host file before the
//! kill. A host power loss is beyond a test; Ember's fdatasync on FLUSH and
//! at exit is what covers it (devices/src/virtio/block.rs).

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::kit::{kit, BootSlot, BOOT, COMMAND};
use common::*;

/// A running `ember` with its stdout gathered by a thread.
struct Ember {
    child: Child,
    stdin: ChildStdin,
    out: Arc<Mutex<Vec<u8>>>,
}

impl Ember {
    fn spawn(args: &[&std::ffi::OsStr]) -> Self {
        let mut child = Command::new(ember_bin())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Self { child, stdin, out }
    }

    /// Waits until the output holds `needle`.
    fn wait_for(&self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let text = String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned();
            if text.contains(needle) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{needle:?} not seen in {limit:?}; last output:\n{}",
                &text[text.len().saturating_sub(2000)..]
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn send(&mut self, line: &str) {
        self.stdin.write_all(line.as_bytes()).unwrap();
        self.stdin.write_all(b"\n").unwrap();
        self.stdin.flush().unwrap();
    }

    fn signal(&mut self, sig: i32) -> Option<i32> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
        let status = self.child.wait().unwrap();
        std::os::unix::process::ExitStatusExt::signal(&status).or(status.code())
    }
}

fn api(sock: &Path, args: &[&str]) {
    let out = Command::new(ember_bin())
        .args(args)
        .arg("--api-sock")
        .arg(sock)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ember {args:?}: {}",
        text(&out.stderr)
    );
}

/// The host file starts with the lines `first..=last`, as seq prints them.
fn assert_records(disk: &Path, first: u32, last: u32) {
    let want: String = (first..=last).map(|i| format!("{i}\n")).collect();
    let got = std::fs::read(disk).unwrap();
    assert!(
        got.starts_with(want.as_bytes()),
        "{}: records {first}..={last} missing; the file starts with {:?}",
        disk.display(),
        String::from_utf8_lossy(&got[..want.len().min(got.len()).min(200)])
    );
}

#[test]
#[ignore = "needs /dev/kvm and the guest kit; make test runs it"]
fn flushed_writes_survive_sigkill_and_unflushed_ones_sigterm() {
    require_kvm();
    let (kernel, initrd) = kit();
    let dir = scratch("linux_crash");
    let disk = dir.join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let sock = dir.join("api.sock");
    let slot = BootSlot::acquire();
    let os = |s: &str| std::ffi::OsString::from(s);
    let mut vm = Ember::spawn(&[
        &os("run"),
        &os("--kernel"),
        kernel.as_os_str(),
        &os("--initrd"),
        initrd.as_os_str(),
        &os("--disk"),
        disk.as_os_str(),
        &os("--api-sock"),
        sock.as_os_str(),
    ]);
    vm.wait_for("ember:/# ", BOOT);
    drop(slot);

    // The restore's disk: a copy taken while the guest is paused, so it
    // matches the snapshot.
    api(&sock, &["pause"]);
    let (state, mem, disk2) = (dir.join("state"), dir.join("mem"), dir.join("disk2.img"));
    api(
        &sock,
        &["snapshot", state.to_str().unwrap(), mem.to_str().unwrap()],
    );
    std::fs::copy(&disk, &disk2).unwrap();
    api(&sock, &["resume"]);

    // Flushed (conv=fsync: a FLUSH reaches the device), then SIGKILL.
    vm.send(
        "seq 1 5000 | dd of=/dev/vda bs=4096 iflag=fullblock conv=sync,fsync 2>/dev/null; \
         echo FLUSHED-$((40+2))",
    );
    vm.wait_for("FLUSHED-42", COMMAND);
    assert_eq!(vm.signal(libc::SIGKILL), Some(libc::SIGKILL));
    assert_records(&disk, 1, 5000);

    // Written with O_DIRECT (on the device, no FLUSH), then SIGTERM.
    let mut restored = Ember::spawn(&[
        &os("restore"),
        state.as_os_str(),
        mem.as_os_str(),
        &os("--disk"),
        disk2.as_os_str(),
    ]);
    restored.send(
        "seq 5001 9000 | dd of=/dev/vda bs=4096 iflag=fullblock oflag=direct conv=sync \
         2>/dev/null; echo WROTE-$((40+2))",
    );
    restored.wait_for("WROTE-42", COMMAND);
    assert_eq!(restored.signal(libc::SIGTERM), Some(128 + libc::SIGTERM));
    assert_records(&disk2, 5001, 9000);
}
