//! Feeding the UART from the host: stdin (terminal, pipe or file) or the
//! scripted input queue. Runs on the event loop. Input enters only as fast
//! as the guest drains the 64-byte FIFO (a pipe waits in the kernel, not in
//! Ember); an interactive terminal is always read so Ctrl-A x works, and
//! what the FIFO cannot take then is dropped, as on a real UART.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use ember_devices::serial::SerialDevice;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;

use crate::console::{ConsoleShared, SerialOut};
use crate::exit::{ExitSignal, StopReason, VmExit};
use crate::lock;

/// Ctrl-A, the console escape key; Ctrl-A x quits, Ctrl-A Ctrl-A sends one Ctrl-A.
pub const ESCAPE: u8 = 0x01;
pub const QUIT_KEY: u8 = b'x';
const READ_CHUNK: usize = 64;

/// The escape-sequence state of an interactive console.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EscapeState {
    #[default]
    Normal,
    AfterEscape,
}

/// Filters typed bytes: returns what goes to the guest and whether the
/// quit sequence was typed.
pub fn filter_escapes(state: &mut EscapeState, input: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::with_capacity(input.len());
    for &b in input {
        match (*state, b) {
            (EscapeState::Normal, ESCAPE) => *state = EscapeState::AfterEscape,
            (EscapeState::Normal, _) => out.push(b),
            (EscapeState::AfterEscape, QUIT_KEY) => return (out, true),
            (EscapeState::AfterEscape, ESCAPE) => {
                out.push(ESCAPE);
                *state = EscapeState::Normal;
            }
            (EscapeState::AfterEscape, _) => {
                out.extend([ESCAPE, b]);
                *state = EscapeState::Normal;
            }
        }
    }
    (out, false)
}

/// Where input comes from.
pub enum InputSource {
    /// Standard input. `pollable` is false for regular files and /dev/null,
    /// which epoll refuses: those are read whenever the FIFO has room.
    Stdin { tty: bool, pollable: bool },
    /// `Console::send_*`.
    Scripted(Arc<ConsoleShared>),
}

pub struct ConsoleInput {
    serial: Arc<Mutex<SerialDevice<SerialOut>>>,
    source: InputSource,
    rx_drained: EventFd,
    exit: Arc<ExitSignal>,
    escape: EscapeState,
    /// Stdin is registered with epoll right now.
    watching_stdin: bool,
    eof: bool,
}

impl ConsoleInput {
    pub fn new(
        serial: Arc<Mutex<SerialDevice<SerialOut>>>,
        source: InputSource,
        rx_drained: EventFd,
        exit: Arc<ExitSignal>,
    ) -> Self {
        Self {
            serial,
            source,
            rx_drained,
            exit,
            escape: EscapeState::Normal,
            watching_stdin: false,
            eof: false,
        }
    }

    fn stdin_events() -> Events {
        Events::new_raw(libc::STDIN_FILENO, EventSet::IN)
    }

    fn set_watch_stdin(&mut self, ops: &mut EventOps, on: bool) {
        if on == self.watching_stdin {
            return;
        }
        let r = if on {
            ops.add(Self::stdin_events())
        } else {
            ops.remove(Self::stdin_events())
        };
        match r {
            Ok(()) => self.watching_stdin = on,
            Err(e) => log::warn!("console: cannot change the stdin watch: {e}"),
        }
    }

