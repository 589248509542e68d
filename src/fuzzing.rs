//! Entry points for the fuzz targets in fuzz/ (not a stable API): each
//! runs one of Ember's parsers on arbitrary input, as a hostile user,
//! guest or client would feed it. A panic, a hang or unbounded memory is
//! the bug the fuzzer looks for; errors are the expected outcome.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};

use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::api::preboot::PreBoot;
use crate::api::server::Handler;
use crate::snapshot::{file, Snapshot};

/// The kernel loaders (ELF and bzImage) on an arbitrary file, into 32 MiB
/// of guest memory.
pub fn kernel_file(bytes: &[u8]) {
    thread_local! {
        static MEM: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 32 << 20)]).expect("32 MiB");
    }
    // SAFETY: memfd_create with a NUL-terminated name; the fd is owned below.
    let fd = unsafe { libc::memfd_create(c"ember-fuzz-kernel".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return;
    }
    // SAFETY: a descriptor just created and owned by nothing else.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    if file.write_all(bytes).is_err() {
        return;
    }
    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
    MEM.with(|mem| {
        if let Ok(k) = crate::loader::load_kernel(mem, std::path::Path::new(&path), 32 << 20) {
            let _ = crate::loader::initrd_limit(&k, 32 << 20);
        }
    });
}

/// The kernel command line assembly: a user's arguments and Ember's own.
pub fn cmdline(user: &str, extra: &[String]) {
    let _ = crate::loader::build_cmdline(user, extra);
    let config = crate::VmConfig {
        cmdline: user.to_string(),
        ..crate::VmConfig::new("k")
    };
    let _ = config.validate();
}

/// The console's Ctrl-A escape filter over input arriving in `chunks`.
pub fn console_escapes(chunks: &[&[u8]]) {
    let mut state = crate::console_input::EscapeState::default();
    let (mut taken, mut given) = (0usize, 0usize);
    for c in chunks {
        let (out, quit) = crate::console_input::filter_escapes(&mut state, c);
        taken += c.len();
        given += out.len();
        // A Ctrl-A held back at a chunk's end comes out with the next one,
        // so one chunk may give more than it took, never the whole input.
        assert!(given <= taken, "the filter made up bytes");
        if quit {
            break;
        }
    }
}

/// One request through the API server's HTTP parser, then both handlers:
/// the pre-boot one (nothing is started: its launcher is gone) and the
/// running VM's (a control with no machine behind it).
pub fn api_request(bytes: &[u8]) {
    let Some((method, path, body)) = crate::api::server::parse_request(bytes) else {
        return;
    };
    let (mut preboot, requests) = PreBoot::new("fuzz".into(), false);
    drop(requests);
    let _ = preboot.handle(&method, &path, &body);
    let exit = std::sync::Arc::new(crate::exit::ExitSignal::new().expect("an eventfd"));
    let vm = crate::control::VmControl::new(exit, 1, 256 << 20, false);
    let mut running = crate::api::routes::Running {
        vm,
        id: "fuzz".into(),
    };
    // Stop ends this control only; pause/resume park no vCPU (none).
    let _ = running.handle(&method, &path, &body);
}

/// The snapshot file's envelope and body.
pub fn snapshot_file(bytes: &[u8]) {
    let _ = file::decode::<Snapshot>(std::path::Path::new("fuzz"), bytes);
}

/// A container's stream, host end: what a hostile guest writes, in
/// `chunks`, then whatever the host end has for the guest. CMD's output
/// goes to pipes that are drained as it comes.
pub fn container_stream(chunks: &[&[u8]]) {
    use ember_devices::virtio::console::PortBackend;
    let pipe = || -> Option<(std::fs::File, std::fs::File)> {
        let mut fds = [0; 2];
        // SAFETY: fds has room for two descriptors.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return None;
        }
        // SAFETY: two descriptors just created, owned by nothing else.
        Some(unsafe {
            (
                std::fs::File::from_raw_fd(fds[0]),
                std::fs::File::from_raw_fd(fds[1]),
            )
        })
    };
    let (Some((out_r, out_w)), Some((err_r, err_w)), Some((in_r, _in_w))) =
        (pipe(), pipe(), pipe())
    else {
        return;
    };
    let spec = crate::container::ContainerConfig::new("/r", vec!["true".into()]).spec();
    let (Ok(stdout), Ok(stderr)) = (
        crate::container::stream::HostOut::open(out_w.as_raw_fd(), "stdout"),
        crate::container::stream::HostOut::open(err_w.as_raw_fd(), "stderr"),
    ) else {
        return;
    };
    let Ok((mut backend, handle)) = crate::container::stream::StreamBackend::with(
        Some(spec),
        crate::container::stream::Start::AtReady,
        crate::stdin::Stdin::open(in_r.as_raw_fd()),
        stdout,
        stderr,
    ) else {
        return;
    };
    let drain = |f: &std::fs::File| {
        let mut buf = [0u8; 65536];
        // SAFETY: buf is valid for its length.
        while unsafe { libc::read(f.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
    };
    for c in chunks {
        let mut rest: &[u8] = c;
        for _ in 0..64 {
            if rest.is_empty() {
                break;
            }
            let n = backend.take_from_guest(rest);
            assert!(n <= rest.len(), "took more than given");
            rest = &rest[n..];
            drain(&out_r);
            drain(&err_r);
            backend.ready(-1);
        }
        let out = backend.to_guest(4096);
        assert!(out.len() <= 4096);
    }
    let _ = handle.end();
}

/// The 9P file server's request patcher on arbitrary bytes: it never
/// changes a request's length or panics.
pub fn p9_request(bytes: &[u8]) {
    let mut m = bytes.to_vec();
    crate::container::file_server::harden(&mut m);
    assert_eq!(m.len(), bytes.len());
}
