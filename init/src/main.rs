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

use ember_guest_proto::{encode, FromGuest, Spec};

fn main() {
    if std::process::id() != 1 {
        eprintln!("ember-init: runs only as PID 1 of an Ember container guest");
        std::process::exit(2);
    }
    let port = relay::open_port();
    let failure = match &port {
        Ok(port) => relay::receive_spec(port)
            .and_then(|got| run(port, got))
            .err(),
        Err(e) => Some(e.clone()),
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

/// A line in the kernel's log, at KERN_INFO: on the console (and so in
/// Ember's --console-log) with the kernel's timestamp when the log level
/// shows it, for timing a run's parts.
fn note(kmsg: &mut Option<File>, what: &str) {
    if let Some(k) = kmsg {
        let _ = k.write_all(format!("<6>ember-init: {what}\n").as_bytes());
    }
}

fn run(port: &File, got: relay::Received) -> Result<(), String> {
    let spec: &Spec = &got.spec;
    let mut kmsg = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/kmsg")
        .ok();
    note(&mut kmsg, "mounting the shares");
    mounts::prepare_root(spec)?;
    let sigchld = relay::child_signals()?;
    note(&mut kmsg, "starting CMD");
    let child = spawn::start(spec)?;
    let status = relay::relay(port, child, sigchld, got)?;
    note(&mut kmsg, &format!("CMD ended ({status}), output drained"));
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
