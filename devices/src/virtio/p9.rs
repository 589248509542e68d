//! virtio-9p: the transport of a 9P2000.L share. Each chain is one
//! request (device-readable descriptors) and room for its reply
//! (device-writable ones); a [`P9Backend`] answers requests (Ember's is a
//! file server in a process of its own, confined to the shared directory).

use std::io;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::iov::chain_iovecs;
use super::{
    pop_chain, read_config_bytes, ActivateError, Activation, Interrupt, Popped, VirtioDevice,
    INT_VRING, VIRTIO_F_VERSION_1,
};
use crate::ratelimit::LogLimiter;

/// Virtio device ID of a 9P transport.
pub const P9_DEVICE_ID: u32 = 9;
/// VIRTIO_9P_MOUNT_TAG: the configuration space holds the mount tag.
pub const F_MOUNT_TAG: u64 = 1;
/// Longest mount tag Linux takes.
pub const MAX_TAG: usize = 31;
/// Largest request taken: a 64 KiB write and its header (Linux's msize is
/// at most what the server's Rversion allowed: 64 KiB + 24).
pub const MAX_REQUEST: usize = 64 * 1024 + 64;
const QUEUE_SIZE: u16 = 128;
const MAX_CHAIN_DESCS: usize = 128;

/// Answers one 9P request with its reply.
pub trait P9Backend: Send {
    fn request(&mut self, request: &[u8]) -> io::Result<Vec<u8>>;
}

#[derive(Debug, thiserror::Error)]
pub enum P9Error {
    #[error(
        "9P mount tag {0:?}: must be 1 to {MAX_TAG} bytes of ASCII letters, digits, '.', '-', '_'"
    )]
    BadTag(String),
}

struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    interrupt: Arc<Interrupt>,
    broken: bool,
}

pub struct NineP {
    tag: String,
    backend: Box<dyn P9Backend>,
    active: Option<Active>,
    log: LogLimiter,
}

