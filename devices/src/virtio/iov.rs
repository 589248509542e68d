//! Guest buffers as host iovecs, for readv/writev on a TAP and
//! preadv/pwritev on a disk file: one system call per frame or request,
//! and no Rust reference ever formed over guest memory.

use std::io;
use std::os::fd::RawFd;

use virtio_queue::desc::split::Descriptor;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};

/// Most iovecs one call may use (Linux's UIO_MAXIOV); a longer list is
/// cut here rather than silently by the kernel or std.
pub const MAX_IOVECS: usize = 1024;

/// Guest buffers (one frame, one disk request) as host iovecs, built from `VolatileSlice`s of
/// guest memory (or of a host buffer): no Rust reference is ever formed
/// over guest memory, the kernel reads and writes it through the iovecs.
/// Empty slices are left out (a chain of zero-length descriptors must not
/// make readv return 0 without taking a frame).
#[derive(Default)]
pub struct GuestIovecs<'a> {
    slices: Vec<VolatileSlice<'a, ()>>,
    iov: Vec<libc::iovec>,
    capacity: usize,
}

impl<'a> GuestIovecs<'a> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `s`; false (and nothing appended) once MAX_IOVECS are held.
    pub fn push(&mut self, s: VolatileSlice<'a, ()>) -> bool {
        if s.is_empty() {
            return true;
        }
        if self.iov.len() == MAX_IOVECS {
            return false;
        }
        self.iov.push(libc::iovec {
            iov_base: s.ptr_guard_mut().as_ptr().cast(),
            iov_len: s.len(),
        });
        self.capacity = self.capacity.saturating_add(s.len());
        self.slices.push(s);
        true
    }

    /// The iovecs, for readv/writev. Valid while `self` lives: the slices
    /// they come from borrow the guest memory mapping.
    pub fn as_iovecs(&self) -> &[libc::iovec] {
        &self.iov
    }

    /// Total bytes of all the buffers.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Scatters `data` over the buffers from the start; returns the bytes
    /// copied (volatile copies, for test doubles and small headers).
    pub fn copy_in(&self, data: &[u8]) -> usize {
        self.copy_in_at(0, data)
    }

    /// Scatters `data` starting at byte `offset` of the buffers; returns
    /// the bytes copied.
    pub fn copy_in_at(&self, mut offset: usize, mut data: &[u8]) -> usize {
        let mut done = 0;
        for s in &self.slices {
            if data.is_empty() {
                break;
            }
            if offset >= s.len() {
                offset -= s.len();
                continue;
            }
            let Ok(part) = s.offset(offset) else { break };
            offset = 0;
            let n = part.len().min(data.len());
            part.copy_from(&data[..n]);
            data = &data[n..];
            done += n;
        }
        done
    }

    /// Gathers at most the first `max` bytes into a host vector.
    pub fn copy_out_prefix(&self, max: usize) -> Vec<u8> {
        let mut v = vec![0u8; self.capacity.min(max)];
        let mut at = 0;
        for s in &self.slices {
            if at == v.len() {
                break;
            }
            at += s.copy_to(&mut v[at..]);
        }
        v
    }

    /// Gathers the buffers into a host vector (test doubles).
    pub fn copy_out(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.capacity];
        let mut at = 0;
        for s in &self.slices {
            at += s.copy_to(&mut v[at..]);
        }
        v
    }
}

/// The chain's buffers as iovecs, if every descriptor goes the expected way
/// (device-writable for RX) and lies in one region of guest RAM; empty
/// descriptors are left out.
pub fn chain_iovecs<'m>(
    mem: &'m GuestMemoryMmap,
    descs: &[Descriptor],
    write: bool,
) -> Option<GuestIovecs<'m>> {
    let mut iov = GuestIovecs::new();
    for d in descs {
        if d.is_write_only() != write {
            return None;
        }
        let s: VolatileSlice<'m, ()> = mem.get_slice(d.addr(), d.len() as usize).ok()?;
        if !iov.push(s) {
            return None;
        }
    }
    Some(iov)
}

