//! The host end of a container's stream: CMD's stdout and stderr to
//! Ember's, Ember's stdin to CMD, signals for CMD, and how it ended.
//!
//! Served on the event loop, never blocking it: Ember's stdout and stderr
//! are written through descriptions of Ember's own, O_NONBLOCK (reopened
//! like stdin, see src/stdin.rs), so a reader that does not read makes
//! the guest wait (its writes stop being taken) instead of the loop; stdin
//! is read only while the guest has room for it.

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::sync::{Arc, Mutex};

use ember_devices::virtio::console::PortBackend;
use ember_devices::virtio::HostWatch;
use ember_guest_proto::{encode, spec_messages, Decoder, FromGuest, Spec, ToGuest, MAX_CHUNK};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::lock;
use crate::stdin::{ReadOutcome, Stdin};

/// How a container run ended, as far as its init said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerEnd {
    /// CMD's exit status (podman's codes: 128+N for signal N, 127 not
    /// found, 126 not executable).
    Exited(u8),
    /// The guest's init could not start CMD.
    InitFailed(String),
    /// The guest broke the stream's framing.
    StreamBroken(String),
}

/// What the VM's holder uses: the end, and signals for CMD.
#[derive(Clone)]
pub(crate) struct ContainerHandle {
    shared: Arc<Shared>,
}

struct Shared {
    end: Mutex<Option<ContainerEnd>>,
    /// The init said Ready (a template waits for this).
    ready: std::sync::atomic::AtomicBool,
    signals: Mutex<VecDeque<i32>>,
    /// The newest terminal size not sent yet (only the last one matters).
    resize: Mutex<Option<(u16, u16)>>,
    wake: EventFd,
}

impl ContainerHandle {
    pub(crate) fn end(&self) -> Option<ContainerEnd> {
        lock(&self.shared.end).clone()
    }

    /// The guest's init has said Ready.
    pub(crate) fn init_ready(&self) -> bool {
        self.shared.ready.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Sends CMD `signal` (SIGTERM forwarded by Ember, ...).
    pub(crate) fn signal(&self, signal: i32) {
        lock(&self.shared.signals).push_back(signal);
        let _ = self.shared.wake.write(1);
    }

    /// Gives CMD's terminal (`-t`) this size, rows and columns.
    pub(crate) fn resize(&self, rows: u16, cols: u16) {
        *lock(&self.shared.resize) = Some((rows, cols));
        let _ = self.shared.wake.write(1);
    }
}

/// How writes to one of Ember's output descriptors are kept from blocking.
enum OutKind {
    /// A description of Ember's own, O_NONBLOCK (pipe, FIFO, terminal).
    Own(OwnedFd),
    /// A socket: send with MSG_DONTWAIT.
    Socket(RawFd),
    /// A regular file (or what cannot be reopened): writes do not wait
    /// for a reader.
    Direct(RawFd),
}

/// Ember's stdout or stderr.
pub(crate) struct HostOut {
    kind: OutKind,
    pending: Vec<u8>,
    /// The reader went away (EPIPE): CMD's further output is dropped.
    closed: bool,
    name: &'static str,
}

impl HostOut {
    pub(crate) fn open(fd: RawFd, name: &'static str) -> io::Result<Self> {
        let link = format!("/proc/self/fd/{fd}");
        let kind = match std::fs::metadata(&link).map(|m| m.file_type()) {
            Ok(t) if t.is_fifo() || t.is_char_device() => OutKind::Own(
                OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                    .open(&link)?
                    .into(),
            ),
            Ok(t) if t.is_socket() => OutKind::Socket(fd),
            _ => OutKind::Direct(fd),
        };
        Ok(Self {
            kind,
            pending: Vec::new(),
            closed: false,
            name,
        })
    }

    fn fd(&self) -> RawFd {
        match &self.kind {
            OutKind::Own(f) => f.as_raw_fd(),
            OutKind::Socket(fd) | OutKind::Direct(fd) => *fd,
        }
    }

    fn push(&mut self, data: &[u8]) {
        if !self.closed {
            self.pending.extend_from_slice(data);
        }
    }

