//! The API socket's connections: a poll loop on a thread of its own, every
//! socket non-blocking, HTTP/1.1 parsed by `httparse`. A client costs only
//! its own connection: requests are bounded in size; a request (from its
//! first byte to the last byte of its reply) or an idle keep-alive
//! connection gets `IDLE` at most; at most `MAX_CONNECTIONS` are open (a
//! new one closes the one idle longest); each connection gets one request
//! served per round, so pipelined requests cannot starve the others; and
//! garbage gets a 400 and a close. The VM is never touched except through
//! `routes::route`.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use super::routes::Reply;

/// What answers the requests: the running VM's endpoints, or the
/// pre-boot ones (preboot.rs).
pub trait Handler: Send {
    fn handle(&mut self, method: &str, path: &str, body: &[u8]) -> Reply;
}

/// Largest request (head and body) one connection may send.
pub const MAX_REQUEST: usize = 64 << 10;
pub const MAX_CONNECTIONS: usize = 16;
/// How long one request may take from its first byte to its reply's last
/// byte, and how long a keep-alive connection may sit idle.
pub const IDLE: Duration = Duration::from_secs(10);
/// How long accepting waits after the process ran out of descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
const MAX_HEADERS: usize = 32;

struct Conn {
    stream: UnixStream,
    /// Bytes read and not yet answered.
    inbox: Vec<u8>,
    /// Response bytes not yet written.
    outbox: Vec<u8>,
    close_after_write: bool,
    /// When the current request (or the idle wait for one) began.
    since: Instant,
}

/// What a read found.
enum ReadOutcome {
    Open,
    /// The client closed its side: answer what it sent, then close.
    Eof,
    Failed,
}

/// What the head of `inbox` holds.
enum Parsed {
    Incomplete,
    /// A whole request: method, path, body, bytes it used, keep-alive.
    Request(String, String, Vec<u8>, usize, bool),
    Bad(String),
}

fn parse(inbox: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head = match req.parse(inbox) {
        Ok(httparse::Status::Partial) => return Parsed::Incomplete,
        Ok(httparse::Status::Complete(n)) => n,
        Err(e) => return Parsed::Bad(format!("malformed HTTP request: {e}")),
    };
    let mut length = 0usize;
    let mut keep_alive = req.version == Some(1);
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            match std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
            {
                Some(n) => length = n,
                None => return Parsed::Bad("Content-Length is not a number".into()),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Bad("Transfer-Encoding is not supported; send Content-Length".into());
        } else if h.name.eq_ignore_ascii_case("connection") {
            keep_alive = !h.value.eq_ignore_ascii_case(b"close");
        }
    }
    if head.saturating_add(length) > MAX_REQUEST {
        return Parsed::Bad(format!("request larger than {MAX_REQUEST} bytes"));
    }
    if inbox.len() < head + length {
        return Parsed::Incomplete;
    }
    let (method, path) = (
        req.method.unwrap_or_default().to_string(),
        req.path.unwrap_or_default().to_string(),
    );
    let body = inbox[head..head + length].to_vec();
    Parsed::Request(method, path, body, head + length, keep_alive)
}

/// A whole request's method, path and body, if `bytes` start with one
/// (for the fuzz target).
pub(crate) fn parse_request(bytes: &[u8]) -> Option<(String, String, Vec<u8>)> {
    match parse(bytes) {
        Parsed::Request(method, path, body, _, _) => Some((method, path, body)),
        Parsed::Incomplete | Parsed::Bad(_) => None,
    }
}

fn response_bytes(r: &Reply) -> Vec<u8> {
    let reason = match r.status {
        200 => "OK",
        204 => "No Content",
        _ => "Bad Request",
    };
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\nServer: Ember\r\nContent-Length: {}\r\n",
        r.status,
        r.body.len()
    );
    if !r.body.is_empty() {
        out.push_str("Content-Type: application/json\r\n");
    }
    out.push_str("\r\n");
    out.push_str(&r.body);
    out.into_bytes()
}

impl Conn {
    /// Answers the first whole request in the inbox, if there is one.
    fn serve_one(&mut self, handler: &mut dyn Handler) {
        if self.close_after_write || !self.outbox.is_empty() {
            return;
        }
        match parse(&self.inbox) {
            Parsed::Incomplete => {
                if self.inbox.len() >= MAX_REQUEST {
                    self.fail(format!("request larger than {MAX_REQUEST} bytes"));
                }
            }
            Parsed::Bad(why) => self.fail(why),
            Parsed::Request(method, path, body, used, keep_alive) => {
                self.inbox.drain(..used);
                let reply = handler.handle(&method, &path, &body);
                log::info!("API {method} {path}: {}", reply.status);
                self.outbox.extend(response_bytes(&reply));
                self.close_after_write = !keep_alive;
            }
        }
    }

    /// A whole request waits in the inbox (one was pipelined behind another).
    fn has_request(&self) -> bool {
        self.outbox.is_empty()
            && !self.close_after_write
            && matches!(parse(&self.inbox), Parsed::Request(..) | Parsed::Bad(_))
    }

    fn fail(&mut self, why: String) {
        log::info!("API request refused: {why}");
        self.outbox.extend(response_bytes(&Reply::fault(why)));
        self.inbox.clear();
        self.close_after_write = true;
    }

