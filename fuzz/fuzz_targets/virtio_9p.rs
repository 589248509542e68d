//! virtio-9p's transport over a hostile ring: requests of any shape, and
//! replies of any size from the backend.
#![no_main]

mod common;

use std::sync::Arc;

use arbitrary::Unstructured;
use ember_devices::virtio::p9::{NineP, P9Backend};
use ember_devices::virtio::{Activation, Interrupt, VirtioDevice};
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Replies with `reply` bytes, or fails.
struct Backend {
    reply: Option<usize>,
}

impl P9Backend for Backend {
    fn request(&mut self, request: &[u8]) -> std::io::Result<Vec<u8>> {
        match self.reply {
            Some(n) => Ok(request.iter().copied().cycle().take(n).collect()),
            None => Err(std::io::Error::other("down")),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let mem = common::memory();
    let Ok(queue) = common::hostile_queue(&mem, 0x8000, &mut u) else {
        return;
    };
    if common::fill(&mem, &mut u).is_err() {
        return;
    }
    let reply = match u.ratio(1, 8).unwrap_or(false) {
        true => None,
        false => Some(u.int_in_range(0..=70_000).unwrap_or(0)),
    };
    let mut dev = NineP::new("ember-root", Box::new(Backend { reply })).unwrap();
    dev.activate(Activation {
        mem: mem.clone(),
        queues: vec![queue],
        queue_events: vec![EventFd::new(EFD_NONBLOCK).unwrap()],
        interrupt: Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap())),
        acked_features: 1,
    })
    .unwrap();
    for _ in 0..u.int_in_range(1..=3).unwrap_or(1) {
        dev.process_queue(0);
    }
    let mut config = [0u8; 40];
    dev.read_config(u.int_in_range(0..=40).unwrap_or(0), &mut config);
});