    /// Writes what it can; true when nothing is left.
    fn flush(&mut self) -> bool {
        while !self.pending.is_empty() {
            let p = &self.pending;
            // SAFETY: p is valid for its length.
            let n = unsafe {
                match self.kind {
                    OutKind::Socket(fd) => libc::send(
                        fd,
                        p.as_ptr().cast(),
                        p.len(),
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    ),
                    _ => libc::write(self.fd(), p.as_ptr().cast(), p.len()),
                }
            };
            if n > 0 {
                self.pending.drain(..n as usize);
                continue;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return false,
                _ => {
                    if e.raw_os_error() != Some(libc::EPIPE) {
                        log::warn!(
                            "container: cannot write CMD's {} ({e}); dropping the rest",
                            self.name
                        );
                    }
                    self.closed = true;
                    self.pending.clear();
                }
            }
        }
        true
    }

    fn watch(&self) -> Option<HostWatch> {
        let pollable = !matches!(self.kind, OutKind::Direct(_));
        (pollable && !self.pending.is_empty()).then(|| HostWatch {
            fd: self.fd(),
            writable: true,
        })
    }
}

/// Host descriptors for CMD's stdin, stdout and stderr (a library user's
/// pipes, sockets or files) instead of Ember's own; the stream owns them.
pub struct ContainerStdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// When the spec goes to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// When the init says Ready (a boot).
    AtReady,
    /// At once: the init said Ready before the snapshot this VM is
    /// restored from.
    Now,
}

/// The port's backend.
pub(crate) struct StreamBackend {
    /// The spec's messages, until the init is ready for them; None for a
    /// template (no command yet).
    spec: Option<Vec<ToGuest>>,
    /// The spec is sent: stdin may flow.
    started: bool,
    stdin_eof: bool,
    stdin: Stdin,
    stdout: HostOut,
    stderr: HostOut,
    decoder: Decoder,
    /// Encoded messages for the guest; `sent` of them are delivered.
    out: Vec<u8>,
    sent: usize,
    /// Exited or Failed came: Done goes once the output is written.
    finished: bool,
    done_sent: bool,
    broken: bool,
    shared: Arc<Shared>,
    /// The descriptors a library user gave (None: Ember's own stdio).
    stdio: Option<ContainerStdio>,
}

impl StreamBackend {
    /// CMD's streams on `stdio`, or on Ember's own stdin, stdout and
    /// stderr; `spec` None for a template.
    pub(crate) fn new(
        spec: Option<Spec>,
        start: Start,
        stdio: Option<ContainerStdio>,
    ) -> io::Result<(Self, ContainerHandle)> {
        let fds = stdio.as_ref().map_or(
            [libc::STDIN_FILENO, libc::STDOUT_FILENO, libc::STDERR_FILENO],
            |s| {
                [
                    s.stdin.as_raw_fd(),
                    s.stdout.as_raw_fd(),
                    s.stderr.as_raw_fd(),
                ]
            },
        );
        let (mut backend, handle) = Self::with(
            spec,
            start,
            Stdin::open(fds[0]),
            HostOut::open(fds[1], "stdout")?,
            HostOut::open(fds[2], "stderr")?,
        )?;
        // Kept open while the stream may use them (Stdin and HostOut may
        // use these very descriptors).
        backend.stdio = stdio;
        Ok((backend, handle))
    }

    pub(crate) fn with(
        spec: Option<Spec>,
        start: Start,
        stdin: Stdin,
        stdout: HostOut,
        stderr: HostOut,
    ) -> io::Result<(Self, ContainerHandle)> {
        let shared = Arc::new(Shared {
            ready: std::sync::atomic::AtomicBool::new(false),
            end: Mutex::new(None),
            signals: Mutex::new(VecDeque::new()),
            resize: Mutex::new(None),
            wake: EventFd::new(EFD_NONBLOCK)?,
        });
        let handle = ContainerHandle {
            shared: shared.clone(),
        };
        let mut backend = Self {
            spec: spec.as_ref().map(spec_messages),
            started: false,
            stdin_eof: false,
            stdin,
            stdout,
            stderr,
            decoder: Decoder::new(),
            out: Vec::new(),
            sent: 0,
            finished: false,
            done_sent: false,
            broken: false,
            shared,
            stdio: None,
        };
        if start == Start::Now {
            backend.start();
        }
        Ok((backend, handle))
    }

