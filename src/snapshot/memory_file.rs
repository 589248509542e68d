//! Guest RAM as a snapshot keeps it: one file, the RAM ranges back to
//! back, holes where a 64 KiB block is all zeros (so a file is as large as
//! the memory the guest touched). Blocks of anonymous RAM that this
//! process never touched (no page present or swapped, says
//! /proc/self/pagemap) are holes without being read. Restored by mapping the file privately:
//! pages are read on first touch, written copy-on-write, and the file is
//! never changed; many VMs restored from one file share its page cache.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
};

#[derive(Debug, thiserror::Error)]
pub enum MemoryFileError {
    #[error("{path}: cannot {what}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {size} bytes, but the snapshot's guest has {want} bytes of RAM")]
    Size { path: PathBuf, size: u64, want: u64 },
    #[error("{path}: cannot map {len:#x} bytes at offset {offset:#x}")]
    Map {
        path: PathBuf,
        offset: u64,
        len: u64,
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    #[error("{path}: the guest RAM ranges overlap or are out of order")]
    Layout { path: PathBuf },
}

/// Blocks compared against zero (and left as holes) at a time.
const BLOCK: usize = 64 << 10;
const HOST_PAGE: usize = 4096;
/// pagemap entry bits: the page is present in RAM, or in swap.
const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;

/// /proc/self/pagemap, to skip what was never touched.
struct Touched(File);

impl Touched {
    fn open() -> Option<Self> {
        File::open("/proc/self/pagemap").ok().map(Self)
    }

    /// Whether any page of the `len` bytes at host address `addr` is
    /// present or swapped; true when pagemap cannot say.
    fn any(&self, addr: usize, len: usize) -> bool {
        let first = addr / HOST_PAGE;
        let pages = len.div_ceil(HOST_PAGE);
        let mut entries = vec![0u8; pages * 8];
        if self
            .0
            .read_exact_at(&mut entries, (first * 8) as u64)
            .is_err()
        {
            return true;
        }
        entries.chunks_exact(8).any(|e| {
            <[u8; 8]>::try_from(e).map_or(true, |e| {
                u64::from_ne_bytes(e) & (PM_PRESENT | PM_SWAPPED) != 0
            })
        })
    }
}

/// Writes every RAM range of `mem` into a new file at `path`.
pub fn write(mem: &GuestMemoryMmap, path: &Path) -> Result<u64, MemoryFileError> {
    let io = |what| {
        move |source| MemoryFileError::Io {
            path: path.to_path_buf(),
            what,
            source,
        }
    };
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io("create the memory file"))?;
    let mut buf = vec![0u8; BLOCK];
    let mut offset = 0u64;
    let touched = Touched::open();
    for region in mem.iter() {
        let len = region.len() as usize;
        // Only anonymous memory reads as zero where it was never touched
        // (a restored VM's file-backed RAM holds the file's bytes there).
        let pagemap = touched.as_ref().filter(|_| region.file_offset().is_none());
        let slice = region
            .get_slice(vm_memory::MemoryRegionAddress(0), len)
            .map_err(|e| io("read guest memory")(std::io::Error::other(e)))?;
        let mut done = 0usize;
        while done < len {
            let n = BLOCK.min(len - done);
            let host = region.as_ptr() as usize + done;
            if pagemap.is_some_and(|t| !t.any(host, n)) {
                done += n;
                continue;
            }
            let part = slice
                .subslice(done, n)
                .map_err(|e| io("read guest memory")(std::io::Error::other(e)))?;
            // A copy out of guest memory: no reference is ever formed
            // over memory the guest may change.
            part.copy_to(&mut buf[..n]);
            if buf[..n].iter().any(|&b| b != 0) {
                file.write_all_at(&buf[..n], offset + done as u64)
                    .map_err(io("write the memory file"))?;
            }
            done += n;
        }
        offset += len as u64;
    }
    file.set_len(offset).map_err(io("size the memory file"))?;
    file.sync_all().map_err(io("sync the memory file"))?;
    Ok(offset)
}

/// Maps `path` as the guest RAM `ranges` (in order, back to back in the
/// file), privately: the guest's writes never reach the file.
pub fn map(
    path: &Path,
    ranges: &[(GuestAddress, u64)],
) -> Result<GuestMemoryMmap, MemoryFileError> {
    let io = |what| {
        move |source| MemoryFileError::Io {
            path: path.to_path_buf(),
            what,
            source,
        }
    };
    let file = File::open(path).map_err(io("open the memory file"))?;
    let size = file
        .metadata()
        .map_err(io("read the memory file's size"))?
        .len();
    let want: u64 = ranges.iter().map(|r| r.1).sum();
    if size != want {
        return Err(MemoryFileError::Size {
            path: path.to_path_buf(),
            size,
            want,
        });
    }
    let mut regions = Vec::with_capacity(ranges.len());
    let mut offset = 0u64;
    for &(base, len) in ranges {
        let map_err = |source| MemoryFileError::Map {
            path: path.to_path_buf(),
            offset,
            len,
            source,
        };
        let fd = file.try_clone().map_err(io("duplicate the memory file"))?;
        let region = MmapRegionBuilder::new(len as usize)
            .with_file_offset(FileOffset::new(fd, offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(map_err)?;
        let layout = || MemoryFileError::Layout {
            path: path.to_path_buf(),
        };
        regions.push(GuestRegionMmap::new(region, base).ok_or_else(layout)?);
        offset += len;
    }
    GuestMemoryMmap::from_regions(regions).map_err(|_| MemoryFileError::Layout {
        path: path.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn memory_round_trips_sparsely_and_the_file_stays_unchanged() {
        let ranges = [
            (GuestAddress(0), 1u64 << 20),
            (GuestAddress(4 << 20), 1 << 20),
        ];
        let usize_ranges: Vec<(GuestAddress, usize)> =
            ranges.iter().map(|&(a, l)| (a, l as usize)).collect();
        let mem = GuestMemoryMmap::from_ranges(&usize_ranges).unwrap();
        mem.write_obj(0xdead_beef_u32, GuestAddress(0x1234))
            .unwrap();
        mem.write_obj(0x42u8, GuestAddress((4 << 20) + 0xf_ffff))
            .unwrap();
        let dir = std::env::temp_dir().join(format!("ember-memfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mem");
        assert_eq!(write(&mem, &path).unwrap(), 2 << 20);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 2 << 20);
        use std::os::unix::fs::MetadataExt;
        assert!(
            meta.blocks() * 512 <= 2 * BLOCK as u64 + 8192,
            "zero blocks are holes: {} bytes allocated",
            meta.blocks() * 512
        );

        let back = map(&path, &ranges).unwrap();
        assert_eq!(
            back.read_obj::<u32>(GuestAddress(0x1234)).unwrap(),
            0xdead_beef
        );
        assert_eq!(
            back.read_obj::<u8>(GuestAddress((4 << 20) + 0xf_ffff))
                .unwrap(),
            0x42
        );
        back.write_obj(7u32, GuestAddress(0x1234)).unwrap();
        let again = map(&path, &ranges).unwrap();
        assert_eq!(
            again.read_obj::<u32>(GuestAddress(0x1234)).unwrap(),
            0xdead_beef,
            "a restored guest's writes never reach the file"
        );
        assert!(matches!(
            map(&path, &ranges[..1]),
            Err(MemoryFileError::Size { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
