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
