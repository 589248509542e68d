//! Bad boot inputs (BAD_INPUTS.md 21-23): each ends with exit code 2 (125
//! for a container run, as podman) and a
//! message naming the input, before any guest code runs. Ember checks all
//! of these before it opens /dev/kvm, so they run on any host.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

const LIMIT: Duration = Duration::from_secs(30);

/// A 64-bit little-endian x86-64 ELF executable with the given program
/// headers (offset, paddr, filesz, memsz), padded to `len` bytes.
fn elf(entry: u64, phdrs: &[(u64, u64, u64, u64)], phoff: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len.max(64)];
    b[0..4].copy_from_slice(b"\x7fELF");
    b[4] = 2; // 64-bit
    b[5] = 1; // little endian
    b[6] = 1; // version
    b[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    b[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    b[20..24].copy_from_slice(&1u32.to_le_bytes());
    b[24..32].copy_from_slice(&entry.to_le_bytes());
    b[32..40].copy_from_slice(&phoff.to_le_bytes());
    b[52..54].copy_from_slice(&64u16.to_le_bytes()); // ehsize
    b[54..56].copy_from_slice(&56u16.to_le_bytes()); // phentsize
    b[56..58].copy_from_slice(&(phdrs.len() as u16).to_le_bytes());
    for (i, &(off, paddr, filesz, memsz)) in phdrs.iter().enumerate() {
        let at = phoff as usize + i * 56;
        if at + 56 > b.len() {
            break;
        }
        let p = &mut b[at..at + 56];
        p[0..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        p[8..16].copy_from_slice(&off.to_le_bytes());
        p[16..24].copy_from_slice(&paddr.to_le_bytes());
        p[24..32].copy_from_slice(&paddr.to_le_bytes());
        p[32..40].copy_from_slice(&filesz.to_le_bytes());
        p[40..48].copy_from_slice(&memsz.to_le_bytes());
    }
    b
}

fn bzimage(setup_sects: u8, xloadflags: u16) -> Vec<u8> {
    let mut img = vec![0u8; 8192];
    img[0x1f1] = setup_sects;
    img[0x202..0x206].copy_from_slice(b"HdrS");
    img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    img[0x211] = 1;
    img[0x214..0x218].copy_from_slice(&0x100000u32.to_le_bytes());
    img[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
    img
}

fn file(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

/// A valid one-segment ELF kernel (it never runs: the flags are bad).
fn small_kernel(dir: &Path) -> PathBuf {
    file(
        dir,
        "k.elf",
        &elf(0x200000, &[(0x1000, 0x200000, 16, 16)], 64, 0x1010),
    )
}

/// Runs ember and checks exit code 2 and that stderr has every `needles`.
fn expect_usage_error(args: &[&str], needles: &[&str]) {
    let out = run_ember(args, LIMIT);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: stderr lacks {n:?}: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_kernels_are_named_with_what_is_wrong() {
    let dir = scratch("bad_kernels");
    let good_elf = elf(0x200000, &[(0x1000, 0x200000, 16, 16)], 64, 0x1010);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "is empty"),
        (
            "junk",
            vec![0x5a; 4096],
            "neither an ELF vmlinux nor a bzImage",
        ),
        ("truncated.elf", good_elf[..40].to_vec(), "bad ELF image"),
        (
            "phoff-beyond.elf",
            elf(0x200000, &[(0x1000, 0x200000, 16, 16)], 1 << 40, 200),
            "bad ELF image",
        ),
        (
            "segment-beyond-file.elf",
            elf(
                0x200000,
                &[(0x1000, 0x200000, 1 << 30, 1 << 30)],
                64,
                0x1010,
            ),
            "bad ELF image",
        ),
        (
            "segment-outside-ram.elf",
            elf(0x200000, &[(0x1000, 1 << 44, 16, 16)], 64, 0x1010),
            "bad ELF image",
        ),
        (
            "low-entry.elf",
            elf(0x1000, &[(0x1000, 0x200000, 16, 16)], 64, 0x1010),
            "bad ELF image",
        ),
        (
            "on-the-zero-page.elf",
            elf(0x200000, &[(0x1000, 0x7800, 16, 16)], 64, 0x1010),
            "overlaps the zero page",
        ),
        (
            "over-the-acpi-tables.elf",
            elf(0x200000, &[(0x1000, 0xd0000, 16, 0x20000)], 64, 0x1010),
            "overlaps the ACPI tables",
        ),
        (
            "filesz-over-memsz.elf",
            elf(0x200000, &[(0x1000, 0x200000, 16, 8)], 64, 0x1010),
            "bytes in the file but only",
        ),
        ("setup-sects.bzImage", bzimage(0xff, 1), "bad bzImage"),
        ("32-bit.bzImage", bzimage(4, 0), "no 64-bit entry point"),
    ];
    for (name, data, why) in cases {
        let path = file(&dir, name, &data);
        expect_usage_error(
            &["--kernel", path.to_str().unwrap()],
            &[path.to_str().unwrap(), why],
        );
    }
    expect_usage_error(
        &["--kernel", "/nonexistent/vmlinux"],
        &["cannot open kernel /nonexistent/vmlinux"],
    );
    expect_usage_error(
        &["--kernel", dir.to_str().unwrap()],
        &["is not a regular file"],
    );
    // A bzImage whose decompressor needs 256 MiB (init_size) at --memory 16M.
    let mut greedy = bzimage(4, 1);
    greedy[0x260..0x264].copy_from_slice(&(256u32 << 20).to_le_bytes());
    let greedy = file(&dir, "greedy.bzImage", &greedy);
    expect_usage_error(
        &["--kernel", greedy.to_str().unwrap(), "--memory", "16M"],
        &["init_size", "raise --memory"],
    );
    // A kernel whose image runs past low memory.
    let big = file(
        &dir,
        "huge-bss.elf",
        &elf(0x200000, &[(0x1000, 0x200000, 16, 64 << 20)], 64, 0x1010),
    );
    expect_usage_error(
        &["--kernel", big.to_str().unwrap(), "--memory", "16M"],
        &["beyond the", "raise --memory"],
    );
}

#[test]
fn initrds_that_do_not_fit_are_refused_before_boot() {
    let dir = scratch("bad_initrds");
    let kernel = small_kernel(&dir);
    let k = kernel.to_str().unwrap();
    let big = file(&dir, "big.initrd", &vec![0u8; 20 << 20]);
    expect_usage_error(
        &[
            "--kernel",
            k,
            "--initrd",
            big.to_str().unwrap(),
            "--memory",
            "16M",
        ],
        &["big.initrd", "do not fit"],
    );
    // Fits in RAM, but not above a kernel that fills most of it.
    let fat = file(
        &dir,
        "fat.elf",
        &elf(0x200000, &[(0x1000, 0x200000, 16, 12 << 20)], 64, 0x1010),
    );
    let mid = file(&dir, "mid.initrd", &vec![0u8; 3 << 20]);
    expect_usage_error(
        &[
            "--kernel",
            fat.to_str().unwrap(),
            "--initrd",
            mid.to_str().unwrap(),
            "--memory",
            "16M",
        ],
        &["mid.initrd", "kernel end"],
    );
    let empty = file(&dir, "empty.initrd", &[]);
    expect_usage_error(
        &["--kernel", k, "--initrd", empty.to_str().unwrap()],
        &["initrd", "is empty"],
    );
    expect_usage_error(
        &["--kernel", k, "--initrd", "/nonexistent/initrd"],
        &["cannot open initrd /nonexistent/initrd"],
    );
}

#[test]
fn bad_memory_cpus_and_cmdline_name_their_flag() {
    let dir = scratch("bad_flags");
    let kernel = small_kernel(&dir);
    let k = kernel.to_str().unwrap();
    expect_usage_error(
        &["--kernel", k, "--memory", "0"],
        &["--memory 0 bytes", "at least"],
    );
    expect_usage_error(
        &["--kernel", k, "--memory", "4097K"],
        &["--memory", "multiple of 4K"],
    );
    expect_usage_error(
        &["--kernel", k, "--memory", "12Q"],
        &["--memory \"12Q\"", "not a size"],
    );
    expect_usage_error(
        &["--kernel", k, "--memory", "1000T"],
        &["--memory", "more than this host"],
    );
    expect_usage_error(&["--kernel", k, "--cpus", "0"], &["--cpus 0"]);
    expect_usage_error(
        &["--kernel", k, "--cpus", "255"],
        &["--cpus 255", "between 1 and 254"],
    );
    expect_usage_error(&["--kernel", k, "--cpus", "300"], &["--cpus"]);
    let long = "x".repeat(3000);
    expect_usage_error(
        &["--kernel", k, "--cmdline", &long],
        &["--cmdline", "3000 bytes is too long"],
    );
    let nearly = "x".repeat(2040);
    expect_usage_error(
        &["--kernel", k, "--cmdline", &nearly],
        &["--cmdline", "Ember's own arguments"],
    );
    expect_usage_error(
        &["--kernel", k, "--cmdline", "console=ttyS0\u{1}"],
        &["--cmdline", "not printable ASCII"],
    );
}

/// A FIFO where a file is expected: refused at once, never a blocked open
/// waiting for a writer.
#[test]
fn fifos_are_refused_without_blocking() {
    let dir = scratch("fifos");
    let fifo = dir.join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo on a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let f = fifo.to_str().unwrap();
    let kernel = small_kernel(&dir);
    let k = kernel.to_str().unwrap();
    expect_usage_error(&["--kernel", f], &[f, "not a regular file"]);
    expect_usage_error(&["--kernel", k, "--initrd", f], &[f, "not a regular file"]);
    let ro = format!("{f},ro");
    expect_usage_error(&["--kernel", k, "--disk", &ro], &[f, "not a regular file"]);
    expect_usage_error(&["--kernel", k, "--disk", f], &[f, "not a regular file"]);
}

#[test]
fn bad_disks_are_named_before_boot() {
    let dir = scratch("bad_disks");
    let kernel = small_kernel(&dir);
    let k = kernel.to_str().unwrap();
    expect_usage_error(
        &["--kernel", k, "--disk", "/nonexistent/disk.img"],
        &["--disk /nonexistent/disk.img", "cannot open"],
    );
    expect_usage_error(
        &["--kernel", k, "--disk", dir.to_str().unwrap()],
        &["--disk", "Is a directory"],
    );
    let ro_dir = format!("{},ro", dir.display());
    expect_usage_error(
        &["--kernel", k, "--disk", &ro_dir],
        &["--disk", "not a regular file"],
    );
    let odd = file(&dir, "odd.img", &[0u8; 1000]);
    expect_usage_error(
        &["--kernel", k, "--disk", odd.to_str().unwrap()],
        &["odd.img", "not a multiple of 512"],
    );
    let good = file(&dir, "good.img", &[0u8; 4096]);
    let spec = format!("{},rx", good.display());
    expect_usage_error(
        &["--kernel", k, "--disk", &spec],
        &["--disk", "unknown option \"rx\""],
    );
    let many: Vec<String> = (0..20)
        .flat_map(|_| ["--disk".to_string(), good.display().to_string()])
        .collect();
    let mut args = vec!["--kernel", k];
    args.extend(many.iter().map(String::as_str));
    expect_usage_error(&args, &["20 virtio devices", "at most 19"]);
}

/// A container run's bad inputs: exit 125 (podman's code for the runtime's
/// own failure) naming the input, before a guest or a template boots.
#[test]
fn bad_container_inputs_exit_125_naming_the_input() {
    let dir = scratch("bad_container");
    let kernel = small_kernel(&dir);
    let k = kernel.to_str().unwrap();
    let not_dir = file(&dir, "plain", b"x");
    let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        (
            vec![
                "--rootfs".into(),
                "/nonexistent/ember-root".into(),
                "--".into(),
                "true".into(),
            ],
            vec!["/nonexistent/ember-root", "cannot open"],
        ),
        (
            vec![
                "--rootfs".into(),
                not_dir.display().to_string(),
                "--".into(),
                "true".into(),
            ],
            vec!["plain", "not a directory"],
        ),
        (
            vec![
                "--rootfs".into(),
                dir.display().to_string(),
                "-v".into(),
                "/nonexistent/vol:/v".into(),
                "--".into(),
                "true".into(),
            ],
            vec!["/nonexistent/vol"],
        ),
        (
            vec![
                "--rootfs".into(),
                dir.display().to_string(),
                "-e".into(),
                "NOEQUALS".into(),
                "--".into(),
                "true".into(),
            ],
            vec!["-e \"NOEQUALS\"", "KEY=VALUE"],
        ),
        (
            vec![
                "--rootfs".into(),
                dir.display().to_string(),
                "-v".into(),
                "rel:/x:rw:extra".into(),
                "--".into(),
                "true".into(),
            ],
            vec!["-v \"rel:/x:rw:extra\""],
        ),
        (vec!["--".into(), "true".into()], vec!["needs --rootfs"]),
        (
            vec![
                "--rootfs".into(),
                dir.display().to_string(),
                "--bogus-flag".into(),
                "--".into(),
                "true".into(),
            ],
            vec!["--bogus-flag"],
        ),
    ];
    for (args, needles) in cases {
        let mut full = vec!["--kernel", k];
        full.extend(args.iter().map(String::as_str));
        let out = run_ember(&full, LIMIT);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {err}");
        for n in needles {
            assert!(err.contains(n), "{args:?}: stderr lacks {n:?}: {err}");
        }
        assert!(!err.contains("panicked"), "{err}");
    }
}
