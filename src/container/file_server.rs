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

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
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
    /// A reply did not come in time: a late one would answer the wrong
    /// request, so every request fails from then on.
    broken: bool,
}

/// How long the server may take to answer one request (a slow network
/// file system, a FIFO a guest opened): past it the share fails, the VM
/// and its teardown go on.
const REPLY_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

fn last_error<T>() -> io::Result<T> {
    Err(io::Error::last_os_error())
}

impl FileServer {
    /// Starts serving `dir` (read-only on the host if `read_only`); an
    /// error says which step of the confinement failed.
    pub(crate) fn start(dir: &Path, read_only: bool) -> io::Result<Self> {
        let dir = std::fs::canonicalize(dir)?;
        // Opened once: the child confines itself to this very directory,
        // never to whatever a path names by then.
        let dir_fd: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&dir)?
            .into();
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
            serve(theirs.as_raw_fd(), dir_fd.as_raw_fd(), read_only, parent);
        }
        drop(dir_fd);
        drop(theirs);
        let server = Self {
            pid,
            sock: ours,
            dir,
            broken: false,
        };
        let limit = libc::timeval {
            tv_sec: REPLY_LIMIT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: setsockopt reads one timeval.
        let r = unsafe {
            libc::setsockopt(
                server.sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&limit as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return last_error();
        }
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
        if self.broken {
            return Err(io::Error::other(
                "a reply came too late; the share is out of service",
            ));
        }
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
        let reply = self.recv().inspect_err(|e| {
            if e.kind() == io::ErrorKind::WouldBlock {
                self.broken = true;
            }
        })?;
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

/// 9P2000.L message types the server's requests are patched in.
const TLOPEN: u8 = 12;
const TLCREATE: u8 = 14;
const TSETATTR: u8 = 26;
const TMKDIR: u8 = 72;
/// Linux's 9P open flag for O_NONBLOCK, and Tsetattr's "mode is valid".
const P9_NONBLOCK: u32 = 0o4000;
const P9_SETATTR_MODE: u32 = 1;
/// Mode bits a guest may not give a file in a share: the server runs as
/// root, so a setuid file it made would be a setuid-root file on the host.
const SET_ID: u32 = libc::S_ISUID | libc::S_ISGID;

/// Patches a request in place before the `p9` server sees it: opens are
/// non-blocking (a FIFO in a share must not stall the server, and with it
/// the VM's teardown), and no file gets setuid or setgid bits (a directory
/// may keep setgid, which only passes its group on). The `p9` crate keeps
/// its message types private, so the few fields are found here by their
/// 9P2000.L offsets: size[4] type[1] tag[2], then the body. A request too
/// short for its fields is left as it is (the server refuses it).
pub(crate) fn harden(request: &mut [u8]) {
    let Some(&kind) = request.get(4) else { return };
    let name_len = |at: usize| -> Option<usize> {
        let b = request.get(at..at + 2)?;
        Some(usize::from(u16::from_le_bytes([b[0], b[1]])))
    };
    // (offset of a u32 field, bits to set, bits to clear)
    let patch: Option<(usize, u32, u32)> = match kind {
        TLOPEN => Some((11, P9_NONBLOCK, 0)),
        TLCREATE => name_len(11).map(|n| (13 + n, P9_NONBLOCK, 0)),
        _ => None,
    };
    let mode: Option<(usize, u32)> = match kind {
        TLCREATE => name_len(11).map(|n| (17 + n, SET_ID)),
        TMKDIR => name_len(11).map(|n| (13 + n, libc::S_ISUID)),
        TSETATTR => {
            let valid = request
                .get(11..15)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            valid
                .filter(|v| v & P9_SETATTR_MODE != 0)
                .map(|_| (15, SET_ID))
        }
        _ => None,
    };
    let mut edit = |at: usize, set: u32, clear: u32| {
        if let Some(b) = request.get_mut(at..at + 4) {
            let v = (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) | set) & !clear;
            b.copy_from_slice(&v.to_le_bytes());
        }
    };
    if let Some((at, set, clear)) = patch {
        edit(at, set, clear);
    }
    if let Some((at, clear)) = mode {
        edit(at, 0, clear);
    }
}

/// 9P2000.L requests that name a file, and where their names start.
const TSYMLINK: u8 = 16;
const TMKNOD: u8 = 18;
const TRENAME: u8 = 20;
const TLINK: u8 = 70;
const TRENAMEAT: u8 = 74;
const TUNLINKAT: u8 = 76;
const TWALK: u8 = 110;
/// Rlerror: size[4] type[1] tag[2] ecode[4].
const RLERROR: u8 = 7;

/// Whether the server must not see `request`: a name in it is `..` or
/// holds a `/`. Linux's 9P client sends neither (its VFS resolves `..`
/// and splits paths itself); the `p9` server would hand either to
/// `openat`, `renameat` or `linkat` as a path. Inside the chroot that
/// stays inside, but a directory the host moves out of the share while
/// the guest holds it would lead up and out. A name that runs past the
/// request is no refusal: the server refuses the request itself.
pub(crate) fn refused(request: &[u8]) -> bool {
    let Some(&kind) = request.get(4) else {
        return false;
    };
    // The name at `at` (2-byte length, bytes) and the offset after it.
    let name = |at: usize| -> Option<(&[u8], usize)> {
        let len = request.get(at..at + 2)?;
        let end = at + 2 + usize::from(u16::from_le_bytes([len[0], len[1]]));
        Some((request.get(at + 2..end)?, end))
    };
    let bad = |n: &[u8]| n == b".." || n.contains(&b'/');
    let first = |at: usize| name(at).is_some_and(|(n, _)| bad(n));
    match kind {
        TLCREATE | TSYMLINK | TMKNOD | TMKDIR | TUNLINKAT => first(11),
        TRENAME | TLINK => first(15),
        TRENAMEAT => match name(11) {
            Some((old, end)) => bad(old) || first(end + 4),
            None => false,
        },
        TWALK => {
            let Some(count) = request.get(15..17) else {
                return false;
            };
            let mut at = 17;
            for _ in 0..u16::from_le_bytes([count[0], count[1]]) {
                match name(at) {
                    Some((n, _)) if bad(n) => return true,
                    Some((_, end)) => at = end,
                    None => return false,
                }
            }
            false
        }
        _ => false,
    }
}

/// The Rlerror reply to `request` (its tag) with `errno`.
fn error_reply(request: &[u8], errno: i32) -> Vec<u8> {
    let mut r = 11u32.to_le_bytes().to_vec();
    r.push(RLERROR);
    r.extend_from_slice(request.get(5..7).unwrap_or(&[0, 0]));
    r.extend_from_slice(&(errno as u32).to_le_bytes());
    r
}

/// Sends `msg` on `fd` (the child's setup report).
fn say(fd: RawFd, msg: &[u8]) {
    // SAFETY: msg is valid for its length.
    unsafe { libc::write(fd, msg.as_ptr().cast(), msg.len()) };
}

/// Capabilities the server keeps: acting on any file of the share as
/// root would (DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER, CHOWN). No
/// CAP_FSETID, CAP_MKNOD, CAP_SYS_ADMIN or any other.
/// (Capability numbers from linux/capability.h: CHOWN 0, DAC_OVERRIDE 1,
/// DAC_READ_SEARCH 2, FOWNER 3.)
const KEPT_CAPS: u32 = 0b1111;

/// Drops every capability but `KEPT_CAPS` (effective, permitted and
/// inheritable) and forbids gaining any (no_new_privs).
fn drop_capabilities() -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut hdr = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let data = [
        Data {
            effective: KEPT_CAPS,
            permitted: KEPT_CAPS,
            inheritable: 0,
        },
        Data {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        },
    ];
    // SAFETY: capset reads a header and two data structs, as given.
    if unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) } != 0 {
        return last_error();
    }
    // SAFETY: prctl with plain values.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return last_error();
    }
    Ok(())
}