impl NineP {
    pub fn new(tag: &str, backend: Box<dyn P9Backend>) -> Result<Self, P9Error> {
        let ok = !tag.is_empty()
            && tag.len() <= MAX_TAG
            && tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !ok {
            return Err(P9Error::BadTag(tag.to_string()));
        }
        Ok(Self {
            tag: tag.to_string(),
            backend,
            active: None,
            log: LogLimiter::new(),
        })
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// One chain: Some(used length), or None when the queue is empty or
    /// broken.
    fn one(&mut self) -> Option<()> {
        let a = self.active.as_mut().filter(|a| !a.broken)?;
        let (head, descs) = match pop_chain(&mut a.queue, &a.mem, MAX_CHAIN_DESCS) {
            Ok(Some(Popped::Chain { head, descs })) => (head, descs),
            Ok(Some(Popped::Bad { head, why })) => {
                self.log.warn(
                    "9p-bad-chain",
                    format_args!("virtio-9p: refusing chain {head}: {why}"),
                );
                (head, Vec::new())
            }
            Ok(None) => return None,
            Err(e) => {
                self.log.warn(
                    "9p-broken",
                    format_args!("virtio-9p: queue broken by the driver ({e})"),
                );
                a.broken = true;
                return None;
            }
        };
        // Readable descriptors first, then writable ones (virtio's rule).
        let split = descs
            .iter()
            .position(|d| d.is_write_only())
            .unwrap_or(descs.len());
        let (out, inn) = descs.split_at(split);
        let request = chain_iovecs(&a.mem, out, false).filter(|r| r.capacity() <= MAX_REQUEST);
        let reply_room = chain_iovecs(&a.mem, inn, true);
        let mut len = 0;
        match (request, reply_room) {
            (Some(req), Some(room)) if req.capacity() > 0 => {
                let bytes = req.copy_out();
                drop(req);
                match self.backend.request(&bytes) {
                    Ok(reply) if reply.len() <= room.capacity() => len = room.copy_in(&reply),
                    Ok(reply) => self.log.warn(
                        "9p-reply-room",
                        format_args!(
                            "virtio-9p: a {}-byte reply does not fit the {} bytes given for it",
                            reply.len(),
                            room.capacity()
                        ),
                    ),
                    Err(e) => self.log.warn(
                        "9p-backend",
                        format_args!("virtio-9p {}: the file server failed: {e}", self.tag),
                    ),
                }
            }
            _ => self.log.warn(
                "9p-bad-request",
                format_args!("virtio-9p: refusing chain {head} (no request, over {MAX_REQUEST} bytes, or descriptors out of order)"),
            ),
        }
        if a.queue.add_used(&a.mem, head, len as u32).is_err() {
            a.broken = true;
            return None;
        }
        Some(())
    }
}

impl VirtioDevice for NineP {
    fn device_type(&self) -> u32 {
        P9_DEVICE_ID
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | F_MOUNT_TAG
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_9p_config: le16 tag_len, then the tag.
        let mut config = (self.tag.len() as u16).to_le_bytes().to_vec();
        config.extend_from_slice(self.tag.as_bytes());
        read_config_bytes(&config, offset, data);
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        let Some(queue) = a.queues.into_iter().next() else {
            return Err(ActivateError::MissingQueues {
                device: "virtio-9p",
                needed: 1,
            });
        };
        self.active = Some(Active {
            mem: a.mem,
            queue,
            interrupt: a.interrupt,
            broken: false,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn queue_states(&self) -> Vec<virtio_queue::QueueState> {
        self.active.iter().map(|a| a.queue.state()).collect()
    }

    fn process_queue(&mut self, _index: usize) {
        let mut served = 0;
        while served < QUEUE_SIZE && self.one().is_some() {
            served += 1;
        }
        if served > 0 {
            if let Some(a) = &self.active {
                a.interrupt.raise(INT_VRING);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    const W: u16 = VRING_DESC_F_WRITE as u16;
    const N: u16 = VRING_DESC_F_NEXT as u16;

    /// Replies with the request reversed, `extra` bytes longer.
    struct Echo(usize);
    impl P9Backend for Echo {
        fn request(&mut self, r: &[u8]) -> io::Result<Vec<u8>> {
            let mut v: Vec<u8> = r.iter().rev().copied().collect();
            v.extend(std::iter::repeat_n(0xee, self.0));
            Ok(v)
        }
    }

    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
    }

    fn used(mem: &GuestMemoryMmap, q: &MockSplitQueue<GuestMemoryMmap>) -> Vec<u32> {
        let idx: u16 = mem.read_obj(q.used_addr().unchecked_add(2)).unwrap();
        (0..u64::from(idx))
            .map(|i| {
                mem.read_obj::<u32>(q.used_addr().unchecked_add(4 + i * 8 + 4))
                    .unwrap()
            })
            .collect()
    }

    fn device(mem: &GuestMemoryMmap, q: &MockSplitQueue<GuestMemoryMmap>, extra: usize) -> NineP {
        let mut d = NineP::new("root", Box::new(Echo(extra))).unwrap();
        d.activate(Activation {
            mem: mem.clone(),
            queues: vec![q.create_queue().unwrap()],
            queue_events: vec![EventFd::new(EFD_NONBLOCK).unwrap()],
            interrupt: Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap())),
            acked_features: F_MOUNT_TAG,
        })
        .unwrap();
        d
    }

    #[test]
    fn a_request_gets_its_reply_in_the_writable_part() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let q = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), 16);
        let mut d = device(&mem, &q, 0);
        mem.write_slice(b"abcdef", GuestAddress(0x4_0000)).unwrap();
        q.add_desc_chains(
            &[
                desc(0x4_0000, 4, N, 1),
                desc(0x4_0004, 2, N, 2),
                desc(0x5_0000, 3, W | N, 3),
                desc(0x5_1000, 16, W, 0),
            ],
            0,
        )
        .unwrap();
        d.process_queue(0);
        assert_eq!(used(&mem, &q), vec![6]);
        let mut got = [0u8; 3];
        mem.read_slice(&mut got, GuestAddress(0x5_0000)).unwrap();
        assert_eq!(&got, b"fed");
        mem.read_slice(&mut got, GuestAddress(0x5_1000)).unwrap();
        assert_eq!(&got, b"cba");
    }

    #[test]
    fn bad_chains_and_replies_too_big_are_returned_empty() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let q = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), 16);
        let mut d = device(&mem, &q, 10);
        // The reply (request + 10 bytes) does not fit; writable before
        // readable; no writable part at all.
        q.add_desc_chains(&[desc(0x4_0000, 4, N, 1), desc(0x5_0000, 8, W, 0)], 0)
            .unwrap();
        q.add_desc_chains(&[desc(0x5_0000, 8, W | N, 3), desc(0x4_0000, 4, 0, 0)], 2)
            .unwrap();
        q.add_desc_chains(&[desc(0x4_0000, 4, 0, 0)], 4).unwrap();
        d.process_queue(0);
        assert_eq!(used(&mem, &q), vec![0, 0, 0]);
    }

    #[test]
    fn tags_are_checked() {
        assert!(NineP::new("", Box::new(Echo(0))).is_err());
        assert!(NineP::new("a/b", Box::new(Echo(0))).is_err());
        assert!(NineP::new(&"x".repeat(32), Box::new(Echo(0))).is_err());
        let d = NineP::new("ember-root", Box::new(Echo(0))).unwrap();
        let mut c = [0u8; 12];
        d.read_config(0, &mut c);
        assert_eq!(&c[..2], &10u16.to_le_bytes());
        assert_eq!(&c[2..], b"ember-root");
    }
}