/// A readv/writev result: the byte count, or errno.
pub fn byte_count(n: isize) -> io::Result<usize> {
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Reads `bufs.capacity()` bytes of file `fd` from `offset` into the
/// buffers: one preadv (pread for a single buffer), more only after a
/// short read. End of file before that is an error (UnexpectedEof).
pub fn pread_all(fd: RawFd, bufs: &GuestIovecs, offset: u64) -> io::Result<()> {
    // The iovecs point into guest memory that `bufs` keeps borrowed.
    read_iovecs(fd, bufs.as_iovecs(), offset)
}

/// Writes the buffers to file `fd` from `offset`: one pwritev (pwrite for
/// a single buffer), more only after a short write.
pub fn pwrite_all(fd: RawFd, bufs: &GuestIovecs, offset: u64) -> io::Result<()> {
    write_iovecs(fd, bufs.as_iovecs(), offset)
}

/// pread_all into one guest buffer, without building a list for it.
pub fn pread_slice_all(fd: RawFd, buf: &VolatileSlice<'_, ()>, offset: u64) -> io::Result<()> {
    // `buf` borrows the mapping for the call.
    read_iovecs(fd, &[slice_iovec(buf)], offset)
}

/// pwrite_all from one guest buffer, without building a list for it.
pub fn pwrite_slice_all(fd: RawFd, buf: &VolatileSlice<'_, ()>, offset: u64) -> io::Result<()> {
    write_iovecs(fd, &[slice_iovec(buf)], offset)
}

fn slice_iovec(s: &VolatileSlice<'_, ()>) -> libc::iovec {
    libc::iovec {
        iov_base: s.ptr_guard_mut().as_ptr().cast(),
        iov_len: s.len(),
    }
}

/// The callers pass iovecs that point into memory borrowed for the call,
/// at most MAX_IOVECS of them. A single buffer goes through pread: Linux
/// copies into one plain user buffer faster than into an iovec list of
/// one (4 KiB requests through the block device: 0.63 -> 0.71 of raw
/// pread's rate, `cargo bench -p ember-devices --bench blk`).
fn read_iovecs(fd: RawFd, iov: &[libc::iovec], offset: u64) -> io::Result<()> {
    transfer_all(iov, offset, |iov, off| {
        // SAFETY: see above; the kernel writes only inside the buffers.
        byte_count(unsafe {
            match iov {
                [one] => libc::pread(fd, one.iov_base, one.iov_len, off),
                _ => libc::preadv(fd, iov.as_ptr(), iov.len() as libc::c_int, off),
            }
        })
    })
}

fn write_iovecs(fd: RawFd, iov: &[libc::iovec], offset: u64) -> io::Result<()> {
    transfer_all(iov, offset, |iov, off| {
        // SAFETY: as for read_iovecs; the kernel only reads the buffers.
        byte_count(unsafe {
            match iov {
                [one] => libc::pwrite(fd, one.iov_base, one.iov_len, off),
                _ => libc::pwritev(fd, iov.as_ptr(), iov.len() as libc::c_int, off),
            }
        })
    })
}

/// Calls `op(iovecs, file offset)` until every byte of `bufs` moved,
/// retrying EINTR and going on after a short transfer; 0 bytes moved with
/// bytes left is UnexpectedEof (reads) or WriteZero (writes: the same
/// error kind is fine for the caller, which only reports failure).
fn transfer_all(
    bufs: &[libc::iovec],
    offset: u64,
    mut op: impl FnMut(&[libc::iovec], libc::off_t) -> io::Result<usize>,
) -> io::Result<()> {
    let too_far = || io::Error::new(io::ErrorKind::InvalidInput, "file offset out of range");
    let mut iov = std::borrow::Cow::Borrowed(bufs);
    let mut offset = offset;
    loop {
        // Drop buffers already done (a short transfer ends inside one).
        let first = iov.iter().position(|v| v.iov_len > 0);
        let Some(first) = first else { return Ok(()) };
        let off = libc::off_t::try_from(offset).map_err(|_| too_far())?;
        let n = match op(&iov[first..], off) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let remaining: usize = iov[first..].iter().map(|v| v.iov_len).sum();
        if n >= remaining {
            // The usual case: all of it in one call, no copy of the list.
            return Ok(());
        }
        offset = offset.checked_add(n as u64).ok_or_else(too_far)?;
        let mut left = n;
        for v in iov.to_mut()[first..].iter_mut() {
            if left == 0 {
                break;
            }
            let step = left.min(v.iov_len);
            // SAFETY: stays inside the buffer this iovec describes.
            v.iov_base = unsafe { v.iov_base.cast::<u8>().add(step) }.cast();
            v.iov_len -= step;
            left -= step;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use vm_memory::{Bytes, GuestAddress};

    fn file_with(data: &[u8]) -> std::fs::File {
        let path =
            std::env::temp_dir().join(format!("ember-iov-{}-{}", std::process::id(), data.len()));
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.write_all(data).unwrap();
        let _ = std::fs::remove_file(&path);
        f
    }

    #[test]
    fn short_transfers_continue_where_they_stopped() {
        let mem: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let mut bufs = GuestIovecs::new();
        for (addr, len) in [(0x100u64, 3usize), (0x200, 5), (0x300, 4)] {
            assert!(bufs.push(mem.get_slice(GuestAddress(addr), len).unwrap()));
        }
        let data: Vec<u8> = (0..12).collect();
        // At most 2 bytes a call, from a host-side copy of the file.
        let mut calls = 0;
        transfer_all(bufs.as_iovecs(), 0, |iov, off| {
            calls += 1;
            let n = iov[0].iov_len.min(2);
            let src = &data[off as usize..off as usize + n];
            // SAFETY: n bytes inside the first iovec, as preadv would write
            // them (no reference is formed over the guest buffer).
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), iov[0].iov_base.cast(), n) };
            Ok(n)
        })
        .unwrap();
        // 3 = 2+1, 5 = 2+2+1, 4 = 2+2: each call stops inside one buffer.
        assert_eq!(calls, 7);
        let mut got = [0u8; 12];
        mem.read_slice(&mut got[..3], GuestAddress(0x100)).unwrap();
        mem.read_slice(&mut got[3..8], GuestAddress(0x200)).unwrap();
        mem.read_slice(&mut got[8..], GuestAddress(0x300)).unwrap();
        assert_eq!(got.to_vec(), data);
    }

    #[test]
    fn preadv_and_pwritev_move_every_byte_and_eof_is_an_error() {
        let f = file_with(&[9u8; 8192]);
        let mem: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        mem.write_slice(&[1u8; 4096], GuestAddress(0x1000)).unwrap();
        mem.write_slice(&[2u8; 2048], GuestAddress(0x3000)).unwrap();
        let mut bufs = GuestIovecs::new();
        bufs.push(mem.get_slice(GuestAddress(0x1000), 4096).unwrap());
        bufs.push(mem.get_slice(GuestAddress(0x3000), 2048).unwrap());
        pwrite_all(f.as_raw_fd(), &bufs, 1024).unwrap();
        let mut back = GuestIovecs::new();
        back.push(mem.get_slice(GuestAddress(0x8000), 8192).unwrap());
        pread_all(f.as_raw_fd(), &back, 0).unwrap();
        let mut file = vec![0u8; 8192];
        mem.read_slice(&mut file, GuestAddress(0x8000)).unwrap();
        assert!(file[..1024].iter().all(|&b| b == 9));
        assert!(file[1024..5120].iter().all(|&b| b == 1));
        assert!(file[5120..7168].iter().all(|&b| b == 2));
        assert!(file[7168..].iter().all(|&b| b == 9));
        let e = pread_all(f.as_raw_fd(), &back, 4096).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
