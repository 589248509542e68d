//! virtio-console with one named port (VIRTIO_CONSOLE_F_MULTIPORT,
//! max_nr_ports 1): a byte stream each way between the guest's
//! `/dev/vportNp0` and a host [`PortBackend`].
//!
//! Queues: 0 port receive (host → guest), 1 port transmit, 2 control
//! receive, 3 control transmit. The control handshake: the driver says
//! DEVICE_READY, the device adds port 0, the driver says PORT_READY, the
//! device names it and opens its host end. From then on the port carries
//! bytes; the host end is never closed (the backend's own protocol says
//! where input ends).
//!
//! Backpressure both ways: a transmit chain is taken only once the
//! backend took all of the previous one (one chain of at most
//! [`MAX_TX_CHAIN`] bytes is ever held); host bytes are asked for only
//! when the guest has posted a receive buffer.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use super::iov::chain_iovecs;
use super::{
    pop_chain, read_config_bytes, ActivateError, Activation, HostWatch, Interrupt, Popped,
    VirtioDevice, INT_VRING, VIRTIO_F_VERSION_1,
};
use crate::ratelimit::LogLimiter;

/// Virtio device ID of a console.
pub const CONSOLE_DEVICE_ID: u32 = 3;
/// VIRTIO_CONSOLE_F_MULTIPORT.
pub const F_MULTIPORT: u64 = 1 << 1;
const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;
const CTRL_RX: usize = 2;
const CTRL_TX: usize = 3;
/// Largest transmit chain taken (Linux sends at most 32 KiB per write).
pub const MAX_TX_CHAIN: usize = 256 * 1024;
/// Longest descriptor chain looked at.
const MAX_CHAIN_DESCS: usize = 64;
/// Control messages: struct virtio_console_control, little-endian.
const CONTROL_LEN: usize = 8;
const DEVICE_READY: u16 = 0;
const PORT_ADD: u16 = 1;
const PORT_READY: u16 = 3;
const PORT_OPEN: u16 = 6;
const PORT_NAME: u16 = 7;

/// The host end of the port.
pub trait PortBackend: Send {
    /// Bytes the guest wrote. Returns how many were taken; fewer than all
    /// means "full for now": the rest is offered again after one of
    /// `watches` fires.
    fn take_from_guest(&mut self, bytes: &[u8]) -> usize;
    /// Up to `max` bytes for the guest (empty: none now).
    fn to_guest(&mut self, max: usize) -> Vec<u8>;
    /// Host descriptors to watch now; `guest_has_room`: the guest has a
    /// receive buffer posted.
    fn watches(&self, guest_has_room: bool) -> Vec<HostWatch>;
    /// A watched descriptor is ready.
    fn ready(&mut self, fd: RawFd);
    /// The VM is ending.
    fn shutdown(&mut self) {}
}

/// What a snapshot keeps of an active console beyond its queues.
#[derive(serde::Serialize, serde::Deserialize)]
struct Saved {
    guest_open: bool,
    control_out: Vec<Vec<u8>>,
    held: Option<(Vec<u8>, usize)>,
}

/// Most control messages waiting for the guest's buffers (live, and in
/// a restored console's state).
const MAX_SAVED_CONTROL: usize = 64;

struct Active {
    mem: GuestMemoryMmap,
    queues: [Queue; 4],
    interrupt: Arc<Interrupt>,
    /// Control messages waiting for a control receive buffer.
    control_out: VecDeque<Vec<u8>>,
    /// A transmit chain's bytes the backend has not taken yet, from `.1`.
    held: Option<(Vec<u8>, usize)>,
    /// The guest has a receive buffer posted (as last seen).
    rx_room: bool,
    /// The guest has its end open: Linux discards what a port receives
    /// while nobody in the guest has it open, so nothing is sent before.
    guest_open: bool,
    /// The driver broke a queue: nothing more until a reset.
    broken: bool,
}

enum State {
    Inactive,
    Active(Box<Active>),
}

/// The active state, the backend, the log and the port's name.
type Parts<'a> = (
    &'a mut Active,
    &'a mut dyn PortBackend,
    &'a mut LogLimiter,
    &'a str,
);

pub struct Console {
    name: String,
    backend: Box<dyn PortBackend>,
    state: State,
    log: LogLimiter,
}

fn control(id: u32, event: u16, value: u16) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTROL_LEN);
    m.extend_from_slice(&id.to_le_bytes());
    m.extend_from_slice(&event.to_le_bytes());
    m.extend_from_slice(&value.to_le_bytes());
    m
}

impl Console {
    /// A console whose port 0 is named `name` (the guest's sysfs `name`).
    pub fn new(name: &str, backend: Box<dyn PortBackend>) -> Self {
        Self {
            name: name.to_string(),
            backend,
            state: State::Inactive,
            log: LogLimiter::new(),
        }
    }

