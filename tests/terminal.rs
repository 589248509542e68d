//! The interactive console on a real pseudo-terminal: raw mode while the
//! guest runs, Ctrl-A x quits, and the terminal's settings come back
//! exactly on every way out (quit key, SIGTERM).

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct Pty {
    master: File,
    slave: OwnedFd,
}

fn open_pty() -> Pty {
    let (mut m, mut s) = (0, 0);
    // SAFETY: openpty fills two descriptors; the rest may be null.
    let r = unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "openpty");
    // SAFETY: both descriptors were just opened and are owned here.
    unsafe {
        Pty {
            master: File::from_raw_fd(m),
            slave: OwnedFd::from_raw_fd(s),
        }
    }
}

fn termios(fd: &OwnedFd) -> libc::termios {
    // SAFETY: plain data filled by tcgetattr.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor and pointer.
    assert_eq!(unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut t) }, 0);
    t
}

fn same(a: &libc::termios, b: &libc::termios) -> bool {
    a.c_iflag == b.c_iflag
        && a.c_oflag == b.c_oflag
        && a.c_cflag == b.c_cflag
        && a.c_lflag == b.c_lflag
        && a.c_cc == b.c_cc
}

fn spawn_on(pty: &Pty, kernel: &str) -> Child {
    let io = |fd: &OwnedFd| Stdio::from(fd.try_clone().unwrap());
    Command::new(ember_bin())
        .args(["run", "--kernel", kernel])
        .stdin(io(&pty.slave))
        .stdout(io(&pty.slave))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn read_until(master: &mut File, needle: &str) {
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = [0u8; 256];
    while !text(&seen).contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in {:?}",
            text(&seen)
        );
        let n = master.read(&mut buf).unwrap();
        seen.extend_from_slice(&buf[..n]);
    }
}

fn wait(child: &mut Child) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code().unwrap_or(-1);
        }
        assert!(Instant::now() < deadline, "ember did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn idle_guest(test: &str) -> String {
    let dir = scratch(test);
    let asm = format!(
        "{}\n{}",
        include_str!("guests/prelude.S"),
        include_str!("guests/idle.S")
    );
    build_elf_guest(&dir, "idle", &asm)
        .to_str()
        .unwrap()
        .to_string()
}

#[test]
#[ignore = "needs /dev/kvm; make test runs it"]
fn ctrl_a_x_quits_with_0_and_restores_the_terminal() {
    require_kvm();
    let kernel = idle_guest("tty_quit");
    let mut pty = open_pty();
    let before = termios(&pty.slave);
    assert_ne!(before.c_lflag & libc::ICANON, 0, "a new pty starts cooked");
    let mut child = spawn_on(&pty, &kernel);
    read_until(&mut pty.master, "ready");
    let during = termios(&pty.slave);
    assert_eq!(
        during.c_lflag & (libc::ICANON | libc::ECHO | libc::ISIG),
        0,
        "raw while running"
    );
    // Ctrl-C goes to the guest, not to Ember.
    pty.master.write_all(b"\x03").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        child.try_wait().unwrap().is_none(),
        "Ctrl-C must not end Ember"
    );
    pty.master.write_all(b"\x01x").unwrap();
    assert_eq!(wait(&mut child), 0);
    assert!(
        same(&before, &termios(&pty.slave)),
        "terminal settings restored"
    );
}

#[test]
#[ignore = "needs /dev/kvm; make test runs it"]
fn sigterm_exits_143_and_restores_the_terminal() {
    require_kvm();
    let kernel = idle_guest("tty_sigterm");
    let mut pty = open_pty();
    let before = termios(&pty.slave);
    let mut child = spawn_on(&pty, &kernel);
    read_until(&mut pty.master, "ready");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(wait(&mut child), 143);
    assert!(
        same(&before, &termios(&pty.slave)),
        "terminal settings restored"
    );
}
