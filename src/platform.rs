//! The host's KVM flavour. On hosts whose KVM emulates guest kernel code
//! (kvm_pvm, PLATFORM.md) a Linux guest needs a few features hidden; Ember
//! detects such a host and does that itself. Nothing changes on hardware KVM.

use std::path::Path;

/// How KVM runs guest kernel code on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    /// VMX/SVM: guest code runs on the CPU.
    Hardware,
    /// kvm_pvm: guest CPL0 code goes through KVM's instruction emulator.
    Emulating,
}

impl Host {
    /// Looks at /sys/module for kvm_pvm. `EMBER_HOST=hardware|emulating`
    /// overrides the detection (for tests of either policy).
    pub fn detect() -> Self {
        match std::env::var("EMBER_HOST").as_deref() {
            Ok("hardware") => return Host::Hardware,
            Ok("emulating") => return Host::Emulating,
            _ => {}
        }
        if Path::new("/sys/module/kvm_pvm").exists() {
            Host::Emulating
        } else {
            Host::Hardware
        }
    }

    pub fn is_emulating(self) -> bool {
        self == Host::Emulating
    }

    /// Kernel arguments this host needs: on an emulating host, no XSAVE
    /// (xrstor cannot be emulated), no POPCNT/SMAP alternatives, and no
    /// CX16: KVM's emulator refuses `cmpxchg16b`, which SLUB (Debian's and
    /// the kit's allocator) uses for its lockless fast path. ERMS and
    /// FSRM are hidden for speed: with them Linux copies and clears memory
    /// (`memcpy`, `memset`, `clear_page`, user copies) with `rep movsb`/
    /// `rep stosb`, which KVM's emulator runs one byte per iteration (~1 us
    /// a byte here); without them the same calls use `rep movsq`/`rep stosq`
    /// (8 bytes an iteration). Measured in resources/kernel/BOOT-SPEED.md.
    ///
    /// `percpu_alloc=page`: the default "embed" first chunk reserves a 1 MiB
    /// unit per CPU (a 2 MiB large page's share) that memblock zeroes and
    /// then gives back mostly unused; the page allocator maps just the
    /// pages it needs (37 a CPU in the kit). In the kit's boot here (one
    /// boot each), "setup_percpu:" to "percpu:" 0.78 s -> 0.35 s, and the
    /// memmap's last line to "Memory:" 3.55 s -> 2.78 s.
    /// The cost elsewhere is per-CPU data behind 4 KiB mappings instead of
    /// the direct map's large pages, which only matters on hosts that run
    /// the guest kernel natively: so emulating hosts only.
    ///
    /// `GLIBC_TUNABLES=...` is no kernel argument: Linux hands it to init's
    /// environment, and every process inherits it. It keeps glibc off its
    /// AVX/AVX2 functions (`memcpy`, `strlen`, ...): guest user space runs
    /// natively here and sees the host's AVX, but without XSAVE nothing
    /// preserves the upper halves of the YMM registers across the guest's
    /// task switches and interrupts; they come back zeroed, and strings and
    /// pointers with them (the guest kit's crashed and wrong processes).
    /// resources/USER-AVX-STATE.md has the mechanism and the measurements.
    pub fn kernel_args(self) -> &'static [&'static str] {
        match self {
            Host::Hardware => &[],
            Host::Emulating => &[
                "noxsave",
                "clearcpuid=popcnt,smap,cx16,erms,fsrm",
                "percpu_alloc=page",
                GLIBC_NO_AVX,
            ],
        }
    }
}

/// glibc's own switch for its AVX code paths (glibc 2.33 and later name
/// the features so; older ones ignore unknown names). The AVX-512 names
/// matter on hosts with AVX-512 (an AMD EPYC here): without them glibc
/// 2.36 still picks its EVEX/AVX-512 `memmove`, `strlen`, ..., whose ZMM
/// and opmask state the guest kernel (noxsave) does not keep either.
pub const GLIBC_NO_AVX: &str = "GLIBC_TUNABLES=glibc.cpu.hwcaps=\
     -AVX2,-AVX,-AVX_Fast_Unaligned_Load,-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD";

