//! virtio-net: RX and TX queues against a `FrameIo` (a TAP in Ember). Frames
//! move between guest buffers and the backend with vectored I/O; RX waits,
//! without spinning, when the guest has posted no buffers and resumes when
//! it posts some; malformed, short and oversized frames are dropped and
//! counted.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::RawFd;
use std::sync::Arc;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};
use vmm_sys_util::eventfd::EventFd;

use super::tap::{FrameIo, VNET_HDR_LEN};
use super::{Activation, Interrupt, VirtioDevice, INT_VRING};
use crate::ratelimit::LogLimiter;

const VIRTIO_ID_NET: u32 = 1;
const VIRTIO_NET_F_MAC: u64 = 1 << 5;
const QUEUE_SIZE: u16 = 256;
pub const RX: usize = 0;
pub const TX: usize = 1;
/// Largest Ethernet frame without offloads: 1500 MTU + header + VLAN tag.
const MAX_FRAME: usize = 1518;
/// Most descriptors in one chain (Linux uses at most MAX_SKB_FRAGS + 2 on
/// TX and one per RX buffer without offloads); longer chains are refused.
const MAX_CHAIN_DESCS: usize = 64;
/// Offset of num_buffers in the 12-byte header.
const NUM_BUFFERS_OFFSET: u64 = 10;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetCounters {
    pub rx_frames: u64,
    pub tx_frames: u64,
    /// RX chains that were malformed or too small for a frame.
    pub rx_bad_buffers: u64,
    /// Frames from the backend shorter than the header.
    pub rx_runts: u64,
    /// TX chains that were malformed, shorter than the header or oversized,
    /// or that the backend refused.
    pub tx_dropped: u64,
}

enum State {
    Inactive,
    Active {
        mem: GuestMemoryMmap,
        rx: Queue,
        tx: Queue,
        tx_notify: EventFd,
        interrupt: Arc<Interrupt>,
        /// The guest has no RX buffers posted: stop reading the backend.
        rx_starved: bool,
        broken: bool,
    },
}

pub struct Net {
    mac: [u8; 6],
    frames: Box<dyn FrameIo>,
    state: State,
    counters: NetCounters,
    queue_sizes: [u16; 2],
    /// Every guest-triggerable line goes through here.
    log: LogLimiter,
}

/// Host views of a chain's buffers, if every descriptor goes the expected
/// way and lies in one region of guest RAM.
fn slices<'m>(
    mem: &'m GuestMemoryMmap,
    descs: &[Descriptor],
    write: bool,
) -> Option<Vec<VolatileSlice<'m, ()>>> {
    descs
        .iter()
        .map(|d| {
            if d.is_write_only() != write {
                return None;
            }
            let s = mem.get_slice(d.addr(), d.len() as usize).ok()?;
            Some(s)
        })
        .collect()
}

impl Net {
    pub fn new(mac: [u8; 6], frames: Box<dyn FrameIo>) -> Self {
        Self {
            mac,
            frames,
            state: State::Inactive,
            counters: NetCounters::default(),
            queue_sizes: [QUEUE_SIZE, QUEUE_SIZE],
            log: LogLimiter::new(),
        }
    }

    pub fn counters(&self) -> NetCounters {
        self.counters
    }

    fn process_rx(&mut self) {
        let State::Active {
            mem,
            rx,
            interrupt,
            rx_starved,
            broken,
            ..
        } = &mut self.state
        else {
            return;
        };
        if *broken {
            return;
        }
        let mut delivered = 0u16;
        let budget = rx.size();
        while delivered < budget {
            let chain = match super::pop_chain(rx, mem, MAX_CHAIN_DESCS) {
                Ok(chain) => chain,
                Err(e) => {
                    self.log.warn(
                        "rx-broken",
                        format_args!("virtio-net: RX queue broken by the driver ({e})"),
                    );
                    *broken = true;
                    return;
                }
            };
            let (head, descs) = match chain {
                Some(super::Popped::Chain { head, descs }) => (head, descs),
                Some(super::Popped::Bad { head, why }) => {
                    self.log.warn(
                        "rx-bad-chain",
                        format_args!("virtio-net: refusing RX chain {head}: {why}"),
                    );
                    // Returned below with length 0 as too small.
                    (head, Vec::new())
                }
                None => {
                    self.log.log(
                        log::Level::Debug,
                        "rx-starved",
                        format_args!("virtio-net: no RX buffers; waiting for the guest"),
                    );
                    *rx_starved = true;
                    break;
                }
            };
            let total: u64 = descs.iter().map(|d| u64::from(d.len())).sum();
            let Some(bufs) =
                slices(mem, &descs, true).filter(|_| total >= (VNET_HDR_LEN + MAX_FRAME) as u64)
            else {
                self.counters.rx_bad_buffers += 1;
                if rx.add_used(&*mem, head, 0).is_err() {
                    *broken = true;
                    return;
                }
                continue;
            };
            let mut iov: Vec<IoSliceMut> = bufs
                .iter()
                // SAFETY: each slice maps guest RAM that stays mapped while
                // the device is active; the guest gave these bytes to the
                // device until it returns the chain.
                .map(|s| {
                    IoSliceMut::new(unsafe {
                        std::slice::from_raw_parts_mut(s.ptr_guard_mut().as_ptr(), s.len())
                    })
                })
                .collect();
            match self.frames.read_frame(&mut iov) {
                Ok(n) if n < VNET_HDR_LEN => {
                    self.counters.rx_runts += 1;
                    rx.go_to_previous_position();
                }
                Ok(n) => {
                    // num_buffers = 1: one chain per frame (no MRG_RXBUF).
                    let nb = descs[0].addr().0 + NUM_BUFFERS_OFFSET;
                    let _ = mem.write_obj(1u16, vm_memory::GuestAddress(nb));
                    if rx.add_used(&*mem, head, n as u32).is_err() {
                        *broken = true;
                        return;
                    }
                    self.counters.rx_frames += 1;
                    delivered += 1;
                }
                Err(e) => {
                    rx.go_to_previous_position();
                    if e.kind() != io::ErrorKind::WouldBlock {
                        self.log.warn(
                            "rx-read",
                            format_args!("virtio-net: backend read failed: {e}"),
                        );
                    }
                    break;
                }
            }
        }
        if delivered > 0 {
            interrupt.raise(INT_VRING);
        }
    }

