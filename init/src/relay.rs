//! The stream: CMD's stdin, stdout and stderr over the `ember.stream`
//! port, and its end.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use ember_guest_proto::{
    encode, Decoder, FromGuest, Spec, ToGuest, MAX_CHUNK, MAX_SPEC, PORT_NAME,
};

use crate::check;
use crate::spawn::Child;

/// How long the port may take to appear (its control messages are handled
/// after the driver probes, and this host may emulate the guest kernel).
const PORT_WAIT: Duration = Duration::from_secs(120);
/// Stdin bytes the init holds for CMD before it stops reading the port.
const STDIN_HELD: usize = 256 * 1024;

fn find_port() -> Option<String> {
    let dir = std::fs::read_dir("/sys/class/virtio-ports").ok()?;
    dir.flatten().find_map(|e| {
        let name = std::fs::read_to_string(e.path().join("name")).ok()?;
        (name.trim_end() == PORT_NAME).then(|| e.file_name().to_string_lossy().into_owned())
    })
}

fn poll_one(fd: RawFd, events: i16, timeout_ms: i32) -> i16 {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one pollfd, valid for the call.
    let r = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    if r > 0 {
        p.revents
    } else {
        0
    }
}

/// Mounts what finding the port needs, waits for the port and for the
/// host to open its end, and opens it.
pub(crate) fn open_port() -> Result<File, String> {
    crate::mounts::early()?;
    let deadline = Instant::now() + PORT_WAIT;
    let dev = loop {
        if let Some(dev) = find_port() {
            break dev;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no virtio-console port named {PORT_NAME} after {PORT_WAIT:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let port = OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/dev/{dev}"))
        .map_err(|e| format!("cannot open /dev/{dev}: {e}"))?;
    // Until the host's end is open a read gives 0 (end of file) and
    // poll reports HUP.
    while poll_one(port.as_raw_fd(), libc::POLLOUT, 10) & libc::POLLHUP != 0 {
        if Instant::now() > deadline {
            return Err(format!("the host never opened port {PORT_NAME}"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(port)
}

/// The spec, and what came after it on the stream.
pub(crate) struct Received {
    pub spec: Spec,
    decoder: Decoder,
    early: Vec<ToGuest>,
}

/// Says Ready and reads the spec.
pub(crate) fn receive_spec(port: &File) -> Result<Received, String> {
    let mut p = port.try_clone().map_err(|e| format!("port: {e}"))?;
    p.write_all(&encode(&FromGuest::Ready))
        .map_err(|e| format!("port write: {e}"))?;
    let mut decoder = Decoder::new();
    let mut bytes = Vec::new();
    let mut early = Vec::new();
    let mut whole = false;
    let mut buf = vec![0u8; 64 * 1024];
    while !whole {
        let n = p.read(&mut buf).map_err(|e| format!("port read: {e}"))?;
        if n == 0 {
            return Err("the host closed the stream before the spec came".into());
        }
        let mut too_big = false;
        decoder
            .feed(&buf[..n], |m: ToGuest| match m {
                ToGuest::Spec(c) if !whole => {
                    too_big |= bytes.len() + c.len() > MAX_SPEC;
                    if !too_big {
                        bytes.extend_from_slice(&c);
                    }
                }
                ToGuest::SpecEnd if !whole => whole = true,
                other => early.push(other),
            })
            .map_err(|e| format!("the host's stream is broken: {e:?}"))?;
        if too_big {
            return Err(format!("the spec is over {MAX_SPEC} bytes"));
        }
    }
    let spec =
        postcard::from_bytes(&bytes).map_err(|e| format!("the spec does not decode: {e}"))?;
    Ok(Received {
        spec,
        decoder,
        early,
    })
}

/// SIGCHLD as a descriptor (blocked first, so none is lost).
pub(crate) fn child_signals() -> Result<OwnedFd, String> {
    // SAFETY: a zeroed sigset is valid input for sigemptyset; the fd is new.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        check(
            "block SIGCHLD",
            libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()),
        )?;
        let fd = check(
            "signalfd",
            libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK),
        )?;
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// podman's code for a wait status.
fn exit_code(status: libc::c_int) -> u8 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status) as u8
    } else if libc::WIFSIGNALED(status) {
        128u8.wrapping_add(libc::WTERMSIG(status) as u8)
    } else {
        255
    }
}

fn read_some(fd: RawFd, buf: &mut [u8]) -> isize {
    // SAFETY: buf is valid for buf.len() bytes.
    unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) }
}