/// Init's environment when no person types at the console (stdin is a
/// pipe, a file or /dev/null, or a program drives the library's
/// `ConsoleMode::Scripted`). Like any `NAME=value` argument Linux does not
/// know, it reaches init as an environment variable; other guests ignore
/// it. The guest kit's start-up turns the console's echo off on seeing it,
/// and with echo off busybox's shell reads whole lines instead of editing
/// them a key at a time: a typed line costs the guest one read instead of
/// a poll, a read and a write per character. On this emulating host a
/// 16-character command line is answered in 32-44 ms instead of 180-290 ms
/// (a restored kit, one line at a time; resources/kernel/BOOT-SPEED.md).
/// A person at a terminal keeps the echo and the line editing.
pub const SCRIPTED_CONSOLE: &str = "EMBER_CONSOLE=scripted";

/// Ember's own kernel arguments, skipping any the user already chose.
/// `reboot=k` makes a guest reboot go through the i8042 reset line (a clean
/// exit), so a triple fault always means a crash; `panic=-1` turns a guest
/// panic into an immediate reset instead of a hang; `pci=off` because Ember
/// has no PCI bus, so probing one only costs exits.
/// `scripted`: nobody types at the console (see [`SCRIPTED_CONSOLE`]).
pub fn ember_kernel_args(user: &str, host: Host, scripted: bool) -> Vec<String> {
    let has = |key: &str| {
        user.split_whitespace()
            .any(|w| w == key || w.starts_with(&format!("{key}=")))
    };
    let mut args = Vec::new();
    for (key, arg) in [
        ("reboot", "reboot=k"),
        ("panic", "panic=-1"),
        ("pci", "pci=off"),
    ] {
        if !has(key) {
            args.push(arg.to_string());
        }
    }
    let console: &[&str] = if scripted { &[SCRIPTED_CONSOLE] } else { &[] };
    for arg in host.kernel_args().iter().chain(console) {
        let key = arg.split('=').next().unwrap_or(arg);
        if !has(key) {
            args.push(arg.to_string());
        }
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hardware_hosts_get_only_reboot_and_panic_policy() {
        assert_eq!(
            ember_kernel_args("console=ttyS0", Host::Hardware, false),
            vec!["reboot=k", "panic=-1", "pci=off"]
        );
    }

    #[test]
    fn emulating_hosts_get_the_platform_workarounds() {
        let args = ember_kernel_args("console=ttyS0", Host::Emulating, false);
        assert_eq!(
            args,
            vec![
                "reboot=k",
                "panic=-1",
                "pci=off",
                "noxsave",
                "clearcpuid=popcnt,smap,cx16,erms,fsrm",
                "percpu_alloc=page",
                GLIBC_NO_AVX
            ]
        );
    }

    #[test]
    fn user_choices_win() {
        let args = ember_kernel_args(
            "panic=5 reboot=t pci=on noxsave GLIBC_TUNABLES=glibc.cpu.x86_shstk=off",
            Host::Emulating,
            false,
        );
        assert_eq!(
            args,
            vec!["clearcpuid=popcnt,smap,cx16,erms,fsrm", "percpu_alloc=page"]
        );
    }

    #[test]
    fn a_scripted_console_is_named_unless_the_user_did() {
        assert_eq!(
            ember_kernel_args("console=ttyS0", Host::Hardware, true),
            vec!["reboot=k", "panic=-1", "pci=off", SCRIPTED_CONSOLE]
        );
        assert_eq!(
            ember_kernel_args("console=ttyS0 EMBER_CONSOLE=terminal", Host::Hardware, true),
            vec!["reboot=k", "panic=-1", "pci=off"]
        );
    }
}
