use std::sync::Mutex;

use super::*;
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const W: u16 = VRING_DESC_F_WRITE as u16;
const N: u16 = VRING_DESC_F_NEXT as u16;

#[derive(Default)]
struct Seen {
    got: Vec<u8>,
    /// Most bytes taken per call (None: all).
    take: Option<usize>,
    outgoing: Vec<u8>,
    to_guest_calls: usize,
}

struct TestBackend(Arc<Mutex<Seen>>);

impl PortBackend for TestBackend {
    fn take_from_guest(&mut self, bytes: &[u8]) -> usize {
        let mut s = self.0.lock().unwrap();
        let n = s.take.map_or(bytes.len(), |t| t.min(bytes.len()));
        s.got.extend_from_slice(&bytes[..n]);
        n
    }
    fn to_guest(&mut self, max: usize) -> Vec<u8> {
        let mut s = self.0.lock().unwrap();
        s.to_guest_calls += 1;
        let n = max.min(s.outgoing.len());
        s.outgoing.drain(..n).collect()
    }
    fn watches(&self, _room: bool) -> Vec<HostWatch> {
        Vec::new()
    }
    fn ready(&mut self, _fd: RawFd) {}
}

struct Rig<'a> {
    q: Vec<MockSplitQueue<'a, GuestMemoryMmap>>,
    dev: Console,
    seen: Arc<Mutex<Seen>>,
}

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
}

fn rig(mem: &GuestMemoryMmap) -> Rig<'_> {
    rig_sized(mem, 16)
}

fn rig_sized(mem: &GuestMemoryMmap, size: u16) -> Rig<'_> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut dev = Console::new("ember.stream", Box::new(TestBackend(seen.clone())));
    let q: Vec<_> = (0..4)
        .map(|i| MockSplitQueue::create(mem, GuestAddress(0x1_0000 * (i + 1)), size))
        .collect();
    dev.activate(Activation {
        mem: mem.clone(),
        queues: q.iter().map(|q| q.create_queue().unwrap()).collect(),
        queue_events: (0..4)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect(),
        interrupt: Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap())),
        acked_features: VIRTIO_F_VERSION_1 | F_MULTIPORT,
    })
    .unwrap();
    Rig { q, dev, seen }
}

/// (head, len) of every used entry of queue `q`.
fn used(mem: &GuestMemoryMmap, q: &MockSplitQueue<GuestMemoryMmap>) -> Vec<(u32, u32)> {
    let idx: u16 = mem.read_obj(q.used_addr().unchecked_add(2)).unwrap();
    (0..u64::from(idx))
        .map(|i| {
            let at = q.used_addr().unchecked_add(4 + i * 8);
            (
                mem.read_obj::<u32>(at).unwrap(),
                mem.read_obj::<u32>(at.unchecked_add(4)).unwrap(),
            )
        })
        .collect()
}

const BUF: u64 = 0x8_0000;

#[test]
fn the_handshake_adds_names_and_opens_port_0() {
    let mem = memory();
    let mut r = rig(&mem);
    // Four control receive buffers of 64 bytes.
    let bufs: Vec<_> = (0..4).map(|i| desc(BUF + i * 64, 64, W, 0)).collect();
    for (i, d) in bufs.iter().enumerate() {
        r.q[CTRL_RX]
            .add_desc_chains(std::slice::from_ref(d), i as u16)
            .unwrap();
    }
    // Linux says DEVICE_READY with VIRTIO_CONSOLE_BAD_ID as the port.
    mem.write_slice(
        &control(u32::MAX, DEVICE_READY, 1),
        GuestAddress(BUF + 0x1000),
    )
    .unwrap();
    r.q[CTRL_TX]
        .add_desc_chains(&[desc(BUF + 0x1000, 8, 0, 0)], 0)
        .unwrap();
    r.dev.process_queue(CTRL_TX);
    assert_eq!(used(&mem, &r.q[CTRL_RX]), vec![(0, 8)]);
    let mut m = [0u8; 8];
    mem.read_slice(&mut m, GuestAddress(BUF)).unwrap();
    assert_eq!(m.to_vec(), control(0, PORT_ADD, 0));

    mem.write_slice(&control(0, PORT_READY, 1), GuestAddress(BUF + 0x1100))
        .unwrap();
    r.q[CTRL_TX]
        .add_desc_chains(&[desc(BUF + 0x1100, 8, 0, 0)], 1)
        .unwrap();
    r.dev.process_queue(CTRL_TX);
    let u = used(&mem, &r.q[CTRL_RX]);
    assert_eq!(u, vec![(0, 8), (1, 8 + 12), (2, 8)]);
    let mut named = vec![0u8; 20];
    mem.read_slice(&mut named, GuestAddress(BUF + 64)).unwrap();
    assert_eq!(&named[..8], &control(0, PORT_NAME, 1)[..]);
    assert_eq!(&named[8..], b"ember.stream");
    mem.read_slice(&mut m, GuestAddress(BUF + 128)).unwrap();
    assert_eq!(m.to_vec(), control(0, PORT_OPEN, 1));
}

