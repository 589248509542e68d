//! Booting the guest kit and scripting its shell (tier-3 tests).

use std::path::PathBuf;
use std::time::Duration;

use ember::{Console, ConsoleMode, DiskConfig, NetConfig, Vm, VmConfig};

/// Generous: a boot takes ~1 minute on an emulating host, ~1 s on hardware,
/// and the two boots of this file run side by side on 2 cores.
pub const BOOT: Duration = Duration::from_secs(600);
pub const COMMAND: Duration = Duration::from_secs(120);
pub const PROMPT: &str = r"ember:[^\n]*# (?:\x1b\[6n)?$";

pub fn kit() -> Option<(PathBuf, PathBuf)> {
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

pub fn boot(cpus: u8, memory: u64, cmdline: &str) -> Option<(Vm, Console)> {
    boot_with(cpus, memory, cmdline, Vec::new())
}

/// Boots the kit (1 vCPU, 256M) with network interfaces.
pub fn boot_net(nets: Vec<NetConfig>) -> Option<(Vm, Console)> {
    boot_config(1, 256 << 20, "console=ttyS0", Vec::new(), nets)
}

/// Boots the kit with `disks` attached.
pub fn boot_with(
    cpus: u8,
    memory: u64,
    cmdline: &str,
    disks: Vec<DiskConfig>,
) -> Option<(Vm, Console)> {
    boot_config(cpus, memory, cmdline, disks, Vec::new())
}

fn boot_config(
    cpus: u8,
    memory: u64,
    cmdline: &str,
    disks: Vec<DiskConfig>,
    nets: Vec<NetConfig>,
) -> Option<(Vm, Console)> {
    let (kernel, initrd) = kit()?;
    let mut config = VmConfig::new(kernel);
    config.initrd = Some(initrd);
    config.cpus = cpus;
    config.memory = memory;
    config.cmdline = cmdline.to_string();
    config.disks = disks;
    config.nets = nets;
    config.console = ConsoleMode::Scripted {
        echo: std::env::var_os("EMBER_TEST_ECHO").is_some(),
    };
    let vm = Vm::start(&config).expect("start the kit VM");
    let console = vm.console();
    Some((vm, console))
}

/// Runs `cmd` at the prompt and returns what it printed.
pub fn run(console: &Console, cmd: &str) -> String {
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
