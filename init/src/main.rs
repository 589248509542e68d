//! `ember-init`: PID 1 of an Ember container guest.
//!
//! Mounts the kernel's file systems and the 9P root (or an overlay over
//! it) and volumes, switches root, starts CMD as its child with the spec's
//! arguments, environment and working directory, and relays CMD's stdin,
//! stdout and stderr over the `ember.stream` virtio-console port (see
//! `ember-guest-proto`). Stays PID 1, reaping orphans. When CMD ends it
//! kills what is left, drains the output, reports the status, waits for
//! the host to say it is written out, syncs and powers off.

mod mounts;
mod relay;
mod spawn;

use std::fs::File;
use std::io::Write;

use ember_guest_proto::{encode, FromGuest, Spec, MAX_SPEC, SPEC_PATH};

fn main() {
    if std::process::id() != 1 {
        eprintln!("ember-init: runs only as PID 1 of an Ember container guest");
        std::process::exit(2);
    }
    let port = relay::open_port();
    let failure = match (&port, read_spec()) {
        (Ok(port), Ok(spec)) => run(port, &spec).err(),
        (Err(e), _) => Some(e.clone()),
        (_, Err(e)) => Some(e),
    };
    if let Some(why) = failure {
        // Where the stream is not there, the console (and the host's
        // --console-log) is the only place left to say it.
        let _ = writeln!(std::io::stderr(), "ember-init: {why}");
        if let Ok(Ok(mut p)) = port.as_ref().map(|p| p.try_clone()) {
            let _ = p.write_all(&encode(&FromGuest::Failed(why)));
            relay::wait_done(&mut p);
        }
    }
    power_off();
}

fn read_spec() -> Result<Spec, String> {
    let bytes = std::fs::read(SPEC_PATH).map_err(|e| format!("cannot read {SPEC_PATH}: {e}"))?;
    if bytes.len() > MAX_SPEC {
        return Err(format!("{SPEC_PATH} is over {MAX_SPEC} bytes"));
    }
    postcard::from_bytes(&bytes).map_err(|e| format!("{SPEC_PATH} is no spec: {e}"))
}

fn run(port: &File, spec: &Spec) -> Result<(), String> {
    mounts::prepare_root(spec)?;
    let sigchld = relay::child_signals()?;
    let child = spawn::start(spec)?;
    let status = relay::relay(port, child, sigchld)?;
    let mut p = port.try_clone().map_err(|e| format!("port: {e}"))?;
    p.write_all(&encode(&FromGuest::Exited(status)))
        .map_err(|e| format!("cannot report the exit status: {e}"))?;
    relay::wait_done(&mut p);
    Ok(())
}

fn power_off() -> ! {
    // SAFETY: sync and reboot take no pointers.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    // reboot only returns on failure; PID 1 must not exit (that panics
    // the kernel, which Ember reports as a crash).
    loop {
        // SAFETY: pause takes no arguments.
        unsafe { libc::pause() };
    }
}

/// `Err(errno text)` when a libc call returned -1.
pub(crate) fn check(what: &str, r: libc::c_int) -> Result<libc::c_int, String> {
    if r == -1 {
        Err(format!("{what}: {}", std::io::Error::last_os_error()))
    } else {
        Ok(r)
    }
}

/// A C string from bytes (the spec's bytes never hold NUL: Ember checks).
pub(crate) fn cstr(bytes: &[u8]) -> Result<std::ffi::CString, String> {
    std::ffi::CString::new(bytes.to_vec()).map_err(|_| "a NUL byte in the spec".to_string())
}
