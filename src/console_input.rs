//! Feeding the UART from the host: stdin (terminal, pipe, socket or file)
//! or the scripted input queue. Runs on the event loop and never blocks it.
//! Input enters only as fast as the guest drains the 64-byte FIFO (a pipe
//! waits in the kernel, not in Ember); an interactive terminal is always
//! read so Ctrl-A x works.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use ember_devices::serial::SerialDevice;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;

use crate::console::{ConsoleShared, SerialOut};
use crate::exit::{ExitSignal, StopReason, VmExit};
use crate::lock;
use crate::stdin::{ReadOutcome, Stdin};

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
    /// Standard input (terminal, pipe, socket or file), read without blocking.
    Stdin(Stdin),
    /// `Console::send_*`.
    Scripted(Arc<ConsoleShared>),
}

/// Bytes read from a terminal but not yet taken by the FIFO, at most: a
/// paste waits here while the guest reads; past this, typing is dropped as
/// on a real UART (the terminal must be read, so Ctrl-A x always works).
const TTY_PENDING_MAX: usize = 4096;

/// Feeds COM1's receive FIFO on the event loop. Stdin is read only when
/// epoll says it is readable (or, for a regular file, only when the FIFO
/// has room), and a pipe is watched only while the FIFO can take what is
/// read, so the guest's reading speed paces the writer; bytes the FIFO
/// refuses (full, or in loopback mode) wait in `pending`, never dropped.
pub struct ConsoleInput {
    serial: Arc<Mutex<SerialDevice<SerialOut>>>,
    source: InputSource,
    /// Written by the UART when its FIFO drained or left loopback mode.
    input_wanted: EventFd,
    exit: Arc<ExitSignal>,
    escape: EscapeState,
    pending: Vec<u8>,
    /// Stdin is registered with epoll right now.
    watching_stdin: bool,
    eof: bool,
    dropped: u64,
}

impl ConsoleInput {
    pub fn new(
        serial: Arc<Mutex<SerialDevice<SerialOut>>>,
        source: InputSource,
        input_wanted: EventFd,
        exit: Arc<ExitSignal>,
    ) -> Self {
        Self {
            serial,
            source,
            input_wanted,
            exit,
            escape: EscapeState::Normal,
            pending: Vec::new(),
            watching_stdin: false,
            eof: false,
            dropped: 0,
        }
    }

    fn set_watch_stdin(&mut self, ops: &mut EventOps, on: bool) {
        let InputSource::Stdin(stdin) = &self.source else {
            return;
        };
        if on == self.watching_stdin || !stdin.pollable() {
            return;
        }
        let ev = Events::new_raw(stdin.fd(), EventSet::IN);
        let r = if on { ops.add(ev) } else { ops.remove(ev) };
        match r {
            Ok(()) => self.watching_stdin = on,
            Err(e) => {
                log::warn!("console: cannot watch stdin, input stops: {e}");
                self.eof = true;
            }
        }
    }

    /// Moves pending bytes into the FIFO; true when none are left.
    fn flush_pending(&mut self) -> bool {
        if !self.pending.is_empty() {
            let taken = lock(&self.serial).push_input(&self.pending);
            self.pending.drain(..taken);
        }
        self.pending.is_empty()
    }

    /// Reads what stdin has now (never blocking) into `pending`.
    fn read_stdin(&mut self, max: usize) {
        let InputSource::Stdin(stdin) = &self.source else {
            return;
        };
        let mut buf = [0u8; READ_CHUNK];
        let max = max.min(buf.len());
        match stdin.read(&mut buf[..max]) {
            ReadOutcome::Data(n) => {
                if stdin.is_tty() {
                    let (bytes, quit) = filter_escapes(&mut self.escape, &buf[..n]);
                    if quit {
                        self.exit.trigger(VmExit::Stopped(StopReason::ConsoleQuit));
                    }
                    let room = TTY_PENDING_MAX.saturating_sub(self.pending.len());
                    let keep = bytes.len().min(room);
                    self.pending.extend_from_slice(&bytes[..keep]);
                    self.dropped += (bytes.len() - keep) as u64;
                } else {
                    self.pending.extend_from_slice(&buf[..n]);
                }
            }
            ReadOutcome::Nothing => {}
            ReadOutcome::Eof => self.eof = true,
        }
    }

    /// One step of the stdin state machine; `readable` is true when epoll
    /// reported stdin readable (or hung up) in this event.
    fn feed_stdin(&mut self, ops: &mut EventOps, readable: bool) {
        let InputSource::Stdin(stdin) = &self.source else {
            return;
        };
        let (tty, pollable) = (stdin.is_tty(), stdin.pollable());
        let mut fifo_ok = self.flush_pending();
        if !self.eof {
            if tty && readable {
                // Always read a terminal: the escape must get through.
                self.read_stdin(READ_CHUNK);
                fifo_ok = self.flush_pending();
            } else if !tty && fifo_ok && (readable || !pollable) {
                let space = lock(&self.serial).rx_space();
                if space > 0 {
                    self.read_stdin(space);
                    fifo_ok = self.flush_pending();
                }
            }
        }
        if self.dropped > 0 {
            log::debug!("console: FIFO full, {} typed bytes dropped", self.dropped);
            self.dropped = 0;
        }
        let room = fifo_ok && lock(&self.serial).rx_space() > 0;
        // A terminal stays watched; a pipe only while the FIFO has room.
        self.set_watch_stdin(ops, !self.eof && (tty || room));
    }

    fn feed_scripted(&mut self) {
        let InputSource::Scripted(shared) = &self.source else {
            return;
        };
        let mut serial = lock(&self.serial);
        let bytes = shared.take_input(serial.rx_space());
        let taken = serial.push_input(&bytes);
        shared.unread_input(&bytes[taken..]);
    }
}

impl MutEventSubscriber for ConsoleInput {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.input_wanted, EventSet::IN)) {
            log::error!("console: cannot watch the UART: {e}");
        }
        match &self.source {
            InputSource::Scripted(shared) => {
                if let Err(e) = ops.add(Events::new(&shared.input_evt, EventSet::IN)) {
                    log::error!("console: cannot watch scripted input: {e}");
                }
            }
            InputSource::Stdin(_) => self.feed_stdin(ops, false),
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd: RawFd = events.fd();
        if fd == self.input_wanted.as_raw_fd() {
            let _ = self.input_wanted.read();
        }
        match &self.source {
            InputSource::Scripted(shared) => {
                if fd == shared.input_evt.as_raw_fd() {
                    let _ = shared.input_evt.read();
                }
                self.feed_scripted();
            }
            InputSource::Stdin(stdin) => {
                let readable = fd == stdin.fd() && fd != self.input_wanted.as_raw_fd();
                self.feed_stdin(ops, readable);
            }
        }
    }
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
}