/// Relays until CMD has ended and its output is drained; returns its
/// exit code. Orphans are reaped as they end; once CMD ends, whatever is
/// left is killed (a container ends with its command).
pub(crate) fn relay(
    port: &File,
    mut child: Child,
    sigchld: OwnedFd,
    got: Received,
) -> Result<u8, String> {
    let mut out = port.try_clone().map_err(|e| format!("port: {e}"))?;
    let mut input = port.try_clone().map_err(|e| format!("port: {e}"))?;
    if let Some(s) = &child.stdin {
        // SAFETY: fcntl on a descriptor this function owns.
        unsafe { libc::fcntl(s.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    }
    let Received {
        mut decoder, early, ..
    } = got;
    let mut pending: Vec<u8> = Vec::new();
    let mut stdin_eof = false;
    let mut held = early;
    let mut status: Option<u8> = None;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if status.is_some() && child.stdout.is_none() && child.stderr.is_none() {
            return Ok(status.unwrap_or(255));
        }
        let mut fds = Vec::with_capacity(5);
        let want_port = pending.len() < STDIN_HELD;
        fds.push(libc::pollfd {
            fd: if want_port { port.as_raw_fd() } else { -1 },
            events: libc::POLLIN,
            revents: 0,
        });
        for f in [&child.stdout, &child.stderr] {
            fds.push(libc::pollfd {
                fd: f.as_ref().map_or(-1, |f| f.as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        fds.push(libc::pollfd {
            fd: match (&child.stdin, pending.is_empty()) {
                (Some(s), false) => s.as_raw_fd(),
                _ => -1,
            },
            events: libc::POLLOUT,
            revents: 0,
        });
        fds.push(libc::pollfd {
            fd: sigchld.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        // Messages that came with the spec are handled without waiting.
        let timeout = if held.is_empty() { -1 } else { 0 };
        // SAFETY: fds is a valid array of fds.len() pollfds.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if r == -1 {
            continue;
        }
        let mut messages = std::mem::take(&mut held);
        if fds[0].revents != 0 {
            let n = input
                .read(&mut buf)
                .map_err(|e| format!("port read: {e}"))?;
            if n == 0 {
                return Err("the host closed the stream".into());
            }
            decoder
                .feed(&buf[..n], |m: ToGuest| messages.push(m))
                .map_err(|e| format!("the host's stream is broken: {e:?}"))?;
        }
        for m in messages {
            match m {
                ToGuest::Stdin(d) if child.stdin.is_some() => pending.extend_from_slice(&d),
                ToGuest::StdinEof => stdin_eof = true,
                // SAFETY: kill takes no pointers.
                ToGuest::Signal(s) => unsafe {
                    libc::kill(child.pid, s);
                },
                ToGuest::Resize(rows, cols) if child.tty => {
                    if let Some(master) = &child.stdout {
                        crate::spawn::resize(master.as_raw_fd(), rows, cols);
                    }
                }
                ToGuest::Stdin(_)
                | ToGuest::Done
                | ToGuest::Spec(_)
                | ToGuest::SpecEnd
                | ToGuest::Resize(..) => {}
            }
        }
        for (i, stream) in [(1, &mut child.stdout), (2, &mut child.stderr)] {
            if fds[i].revents == 0 {
                continue;
            }
            let Some(fd) = stream.as_ref().map(|f| f.as_raw_fd()) else {
                continue;
            };
            let n = read_some(fd, &mut buf[..MAX_CHUNK]);
            if n <= 0 {
                if n == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                    *stream = None;
                }
                continue;
            }
            let data = buf[..n as usize].to_vec();
            let m = if i == 1 {
                FromGuest::Stdout(data)
            } else {
                FromGuest::Stderr(data)
            };
            out.write_all(&encode(&m))
                .map_err(|e| format!("port write: {e}"))?;
        }
        if let Some(s) = &child.stdin {
            if !pending.is_empty() {
                // SAFETY: pending is valid for its length.
                let n =
                    unsafe { libc::write(s.as_raw_fd(), pending.as_ptr().cast(), pending.len()) };
                if n > 0 {
                    pending.drain(..n as usize);
                } else if std::io::Error::last_os_error().raw_os_error() == Some(libc::EPIPE) {
                    // CMD closed its stdin: the rest has nowhere to go.
                    pending.clear();
                    child.stdin = None;
                }
            }
        }
        if stdin_eof && pending.is_empty() {
            if child.tty {
                // A terminal's end of input is its EOF character (closing
                // the master would hang the session up).
                pending.push(4);
                stdin_eof = false;
                child.tty = false;
            } else {
                child.stdin = None;
            }
        }
        if fds[4].revents != 0 {
            let mut info = [0u8; 128];
            let _ = read_some(sigchld.as_raw_fd(), &mut info);
            loop {
                let mut st = 0;
                // SAFETY: st is written by waitpid.
                let pid = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
                if pid <= 0 {
                    break;
                }
                if pid == child.pid {
                    status = Some(exit_code(st));
                    // SAFETY: kill takes no pointers; -1 spares the caller.
                    unsafe { libc::kill(-1, libc::SIGKILL) };
                    child.stdin = None;
                }
            }
        }
    }
}

/// Reads the stream until the host says Done (or goes away).
pub(crate) fn wait_done(port: &mut File) {
    let mut decoder = Decoder::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match port.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut done = false;
        if decoder
            .feed(&buf[..n], |m: ToGuest| done |= m == ToGuest::Done)
            .is_err()
            || done
        {
            return;
        }
    }
}
