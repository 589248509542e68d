//! What Ember and its container init (`ember-init`, PID 1 of a container
//! guest) say to each other.
//!
//! - The **stream** is one virtio-console port named [`PORT_NAME`]: a
//!   byte stream each way carrying COBS-framed postcard messages
//!   ([`FromGuest`], [`ToGuest`]). CMD's stdout and stderr are separate
//!   messages, so they stay separate and byte-exact; stdin's end is a
//!   message of its own; so is the exit status, which the host answers
//!   with [`ToGuest::Done`] once everything before it is written out.
//! - The init starts by saying [`FromGuest::Ready`]; the host answers with
//!   the **spec** (what to run, how), in [`ToGuest::Spec`] chunks and a
//!   [`ToGuest::SpecEnd`]: arguments and environment of any size and bytes,
//!   never through the kernel's 2 KiB command line. The initramfs is the
//!   same for every run, so a booted init waiting for its spec can be
//!   snapshotted once and restored for each run.

use serde::{Deserialize, Serialize};

/// The virtio-console port the stream runs on (its sysfs `name`).
pub const PORT_NAME: &str = "ember.stream";
/// Largest data payload of one Stdin/Stdout/Stderr message.
pub const MAX_CHUNK: usize = 16 * 1024;
/// Largest encoded message (a chunk, its header, COBS overhead and the
/// terminating zero), and so the decoder's buffer.
pub const MAX_FRAME: usize = MAX_CHUNK + MAX_CHUNK / 254 + 64;
/// Largest encoded spec the init takes.
pub const MAX_SPEC: usize = 4 << 20;

/// What to run and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    /// CMD and its arguments, as bytes (any byte but NUL).
    pub args: Vec<Vec<u8>>,
    /// `KEY=VALUE` entries, in order, as bytes.
    pub env: Vec<Vec<u8>>,
    /// The working directory (created if missing); `/` when None.
    pub workdir: Option<Vec<u8>>,
    pub hostname: String,
    /// The root directory's share.
    pub root: RootShare,
    pub volumes: Vec<Volume>,
    /// A pseudo-terminal for CMD of this size (rows, columns): its stdin,
    /// stdout and stderr are the terminal, Ctrl-C in the input is SIGINT.
    pub tty: Option<(u16, u16)>,
}

/// The root: a 9P share, written in place or overlaid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootShare {
    /// The virtio-9p mount tag.
    pub tag: String,
    /// A tmpfs overlay on top: the share is only read.
    pub overlay: bool,
}

/// A host directory shared at `guest_path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub tag: String,
    /// Absolute path in the guest (created if missing).
    pub guest_path: Vec<u8>,
    pub read_only: bool,
}

/// Guest → host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromGuest {
    /// The init runs and has the stream open: it waits for its spec.
    Ready,
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// CMD ended with this status (podman's codes: its own 0-255, 128+N
    /// for signal N, 127 not found, 126 not executable). Nothing follows.
    Exited(u8),
    /// The init could not start CMD (a mount failed...): Ember exits 125.
    Failed(String),
}

/// Host → guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToGuest {
    /// A piece (at most [`MAX_CHUNK`] bytes) of the postcard-encoded spec.
    Spec(Vec<u8>),
    /// The spec is whole.
    SpecEnd,
    Stdin(Vec<u8>),
    /// End of Ember's stdin: CMD's stdin reads end of file.
    StdinEof,
    /// Send CMD this signal.
    Signal(i32),
    /// Everything before `Exited` is written out: the init may power off.
    Done,
    /// The host's terminal has a new size (rows, columns): CMD's terminal
    /// gets it (and CMD a SIGWINCH). Only with a `tty` in the spec.
    Resize(u16, u16),
}