#[test]
fn control_messages_wait_for_a_buffer_big_enough() {
    let mem = memory();
    let mut r = rig(&mem);
    mem.write_slice(&control(0, PORT_READY, 1), GuestAddress(BUF + 0x1000))
        .unwrap();
    r.q[CTRL_TX]
        .add_desc_chains(&[desc(BUF + 0x1000, 8, 0, 0)], 0)
        .unwrap();
    r.dev.process_queue(CTRL_TX);
    // A 4-byte buffer cannot hold the name: returned empty.
    r.q[CTRL_RX]
        .add_desc_chains(&[desc(BUF, 4, W, 0)], 0)
        .unwrap();
    r.dev.process_queue(CTRL_RX);
    assert_eq!(used(&mem, &r.q[CTRL_RX]), vec![(0, 0)]);
    r.q[CTRL_RX]
        .add_desc_chains(&[desc(BUF, 64, W, 0)], 1)
        .unwrap();
    r.dev.process_queue(CTRL_RX);
    assert_eq!(used(&mem, &r.q[CTRL_RX]), vec![(0, 0), (1, 20)]);
}

#[test]
fn transmit_waits_for_the_backend_and_loses_nothing() {
    let mem = memory();
    let mut r = rig(&mem);
    r.seen.lock().unwrap().take = Some(3);
    mem.write_slice(b"hello", GuestAddress(BUF)).unwrap();
    mem.write_slice(b"world", GuestAddress(BUF + 0x100))
        .unwrap();
    // "hel" + "lo" in two descriptors, then "world".
    r.q[TX]
        .add_desc_chains(&[desc(BUF, 3, N, 1), desc(BUF + 3, 2, 0, 0)], 0)
        .unwrap();
    r.q[TX]
        .add_desc_chains(&[desc(BUF + 0x100, 5, 0, 0)], 2)
        .unwrap();
    r.dev.process_queue(TX);
    // The first chain is taken and returned, the second waits.
    assert_eq!(r.seen.lock().unwrap().got, b"hel");
    assert_eq!(used(&mem, &r.q[TX]).len(), 1);
    r.seen.lock().unwrap().take = None;
    r.dev.host_ready(-1);
    assert_eq!(r.seen.lock().unwrap().got, b"helloworld");
    assert_eq!(used(&mem, &r.q[TX]).len(), 2);
}

#[test]
fn a_transmit_chain_that_is_too_big_or_writable_is_refused() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let mut r = rig(&mem);
    r.q[TX]
        .add_desc_chains(&[desc(0x4_0000, (MAX_TX_CHAIN + 1) as u32, 0, 0)], 0)
        .unwrap();
    r.q[TX].add_desc_chains(&[desc(BUF, 8, W, 0)], 1).unwrap();
    r.dev.process_queue(TX);
    assert_eq!(used(&mem, &r.q[TX]), vec![(0, 0), (1, 0)]);
    assert!(r.seen.lock().unwrap().got.is_empty());
}

/// The guest says it opened port 0 (control transmit, descriptor `at`).
fn guest_opens(r: &mut Rig, mem: &GuestMemoryMmap, at: u16) {
    mem.write_slice(&control(0, PORT_OPEN, 1), GuestAddress(BUF + 0x3000))
        .unwrap();
    r.q[CTRL_TX]
        .add_desc_chains(&[desc(BUF + 0x3000, 8, 0, 0)], at)
        .unwrap();
    r.dev.process_queue(CTRL_TX);
}