    /// Sends the spec (if there is one: a template has none).
    fn start(&mut self) {
        if let Some(messages) = self.spec.take() {
            for m in &messages {
                self.queue(m);
            }
            self.started = true;
        }
    }

    fn queue(&mut self, m: &ToGuest) {
        if self.sent > 0 {
            self.out.drain(..self.sent);
            self.sent = 0;
        }
        self.out.extend_from_slice(&encode(m));
    }

    fn set_end(&self, end: ContainerEnd) {
        let mut e = lock(&self.shared.end);
        if e.is_none() {
            *e = Some(end);
        }
    }

    fn flushed(&mut self) -> bool {
        // Both, every time: one waiting must not starve the other.
        let a = self.stdout.flush();
        let b = self.stderr.flush();
        a && b
    }

    /// Done once CMD's end came and all its output is out.
    fn maybe_done(&mut self) {
        if self.finished && !self.done_sent && self.flushed() {
            self.queue(&ToGuest::Done);
            self.done_sent = true;
        }
    }
}

impl PortBackend for StreamBackend {
    fn take_from_guest(&mut self, bytes: &[u8]) -> usize {
        if !self.flushed() {
            return 0;
        }
        if self.broken {
            return bytes.len();
        }
        let mut messages = Vec::new();
        if let Err(e) = self.decoder.feed(bytes, |m: FromGuest| messages.push(m)) {
            self.broken = true;
            self.set_end(ContainerEnd::StreamBroken(format!("{e:?}")));
        }
        for m in messages {
            match m {
                FromGuest::Ready => {
                    self.shared
                        .ready
                        .store(true, std::sync::atomic::Ordering::Release);
                    self.start();
                }
                FromGuest::Stdout(d) => self.stdout.push(&d),
                FromGuest::Stderr(d) => self.stderr.push(&d),
                FromGuest::Exited(code) => {
                    self.set_end(ContainerEnd::Exited(code));
                    self.finished = true;
                }
                FromGuest::Failed(why) => {
                    self.set_end(ContainerEnd::InitFailed(why));
                    self.finished = true;
                }
            }
        }
        self.maybe_done();
        bytes.len()
    }

    fn to_guest(&mut self, max: usize) -> Vec<u8> {
        if self.started && self.sent == self.out.len() && !self.done_sent {
            let mut buf = vec![0u8; MAX_CHUNK];
            let outcome = match self.stdin_eof {
                false => Some(self.stdin.read(&mut buf)),
                true => None,
            };
            match outcome {
                Some(ReadOutcome::Data(n)) => self.queue(&ToGuest::Stdin(buf[..n].to_vec())),
                Some(ReadOutcome::Eof) => {
                    // Kept open until the backend goes: its descriptor
                    // may still be in the event loop's epoll set.
                    self.stdin_eof = true;
                    self.queue(&ToGuest::StdinEof);
                }
                Some(ReadOutcome::Nothing) | None => {}
            }
        }
        let n = max.min(self.out.len() - self.sent);
        let chunk = self.out[self.sent..self.sent + n].to_vec();
        self.sent += n;
        chunk
    }

    fn watches(&self, guest_has_room: bool) -> Vec<HostWatch> {
        let mut w = vec![HostWatch {
            fd: self.shared.wake.as_raw_fd(),
            writable: false,
        }];
        if !self.stdin_eof {
            let stdin = &self.stdin;
            if guest_has_room && self.sent == self.out.len() && stdin.pollable() && !self.done_sent
            {
                w.push(HostWatch {
                    fd: stdin.fd(),
                    writable: false,
                });
            }
        }
        w.extend(self.stdout.watch());
        w.extend(self.stderr.watch());
        w
    }

