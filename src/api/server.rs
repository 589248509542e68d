//! The API socket's connections: a poll loop on a thread of its own, every
//! socket non-blocking, HTTP/1.1 parsed by `httparse`. A client costs only
//! its own connection: requests are bounded in size, a connection that
//! makes no progress for `IDLE` is closed, at most `MAX_CONNECTIONS` are
//! served at once (more are closed as they come), and garbage gets a 400
//! and a close. The VM is never touched except through `routes::route`.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use super::routes::{route, Reply};
use crate::control::VmControl;

/// Largest request (head and body) one connection may send.
pub const MAX_REQUEST: usize = 64 << 10;
pub const MAX_CONNECTIONS: usize = 16;
/// A connection with nothing read or written for this long is closed.
pub const IDLE: Duration = Duration::from_secs(10);
const MAX_HEADERS: usize = 32;

struct Conn {
    stream: UnixStream,
    /// Bytes read and not yet answered.
    inbox: Vec<u8>,
    /// Response bytes not yet written.
    outbox: Vec<u8>,
    close_after_write: bool,
    last_progress: Instant,
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
    /// Answers every whole request in the inbox (pipelined ones too).
    fn serve(&mut self, vm: &VmControl, id: &str) {
        while !self.close_after_write {
            match parse(&self.inbox) {
                Parsed::Incomplete => {
                    if self.inbox.len() >= MAX_REQUEST {
                        self.fail(format!("request larger than {MAX_REQUEST} bytes"));
                    }
                    return;
                }
                Parsed::Bad(why) => return self.fail(why),
                Parsed::Request(method, path, body, used, keep_alive) => {
                    self.inbox.drain(..used);
                    let reply = route(vm, id, &method, &path, &body);
                    log::info!("API {method} {path}: {}", reply.status);
                    self.outbox.extend(response_bytes(&reply));
                    self.close_after_write = !keep_alive;
                }
            }
        }
    }

    fn fail(&mut self, why: String) {
        log::info!("API request refused: {why}");
        self.outbox.extend(response_bytes(&Reply::fault(why)));
        self.inbox.clear();
        self.close_after_write = true;
    }

    /// Reads what is there; false when the connection is done with.
    fn read_some(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => {
                    self.last_progress = Instant::now();
                    self.inbox.extend_from_slice(&chunk[..n]);
                    if self.inbox.len() >= MAX_REQUEST {
                        return true;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }

    /// Writes what it can; false when the connection is done with.
    fn write_some(&mut self) -> bool {
        while !self.outbox.is_empty() {
            match self.stream.write(&self.outbox) {
                Ok(0) => return false,
                Ok(n) => {
                    self.last_progress = Instant::now();
                    self.outbox.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        !self.close_after_write
    }
}

/// Serves `listener` until `stop` (an eventfd) is readable.
pub fn serve(listener: UnixListener, stop: RawFd, vm: VmControl, id: String) {
    if let Err(e) = listener.set_nonblocking(true) {
        log::warn!("API socket: cannot make it non-blocking ({e}); API off");
        return;
    }
    let mut conns: Vec<Conn> = Vec::new();
    loop {
        let mut fds = vec![
            poll_fd(stop, libc::POLLIN),
            poll_fd(listener.as_raw_fd(), libc::POLLIN),
        ];
        for c in &conns {
            let events = if c.outbox.is_empty() {
                libc::POLLIN
            } else {
                libc::POLLOUT
            };
            fds.push(poll_fd(c.stream.as_raw_fd(), events));
        }
        // SAFETY: `fds` is a live array of pollfd of the given length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 1000) };
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
            if p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0
                && c.outbox.is_empty()
            {
                alive = c.read_some();
                c.serve(&vm, &id);
            }
            if alive && !c.outbox.is_empty() {
                alive = c.write_some();
                if alive && c.outbox.is_empty() {
                    // Requests pipelined behind the one just answered.
                    c.serve(&vm, &id);
                }
            }
            if alive && c.last_progress.elapsed() >= IDLE {
                log::info!("API connection idle for {IDLE:?}: closed");
                alive = false;
            }
            if alive {
                keep.push(c);
            }
        }
        conns = keep;
        if fds[1].revents & libc::POLLIN != 0 {
            accept_all(&listener, &mut conns);
        }
    }
}

fn accept_all(listener: &UnixListener, conns: &mut Vec<Conn>) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                if conns.len() >= MAX_CONNECTIONS {
                    log::info!("API: {MAX_CONNECTIONS} connections open; one more refused");
                    continue;
                }
                if stream.set_nonblocking(true).is_err() {
                    continue;
                }
                conns.push(Conn {
                    stream,
                    inbox: Vec::new(),
                    outbox: Vec::new(),
                    close_after_write: false,
                    last_progress: Instant::now(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
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