/// The child: confine, then serve until the socket closes. Never returns.
/// It came from a fork of a process that may have other threads: it only
/// makes system calls and runs the `p9` server (glibc's fork leaves
/// malloc usable), never Ember's logging or locks.
fn serve(sock: RawFd, dir: RawFd, read_only: bool, parent: libc::pid_t) -> ! {
    let fail = |step: &str| -> ! {
        let e = io::Error::last_os_error();
        say(3, format!("{step}: {e}").as_bytes());
        // SAFETY: _exit ends the child without running Ember's destructors.
        unsafe { libc::_exit(1) }
    };
    // A panic in the server ends the child, not in Ember's hook.
    std::panic::set_hook(Box::new(|_| {
        // SAFETY: ends the child.
        unsafe { libc::_exit(101) }
    }));
    // SAFETY: plain system calls on values prepared before the fork.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 || libc::getppid() != parent {
            libc::_exit(1);
        }
        libc::prctl(libc::PR_SET_NAME, c"ember-9p".as_ptr());
        // Ember's signal handlers and mask are not the server's; out of
        // the terminal's process group, so Ctrl-C is Ember's to forward.
        for sig in 1..libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        libc::setsid();
        // Nothing of Ember's but the socket (fd 3), the directory (fd 4)
        // and /dev/null as 0-2.
        // Moved out of the way first: either may be 3 or 4 already.
        let (s, d) = (
            libc::fcntl(sock, libc::F_DUPFD_CLOEXEC, 100),
            libc::fcntl(dir, libc::F_DUPFD_CLOEXEC, 100),
        );
        if s == -1 || d == -1 || libc::dup2(s, 3) == -1 || libc::dup2(d, 4) == -1 {
            libc::_exit(1);
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null == -1 {
            fail("open /dev/null");
        }
        for fd in 0..3 {
            libc::dup2(null, fd);
        }
        if libc::syscall(libc::SYS_close_range, 5u32, u32::MAX, 0u32) != 0 {
            // Before Linux 5.9: one by one, as far as the limit goes.
            let max = libc::sysconf(libc::_SC_OPEN_MAX).clamp(1024, 1 << 20) as i32;
            for fd in 5..max {
                libc::close(fd);
            }
        }
    }
    let (sock, dir) = (3, 4);
    let mut attr = libc::MOUNT_ATTR_NODEV | libc::MOUNT_ATTR_NOSUID;
    if read_only {
        attr |= libc::MOUNT_ATTR_RDONLY;
    }
    // SAFETY: NUL-terminated strings and a mount_attr that outlive each call.
    let tree = unsafe {
        // A detached copy of the directory's mount, without what is
        // mounted below it (no AT_RECURSIVE): submounts stay out of the
        // share, and the flags below hold for all of it.
        let tree = libc::syscall(
            libc::SYS_open_tree,
            dir,
            c"".as_ptr(),
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_EMPTY_PATH as libc::c_uint,
        );
        if tree < 0 {
            fail("clone the share's mount (open_tree, Linux 5.2+)");
        }
        let tree = tree as RawFd;
        let set = libc::mount_attr {
            attr_set: attr,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        if libc::syscall(
            libc::SYS_mount_setattr,
            tree,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &set as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        ) != 0
        {
            fail("make the share nodev,nosuid (mount_setattr, Linux 5.12+)");
        }
        // After the clone (which must come from Ember's own namespace):
        // nothing the server could mount would show anywhere else.
        if libc::unshare(libc::CLONE_NEWNS) == -1 {
            fail("unshare the mount namespace");
        }
        tree
    };
    // The server opens /proc now, before the chroot hides it.
    let mut server = match p9::Server::new(Path::new("/"), Default::default(), Default::default()) {
        Ok(s) => s,
        Err(_) => fail("start the 9P server"),
    };
    // SAFETY: plain system calls.
    unsafe {
        if libc::fchdir(tree) == -1 {
            fail("enter the share");
        }
        if libc::chroot(c".".as_ptr()) == -1 {
            fail("chroot into the share");
        }
        libc::close(tree);
        libc::close(dir);
    }
    if drop_capabilities().is_err() {
        fail("drop capabilities");
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
        let request = &mut buf[..n as usize];
        if refused(request) {
            reply = error_reply(request, libc::EPERM);
        } else {
            harden(request);
            // A request the server cannot even decode gets an empty reply.
            let _ = server.handle_message(&mut &*request, &mut reply);
        }
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
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;

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
        attach(&mut s);
        // `..` is refused outright (Linux's client resolves it itself), so
        // up and out by name never reaches the outside file.
        let up = walk(&mut s, 0, 1, &[".."]);
        assert_eq!(errno(&up), Some(libc::EPERM as u32), "{up:?}");
        let out = walk(&mut s, 0, 2, &["..", "..", "outside"]);
        assert_eq!(errno(&out), Some(libc::EPERM as u32), "{out:?}");
        // A name with a slash in it, out of the share.
        let slash = walk(&mut s, 0, 3, &["../outside"]);
        assert_eq!(errno(&slash), Some(libc::EPERM as u32), "{slash:?}");
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

    fn lcreate_mode(
        s: &mut FileServer,
        fid: u32,
        name: &str,
        flags: u32,
        mode: u32,
    ) -> (u8, Vec<u8>) {
        let mut b = fid.to_le_bytes().to_vec();
        b.extend(string(name));
        b.extend_from_slice(&flags.to_le_bytes());
        b.extend_from_slice(&mode.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        call(s, 14, &b)
    }

    #[test]
    #[ignore = "needs root (a mount namespace of its own): make test runs it"]
    fn no_setuid_files_no_blocking_fifos_no_submounts() {
        require_root();
        let (dir, share) = share("setid");
        let fifo = CString::new(share.join("fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o666) }, 0);
        // A file system mounted under the share stays out of it.
        let sub = share.join("sub");
        std::fs::create_dir(&sub).unwrap();
        let subc = CString::new(sub.as_os_str().as_bytes()).unwrap();
        // SAFETY: NUL-terminated strings.
        let mounted = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                subc.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null(),
            )
        } == 0;
        if mounted {
            std::fs::write(sub.join("on-tmpfs"), b"x").unwrap();
        }
        let mut s = FileServer::start(&share, false).unwrap();
        attach(&mut s);
        assert_eq!(walk(&mut s, 0, 1, &[]).0, 111);
        let made = lcreate_mode(&mut s, 1, "suid", libc::O_RDWR as u32, 0o6755);
        assert_eq!(made.0, 15, "Rlcreate: {made:?}");
        let mode = std::fs::metadata(share.join("suid")).unwrap().permissions();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.mode() & 0o7777, 0o755, "setuid and setgid stripped");
        // Opening the FIFO for reading returns at once.
        assert_eq!(walk(&mut s, 0, 2, &["fifo"]).0, 111);
        assert_eq!(
            lopen(&mut s, 2, libc::O_RDONLY as u32).0,
            13,
            "Rlopen without a writer"
        );
        if mounted {
            assert_eq!(walk(&mut s, 0, 3, &["sub"]).0, 111);
            let w = walk(&mut s, 0, 4, &["sub", "on-tmpfs"]);
            assert!(
                w.0 == 7 || u16::from_le_bytes([w.1[0], w.1[1]]) < 2,
                "the submount's file is in the share: {w:?}"
            );
        }
        drop(s);
        if mounted {
            // SAFETY: a NUL-terminated path.
            unsafe { libc::umount(subc.as_ptr()) };
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A request whose body is a fid and then `names` as 9P strings, with
    /// `between` bytes after the first name (Trenameat's new directory).
    fn named(ty: u8, lead: usize, names: &[&str], between: usize) -> Vec<u8> {
        let mut b = vec![0u8; lead];
        for (i, n) in names.iter().enumerate() {
            b.extend(string(n));
            if i == 0 {
                b.extend(std::iter::repeat_n(0u8, between));
            }
        }
        msg(ty, &b)
    }

    #[test]
    fn names_that_lead_up_or_across_are_refused_before_the_server() {
        for (ty, lead, between) in [
            (TLCREATE, 4, 0),
            (TSYMLINK, 4, 0),
            (TMKNOD, 4, 0),
            (TMKDIR, 4, 0),
            (TUNLINKAT, 4, 0),
            (TRENAME, 8, 0),
            (TLINK, 8, 0),
        ] {
            for bad in ["..", "../x", "a/b", "/"] {
                assert!(refused(&named(ty, lead, &[bad], between)), "{ty} {bad}");
            }
            for good in ["x", ".x", "...", "x..y", ""] {
                assert!(!refused(&named(ty, lead, &[good], between)), "{ty} {good}");
            }
        }
        // Trenameat: either name.
        assert!(refused(&named(TRENAMEAT, 4, &["..", "b"], 4)));
        assert!(refused(&named(TRENAMEAT, 4, &["a", "../b"], 4)));
        assert!(!refused(&named(TRENAMEAT, 4, &["a", "b"], 4)));
        // Twalk: any of its names.
        let walk_of = |names: &[&str]| {
            let mut b = vec![0u8; 8];
            b.extend_from_slice(&(names.len() as u16).to_le_bytes());
            for n in names {
                b.extend(string(n));
            }
            msg(TWALK, &b)
        };
        assert!(refused(&walk_of(&["a", "b", ".."])));
        assert!(refused(&walk_of(&["a/.."])));
        assert!(!refused(&walk_of(&["a", "b", "c"])));
        assert!(!refused(&walk_of(&[])));
        // Short or lying requests are left to the server, which refuses
        // them; other types are not looked at.
        let mut short = walk_of(&["a", ".."]);
        short.truncate(20);
        assert!(!refused(&short));
        assert!(!refused(&[1, 2, 3]));
        assert!(!refused(&named(100, 4, &[".."], 0)));
        let reply = error_reply(&msg(TWALK, &[]), libc::EPERM);
        assert_eq!(reply, [11, 0, 0, 0, RLERROR, 1, 0, 1, 0, 0, 0]);
    }

    #[test]
    #[ignore = "needs root (a mount namespace of its own): make test runs it"]
    fn links_renames_and_moved_out_directories_stay_inside() {
        require_root();
        let (dir, share) = share("links");
        // A hard link the host planted in advance is the outside file
        // itself (one inode): it is served, as the host user chose.
        std::fs::hard_link(dir.join("outside"), share.join("planted")).unwrap();
        std::fs::create_dir(share.join("d")).unwrap();
        std::fs::write(share.join("d/in-d"), b"d's own").unwrap();
        let mut s = FileServer::start(&share, false).unwrap();
        attach(&mut s);
        assert_eq!(walk(&mut s, 0, 1, &["planted"]).0, 111);
        assert_eq!(lopen(&mut s, 1, libc::O_RDONLY as u32).0, 13);

        // The guest links and renames inside the share, never out of it.
        assert_eq!(walk(&mut s, 0, 2, &["f"]).0, 111);
        let link = |s: &mut FileServer, name: &str| {
            let mut b = 0u32.to_le_bytes().to_vec();
            b.extend_from_slice(&2u32.to_le_bytes());
            b.extend(string(name));
            call(s, TLINK, &b)
        };
        assert_eq!(link(&mut s, "f-link").0, 71, "Rlink");
        assert_eq!(std::fs::read(share.join("f-link")).unwrap(), b"inside");
        assert_eq!(errno(&link(&mut s, "../escaped")), Some(libc::EPERM as u32));
        let rename = |s: &mut FileServer, old: &str, new: &str| {
            let mut b = 0u32.to_le_bytes().to_vec();
            b.extend(string(old));
            b.extend_from_slice(&0u32.to_le_bytes());
            b.extend(string(new));
            call(s, TRENAMEAT, &b)
        };
        assert_eq!(rename(&mut s, "f-link", "renamed").0, 75, "Rrenameat");
        assert_eq!(
            errno(&rename(&mut s, "renamed", "../escaped")),
            Some(libc::EPERM as u32)
        );
        assert!(!dir.join("escaped").exists());

        // Symlinks and device nodes are not made at all (the p9 crate
        // refuses both): a guest cannot plant a way out for the host.
        let mut b = 0u32.to_le_bytes().to_vec();
        b.extend(string("sym"));
        b.extend(string("/etc/passwd"));
        b.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(
            errno(&call(&mut s, TSYMLINK, &b)),
            Some(libc::EACCES as u32)
        );
        let mut b = 0u32.to_le_bytes().to_vec();
        b.extend(string("node"));
        b.extend_from_slice(&(libc::S_IFCHR | 0o666).to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(errno(&call(&mut s, TMKNOD, &b)), Some(libc::EACCES as u32));
        assert!(!share.join("sym").exists() && !share.join("node").exists());

        // The guest holds d; the host moves d out of the share. From d the
        // guest reaches d's own files, but nothing up or across.
        assert_eq!(walk(&mut s, 0, 3, &["d"]).0, 111);
        std::fs::rename(share.join("d"), dir.join("moved-out")).unwrap();
        assert_eq!(walk(&mut s, 3, 4, &["in-d"]).0, 111);
        for names in [&[".."][..], &["..", "outside"], &["../outside"]] {
            let w = walk(&mut s, 3, 5, names);
            assert_eq!(errno(&w), Some(libc::EPERM as u32), "{names:?}: {w:?}");
        }
        let mut b = 3u32.to_le_bytes().to_vec();
        b.extend(string("../made-outside"));
        b.extend_from_slice(&0o755u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(errno(&call(&mut s, TMKDIR, &b)), Some(libc::EPERM as u32));
        assert!(!dir.join("made-outside").exists());

        // The same as a race: the host moves a directory out of the share
        // and back while the guest walks into it and tries to climb out.
        std::fs::create_dir(share.join("e")).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mover = {
            let (inside, outside) = (share.join("e"), dir.join("e-out"));
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut moves = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = std::fs::rename(&inside, &outside);
                    let _ = std::fs::rename(&outside, &inside);
                    moves += 1;
                }
                moves
            })
        };
        for i in 0..500u32 {
            let fid = 100 + i;
            if walk(&mut s, 0, fid, &["e"]).0 != 111 {
                continue; // out of the share just now
            }
            for names in [&[".."][..], &["..", "outside"], &["../outside"]] {
                let w = walk(&mut s, fid, 1_000_000 + i, names);
                assert_eq!(errno(&w), Some(libc::EPERM as u32), "{names:?}: {w:?}");
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(mover.join().unwrap() > 0, "the host never moved it");
        drop(s);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn harden_patches_only_the_fields_it_knows() {
        // Tlopen: flags gain O_NONBLOCK.
        let mut m = msg(12, &[1, 0, 0, 0, 2, 0, 0, 0]);
        harden(&mut m);
        assert_eq!(&m[11..15], &(2 | P9_NONBLOCK).to_le_bytes());
        // Tsetattr with the mode valid: setuid and setgid cleared.
        let mut body = vec![1, 0, 0, 0];
        body.extend_from_slice(&1u32.to_le_bytes());
        body.extend_from_slice(&0o6777u32.to_le_bytes());
        let mut m = msg(26, &body);
        harden(&mut m);
        assert_eq!(&m[15..19], &0o777u32.to_le_bytes());
        // Short and unknown messages are left alone.
        for raw in [vec![1u8, 2, 3], msg(14, &[1, 0]), msg(100, &[9; 8])] {
            let mut m = raw.clone();
            harden(&mut m);
            assert_eq!(m, raw);
        }
    }

    #[test]
    fn a_missing_directory_is_named() {
        let e = FileServer::start(Path::new("/nonexistent/ember-share"), false)
            .err()
            .expect("no such directory");
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
