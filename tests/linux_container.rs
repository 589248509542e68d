//! Tier 3: `ember run --rootfs DIR -- CMD` on the kit kernel, through the
//! CLI, on a busybox-static root built here. The first run boots the
//! container template (about a minute on an emulating host), the others
//! restore it (seconds); one run checks many rules.

mod common;

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::kit::{crash_lines, kit, BootSlot};

/// Applets the scripts use, as links to /bin/busybox.
const APPLETS: &[&str] = &[
    "sh", "cat", "echo", "ln", "ls", "printf", "pwd", "wc", "kill", "rm", "hostname",
];

/// A busybox-static root in `dir`.
fn rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("the tests need busybox-static (/bin/busybox; make deps installs it)");
    for a in APPLETS {
        symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    root
}

/// What `from` gives until `marker` is in it (or its end).
fn read_until(from: &mut impl std::io::Read, marker: &str) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(marker) {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    seen
}

/// Runs `ember run` with `flags`, then `--`, then `cmd`; `stdin` is fed
/// and closed. Fails on crash lines in the guest's console.
fn ember(dir: &Path, flags: &[&str], cmd: &[&[u8]], stdin: &[u8]) -> Output {
    let _slot = BootSlot::acquire();
    let log = dir.join("console.log");
    let mut c = Command::new(common::ember_bin());
    c.arg("run")
        .arg("--kernel")
        .arg(kit().0)
        .arg("--console-log")
        .arg(&log)
        .args(flags)
        .arg("--");
    for a in cmd {
        c.arg(std::ffi::OsStr::from_bytes(a));
    }
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    let console = std::fs::read_to_string(&log).unwrap_or_default();
    let crashes = crash_lines(&console);
    assert!(crashes.is_empty(), "crash lines:\n{}", crashes.join("\n"));
    out
}

fn md5(data: &[u8]) -> String {
    let mut c = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(data).unwrap();
    let out = c.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)[..32].to_string()
}

