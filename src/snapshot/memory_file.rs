//! Guest RAM as a snapshot keeps it: one file, the RAM ranges back to
//! back, then one page naming the snapshot it belongs to (a random id the
//! state file holds too, so a state file is never restored over another
//! snapshot's memory); holes where a 64 KiB block is all zeros (so a file
//! takes the space of the memory the guest touched). Blocks of anonymous RAM that this
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
    #[error("{path}: {size} bytes; the snapshot's guest has {ram} bytes of RAM (a memory file of {expected} bytes)")]
    Size {
        path: PathBuf,
        size: u64,
        ram: u64,
        expected: u64,
    },
    #[error("{path}: not a regular file")]
    NotAFile { path: PathBuf },
    #[error(
        "{path}: not the memory file of this snapshot (it belongs to another one, or is damaged)"
    )]
    Foreign { path: PathBuf },
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
/// The page after the RAM: which snapshot the file belongs to.
const TRAILER: u64 = 4096;

#[derive(serde::Serialize, serde::Deserialize, PartialEq, Eq)]
struct Trailer {
    magic: [u8; 8],
    /// The snapshot's random id (also in its state file).
    id: u64,
    ram: u64,
}

const TRAILER_MAGIC: [u8; 8] = *b"EMBERMEM";
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

/// Writes every RAM range of `mem`, and the trailer with `id`, into a
/// new file at `path` (a temporary file renamed into place, so a mapping
/// of the file it replaces, a restored VM's RAM, is never cut short).
/// Returns the bytes of RAM written.
pub fn write(mem: &GuestMemoryMmap, path: &Path, id: u64) -> Result<u64, MemoryFileError> {
    let io = |what| {
        move |source| MemoryFileError::Io {
            path: path.to_path_buf(),
            what,
            source,
        }
    };
    let temp = TempFile::create(path).map_err(io("create the memory file"))?;
    let file = &temp.file;
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
    let trailer = Trailer {
        magic: TRAILER_MAGIC,
        id,
        ram: offset,
    };
    let bytes = postcard::to_stdvec(&trailer)
        .map_err(|e| io("encode the memory file's trailer")(std::io::Error::other(e)))?;
    file.write_all_at(&bytes, offset)
        .map_err(io("write the memory file"))?;
    file.set_len(offset + TRAILER)
        .map_err(io("size the memory file"))?;
    file.sync_all().map_err(io("sync the memory file"))?;
    temp.keep().map_err(io("move the memory file into place"))?;
    Ok(offset)
}

/// A file written beside its final path and renamed there once whole;
/// removed if dropped before that.
pub(crate) struct TempFile {
    pub file: File,
    temp: PathBuf,
    path: PathBuf,
}

impl TempFile {
    pub fn create(path: &Path) -> std::io::Result<Self> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(
            ".ember-tmp-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let temp = path.with_file_name(name);
        let file = OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .open(&temp)?;
        Ok(Self {
            file,
            temp,
            path: path.to_path_buf(),
        })
    }

    /// Renames the file into place.
    pub fn keep(self) -> std::io::Result<()> {
        std::fs::rename(&self.temp, &self.path)?;
        // Renamed: nothing to remove on drop.
        std::mem::forget(self);
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.temp);
    }
}

/// Opens `path` for reading without blocking on a FIFO or a device, and
/// only if it is a regular file.
pub(crate) fn open_regular(path: &Path) -> std::io::Result<Option<File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    Ok(file.metadata()?.is_file().then_some(file))
}

/// Maps `path` as the guest RAM `ranges` (in order, back to back in the
/// file), privately: the guest's writes never reach the file. The file
/// must be the one written with snapshot id `id`.
pub fn map(
    path: &Path,
    ranges: &[(GuestAddress, u64)],
    id: u64,
) -> Result<GuestMemoryMmap, MemoryFileError> {
    let io = |what| {
        move |source| MemoryFileError::Io {
            path: path.to_path_buf(),
            what,
            source,
        }
    };
    let file = open_regular(path)
        .map_err(io("open the memory file"))?
        .ok_or_else(|| MemoryFileError::NotAFile {
            path: path.to_path_buf(),
        })?;
    let size = file
        .metadata()
        .map_err(io("read the memory file's size"))?
        .len();
    let ram: u64 = ranges.iter().map(|r| r.1).sum();
    if size != ram + TRAILER {
        return Err(MemoryFileError::Size {
            path: path.to_path_buf(),
            size,
            ram,
            expected: ram + TRAILER,
        });
    }
    let mut page = vec![0u8; TRAILER as usize];
    file.read_exact_at(&mut page, ram)
        .map_err(io("read the memory file's trailer"))?;
    let want = Trailer {
        magic: TRAILER_MAGIC,
        id,
        ram,
    };
    if postcard::take_from_bytes::<Trailer>(&page)
        .map(|(t, _)| t)
        .ok()
        != Some(want)
    {
        return Err(MemoryFileError::Foreign {
            path: path.to_path_buf(),
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
        assert_eq!(write(&mem, &path, 7).unwrap(), 2 << 20);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), (2 << 20) + TRAILER);
        use std::os::unix::fs::MetadataExt;
        assert!(
            meta.blocks() * 512 <= 2 * BLOCK as u64 + 2 * TRAILER + 8192,
            "zero blocks are holes: {} bytes allocated",
            meta.blocks() * 512
        );

        let back = map(&path, &ranges, 7).unwrap();
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
        let again = map(&path, &ranges, 7).unwrap();
        assert_eq!(
            again.read_obj::<u32>(GuestAddress(0x1234)).unwrap(),
            0xdead_beef,
            "a restored guest's writes never reach the file"
        );
        assert!(matches!(
            map(&path, &ranges[..1], 7),
            Err(MemoryFileError::Size { .. })
        ));
        assert!(matches!(
            map(&path, &ranges, 8),
            Err(MemoryFileError::Foreign { .. })
        ));
        // Writing over a file a VM has mapped replaces it: the mapping
        // keeps the old file's bytes (and is never cut short: no SIGBUS).
        mem.write_obj(0x1111_2222_u32, GuestAddress(0x1234))
            .unwrap();
        write(&back, &path, 9).unwrap();
        assert_eq!(
            again.read_obj::<u32>(GuestAddress(0x1234)).unwrap(),
            0xdead_beef
        );
        let newer = map(&path, &ranges, 9).unwrap();
        assert_eq!(newer.read_obj::<u32>(GuestAddress(0x1234)).unwrap(), 7);
        assert_eq!(
            newer
                .read_obj::<u8>(GuestAddress((4 << 20) + 0xf_ffff))
                .unwrap(),
            0x42
        );
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary file left"
        );
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(matches!(
            map(&fifo, &ranges, 9),
            Err(MemoryFileError::NotAFile { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
