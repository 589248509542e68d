//! virtio-net device-path frame rates: TX (guest chains -> backend) and RX
//! (backend -> guest buffers) through the real queue code, with a
//! datagram socketpair standing in for the TAP.
//!
//!   cargo bench -p ember-devices --bench net

use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ember_devices::virtio::net::{Net, RX, TX};
use ember_devices::virtio::tap::SocketFrames;
use ember_devices::virtio::{Activation, Interrupt, VirtioDevice};
use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const BATCH: u16 = 128;
const RUN: Duration = Duration::from_secs(2);
const FRAME: usize = 12 + 1514;

fn device(
    mem: &GuestMemoryMmap,
) -> (
    Net,
    UnixDatagram,
    MockSplitQueue<'_, GuestMemoryMmap>,
    MockSplitQueue<'_, GuestMemoryMmap>,
) {
    let (ours, peer) = UnixDatagram::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    peer.set_nonblocking(true).unwrap();
    let dev = Net::new([2, 0, 0, 0, 0, 1], Box::new(SocketFrames(ours)));
    let rxq = MockSplitQueue::create(mem, GuestAddress(0x1_0000), 256);
    let txq = MockSplitQueue::create(mem, GuestAddress(0x2_0000), 256);
    (dev, peer, rxq, txq)
}

fn activate(
    dev: &mut Net,
    mem: &GuestMemoryMmap,
    rxq: &MockSplitQueue<GuestMemoryMmap>,
    txq: &MockSplitQueue<GuestMemoryMmap>,
) {
    dev.activate(Activation {
        mem: mem.clone(),
        queues: vec![
            rxq.create_queue::<Queue>().unwrap(),
            txq.create_queue::<Queue>().unwrap(),
        ],
        queue_events: vec![
            EventFd::new(EFD_NONBLOCK).unwrap(),
            EventFd::new(EFD_NONBLOCK).unwrap(),
        ],
        interrupt: Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap())),
        acked_features: 0,
    })
    .unwrap();
}

fn main() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
    let mut sink = vec![0u8; 65536];
    println!("# virtio-net device path over a datagram socketpair, {FRAME}-byte frames, {BATCH}-frame batches, {RUN:?} each");

    let (mut dev, peer, rxq, txq) = device(&mem);
    let tx_descs: Vec<RawDescriptor> = (0..BATCH)
        .map(|i| {
            RawDescriptor::from(Descriptor::new(
                0x10_0000 + u64::from(i) * 2048,
                FRAME as u32,
                0,
                0,
            ))
        })
        .collect();
    let start = Instant::now();
    let mut frames = 0u64;
    while start.elapsed() < RUN {
        txq.add_desc_chains(&tx_descs, 0).unwrap();
        activate(&mut dev, &mem, &rxq, &txq);
        // Reset the mock's avail index for the next round.
        dev.process_queue(TX);
        while peer.recv(&mut sink).is_ok() {
            frames += 1;
        }
        vm_memory::Bytes::write_obj(&mem, 0u16, txq.avail_addr().unchecked_add_helper(2)).unwrap();
    }
    let tx_rate = frames as f64 / start.elapsed().as_secs_f64();

    let (mut dev, peer, rxq, txq) = device(&mem);
    // Smaller RX batches: every frame must fit the socket's buffer at once.
    const RX_BATCH: u16 = 64;
    let rx_descs: Vec<RawDescriptor> = (0..RX_BATCH)
        .map(|i| {
            RawDescriptor::from(Descriptor::new(
                0x20_0000 + u64::from(i) * 2048,
                2048,
                VRING_DESC_F_WRITE as u16,
                0,
            ))
        })
        .collect();
    let frame = vec![0x5au8; FRAME];
    let start = Instant::now();
    let mut frames = 0u64;
    while start.elapsed() < RUN {
        rxq.add_desc_chains(&rx_descs, 0).unwrap();
        activate(&mut dev, &mem, &rxq, &txq);
        for _ in 0..RX_BATCH {
            peer.send(&frame).unwrap();
        }
        dev.process_queue(RX);
        frames += u64::from(RX_BATCH);
        vm_memory::Bytes::write_obj(&mem, 0u16, rxq.avail_addr().unchecked_add_helper(2)).unwrap();
    }
    let rx_rate = frames as f64 / start.elapsed().as_secs_f64();
    println!(
        "net_tx_frames_per_s  {tx_rate:10.0}  ({:.0} MiB/s of frames)",
        tx_rate * FRAME as f64 / (1 << 20) as f64
    );
    println!(
        "net_rx_frames_per_s  {rx_rate:10.0}  ({:.0} MiB/s of frames)",
        rx_rate * FRAME as f64 / (1 << 20) as f64
    );
}

trait AddHelper {
    fn unchecked_add_helper(&self, n: u64) -> GuestAddress;
}

impl AddHelper for GuestAddress {
    fn unchecked_add_helper(&self, n: u64) -> GuestAddress {
        GuestAddress(self.0 + n)
    }
}
