//! KVM tests with tiny guests assembled here: each boots through Ember's
//! real path (ELF or bzImage loader, zero page, long-mode entry) and runs a
//! few hundred instructions, so it takes milliseconds even when emulated.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use ember::{ConsoleMode, CrashKind, Vm, VmConfig, VmExit};

const PRELUDE: &str = include_str!("guests/prelude.S");
const LIMIT: Duration = Duration::from_secs(60);

fn guest(test: &str, file: &str) -> std::path::PathBuf {
    tiny_guest(test, file)
}

#[test]
#[ignore = "needs /dev/kvm; make test runs it"]
fn serial_output_reaches_stdout_and_i8042_reset_exits_0() {
    require_kvm();
    let elf = guest("hello", "hello.S");
    let out = run_ember(&["--kernel", elf.to_str().unwrap()], LIMIT);
    assert_eq!(text(&out.stdout), "Hello from a tiny guest\n");
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
}

#[test]
#[ignore = "needs /dev/kvm; make test runs it"]
fn bzimage_64bit_entry_works() {
    require_kvm();
    let dir = scratch("bzimage");
    let body = format!(
        "{PRELUDE}\n        .text\n        .globl _start\n        .org 0x200\n{}",
        std::fs::read_to_string(format!(
            "{}/tests/guests/hello.S",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
        .replace("        .text\n        .globl _start\n", "")
    );
    let img = build_bzimage_guest(&dir, "hello", &body);
    let out = run_ember(&["--kernel", img.to_str().unwrap()], LIMIT);
    assert_eq!(
        text(&out.stdout),
        "Hello from a tiny guest\n",
        "stderr: {}",
        text(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0));
}

#[test]
#[ignore = "needs /dev/kvm; make test runs it"]
fn triple_fault_is_a_crash_with_exit_3_and_a_diagnosis() {
    require_kvm();
    let elf = guest("triple", "triple_fault.S");
    let out = run_ember(&["--kernel", elf.to_str().unwrap()], LIMIT);
    assert_eq!(text(&out.stdout), "about to triple fault\n");
    assert_eq!(out.status.code(), Some(3));
    let err = text(&out.stderr);
    assert!(err.contains("guest crashed"), "{err}");
    assert!(err.contains("on vCPU 0 at RIP 0x"), "{err}");
}

#[test]
#[ignore = "needs /dev/kvm; make test runs it"]
fn an_instruction_the_host_cannot_run_is_a_crash_naming_rip_and_bytes() {
    require_kvm();
    let elf = guest("ud2", "bad_instruction.S");
    let out = run_ember(&["--kernel", elf.to_str().unwrap()], LIMIT);
    assert_eq!(out.status.code(), Some(3));
    let err = text(&out.stderr);
    // Emulation failure names the bytes (cc = int3); on hardware the #BP
    // becomes a triple fault at the same RIP.
    assert!(err.contains("at RIP 0x200000"), "{err}");
    if ember::platform::Host::detect().is_emulating() {
        assert!(err.contains("KVM emulation failure"), "{err}");
        assert!(err.contains("instruction bytes: cc"), "{err}");
    }
}

#[test]
#[ignore = "needs /dev/kvm; make test runs it"]
fn all_vcpus_run() {
    require_kvm();
    let dir = scratch("smp");
    let body =
        std::fs::read_to_string(format!("{}/tests/guests/smp.S", env!("CARGO_MANIFEST_DIR")))
            .unwrap();
    let elf = build_elf_guest(
        &dir,
        "smp",
        &format!("{PRELUDE}\n        .set NCPUS, 4\n{body}"),
    );
    let out = run_ember(&["--kernel", elf.to_str().unwrap(), "--cpus", "4"], LIMIT);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("ALL UP"),
        "{stdout}\nstderr: {}",
        text(&out.stderr)
    );
    for id in ['1', '2', '3'] {
        assert!(stdout.contains(id), "APIC ID {id} missing: {stdout}");
    }
    assert_eq!(out.status.code(), Some(0));
}

fn e820_lines(stdout: &str) -> Vec<(u64, u64, u64)> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("E820 "))
        .map(|l| {
            let v: Vec<u64> = l
                .split(' ')
                .map(|h| u64::from_str_radix(h, 16).unwrap())
                .collect();
            (v[0], v[1], v[2])
        })
        .collect()
}