    fn read_stdin(&mut self, max: usize) -> Vec<u8> {
        let mut buf = vec![0u8; max];
        // SAFETY: reads at most buf.len() bytes into buf.
        let n = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
        match n {
            0 => {
                self.eof = true;
                Vec::new()
            }
            n if n > 0 => {
                buf.truncate(n as usize);
                buf
            }
            _ => {
                let e = io::Error::last_os_error();
                if !matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) {
                    log::warn!("console: reading stdin failed, input stops: {e}");
                    self.eof = true;
                }
                Vec::new()
            }
        }
    }

    /// Moves input into the FIFO while both have some.
    fn feed(&mut self, ops: &mut EventOps) {
        match &self.source {
            InputSource::Scripted(shared) => {
                let shared = shared.clone();
                let mut serial = lock(&self.serial);
                let space = serial.rx_space();
                let bytes = shared.take_input(space);
                let taken = serial.push_input(&bytes);
                shared.unread_input(&bytes[taken..]);
            }
            InputSource::Stdin { tty: true, .. } => {
                if self.eof {
                    return self.set_watch_stdin(ops, false);
                }
                let typed = self.read_stdin(READ_CHUNK);
                let (bytes, quit) = filter_escapes(&mut self.escape, &typed);
                if quit {
                    self.exit.trigger(VmExit::Stopped(StopReason::ConsoleQuit));
                }
                let taken = lock(&self.serial).push_input(&bytes);
                if taken < bytes.len() {
                    log::debug!(
                        "console: FIFO full, {} typed bytes dropped",
                        bytes.len() - taken
                    );
                }
            }
            InputSource::Stdin {
                tty: false,
                pollable,
            } => {
                let pollable = *pollable;
                let space = lock(&self.serial).rx_space();
                if space > 0 && !self.eof {
                    let bytes = self.read_stdin(space);
                    lock(&self.serial).push_input(&bytes);
                }
                // A pipe is watched only while the FIFO has room; the
                // drained event brings it back.
                let room = lock(&self.serial).rx_space() > 0;
                if pollable {
                    self.set_watch_stdin(ops, room && !self.eof);
                }
            }
        }
    }
}

impl MutEventSubscriber for ConsoleInput {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.rx_drained, EventSet::IN)) {
            log::error!("console: cannot watch the UART: {e}");
        }
        match &self.source {
            InputSource::Scripted(shared) => {
                if let Err(e) = ops.add(Events::new(&shared.input_evt, EventSet::IN)) {
                    log::error!("console: cannot watch scripted input: {e}");
                }
            }
            InputSource::Stdin { pollable: true, .. } => self.set_watch_stdin(ops, true),
            InputSource::Stdin {
                pollable: false, ..
            } => self.feed(ops),
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd: RawFd = events.fd();
        if fd == self.rx_drained.as_raw_fd() {
            let _ = self.rx_drained.read();
        } else if let InputSource::Scripted(shared) = &self.source {
            if fd == shared.input_evt.as_raw_fd() {
                let _ = shared.input_evt.read();
            }
        } else if fd == libc::STDIN_FILENO && events.event_set().contains(EventSet::HANG_UP) {
            // Hang-up with data still readable is handled by reading to EOF.
            if !events.event_set().contains(EventSet::IN) {
                self.eof = true;
            }
        }
        self.feed(ops);
        if self.eof && self.watching_stdin {
            self.set_watch_stdin(ops, false);
        }
    }
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

    #[test]
    fn ctrl_a_x_quits_and_ctrl_a_ctrl_a_sends_one() {
        let mut s = EscapeState::Normal;
        assert_eq!(filter_escapes(&mut s, b"ls\r"), (b"ls\r".to_vec(), false));
        assert_eq!(
            filter_escapes(&mut s, &[ESCAPE, ESCAPE]),
            (vec![ESCAPE], false)
        );
        assert_eq!(
            filter_escapes(&mut s, &[ESCAPE, b'c']),
            (vec![ESCAPE, b'c'], false)
        );
        // The sequence may be split across reads.
        assert_eq!(filter_escapes(&mut s, b"a\x01"), (b"a".to_vec(), false));
        assert_eq!(s, EscapeState::AfterEscape);
        assert_eq!(filter_escapes(&mut s, b"xyz"), (vec![], true));
    }

    #[test]
    fn pipes_are_pollable_regular_files_are_not() {
        let mut fds = [0; 2];
        // SAFETY: fds has room for two descriptors.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        assert!(is_pollable(fds[0]));
        // SAFETY: closing the pipe created above.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        let f = std::fs::File::open(std::env::current_exe().unwrap()).unwrap();
        assert!(!is_pollable(f.as_raw_fd()));
    }
}
