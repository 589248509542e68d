//! virtio-net TX and RX over hostile descriptors and rings, with frames of
//! any size arriving from the backend.
#![no_main]

mod common;

use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use arbitrary::Unstructured;
use ember_devices::virtio::net::Net;
use ember_devices::virtio::tap::SocketFrames;
use ember_devices::virtio::{Activation, Interrupt, VirtioDevice};
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let mem = common::memory();
    let (Ok(rx), Ok(tx)) = (
        common::hostile_queue(&mem, 0x8000, &mut u),
        common::hostile_queue(&mem, 0xa000, &mut u),
    ) else {
        return;
    };
    if common::fill(&mem, &mut u).is_err() {
        return;
    }
    let (ours, theirs) = UnixDatagram::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    theirs.set_nonblocking(true).unwrap();
    for _ in 0..u.int_in_range(0..=4).unwrap_or(0) {
        let len = u.int_in_range(0..=2000).unwrap_or(0);
        let frame = u.bytes(len).unwrap_or(&[]);
        let _ = theirs.send(frame);
    }
    let mut dev = Net::new([2, 0, 0, 0, 0, 1], Box::new(SocketFrames(ours)));
    dev.activate(Activation {
        mem: mem.clone(),
        queues: vec![rx, tx],
        queue_events: vec![
            EventFd::new(EFD_NONBLOCK).unwrap(),
            EventFd::new(EFD_NONBLOCK).unwrap(),
        ],
        interrupt: Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap())),
        acked_features: u.arbitrary().unwrap_or(0),
    })
    .unwrap();
    for _ in 0..u.int_in_range(1..=6).unwrap_or(1) {
        match u.int_in_range(0..=2).unwrap_or(0) {
            0 => dev.process_queue(0),
            1 => dev.process_queue(1),
            _ => {
                if dev.backend_wanted() {
                    dev.process_backend();
                }
            }
        }
    }
});
