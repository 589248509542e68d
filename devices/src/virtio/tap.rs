//! Frames in and out of the host: a TAP device (IFF_TAP | IFF_NO_PI |
//! IFF_VNET_HDR, 12-byte virtio-net headers), behind the small `FrameIo`
//! trait that tests fill with a socketpair.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::iov::{byte_count, GuestIovecs};

/// Bytes of the virtio-net header on every frame (virtio 1.x with
/// num_buffers), which TAP passes through with IFF_VNET_HDR.
pub const VNET_HDR_LEN: usize = 12;
const IFNAMSIZ: usize = 16;

/// One frame per call, in and out; non-blocking.
pub trait FrameIo: Send {
    /// Reads one frame (header included) into `bufs`; WouldBlock when none.
    fn read_frame(&mut self, bufs: &GuestIovecs) -> io::Result<usize>;
    /// Writes one frame (header included) gathered from `bufs`.
    fn write_frame(&mut self, bufs: &GuestIovecs) -> io::Result<usize>;
    /// The descriptor the event loop waits on for incoming frames.
    fn fd(&self) -> RawFd;
}

fn readv(fd: RawFd, bufs: &GuestIovecs) -> io::Result<usize> {
    let iov = bufs.as_iovecs();
    // SAFETY: the iovecs point into mappings (guest memory or a host
    // buffer) that `bufs` keeps borrowed for this call; at most MAX_IOVECS.
    byte_count(unsafe { libc::readv(fd, iov.as_ptr(), iov.len() as libc::c_int) })
}

fn writev(fd: RawFd, bufs: &GuestIovecs) -> io::Result<usize> {
    let iov = bufs.as_iovecs();
    // SAFETY: as for readv; the kernel only reads the buffers.
    byte_count(unsafe { libc::writev(fd, iov.as_ptr(), iov.len() as libc::c_int) })
}

/// Whether an error from the backend means it is gone for good (the TAP
/// interface was deleted: EBADFD; or the descriptor broke), as opposed to
/// one frame being refused (EINVAL, which a guest can cause) or no room.
pub fn backend_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBADFD | libc::EBADF | libc::EIO | libc::ENXIO | libc::ENODEV | libc::EPIPE)
    )
}

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("TAP interface name {0:?} is empty or longer than 15 bytes")]
    Name(String),
    #[error("cannot open /dev/net/tun for TAP {name}: {source}")]
    OpenTun {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot attach to TAP {name}: {source} (busy, or no CAP_NET_ADMIN to create it?)")]
    Attach {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot configure TAP {name}: {what}: {source}")]
    Configure {
        name: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attaches to TAP `name`, creating it if it does not exist.
    pub fn open(name: &str) -> Result<Self, TapError> {
        if name.is_empty() || name.len() >= IFNAMSIZ || name.contains('\0') {
            return Err(TapError::Name(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|source| TapError::OpenTun {
                name: name.to_string(),
                source,
            })?;
        let mut req = IfReq {
            name: [0; IFNAMSIZ],
            flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes an ifreq, which IfReq matches
        // in layout (16-byte name, flags, padding to 40 bytes).
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
            return Err(TapError::Attach {
                name: name.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) } < 0 {
            return Err(TapError::Configure {
                name: name.to_string(),
                what: "set the virtio-net header size",
                source: io::Error::last_os_error(),
            });
        }
        // No offloads: frames carry full checksums and no GSO.
        // SAFETY: TUNSETOFFLOAD takes an unsigned long by value.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETOFFLOAD, 0 as libc::c_ulong) } < 0 {
            return Err(TapError::Configure {
                name: name.to_string(),
                what: "turn offloads off",
                source: io::Error::last_os_error(),
            });
        }
        Ok(Self {
            file,
            name: name.to_string(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl FrameIo for Tap {
    fn read_frame(&mut self, bufs: &GuestIovecs) -> io::Result<usize> {
        readv(self.file.as_raw_fd(), bufs)
    }
    fn write_frame(&mut self, bufs: &GuestIovecs) -> io::Result<usize> {
        writev(self.file.as_raw_fd(), bufs)
    }
    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// A datagram socket as a frame pipe: one frame per message, like a TAP.
pub struct SocketFrames(pub std::os::unix::net::UnixDatagram);

impl FrameIo for SocketFrames {
    fn read_frame(&mut self, bufs: &GuestIovecs) -> io::Result<usize> {
        readv(self.0.as_raw_fd(), bufs)
    }
    fn write_frame(&mut self, bufs: &GuestIovecs) -> io::Result<usize> {
        writev(self.0.as_raw_fd(), bufs)
    }
    fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_are_refused_before_any_syscall() {
        for n in ["", "a-name-that-is-too-long", "nul\0"] {
            assert!(matches!(Tap::open(n), Err(TapError::Name(_))), "{n:?}");
        }
    }
}
