//! The guest's console (COM1) as the host sees it: where its output goes
//! (a terminal through a writer thread, or a transcript a program can
//! search) and the handle a program uses to script it.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::config::ConsoleMode;
use crate::console_input::InputSource;
use crate::console_match::{full_regex, Stream};
use crate::lock;
use crate::stdin::Stdin;
use crate::terminal::RawMode;

/// Output kept for searching, at most; older output is dropped past this.
const TRANSCRIPT_MAX: usize = 16 << 20;
/// A pattern the streaming matcher cannot take is searched at most this often.
const SLOW_EVERY: Duration = Duration::from_millis(50);
/// Terminal output waiting for the writer thread, at most.
const PUMP_MAX: usize = 1 << 20;
/// Scripted input waiting for room in the UART FIFO, at most.
const INPUT_MAX: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("invalid pattern {pattern:?}")]
    Pattern {
        pattern: String,
        #[source]
        source: regex::Error,
    },
    #[error("no match for {pattern:?} within {timeout:?}; last output: {tail:?}")]
    Timeout {
        pattern: String,
        timeout: Duration,
        tail: String,
    },
    #[error("the VM ended before {pattern:?} appeared; last output: {tail:?}")]
    VmEnded { pattern: String, tail: String },
    #[error("scripted input is full ({INPUT_MAX} bytes wait for the guest to read them)")]
    InputFull,
}

#[derive(Default)]
struct Transcript {
    text: Vec<u8>,
    /// Bytes dropped from the front so far (absolute offset of `text[0]`).
    dropped: u64,
    /// Where the next `wait_for` starts searching.
    cursor: usize,
    ended: bool,
}

/// State shared by the console handle, the UART's writer and the event loop.
pub(crate) struct ConsoleShared {
    transcript: Mutex<Transcript>,
    output_cv: Condvar,
    input: Mutex<VecDeque<u8>>,
    /// Written when scripted input arrives, so the event loop feeds the UART.
    pub(crate) input_evt: EventFd,
}

impl ConsoleShared {
    pub(crate) fn new() -> io::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            transcript: Mutex::new(Transcript::default()),
            output_cv: Condvar::new(),
            input: Mutex::new(VecDeque::new()),
            input_evt: EventFd::new(EFD_NONBLOCK)?,
        }))
    }

    fn append_output(&self, bytes: &[u8]) {
        let mut t = lock(&self.transcript);
        t.text.extend_from_slice(bytes);
        if t.text.len() > TRANSCRIPT_MAX {
            let drop = t.text.len() - TRANSCRIPT_MAX / 2;
            t.text.drain(..drop);
            t.dropped += drop as u64;
            t.cursor = t.cursor.saturating_sub(drop);
        }
        self.output_cv.notify_all();
    }

    /// Takes up to `max` bytes of scripted input.
    pub(crate) fn take_input(&self, max: usize) -> Vec<u8> {
        let mut q = lock(&self.input);
        let n = max.min(q.len());
        q.drain(..n).collect()
    }

    /// Puts bytes the UART could not take back at the front.
    pub(crate) fn unread_input(&self, bytes: &[u8]) {
        let mut q = lock(&self.input);
        for b in bytes.iter().rev() {
            q.push_front(*b);
        }
    }

    pub(crate) fn mark_ended(&self) {
        lock(&self.transcript).ended = true;
        self.output_cv.notify_all();
    }
}

/// A program's handle on the guest console: send input, wait for output
/// matching a regex, read the transcript. Cheap to clone.
#[derive(Clone)]
pub struct Console {
    shared: Arc<ConsoleShared>,
}

impl Console {
    pub(crate) fn new(shared: Arc<ConsoleShared>) -> Self {
        Self { shared }
    }

    /// Queues bytes for the guest; they enter the UART as it reads.
    pub fn send_bytes(&self, bytes: &[u8]) -> Result<(), ConsoleError> {
        {
            let mut q = lock(&self.shared.input);
            if q.len() + bytes.len() > INPUT_MAX {
                return Err(ConsoleError::InputFull);
            }
            q.extend(bytes);
        }
        if let Err(e) = self.shared.input_evt.write(1) {
            log::warn!("console: cannot wake the event loop: {e}");
        }
        Ok(())
    }