    /// The active state, the backend and the log, borrowed apart.
    fn parts(&mut self) -> Option<Parts<'_>> {
        match &mut self.state {
            State::Active(a) if !a.broken => {
                Some((a, self.backend.as_mut(), &mut self.log, &self.name))
            }
            _ => None,
        }
    }

    /// Pops the next chain of queue `q`; None when empty or broken.
    fn pop(
        a: &mut Active,
        log: &mut LogLimiter,
        q: usize,
    ) -> Option<(u16, Vec<virtio_queue::desc::split::Descriptor>)> {
        match pop_chain(&mut a.queues[q], &a.mem, MAX_CHAIN_DESCS) {
            Ok(Some(Popped::Chain { head, descs })) => Some((head, descs)),
            Ok(Some(Popped::Bad { head, why })) => {
                log.warn(
                    "console-bad-chain",
                    format_args!("virtio-console: refusing chain {head} of queue {q}: {why}"),
                );
                Some((head, Vec::new()))
            }
            Ok(None) => None,
            Err(e) => {
                log.warn(
                    "console-broken",
                    format_args!("virtio-console: queue {q} broken by the driver ({e})"),
                );
                a.broken = true;
                None
            }
        }
    }

    fn used(a: &mut Active, q: usize, head: u16, len: u32) -> bool {
        if a.queues[q].add_used(&a.mem, head, len).is_err() {
            a.broken = true;
            return false;
        }
        true
    }

    /// Guest → device control messages, then what the device has to say.
    fn process_control_tx(&mut self) {
        let Some((a, _, log, name)) = self.parts() else {
            return;
        };
        let mut returned = false;
        for _ in 0..QUEUE_SIZE {
            let Some((head, descs)) = Self::pop(a, log, CTRL_TX) else {
                break;
            };
            // Only the 8-byte header is read: the guest says nothing else
            // to a device (and a chain may claim gigabytes).
            let msg = chain_iovecs(&a.mem, &descs, false)
                .filter(|b| b.capacity() >= CONTROL_LEN)
                .map(|b| b.copy_out_prefix(CONTROL_LEN));
            if msg.is_none() {
                log.warn(
                    "console-control-short",
                    format_args!("virtio-console: ignoring a control chain of less than {CONTROL_LEN} device-readable bytes"),
                );
            }
            // Answers wait in a bounded queue: a driver repeating itself
            // without posting buffers cannot grow it.
            let room = a.control_out.len() + 3 <= MAX_SAVED_CONTROL;
            if let Some(m) = msg.filter(|_| room) {
                let id = u32::from_le_bytes([m[0], m[1], m[2], m[3]]);
                let event = u16::from_le_bytes([m[4], m[5]]);
                let value = u16::from_le_bytes([m[6], m[7]]);
                match (id, event, value) {
                    // Linux sends it with VIRTIO_CONSOLE_BAD_ID (u32::MAX).
                    (_, DEVICE_READY, 1) => a.control_out.push_back(control(0, PORT_ADD, 0)),
                    (0, PORT_READY, 1) => {
                        let mut named = control(0, PORT_NAME, 1);
                        named.extend_from_slice(name.as_bytes());
                        a.control_out.push_back(named);
                        a.control_out.push_back(control(0, PORT_OPEN, 1));
                    }
                    (0, PORT_OPEN, open) => {
                        if a.guest_open && open == 0 {
                            // Linux drops what the port held unread.
                            log.warn(
                                "console-closed",
                                format_args!("virtio-console: the guest closed port {name}"),
                            );
                        }
                        a.guest_open = open == 1;
                    }
                    _ => log.warn(
                        "console-control",
                        format_args!(
                            "virtio-console: ignoring control message {event} ({value}) for port {id}"
                        ),
                    ),
                }
            }
            if !Self::used(a, CTRL_TX, head, 0) {
                return;
            }
            returned = true;
        }
        if returned {
            a.interrupt.raise(INT_VRING);
        }
        self.process_control_rx();
        // The guest may just have opened its end.
        self.process_rx();
    }

    /// Queued control messages into the guest's control buffers.
    fn process_control_rx(&mut self) {
        let Some((a, _, log, _)) = self.parts() else {
            return;
        };
        let mut returned = false;
        for _ in 0..QUEUE_SIZE {
            let Some(msg) = a.control_out.front().cloned() else {
                break;
            };
            let Some((head, descs)) = Self::pop(a, log, CTRL_RX) else {
                break;
            };
            let written = match chain_iovecs(&a.mem, &descs, true) {
                Some(b) if b.capacity() >= msg.len() => b.copy_in(&msg),
                // Too small or not writable: returned empty, the message
                // waits for the next buffer.
                _ => 0,
            };
            if written > 0 {
                a.control_out.pop_front();
            }
            if !Self::used(a, CTRL_RX, head, written as u32) {
                return;
            }
            returned = true;
        }
        if returned {
            a.interrupt.raise(INT_VRING);
        }
    }

    /// Guest → host bytes, as far as the backend takes them.
    fn process_tx(&mut self) {
        let Some((a, backend, log, _)) = self.parts() else {
            return;
        };
        let mut returned = false;
        for _ in 0..QUEUE_SIZE {
            if let Some((bytes, at)) = &mut a.held {
                *at += backend.take_from_guest(&bytes[*at..]);
                if *at < bytes.len() {
                    break;
                }
                a.held = None;
            }
            let Some((head, descs)) = Self::pop(a, log, TX) else {
                break;
            };
            let bytes = match chain_iovecs(&a.mem, &descs, false) {
                Some(b) if b.capacity() <= MAX_TX_CHAIN => b.copy_out(),
                _ => {
                    log.warn(
                        "console-tx-chain",
                        format_args!(
                            "virtio-console: refusing transmit chain {head} (not device-readable, or over {MAX_TX_CHAIN} bytes)"
                        ),
                    );
                    Vec::new()
                }
            };
            if !Self::used(a, TX, head, 0) {
                return;
            }
            returned = true;
            if !bytes.is_empty() {
                a.held = Some((bytes, 0));
            }
        }
        if returned {
            a.interrupt.raise(INT_VRING);
        }
    }

    /// Host → guest bytes, while the guest has buffers and the backend
    /// has bytes.
    fn process_rx(&mut self) {
        let Some((a, backend, log, _)) = self.parts().filter(|(a, ..)| a.guest_open) else {
            return;
        };
        let mut returned = false;
        a.rx_room = true;
        for _ in 0..QUEUE_SIZE {
            let Some((head, descs)) = Self::pop(a, log, RX) else {
                a.rx_room = false;
                break;
            };
            let Some(bufs) = chain_iovecs(&a.mem, &descs, true).filter(|b| b.capacity() > 0) else {
                if !Self::used(a, RX, head, 0) {
                    return;
                }
                returned = true;
                continue;
            };
            let bytes = backend.to_guest(bufs.capacity());
            if bytes.is_empty() {
                drop(bufs);
                a.queues[RX].go_to_previous_position();
                break;
            }
            let n = bufs.copy_in(&bytes);
            drop(bufs);
            if !Self::used(a, RX, head, n as u32) {
                return;
            }
            returned = true;
        }
        if returned {
            a.interrupt.raise(INT_VRING);
        }
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        CONSOLE_DEVICE_ID
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 4]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | F_MULTIPORT
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_console_config: cols, rows, max_nr_ports, emerg_wr.
        let mut config = [0u8; 12];
        config[4..8].copy_from_slice(&1u32.to_le_bytes());
        read_config_bytes(&config, offset, data);
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        let Ok(queues) = <[Queue; 4]>::try_from(a.queues) else {
            return Err(ActivateError::MissingQueues {
                device: "virtio-console",
                needed: 4,
            });
        };
        self.state = State::Active(Box::new(Active {
            mem: a.mem,
            queues,
            interrupt: a.interrupt,
            control_out: VecDeque::new(),
            held: None,
            rx_room: false,
            guest_open: false,
            broken: false,
        }));
        Ok(())
    }

    fn reset(&mut self) {
        self.state = State::Inactive;
    }

    fn queue_states(&self) -> Vec<virtio_queue::QueueState> {
        match &self.state {
            State::Active(a) => a.queues.iter().map(|q| q.state()).collect(),
            State::Inactive => Vec::new(),
        }
    }

    fn process_queue(&mut self, index: usize) {
        match index {
            RX => self.process_rx(),
            TX => {
                self.process_tx();
                // What the guest said may have an answer (the end of a
                // stream is acknowledged).
                self.process_rx();
            }
            CTRL_RX => self.process_control_rx(),
            CTRL_TX => self.process_control_tx(),
            _ => {}
        }
    }

    fn host_watches(&self) -> Vec<HostWatch> {
        match &self.state {
            State::Active(a) if !a.broken => self.backend.watches(a.rx_room && a.guest_open),
            _ => Vec::new(),
        }
    }

    fn host_ready(&mut self, fd: RawFd) {
        self.backend.ready(fd);
        if self.parts().is_some() {
            self.process_tx();
            self.process_rx();
        }
    }

    fn shutdown(&mut self) {
        self.backend.shutdown();
    }

    fn saved_state(&self) -> Vec<u8> {
        let State::Active(a) = &self.state else {
            return Vec::new();
        };
        let saved = Saved {
            guest_open: a.guest_open,
            control_out: a.control_out.iter().cloned().collect(),
            held: a.held.clone(),
        };
        postcard::to_stdvec(&saved).unwrap_or_default()
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), String> {
        let State::Active(a) = &mut self.state else {
            return Err("state for a console that is not running".into());
        };
        let saved: Saved = postcard::from_bytes(state).map_err(|e| e.to_string())?;
        let held_ok = saved
            .held
            .as_ref()
            .is_none_or(|(b, at)| b.len() <= MAX_TX_CHAIN && *at < b.len());
        let control_ok = saved.control_out.len() <= MAX_SAVED_CONTROL
            && saved
                .control_out
                .iter()
                .all(|m| m.len() >= CONTROL_LEN && m.len() <= 4096);
        if !held_ok || !control_ok {
            return Err("held bytes or control messages out of bounds".into());
        }
        a.guest_open = saved.guest_open;
        a.control_out = saved.control_out.into();
        a.held = saved.held;
        // Until the receive queue says otherwise.
        a.rx_room = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