#[test]
fn nothing_is_sent_before_the_guest_opens_its_end() {
    let mem = memory();
    let mut r = rig(&mem);
    r.seen.lock().unwrap().outgoing = b"early".to_vec();
    r.q[RX].add_desc_chains(&[desc(BUF, 64, W, 0)], 0).unwrap();
    r.dev.process_queue(RX);
    assert!(used(&mem, &r.q[RX]).is_empty(), "Linux would discard it");
    guest_opens(&mut r, &mem, 0);
    assert_eq!(used(&mem, &r.q[RX]), vec![(0, 5)]);
}

#[test]
fn receive_fills_posted_buffers_only() {
    let mem = memory();
    let mut r = rig(&mem);
    guest_opens(&mut r, &mem, 0);
    r.seen.lock().unwrap().outgoing = (0..100u8).collect();
    r.dev.process_queue(RX);
    assert_eq!(
        r.seen.lock().unwrap().to_guest_calls,
        0,
        "no buffer: nothing asked"
    );
    r.q[RX]
        .add_desc_chains(&[desc(BUF, 30, W | N, 1), desc(BUF + 0x100, 30, W, 0)], 0)
        .unwrap();
    r.q[RX]
        .add_desc_chains(&[desc(BUF + 0x200, 64, W, 0)], 2)
        .unwrap();
    r.dev.process_queue(RX);
    assert_eq!(used(&mem, &r.q[RX]), vec![(0, 60), (2, 40)]);
    let mut a = [0u8; 30];
    mem.read_slice(&mut a, GuestAddress(BUF + 0x100)).unwrap();
    assert_eq!(a.to_vec(), (30..60u8).collect::<Vec<_>>());
    let mut b = [0u8; 40];
    mem.read_slice(&mut b, GuestAddress(BUF + 0x200)).unwrap();
    assert_eq!(b.to_vec(), (60..100u8).collect::<Vec<_>>());
}

#[test]
fn its_state_survives_a_snapshot_and_bad_state_is_refused() {
    let mem = memory();
    let mut r = rig(&mem);
    guest_opens(&mut r, &mem, 0);
    let saved = r.dev.saved_state();
    let mut fresh = rig(&mem);
    fresh.dev.restore_state(&saved).unwrap();
    fresh.seen.lock().unwrap().outgoing = b"after".to_vec();
    fresh.q[RX]
        .add_desc_chains(&[desc(BUF, 64, W, 0)], 0)
        .unwrap();
    fresh.dev.process_queue(RX);
    assert_eq!(
        used(&mem, &fresh.q[RX]),
        vec![(0, 5)],
        "still open after the restore"
    );
    assert!(fresh.dev.restore_state(&[0xff; 3]).is_err());
    let bad = postcard::to_stdvec(&Saved {
        guest_open: true,
        control_out: vec![vec![0; 2]],
        held: None,
    })
    .unwrap();
    assert!(fresh.dev.restore_state(&bad).is_err());
}

#[test]
fn a_huge_control_chain_is_read_8_bytes_deep_and_repeats_cannot_grow_the_queue() {
    let mem = memory();
    let mut r = rig_sized(&mem, 128);
    mem.write_slice(&control(0, DEVICE_READY, 1), GuestAddress(BUF))
        .unwrap();
    // Overlapping descriptors (pop_chain allows them; a real guest can
    // claim gigabytes this way): only the header is read.
    let huge: Vec<_> = (0..3u16)
        .map(|i| desc(BUF, 0x1_0000, if i < 2 { N } else { 0 }, i + 1))
        .collect();
    r.q[CTRL_TX].add_desc_chains(&huge, 0).unwrap();
    r.dev.process_queue(CTRL_TX);
    assert_eq!(used(&mem, &r.q[CTRL_TX]).len(), 1);
    // The same message 100 more times with no receive buffer posted.
    for _ in 0..100 {
        r.q[CTRL_TX]
            .add_desc_chains(&[desc(BUF, 8, 0, 0)], 3)
            .unwrap();
        r.dev.process_queue(CTRL_TX);
    }
    let State::Active(a) = &r.dev.state else {
        panic!("inactive")
    };
    assert!(!a.broken, "broken");
    let idx: u16 = mem
        .read_obj(r.q[CTRL_TX].used_addr().unchecked_add(2))
        .unwrap();
    assert_eq!(idx, 101, "every message taken");
    assert!(
        a.control_out.len() <= MAX_SAVED_CONTROL,
        "{}",
        a.control_out.len()
    );
    assert_eq!(a.control_out[0], control(0, PORT_ADD, 0));
}
