//! virtio-console (one MULTIPORT port) over hostile rings on all four
//! queues, a backend that takes and gives bytes at random, and saved
//! states restored from the fuzzer's bytes.
#![no_main]

mod common;

use std::os::fd::RawFd;
use std::sync::Arc;

use arbitrary::Unstructured;
use ember_devices::virtio::console::{Console, PortBackend};
use ember_devices::virtio::{Activation, HostWatch, Interrupt, VirtioDevice};
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Takes up to `take` bytes per call; gives `give` bytes in all.
struct Backend {
    take: usize,
    give: usize,
}

impl PortBackend for Backend {
    fn take_from_guest(&mut self, bytes: &[u8]) -> usize {
        bytes.len().min(self.take)
    }
    fn to_guest(&mut self, max: usize) -> Vec<u8> {
        let n = max.min(self.give);
        self.give -= n;
        vec![0xa5; n]
    }
    fn watches(&self, _room: bool) -> Vec<HostWatch> {
        Vec::new()
    }
    fn ready(&mut self, _fd: RawFd) {}
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let mem = common::memory();
    let mut queues = Vec::new();
    for base in [0x8000, 0xa000, 0xc000, 0xe000] {
        match common::hostile_queue(&mem, base, &mut u) {
            Ok(q) => queues.push(q),
            Err(_) => return,
        }
    }
    if common::fill(&mem, &mut u).is_err() {
        return;
    }
    let backend = Backend {
        take: u.int_in_range(0..=4096).unwrap_or(0),
        give: u.int_in_range(0..=65536).unwrap_or(0),
    };
    let mut dev = Console::new("ember.stream", Box::new(backend));
    dev.activate(Activation {
        mem: mem.clone(),
        queues,
        queue_events: (0..4).map(|_| EventFd::new(EFD_NONBLOCK).unwrap()).collect(),
        interrupt: Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap())),
        acked_features: u.arbitrary().unwrap_or(0),
    })
    .unwrap();
    for _ in 0..u.int_in_range(1..=8).unwrap_or(1) {
        match u.int_in_range(0..=5).unwrap_or(0) {
            q @ 0..=3 => dev.process_queue(q),
            4 => dev.host_ready(-1),
            _ => {
                let len = u.int_in_range(0..=256).unwrap_or(0);
                let state = u.bytes(len).unwrap_or(&[]);
                let _ = dev.restore_state(state);
                let saved = dev.saved_state();
                dev.restore_state(&saved).expect("a console's own state restores");
            }
        }
    }
});
