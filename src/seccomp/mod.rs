//! A seccomp filter for each kind of thread Ember runs, installed by the
//! thread itself before it touches guest memory or runs the guest (see
//! `install`). Each list below says why each system call is there. A call
//! outside its thread's list raises SIGSYS: the handler restores the
//! terminal, writes one line naming the thread and the call, and ends the
//! process (exit 1). `ember run --seccomp off` (VmConfig::seccomp) turns
//! the filters off; a library user's own threads never get one.

mod kvm;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::Once;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

/// The kinds of thread Ember runs, each with a filter of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// Runs one vCPU: KVM_RUN, port and MMIO exits into the devices.
    Vcpu,
    /// The VM's event loop: queue notifications, TAPs, console input.
    EventLoop,
    /// A disk's I/O loop: pread/pwrite (one-buffer requests), preadv/pwritev
    /// and fdatasync on its image.
    DiskWorker,
    /// Writes the console's (and the log's) output to stdout/stderr.
    ConsoleOut,
    /// Serves the control API, snapshots included.
    Api,
    /// Closes ended VMs' KVM descriptors.
    Reaper,
    /// The CLI's main thread once its VM runs: waits, then tears down.
    Main,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 7] = [
        ThreadKind::Vcpu,
        ThreadKind::EventLoop,
        ThreadKind::DiskWorker,
        ThreadKind::ConsoleOut,
        ThreadKind::Api,
        ThreadKind::Reaper,
        ThreadKind::Main,
    ];

    fn label(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vCPU",
            ThreadKind::EventLoop => "event loop",
            ThreadKind::DiskWorker => "disk I/O",
            ThreadKind::ConsoleOut => "console output",
            ThreadKind::Api => "API",
            ThreadKind::Reaper => "reaper",
            ThreadKind::Main => "main",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the seccomp filter of the {0} thread")]
    Build(&'static str, #[source] seccompiler::Error),
    #[error("cannot install the seccomp filter of the {0} thread")]
    Install(&'static str, #[source] seccompiler::Error),
    #[error("cannot install the SIGSYS handler")]
    Handler(#[source] std::io::Error),
}

thread_local! {
    /// This thread's kind, for the SIGSYS handler's message.
    static KIND: Cell<Option<ThreadKind>> = const { Cell::new(None) };
}

/// A system call: its name (for the violation message) and number.
type Call = (&'static str, i64);

macro_rules! calls {
    ($($name:ident),* $(,)?) => {
        vec![$((stringify!($name), libc::$name)),*]
    };
}

/// Every Ember thread: memory (the allocator, thread stacks), locks and
/// sleeps (futex, nanosleep; clock_gettime when the vDSO falls back),
/// signal masks and returns (the kick handler), leaving (exit), closing
/// what it drops, logging (write to a pipe or eventfd), std's hash keys
/// (getrandom), its own ids, a kick or pause to another of this process's
/// threads (tgkill, checked below), the SIGSYS handler's terminal restore
/// (ioctl TCSETS, checked below) and its check that stderr takes its line
/// (poll); a wait resumed after the process was stopped and continued
/// (restart_syscall: SIGSTOP/SIGCONT, a debugger attaching, a cgroup
/// freeze); std's fault handler putting back the default action so that a
/// real SIGSEGV/SIGBUS ends the process as that signal (rt_sigaction).
fn base() -> Vec<Call> {
    calls![
        SYS_brk,
        SYS_mmap,
        SYS_munmap,
        SYS_mprotect,
        SYS_madvise,
        SYS_mremap,
        SYS_futex,
        SYS_sched_yield,
        SYS_nanosleep,
        SYS_clock_nanosleep,
        SYS_clock_gettime,
        SYS_gettimeofday,
        SYS_rt_sigprocmask,
        SYS_rt_sigreturn,
        SYS_sigaltstack,
        SYS_exit,
        SYS_exit_group,
        SYS_close,
        SYS_write,
        SYS_getrandom,
        SYS_getpid,
        SYS_gettid,
        SYS_rseq,
        SYS_restart_syscall,
        SYS_rt_sigaction,
        SYS_poll,
    ]
}

/// The calls each kind adds to `base`.
fn extra(kind: ThreadKind) -> Vec<Call> {
    match kind {
        // KVM_RUN and its exits: eventfd writes for irqfds, queue
        // notifies and the console (write, in base); an eventfd cloned at
        // DRIVER_OK (fcntl F_DUPFD_CLOEXEC); the vCPU ioctls (checked).
        ThreadKind::Vcpu => calls![SYS_ioctl, SYS_fcntl, SYS_read],
        // epoll; eventfds, TAP frames and stdin (read/readv/writev, recv
        // for a socket as stdin); stdin's flags and pending count (fcntl,
        // ioctl FIONREAD); a container's stdout or stderr that is a socket
        // (sendto with MSG_DONTWAIT); a container's file server let go if
        // its device is dropped here (shutdown of its socket, wait4).
        ThreadKind::EventLoop => calls![
            SYS_wait4,
            SYS_shutdown,
            SYS_sendto,
            SYS_epoll_wait,
            SYS_epoll_pwait,
            SYS_epoll_ctl,
            SYS_read,
            SYS_recvfrom,
            SYS_readv,
            SYS_writev,
            SYS_fcntl,
            SYS_ioctl,
        ],
        // epoll and eventfds; the image's reads, writes and syncs (pread64
        // and pwrite64 for a request with one data buffer); a
        // share's requests to its file server (read and write on its
        // socket), and the server let go (shutdown, wait4).
        ThreadKind::DiskWorker => calls![
            SYS_wait4,
            SYS_shutdown,
            SYS_epoll_wait,
            SYS_epoll_pwait,
            SYS_epoll_ctl,
            SYS_read,
            SYS_pread64,
            SYS_pwrite64,
            SYS_preadv,
            SYS_pwritev,
            SYS_fdatasync,
            SYS_fsync,
        ],
        // Blocking writes to stdout/stderr (write, in base).
        ThreadKind::ConsoleOut => calls![SYS_writev],
        // Sockets (accept, read, write, poll, non-blocking via ioctl
        // FIONBIO and fcntl); snapshots: files created, written, synced,
        // renamed, removed on failure, read (pagemap), and the KVM reads
        // (ioctl, checked); the pre-boot API's starts go through the main
        // thread.
        ThreadKind::Api => calls![
            SYS_accept4,
            SYS_read,
            SYS_recvfrom,
            SYS_sendto,
            SYS_poll,
            SYS_ppoll,
            SYS_shutdown,
            SYS_fcntl,
            SYS_ioctl,
            SYS_openat,
            SYS_newfstatat,
            SYS_fstat,
            SYS_statx,
            SYS_lseek,
            SYS_pread64,
            SYS_pwrite64,
            SYS_ftruncate,
            SYS_fsync,
            SYS_fdatasync,
            SYS_rename,
            SYS_renameat,
            SYS_renameat2,
            SYS_unlink,
            SYS_unlinkat,
        ],
        // Closing a VM descriptor (close, in base) is all it does.
        ThreadKind::Reaper => Vec::new(),
        // Waits on the exit and signal eventfds (poll, read); at the end
        // joins the threads, syncs the disks, restores the terminal
        // (ioctl, checked), removes the API socket, lets the holder
        // process go (close) and exits.
        // A container's file servers are let go (shutdown of their
        // sockets, wait4 for them to exit).
        // At exit the CLI forks its holder process (pipe2, clone with
        // fork's flags only, checked below), which names itself (prctl
        // PR_SET_NAME, checked), closes what it must not hold
        // (close_range) and waits (read); glibc's fork registers the
        // child's robust futex list (set_robust_list); the signal routing
        // is undone (rt_sigaction).
        ThreadKind::Main => calls![
            SYS_wait4,
            SYS_shutdown,
            SYS_poll,
            SYS_ppoll,
            SYS_read,
            SYS_fdatasync,
            SYS_fsync,
            SYS_ioctl,
            SYS_unlink,
            SYS_unlinkat,
            SYS_epoll_ctl,
            SYS_pipe2,
            SYS_clone,
            SYS_prctl,
            SYS_close_range,
            SYS_rt_sigaction,
            SYS_set_robust_list,
        ],
    }
}

/// Calls a violation may well be, named in its message.
fn notable() -> Vec<Call> {
    calls![
        SYS_execve,
        SYS_execveat,
        SYS_socket,
        SYS_connect,
        SYS_bind,
        SYS_ptrace,
        SYS_fork,
        SYS_vfork,
        SYS_clone,
        SYS_clone3,
        SYS_open,
        SYS_openat,
        SYS_kill,
        SYS_mount,
        SYS_setuid,
        SYS_process_vm_readv,
        SYS_process_vm_writev,
    ]
}

fn eq(arg: u8, value: u64) -> Result<SeccompCondition, seccompiler::Error> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, SeccompCmpOp::Eq, value)
        .map_err(seccompiler::Error::Backend)
}

fn eq32(arg: u8, value: u64) -> Result<SeccompCondition, seccompiler::Error> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
        .map_err(seccompiler::Error::Backend)
}

/// One rule per allowed value of argument `arg`.
fn one_of(arg: u8, values: &[u64]) -> Result<Vec<SeccompRule>, seccompiler::Error> {
    values
        .iter()
        .map(|&v| SeccompRule::new(vec![eq32(arg, v)?]).map_err(seccompiler::Error::Backend))
        .collect()
}

/// The ioctl requests each kind may make.
fn ioctls(kind: ThreadKind) -> Vec<u64> {
    let tty = [libc::TCSETS, libc::TCGETS];
    let mut allowed: Vec<u64> = tty.to_vec();
    match kind {
        ThreadKind::Vcpu => allowed.extend(kvm::vcpu()),
        ThreadKind::EventLoop => allowed.push(libc::FIONREAD),
        ThreadKind::Api => {
            allowed.push(libc::FIONBIO);
            allowed.extend(kvm::snapshot());
        }
        // A container run with -t reads the terminal's new size.
        ThreadKind::Main => allowed.push(libc::TIOCGWINSZ),
        _ => {}
    }
    allowed
}

fn filter(kind: ThreadKind) -> Result<BpfProgram, seccompiler::Error> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (_, nr) in base().into_iter().chain(extra(kind)) {
        rules.insert(nr, Vec::new());
    }
    // Every thread may restore the terminal from the SIGSYS handler.
    rules.insert(libc::SYS_ioctl, one_of(1, &ioctls(kind))?);
    // Signals only to threads of this process (kicks, pauses).
    let pid = u64::from(std::process::id());
    rules.insert(
        libc::SYS_tgkill,
        vec![SeccompRule::new(vec![eq(0, pid)?]).map_err(seccompiler::Error::Backend)?],
    );
    // fcntl: F_GETFD everywhere (std checks a descriptor is open before
    // closing it, in debug builds); dup an eventfd (F_DUPFD_CLOEXEC) and
    // stdin's flags where those happen.
    let mut ops = vec![libc::F_GETFD];
    if matches!(
        kind,
        ThreadKind::Vcpu | ThreadKind::EventLoop | ThreadKind::Api
    ) {
        ops.extend([libc::F_DUPFD_CLOEXEC, libc::F_GETFL, libc::F_SETFL]);
    }
    let ops: Vec<u64> = ops.into_iter().map(|o| o as u64).collect();
    rules.insert(libc::SYS_fcntl, one_of(1, &ops)?);
    if kind == ThreadKind::Main {
        let fork = (libc::CLONE_CHILD_SETTID | libc::CLONE_CHILD_CLEARTID | libc::SIGCHLD) as u64;
        rules.insert(
            libc::SYS_clone,
            vec![SeccompRule::new(vec![eq(0, fork)?]).map_err(seccompiler::Error::Backend)?],
        );
        rules.insert(libc::SYS_prctl, one_of(0, &[libc::PR_SET_NAME as u64])?);
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        std::env::consts::ARCH
            .try_into()
            .map_err(seccompiler::Error::Backend)?,
    )
    .map_err(seccompiler::Error::Backend)?;
    filter.try_into().map_err(seccompiler::Error::Backend)
}

