//! virtio-blk device-path throughput: requests through the real queue and
//! request code (a driver-side mock posts the chains; only the device's
//! `process_queue` is timed), next to plain pread/pwrite of the same sizes
//! at the same random offsets of the same file, into the same guest
//! buffers, in alternating turns.
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
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const DISK: u64 = 64 << 20;
const BATCH: u16 = 64;
const TURN: Duration = Duration::from_millis(300);
const ROUNDS: usize = 9;

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

/// Where request `i` of a batch keeps its data in guest memory: both
/// paths use these buffers, so both copy into the same kind of memory.
fn data_addr(i: u64, size: u32) -> u64 {
    (1u64 << 20) + i * u64::from(size) % (16 << 20)
}

/// Seconds inside `process_queue` for one batch of `BATCH` requests of
/// `size` bytes of `kind` at the next offsets. Posting the chains is the
/// guest driver's work (here the mock's, which costs as much again), so
/// it is left out, as the raw loop leaves out whatever prepares its
/// buffers.
fn device_batch(
    mem: &GuestMemoryMmap,
    dev: &mut Block,
    offsets: &mut Offsets,
    kind: u32,
    size: u32,
) -> Duration {
    let hdr_base = 0x10_0000 - 0x1000 * 16;
    let (n, d) = (VRING_DESC_F_NEXT as u16, VRING_DESC_F_WRITE as u16);
    let data_flags = if kind == VIRTIO_BLK_T_IN { d } else { 0 };
    let vq = MockSplitQueue::create(mem, GuestAddress(0x8000), 256);
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
        let base = data_addr(i, size);
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
    let busy = t.elapsed();
    let last_status: u8 = mem
        .read_obj(GuestAddress(hdr_base + u64::from(BATCH - 1) * 32 + 16))
        .unwrap();
    assert_eq!(last_status, 0, "requests succeed");
    busy
}

/// The same batch as plain pread/pwrite, one call per request, at the same
/// offsets into the same guest buffers: the least any VMM could do for
/// these requests. (Buffers of an ordinary heap vector are not the same
/// baseline: on this host a pread into them ran at half the speed of one
/// into the guest mapping, which made the device look faster than raw.)
fn raw_batch(
    mem: &GuestMemoryMmap,
    file: &std::fs::File,
    offsets: &mut Offsets,
    write: bool,
    size: u32,
) -> Duration {
    use std::os::fd::AsRawFd;
    let t = Instant::now();
    for i in 0..u64::from(BATCH) {
        let slice = mem
            .get_slice(GuestAddress(data_addr(i, size)), size as usize)
            .unwrap();
        let p = slice.ptr_guard_mut().as_ptr();
        let off = offsets.next(u64::from(size)) as libc::off_t;
        // SAFETY: `slice` is `size` bytes of the mapping, alive for the
        // call; no Rust reference is formed over it.
        let n = unsafe {
            if write {
                libc::pwrite(file.as_raw_fd(), p.cast(), size as usize, off)
            } else {
                libc::pread(file.as_raw_fd(), p.cast(), size as usize, off)
            }
        };
        assert_eq!(n, size as isize, "raw transfer");
    }
    t.elapsed()
}

/// Device and raw throughput (bytes per second) for one size and kind:
/// ROUNDS alternating turns of each, so a change in the machine's load
/// hits both; each figure is the median of its turns, the ratio the
/// median of the per-round ratios.
fn compare(path: &std::path::Path, kind: u32, write: bool, size: u32) -> (f64, f64, f64) {
    let (mem, mut dev) = rig(path);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let batch_bytes = f64::from(BATCH) * f64::from(size);
    let turn = |f: &mut dyn FnMut() -> Duration| {
        let (start, mut busy, mut batches) = (Instant::now(), Duration::ZERO, 0u32);
        while start.elapsed() < TURN {
            busy += f();
            batches += 1;
        }
        f64::from(batches) * batch_bytes / busy.as_secs_f64()
    };
    let (mut devs, mut raws, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut dev_offsets, mut raw_offsets) = (Offsets::new(), Offsets::new());
    for _ in 0..ROUNDS {
        let d = turn(&mut || device_batch(&mem, &mut dev, &mut dev_offsets, kind, size));
        let r = turn(&mut || raw_batch(&mem, &file, &mut raw_offsets, write, size));
        devs.push(d);
        raws.push(r);
        ratios.push(d / r);
    }
    (median(devs), median(raws), median(ratios))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
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
    println!("# virtio-blk device path vs raw pread/pwrite into the same guest buffers, random offsets, 64 MiB file in the page cache, {BATCH}-request batches, {ROUNDS} alternating turns of {TURN:?} each, medians");
    for size in [4096u32, 65536] {
        for (name, kind, write) in [
            ("read", VIRTIO_BLK_T_IN, false),
            ("write", VIRTIO_BLK_T_OUT, true),
        ] {
            let (dev, plain, ratio) = compare(&path, kind, write, size);
            println!(
                "blk_{name}_{}k  device {:8.1} MiB/s  raw {:8.1} MiB/s  ratio {ratio:.2}  ({:.0} vs {:.0} requests/s)",
                size / 1024,
                dev / (1 << 20) as f64,
                plain / (1 << 20) as f64,
                dev / f64::from(size),
                plain / f64::from(size)
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