    fn ready(&mut self, fd: RawFd) {
        if fd == self.shared.wake.as_raw_fd() {
            let _ = self.shared.wake.read();
            let signals: Vec<i32> = lock(&self.shared.signals).drain(..).collect();
            for s in signals {
                self.queue(&ToGuest::Signal(s));
            }
            let resize = lock(&self.shared.resize).take();
            if let Some((rows, cols)) = resize {
                self.queue(&ToGuest::Resize(rows, cols));
            }
        }
        self.maybe_done();
        // A take_from_guest that was refused is retried by the device.
        let _ = self.flushed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::FromRawFd;

    fn pipe() -> (std::fs::File, std::fs::File) {
        let mut fds = [0; 2];
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        unsafe {
            (
                std::fs::File::from_raw_fd(fds[0]),
                std::fs::File::from_raw_fd(fds[1]),
            )
        }
    }

    struct Rig {
        backend: StreamBackend,
        handle: ContainerHandle,
        out_r: std::fs::File,
        err_r: std::fs::File,
        in_w: Option<std::fs::File>,
        _keep: Vec<std::fs::File>,
    }

    fn spec() -> Spec {
        crate::container::ContainerConfig::new("/r", vec!["true".into()]).spec()
    }

    /// A started backend (its spec already taken by the guest).
    fn rig() -> Rig {
        let mut r = rig_with(Start::Now);
        let got = decode_all(&r.backend.to_guest(1 << 20));
        assert_eq!(got.last(), Some(&ToGuest::SpecEnd));
        r
    }

    fn rig_with(start: Start) -> Rig {
        let (out_r, out_w) = pipe();
        let (err_r, err_w) = pipe();
        let (in_r, in_w) = pipe();
        for f in [&out_r, &err_r] {
            unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        }
        let (backend, handle) = StreamBackend::with(
            Some(spec()),
            start,
            Stdin::open(in_r.as_raw_fd()),
            HostOut::open(out_w.as_raw_fd(), "stdout").unwrap(),
            HostOut::open(err_w.as_raw_fd(), "stderr").unwrap(),
        )
        .unwrap();
        Rig {
            backend,
            handle,
            out_r,
            err_r,
            in_w: Some(in_w),
            _keep: vec![in_r, out_w, err_w],
        }
    }

    fn drain(f: &mut std::fs::File) -> Vec<u8> {
        let mut v = Vec::new();
        let mut buf = [0u8; 65536];
        while let Ok(n) = f.read(&mut buf) {
            if n == 0 {
                break;
            }
            v.extend_from_slice(&buf[..n]);
        }
        v
    }

    fn decode_all(bytes: &[u8]) -> Vec<ToGuest> {
        let mut d = Decoder::new();
        let mut v = Vec::new();
        d.feed(bytes, |m| v.push(m)).unwrap();
        v
    }

    #[test]
    fn stdout_and_stderr_stay_apart_and_exact_then_done() {
        let mut r = rig();
        let mut stream = encode(&FromGuest::Stdout(vec![0, 1, 2, b'\n', 0xff]));
        stream.extend(encode(&FromGuest::Stderr(b"err\r\n".to_vec())));
        stream.extend(encode(&FromGuest::Exited(7)));
        // Fed one byte at a time.
        for b in &stream {
            assert_eq!(r.backend.take_from_guest(std::slice::from_ref(b)), 1);
        }
        assert_eq!(drain(&mut r.out_r), vec![0, 1, 2, b'\n', 0xff]);
        assert_eq!(drain(&mut r.err_r), b"err\r\n");
        assert_eq!(r.handle.end(), Some(ContainerEnd::Exited(7)));
        drop(r.in_w.take());
        let got = r.backend.to_guest(4096);
        assert_eq!(decode_all(&got), vec![ToGuest::Done]);
    }

    #[test]
    fn a_full_stdout_holds_the_guest_back_and_done_waits_for_it() {
        let mut r = rig();
        let big = vec![b'x'; MAX_CHUNK];
        let mut taken = 0;
        // Fill the pipe (64 KiB) and then some: the backend takes one
        // more batch, then refuses.
        let msg = encode(&FromGuest::Stdout(big.clone()));
        for _ in 0..16 {
            taken += r.backend.take_from_guest(&msg);
        }
        assert!(taken < 16 * msg.len(), "never refused");
        assert!(r.backend.watches(false).iter().any(|w| w.writable));
        let exited = encode(&FromGuest::Exited(0));
        let mut first = drain(&mut r.out_r);
        // Refused while output waits; taken after the reader read.
        r.backend.ready(-1);
        let mut rest = msg.clone();
        loop {
            let n = r.backend.take_from_guest(&rest);
            rest.drain(..n);
            if rest.is_empty() {
                break;
            }
            first.extend(drain(&mut r.out_r));
            r.backend.ready(-1);
        }
        assert_eq!(r.backend.take_from_guest(&exited), exited.len());
        drop(r.in_w.take());
        loop {
            first.extend(drain(&mut r.out_r));
            r.backend.ready(-1);
            let got = r.backend.to_guest(1 << 20);
            if decode_all(&got).contains(&ToGuest::Done) {
                break;
            }
        }
        first.extend(drain(&mut r.out_r));
        assert_eq!(first.len(), taken / msg.len() * MAX_CHUNK + MAX_CHUNK);
        assert!(first.iter().all(|&b| b == b'x'));
    }

    #[test]
    fn stdin_then_its_end_then_signals_reach_the_guest() {
        let mut r = rig();
        use std::io::Write;
        r.in_w.as_mut().unwrap().write_all(b"a\nb\n").unwrap();
        let got = decode_all(&r.backend.to_guest(4096));
        assert_eq!(got, vec![ToGuest::Stdin(b"a\nb\n".to_vec())]);
        assert!(r.backend.to_guest(4096).is_empty(), "nothing waiting yet");
        drop(r.in_w.take());
        assert_eq!(
            decode_all(&r.backend.to_guest(4096)),
            vec![ToGuest::StdinEof]
        );
        r.handle.signal(15);
        let wake = r.backend.watches(true)[0].fd;
        r.backend.ready(wake);
        // Delivered in pieces as small as the guest's buffers.
        let mut all = Vec::new();
        loop {
            let c = r.backend.to_guest(3);
            if c.is_empty() {
                break;
            }
            assert!(c.len() <= 3);
            all.extend(c);
        }
        assert_eq!(decode_all(&all), vec![ToGuest::Signal(15)]);
        // Window sizes: only the newest one not sent yet goes.
        r.handle.resize(24, 80);
        r.handle.resize(30, 100);
        r.backend.ready(wake);
        assert_eq!(
            decode_all(&r.backend.to_guest(4096)),
            vec![ToGuest::Resize(30, 100)]
        );
    }

    #[test]
    fn the_spec_waits_for_ready_and_stdin_waits_for_the_spec() {
        let mut r = rig_with(Start::AtReady);
        use std::io::Write;
        r.in_w.as_mut().unwrap().write_all(b"early").unwrap();
        assert!(r.backend.to_guest(4096).is_empty(), "nothing before Ready");
        assert!(!r.handle.init_ready());
        let ready = encode(&FromGuest::Ready);
        assert_eq!(r.backend.take_from_guest(&ready), ready.len());
        assert!(r.handle.init_ready());
        let mut got = decode_all(&r.backend.to_guest(1 << 20));
        assert_eq!(got.pop(), Some(ToGuest::SpecEnd));
        let bytes: Vec<u8> = got
            .into_iter()
            .flat_map(|m| match m {
                ToGuest::Spec(c) => c,
                other => panic!("{other:?} before SpecEnd"),
            })
            .collect();
        assert_eq!(postcard::from_bytes::<Spec>(&bytes).unwrap(), spec());
        assert_eq!(
            decode_all(&r.backend.to_guest(4096)),
            vec![ToGuest::Stdin(b"early".to_vec())]
        );
    }

    #[test]
    fn garbage_from_the_guest_ends_the_stream_not_the_loop() {
        let mut r = rig();
        let junk = [0x03, 0xff, 0xff, 0];
        assert_eq!(r.backend.take_from_guest(&junk), junk.len());
        assert!(matches!(
            r.handle.end(),
            Some(ContainerEnd::StreamBroken(_))
        ));
        let more = encode(&FromGuest::Stdout(b"late".to_vec()));
        assert_eq!(r.backend.take_from_guest(&more), more.len());
        assert!(drain(&mut r.out_r).is_empty());
    }
}
