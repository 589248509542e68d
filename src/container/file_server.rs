//! The 9P file server of one share, in a process of its own confined to
//! the shared directory.
//!
//! The `p9` crate (crosvm's server) resolves every name the guest sends
//! relative to descriptors it holds, but it does not itself stop `..` at
//! the share's root or refuse device nodes: crosvm runs it in a jail. So
//! does Ember: a forked child makes a mount namespace of its own, binds
//! the directory onto itself `nodev,nosuid` (and `ro` for a read-only
//! share, so the host kernel refuses writes with EROFS whatever the guest
//! kernel does), chroots into it and only then serves. In a chroot, `..`
//! of the root is the root, and an absolute symlink planted in the share
//! resolves inside it; device nodes cannot be opened; the process holds no
//! descriptor of Ember's but its socket (and /proc, which the server
//! needs to reopen its own descriptors). Requests and replies cross a
//! SOCK_SEQPACKET pair, one message each.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use ember_devices::virtio::p9::{P9Backend, MAX_REQUEST};

/// Largest reply (the server's msize is 64 KiB + 24).
const MAX_REPLY: usize = 128 * 1024;
/// The child's report that it serves. Zero-length messages are never
/// sent: a read of 0 means the peer is gone.
const READY: &[u8] = b"+";
/// The child's reply to a request it could not decode (a real reply is
/// at least 7 bytes).
const UNDECODABLE: &[u8] = b"?";

/// A running file server; dropping it kills and reaps the process.
pub(crate) struct FileServer {
    pid: libc::pid_t,
    sock: OwnedFd,
    dir: PathBuf,
}

fn last_error<T>() -> io::Result<T> {
    Err(io::Error::last_os_error())
}

impl FileServer {
    /// Starts serving `dir` (read-only on the host if `read_only`); an
    /// error says which step of the confinement failed.
    pub(crate) fn start(dir: &Path, read_only: bool) -> io::Result<Self> {
        let dir = std::fs::canonicalize(dir)?;
        let root = CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
        let mut fds = [0; 2];
        // SAFETY: fds has room for two descriptors.
        if unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        } == -1
        {
            return last_error();
        }
        // SAFETY: socketpair just returned both, owned by nobody else.
        let (ours, theirs) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the child runs only `serve`, which never returns; glibc's
        // fork leaves malloc usable in the child.
        let pid = unsafe { libc::fork() };
        if pid == -1 {
            return last_error();
        }
        if pid == 0 {
            serve(theirs.as_raw_fd(), &root, read_only, parent);
        }
        drop(theirs);
        let server = Self {
            pid,
            sock: ours,
            dir,
        };
        // The child's first message: READY when it serves, else why not.
        let first = server.recv()?;
        if first != READY {
            return Err(io::Error::other(
                String::from_utf8_lossy(&first).into_owned(),
            ));
        }
        Ok(server)
    }

    fn recv(&self) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; MAX_REPLY];
        loop {
            // SAFETY: buf is valid for its length.
            let n =
                unsafe { libc::read(self.sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n >= 0 {
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the file server of {} ended", self.dir.display()),
                    ));
                }
                buf.truncate(n as usize);
                return Ok(buf);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

impl P9Backend for FileServer {
    fn request(&mut self, request: &[u8]) -> io::Result<Vec<u8>> {
        if request.len() > MAX_REQUEST {
            return Err(io::Error::other("request too large"));
        }
        // SAFETY: request is valid for its length.
        let n = unsafe {
            libc::write(
                self.sock.as_raw_fd(),
                request.as_ptr().cast(),
                request.len(),
            )
        };
        if n != request.len() as isize {
            return last_error();
        }
        let reply = self.recv()?;
        if reply == UNDECODABLE {
            return Err(io::Error::other("a request the file server cannot decode"));
        }
        Ok(reply)
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        // Our end closed, the server's read gives 0 and it exits (no
        // signal: Ember's threads may not send any). One stuck in a slow
        // file system call is left to finish it (it dies with Ember at the
        // latest: PR_SET_PDEATHSIG).
        // SAFETY: shutdown on our socket; waitpid on our own child.
        unsafe { libc::shutdown(self.sock.as_raw_fd(), libc::SHUT_RDWR) };
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(1);
        loop {
            let mut status = 0;
            // SAFETY: status is written by waitpid.
            let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
            if r != 0 {
                return;
            }
            if std::time::Instant::now() > give_up {
                log::warn!(
                    "the file server of {} has not ended; leaving it",
                    self.dir.display()
                );
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

/// Sends `msg` on `fd` (the child's setup report).
fn say(fd: RawFd, msg: &[u8]) {
    // SAFETY: msg is valid for its length.
    unsafe { libc::write(fd, msg.as_ptr().cast(), msg.len()) };
}

/// The child: confine, then serve until the socket closes. Never returns.
fn serve(sock: RawFd, root: &CString, read_only: bool, parent: libc::pid_t) -> ! {
    let fail = |step: &str| -> ! {
        let e = io::Error::last_os_error();
        say(sock, format!("{step}: {e}").as_bytes());
        // SAFETY: _exit ends the child without running Ember's destructors.
        unsafe { libc::_exit(1) }
    };
    // SAFETY: plain system calls on values prepared before the fork.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 || libc::getppid() != parent {
            libc::_exit(1);
        }
        libc::prctl(libc::PR_SET_NAME, c"ember-9p".as_ptr());
        // Nothing of Ember's but the socket (as fd 3) and /dev/null as 0-2.
        if libc::dup2(sock, 3) == -1 {
            fail("dup2");
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
        }
        libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32);
    }
    let sock = 3;
    let mut flags = libc::MS_NODEV | libc::MS_NOSUID;
    if read_only {
        flags |= libc::MS_RDONLY;
    }
    // SAFETY: NUL-terminated strings that outlive each call.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) == -1 {
            fail("unshare the mount namespace");
        }
        if libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) == -1
        {
            fail("make mounts private");
        }
        if libc::mount(
            root.as_ptr(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        ) == -1
        {
            fail("bind the share");
        }
        if libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT | libc::MS_BIND | flags,
            std::ptr::null(),
        ) == -1
        {
            fail("remount the share nodev,nosuid");
        }
    }
    // The server opens /proc now, before the chroot hides it.
    let mut server = match p9::Server::new(Path::new("/"), Default::default(), Default::default()) {
        Ok(s) => s,
        Err(_) => fail("start the 9P server"),
    };
    // SAFETY: NUL-terminated strings.
    unsafe {
        if libc::chroot(root.as_ptr()) == -1 {
            fail("chroot into the share");
        }
        if libc::chdir(c"/".as_ptr()) == -1 {
            fail("chdir /");
        }
    }
    say(sock, READY);
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut reply = Vec::with_capacity(MAX_REPLY);
    loop {
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::read(sock, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            if n == -1 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // SAFETY: ends the child.
            unsafe { libc::_exit(0) };
        }
        reply.clear();
        // A request the server cannot even decode gets an empty reply.
        let _ = server.handle_message(&mut &buf[..n as usize], &mut reply);
        say(
            sock,
            if reply.is_empty() {
                UNDECODABLE
            } else {
                &reply
            },
        );
    }
}

