//! virtio-blk device-path throughput: requests through the real queue and
//! request code (a driver-side mock posts the chains), next to plain
//! pread/pwrite of the same sizes on the same file. Page-cache bound on
//! purpose: it measures Ember's per-request overhead, not the disk.
//!
//!   cargo bench -p ember-devices --bench blk

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ember_devices::virtio::block::{Block, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use ember_devices::virtio::{Activation, Interrupt, VirtioDevice};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const DISK: u64 = 64 << 20;
const BATCH: u16 = 64;
const RUN: Duration = Duration::from_secs(2);

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, next))
}

/// Bytes per second through the device for `size`-byte requests of `kind`.
fn device_path(path: &std::path::Path, kind: u32, size: u32) -> f64 {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 32 << 20)]).unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut dev = Block::new(file, false, "bench").unwrap();
    let data_base = 1u64 << 20;
    let hdr_base = 0x10_0000 - 0x1000 * 16;
    let (n, d) = (VRING_DESC_F_NEXT as u16, VRING_DESC_F_WRITE as u16);
    let data_flags = if kind == VIRTIO_BLK_T_IN { d } else { 0 };
    let sectors_per_req = u64::from(size) / 512;
    let start = Instant::now();
    let mut bytes = 0u64;
    let mut sector = 0u64;
    while start.elapsed() < RUN {
        let vq = MockSplitQueue::create(&mem, GuestAddress(0x8000), 256);
        let mut chains = Vec::new();
        for i in 0..u64::from(BATCH) {
            let hdr = hdr_base + i * 32;
            mem.write_obj(kind, GuestAddress(hdr)).unwrap();
            mem.write_obj(sector, GuestAddress(hdr + 8)).unwrap();
            sector = (sector + sectors_per_req) % (DISK / 512 - sectors_per_req);
            let first = (i * 3) as u16;
            chains.push(desc(hdr, 16, n, first + 1));
            chains.push(desc(
                data_base + i * u64::from(size) % (16 << 20),
                size,
                data_flags | n,
                first + 2,
            ));
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
        dev.process_queue(0);
        bytes += u64::from(BATCH) * u64::from(size);
    }
    bytes as f64 / start.elapsed().as_secs_f64()
}

fn raw(path: &std::path::Path, write: bool, size: usize) -> f64 {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut buf = vec![0u8; size];
    let start = Instant::now();
    let mut bytes = 0u64;
    let mut off = 0u64;
    while start.elapsed() < RUN {
        for _ in 0..BATCH {
            if write {
                file.write_all_at(&buf, off).unwrap();
            } else {
                file.read_exact_at(&mut buf, off).unwrap();
            }
            off = (off + size as u64) % (DISK - size as u64);
            bytes += size as u64;
        }
    }
    bytes as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let path = std::env::temp_dir().join(format!("ember-blk-bench-{}", std::process::id()));
    std::fs::write(&path, vec![7u8; DISK as usize]).unwrap();
    println!("# virtio-blk device path vs raw pread/pwrite, 64 MiB file in the page cache, {BATCH}-request batches, {RUN:?} each");
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
    let _ = std::fs::remove_file(&path);
}