/// Installs `kind`'s filter on the calling thread (for good: a filter
/// cannot be removed), with the SIGSYS handler that reports a violation.
pub fn install(kind: ThreadKind) -> Result<(), SeccompError> {
    install_handler()?;
    let program = filter(kind).map_err(|e| SeccompError::Build(kind.label(), e))?;
    let probe = probe_wanted(kind);
    KIND.with(|k| k.set(Some(kind)));
    seccompiler::apply_filter(&program).map_err(|e| SeccompError::Install(kind.label(), e))?;
    if probe {
        // The test hook (tests/seccomp.rs): a call no thread may make.
        // SAFETY: socket(2) with constant arguments; the filter traps it.
        unsafe { libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0) };
    }
    Ok(())
}

/// `install` for threads with no VM to end: a failure is logged and the
/// thread goes on without a filter.
pub fn install_or_log(kind: ThreadKind) {
    if let Err(e) = install(kind) {
        log::error!(
            "{}; the thread runs without a filter",
            crate::error_chain(&e)
        );
    }
}

/// Test hook: `EMBER_SECCOMP_PROBE=<kind>` (vcpu, events, disk, console,
/// api, reaper, main) makes that kind of thread make a forbidden call
/// right after installing its filter.
fn probe_wanted(kind: ThreadKind) -> bool {
    let Some(want) = std::env::var_os("EMBER_SECCOMP_PROBE") else {
        return false;
    };
    let name = match kind {
        ThreadKind::Vcpu => "vcpu",
        ThreadKind::EventLoop => "events",
        ThreadKind::DiskWorker => "disk",
        ThreadKind::ConsoleOut => "console",
        ThreadKind::Api => "api",
        ThreadKind::Reaper => "reaper",
        ThreadKind::Main => "main",
    };
    want == name
}