    fn process_tx(&mut self) {
        let State::Active {
            mem,
            tx,
            tx_notify,
            interrupt,
            broken,
            ..
        } = &mut self.state
        else {
            return;
        };
        if *broken {
            return;
        }
        let budget = tx.size();
        let mut done = 0u16;
        while done < budget {
            let chain = match super::pop_chain(tx, mem, MAX_CHAIN_DESCS) {
                Ok(chain) => chain,
                Err(e) => {
                    self.log.warn(
                        "tx-broken",
                        format_args!("virtio-net: TX queue broken by the driver ({e})"),
                    );
                    *broken = true;
                    return;
                }
            };
            let (head, descs) = match chain {
                None => break,
                Some(super::Popped::Chain { head, descs }) => (head, descs),
                Some(super::Popped::Bad { head, why }) => {
                    self.log.warn(
                        "tx-bad-chain",
                        format_args!("virtio-net: refusing TX chain {head}: {why}"),
                    );
                    // Dropped below: an empty chain is shorter than the header.
                    (head, Vec::new())
                }
            };
            let total = descs
                .iter()
                .try_fold(0u64, |a, d| a.checked_add(u64::from(d.len())));
            let sent = match (slices(mem, &descs, false), total) {
                (Some(bufs), Some(t))
                    if t >= VNET_HDR_LEN as u64 && t <= (VNET_HDR_LEN + MAX_FRAME) as u64 =>
                {
                    // SAFETY: as for RX; the guest handed these bytes over.
                    let iov: Vec<IoSlice> = bufs
                        .iter()
                        .map(|s| {
                            IoSlice::new(unsafe {
                                std::slice::from_raw_parts(s.ptr_guard().as_ptr(), s.len())
                            })
                        })
                        .collect();
                    self.frames.write_frame(&iov).is_ok()
                }
                _ => false,
            };
            if sent {
                self.counters.tx_frames += 1;
            } else {
                self.counters.tx_dropped += 1;
            }
            if tx.add_used(&*mem, head, 0).is_err() {
                *broken = true;
                return;
            }
            done += 1;
        }
        if done > 0 {
            interrupt.raise(INT_VRING);
        }
        if done == budget {
            let _ = tx_notify.write(1);
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        VIRTIO_NET_F_MAC
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.mac, offset, data);
    }

    fn activate(&mut self, a: Activation) -> Result<(), String> {
        let mut queues = a.queues.into_iter();
        let mut events = a.queue_events.into_iter();
        let (Some(rx), Some(tx), Some(_rx_notify), Some(tx_notify)) =
            (queues.next(), queues.next(), events.next(), events.next())
        else {
            return Err("virtio-net needs two queues".into());
        };
        self.state = State::Active {
            mem: a.mem,
            rx,
            tx,
            tx_notify,
            interrupt: a.interrupt,
            rx_starved: false,
            broken: false,
        };
        Ok(())
    }

    fn reset(&mut self) {
        self.state = State::Inactive;
    }