#[test]
#[ignore = "needs /dev/kvm; make test runs it"]
fn guest_reads_back_cmdline_and_e820_from_boot_params() {
    require_kvm();
    let elf = guest("bootparams", "bootparams.S");
    let out = run_ember(
        &[
            "--kernel",
            elf.to_str().unwrap(),
            "--memory",
            "4G",
            "--cmdline",
            "console=ttyS0 hello=world",
        ],
        LIMIT,
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    let cmdline = stdout
        .lines()
        .find_map(|l| l.strip_prefix("CMDLINE "))
        .unwrap();
    assert!(
        cmdline.starts_with("console=ttyS0 hello=world reboot=k panic=-1 pci=off"),
        "{cmdline}"
    );
    let gap_start = ember::layout::MMIO_GAP_START;
    assert_eq!(
        e820_lines(&stdout),
        vec![
            (0, 0x9fc00, 1),
            (0xe0000, 0x20000, 2),
            (0x100000, gap_start - 0x100000, 1),
            (1 << 32, (4 << 30) - gap_start, 1),
        ]
    );
    assert!(stdout.ends_with("END\n"));
}

#[test]
#[ignore = "needs /dev/kvm; make test runs it"]
fn piped_input_reaches_the_guest() {
    require_kvm();
    let elf = guest("echo_pipe", "echo.S");
    let mut child = Command::new(ember_bin())
        .args(["run", "--kernel", elf.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Written before the guest reads: it waits in the pipe, not in Ember.
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello, ember\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        text(&out.stdout),
        "ready\nHELLO, EMBER\nbye\n",
        "{}",
        text(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0));
}

#[test]
#[ignore = "needs /dev/kvm; make test runs it"]
fn library_console_scripts_the_guest() {
    require_kvm();
    let elf = guest("echo_lib", "echo.S");
    let mut config = VmConfig::new(elf);
    config.console = ConsoleMode::Scripted { echo: false };
    let mut vm = Vm::start(&config).unwrap();
    let console = vm.console();
    console.wait_for("ready", LIMIT).unwrap();
    // Longer than the 64-byte FIFO: it must arrive whole, in order.
    let line = "the quick brown fox jumps over the lazy dog ".repeat(4);
    console.send_line(&line).unwrap();
    let got = console.wait_for(r"bye", LIMIT).unwrap();
    assert_eq!(got[0], "bye");
    assert!(console.transcript().contains(&line.to_uppercase()));
    assert_eq!(vm.wait(), VmExit::Reboot);
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
#[ignore = "needs /dev/kvm; make test runs it"]
fn a_100mb_stdin_flood_does_not_grow_memory_and_sigterm_exits_143() {
    require_kvm();
    let elf = guest("flood", "idle.S");
    let mut child = Command::new(ember_bin())
        .args(["run", "--kernel", elf.to_str().unwrap(), "--memory", "16M"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut ready = [0u8; 6];
    std::io::Read::read_exact(&mut stdout, &mut ready).unwrap();
    assert_eq!(&ready, b"ready\n");
    let before = rss_kib(child.id());
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'z'; 1 << 20];
        let mut written = 0usize;
        for _ in 0..100 {
            match stdin.write_all(&chunk) {
                Ok(()) => written += chunk.len(),
                Err(_) => break,
            }
        }
        written
    });
    std::thread::sleep(Duration::from_secs(2));
    let after = rss_kib(child.id());
    assert!(
        after < before + 4096,
        "RSS grew from {before} KiB to {after} KiB"
    );
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let start = Instant::now();
    let status = child.wait().unwrap();
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_eq!(status.code(), Some(143));
    let written = writer.join().unwrap();
    assert!(
        written < 100 << 20,
        "Ember must not swallow the flood: {written}"
    );
}

#[test]
#[ignore = "needs /dev/kvm; make test runs it"]
fn stop_ends_a_running_vm_and_wait_returns_the_reason() {
    require_kvm();
    let elf = guest("stop", "idle.S");
    let mut config = VmConfig::new(elf);
    config.console = ConsoleMode::Scripted { echo: false };
    let mut vm = Vm::start(&config).unwrap();
    vm.console().wait_for("ready", LIMIT).unwrap();
    assert_eq!(vm.wait_timeout(Some(Duration::from_millis(50))), None);
    assert_eq!(vm.stop(), VmExit::Stopped(ember::StopReason::Requested));
    assert_eq!(vm.wait(), VmExit::Stopped(ember::StopReason::Requested));
    let e = vm.console().wait_for("never", LIMIT).unwrap_err();
    assert!(matches!(e, ember::ConsoleError::VmEnded { .. }));
}

#[test]
#[ignore = "needs /dev/kvm; make test runs it"]
fn library_reports_a_triple_fault_as_a_crash() {
    require_kvm();
    let elf = guest("triple_lib", "triple_fault.S");
    let mut config = VmConfig::new(elf);
    config.console = ConsoleMode::Scripted { echo: false };
    let mut vm = Vm::start(&config).unwrap();
    match vm.wait() {
        VmExit::Crash(c) => {
            assert_eq!(c.kind, CrashKind::TripleFault);
            assert_eq!(c.cpu, Some(0));
            assert!(c.rip.is_some());
        }
        other => panic!("expected a crash, got {other}"),
    }
}

#[test]
#[ignore = "needs /dev/kvm; make test runs it"]
fn a_busy_tap_is_a_startup_error_naming_the_interface() {
    require_kvm();
    let ns = common::netns::Netns::new("busy");
    ns.enter();
    let elf = guest("busy_tap", "idle.S");
    let mut config = VmConfig::new(elf);
    config.console = ConsoleMode::Scripted { echo: false };
    config.nets = vec![ember::NetConfig {
        tap: common::netns::TAP.into(),
        mac: None,
    }];
    let first = Vm::start(&config).unwrap();
    let err = Vm::start(&config).err().expect("the TAP is taken");
    assert!(err.is_usage(), "{err}");
    let msg = error_chain(&err);
    assert!(msg.contains("tap=embtap0") && msg.contains("busy"), "{msg}");
    drop(first);
    // Released with the first VM: attachable again.
    drop(Vm::start(&config).unwrap());
}

#[test]
#[ignore = "needs /dev/kvm; make test runs it"]
fn console_waiters_learn_of_the_vm_end_at_once() {
    require_kvm();
    // pvpanic, then reset, then a triple fault: the VM ends at the first.
    let elf = guest("end_wakes", "panic_reset_triple.S");
    let mut config = VmConfig::new(elf);
    config.console = ConsoleMode::Scripted { echo: false };
    let mut vm = Vm::start(&config).unwrap();
    // Nobody calls wait(): the end alone must wake this waiter, which
    // would otherwise sit out its whole timeout.
    let e = vm
        .console()
        .wait_for("never printed", Duration::from_secs(120))
        .unwrap_err();
    assert!(matches!(e, ember::ConsoleError::VmEnded { .. }), "{e}");
    assert!(matches!(
        vm.wait(),
        VmExit::Crash(ember::Crash {
            kind: CrashKind::GuestPanic,
            ..
        })
    ));
}

#[test]
#[ignore = "needs /dev/kvm; make test runs it"]
fn a_pit_on_request_still_boots_and_ends_cleanly() {
    require_kvm();
    let elf = guest("hello_pit", "hello.S");
    let out = run_ember(&["--kernel", elf.to_str().unwrap(), "--pit"], LIMIT);
    assert_eq!(text(&out.stdout), "Hello from a tiny guest\n");
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
}
