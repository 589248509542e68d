//! A network namespace with a TAP, for tests that must not touch the host's
//! own network.

use std::os::fd::AsRawFd;
use std::process::Command;

pub const HOST_IP: &str = "10.0.2.1";
pub const TAP: &str = "embtap0";

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (install iproute2)");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace with a TAP at HOST_IP, deleted on drop.
pub struct Netns(String);

impl Netns {
    pub fn new(tag: &str) -> Self {
        super::require_root();
        let name = format!("ember-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let ns = Netns(name);
        ns.exec(&["link", "set", "lo", "up"]);
        ns.exec(&["tuntap", "add", "dev", TAP, "mode", "tap", "vnet_hdr"]);
        ns.exec(&["addr", "add", &format!("{HOST_IP}/24"), "dev", TAP]);
        ns.exec(&["link", "set", TAP, "up"]);
        ns
    }

    pub fn exec(&self, args: &[&str]) {
        let mut full = vec!["netns", "exec", &self.0, "ip"];
        full.extend(args);
        ip(&full);
    }

    /// Moves the calling thread into the namespace (sockets and the TAP
    /// that this thread opens from now on live there).
    pub fn enter(&self) {
        let f = std::fs::File::open(format!("/run/netns/{}", self.0)).unwrap();
        // SAFETY: setns on a valid namespace descriptor; affects this thread.
        assert_eq!(
            unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) },
            0,
            "setns"
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}
