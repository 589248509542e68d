//! virtio-blk queue processing over hostile descriptors and rings.
#![no_main]

mod common;

use std::sync::Arc;

use arbitrary::Unstructured;
use ember_devices::virtio::block::Block;
use ember_devices::virtio::{Activation, Interrupt, VirtioDevice};
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let mem = common::memory();
    let Ok(queue) = common::hostile_queue(&mem, 0x8000, &mut u) else {
        return;
    };
    if common::fill(&mem, &mut u).is_err() {
        return;
    }
    let read_only = u.arbitrary().unwrap_or(false);
    let mut dev = Block::new(common::disk(), read_only, "fuzz").unwrap();
    dev.activate(Activation {
        mem: mem.clone(),
        queues: vec![queue],
        queue_events: vec![EventFd::new(EFD_NONBLOCK).unwrap()],
        interrupt: Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap())),
        acked_features: u.arbitrary().unwrap_or(0),
    })
    .unwrap();
    for _ in 0..u.int_in_range(1..=4).unwrap_or(1) {
        dev.process_queue(0);
    }
    dev.shutdown();
});
