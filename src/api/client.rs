//! The CLI's side of the API socket (`ember pause|resume|stop --api-sock
//! PATH`): one request, one reply, bounded in time and size.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);
const MAX_REPLY: u64 = 1 << 20;

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    /// The `fault_message` of an error reply, or the body as it is.
    pub fn message(&self) -> String {
        serde_json::from_str::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["fault_message"].as_str().map(str::to_string))
            .unwrap_or_else(|| self.body.clone())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the API at {path} (is `ember run --api-sock {path}` running?)")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the API at {path} did not answer")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the API at {path} answered something that is not HTTP: {why}")]
    BadReply { path: PathBuf, why: String },
}

/// Sends `method uri` with an optional JSON body; returns the reply.
pub fn request(
    path: &Path,
    method: &str,
    uri: &str,
    body: Option<&str>,
) -> Result<Reply, ClientError> {
    let io = |source| ClientError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut s = UnixStream::connect(path).map_err(|source| ClientError::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    s.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    s.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {uri} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(io)?;
    let mut raw = Vec::new();
    s.take(MAX_REPLY).read_to_end(&mut raw).map_err(io)?;
    parse_reply(&raw).map_err(|why| ClientError::BadReply {
        path: path.to_path_buf(),
        why,
    })
}

fn parse_reply(raw: &[u8]) -> Result<Reply, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    let head = match r.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err("the reply ended early".into()),
        Err(e) => return Err(e.to_string()),
    };
    let status = r.code.ok_or("no status code")?;
    let body = String::from_utf8_lossy(&raw[head..]).into_owned();
    Ok(Reply { status, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_and_fault_messages_are_extracted() {
        let r = parse_reply(
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 26\r\n\r\n{\"fault_message\":\"no way\"}",
        )
        .unwrap();
        assert_eq!((r.status, r.message().as_str()), (400, "no way"));
        let r = parse_reply(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
        assert_eq!(r.status, 204);
        assert!(parse_reply(b"garbage\r\n\r\n").is_err());
        assert!(parse_reply(b"HTTP/1.1 200 OK\r\nContent-").is_err());
    }
}