    /// Reads what is there.
    fn read_some(&mut self) -> ReadOutcome {
        let mut chunk = [0u8; 8192];
        loop {
            if self.inbox.is_empty() {
                // A new request's time starts at its first byte.
                self.since = Instant::now();
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return ReadOutcome::Eof,
                Ok(n) => {
                    self.inbox.extend_from_slice(&chunk[..n]);
                    if self.inbox.len() >= MAX_REQUEST {
                        return ReadOutcome::Open;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadOutcome::Open,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return ReadOutcome::Failed,
            }
        }
    }

    /// Writes what it can; false when the connection is done with.
    fn write_some(&mut self) -> bool {
        while !self.outbox.is_empty() {
            match self.stream.write(&self.outbox) {
                Ok(0) => return false,
                Ok(n) => {
                    self.outbox.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        // The reply is out: the next request's (or the idle wait's) time
        // starts now.
        self.since = Instant::now();
        !self.close_after_write
    }
}

/// Serves `listener` until `stop` (an eventfd) is readable.
pub fn serve(listener: UnixListener, stop: RawFd, mut handler: Box<dyn Handler>) {
    if let Err(e) = listener.set_nonblocking(true) {
        log::warn!("API socket: cannot make it non-blocking ({e}); API off");
        return;
    }
    let mut conns: Vec<Conn> = Vec::new();
    let mut accept_after: Option<Instant> = None;
    loop {
        let accepting = accept_after.is_none_or(|t| Instant::now() >= t);
        let mut fds = vec![
            poll_fd(stop, libc::POLLIN),
            poll_fd(
                listener.as_raw_fd(),
                if accepting { libc::POLLIN } else { 0 },
            ),
        ];
        for c in &conns {
            let events = if c.outbox.is_empty() {
                libc::POLLIN
            } else {
                libc::POLLOUT
            };
            fds.push(poll_fd(c.stream.as_raw_fd(), events));
        }
        // Requests already read (pipelined) are served without waiting.
        let timeout = if conns.iter().any(Conn::has_request) {
            0
        } else if !accepting {
            ACCEPT_BACKOFF.as_millis() as libc::c_int
        } else {
            1000
        };
        // SAFETY: `fds` is a live array of pollfd of the given length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            log::warn!(
                "API socket: poll failed ({}); API off",
                io::Error::last_os_error()
            );
            return;
        }
        if fds[0].revents != 0 {
            return;
        }
        // Connections first (their indices match `fds` from 2 on).
        let mut keep = Vec::with_capacity(conns.len());
        for (mut c, p) in conns.into_iter().zip(&fds[2..]) {
            let mut alive = true;
            let readable = p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0;
            if readable && c.outbox.is_empty() {
                match c.read_some() {
                    ReadOutcome::Open => {}
                    ReadOutcome::Eof => {
                        // Half-closed: what it sent is still answered.
                        c.serve_one(handler.as_mut());
                        c.close_after_write = true;
                    }
                    ReadOutcome::Failed => alive = false,
                }
            }
            if alive {
                c.serve_one(handler.as_mut());
                if c.outbox.is_empty() && c.close_after_write {
                    alive = false;
                }
            }
            if alive && !c.outbox.is_empty() {
                alive = c.write_some();
            }
            if alive && c.since.elapsed() >= IDLE {
                log::info!("API connection: no request done within {IDLE:?}; closed");
                alive = false;
            }
            if alive {
                keep.push(c);
            }
        }
        conns = keep;
        if accepting && fds[1].revents & libc::POLLIN != 0 {
            if let Err(e) = accept_all(&listener, &mut conns) {
                log::warn!("API socket: cannot accept ({e}); retrying in {ACCEPT_BACKOFF:?}");
                accept_after = Some(Instant::now() + ACCEPT_BACKOFF);
            } else {
                accept_after = None;
            }
        }
    }
}

/// Accepts every pending connection; when all slots are taken, the
/// connection that has waited longest makes room. Err when accepting fails
/// for a reason that would repeat at once (out of descriptors).
fn accept_all(listener: &UnixListener, conns: &mut Vec<Conn>) -> io::Result<()> {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                if stream.set_nonblocking(true).is_err() {
                    continue;
                }
                if conns.len() >= MAX_CONNECTIONS {
                    if let Some(oldest) = (0..conns.len()).min_by_key(|&i| conns[i].since) {
                        log::info!("API: {MAX_CONNECTIONS} connections open; the oldest closed");
                        conns.swap_remove(oldest);
                    }
                }
                conns.push(Conn {
                    stream,
                    inbox: Vec::new(),
                    outbox: Vec::new(),
                    close_after_write: false,
                    since: Instant::now(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

fn poll_fd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_whole_partial_and_bad() {
        let r = b"PATCH /vm HTTP/1.1\r\nContent-Length: 19\r\n\r\n{\"state\":\"Paused\"}x";
        match parse(r) {
            Parsed::Request(m, p, body, used, keep) => {
                assert_eq!((m.as_str(), p.as_str()), ("PATCH", "/vm"));
                assert_eq!(body, b"{\"state\":\"Paused\"}x");
                assert_eq!(used, r.len());
                assert!(keep);
            }
            _ => panic!("not parsed"),
        }
        assert!(matches!(parse(&r[..r.len() - 3]), Parsed::Incomplete));
        assert!(matches!(parse(b"GET / HTTP/1.1\r\nHo"), Parsed::Incomplete));
        assert!(matches!(parse(b"\x00\x01garbage\r\n\r\n"), Parsed::Bad(_)));
        let huge = format!(
            "PUT /actions HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_REQUEST
        );
        assert!(matches!(parse(huge.as_bytes()), Parsed::Bad(m) if m.contains("larger")));
        let chunked = b"PUT /actions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(parse(chunked), Parsed::Bad(_)));
        let close = b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n";
        assert!(matches!(parse(close), Parsed::Request(_, _, _, _, false)));
    }
}