/// The spec as the messages that carry it.
pub fn spec_messages(spec: &Spec) -> Vec<ToGuest> {
    let bytes = postcard::to_stdvec(spec).unwrap_or_default();
    bytes
        .chunks(MAX_CHUNK)
        .map(|c| ToGuest::Spec(c.to_vec()))
        .chain(std::iter::once(ToGuest::SpecEnd))
        .collect()
}

/// One message, COBS-framed (it ends with its zero byte).
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    // Serializing plain enums of byte vectors and strings into a Vec
    // cannot fail.
    postcard::to_stdvec_cobs(message).unwrap_or_default()
}

/// A stream's decoder: feed it bytes, get messages.
pub struct Decoder {
    acc: Box<postcard::accumulator::CobsAccumulator<MAX_FRAME>>,
}

/// Why a stream is unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// A frame longer than [`MAX_FRAME`].
    TooLong,
    /// A frame that is no message.
    Garbage,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    pub fn new() -> Self {
        Self {
            acc: Box::new(postcard::accumulator::CobsAccumulator::new()),
        }
    }

    /// Feeds `bytes`, calling `each` for every whole message in them.
    pub fn feed<T: for<'de> Deserialize<'de>>(
        &mut self,
        mut bytes: &[u8],
        mut each: impl FnMut(T),
    ) -> Result<(), DecodeError> {
        use postcard::accumulator::FeedResult;
        while !bytes.is_empty() {
            bytes = match self.acc.feed::<T>(bytes) {
                FeedResult::Consumed => break,
                FeedResult::OverFull(_) => return Err(DecodeError::TooLong),
                FeedResult::DeserError(_) => return Err(DecodeError::Garbage),
                FeedResult::Success { data, remaining } => {
                    each(data);
                    remaining
                }
            };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_survive_any_split() {
        let msgs = vec![
            FromGuest::Stdout(vec![0, 1, 2, 0, 255]),
            FromGuest::Stderr((0..=255).cycle().take(MAX_CHUNK).collect()),
            FromGuest::Exited(137),
        ];
        let stream: Vec<u8> = msgs.iter().flat_map(encode).collect();
        for step in [1, 7, 300, stream.len()] {
            let mut d = Decoder::new();
            let mut got = Vec::new();
            for chunk in stream.chunks(step) {
                d.feed(chunk, |m: FromGuest| got.push(m)).unwrap();
            }
            assert_eq!(got, msgs, "chunks of {step}");
        }
    }

    #[test]
    fn a_big_spec_crosses_in_chunks() {
        let spec = Spec {
            args: vec![vec![b'x'; 100_000], b"".to_vec()],
            env: vec![b"K=v".to_vec()],
            workdir: None,
            hostname: "h".into(),
            root: RootShare {
                tag: "r".into(),
                overlay: false,
            },
            volumes: Vec::new(),
            tty: Some((24, 80)),
        };
        let msgs = spec_messages(&spec);
        assert_eq!(msgs.last(), Some(&ToGuest::SpecEnd));
        let mut bytes = Vec::new();
        for m in &msgs {
            assert!(encode(m).len() <= MAX_FRAME);
            if let ToGuest::Spec(c) = m {
                bytes.extend_from_slice(c);
            }
        }
        assert_eq!(postcard::from_bytes::<Spec>(&bytes).unwrap(), spec);
    }

    #[test]
    fn oversized_and_garbage_frames_are_errors() {
        let mut d = Decoder::new();
        let long = vec![1u8; MAX_FRAME + 1];
        assert_eq!(d.feed(&long, |_: ToGuest| ()), Err(DecodeError::TooLong));
        let mut d = Decoder::new();
        assert_eq!(
            d.feed(&[0x05, 0xff, 0xff, 0xff, 0xff, 0], |_: ToGuest| ()),
            Err(DecodeError::Garbage)
        );
        let big = encode(&FromGuest::Stdout(vec![7; MAX_CHUNK]));
        assert!(big.len() <= MAX_FRAME, "{} > {MAX_FRAME}", big.len());
    }
}
