//! The container guest's initramfs, built in memory: Ember's init as
//! `/init` and `/dev/console` (the kernel opens it as the init's stdin,
//! stdout and stderr). The same for every run: the spec comes over the
//! stream.

use std::fs::File;
use std::io::{Cursor, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::PathBuf;

use cpio::NewcBuilder;

/// Ember's own init, built static by build.rs from init/.
static INIT: &[u8] = include_bytes!(env!("EMBER_INIT_PATH"));

/// The init's bytes (part of a template's key).
pub(crate) fn init_bytes() -> &'static [u8] {
    INIT
}

/// An initramfs in an anonymous memory file; its path (through
/// /proc/self/fd) is valid while it lives.
pub(crate) struct Initramfs {
    file: File,
}

impl Initramfs {
    pub(crate) fn build() -> std::io::Result<Self> {
        let name = c"ember-initramfs";
        // SAFETY: name is NUL-terminated; the descriptor is new and ours.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd == -1 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: memfd_create just returned fd, owned by nobody else.
        let mut file = unsafe { File::from_raw_fd(fd) };
        let dir = |name: &str| (NewcBuilder::new(name).mode(0o040755), Cursor::new(&[][..]));
        let entries = vec![
            dir("dev"),
            (
                NewcBuilder::new("dev/console")
                    .mode(0o020600)
                    .rdev_major(5)
                    .rdev_minor(1),
                Cursor::new(&[][..]),
            ),
            (NewcBuilder::new("init").mode(0o100755), Cursor::new(INIT)),
        ];
        let mut out = std::io::BufWriter::new(&mut file);
        cpio::write_cpio(entries.into_iter(), &mut out)?;
        out.flush()?;
        drop(out);
        file.rewind()?;
        Ok(Self { file })
    }

    pub(crate) fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn the_archive_holds_init_and_console() {
        let r = Initramfs::build().unwrap();
        let mut bytes = Vec::new();
        File::open(r.path())
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        let mut at = Cursor::new(bytes);
        let mut seen = Vec::new();
        loop {
            let entry = cpio::NewcReader::new(at).unwrap();
            if entry.entry().is_trailer() {
                break;
            }
            let name = entry.entry().name().to_string();
            let mode = entry.entry().mode();
            let mut data = Vec::new();
            let mut entry = entry;
            entry.read_to_end(&mut data).unwrap();
            if name == "init" {
                assert_eq!(&data[..4], b"\x7fELF");
            }
            seen.push((name, mode));
            at = entry.finish().unwrap();
        }
        let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["dev", "dev/console", "init"]);
        assert_eq!(seen[1].1, 0o020600);
    }
}
