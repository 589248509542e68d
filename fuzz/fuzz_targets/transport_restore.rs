//! A saved virtio-mmio transport (any decoded state) restored onto a fresh
//! transport: refused or restored, never a device on unchecked rings.
#![no_main]

mod common;

use ember_devices::virtio::block::Block;
use ember_devices::virtio::mmio::{MmioTransport, TransportSnapshot};
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

fuzz_target!(|data: &[u8]| {
    let Ok(saved) = postcard::from_bytes::<TransportSnapshot>(data) else {
        return;
    };
    let mem = common::memory();
    let dev = Block::new(common::disk(), false, "fuzz").unwrap();
    let mut t =
        MmioTransport::new(Box::new(dev), mem, EventFd::new(EFD_NONBLOCK).unwrap()).unwrap();
    if t.restore(&saved).is_ok() {
        t.process_queue(0);
    }
});
