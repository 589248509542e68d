//! The 8250 UART and the i8042 under any register stream, with host input
//! and Ctrl-Alt-Del presses pushed in between.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use ember_devices::bus::BusDevice;
use ember_devices::i8042::{I8042, OUTPUT_CAPACITY};
use ember_devices::serial::{IrqLine, SerialDevice};
use ember_devices::SignalLine;
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[derive(Arbitrary, Debug)]
enum Op {
    Read { offset: u8, width: u8 },
    Write { offset: u8, value: u8, width: u8 },
    Input(Vec<u8>),
    Kbd { offset: u8, value: u8, write: bool },
    CtrlAltDel,
    Snapshot,
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let drained = EventFd::new(EFD_NONBLOCK).unwrap();
    let mut uart = SerialDevice::new(irq, drained, std::io::sink());
    let kbd_irq = || IrqLine::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let mut kbd = I8042::new(SignalLine::new(|| {}), kbd_irq());
    let Ok(ops) = Vec::<Op>::arbitrary(&mut u) else {
        return;
    };
    for op in ops.into_iter().take(512) {
        match op {
            Op::Read { offset, width } => {
                let mut b = vec![0u8; usize::from(width % 3)];
                uart.read(u64::from(offset % 10), &mut b);
            }
            Op::Write {
                offset,
                value,
                width,
            } => {
                let b = vec![value; usize::from(width % 3)];
                uart.write(u64::from(offset % 10), &b);
            }
            Op::Input(bytes) => {
                let taken = uart.push_input(&bytes);
                assert!(taken <= bytes.len());
            }
            Op::Kbd {
                offset,
                value,
                write,
            } => {
                let mut b = [value];
                if write {
                    kbd.write(u64::from(offset % 6), &b);
                } else {
                    kbd.read(u64::from(offset % 6), &mut b);
                }
            }
            Op::CtrlAltDel => {
                let _ = kbd.press_ctrl_alt_del();
                assert!(kbd.state().output.len() <= OUTPUT_CAPACITY);
            }
            Op::Snapshot => {
                let saved = kbd.state();
                let back = I8042::from_state(SignalLine::new(|| {}), kbd_irq(), &saved).unwrap();
                assert_eq!(back.state(), saved);
                let saved = uart.snapshot();
                let irq = EventFd::new(EFD_NONBLOCK).unwrap();
                let drained = EventFd::new(EFD_NONBLOCK).unwrap();
                let back =
                    SerialDevice::from_snapshot(irq, drained, std::io::sink(), &saved).unwrap();
                assert_eq!(back.snapshot(), saved);
            }
        }
    }
});
