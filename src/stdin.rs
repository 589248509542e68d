//! Standard input, read without ever blocking the thread that reads it.
//!
//! A pipe, FIFO or terminal is reopened through `/proc/self/fd/0`: that
//! gives Ember a file description of its own, set O_NONBLOCK, so the flag
//! never leaks to the parent's description (a shell or harness sharing the
//! same pipe or terminal sees no change, even after a SIGKILL). Where the
//! reopen is refused (a socket, a terminal of another user), reads are
//! guarded instead: `recv(MSG_DONTWAIT)` on a socket, otherwise only the
//! byte count FIONREAD reports as waiting. Regular files never block.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};

/// How reads are made non-blocking.
#[derive(Debug)]
enum Access {
    /// A description of Ember's own, O_NONBLOCK.
    Own(OwnedFd),
    /// A socket on fd 0: `recv` with MSG_DONTWAIT.
    Socket,
    /// fd 0 itself, read no further than FIONREAD says is there.
    Guarded { regular: bool },
}

/// What one read gave.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    Data(usize),
    /// Nothing waiting now; try again when readable.
    Nothing,
    /// End of input (or an error that ends it).
    Eof,
}

#[derive(Debug)]
pub struct Stdin {
    access: Access,
    /// The descriptor Ember was given (read directly unless `Own`).
    fd0: RawFd,
    pollable: bool,
    tty: bool,
}

impl Stdin {
    /// Opens fd `fd` (normally 0) for non-blocking reads.
    pub fn open(fd: RawFd) -> Self {
        let tty = crate::terminal::is_tty(fd);
        let file_type = std::fs::metadata(format!("/proc/self/fd/{fd}")).map(|m| m.file_type());
        let access = match &file_type {
            Ok(t) if t.is_fifo() || t.is_char_device() => match reopen(fd) {
                Ok(own) => Access::Own(own),
                Err(_) => Access::Guarded { regular: false },
            },
            Ok(t) if t.is_socket() => Access::Socket,
            Ok(t) => Access::Guarded {
                regular: t.is_file() || t.is_block_device(),
            },
            Err(_) => Access::Guarded { regular: false },
        };
        let pollable = is_pollable(match &access {
            Access::Own(own) => own.as_raw_fd(),
            _ => fd,
        });
        let this = Self {
            access,
            fd0: fd,
            pollable,
            tty,
        };
        log::debug!("stdin: {this:?}");
        this
    }

    /// The descriptor to watch for readability.
    pub fn fd(&self) -> RawFd {
        match &self.access {
            Access::Own(own) => own.as_raw_fd(),
            _ => self.fd0,
        }
    }

    /// Whether epoll can watch it (regular files and /dev/null cannot:
    /// they are always "readable" and are read when the guest wants input).
    pub fn pollable(&self) -> bool {
        self.pollable
    }

    pub fn is_tty(&self) -> bool {
        self.tty
    }

    /// Reads what is waiting, at most `buf.len()` bytes, never blocking.
    pub fn read(&self, buf: &mut [u8]) -> ReadOutcome {
        if buf.is_empty() {
            return ReadOutcome::Nothing;
        }
        let fd = self.fd();
        let n = match self.access {
            // SAFETY: reads at most buf.len() bytes into buf.
            Access::Own(_) => unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) },
            // SAFETY: as above; MSG_DONTWAIT makes this one call non-blocking.
            Access::Socket => unsafe {
                libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT)
            },
            Access::Guarded { regular } => {
                let waiting = match bytes_waiting(fd) {
                    Ok(n) => n,
                    Err(e) => return read_failed(e),
                };
                if waiting == 0 {
                    // A regular file at its end; anything else that polled
                    // readable with nothing waiting has hung up.
                    return if regular || self.pollable {
                        ReadOutcome::Eof
                    } else {
                        ReadOutcome::Nothing
                    };
                }
                let len = buf.len().min(waiting);
                // SAFETY: reads at most len <= buf.len() bytes into buf.
                unsafe { libc::read(fd, buf.as_mut_ptr().cast(), len) }
            }
        };
        match n {
            0 => ReadOutcome::Eof,
            n if n > 0 => ReadOutcome::Data(n as usize),
            _ => {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => ReadOutcome::Nothing,
                    _ => read_failed(e),
                }
            }
        }
    }
}

