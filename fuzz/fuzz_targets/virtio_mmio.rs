//! virtio-mmio register sequences: any offset, width and value, in any
//! order, against a transport with a virtio-blk device (and its queue
//! served whenever the driver got it running).
#![no_main]

mod common;

use arbitrary::{Arbitrary, Unstructured};
use ember_devices::bus::BusDevice;
use ember_devices::virtio::block::Block;
use ember_devices::virtio::mmio::MmioTransport;
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[derive(Arbitrary, Debug)]
enum Op {
    Read {
        offset: u16,
        width: u8,
    },
    Write {
        offset: u16,
        width: u8,
        value: u32,
    },
    /// A write to a register the bring-up uses, so sequences get far.
    Known {
        register: u8,
        value: u32,
    },
    Notify,
}

const KNOWN: [u16; 14] = [
    0x014, 0x020, 0x024, 0x030, 0x038, 0x044, 0x050, 0x064, 0x070, 0x080, 0x084, 0x090, 0x0a0,
    0x0a4,
];

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let mem = common::memory();
    if common::fill(&mem, &mut u).is_err() {
        return;
    }
    let dev = Block::new(common::disk(), false, "fuzz").unwrap();
    let mut t =
        MmioTransport::new(Box::new(dev), mem, EventFd::new(EFD_NONBLOCK).unwrap()).unwrap();
    let Ok(ops) = Vec::<Op>::arbitrary(&mut u) else {
        return;
    };
    for op in ops.into_iter().take(256) {
        match op {
            Op::Read { offset, width } => {
                let mut buf = vec![0u8; usize::from(width % 9)];
                t.read(u64::from(offset), &mut buf);
            }
            Op::Write {
                offset,
                width,
                value,
            } => {
                let n = usize::from(width % 9).min(4);
                t.write(u64::from(offset), &value.to_le_bytes()[..n]);
            }
            Op::Known { register, value } => {
                let offset = KNOWN[usize::from(register) % KNOWN.len()];
                t.write(u64::from(offset), &value.to_le_bytes());
            }
            Op::Notify => t.process_queue(0),
        }
    }
    t.shutdown();
});
