//! Snapshots of a tiny guest through the library: a paused guest that
//! counts in a register and in memory is snapshotted, restored (twice at
//! once, and paused), and goes on counting from exactly where it was; bad
//! snapshot files are refused with an error that names them.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use ember::{
    ConsoleMode, RestoreConfig, RunState, SnapshotError, StopReason, Vm, VmConfig, VmExit,
};

const LIMIT: Duration = Duration::from_secs(30);
/// The guest prints every this many turns.
const STEP: u64 = 0x400;

/// The (register, memory) counts of every complete line printed so far.
fn counts(vm: &Vm) -> Vec<(u64, u64)> {
    let text = vm.console().transcript();
    text.lines()
        .filter_map(|l| {
            let (n, m) = l.strip_prefix("n=")?.split_once(" m=")?;
            Some((
                u64::from_str_radix(n, 16).ok()?,
                u64::from_str_radix(m.get(..16)?, 16).ok()?,
            ))
        })
        .collect()
}

fn wait_for_lines(vm: &Vm, n: usize) -> Vec<(u64, u64)> {
    let deadline = Instant::now() + LIMIT;
    loop {
        let c = counts(vm);
        if c.len() >= n {
            return c;
        }
        assert!(Instant::now() < deadline, "{} lines in {LIMIT:?}", c.len());
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn restore_config(dir: &Path, resume: bool) -> RestoreConfig {
    let mut c = RestoreConfig::new(dir.join("state"), dir.join("mem"));
    c.console = ConsoleMode::Scripted { echo: false };
    c.resume = resume;
    c
}

/// Boots the counter, lets it print, pauses and snapshots it; returns the
/// last count printed before the snapshot.
fn snapshot_a_counter(test: &str, dir: &Path) -> u64 {
    let elf = tiny_guest(test, "counter.S");
    let mut config = VmConfig::new(&elf);
    config.memory = 32 << 20;
    // The second vCPU waits for a SIPI inside KVM: its state must come
    // back as "waiting", not as a running CPU.
    config.cpus = 2;
    config.console = ConsoleMode::Scripted { echo: false };
    let mut vm = Vm::start(&config).unwrap();
    wait_for_lines(&vm, 3);
    assert!(matches!(
        vm.snapshot(dir.join("state"), dir.join("mem")),
        Err(SnapshotError::NotPaused)
    ));
    vm.pause().unwrap();
    // Output the guest wrote before the pause is in the transcript once
    // the vCPUs are parked (COM1 writes are synchronous).
    let before = counts(&vm);
    let info = vm.snapshot(dir.join("state"), dir.join("mem")).unwrap();
    assert_eq!(info.memory_bytes, 32 << 20);
    assert!(info.state_bytes > 0);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(counts(&vm), before, "the snapshot left the VM paused");
    assert_eq!(vm.stop(), VmExit::Stopped(StopReason::Requested));
    let &(n, m) = before.last().unwrap();
    assert_eq!(n, m);
    n
}

#[test]
#[ignore = "needs /dev/kvm; make test runs it"]
fn a_restored_guest_counts_on_from_where_it_was_and_clones_are_independent() {
    require_kvm();
    let dir = scratch("snapshot_restore");
    let last = snapshot_a_counter("snapshot_restore_guest", &dir);

    // Two restores of one snapshot, at once, in one process.
    let mut a = Vm::restore(&restore_config(&dir, true)).unwrap();
    let mut b = Vm::restore(&restore_config(&dir, true)).unwrap();
    for vm in [&a, &b] {
        let first = wait_for_lines(vm, 2);
        assert_eq!(
            first[0],
            (last + STEP, last + STEP),
            "the register and the memory count go on from the snapshot"
        );
        assert_eq!(first[1].0, last + 2 * STEP);
        assert!(!vm.console().transcript().contains("ready"), "no reboot");
    }
    // Input reaches one clone only: it resets, the other counts on.
    a.console().send_bytes(b"q").unwrap();
    assert_eq!(a.wait(), VmExit::Reboot);
    let seen = counts(&b).len();
    wait_for_lines(&b, seen + 2);
    assert_eq!(b.stop(), VmExit::Stopped(StopReason::Requested));

    // Restored paused: nothing runs until it is resumed.
    let mut c = Vm::restore(&restore_config(&dir, false)).unwrap();
    assert_eq!(c.run_state(), Some(RunState::Paused));
    std::thread::sleep(Duration::from_millis(300));
    assert!(counts(&c).is_empty(), "a paused restore ran the guest");
    c.resume().unwrap();
    assert_eq!(wait_for_lines(&c, 1)[0].0, last + STEP);
    // A restored VM can be snapshotted again, and that one restored.
    c.pause().unwrap();
    let again = scratch("snapshot_again");
    c.snapshot(again.join("state"), again.join("mem")).unwrap();
    let resumed_at = counts(&c).last().unwrap().0;
    c.stop();
    let d = Vm::restore(&restore_config(&again, true)).unwrap();
    assert_eq!(wait_for_lines(&d, 1)[0].0, resumed_at + STEP);
}

fn restore_error(dir: &Path) -> ember::Error {
    match Vm::restore(&restore_config(dir, true)) {
        Ok(_) => panic!("a bad snapshot in {} was restored", dir.display()),
        Err(e) => e,
    }
}

fn copy_snapshot(from: &Path, test: &str) -> PathBuf {
    let to = scratch(test);
    std::fs::copy(from.join("state"), to.join("state")).unwrap();
    std::fs::copy(from.join("mem"), to.join("mem")).unwrap();
    to
}

#[test]
#[ignore = "needs /dev/kvm; make test runs it"]
fn bad_snapshot_files_are_refused_and_named() {
    require_kvm();
    let dir = scratch("snapshot_bad");
    snapshot_a_counter("snapshot_bad_guest", &dir);
    let state = std::fs::read(dir.join("state")).unwrap();

    let corrupt = copy_snapshot(&dir, "snapshot_corrupt");
    let mut bytes = state.clone();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(corrupt.join("state"), &bytes).unwrap();
    let truncated = copy_snapshot(&dir, "snapshot_truncated");
    std::fs::write(truncated.join("state"), &state[..state.len() / 2]).unwrap();
    let short_mem = copy_snapshot(&dir, "snapshot_short_mem");
    std::fs::File::options()
        .write(true)
        .open(short_mem.join("mem"))
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let other = scratch("snapshot_other");
    snapshot_a_counter("snapshot_other_guest", &other);
    let foreign = copy_snapshot(&dir, "snapshot_foreign");
    std::fs::copy(other.join("mem"), foreign.join("mem")).unwrap();
    let swapped = copy_snapshot(&dir, "snapshot_swapped");
    std::fs::rename(swapped.join("mem"), swapped.join("tmp")).unwrap();
    std::fs::rename(swapped.join("state"), swapped.join("mem")).unwrap();
    std::fs::rename(swapped.join("tmp"), swapped.join("state")).unwrap();

    for (case, want) in [
        (&corrupt, "corrupted snapshot (checksum"),
        (&truncated, "truncated or damaged"),
        (
            &short_mem,
            "16777216 bytes; the snapshot's guest has 33554432 bytes of RAM",
        ),
        (&swapped, "not an Ember snapshot"),
        (&foreign, "not the memory file of this snapshot"),
    ] {
        let e = restore_error(case);
        let text = error_chain(&e);
        assert!(e.is_usage(), "{text}");
        assert!(text.contains(want), "{}: {text}", case.display());
        assert!(
            text.contains(&case.display().to_string()),
            "names the file: {text}"
        );
    }
}