fn read_failed(e: io::Error) -> ReadOutcome {
    log::warn!("console: reading stdin failed, input stops: {e}");
    ReadOutcome::Eof
}

/// A second, O_NONBLOCK description of the pipe, FIFO or terminal on `fd`.
fn reopen(fd: RawFd) -> io::Result<OwnedFd> {
    let f: File = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(format!("/proc/self/fd/{fd}"))?;
    Ok(f.into())
}

fn bytes_waiting(fd: RawFd) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n.max(0) as usize)
}

/// Whether epoll accepts this descriptor (regular files and /dev/null
/// are refused with EPERM).
pub fn is_pollable(fd: RawFd) -> bool {
    // SAFETY: a throwaway epoll instance, closed below.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return false;
    }
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: 0,
    };
    // SAFETY: valid epoll fd and event pointer.
    let ok = unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) } == 0;
    // SAFETY: closing the descriptor created above.
    unsafe { libc::close(ep) };
    ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn pipe() -> (File, File) {
        let mut fds = [0; 2];
        // SAFETY: fds has room for two descriptors.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both descriptors are fresh and owned here.
        unsafe {
            use std::os::fd::FromRawFd;
            (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1]))
        }
    }

    fn flags(fd: RawFd) -> i32 {
        // SAFETY: F_GETFL only reads the descriptor's flags.
        unsafe { libc::fcntl(fd, libc::F_GETFL) }
    }

    #[test]
    fn an_idle_pipe_reads_nothing_without_blocking_and_keeps_the_parents_flags() {
        let (r, mut w) = pipe();
        let stdin = Stdin::open(r.as_raw_fd());
        assert!(stdin.pollable());
        assert_ne!(stdin.fd(), r.as_raw_fd(), "a description of Ember's own");
        let mut buf = [0u8; 64];
        assert_eq!(stdin.read(&mut buf), ReadOutcome::Nothing);
        assert_eq!(
            flags(r.as_raw_fd()) & libc::O_NONBLOCK,
            0,
            "shared description untouched"
        );
        w.write_all(b"hello").unwrap();
        assert_eq!(stdin.read(&mut buf), ReadOutcome::Data(5));
        assert_eq!(&buf[..5], b"hello");
        drop(w);
        assert_eq!(stdin.read(&mut buf), ReadOutcome::Eof);
    }

    #[test]
    fn a_socket_is_read_with_dontwait() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let stdin = Stdin::open(a.as_raw_fd());
        assert!(matches!(stdin.access, Access::Socket), "{stdin:?}");
        let mut buf = [0u8; 8];
        assert_eq!(stdin.read(&mut buf), ReadOutcome::Nothing);
        (&b).write_all(b"x").unwrap();
        assert_eq!(stdin.read(&mut buf), ReadOutcome::Data(1));
        b.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(stdin.read(&mut buf), ReadOutcome::Eof);
    }

    #[test]
    fn a_regular_file_is_read_to_its_end() {
        let f = File::open(std::env::current_exe().unwrap()).unwrap();
        let stdin = Stdin::open(f.as_raw_fd());
        assert!(!stdin.pollable());
        let mut buf = [0u8; 4];
        assert_eq!(stdin.read(&mut buf), ReadOutcome::Data(4));
        assert_eq!(&buf, b"\x7fELF");
    }

    #[test]
    fn dev_null_is_an_immediate_end() {
        let f = File::open("/dev/null").unwrap();
        let stdin = Stdin::open(f.as_raw_fd());
        assert!(!stdin.pollable());
        assert_eq!(stdin.read(&mut [0u8; 4]), ReadOutcome::Eof);
    }
}
