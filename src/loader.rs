//! Puts the kernel, the initrd and the command line into guest memory,
//! through linux-loader. Every error names the file and what is wrong.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use linux_loader::bootparam::setup_header;
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{BOOT_RESERVED, CMDLINE_ADDR, CMDLINE_MAX, HIMEM_START, PAGE_SIZE};

/// Offset of the 64-bit entry point in a bzImage's protected-mode part.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// xloadflags bit: the kernel has a 64-bit entry point.
const XLF_KERNEL_64: u16 = 1 << 0;
/// "HdrS" at offset 0x202 marks a bzImage setup header.
const BZIMAGE_MAGIC_OFFSET: u64 = 0x202;
const BZIMAGE_MAGIC: &[u8; 4] = b"HdrS";
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
/// Highest initrd address when the kernel does not say (boot protocol < 2.03).
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot open {what} {path}")]
    Open {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {path} is empty")]
    Empty { what: &'static str, path: PathBuf },
    #[error("{what} {path} is not a regular file")]
    NotAFile { what: &'static str, path: PathBuf },
    #[error("kernel {path} is neither an ELF vmlinux nor a bzImage (no ELF magic, no \"HdrS\" at 0x202)")]
    UnknownFormat { path: PathBuf },
    #[error("kernel {path}: bad ELF image")]
    Elf {
        path: PathBuf,
        #[source]
        source: linux_loader::loader::Error,
    },
    #[error("kernel {path}: bad bzImage")]
    BzImage {
        path: PathBuf,
        #[source]
        source: linux_loader::loader::Error,
    },
    #[error("kernel {path}: this bzImage has no 64-bit entry point (xloadflags {xloadflags:#x}, boot protocol {version:#x})")]
    Not64Bit {
        path: PathBuf,
        xloadflags: u16,
        version: u16,
    },
    #[error("kernel {path}: it ends at {end:#x}, beyond the {low_end:#x} bytes of low guest memory (raise --memory)")]
    KernelTooLarge {
        path: PathBuf,
        end: u64,
        low_end: u64,
    },
    #[error("initrd {path}: {size} bytes do not fit between the kernel end ({kernel_end:#x}) and {limit:#x}; raise --memory")]
    InitrdTooLarge {
        path: PathBuf,
        size: u64,
        kernel_end: u64,
        limit: u64,
    },
    #[error("cannot read initrd {path}")]
    ReadInitrd {
        path: PathBuf,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    #[error("cannot write the command line")]
    Cmdline(#[source] linux_loader::loader::Error),
    #[error("kernel {path}: ELF segment {index} ({start:#x}..{end:#x}) overlaps {what}, which Ember writes at {reserved_start:#x}..{reserved_end:#x} after loading the kernel")]
    SegmentOverlapsBootData {
        path: PathBuf,
        index: usize,
        start: u64,
        end: u64,
        what: &'static str,
        reserved_start: u64,
        reserved_end: u64,
    },
    #[error("kernel {path}: ELF segment {index} has {filesz:#x} bytes in the file but only {memsz:#x} in memory")]
    SegmentFileExceedsMemory {
        path: PathBuf,
        index: usize,
        filesz: u64,
        memsz: u64,
    },
    #[error("kernel {path}: the bzImage needs {init_size:#x} bytes from {runtime_start:#x} to decompress and run (init_size), beyond the {low_end:#x} bytes of low guest memory (raise --memory)")]
    InitSizeTooLarge {
        path: PathBuf,
        init_size: u64,
        runtime_start: u64,
        low_end: u64,
    },
}

/// Where the kernel went and how to enter it.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// The 64-bit entry point (RIP of the boot vCPU).
    pub entry: GuestAddress,
    /// First byte after the kernel image.
    pub end: u64,
    /// A bzImage's setup header, which seeds boot_params.hdr.
    pub setup_header: Option<setup_header>,
}

/// Where the initrd went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedInitrd {
    pub addr: GuestAddress,
    pub size: u64,
}

fn open_file(what: &'static str, path: &Path) -> Result<(File, u64), LoadError> {
    let open = |source| LoadError::Open {
        what,
        path: path.to_path_buf(),
        source,
    };
    // O_NONBLOCK: opening a FIFO must fail the check below, not wait for a
    // writer (it has no effect on the regular file that passes it).
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(open)?;
    let meta = file.metadata().map_err(open)?;
    if !meta.is_file() {
        return Err(LoadError::NotAFile {
            what,
            path: path.to_path_buf(),
        });
    }
    if meta.len() == 0 {
        return Err(LoadError::Empty {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok((file, meta.len()))
}

fn read_at(file: &mut File, offset: u64, buf: &mut [u8]) -> bool {
    file.seek(SeekFrom::Start(offset)).is_ok() && file.read_exact(buf).is_ok()
}

/// Loads an ELF vmlinux or a bzImage, told apart by their magic numbers.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    path: &Path,
    low_end: u64,
) -> Result<LoadedKernel, LoadError> {
    let (mut file, _) = open_file("kernel", path)?;
    let mut magic = [0u8; 4];
    let kernel = if read_at(&mut file, 0, &mut magic) && &magic == ELF_MAGIC {
        check_elf_segments(&mut file, path)?;
        let r =
            Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(|source| {
                LoadError::Elf {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
        LoadedKernel {
            entry: r.kernel_load,
            end: r.kernel_end,
            setup_header: None,
        }
    } else if read_at(&mut file, BZIMAGE_MAGIC_OFFSET, &mut magic) && &magic == BZIMAGE_MAGIC {
        let r = BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(
            |source| LoadError::BzImage {
                path: path.to_path_buf(),
                source,
            },
        )?;
        let hdr = r.setup_header.unwrap_or_default();
        if hdr.version < 0x020c || hdr.xloadflags & XLF_KERNEL_64 == 0 {
            return Err(LoadError::Not64Bit {
                path: path.to_path_buf(),
                xloadflags: hdr.xloadflags,
                version: hdr.version,
            });
        }
        let end = bzimage_reserved_end(path, &hdr, r.kernel_load.0, r.kernel_end, low_end)?;
        LoadedKernel {
            entry: GuestAddress(r.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET),
            end,
            setup_header: Some(hdr),
        }
    } else {
        return Err(LoadError::UnknownFormat {
            path: path.to_path_buf(),
        });
    };
    if kernel.end > low_end {
        return Err(LoadError::KernelTooLarge {
            path: path.to_path_buf(),
            end: kernel.end,
            low_end,
        });
    }
    Ok(kernel)
}

/// Refuses ELF load segments that overlap what Ember writes below 1 MiB
/// after loading the kernel (zero page, GDT, page tables, command line,
/// ACPI tables: it would silently overwrite them) or that claim more file
/// bytes than memory. Segments elsewhere below 1 MiB (an AP trampoline)
/// are fine.
/// Headers it cannot read are left for linux-loader to report.
fn check_elf_segments(file: &mut File, path: &Path) -> Result<(), LoadError> {
    use linux_loader::elf::{Elf64_Ehdr, Elf64_Phdr, PT_LOAD};
    use vm_memory::ByteValued;
    let mut ehdr = Elf64_Ehdr::default();
    if !read_at(file, 0, ehdr.as_mut_slice()) {
        return Ok(());
    }
    let entry_size = std::mem::size_of::<Elf64_Phdr>() as u64;
    for index in 0..usize::from(ehdr.e_phnum) {
        let mut ph = Elf64_Phdr::default();
        let offset = (index as u64)
            .checked_mul(entry_size)
            .and_then(|o| o.checked_add(ehdr.e_phoff));
        if !offset.is_some_and(|o| read_at(file, o, ph.as_mut_slice())) {
            return Ok(());
        }
        if ph.p_type != PT_LOAD || (ph.p_filesz == 0 && ph.p_memsz == 0) {
            continue;
        }
        if ph.p_filesz > ph.p_memsz {
            return Err(LoadError::SegmentFileExceedsMemory {
                path: path.to_path_buf(),
                index,
                filesz: ph.p_filesz,
                memsz: ph.p_memsz,
            });
        }
        let end = ph.p_paddr.saturating_add(ph.p_memsz);
        if let Some(&(rs, re, what)) = BOOT_RESERVED
            .iter()
            .find(|(rs, re, _)| ph.p_paddr < *re && end > *rs)
        {
            return Err(LoadError::SegmentOverlapsBootData {
                path: path.to_path_buf(),
                index,
                start: ph.p_paddr,
                end,
                what,
                reserved_start: rs,
                reserved_end: re,
            });
        }
    }
    Ok(())
}

/// The end of the memory a bzImage claims: its decompressor runs at the
/// load address aligned up to `kernel_alignment` (relocatable kernels) or
/// at `pref_address`, whichever is higher, and needs `init_size` bytes
/// there (boot protocol 2.10+). The initrd must go above that.
fn bzimage_reserved_end(
    path: &Path,
    hdr: &setup_header,
    load: u64,
    image_end: u64,
    low_end: u64,
) -> Result<u64, LoadError> {
    if hdr.version < 0x020a {
        return Ok(image_end);
    }
    let pref = hdr.pref_address;
    let align = u64::from(hdr.kernel_alignment).max(1);
    let runtime_start = if hdr.relocatable_kernel != 0 && align.is_power_of_two() {
        load.checked_add(align - 1).map(|a| a & !(align - 1))
    } else {
        Some(load)
    }
    .map(|start| start.max(pref));
    let init_size = u64::from(hdr.init_size);
    let too_large = |runtime_start| LoadError::InitSizeTooLarge {
        path: path.to_path_buf(),
        init_size,
        runtime_start,
        low_end,
    };
    let runtime_start = runtime_start.ok_or_else(|| too_large(u64::MAX))?;
    let end = runtime_start
        .checked_add(init_size)
        .filter(|&end| end <= low_end)
        .ok_or_else(|| too_large(runtime_start))?;
    Ok(end.max(image_end))
}

/// Highest address (exclusive) the kernel accepts for the initrd.
pub fn initrd_limit(kernel: &LoadedKernel, low_end: u64) -> u64 {
    let max = match kernel.setup_header {
        Some(h) if h.version >= 0x0203 => u64::from(h.initrd_addr_max),
        Some(_) => DEFAULT_INITRD_ADDR_MAX,
        None => u64::MAX - 1,
    };
    low_end.min(max + 1)
}

/// Puts the initrd page-aligned at the top of low memory, below `limit`
/// and above the kernel.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    limit: u64,
) -> Result<LoadedInitrd, LoadError> {
    let (mut file, size) = open_file("initrd", path)?;
    let too_large = || LoadError::InitrdTooLarge {
        path: path.to_path_buf(),
        size,
        kernel_end,
        limit,
    };
    let addr = limit.checked_sub(size).ok_or_else(too_large)? & !(PAGE_SIZE - 1);
    if addr < kernel_end {
        return Err(too_large());
    }
    let len = usize::try_from(size).map_err(|_| too_large())?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, len)
        .map_err(|source| LoadError::ReadInitrd {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(LoadedInitrd {
        addr: GuestAddress(addr),
        size,
    })
}

/// Builds the final command line: the user's arguments, then Ember's.
pub fn build_cmdline(user: &str, extra: &[String]) -> Result<Cmdline, crate::config::ConfigError> {
    let no_room = || crate::config::ConfigError::CmdlineNoRoom {
        extra: extra.join(" "),
        max: CMDLINE_MAX - 1,
    };
    // Parsed so that Ember's arguments go before a user's " -- " (what
    // follows it is init's argv, and init's environment never sees it).
    let mut cmdline = if user.trim().is_empty() {
        Cmdline::new(CMDLINE_MAX)
    } else {
        Cmdline::try_from(user.trim(), CMDLINE_MAX)
    }
    .map_err(|_| no_room())?;
    for arg in extra {
        cmdline.insert_str(arg).map_err(|_| no_room())?;
    }
    Ok(cmdline)
}

pub fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &Cmdline) -> Result<(), LoadError> {
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_ADDR), cmdline)
        .map_err(LoadError::Cmdline)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;
    use std::io::Write;

    fn temp_file(name: &str, data: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ember-loader-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::File::create(&path)
            .unwrap()
            .write_all(data)
            .unwrap();
        path
    }

    fn mem() -> GuestMemoryMmap {
        create_guest_memory(16 << 20).unwrap()
    }

    #[test]
    fn empty_missing_and_unknown_kernels_are_named() {
        let m = mem();
        let empty = temp_file("empty", b"");
        let e = load_kernel(&m, &empty, 16 << 20).unwrap_err();
        assert!(matches!(e, LoadError::Empty { .. }));
        assert!(e.to_string().contains("empty"));
        let e = load_kernel(&m, Path::new("/nonexistent/vmlinux"), 16 << 20).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/vmlinux"));
        let junk = temp_file("junk", &[0x55; 4096]);
        assert!(matches!(
            load_kernel(&m, &junk, 16 << 20),
            Err(LoadError::UnknownFormat { .. })
        ));
        let e = load_kernel(&m, Path::new("/"), 16 << 20).unwrap_err();
        assert!(matches!(e, LoadError::NotAFile { .. }));
    }

    #[test]
    fn truncated_elf_is_rejected() {
        let m = mem();
        let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
        elf.resize(40, 0);
        let path = temp_file("trunc.elf", &elf);
        assert!(matches!(
            load_kernel(&m, &path, 16 << 20),
            Err(LoadError::Elf { .. })
        ));
    }

    #[test]
    fn bzimage_with_absurd_setup_sects_is_rejected() {
        let m = mem();
        let mut img = vec![0u8; 4096];
        img[0x1f1] = 0xff; // setup_sects: 255 * 512 bytes, beyond the file
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206] = 0x0f; // version 2.15
        img[0x207] = 0x02;
        img[0x211] = 1; // LOADED_HIGH
        img[0x214..0x218].copy_from_slice(&0x100000u32.to_le_bytes());
        let path = temp_file("bad.bzImage", &img);
        let e = load_kernel(&m, &path, 16 << 20).unwrap_err();
        assert!(matches!(e, LoadError::BzImage { .. }), "{e}");
    }

    #[test]
    fn initrd_goes_to_the_top_and_must_fit() {
        let m = mem();
        let path = temp_file("initrd", &[7u8; 5000]);
        let r = load_initrd(&m, &path, 0x200000, 16 << 20).unwrap();
        assert_eq!(r.size, 5000);
        assert_eq!(r.addr.0 % PAGE_SIZE, 0);
        assert!(r.addr.0 + 5000 <= 16 << 20);
        let mut b = [0u8; 1];
        m.read_slice(&mut b, r.addr).unwrap();
        assert_eq!(b, [7]);
        let e = load_initrd(&m, &path, (16 << 20) - 4096, 16 << 20).unwrap_err();
        assert!(matches!(e, LoadError::InitrdTooLarge { .. }));
        assert!(e.to_string().contains("--memory"));
    }

    #[test]
    fn cmdline_appends_ember_arguments_and_overflow_is_an_error() {
        let c = build_cmdline("console=ttyS0", &["reboot=k".into()]).unwrap();
        assert_eq!(
            c.as_cstring().unwrap().to_str().unwrap(),
            "console=ttyS0 reboot=k"
        );
        let long = "a".repeat(CMDLINE_MAX - 3);
        assert!(build_cmdline(&long, &["reboot=k".into()]).is_err());
    }

    #[test]
    fn ember_arguments_go_before_the_init_arguments() {
        let c = build_cmdline("console=ttyS0 -- -x y", &["reboot=k".into()]).unwrap();
        assert_eq!(
            c.as_cstring().unwrap().to_str().unwrap(),
            "console=ttyS0 reboot=k -- -x y"
        );
    }
}