    fn process_queue(&mut self, index: usize) {
        match index {
            RX => {
                if let State::Active { rx_starved, .. } = &mut self.state {
                    *rx_starved = false;
                }
                self.process_rx();
            }
            TX => self.process_tx(),
            _ => {}
        }
    }

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.frames.fd())
    }

    fn backend_wanted(&self) -> bool {
        matches!(
            self.state,
            State::Active {
                rx_starved: false,
                broken: false,
                ..
            }
        )
    }

    fn process_backend(&mut self) {
        self.process_rx();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::tap::SocketFrames;
    use std::os::unix::net::UnixDatagram;
    use virtio_bindings::bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, GuestAddress};
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    const W: u16 = VRING_DESC_F_WRITE as u16;
    const N: u16 = VRING_DESC_F_NEXT as u16;
    const BUF: u64 = 0x4_0000;

    struct Rig<'a> {
        mem: &'a GuestMemoryMmap,
        rxq: MockSplitQueue<'a, GuestMemoryMmap>,
        txq: MockSplitQueue<'a, GuestMemoryMmap>,
        dev: Net,
        peer: UnixDatagram,
    }

    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
    }

    fn rig(mem: &GuestMemoryMmap) -> Rig<'_> {
        let (ours, peer) = UnixDatagram::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut dev = Net::new([2, 0, 0, 0, 0, 1], Box::new(SocketFrames(ours)));
        let rxq = MockSplitQueue::create(mem, GuestAddress(0x1_0000), 16);
        let txq = MockSplitQueue::create(mem, GuestAddress(0x2_0000), 16);
        dev.activate(Activation {
            mem: mem.clone(),
            queues: vec![rxq.create_queue().unwrap(), txq.create_queue().unwrap()],
            queue_events: vec![
                EventFd::new(EFD_NONBLOCK).unwrap(),
                EventFd::new(EFD_NONBLOCK).unwrap(),
            ],
            interrupt: Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap())),
            acked_features: 0,
        })
        .unwrap();
        Rig {
            mem,
            rxq,
            txq,
            dev,
            peer,
        }
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

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn frame(len: usize) -> Vec<u8> {
        (0..len).map(|i| i as u8).collect()
    }

    #[test]
    fn tx_frames_reach_the_backend_whole() {
        let mem = memory();
        let mut r = rig(&mem);
        let f = frame(VNET_HDR_LEN + 60);
        r.mem.write_slice(&f, GuestAddress(BUF)).unwrap();
        // Header and payload in two descriptors.
        r.txq
            .add_desc_chains(&[desc(BUF, 12, N, 1), desc(BUF + 12, 60, 0, 0)], 0)
            .unwrap();
        r.dev.process_queue(TX);
        let mut got = [0u8; 2048];
        let n = r.peer.recv(&mut got).unwrap();
        assert_eq!(&got[..n], &f[..]);
        assert_eq!(used(r.mem, &r.txq), vec![0]);
        assert_eq!(r.dev.counters().tx_frames, 1);
    }

    #[test]
    fn bad_tx_chains_are_dropped_counted_and_returned() {
        let mem = memory();
        let mut r = rig(&mem);
        r.txq
            .add_desc_chains(
                &[
                    desc(BUF, 8, 0, 0),                                     // shorter than the header
                    desc(BUF, (VNET_HDR_LEN + MAX_FRAME + 1) as u32, 0, 0), // oversized
                    desc(BUF, 100, W, 0),                                   // device-writable
                    desc(4 << 20, 100, 0, 0),                               // outside RAM
                ],
                0,
            )
            .unwrap();
        r.dev.process_queue(TX);
        assert_eq!(used(r.mem, &r.txq), vec![0, 0, 0, 0]);
        assert_eq!(r.dev.counters().tx_dropped, 4);
        let mut got = [0u8; 16];
        r.peer.set_nonblocking(true).unwrap();
        assert!(r.peer.recv(&mut got).is_err(), "nothing sent");
    }

    #[test]
    fn rx_fills_a_posted_buffer_and_sets_num_buffers() {
        let mem = memory();
        let mut r = rig(&mem);
        r.rxq.add_desc_chains(&[desc(BUF, 2048, W, 0)], 0).unwrap();
        let f = frame(VNET_HDR_LEN + 100);
        r.peer.send(&f).unwrap();
        r.dev.process_backend();
        assert_eq!(used(r.mem, &r.rxq), vec![f.len() as u32]);
        let mut got = vec![0u8; f.len()];
        r.mem.read_slice(&mut got, GuestAddress(BUF)).unwrap();
        assert_eq!(&got[12..], &f[12..]);
        assert_eq!(r.mem.read_obj::<u16>(GuestAddress(BUF + 10)).unwrap(), 1);
    }

    #[test]
    fn rx_without_buffers_waits_then_resumes_when_the_guest_posts_some() {
        let mem = memory();
        let mut r = rig(&mem);
        let f = frame(VNET_HDR_LEN + 64);
        r.peer.send(&f).unwrap();
        r.peer.send(&f).unwrap();
        r.dev.process_backend();
        assert!(
            !r.dev.backend_wanted(),
            "no buffers: stop watching the backend"
        );
        assert!(used(r.mem, &r.rxq).is_empty());
        let bufs: Vec<_> = (0..3).map(|i| desc(BUF + i * 4096, 2048, W, 0)).collect();
        r.rxq.add_desc_chains(&bufs, 0).unwrap();
        r.dev.process_queue(RX);
        assert_eq!(used(r.mem, &r.rxq), vec![f.len() as u32; 2]);
        assert!(
            r.dev.backend_wanted(),
            "a buffer is left: watch the backend again"
        );
    }

    #[test]
    fn small_rx_buffers_and_runt_frames_are_counted() {
        let mem = memory();
        let mut r = rig(&mem);
        r.rxq
            .add_desc_chains(&[desc(BUF, 64, W, 0), desc(BUF + 4096, 2048, W, 0)], 0)
            .unwrap();
        r.peer.send(&[1, 2, 3]).unwrap();
        r.dev.process_backend();
        let c = r.dev.counters();
        assert_eq!((c.rx_bad_buffers, c.rx_runts, c.rx_frames), (1, 1, 0));
        assert_eq!(
            used(r.mem, &r.rxq),
            vec![0],
            "the small buffer went back empty"
        );
        // The good buffer was not consumed by the runt.
        r.peer.send(&frame(VNET_HDR_LEN + 20)).unwrap();
        r.dev.process_backend();
        assert_eq!(used(r.mem, &r.rxq), vec![0, 32]);
    }

    #[test]
    fn config_space_holds_the_mac() {
        let mem = memory();
        let r = rig(&mem);
        let mut mac = [0u8; 6];
        r.dev.read_config(0, &mut mac);
        assert_eq!(mac, [2, 0, 0, 0, 0, 1]);
        let mut past = [0xffu8; 2];
        r.dev.read_config(6, &mut past);
        assert_eq!(past, [0xff; 2]);
    }

    #[test]
    fn cut_looping_and_indirect_rx_chains_are_refused_whole() {
        let mem = memory();
        let mut r = rig(&mem);
        let f = frame(VNET_HDR_LEN + 100);
        r.peer.send(&f).unwrap();
        let ind = VRING_DESC_F_INDIRECT as u16;
        r.mem
            .write_obj(desc(BUF, 2048, W, 0), GuestAddress(0x5_0000))
            .unwrap();
        // Chains to 300 in a 16-entry queue: before, the first 2 KiB took
        // the frame.
        r.rxq
            .add_desc_chains(&[desc(BUF, 2048, W | N, 300)], 0)
            .unwrap();
        // An indirect table (not offered), holding 2 KiB.
        r.rxq
            .add_desc_chains(&[desc(0x5_0000, 16, ind, 0)], 1)
            .unwrap();
        // A loop 2 -> 3 -> 2.
        r.rxq
            .add_desc_chains(
                &[desc(BUF, 1024, W | N, 3), desc(BUF + 1024, 1024, W | N, 2)],
                2,
            )
            .unwrap();
        r.dev.process_backend();
        assert_eq!(used(r.mem, &r.rxq), vec![0, 0, 0]);
        let c = r.dev.counters();
        assert_eq!((c.rx_bad_buffers, c.rx_frames), (3, 0));
        // The frame waits for a good buffer.
        r.rxq
            .add_desc_chains(&[desc(BUF + 8192, 2048, W, 0)], 4)
            .unwrap();
        r.dev.process_queue(RX);
        assert_eq!(used(r.mem, &r.rxq), vec![0, 0, 0, f.len() as u32]);
    }

    #[test]
    fn cut_and_indirect_tx_chains_are_dropped_whole() {
        let mem = memory();
        let mut r = rig(&mem);
        let f = frame(VNET_HDR_LEN + 60);
        r.mem.write_slice(&f, GuestAddress(BUF)).unwrap();
        r.mem
            .write_obj(desc(BUF, f.len() as u32, 0, 0), GuestAddress(0x5_0000))
            .unwrap();
        let ind = VRING_DESC_F_INDIRECT as u16;
        // A whole frame, then `next` beyond the queue: before, the frame
        // was sent as if the chain ended there.
        r.txq
            .add_desc_chains(&[desc(BUF, f.len() as u32, N, 300)], 0)
            .unwrap();
        r.txq
            .add_desc_chains(&[desc(0x5_0000, 16, ind, 0)], 1)
            .unwrap();
        r.dev.process_queue(TX);
        assert_eq!(used(r.mem, &r.txq), vec![0, 0]);
        assert_eq!(r.dev.counters().tx_dropped, 2);
        let mut got = [0u8; 2048];
        r.peer.set_nonblocking(true).unwrap();
        assert!(r.peer.recv(&mut got).is_err(), "nothing sent");
    }
}
