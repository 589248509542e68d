//! Starting CMD: its pipes, environment, working directory, and the exit
//! codes podman gives when it cannot run (127 not found, 126 not
//! executable).

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use ember_guest_proto::Spec;

use crate::{check, cstr};

pub(crate) const DEFAULT_PATH: &[u8] =
    b"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// CMD, running, and the init's ends of its pipes.
pub(crate) struct Child {
    pub pid: libc::pid_t,
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    /// stdin and stdout are a terminal's master side.
    pub tty: bool,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors.
    check("pipe2", unsafe {
        libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC)
    })?;
    // SAFETY: pipe2 just returned these two descriptors, owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The environment: the spec's, then PATH, HOME and HOSTNAME where it
/// sets none.
fn environment(spec: &Spec) -> Vec<Vec<u8>> {
    let mut env = spec.env.clone();
    let has = |env: &[Vec<u8>], key: &[u8]| {
        env.iter()
            .any(|e| e.len() > key.len() && e.starts_with(key) && e[key.len()] == b'=')
    };
    if !has(&env, b"PATH") {
        env.push(DEFAULT_PATH.to_vec());
    }
    if !has(&env, b"HOME") {
        env.push(b"HOME=/root".to_vec());
    }
    if !has(&env, b"HOSTNAME") {
        env.push(format!("HOSTNAME={}", spec.hostname).into_bytes());
    }
    if spec.tty.is_some() && !has(&env, b"TERM") {
        env.push(b"TERM=xterm".to_vec());
    }
    env
}

enum Program {
    Found(CString),
    /// Exists, but cannot be executed (126).
    NotExecutable(Vec<u8>),
    /// Nowhere on PATH (127).
    NotFound,
}

/// `name` itself when it holds a '/', else the first executable file of
/// that name on the container's PATH.
fn resolve(name: &[u8], env: &[Vec<u8>]) -> Result<Program, String> {
    let executable = |p: &[u8]| -> Result<Option<bool>, String> {
        let c = cstr(p)?;
        // SAFETY: c is NUL-terminated; st is written by stat.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::stat(c.as_ptr(), &mut st) } == -1 {
            return Ok(None);
        }
        let regular = st.st_mode & libc::S_IFMT == libc::S_IFREG;
        // SAFETY: c is NUL-terminated.
        Ok(Some(
            regular && unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0,
        ))
    };
    if name.contains(&b'/') {
        return Ok(match executable(name)? {
            Some(true) => Program::Found(cstr(name)?),
            Some(false) => Program::NotExecutable(name.to_vec()),
            None => Program::NotFound,
        });
    }
    let path = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix(b"PATH="))
        .unwrap_or(&DEFAULT_PATH[5..]);
    let mut seen = None;
    for dir in path.split(|&b| b == b':').filter(|d| !d.is_empty()) {
        let mut p = dir.to_vec();
        p.push(b'/');
        p.extend_from_slice(name);
        match executable(&p)? {
            Some(true) => return Ok(Program::Found(cstr(&p)?)),
            Some(false) => seen = seen.or(Some(p)),
            None => {}
        }
    }
    Ok(seen.map_or(Program::NotFound, Program::NotExecutable))
}

