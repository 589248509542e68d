//! Shared test helpers: the KVM skip rule, building tiny guests with the
//! system assembler, running the `ember` binary.
#![allow(dead_code)]

pub mod kit;
pub mod netns;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Fails the test unless /dev/kvm is usable. KVM tests are `#[ignore]`d,
/// so a plain `cargo test` lists them as ignored instead of passing them
/// silently; `make test` runs them (`--include-ignored`) where KVM is
/// present, and reports them ignored where it is not.
pub fn require_kvm() {
    let usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm");
    if let Err(e) = usable {
        panic!("this test needs a usable /dev/kvm: {e}");
    }
}

/// Fails the test unless it runs as root (network namespaces, TAPs).
pub fn require_root() {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        panic!("this test needs root (network namespaces and TAP devices)");
    }
}

pub fn ember_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ember")
}

/// A scratch directory for one test.
pub fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run_tool(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (install binutils)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Assembles a 64-bit tiny guest and links it as an ELF whose code starts
/// at 2 MiB (and whose `.tramp` section, if any, sits at 0x10000 for APs).
pub fn build_elf_guest(dir: &Path, name: &str, asm: &str) -> PathBuf {
    link_guest(
        dir,
        name,
        asm,
        &["-Ttext=0x200000", "--section-start=.tramp=0x10000"],
    )
}

fn link_guest(dir: &Path, name: &str, asm: &str, layout: &[&str]) -> PathBuf {
    let src = dir.join(format!("{name}.S"));
    let obj = dir.join(format!("{name}.o"));
    let elf = dir.join(format!("{name}.elf"));
    std::fs::write(&src, asm).unwrap();
    run_tool(Command::new("as").args(["--64", "-o"]).arg(&obj).arg(&src));
    run_tool(
        Command::new("ld")
            .args([
                "-m",
                "elf_x86_64",
                "--build-id=none",
                "-z",
                "max-page-size=4096",
                "-e",
                "_start",
            ])
            .args(layout)
            .arg("-o")
            .arg(&elf)
            .arg(&obj),
    );
    elf
}

/// Builds tests/guests/FILE (with the prelude) in a scratch dir for `test`.
pub fn tiny_guest(test: &str, file: &str) -> PathBuf {
    tiny_guest_with(test, file, "")
}

/// Like `tiny_guest`, with assembler definitions (`.set NAME, VALUE` lines)
/// before the guest's own source.
pub fn tiny_guest_with(test: &str, file: &str, defs: &str) -> PathBuf {
    let dir = scratch(test);
    let root = env!("CARGO_MANIFEST_DIR");
    let prelude = std::fs::read_to_string(format!("{root}/tests/guests/prelude.S")).unwrap();
    let prelude = format!("{prelude}\n{defs}");
    let body = std::fs::read_to_string(format!("{root}/tests/guests/{file}")).unwrap();
    build_elf_guest(
        &dir,
        file.trim_end_matches(".S"),
        &format!("{prelude}\n{body}"),
    )
}

/// Builds a minimal 64-bit bzImage around `asm`: a 1024-byte setup part
/// (boot sector + one setup sector with the header) and the code, linked
/// at 1 MiB with the 64-bit entry at offset 0x200.
pub fn build_bzimage_guest(dir: &Path, name: &str, asm: &str) -> PathBuf {
    let elf = link_guest(dir, name, asm, &["-Ttext=0x100000"]);
    let bin = dir.join(format!("{name}.bin"));
    run_tool(
        Command::new("objcopy")
            .args(["-O", "binary"])
            .arg(&elf)
            .arg(&bin),
    );
    let code = std::fs::read(&bin).unwrap();
    let mut img = vec![0u8; 1024];
    img[0x1f1] = 1; // setup_sects
    img[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    img[0x202..0x206].copy_from_slice(b"HdrS");
    img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes()); // protocol 2.15
    img[0x211] = 1; // loadflags: LOADED_HIGH
    img[0x214..0x218].copy_from_slice(&0x100000u32.to_le_bytes()); // code32_start
    img[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
    img[0x230..0x234].copy_from_slice(&0x200000u32.to_le_bytes()); // kernel_alignment
    img[0x236..0x238].copy_from_slice(&1u16.to_le_bytes()); // xloadflags: XLF_KERNEL_64
    img[0x238..0x23c].copy_from_slice(&2048u32.to_le_bytes()); // cmdline_size
    img[0x260..0x264].copy_from_slice(&(code.len() as u32).to_le_bytes()); // init_size
    img.extend_from_slice(&code);
    let out = dir.join(format!("{name}.bzImage"));
    std::fs::write(&out, img).unwrap();
    out
}

/// Runs `ember run` with `args`, stdin from /dev/null, and a time limit.
pub fn run_ember(args: &[&str], limit: Duration) -> Output {
    run_ember_with_stdin(args, Stdio::null(), limit)
}

pub fn run_ember_with_stdin(args: &[&str], stdin: Stdio, limit: Duration) -> Output {
    let mut child = Command::new(ember_bin())
        .arg("run")
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ember");
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "ember {args:?} still running after {limit:?}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// An error with its sources, as the CLI prints it ("what: why: why").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    msg
}