#[cfg(test)]
mod tests {
    //! A hostile client: raw 9P2000.L messages a guest kernel could send,
    //! whatever Linux's own client would.
    use super::*;

    const NOFID: u32 = u32::MAX;

    fn string(s: &str) -> Vec<u8> {
        let mut v = (s.len() as u16).to_le_bytes().to_vec();
        v.extend_from_slice(s.as_bytes());
        v
    }

    fn msg(ty: u8, body: &[u8]) -> Vec<u8> {
        let mut v = ((7 + body.len()) as u32).to_le_bytes().to_vec();
        v.push(ty);
        v.extend_from_slice(&1u16.to_le_bytes());
        v.extend_from_slice(body);
        v
    }

    /// (reply type, body).
    fn call(s: &mut FileServer, ty: u8, body: &[u8]) -> (u8, Vec<u8>) {
        let r = s.request(&msg(ty, body)).unwrap();
        (r[4], r[7..].to_vec())
    }

    fn errno(reply: &(u8, Vec<u8>)) -> Option<u32> {
        (reply.0 == 7).then(|| u32::from_le_bytes(reply.1[..4].try_into().unwrap()))
    }

    fn walk(s: &mut FileServer, fid: u32, newfid: u32, names: &[&str]) -> (u8, Vec<u8>) {
        let mut b = fid.to_le_bytes().to_vec();
        b.extend_from_slice(&newfid.to_le_bytes());
        b.extend_from_slice(&(names.len() as u16).to_le_bytes());
        for n in names {
            b.extend(string(n));
        }
        call(s, 110, &b)
    }

    fn lopen(s: &mut FileServer, fid: u32, flags: u32) -> (u8, Vec<u8>) {
        let mut b = fid.to_le_bytes().to_vec();
        b.extend_from_slice(&flags.to_le_bytes());
        call(s, 12, &b)
    }

