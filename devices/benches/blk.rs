//! virtio-blk device-path throughput: requests through the real queue and
//! request code (a driver-side mock posts the chains; only the device's
//! `process_queue` is timed), next to plain pread/pwrite of the same sizes
//! at the same random offsets of the same file, into as many buffers.
//! Page-cache bound on purpose: it measures Ember's per-request overhead,
//! not the disk.
//!
//! Then a hostile driver: 256 avail entries, each the same chain claiming
//! the most data one request may (SEG_MAX segments of SIZE_MAX bytes, all
//! on one guest buffer), and 256 chains claiming 256 MiB each; the figure
//! is the longest single `process_queue` call (how long the event loop is
//! held) while the device drains the flood, re-arming itself.
//!
//!   cargo bench -p ember-devices --bench blk

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ember_devices::virtio::block::{
    Block, SEG_MAX, SIZE_MAX, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, WORK_BYTES_PER_EVENT,
};
use ember_devices::virtio::{Activation, Interrupt, VirtioDevice};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const DISK: u64 = 64 << 20;
const BATCH: u16 = 64;
const RUN: Duration = Duration::from_secs(2);

/// The random request offsets both paths use: xorshift64, the same seed.
struct Offsets(u64);

impl Offsets {
    fn new() -> Self {
        Self(0x9e37_79b9_7f4a_7c15)
    }

    /// The next `size`-aligned byte offset inside the disk.
    fn next(&mut self, size: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % (DISK / size)) * size
    }
}

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, next))
}

/// 32 MiB of guest memory and a writable device on `path`.
fn rig(path: &std::path::Path) -> (GuestMemoryMmap, Block) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 32 << 20)]).unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    (mem, Block::new(file, false, "bench").unwrap())
}

/// Bytes per second through the device for `size`-byte requests of `kind`:
/// the time inside `process_queue` only. Posting the chains is the guest
/// driver's work (here the mock's, which costs as much again), so it is
/// left out, as the raw loop leaves out whatever prepares its buffers.
fn device_path(path: &std::path::Path, kind: u32, size: u32) -> f64 {
    let (mem, mut dev) = rig(path);
    let data_base = 1u64 << 20;
    let hdr_base = 0x10_0000 - 0x1000 * 16;
    let (n, d) = (VRING_DESC_F_NEXT as u16, VRING_DESC_F_WRITE as u16);
    let data_flags = if kind == VIRTIO_BLK_T_IN { d } else { 0 };
    let mut offsets = Offsets::new();
    let start = Instant::now();
    let mut busy = Duration::ZERO;
    let mut bytes = 0u64;
    while start.elapsed() < RUN {
        let vq = MockSplitQueue::create(&mem, GuestAddress(0x8000), 256);
        let mut chains = Vec::new();
        for i in 0..u64::from(BATCH) {
            let hdr = hdr_base + i * 32;
            mem.write_obj(kind, GuestAddress(hdr)).unwrap();
            let sector = offsets.next(u64::from(size)) / 512;
            mem.write_obj(sector, GuestAddress(hdr + 8)).unwrap();
            mem.write_obj(0xffu8, GuestAddress(hdr + 16)).unwrap();
            // Split into SIZE_MAX segments, as a guest honouring the
            // advertised size_max does.
            let segs = size.div_ceil(SIZE_MAX) as u16;
            let first = (i as u16) * (segs + 2);
            chains.push(desc(hdr, 16, n, first + 1));
            let base = data_base + i * u64::from(size) % (16 << 20);
            for s in 0..segs {
                chains.push(desc(
                    base + u64::from(s) * u64::from(SIZE_MAX),
                    size.min(SIZE_MAX),
                    data_flags | n,
                    first + 2 + s,
                ));
            }
            chains.push(desc(hdr + 16, 1, d, 0));
        }
        vq.add_desc_chains(&chains, 0).unwrap();
        dev.activate(Activation {
            mem: mem.clone(),
            queues: vec![vq.create_queue::<Queue>().unwrap()],
            queue_events: vec![EventFd::new(EFD_NONBLOCK).unwrap()],
            interrupt: Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap())),
            acked_features: 0,
        })
        .unwrap();
        let t = Instant::now();
        dev.process_queue(0);
        busy += t.elapsed();
        let last_status: u8 = mem
            .read_obj(GuestAddress(hdr_base + u64::from(BATCH - 1) * 32 + 16))
            .unwrap();
        assert_eq!(last_status, 0, "requests succeed");
        bytes += u64::from(BATCH) * u64::from(size);
    }
    bytes as f64 / busy.as_secs_f64()
}

