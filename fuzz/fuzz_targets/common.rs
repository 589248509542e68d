// Shared by the virtio targets: guest memory, a queue laid out in it, and
// the driver's side written raw (descriptor table, available ring) from
// the fuzzer's bytes, as a hostile driver would.
#![allow(dead_code)]

use arbitrary::{Result, Unstructured};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

pub const MEM: usize = 1 << 20;
pub const QUEUE_SIZE: u16 = 16;

pub fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap()
}

/// A queue at `base` whose descriptors and available ring are the
/// fuzzer's, and whose buffers point anywhere (in memory or not).
pub fn hostile_queue(mem: &GuestMemoryMmap, base: u64, u: &mut Unstructured) -> Result<Queue> {
    let vq = MockSplitQueue::create(mem, GuestAddress(base), QUEUE_SIZE);
    let desc = vq.desc_table_addr();
    for i in 0..u64::from(QUEUE_SIZE) {
        // Addresses mostly inside memory, sometimes anywhere.
        let addr: u64 = if u.ratio(7, 8)? {
            u.int_in_range(0..=MEM as u64)?
        } else {
            u.arbitrary()?
        };
        let len: u32 = if u.ratio(7, 8)? {
            u.int_in_range(0..=8192)?
        } else {
            u.arbitrary()?
        };
        let flags: u16 = u.arbitrary::<u16>()? & 0x7;
        let next: u16 = u.int_in_range(0..=QUEUE_SIZE + 2)?;
        let at = desc.unchecked_add(i * 16);
        mem.write_obj(addr, at).unwrap();
        mem.write_obj(len, at.unchecked_add(8)).unwrap();
        mem.write_obj(flags, at.unchecked_add(12)).unwrap();
        mem.write_obj(next, at.unchecked_add(14)).unwrap();
    }
    let avail = vq.avail_addr();
    let idx: u16 = u.arbitrary()?;
    mem.write_obj(0u16, avail).unwrap();
    mem.write_obj(idx, avail.unchecked_add(2)).unwrap();
    for i in 0..u64::from(QUEUE_SIZE) {
        let head: u16 = u.int_in_range(0..=QUEUE_SIZE + 2)?;
        mem.write_obj(head, avail.unchecked_add(4 + 2 * i)).unwrap();
    }
    Ok(vq.create_queue::<Queue>().unwrap())
}

/// Bytes the guest may have put in its buffers: random fill.
pub fn fill(mem: &GuestMemoryMmap, u: &mut Unstructured) -> Result<()> {
    let n = u.int_in_range(0..=64)?;
    for _ in 0..n {
        let at: u64 = u.int_in_range(0..=MEM as u64 - 64)?;
        let bytes: [u8; 16] = u.arbitrary()?;
        mem.write_slice(&bytes, GuestAddress(at)).unwrap();
    }
    Ok(())
}

/// A 64 KiB disk in memory (memfd), as a File.
pub fn disk() -> std::fs::File {
    use std::os::fd::FromRawFd;
    // SAFETY: memfd_create with a NUL-terminated name; the fd is owned below.
    let fd = unsafe { libc_memfd() };
    // SAFETY: a new descriptor owned by nothing else.
    let f = unsafe { std::fs::File::from_raw_fd(fd) };
    f.set_len(64 << 10).unwrap();
    f
}

unsafe fn libc_memfd() -> i32 {
    extern "C" {
        fn memfd_create(name: *const std::ffi::c_char, flags: u32) -> i32;
    }
    let fd = memfd_create(c"ember-fuzz-disk".as_ptr(), 1);
    assert!(fd >= 0, "memfd_create");
    fd
}
