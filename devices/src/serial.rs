//! The 8250/16550A UART (COM1), built on vm-superio. Output goes to any
//! `Write`; input is pushed in by the VMM's event loop, at most the 64-byte
//! FIFO at a time, so the guest's input never grows host memory.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use vm_superio::serial::{SerialEvents, SerialState};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// Raises the UART's interrupt line: an irqfd registered with KVM.
pub struct IrqLine(EventFd);

impl IrqLine {
    pub fn new(fd: EventFd) -> Self {
        Self(fd)
    }
}

impl Trigger for IrqLine {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// What the UART tells the VMM: the receive FIFO drained or left loopback
/// mode (room for more input), and counts of lost output.
pub struct SerialSignals {
    rx_drained: EventFd,
    tx_lost: AtomicU64,
}

impl SerialEvents for SerialSignals {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {
        self.tx_lost.fetch_add(1, Ordering::Relaxed);
    }
    fn in_buffer_empty(&self) {
        if let Err(e) = self.rx_drained.write(1) {
            log::warn!("serial: cannot signal drained receive FIFO: {e}");
        }
    }
}

/// Modem control register offset and its loopback bit.
const MCR: u64 = 4;
const MCR_LOOP: u8 = 0x10;

/// COM1 as a bus device: offsets 0..8 are the 8250 registers.
pub struct SerialDevice<W: Write + Send> {
    uart: Serial<IrqLine, Arc<SerialSignals>, W>,
    signals: Arc<SerialSignals>,
    bad_width_logged: bool,
}

/// The UART's registers and receive FIFO, as a snapshot keeps them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialSnapshot {
    pub divisor: [u8; 2],
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    /// Received bytes the guest has not read yet (at most the FIFO size).
    pub rx_fifo: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum SerialStateError {
    #[error("the saved receive FIFO holds {0} bytes, more than the UART's FIFO")]
    FifoTooLong(usize),
    #[error("cannot raise the restored UART's pending interrupt")]
    Interrupt(#[source] std::io::Error),
}

impl<W: Write + Send> SerialDevice<W> {
    /// `irq` is raised for guest interrupts; `rx_drained` is written each
    /// time the guest empties the receive FIFO.
    pub fn new(irq: EventFd, rx_drained: EventFd, out: W) -> Self {
        let signals = Self::signals(rx_drained);
        Self {
            uart: Serial::with_events(IrqLine::new(irq), signals.clone(), out),
            signals,
            bad_width_logged: false,
        }
    }

    fn signals(rx_drained: EventFd) -> Arc<SerialSignals> {
        Arc::new(SerialSignals {
            rx_drained,
            tx_lost: AtomicU64::new(0),
        })
    }

    /// A UART in the state a snapshot saved (its pending interrupt, if
    /// any, raised again).
    pub fn from_snapshot(
        irq: EventFd,
        rx_drained: EventFd,
        out: W,
        saved: &SerialSnapshot,
    ) -> Result<Self, SerialStateError> {
        let signals = Self::signals(rx_drained);
        let state = SerialState {
            baud_divisor_low: saved.divisor[0],
            baud_divisor_high: saved.divisor[1],
            interrupt_enable: saved.interrupt_enable,
            interrupt_identification: saved.interrupt_identification,
            line_control: saved.line_control,
            line_status: saved.line_status,
            modem_control: saved.modem_control,
            modem_status: saved.modem_status,
            scratch: saved.scratch,
            in_buffer: saved.rx_fifo.clone(),
        };
        let uart = Serial::from_state(&state, IrqLine::new(irq), signals.clone(), out).map_err(
            |e| match e {
                vm_superio::serial::Error::Trigger(e) => SerialStateError::Interrupt(e),
                _ => SerialStateError::FifoTooLong(saved.rx_fifo.len()),
            },
        )?;
        Ok(Self {
            uart,
            signals,
            bad_width_logged: false,
        })
    }

    /// The registers and FIFO, for a snapshot.
    pub fn snapshot(&self) -> SerialSnapshot {
        let s = self.uart.state();
        SerialSnapshot {
            divisor: [s.baud_divisor_low, s.baud_divisor_high],
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            rx_fifo: s.in_buffer,
        }
    }

    /// Free room in the receive FIFO.
    pub fn rx_space(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Moves as much of `input` into the receive FIFO as fits; returns how
    /// many bytes were taken (0 when the FIFO is full).
    pub fn push_input(&mut self, input: &[u8]) -> usize {
        if input.is_empty() || self.rx_space() == 0 {
            return 0;
        }
        match self.uart.enqueue_raw_bytes(input) {
            Ok(n) => n,
            Err(e) => {
                log::warn!("serial: cannot queue input: {e}");
                0
            }
        }
    }

    /// Output bytes the writer refused (closed or full output).
    pub fn tx_lost(&self) -> u64 {
        self.signals.tx_lost.load(Ordering::Relaxed)
    }

    pub fn writer(&self) -> &W {
        self.uart.writer()
    }

    fn width_ok(&mut self, len: usize) -> bool {
        if len == 1 {
            return true;
        }
        if !self.bad_width_logged {
            log::warn!("serial: ignoring {len}-byte access (the 8250 has 1-byte registers)");
            self.bad_width_logged = true;
        }
        false
    }
}

impl<W: Write + Send> BusDevice for SerialDevice<W> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if !self.width_ok(data.len()) || offset > 7 {
            return;
        }
        data[0] = self.uart.read(offset as u8);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if !self.width_ok(data.len()) || offset > 7 {
            return;
        }
        let was_loopback = offset == MCR && self.uart.read(MCR as u8) & MCR_LOOP != 0;
        // An output error is already counted through tx_lost_byte; the
        // guest must never stall on a slow or closed console.
        if let Err(e) = self.uart.write(offset as u8, data[0]) {
            log::debug!("serial: write to register {offset}: {e}");
        }
        // The FIFO refuses host input in loopback mode; leaving it means
        // input is wanted again, even though the FIFO did not drain.
        if was_loopback && self.uart.read(MCR as u8) & MCR_LOOP == 0 {
            self.signals.in_buffer_empty();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    const DATA: u64 = 0;
    const IER: u64 = 1;
    const LCR: u64 = 3;
    const LSR: u64 = 5;

    fn device<W: Write + Send>(out: W) -> (SerialDevice<W>, EventFd, EventFd) {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let drained = EventFd::new(EFD_NONBLOCK).unwrap();
        let dev = SerialDevice::new(irq.try_clone().unwrap(), drained.try_clone().unwrap(), out);
        (dev, irq, drained)
    }

    fn read(dev: &mut SerialDevice<impl Write + Send>, offset: u64) -> u8 {
        let mut b = [0u8];
        dev.read(offset, &mut b);
        b[0]
    }

    #[test]
    fn registers_and_fifo_round_trip_through_a_snapshot() {
        let (mut dev, _, _) = device(io::sink());
        dev.write(LCR, &[0x83]); // DLAB on: the divisor registers
        dev.write(DATA, &[0x0c]);
        dev.write(IER, &[0x00]);
        dev.write(LCR, &[0x03]);
        dev.write(IER, &[1]);
        dev.write(7, &[0x5a]); // scratch
        assert_eq!(dev.push_input(b"xyz"), 3);
        let saved = dev.snapshot();
        assert_eq!(saved.divisor, [0x0c, 0]);
        assert_eq!(saved.rx_fifo, b"xyz");
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let drained = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut back =
            SerialDevice::from_snapshot(irq.try_clone().unwrap(), drained, io::sink(), &saved)
                .unwrap();
        assert_eq!(back.snapshot(), saved);
        assert_eq!(
            irq.read().unwrap(),
            1,
            "pending receive interrupt raised again"
        );
        assert_eq!(read(&mut back, 7), 0x5a);
        assert_eq!(read(&mut back, DATA), b'x');
        let mut too_long = saved.clone();
        too_long.rx_fifo = vec![0; 65];
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let drained = EventFd::new(EFD_NONBLOCK).unwrap();
        assert!(matches!(
            SerialDevice::from_snapshot(irq, drained, io::sink(), &too_long),
            Err(SerialStateError::FifoTooLong(65))
        ));
    }

    #[test]
    fn guest_output_reaches_the_writer() {
        let (mut dev, _, _) = device(Vec::new());
        for b in b"hi\n" {
            dev.write(DATA, &[*b]);
        }
        assert_eq!(dev.writer().as_slice(), b"hi\n");
    }

    #[test]
    fn input_is_bounded_by_the_fifo_and_signals_when_drained() {
        let (mut dev, irq, drained) = device(io::sink());
        dev.write(IER, &[1]); // receive-data interrupt on
        let big = vec![b'a'; 1000];
        assert_eq!(dev.push_input(&big), 64);
        assert_eq!(dev.push_input(&big), 0);
        assert_eq!(irq.read().unwrap(), 1);
        assert_eq!(read(&mut dev, LSR) & 1, 1, "data ready");
        for _ in 0..64 {
            assert_eq!(read(&mut dev, DATA), b'a');
        }
        assert_eq!(read(&mut dev, LSR) & 1, 0, "FIFO empty");
        assert_eq!(drained.read().unwrap(), 1);
        assert_eq!(dev.rx_space(), 64);
    }

    #[test]
    fn loopback_refuses_input_and_leaving_it_asks_for_more() {
        let (mut dev, _, drained) = device(io::sink());
        dev.write(MCR, &[MCR_LOOP]);
        assert_eq!(dev.push_input(b"abc"), 0, "loopback takes no host input");
        assert!(drained.read().is_err());
        dev.write(MCR, &[0]);
        assert_eq!(drained.read().unwrap(), 1, "input wanted again");
        assert_eq!(dev.push_input(b"abc"), 3);
        dev.write(MCR, &[0x03]);
        assert!(drained.read().is_err(), "no loopback change, no signal");
    }

    struct Closed;
    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn closed_output_drops_and_counts() {
        let (mut dev, _, _) = device(Closed);
        dev.write(DATA, b"x");
        dev.write(DATA, b"y");
        assert_eq!(dev.tx_lost(), 2);
    }

    #[test]
    fn any_value_in_any_register_is_harmless() {
        let (mut dev, _, _) = device(io::sink());
        for offset in 0..16u64 {
            for value in [0u8, 1, 0x7f, 0x80, 0xff] {
                dev.write(offset, &[value]);
                let _ = read(&mut dev, offset);
            }
        }
        // Divisor latch set to 0 is accepted without a division.
        dev.write(LCR, &[0x80]);
        dev.write(0, &[0]);
        dev.write(1, &[0]);
        dev.write(LCR, &[0x03]);
        // Wide accesses are ignored.
        let mut wide = [0xffu8; 4];
        dev.read(DATA, &mut wide);
        assert_eq!(wide, [0xff; 4]);
        dev.write(DATA, &[1, 2]);
    }
}