    fn lcreate(s: &mut FileServer, fid: u32, name: &str) -> (u8, Vec<u8>) {
        let mut b = fid.to_le_bytes().to_vec();
        b.extend(string(name));
        b.extend_from_slice(&(libc::O_RDWR as u32).to_le_bytes());
        b.extend_from_slice(&0o644u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        call(s, 14, &b)
    }

    /// Version and attach fid 0; returns the root's qid.
    fn attach(s: &mut FileServer) -> Vec<u8> {
        let mut b = (64u32 * 1024 + 24).to_le_bytes().to_vec();
        b.extend(string("9P2000.L"));
        assert_eq!(call(s, 100, &b).0, 101);
        let mut b = 0u32.to_le_bytes().to_vec();
        b.extend_from_slice(&NOFID.to_le_bytes());
        b.extend(string("root"));
        b.extend(string(""));
        b.extend_from_slice(&0u32.to_le_bytes());
        let (ty, qid) = call(s, 104, &b);
        assert_eq!(ty, 105, "Rattach");
        qid
    }

    fn require_root() {
        // SAFETY: getuid has no preconditions.
        assert_eq!(
            unsafe { libc::getuid() },
            0,
            "this test needs root (a mount namespace)"
        );
    }

    fn share(name: &str) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("ember-9p-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let share = dir.join("share");
        std::fs::create_dir_all(&share).unwrap();
        std::fs::write(dir.join("outside"), b"secret").unwrap();
        std::fs::write(share.join("f"), b"inside").unwrap();
        std::os::unix::fs::symlink("/etc", share.join("abs")).unwrap();
        std::os::unix::fs::symlink("../outside", share.join("rel")).unwrap();
        (dir, share)
    }

    #[test]
    #[ignore = "needs root (a mount namespace of its own): make test runs it"]
    fn a_hostile_client_stays_inside_the_share() {
        require_root();
        let (dir, share) = share("boundary");
        let node = CString::new(share.join("null").as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(
            unsafe { libc::mknod(node.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) },
            0
        );
        let mut s = FileServer::start(&share, false).unwrap();
        let root = attach(&mut s);
        // `..` of the root is the root.
        let up = walk(&mut s, 0, 1, &[".."]);
        assert_eq!(up.0, 111, "Rwalk");
        assert_eq!(&up.1[2..15], &root[..13], "/.. is /");
        // Up and out by name: never reaches the outside file.
        let out = walk(&mut s, 0, 2, &["..", "..", "outside"]);
        assert!(
            out.0 == 7 || u16::from_le_bytes([out.1[0], out.1[1]]) < 3,
            "{out:?}"
        );
        // A name with a slash in it, out of the share.
        let slash = walk(&mut s, 0, 3, &["../outside"]);
        assert_eq!(errno(&slash), Some(libc::ENOENT as u32), "{slash:?}");
        // Symlinks are never followed by the server.
        for (fid, names) in [(4, &["abs", "passwd"][..]), (5, &["rel"][..])] {
            let w = walk(&mut s, 0, fid, names);
            if w.0 == 111 && names.len() == 1 {
                assert_ne!(
                    lopen(&mut s, fid, libc::O_RDONLY as u32).0,
                    13,
                    "opened a symlink"
                );
            } else {
                assert!(
                    w.0 == 7 || u16::from_le_bytes([w.1[0], w.1[1]]) < 2,
                    "{w:?}"
                );
            }
        }
        // A device node planted in the share cannot be opened: nodev.
        assert_eq!(walk(&mut s, 0, 6, &["null"]).0, 111);
        assert_eq!(
            errno(&lopen(&mut s, 6, libc::O_RDWR as u32)),
            Some(libc::EACCES as u32)
        );
        // What is inside is served.
        assert_eq!(walk(&mut s, 0, 7, &["f"]).0, 111);
        assert_eq!(lopen(&mut s, 7, libc::O_RDONLY as u32).0, 13, "Rlopen");
        drop(s);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    #[ignore = "needs root (a mount namespace of its own): make test runs it"]
    fn a_read_only_share_refuses_writes_on_the_host() {
        require_root();
        let (dir, share) = share("ro");
        let mut s = FileServer::start(&share, true).unwrap();
        attach(&mut s);
        assert_eq!(walk(&mut s, 0, 1, &[]).0, 111);
        assert_eq!(errno(&lcreate(&mut s, 1, "new")), Some(libc::EROFS as u32));
        assert_eq!(walk(&mut s, 0, 2, &["f"]).0, 111);
        assert_eq!(
            errno(&lopen(&mut s, 2, libc::O_RDWR as u32)),
            Some(libc::EROFS as u32)
        );
        assert!(!share.join("new").exists());
        drop(s);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_missing_directory_is_named() {
        let e = FileServer::start(Path::new("/nonexistent/ember-share"), false)
            .err()
            .expect("no such directory");
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