/// Forks CMD. A CMD that cannot run still gets a child: it prints why on
/// CMD's stderr and exits 127 or 126, as podman's runtime does.
pub(crate) fn start(spec: &Spec) -> Result<Child, String> {
    let name = spec.args.first().ok_or("the spec has no command")?;
    let env = environment(spec);
    if let Some(dir) = &spec.workdir {
        crate::mounts::mkdir_p(dir)?;
    }
    let workdir = cstr(spec.workdir.as_deref().unwrap_or(b"/"))?;
    let program = resolve(name, &env)?;
    let argv: Vec<CString> = spec
        .args
        .iter()
        .map(|a| cstr(a))
        .collect::<Result<_, _>>()?;
    let envp: Vec<CString> = env.iter().map(|e| cstr(e)).collect::<Result<_, _>>()?;
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut envp_p: Vec<*const libc::c_char> = envp.iter().map(|e| e.as_ptr()).collect();
    envp_p.push(std::ptr::null());
    let shown = String::from_utf8_lossy(name).into_owned();
    let failure = match &program {
        Program::Found(_) => None,
        Program::NotFound => Some((127, format!("ember: {shown}: not found in $PATH\n"))),
        Program::NotExecutable(p) => Some((
            126,
            format!("ember: {}: permission denied\n", String::from_utf8_lossy(p)),
        )),
    };
    use std::os::fd::AsRawFd;
    // With a terminal, CMD's three streams are its slave side and the
    // init holds the master (read for output, written for input).
    let (in_r, in_w, out_r, out_w, err_r, err_w, tty) = match spec.tty {
        None => {
            let (in_r, in_w) = pipe()?;
            let (out_r, out_w) = pipe()?;
            let (err_r, err_w) = pipe()?;
            (in_r, Some(in_w), out_r, out_w, Some(err_r), err_w, false)
        }
        Some((rows, cols)) => {
            let (master, slave) = openpty(rows, cols)?;
            let dup = |f: &OwnedFd| f.try_clone().map_err(|e| format!("dup: {e}"));
            (
                dup(&slave)?,
                Some(dup(&master)?),
                master,
                dup(&slave)?,
                None,
                slave,
                true,
            )
        }
    };
    let (i, o, e) = (in_r.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd());
    // SAFETY: the init is single-threaded, so the child may do anything the
    // parent could; it only calls async-signal-safe functions anyway.
    let pid = check("fork", unsafe { libc::fork() })?;
    if pid == 0 {
        // SAFETY: in the child, on descriptors and strings prepared above.
        unsafe {
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::setsid();
            if tty {
                libc::ioctl(i, libc::TIOCSCTTY, 0);
            }
            libc::dup2(i, 0);
            libc::dup2(o, 1);
            libc::dup2(e, 2);
            if let Some((code, message)) = &failure {
                libc::write(2, message.as_ptr().cast(), message.len());
                libc::_exit(*code);
            }
            if libc::chdir(workdir.as_ptr()) == -1 {
                let m = b"ember: cannot change to the working directory\n";
                libc::write(2, m.as_ptr().cast(), m.len());
                libc::_exit(126);
            }
            if let Program::Found(path) = &program {
                libc::execve(path.as_ptr(), argv_p.as_ptr(), envp_p.as_ptr());
            }
            let code = match *libc::__errno_location() {
                libc::ENOENT => 127,
                _ => 126,
            };
            let m = b"ember: cannot execute the command\n";
            libc::write(2, m.as_ptr().cast(), m.len());
            libc::_exit(code);
        }
    }
    drop((in_r, out_w, err_w));
    Ok(Child {
        pid,
        stdin: in_w,
        stdout: Some(out_r),
        stderr: err_r,
        tty,
    })
}

/// Gives the terminal whose master is `master` a new size; the kernel
/// sends its foreground process group SIGWINCH.
pub(crate) fn resize(master: RawFd, rows: u16, cols: u16) {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize; a failure changes nothing.
    unsafe { libc::ioctl(master, libc::TIOCSWINSZ, &size) };
}

/// A pseudo-terminal pair of this size: (master, slave).
fn openpty(rows: u16, cols: u16) -> Result<(OwnedFd, OwnedFd), String> {
    let (mut master, mut slave) = (0, 0);
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two descriptors; no name buffer, no termios.
    check("openpty", unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    })?;
    // SAFETY: both just created, owned by nobody else; CLOEXEC so the
    // child keeps only what it dup2s.
    unsafe {
        libc::fcntl(master, libc::F_SETFD, libc::FD_CLOEXEC);
        libc::fcntl(slave, libc::F_SETFD, libc::FD_CLOEXEC);
        Ok((OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)))
    }
}
