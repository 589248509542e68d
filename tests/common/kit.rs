//! Booting the guest kit and scripting its shell (tier-3 tests).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ember::{Console, ConsoleMode, DiskConfig, NetConfig, Vm, VmConfig};

/// Generous: a boot takes ~1 minute on an emulating host, ~1 s on hardware;
/// boots never outnumber the cores (see `BootSlot`), so this is per boot.
pub const BOOT: Duration = Duration::from_secs(600);
pub const COMMAND: Duration = Duration::from_secs(120);
pub const PROMPT: &str = r"ember:[^\n]*# (?:\x1b\[6n)?$";

/// The kit, or a failure saying how to build it: a kit test that is run
/// (they are `#[ignore]`d; `make test` builds the kit and runs them) never
/// passes without booting.
pub fn kit() -> (PathBuf, PathBuf) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/guest");
    // The kit plus the tier's own check (/bin/ember-regcheck), built with it.
    let (kernel, initrd) = (dir.join("vmlinux"), dir.join("initramfs-test.cpio"));
    assert!(
        kernel.exists() && initrd.exists(),
        "the guest kit is not built: run `make guest`"
    );
    (kernel, initrd)
}

/// Lines a guest kernel prints when a process or the kernel itself went
/// wrong: any of them fails the test that booted it.
pub const CRASH_LINES: [&str; 6] = [
    "segfault at",
    "general protection fault",
    "traps:",
    "BUG:",
    "Oops",
    "WARNING:",
];

/// The crash lines in a transcript.
pub fn crash_lines(transcript: &str) -> Vec<&str> {
    transcript
        .lines()
        .filter(|l| CRASH_LINES.iter().any(|c| l.contains(c)))
        .collect()
}

/// Held by every kit test: its boot slot, and on drop the check that the
/// guest printed no crash line (see CRASH_LINES), so no test passes over a
/// crashed guest process.
pub struct BootSlot {
    _lock: File,
    console: Option<Console>,
}

impl Drop for BootSlot {
    fn drop(&mut self) {
        let Some(console) = self.console.take() else {
            return;
        };
        if std::thread::panicking() {
            return;
        }
        let transcript = console.transcript();
        let crashes = crash_lines(&transcript);
        assert!(
            crashes.is_empty(),
            "the guest printed crash lines:\n{}",
            crashes.join("\n")
        );
    }
}

