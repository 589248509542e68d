//! Full Linux boots of the guest kit (tier 3). About a minute each on an
//! emulating host, so each boot carries many checks. Needs `make guest`.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::kvm_available;
use ember::{Console, ConsoleMode, Vm, VmConfig, VmExit};

/// Generous: a boot takes ~1 minute on an emulating host, ~1 s on hardware,
/// and the two boots of this file run side by side on 2 cores.
const BOOT: Duration = Duration::from_secs(600);
const COMMAND: Duration = Duration::from_secs(120);
const PROMPT: &str = r"ember:[^\n]*# (?:\x1b\[6n)?$";

fn kit() -> Option<(PathBuf, PathBuf)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/guest");
    let (kernel, initrd) = (dir.join("vmlinux"), dir.join("initramfs.cpio.gz"));
    if kernel.exists() && initrd.exists() {
        return Some((kernel, initrd));
    }
    if std::env::var("EMBER_REQUIRE_KVM").as_deref() == Ok("1") {
        panic!("the guest kit is not built: run `make guest`");
    }
    eprintln!("SKIPPED: the guest kit is not built (make guest)");
    None
}

fn boot(cpus: u8, memory: u64, cmdline: &str) -> Option<(Vm, Console)> {
    let (kernel, initrd) = kit()?;
    let mut config = VmConfig::new(kernel);
    config.initrd = Some(initrd);
    config.cpus = cpus;
    config.memory = memory;
    config.cmdline = cmdline.to_string();
    config.console = ConsoleMode::Scripted {
        echo: std::env::var_os("EMBER_TEST_ECHO").is_some(),
    };
    let vm = Vm::start(&config).expect("start the kit VM");
    let console = vm.console();
    Some((vm, console))
}

/// Runs `cmd` at the prompt and returns what it printed.
fn run(console: &Console, cmd: &str) -> String {
    console.send_line(cmd).unwrap();
    let m = console
        .wait_for(
            &format!(r"(?s){}\r?\n(.*?)\r?\n?{PROMPT}", regex_escape(cmd)),
            COMMAND,
        )
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    m[1].replace('\r', "")
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if "\\.+*?()|[]{}^$#&-~".contains(c) {
                vec!['\\', c]
            } else {
                vec![c]
            }
        })
        .collect()
}

#[test]
fn kit_boots_with_2_cpus_answers_and_powers_off() {
    if !kvm_available("kit_boots_with_2_cpus_answers_and_powers_off") {
        return;
    }
    let Some((mut vm, console)) = boot(2, 384 << 20, "console=ttyS0") else {
        return;
    };
    let ready = console
        .wait_for(r"ember-kit: ready cpus=(\d+) mem_kb=(\d+)\r?\n", BOOT)
        .unwrap_or_else(|e| panic!("boot: {e}\ntranscript:\n{}", console.transcript()));
    assert_eq!(ready[1], "2", "CPUs seen by the guest");
    let mem_kb: u64 = ready[2].parse().unwrap();
    // MemTotal is RAM minus what the kernel keeps for itself.
    assert!(
        mem_kb > 330 * 1024 && mem_kb <= 384 * 1024,
        "MemTotal {mem_kb} kB"
    );
    console.wait_for(PROMPT, COMMAND).unwrap();

    assert_eq!(run(&console, "echo $((6 * 7))"), "42");
    assert_eq!(run(&console, "nproc"), "2");
    let online = run(&console, "cat /sys/devices/system/cpu/online");
    assert_eq!(online, "0-1");

    console.send_line("poweroff").unwrap();
    assert_eq!(vm.wait(), VmExit::Poweroff, "{}", console.transcript());
}

#[test]
fn kit_reboot_ends_ember_cleanly() {
    if !kvm_available("kit_reboot_ends_ember_cleanly") {
        return;
    }
    let Some((mut vm, console)) = boot(1, 256 << 20, "console=ttyS0") else {
        return;
    };
    console
        .wait_for(PROMPT, BOOT)
        .unwrap_or_else(|e| panic!("boot: {e}\ntranscript:\n{}", console.transcript()));
    console.send_line("reboot").unwrap();
    assert_eq!(vm.wait(), VmExit::Reboot, "{}", console.transcript());
}

#[test]
fn kit_kernel_panic_is_reported_as_a_guest_panic() {
    if !kvm_available("kit_kernel_panic_is_reported_as_a_guest_panic") {
        return;
    }
    // init exits at once: "Attempted to kill init!", a panic that pvpanic
    // reports before panic=-1 resets the VM.
    let Some((mut vm, console)) = boot(1, 256 << 20, "console=ttyS0 rdinit=/bin/false") else {
        return;
    };
    match vm.wait() {
        VmExit::Crash(c) => assert_eq!(c.kind, ember::CrashKind::GuestPanic),
        other => panic!(
            "expected a guest panic, got {other}\n{}",
            console.transcript()
        ),
    }
    assert!(console.transcript().contains("Kernel panic"));
}