/// Names for the violation message, filled before any filter exists (the
/// handler must not allocate).
static NAMES: std::sync::OnceLock<Vec<Call>> = std::sync::OnceLock::new();

fn install_handler() -> Result<(), SeccompError> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        let mut names = notable();
        for kind in ThreadKind::ALL {
            names.extend(extra(kind));
        }
        names.extend(base());
        let _ = NAMES.set(names);
        result = vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, on_sigsys)
            .map_err(|e| SeccompError::Handler(std::io::Error::from_raw_os_error(e.errno())));
    });
    result
}

/// A fixed buffer for the handler's message (no allocation in a handler).
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    fn push(&mut self, s: &[u8]) {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }

    fn push_number(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

/// The message for a violation of `kind`'s filter by call `nr`.
fn violation(kind: Option<ThreadKind>, nr: i64) -> Line {
    let mut line = Line {
        buf: [0; 256],
        len: 0,
    };
    line.push(b"ember: seccomp: the ");
    line.push(kind.map_or("unnamed", ThreadKind::label).as_bytes());
    line.push(b" thread made a forbidden system call: ");
    let name = NAMES
        .get()
        .and_then(|names| names.iter().find(|(_, n)| *n == nr))
        .map(|(name, _)| name.trim_start_matches("SYS_"));
    if let Some(name) = name {
        line.push(name.as_bytes());
        line.push(b" (");
        line.push_number(nr as u64);
        line.push(b")");
    } else {
        line.push(b"number ");
        line.push_number(nr as u64);
    }
    line.push(b"; Ember stopped (--seccomp off runs without filters)\n");
    line
}

/// si_code of a SIGSYS raised by a seccomp filter.
const SYS_SECCOMP: libc::c_int = 1;

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo; for SIGSYS from seccomp
    // it fills the _sigsys member: after si_signo, si_errno, si_code (3
    // ints) and padding to 16 bytes, { void *_call_addr; int _syscall; }.
    let (code, nr) = unsafe {
        let base = info.cast::<u8>();
        (
            (*info).si_code,
            std::ptr::read_unaligned(base.add(16 + 8).cast::<libc::c_int>()),
        )
    };
    let kind = KIND.try_with(Cell::get).ok().flatten();
    crate::terminal::restore_terminal_from_signal();
    let line = if code == SYS_SECCOMP {
        violation(kind, i64::from(nr))
    } else {
        let mut line = Line {
            buf: [0; 256],
            len: 0,
        };
        line.push(b"ember: SIGSYS from outside seccomp; Ember stopped\n");
        line
    };
    // Only if stderr takes the line now (a line under PIPE_BUF never
    // blocks once poll says a pipe is writable): a stuck reader must not
    // keep the process from ending.
    let mut pfd = libc::pollfd {
        fd: libc::STDERR_FILENO,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: poll(2), write(2) and _exit(2) are async-signal-safe; the
    // buffer is this frame's.
    unsafe {
        if libc::poll(&mut pfd, 1, 100) == 1 && pfd.revents & libc::POLLOUT != 0 {
            libc::write(libc::STDERR_FILENO, line.buf.as_ptr().cast(), line.len);
        }
        libc::_exit(1);
    }
}

/// Whether this thread runs under one of Ember's filters (its panics
/// then print no backtrace: resolving one needs files it may not open).
pub fn filtered() -> bool {
    KIND.try_with(|k| k.get().is_some()).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_filter_that_builds() {
        for kind in ThreadKind::ALL {
            let program = filter(kind).unwrap();
            assert!(program.len() > 10, "{kind:?}");
        }
    }

    /// Each kind's allowed calls, by name (tgkill counted; ioctl, fcntl,
    /// clone and prctl allowed only for the values checked in `filter`).
    fn allowed(kind: ThreadKind) -> Vec<&'static str> {
        let mut names: Vec<&str> = base().into_iter().chain(extra(kind)).map(|c| c.0).collect();
        names.extend(["SYS_tgkill", "SYS_ioctl", "SYS_fcntl"]);
        names.sort_unstable();
        names.dedup();
        names
    }

    #[test]
    fn no_thread_may_exec_trace_mount_or_open_sockets_and_only_the_api_opens_files() {
        for kind in ThreadKind::ALL {
            let names = allowed(kind);
            for forbidden in [
                "SYS_execve",
                "SYS_execveat",
                "SYS_socket",
                "SYS_connect",
                "SYS_bind",
                "SYS_ptrace",
                "SYS_process_vm_readv",
                "SYS_process_vm_writev",
                "SYS_mount",
                "SYS_setuid",
                "SYS_kill",
                "SYS_clone3",
                "SYS_vfork",
            ] {
                assert!(!names.contains(&forbidden), "{kind:?} allows {forbidden}");
            }
            assert_eq!(
                names.contains(&"SYS_openat"),
                kind == ThreadKind::Api,
                "{kind:?}"
            );
            assert_eq!(
                names.contains(&"SYS_clone"),
                kind == ThreadKind::Main,
                "{kind:?}"
            );
            println!("{:<14} {} system calls", kind.label(), names.len());
        }
    }

    #[test]
    fn a_violation_names_the_thread_and_the_call() {
        let _ = install_handler();
        let line = violation(Some(ThreadKind::Vcpu), libc::SYS_execve);
        let text = std::str::from_utf8(&line.buf[..line.len]).unwrap();
        assert_eq!(
            text,
            "ember: seccomp: the vCPU thread made a forbidden system call: execve (59); \
             Ember stopped (--seccomp off runs without filters)\n"
        );
        let line = violation(None, 999);
        let text = std::str::from_utf8(&line.buf[..line.len]).unwrap();
        assert!(text.contains("unnamed thread made a forbidden system call: number 999"));
    }
}