impl BootSlot {
    pub fn acquire() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let dir = std::env::temp_dir();
        let waited = Instant::now();
        loop {
            for i in 0..cores {
                let f = File::create(dir.join(format!("ember-linux-boot.{i}.lock")))
                    .expect("create a boot slot lock file");
                // SAFETY: flock on a descriptor owned by `f`.
                if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                    if waited.elapsed() > Duration::from_secs(1) {
                        eprintln!("waited {:?} for a Linux boot slot", waited.elapsed());
                    }
                    return BootSlot {
                        _lock: f,
                        console: None,
                    };
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

pub fn boot(cpus: u8, memory: u64, cmdline: &str) -> (Vm, Console, BootSlot) {
    boot_with(cpus, memory, cmdline, Vec::new())
}

/// Boots the kit (1 vCPU, 256M) with network interfaces.
pub fn boot_net(nets: Vec<NetConfig>) -> (Vm, Console, BootSlot) {
    boot_config(1, 256 << 20, "console=ttyS0", Vec::new(), nets)
}

/// Boots the kit with `disks` attached.
pub fn boot_with(
    cpus: u8,
    memory: u64,
    cmdline: &str,
    disks: Vec<DiskConfig>,
) -> (Vm, Console, BootSlot) {
    boot_config(cpus, memory, cmdline, disks, Vec::new())
}

fn boot_config(
    cpus: u8,
    memory: u64,
    cmdline: &str,
    disks: Vec<DiskConfig>,
    nets: Vec<NetConfig>,
) -> (Vm, Console, BootSlot) {
    let (kernel, initrd) = kit();
    let mut slot = BootSlot::acquire();
    let mut config = VmConfig::new(kernel);
    config.initrd = Some(initrd);
    config.cpus = cpus;
    config.memory = memory;
    // Kernel timestamps let a timeout say how far the boot got.
    config.cmdline = format!("{cmdline} printk.time=1");
    config.disks = disks;
    config.nets = nets;
    config.console = ConsoleMode::Scripted {
        echo: std::env::var_os("EMBER_TEST_ECHO").is_some(),
    };
    let vm = Vm::start(&config).expect("start the kit VM");
    let console = vm.console();
    slot.console = Some(console.clone());
    (vm, console, slot)
}

/// Waits for `pattern` during a boot; on a timeout, fails with how far the
/// guest got (its last kernel timestamp and last lines), so a slow machine
/// can be told from a hang.
pub fn wait_boot(console: &Console, pattern: &str) -> Vec<String> {
    let started = Instant::now();
    console.wait_for(pattern, BOOT).unwrap_or_else(|e| {
        let transcript = console.transcript();
        let last_stamp = transcript
            .rsplit_once('[')
            .and_then(|(_, rest)| rest.split_once(']'))
            .map_or("none", |(stamp, _)| stamp.trim());
        let tail: Vec<&str> = transcript.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "boot: {pattern:?} not seen after {:?} of wall time; the guest's last kernel \
             timestamp was [{last_stamp}] s\n{e}\nlast lines:\n{}",
            started.elapsed(),
            tail.join("\n")
        )
    })
}

/// Runs `cmd` at the prompt and returns what it printed. The output is
/// framed by markers the shell computes (`$((n))` in the typed line, the
/// number in the output), so a kernel message landing in the middle of the
/// echoed command line cannot hide it; kernel lines (with their timestamp)
/// inside the output are dropped from what is returned.
pub fn run(console: &Console, cmd: &str) -> String {
    run_for(console, cmd, COMMAND)
}

/// `run` with a timeout of its own, for commands that take long.
pub fn run_for(console: &Console, cmd: &str, timeout: Duration) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let sep = if cmd.trim_end().ends_with('&') {
        ""
    } else {
        ";"
    };
    console
        .send_line(&format!(
            "echo \"@@B$(({n}))@@\"; {cmd}{sep} echo \"@@E$(({n}))@@\""
        ))
        .unwrap();
    let m = console
        .wait_for(
            &format!(r"(?s)@@B{n}@@\r?\n(.*?)\r?\n?@@E{n}@@\r?\n.*?{PROMPT}"),
            timeout,
        )
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    let kernel_line = regex::Regex::new(r"^\[\s*\d+\.\d+\] ").unwrap();
    m[1].replace('\r', "")
        .lines()
        .filter(|l| !kernel_line.is_match(l))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The exec stress of one round: a shell pipeline whose `grep`, `sed` and
/// `md5sum` are fork+execs of static busybox (they read thread-local
/// storage through FS), plus two forks (the command substitution and the
/// pipeline's `echo`). The round checks the result, so a crashed or wrong
/// process fails it as well as its console line (see CRASH_LINES).
const STRESS_ROUND: &str =
    r#"[ "$(echo hello world | grep -o wor | sed s/o/0/ | md5sum)" = "$want" ] || bad=$((bad+1))"#;

/// Runs `rounds` stress rounds (3 execs each) in the guest shell and
/// asserts every one gave the right answer; the BootSlot's check then
/// fails the test on any crash line the guest printed meanwhile.
/// bench/kit-stress.py runs the full count of the guest-kit issue.
pub fn exec_stress(console: &Console, rounds: u32) {
    let want = run(console, "echo w0r | md5sum");
    assert!(want.ends_with(" -"), "md5sum printed {want:?}");
    // A round takes 1-5 s on an emulating host (more when it is busy).
    let timeout = COMMAND + Duration::from_secs(20) * rounds;
    let out = run_for(
        console,
        &format!(
            "want='{want}'; bad=0; i=0; while [ $i -lt {rounds} ]; do {STRESS_ROUND}; \
             i=$((i+1)); done; echo \"rounds=$i bad=$bad\""
        ),
        timeout,
    );
    assert_eq!(
        out,
        format!("rounds={rounds} bad=0"),
        "{}",
        console.transcript()
    );
}

/// Runs the kit's `ember-regcheck` (resources/initramfs/regcheck.c): user
/// space's YMM registers must survive task switches, or the kernel must
/// have left AVX off for user space (the kit on emulating hosts: patch
/// 0004-xcr0-without-xsave). Returns its line.
pub fn regcheck(console: &Console) -> String {
    let out = run(console, "ember-regcheck 2; echo rc=$?");
    assert!(
        out.ends_with("rc=0")
            && (out.starts_with("regcheck: avx off") || out.starts_with("regcheck: ymm ok")),
        "ember-regcheck: {out}\n{}",
        console.transcript()
    );
    out
}