/// Deterministic bytes of every value.
fn noise(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Streams, arguments, environment, -w, volumes (rw and ro), writes in
/// place, and every escape the guest can try through the share.
#[test]
#[ignore = "boots the guest kit (needs KVM): make test"]
fn one_run_checks_streams_args_env_volumes_and_the_share_boundary() {
    common::require_kvm();
    let dir = common::scratch("container_streams");
    let root = rootfs(&dir);
    let vol = dir.join("vol");
    let ro = dir.join("ro");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::write(ro.join("kept"), b"kept").unwrap();
    let out_data = noise(1 << 20, 1);
    let err_data = noise(1 << 20, 2);
    std::fs::write(vol.join("out.bin"), &out_data).unwrap();
    std::fs::write(vol.join("err.bin"), &err_data).unwrap();
    // Outside every share: what an escape would reach.
    std::fs::write(dir.join("outside"), b"secret").unwrap();
    // Planted in advance: symlinks out of the root, absolute and relative.
    symlink(dir.join("outside"), root.join("abs-link")).unwrap();
    symlink("../outside", root.join("rel-link")).unwrap();
    let script = r#"
        set -u
        r=/vol/report
        wc -l > /vol/lines
        printf '%s\0' "$@" > /vol/args
        printf '%s' "$BIG" | wc -c > /vol/big_env
        printf '%s' "$K" > /vol/env_k
        pwd > /vol/pwd
        hostname > /vol/hostname
        echo in-place > /written
        ( echo nope > /ro/new ) 2> /vol/ro_err; echo "ro_rc=$?" >> $r
        cat /ro/kept > /vol/ro_kept
        # Escapes a guest program can try: .. of the root, links planted
        # in advance, a link made now. (What a hostile guest kernel could
        # send the file server directly is tested on the server itself:
        # src/container/file_server.rs.)
        ls /.. > /vol/dotdot
        cat /abs-link >> $r 2>&1; echo "abs_rc=$?" >> $r
        cat /rel-link >> $r 2>&1; echo "rel_rc=$?" >> $r
        # (The p9 server refuses to create symlinks: EACCES.)
        ln -s /../../../../outside /new-link 2>> $r; cat /new-link >> $r 2>&1; echo "new_rc=$?" >> $r
        cat /vol/out.bin
        cat /vol/err.bin >&2
        exit 7
    "#;
    // Over 128 KiB of arguments and environment in all (each string under
    // Linux's 128 KiB limit for one).
    let big_arg = vec![b'a'; 40 << 10];
    let big_env = format!("BIG={}", "b".repeat(60 << 10));
    let args: Vec<&[u8]> = vec![
        b"/bin/sh",
        b"-c",
        script.as_bytes(),
        b"sh",
        b"two words",
        b"line\nbreak",
        b"",
        "\u{e9}t\u{e9}".as_bytes(),
        b"'\"$HOME\"'",
        &big_arg,
        &big_arg,
        &big_arg,
    ];
    let vol_flag = format!("{}:/vol", vol.display());
    let ro_flag = format!("{}:/ro:ro", ro.display());
    let root_flag = root.display().to_string();
    let out = ember(
        &dir,
        &[
            "--rootfs",
            &root_flag,
            "-v",
            &vol_flag,
            "-v",
            &ro_flag,
            "-w",
            "/work/dir",
            "-e",
            "K=a b\tc",
            "-e",
            &big_env,
            "--hostname",
            "box1",
        ],
        &args,
        b"a\nb\n",
    );
    let report = std::fs::read_to_string(vol.join("report")).unwrap_or_default();
    assert_eq!(
        out.status.code(),
        Some(7),
        "stderr: {}\nreport: {report}",
        String::from_utf8_lossy(&out.stderr[..out.stderr.len().min(2000)])
    );
    assert_eq!(md5(&out.stdout), md5(&out_data), "stdout differs");
    if out.stderr != err_data {
        let extra = out
            .stderr
            .len()
            .checked_sub(err_data.len())
            .map(|n| String::from_utf8_lossy(&out.stderr[..n.min(2000)]).into_owned());
        panic!(
            "stderr differs: {} bytes (want {}); a prefix: {extra:?}; tail: {:?}",
            out.stderr.len(),
            err_data.len(),
            String::from_utf8_lossy(&out.stderr[out.stderr.len().saturating_sub(300)..])
        );
    }
    assert_eq!(md5(&out.stderr), md5(&err_data), "stderr differs");
    let read = |f: &str| std::fs::read(vol.join(f)).unwrap();
    assert_eq!(read("lines"), b"2\n", "stdin's end reached CMD");
    let mut want = Vec::new();
    for a in &args[4..] {
        want.extend_from_slice(a);
        want.push(0);
    }
    assert_eq!(read("args"), want, "arguments round-trip");
    assert_eq!(read("env_k"), b"a b\tc");
    assert_eq!(read("big_env"), format!("{}\n", 60 << 10).as_bytes());
    assert_eq!(read("pwd"), b"/work/dir\n");
    assert_eq!(read("hostname"), b"box1\n");
    assert_eq!(
        std::fs::read(root.join("written")).unwrap(),
        b"in-place\n",
        "a write to the root is in the host directory"
    );
    assert!(report.contains("ro_rc=1"), "{report}");
    assert!(
        String::from_utf8_lossy(&read("ro_err")).contains("Read-only file system"),
        "{:?}",
        String::from_utf8_lossy(&read("ro_err"))
    );
    assert!(!ro.join("new").exists());
    assert_eq!(read("ro_kept"), b"kept");
    let dotdot = String::from_utf8_lossy(&read("dotdot")).into_owned();
    assert!(
        dotdot.contains("bin") && !dotdot.contains("outside"),
        "/.. is the root: {dotdot}"
    );
    for rc in ["abs_rc", "rel_rc", "new_rc"] {
        assert!(report.contains(&format!("{rc}=1")), "{rc}: {report}");
    }
    assert!(
        !report.contains("secret"),
        "an escape read the outside file: {report}"
    );
}

/// `DIR:O`: CMD writes and reads its writes; DIR is unchanged after. This
/// run boots (`--boot`) instead of restoring the template, so both start
/// paths are covered.
#[test]
#[ignore = "boots the guest kit (needs KVM): make test"]
fn an_overlay_root_leaves_the_directory_unchanged() {
    common::require_kvm();
    let dir = common::scratch("container_overlay");
    let root = rootfs(&dir);
    std::fs::write(root.join("file"), b"original").unwrap();
    let root_flag = format!("{}:O", root.display());
    let out = ember(
        &dir,
        &["--boot", "--rootfs", &root_flag],
        &[
            b"/bin/sh",
            b"-c",
            b"echo changed > /file; echo new > /new; rm -f /bin/wc; cat /file /new",
        ],
        b"",
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"changed\nnew\n");
    assert_eq!(std::fs::read(root.join("file")).unwrap(), b"original");
    assert!(!root.join("new").exists());
    assert!(root.join("bin/wc").symlink_metadata().is_ok());
}

/// podman's codes for a CMD that is not there, not executable, or killed.
#[test]
#[ignore = "boots the guest kit (needs KVM): make test"]
fn exit_codes_follow_podman() {
    common::require_kvm();
    let dir = common::scratch("container_codes");
    let root = rootfs(&dir);
    std::fs::write(root.join("not-exec"), b"#!/bin/sh\n").unwrap();
    let root_flag = root.display().to_string();
    let cases: [(&[&[u8]], i32); 3] = [
        (&[b"no-such-command"], 127),
        (&[b"/not-exec"], 126),
        (&[b"/bin/sh", b"-c", b"kill -9 $$"], 137),
    ];
    for (cmd, code) in cases {
        let out = ember(&dir, &["--rootfs", &root_flag], cmd, b"");
        assert_eq!(
            out.status.code(),
            Some(code),
            "{:?}: {}",
            String::from_utf8_lossy(cmd[0]),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `-t` through a real pseudo-terminal: CMD's streams are a terminal of
/// this one's size, a resize here resizes CMD's (SIGWINCH), and Ctrl-C
/// typed here reaches CMD as SIGINT (130).
#[test]
#[ignore = "boots the guest kit (needs KVM): make test"]
fn a_terminal_run_gets_a_tty_its_size_and_ctrl_c() {
    use std::io::Read;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    common::require_kvm();
    let dir = common::scratch("container_tty");
    let root = rootfs(&dir);
    for a in ["tty", "stty", "sleep"] {
        symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    let (mut master, mut slave) = (0, 0);
    let size = libc::winsize {
        ws_row: 30,
        ws_col: 100,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two descriptors.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(r, 0);
    // SAFETY: just created, owned here.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let _slot = BootSlot::acquire();
    let stdio = || Stdio::from(slave.try_clone().unwrap());
    let mut command = Command::new(common::ember_bin());
    // Ember in a session of its own with the pty as its controlling
    // terminal, as in a shell: the kernel sends it SIGWINCH on a resize.
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            if libc::setsid() == -1 || libc::ioctl(0, libc::TIOCSCTTY, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command
        .args(["run", "-t", "--kernel"])
        .arg(kit().0)
        .arg("--rootfs")
        .arg(&root)
        .args([
            "--",
            "/bin/sh",
            "-c",
            "tty; stty size; trap 'stty size; echo resized' WINCH; echo ready; \
             while :; do sleep 100 & wait $!; done; echo not-interrupted",
        ])
        .stdin(stdio())
        .stdout(stdio())
        .stderr(stdio())
        .spawn()
        .unwrap();
    drop(slave);
    let mut file = std::fs::File::from(master);
    let mut seen = read_until(&mut file, "ready");
    let text = String::from_utf8_lossy(&seen).into_owned();
    assert!(text.contains("/dev/pts/0"), "{text:?}");
    assert!(text.contains("30 100"), "the size came through: {text:?}");
    assert!(
        !text.contains("\r\r\n"),
        "output bytes are not rewritten on the host: {text:?}"
    );
    let bigger = libc::winsize {
        ws_row: 40,
        ws_col: 120,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize.
    assert_eq!(
        unsafe { libc::ioctl(file.as_raw_fd(), libc::TIOCSWINSZ, &bigger) },
        0
    );
    let resized = read_until(&mut file, "resized");
    let text = String::from_utf8_lossy(&resized).into_owned();
    assert!(
        text.contains("40 120"),
        "the new size came through: {text:?}"
    );
    seen.extend(resized);
    file.write_all(b"\x03").unwrap();
    let status = child.wait().unwrap();
    // The rest, once the run ended (the host terminal is not read any more).
    // SAFETY: fcntl on a descriptor owned by `file`.
    unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    // What was there is kept when the read ends in EAGAIN or EIO.
    let _ = file.read_to_end(&mut seen);
    assert_eq!(
        status.code(),
        Some(130),
        "{:?}",
        String::from_utf8_lossy(&seen)
    );
    assert!(!String::from_utf8_lossy(&seen).contains("not-interrupted"));
}

/// SIGTERM sent to Ember goes to CMD first: a CMD that traps it exits with
/// its own status.
#[test]
#[ignore = "boots the guest kit (needs KVM): make test"]
fn a_stop_signal_reaches_cmd_first() {
    use std::io::Read;
    common::require_kvm();
    let dir = common::scratch("container_sigterm");
    let root = rootfs(&dir);
    symlink("busybox", root.join("bin/sleep")).unwrap();
    let _slot = BootSlot::acquire();
    let mut child = Command::new(common::ember_bin())
        .args(["run", "--kernel"])
        .arg(kit().0)
        .arg("--rootfs")
        .arg(&root)
        .args([
            "--",
            "/bin/sh",
            "-c",
            "trap 'echo got-term; exit 42' TERM; echo ready; while :; do sleep 1; done",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut seen = read_until(&mut out, "ready");
    // SAFETY: kill on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    out.read_to_end(&mut seen).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(42),
        "{:?}",
        String::from_utf8_lossy(&seen)
    );
    assert!(String::from_utf8_lossy(&seen).contains("got-term"));
}

/// The library's streams: CMD on the caller's pipes, its status after
/// `wait` (a restored template, like the CLI's default).
#[test]
#[ignore = "boots the guest kit (needs KVM): make test"]
fn the_library_runs_cmd_on_its_own_pipes() {
    use ember::container::{start_with, ContainerConfig, ContainerEnd, ContainerStdio, StartMode};
    use std::io::Read;
    use std::os::fd::{FromRawFd, OwnedFd};
    common::require_kvm();
    let dir = common::scratch("container_library");
    let root = rootfs(&dir);
    let pipe = || {
        let mut fds = [0; 2];
        // SAFETY: fds has room for two descriptors.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: just created, owned here.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    };
    let ((in_r, in_w), (out_r, out_w), (err_r, err_w)) = (pipe(), pipe(), pipe());
    let mut config = ember::VmConfig::new(kit().0);
    config.console = ember::ConsoleMode::Scripted { echo: false };
    config.container = Some(ContainerConfig::new(
        &root,
        vec![
            "/bin/sh".into(),
            "-c".into(),
            "cat; echo to-stderr >&2; exit 3".into(),
        ],
    ));
    let _slot = BootSlot::acquire();
    let stdio = ContainerStdio {
        stdin: in_r,
        stdout: out_w,
        stderr: err_w,
    };
    let mut vm = start_with(&config, StartMode::Template, stdio).unwrap();
    let mut input = std::fs::File::from(in_w);
    input.write_all(b"from the library\n").unwrap();
    drop(input);
    let reader = |fd: OwnedFd| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            std::fs::File::from(fd).read_to_end(&mut v).unwrap();
            v
        })
    };
    let (out, err) = (reader(out_r), reader(err_r));
    let exit = vm.wait();
    assert_eq!(
        vm.container_end(),
        Some(ContainerEnd::Exited(3)),
        "{exit:?}"
    );
    drop(vm);
    assert_eq!(out.join().unwrap(), b"from the library\n");
    assert_eq!(err.join().unwrap(), b"to-stderr\n");
}