/// The same requests as plain pread/pwrite: the same offsets, and a
/// buffer of its own for each request of a batch, as the device's guest
/// buffers are (one buffer reused for every request would stay in the
/// CPU cache and flatter the baseline).
fn raw(path: &std::path::Path, write: bool, size: usize) -> f64 {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut bufs = vec![0u8; size * usize::from(BATCH)];
    let mut offsets = Offsets::new();
    let start = Instant::now();
    let mut bytes = 0u64;
    while start.elapsed() < RUN {
        for buf in bufs.chunks_mut(size) {
            let off = offsets.next(size as u64);
            if write {
                file.write_all_at(buf, off).unwrap();
            } else {
                file.read_exact_at(buf, off).unwrap();
            }
            bytes += size as u64;
        }
    }
    bytes as f64 / start.elapsed().as_secs_f64()
}

/// Worst and total time of the `process_queue` calls that drain 256 avail
/// entries of one chain with `segs` data segments of `len` bytes each.
fn flood(path: &std::path::Path, segs: u16, len: u32) -> (Duration, Duration, usize) {
    let (mem, mut dev) = rig(path);
    let (n, d) = (VRING_DESC_F_NEXT as u16, VRING_DESC_F_WRITE as u16);
    let (hdr, data, status) = (0x10_0000u64, 0x20_0000u64, 0x10_0100u64);
    mem.write_obj(VIRTIO_BLK_T_IN, GuestAddress(hdr)).unwrap();
    mem.write_obj(0u64, GuestAddress(hdr + 8)).unwrap();
    let vq = MockSplitQueue::create(&mem, GuestAddress(0x8000), 256);
    let mut chain = vec![desc(hdr, 16, n, 1)];
    for i in 0..segs {
        chain.push(desc(data, len, d | n, i + 2));
    }
    chain.push(desc(status, 1, d, 0));
    for (i, c) in chain.iter().enumerate() {
        vq.desc_table().store(i as u16, *c).unwrap();
    }
    // Every avail entry is head 0; the used ring goes where the mock's
    // (which overlaps its avail ring at this size) does not.
    for i in 0..256u64 {
        mem.write_obj(0u16, vq.avail_addr().unchecked_add(4 + 2 * i))
            .unwrap();
    }
    mem.write_obj(256u16, vq.avail_addr().unchecked_add(2))
        .unwrap();
    let mut q = vq.create_queue::<Queue>().unwrap();
    q.try_set_used_ring_address(GuestAddress(0xc000)).unwrap();
    let notify = EventFd::new(EFD_NONBLOCK).unwrap();
    dev.activate(Activation {
        mem: mem.clone(),
        queues: vec![q],
        queue_events: vec![notify.try_clone().unwrap()],
        interrupt: Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap())),
        acked_features: 0,
    })
    .unwrap();
    let (mut worst, mut total, mut calls) = (Duration::ZERO, Duration::ZERO, 0);
    loop {
        let t = Instant::now();
        dev.process_queue(0);
        let took = t.elapsed();
        worst = worst.max(took);
        total += took;
        calls += 1;
        // As the event loop does: come back while the device re-armed.
        if notify.read().is_err() {
            break;
        }
    }
    let used: u16 = mem.read_obj(GuestAddress(0xc000 + 2)).unwrap();
    assert_eq!(used, 256, "the flood was drained");
    (worst, total, calls)
}

fn main() {
    let path = std::env::temp_dir().join(format!("ember-blk-bench-{}", std::process::id()));
    std::fs::write(&path, vec![7u8; DISK as usize]).unwrap();
    println!("# virtio-blk device path vs raw pread/pwrite, random offsets, 64 MiB file in the page cache, {BATCH}-request batches, {RUN:?} each");
    for size in [4096u32, 65536] {
        for (name, kind, write) in [
            ("read", VIRTIO_BLK_T_IN, false),
            ("write", VIRTIO_BLK_T_OUT, true),
        ] {
            let dev = device_path(&path, kind, size);
            let plain = raw(&path, write, size as usize);
            println!(
                "blk_{name}_{}k  device {:8.1} MiB/s  raw {:8.1} MiB/s  ratio {:.2}  ({:.0} requests/s through the device)",
                size / 1024,
                dev / (1 << 20) as f64,
                plain / (1 << 20) as f64,
                dev / plain,
                dev / f64::from(size)
            );
        }
    }
    let budget_ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (w, t, c) = flood(&path, SEG_MAX as u16, SIZE_MAX);
    println!(
        "blk_flood_max_requests  256 x {} MiB reads: worst process_queue {:.2} ms, {c} calls, {:.1} ms in all (budget {} MiB per call)",
        (u64::from(SEG_MAX) * u64::from(SIZE_MAX)) >> 20,
        budget_ms(w),
        budget_ms(t),
        WORK_BYTES_PER_EVENT >> 20
    );
    let (w, t, c) = flood(&path, 1, 256 << 20);
    println!(
        "blk_flood_256mib_claims 256 x 256 MiB claims: worst process_queue {:.3} ms, {c} calls, {:.3} ms in all",
        budget_ms(w),
        budget_ms(t)
    );
    let _ = std::fs::remove_file(&path);
}