    /// Sends `line` followed by a newline.
    pub fn send_line(&self, line: &str) -> Result<(), ConsoleError> {
        self.send_bytes(format!("{line}\n").as_bytes())
    }

    /// Waits until output after the previous match matches `pattern`.
    /// Returns the whole match and then each capture group ("" when a group
    /// did not take part). The next call searches after this match.
    ///
    /// Patterns match raw bytes (see `console_match`: `.` matches any byte;
    /// `(?u)` turns Unicode classes on). Each wake-up costs O(new output):
    /// a lazy DFA sees every byte once, and the full regex runs only once a
    /// match exists.
    pub fn wait_for(&self, pattern: &str, timeout: Duration) -> Result<Vec<String>, ConsoleError> {
        let re = full_regex(pattern).map_err(|source| ConsoleError::Pattern {
            pattern: pattern.to_string(),
            source,
        })?;
        let deadline = Instant::now() + timeout;
        let mut t = lock(&self.shared.transcript);
        let mut stream = Stream::new(pattern, t.dropped + t.cursor as u64);
        let mut last_slow: Option<Instant> = None;
        loop {
            // Without a stream each search scans the whole window under the
            // lock the guest's output needs: at most one per SLOW_EVERY.
            let slow = stream.is_none();
            if !slow || last_slow.is_none_or(|t| t.elapsed() >= SLOW_EVERY) {
                if slow {
                    last_slow = Some(Instant::now());
                }
                if let Some(caps) = Self::try_match(&mut t, &re, &mut stream) {
                    return Ok(caps);
                }
            }
            let tail = || tail_of(&t.text);
            if t.ended {
                return Err(ConsoleError::VmEnded {
                    pattern: pattern.to_string(),
                    tail: tail(),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ConsoleError::Timeout {
                    pattern: pattern.to_string(),
                    timeout,
                    tail: tail(),
                });
            }
            let mut wait = deadline - now;
            if stream.is_none() {
                wait = wait.min(SLOW_EVERY);
            }
            t = self
                .shared
                .output_cv
                .wait_timeout(t, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Feeds the new output to the stream; when a match exists (or the
    /// stream gave up), runs the regex over the window after the cursor.
    fn try_match(
        t: &mut Transcript,
        re: &regex::bytes::Regex,
        stream: &mut Option<Stream>,
    ) -> Option<Vec<String>> {
        let window_start = t.dropped + t.cursor as u64;
        let fed = match stream {
            // Output the stream had not seen yet was dropped (16 MiB cap):
            // search what is left the slow way from now on.
            Some(s) if s.fed_to < window_start => Err(()),
            Some(s) => {
                let from = usize::try_from(s.fed_to - t.dropped).unwrap_or(usize::MAX);
                s.feed(t.text.get(from..).unwrap_or_default())
            }
            None => Err(()),
        };
        let maybe = fed.unwrap_or_else(|()| {
            *stream = None;
            true
        });
        if !maybe {
            return None;
        }
        let Some(caps) = re.captures(&t.text[t.cursor..]) else {
            // The stream and the regex disagree (they should not): trust
            // the regex from now on, so no match is ever missed.
            *stream = None;
            return None;
        };
        let end = caps.get(0).map_or(0, |m| m.end());
        let groups = caps
            .iter()
            .map(|m| {
                m.map_or(String::new(), |m| {
                    String::from_utf8_lossy(m.as_bytes()).into_owned()
                })
            })
            .collect();
        t.cursor = (t.cursor + end).min(t.text.len());
        Some(groups)
    }

    /// Everything the guest printed (the last 8-16 MiB of it).
    pub fn transcript(&self) -> String {
        String::from_utf8_lossy(&lock(&self.shared.transcript).text).into_owned()
    }
}

fn tail_of(text: &[u8]) -> String {
    let start = text.len().saturating_sub(400);
    String::from_utf8_lossy(&text[start..]).into_owned()
}

/// How long console output may take to drain when the VM ends.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// The console's host side for one VM: the state shared with the program
/// that scripts it, the output writer threads and the terminal's raw mode.
/// Dropping it lets output drain (for at most OUTPUT_GRACE) and restores
/// the terminal.
pub(crate) struct ConsoleHost {
    /// Its output threads run under their seccomp filter.
    seccomp: bool,
    mode: ConsoleMode,
    shared: Arc<ConsoleShared>,
    pumps: Vec<Arc<Mutex<OutputPump>>>,
    raw_mode: Option<RawMode>,
}

impl ConsoleHost {
    /// The host side and the writer to give the UART.
    /// `seccomp`: the output threads run under their filter.
    pub(crate) fn new(mode: &ConsoleMode, seccomp: bool) -> io::Result<(Self, SerialOut)> {
        let mut host = Self {
            seccomp,
            mode: mode.clone(),
            shared: ConsoleShared::new()?,
            pumps: Vec::new(),
            raw_mode: None,
        };
        let out = match mode {
            ConsoleMode::Terminal => SerialOut::Pump(host.pump(Box::new(io::stdout()))?),
            ConsoleMode::Scripted { echo } => SerialOut::Transcript {
                shared: host.shared.clone(),
                // A descriptor of its own: std's stderr lock is never held
                // by a pump stuck on a reader that does not read.
                echo: match echo {
                    true => Some(host.pump(Box::new(dup_stderr()?))?),
                    false => None,
                },
            },
        };
        Ok((host, out))
    }

    fn pump(&mut self, out: Box<dyn Write + Send>) -> io::Result<Arc<Mutex<OutputPump>>> {
        let p = Arc::new(Mutex::new(OutputPump::with_filter(out, self.seccomp)?));
        self.pumps.push(p.clone());
        Ok(p)
    }

    /// Where the UART's input comes from.
    pub(crate) fn input_source(&self) -> InputSource {
        match self.mode {
            ConsoleMode::Terminal => InputSource::Stdin(Stdin::open(libc::STDIN_FILENO)),
            ConsoleMode::Scripted { .. } => InputSource::Scripted(self.shared.clone()),
        }
    }

    /// Raw mode for an interactive terminal (nothing for scripted consoles
    /// or when stdin is not a terminal).
    pub(crate) fn enter_raw_mode(&mut self) -> io::Result<()> {
        if self.mode == ConsoleMode::Terminal {
            self.raw_mode = RawMode::enter()?;
        }
        Ok(())
    }

    pub(crate) fn console(&self) -> Console {
        Console::new(self.shared.clone())
    }

    /// Marks the console ended (waiters get `VmEnded` instead of waiting
    /// out their timeout).
    pub(crate) fn end_hook(&self) -> Box<dyn Fn() + Send + Sync> {
        let shared = self.shared.clone();
        Box::new(move || shared.mark_ended())
    }
}

impl Drop for ConsoleHost {
    fn drop(&mut self) {
        self.shared.mark_ended();
        for pump in &self.pumps {
            lock(pump).finish(OUTPUT_GRACE);
        }
        self.raw_mode = None;
    }
}

/// Writes terminal output from its own thread, so a slow or stuck reader
/// never blocks a vCPU. When its buffer is full, output is dropped and
/// counted.
pub(crate) struct OutputPump {
    state: Arc<(Mutex<PumpState>, Condvar)>,
    thread: Option<JoinHandle<()>>,
    pub(crate) dropped: Arc<AtomicU64>,
}

#[derive(Default)]
struct PumpState {
    queue: VecDeque<u8>,
    closing: bool,
    broken: bool,
    /// The writer thread is in a write of what it took from `queue`.
    writing: bool,
    /// The writer thread has ended.
    done: bool,
}

impl OutputPump {
    #[cfg(test)]
    pub(crate) fn new(out: Box<dyn Write + Send>) -> io::Result<Self> {
        Self::with_filter(out, false)
    }

    /// A pump whose thread runs under the console-output seccomp filter
    /// when `seccomp`.
    pub(crate) fn with_filter(mut out: Box<dyn Write + Send>, seccomp: bool) -> io::Result<Self> {
        let state: Arc<(Mutex<PumpState>, Condvar)> = Arc::default();
        let s = state.clone();
        let thread = std::thread::Builder::new()
            .name("ember-console-out".into())
            .spawn(move || {
                crate::signals::block_stop_signals_here();
                if seccomp {
                    crate::seccomp::install_or_log(crate::seccomp::ThreadKind::ConsoleOut);
                }
                let (m, cv) = &*s;
                loop {
                    let chunk: Vec<u8> = {
                        let mut st = cv
                            .wait_while(lock(m), |st| st.queue.is_empty() && !st.closing)
                            .unwrap_or_else(|e| e.into_inner());
                        if st.queue.is_empty() {
                            break;
                        }
                        st.writing = true;
                        st.queue.drain(..).collect()
                    };
                    let ok = out.write_all(&chunk).and_then(|_| out.flush()).is_ok();
                    let mut st = lock(m);
                    st.writing = false;
                    cv.notify_all();
                    if !ok {
                        st.broken = true;
                        break;
                    }
                }
                lock(m).done = true;
                cv.notify_all();
            })?;
        Ok(Self {
            state,
            thread: Some(thread),
            dropped: Arc::default(),
        })
    }

    fn push(&self, bytes: &[u8]) -> io::Result<()> {
        let (m, cv) = &*self.state;
        let mut st = lock(m);
        if st.broken {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        if st.queue.len() + bytes.len() > PUMP_MAX {
            self.dropped
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        st.queue.extend(bytes);
        cv.notify_all();
        Ok(())
    }

    /// Waits (at most `timeout`) until everything pushed so far is written.
    fn wait_written(&self, timeout: Duration) {
        let (m, cv) = &*self.state;
        let _ = cv
            .wait_timeout_while(lock(m), timeout, |st| {
                (!st.queue.is_empty() || st.writing) && !st.broken && !st.done
            })
            .unwrap_or_else(|e| e.into_inner());
    }

    /// Lets the thread write what is queued, waiting at most `grace`; a
    /// thread stuck on a reader that never reads is left behind.
    pub(crate) fn finish(&mut self, grace: Duration) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        let (m, cv) = &*self.state;
        let mut st = lock(m);
        st.closing = true;
        cv.notify_all();
        let (st, _) = cv
            .wait_timeout_while(st, grace, |st| !st.done)
            .unwrap_or_else(|e| e.into_inner());
        if st.done {
            drop(st);
            let _ = thread.join();
        } else {
            // Left behind, detached: it is stuck in a write to a reader
            // that does not read, which Ember does not control.
            log::warn!(
                "console output is blocked; {} bytes left unwritten",
                st.queue.len()
            );
        }
    }
}

impl Drop for OutputPump {
    fn drop(&mut self) {
        self.finish(OUTPUT_GRACE);
    }
}

fn dup_stderr() -> io::Result<std::fs::File> {
    use std::os::fd::AsFd;
    Ok(std::fs::File::from(
        io::stderr().as_fd().try_clone_to_owned()?,
    ))
}

/// Log output that never blocks the thread that logs (a vCPU, the event
/// loop): lines go to a bounded queue that a thread of its own writes to
/// stderr; when stderr is stuck and the queue is full, lines are dropped
/// and counted. For `env_logger::Target::Pipe`. Flushing waits (at most a
/// second) until what was logged is written.
pub struct LogWriter {
    pump: Arc<OutputPump>,
}

impl LogWriter {
    /// `seccomp`: its thread runs under the console-output filter.
    pub fn stderr(seccomp: bool) -> io::Result<Self> {
        Ok(Self {
            pump: Arc::new(OutputPump::with_filter(Box::new(dup_stderr()?), seccomp)?),
        })
    }
}

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Dropped and counted when full: logging must never block.
        let _ = self.pump.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.pump.wait_written(Duration::from_secs(1));
        Ok(())
    }
}

/// Where COM1's output bytes go: the `Write` given to the UART.
pub(crate) enum SerialOut {
    Pump(Arc<Mutex<OutputPump>>),
    Transcript {
        shared: Arc<ConsoleShared>,
        echo: Option<Arc<Mutex<OutputPump>>>,
    },
}

impl Write for SerialOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            SerialOut::Pump(p) => lock(p).push(buf)?,
            SerialOut::Transcript { shared, echo } => {
                shared.append_output(buf);
                if let Some(p) = echo {
                    // Echo is best effort; the transcript has the bytes.
                    let _ = lock(p).push(buf);
                }
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn console() -> (Console, SerialOut) {
        let shared = ConsoleShared::new().unwrap();
        (
            Console::new(shared.clone()),
            SerialOut::Transcript { shared, echo: None },
        )
    }

    #[test]
    fn wait_for_matches_in_order_and_returns_groups() {
        let (c, mut out) = console();
        out.write_all(b"boot\r\nCPUs: 2\r\n# ").unwrap();
        let m = c.wait_for(r"CPUs: (\d+)", Duration::from_secs(1)).unwrap();
        assert_eq!(m, vec!["CPUs: 2".to_string(), "2".to_string()]);
        // The same text is not matched twice.
        assert!(matches!(
            c.wait_for(r"CPUs", Duration::from_millis(20)),
            Err(ConsoleError::Timeout { .. })
        ));
        assert!(c.wait_for(r"# $", Duration::from_millis(20)).is_ok());
        assert!(c.transcript().starts_with("boot"));
    }

    #[test]
    fn wait_for_sees_output_from_another_thread_and_vm_end() {
        let (c, mut out) = console();
        let shared = match &out {
            SerialOut::Transcript { shared, .. } => shared.clone(),
            SerialOut::Pump(_) => unreachable!(),
        };
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            out.write_all(b"login: ").unwrap();
            shared.mark_ended();
        });
        assert!(c.wait_for("login:", Duration::from_secs(5)).is_ok());
        t.join().unwrap();
        assert!(matches!(
            c.wait_for("never", Duration::from_secs(5)),
            Err(ConsoleError::VmEnded { .. })
        ));
        assert!(matches!(
            c.wait_for("(", Duration::from_secs(1)),
            Err(ConsoleError::Pattern { .. })
        ));
    }

    #[test]
    fn raw_bytes_never_hide_a_match_and_groups_come_back_lossy() {
        let (c, mut out) = console();
        for chunk in [&b"start\xff"[..], b"\xfe mid", b"dle end"] {
            out.write_all(chunk).unwrap();
        }
        let m = c
            .wait_for(r"(?s)start(.*)end", Duration::from_secs(1))
            .unwrap();
        assert_eq!(m[1], "\u{fffd}\u{fffd} middle ");
    }

    #[test]
    fn matches_across_a_dropped_front_are_still_found() {
        let (c, mut out) = console();
        let chunk = vec![b'x'; 1 << 20];
        let waiter = {
            let c = c.clone();
            std::thread::spawn(move || c.wait_for("needle", Duration::from_secs(20)))
        };
        for _ in 0..20 {
            out.write_all(&chunk).unwrap();
        }
        out.write_all(b"needle").unwrap();
        assert_eq!(waiter.join().unwrap().unwrap()[0], "needle");
    }

    #[test]
    fn input_is_queued_bounded_and_can_be_put_back() {
        let shared = ConsoleShared::new().unwrap();
        let c = Console::new(shared.clone());
        c.send_line("ls").unwrap();
        assert_eq!(shared.input_evt.read().unwrap(), 1);
        let got = shared.take_input(2);
        assert_eq!(got, b"ls");
        shared.unread_input(b"s");
        assert_eq!(shared.take_input(64), b"s\n");
        assert!(matches!(
            c.send_bytes(&vec![0; INPUT_MAX + 1]),
            Err(ConsoleError::InputFull)
        ));
    }

    #[test]
    fn transcript_is_capped() {
        let (c, mut out) = console();
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..20 {
            out.write_all(&chunk).unwrap();
        }
        let len = c.transcript().len();
        assert!(len <= TRANSCRIPT_MAX, "{len}");
    }

    #[test]
    fn pump_drops_when_full_and_reports_a_closed_reader() {
        struct Stuck;
        impl Write for Stuck {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                std::thread::sleep(Duration::from_secs(3600));
                Ok(0)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut p = OutputPump::new(Box::new(Stuck)).unwrap();
        let chunk = vec![0u8; 4096];
        let mut refused = 0;
        for _ in 0..(2 * PUMP_MAX / 4096) {
            if p.push(&chunk).is_err() {
                refused += 1;
            }
        }
        assert!(refused > 0);
        assert!(p.dropped.load(Ordering::Relaxed) > 0);
        p.finish(Duration::from_millis(10));

        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut p = OutputPump::new(Box::new(Closed)).unwrap();
        p.push(b"x").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(p.push(b"y").unwrap_err().kind(), io::ErrorKind::BrokenPipe);
        p.finish(Duration::from_secs(1));
    }
}
