//! The virtio-mmio register file (virtio 1.2, 4.2.2) and the device status
//! state machine. Every guest write is checked against the state it is
//! allowed in; anything else is ignored and logged, rate-limited per kind
//! (a guest can repeat a bad access millions of times a second).
//!
//! The queue addresses the driver writes are kept here, whole (LOW and HIGH
//! halves), and checked here: virtio-queue's setters log an `error!` on
//! every misaligned value and keep the old one, so they are only called
//! with values already known to be good, and `Queue::is_valid` (which logs
//! too) is replaced by [`queue_layout_ok`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{Activation, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::bus::BusDevice;
use crate::ratelimit::LogLimiter;

mod state;
pub use state::{HeldDevice, QueueSnapshot, TransportSnapshot, TransportStateError};

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4d42_4d45; // "EMBM"

mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// Offset of QueueNotify, for the VMM's ioeventfd registration.
pub const QUEUE_NOTIFY_OFFSET: u64 = reg::QUEUE_NOTIFY;

mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    pub const FAILED: u32 = 128;
}

/// Where the driver is in bringing the device up (virtio 1.2, 3.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceStatus {
    Reset,
    Acknowledged,
    DriverLoaded,
    FeaturesOk,
    Running,
    /// The driver gave up (FAILED), or DRIVER_OK was refused.
    Failed {
        needs_reset: bool,
    },
}

impl DeviceStatus {
    fn bits(self) -> u32 {
        use status::*;
        match self {
            DeviceStatus::Reset => 0,
            DeviceStatus::Acknowledged => ACKNOWLEDGE,
            DeviceStatus::DriverLoaded => ACKNOWLEDGE | DRIVER,
            DeviceStatus::FeaturesOk => ACKNOWLEDGE | DRIVER | FEATURES_OK,
            DeviceStatus::Running => ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
            DeviceStatus::Failed { needs_reset: true } => {
                ACKNOWLEDGE | DRIVER | FEATURES_OK | DEVICE_NEEDS_RESET
            }
            DeviceStatus::Failed { needs_reset: false } => FAILED,
        }
    }
}

/// Kinds of ignored guest accesses, each rate-limited on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ignored {
    Width,
    QueueRegisterOutOfState,
    FeaturesOutOfState,
    QueueSel,
    Notify,
    StatusTransition,
    ReadOnlyRegister,
    QueueValue,
    DriverOk,
}

impl Ignored {
    fn key(self) -> &'static str {
        match self {
            Ignored::Width => "width",
            Ignored::QueueRegisterOutOfState => "queue-register-state",
            Ignored::FeaturesOutOfState => "features-state",
            Ignored::QueueSel => "queue-sel",
            Ignored::Notify => "notify",
            Ignored::StatusTransition => "status",
            Ignored::ReadOnlyRegister => "read-only",
            Ignored::QueueValue => "queue-value",
            Ignored::DriverOk => "driver-ok",
        }
    }
}

/// Logs an ignored guest access, rate-limited per kind.
fn note(log: &mut LogLimiter, kind: Ignored, what: std::fmt::Arguments) {
    log.warn(kind.key(), format_args!("virtio-mmio: ignoring {what}"));
}

/// Which queue address: index into [`MmioTransport::addrs`], and the
/// alignment virtio 1.2 (2.7) requires of it.
const ADDR_DESC: usize = 0;
const ADDR_DRIVER: usize = 1;
const ADDR_DEVICE: usize = 2;
const ALIGN: [u64; 3] = [16, 2, 4];

/// Whether a ready queue of `size` entries with rings at `addrs` (already
/// known aligned) lies inside guest memory. The available ring at 0 is
/// refused too: virtio-queue takes that for "not set up" and would refuse
/// to iterate the queue later, leaving it wedged.
fn queue_layout_ok(mem: &GuestMemoryMmap, size: u16, addrs: &[u64; 3]) -> bool {
    let n = u64::from(size);
    let lens = [16 * n, 6 + 2 * n, 6 + 8 * n];
    addrs[ADDR_DRIVER] != 0
        && addrs.iter().zip(lens).all(|(&a, len)| {
            usize::try_from(len).is_ok_and(|len| mem.check_range(GuestAddress(a), len))
        })
}

/// The device model behind a transport, shared with the thread that serves
/// its queues. That thread takes only the device's lock, never the register
/// file's, so a vCPU reading InterruptStatus or acking an interrupt never
/// waits for a disk in the middle of a write or an fdatasync.
#[derive(Clone)]
pub struct QueueServer {
    device: Arc<Mutex<Box<dyn VirtioDevice>>>,
    /// DRIVER_OK accepted and no reset since: the queues may be served.
    running: Arc<AtomicBool>,
}

impl QueueServer {
    fn device(&self) -> MutexGuard<'_, Box<dyn VirtioDevice>> {
        self.device.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    /// Queue `index` was notified.
    pub fn process_queue(&self, index: usize) {
        if self.running() {
            self.device().process_queue(index);
        }
    }

    /// Whether the backend descriptor should be watched now.
    pub fn backend_wanted(&self) -> bool {
        self.running() && self.device().backend_wanted()
    }

    pub fn process_backend(&self) {
        if self.running() {
            self.device().process_backend();
        }
    }

    /// The device's backend failed for good: stop watching `backend_fd`.
    pub fn backend_failed(&self) -> bool {
        self.device().backend_failed()
    }

    /// EPOLLERR/EPOLLHUP on `backend_fd` (the event loop tells the device).
    pub fn backend_hangup(&self) {
        self.device().backend_hangup();
    }

    /// The VM is ending: the device makes the guest's writes durable.
    /// Callable in any state, more than once.
    pub fn shutdown(&self) {
        self.device().shutdown();
    }

    /// Host descriptors to watch now (none unless running).
    pub fn host_watches(&self) -> Vec<super::HostWatch> {
        match self.running() {
            true => self.device().host_watches(),
            false => Vec::new(),
        }
    }

    pub fn host_ready(&self, fd: std::os::fd::RawFd) {
        if self.running() {
            self.device().host_ready(fd);
        }
    }

    /// Locks the device: no queue work runs until the hold is dropped.
    pub fn hold(&self) -> HeldDevice<'_> {
        HeldDevice(self.device())
    }
}

pub struct MmioTransport {
    server: QueueServer,
    /// Constant for the device's life: read once, never under its lock.
    device_type: u32,
    offered_features: u64,
    backend_fd: Option<std::os::fd::RawFd>,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    queue_events: Vec<EventFd>,
    /// Per queue, per setting (size, descriptor table, driver ring, device
    /// ring): the driver's last value was refused (size 0, not a power of two
    /// or above the maximum; ring misaligned). virtio-queue keeps the old
    /// value then, so DRIVER_OK must fail instead.
    refused: Vec<[bool; 4]>,
    /// Per queue, the ring addresses as the driver wrote them (descriptor table,
    /// driver ring, device ring), both halves: a HIGH write completes the driver's LOW value,
    /// not whatever virtio-queue kept after refusing it.
    addrs: Vec<[u64; 3]>,
    status: DeviceStatus,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    log: LogLimiter,
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot create queue {index} of size {size}")]
    Queue {
        index: usize,
        size: u16,
        #[source]
        source: virtio_queue::Error,
    },
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
}

impl MmioTransport {
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        irq: EventFd,
    ) -> Result<Self, TransportError> {
        let mut queues = Vec::new();
        let mut queue_events = Vec::new();
        for (index, &size) in device.queue_max_sizes().iter().enumerate() {
            queues.push(Queue::new(size).map_err(|source| TransportError::Queue {
                index,
                size,
                source,
            })?);
            queue_events.push(EventFd::new(EFD_NONBLOCK).map_err(TransportError::EventFd)?);
        }
        Ok(Self {
            device_type: device.device_type(),
            offered_features: device.features() | VIRTIO_F_VERSION_1,
            backend_fd: device.backend_fd(),
            server: QueueServer {
                device: Arc::new(Mutex::new(device)),
                running: Arc::new(AtomicBool::new(false)),
            },
            mem,
            interrupt: Arc::new(Interrupt::new(irq)),
            refused: vec![[false; 4]; queues.len()],
            addrs: vec![[0; 3]; queues.len()],
            queues,
            queue_events,
            status: DeviceStatus::Reset,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            log: LogLimiter::new(),
        })
    }

    /// The eventfds the VMM registers as ioeventfds on QueueNotify, one per
    /// queue (datamatch = the queue index), and watches on its event loop.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    pub fn status(&self) -> DeviceStatus {
        self.status
    }

    pub fn device_type(&self) -> u32 {
        self.device_type
    }

    /// The handle the VMM serves the queues and the backend through, on
    /// whichever thread it chooses.
    pub fn queue_server(&self) -> QueueServer {
        self.server.clone()
    }

    /// The device's host descriptor to watch, while it wants it watched.
    pub fn backend_fd(&self) -> Option<std::os::fd::RawFd> {
        self.backend_fd
    }

    pub fn backend_wanted(&self) -> bool {
        self.server.backend_wanted()
    }

    pub fn process_backend(&mut self) {
        self.server.process_backend();
    }

    /// The device's backend failed for good: stop watching `backend_fd`.
    pub fn backend_failed(&self) -> bool {
        self.server.backend_failed()
    }

    /// EPOLLERR/EPOLLHUP on `backend_fd` (the event loop tells the device).
    pub fn backend_hangup(&mut self) {
        self.server.backend_hangup();
    }

    /// The VM is ending: the device makes the guest's writes durable.
    /// Callable in any state, more than once.
    pub fn shutdown(&mut self) {
        self.server.shutdown();
    }

    /// Queue `index` was notified (from the event loop).
    pub fn process_queue(&mut self, index: usize) {
        self.server.process_queue(index);
    }

    fn set_status(&mut self, status: DeviceStatus) {
        self.status = status;
        self.server
            .running
            .store(status == DeviceStatus::Running, Ordering::Release);
    }

    fn ignore(&mut self, kind: Ignored, what: std::fmt::Arguments) {
        note(&mut self.log, kind, what);
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn device_features_word(&self) -> u32 {
        let features = self.offered_features;
        match self.device_features_sel {
            0 => features as u32,
            1 => (features >> 32) as u32,
            _ => 0,
        }
    }

    fn reset(&mut self) {
        self.server.running.store(false, Ordering::Release);
        self.server.device().reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.refused.iter_mut().for_each(|r| *r = [false; 4]);
        self.addrs.iter_mut().for_each(|a| *a = [0; 3]);
        self.set_status(DeviceStatus::Reset);
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.interrupt.ack(u32::MAX);
    }

    fn features_acceptable(&self) -> bool {
        let offered = self.offered_features;
        self.driver_features & !offered == 0 && self.driver_features & VIRTIO_F_VERSION_1 != 0
    }

    /// DRIVER_OK: every ready queue must be valid (size a power of two within
    /// the maximum, rings aligned and inside guest memory), at least one ready.
    fn activate(&mut self) -> DeviceStatus {
        let any_ready = self.queues.iter().any(|q| q.ready());
        let all_valid = self
            .queues
            .iter()
            .zip(&self.refused)
            .zip(&self.addrs)
            .filter(|((q, _), _)| q.ready())
            .all(|((q, refused), addrs)| {
                !refused.contains(&true) && queue_layout_ok(&self.mem, q.size(), addrs)
            });
        if !any_ready || !all_valid {
            self.ignore(
                Ignored::DriverOk,
                format_args!("DRIVER_OK: a ready queue is invalid or none is ready"),
            );
            return DeviceStatus::Failed { needs_reset: true };
        }
        let mut queue_events = Vec::new();
        for e in &self.queue_events {
            match e.try_clone() {
                Ok(c) => queue_events.push(c),
                Err(e) => {
                    log::error!("virtio-mmio: cannot clone a queue eventfd: {e}");
                    return DeviceStatus::Failed { needs_reset: true };
                }
            }
        }
        let mut queues = Vec::with_capacity(self.queues.len());
        for q in &self.queues {
            match Queue::try_from(q.state()) {
                Ok(copy) => queues.push(copy),
                Err(e) => {
                    log::warn!("virtio-mmio: refusing DRIVER_OK: {e}");
                    return DeviceStatus::Failed { needs_reset: true };
                }
            }
        }
        let activation = Activation {
            mem: self.mem.clone(),
            queues,
            queue_events,
            interrupt: self.interrupt.clone(),
            acked_features: self.driver_features,
        };
        let activated = self.server.device().activate(activation);
        match activated {
            Ok(()) => DeviceStatus::Running,
            Err(e) => {
                self.log.error(
                    "activate",
                    format_args!("virtio-mmio: device activation failed: {e}"),
                );
                DeviceStatus::Failed { needs_reset: true }
            }
        }
    }

    fn write_status(&mut self, value: u32) {
        use status::*;
        if value == 0 {
            self.reset();
            return;
        }
        if value & FAILED != 0 {
            self.set_status(DeviceStatus::Failed { needs_reset: false });
            return;
        }
        let next = match (self.status, value) {
            (DeviceStatus::Reset, ACKNOWLEDGE) => DeviceStatus::Acknowledged,
            (DeviceStatus::Acknowledged, v) if v == ACKNOWLEDGE | DRIVER => {
                DeviceStatus::DriverLoaded
            }
            (DeviceStatus::DriverLoaded, v) if v == ACKNOWLEDGE | DRIVER | FEATURES_OK => {
                if self.features_acceptable() {
                    DeviceStatus::FeaturesOk
                } else {
                    // FEATURES_OK stays clear: the driver reads it back and gives up.
                    DeviceStatus::DriverLoaded
                }
            }
            (DeviceStatus::FeaturesOk, v)
                if v == ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK =>
            {
                self.activate()
            }
            (s, v) if v == s.bits() => s,
            (s, v) => {
                self.ignore(
                    Ignored::StatusTransition,
                    format_args!("status {v:#x} in state {s:?}"),
                );
                s
            }
        };
        self.set_status(next);
    }

    fn write_queue_register(&mut self, offset: u64, value: u32) {
        if self.status != DeviceStatus::FeaturesOk {
            let s = self.status;
            return self.ignore(
                Ignored::QueueRegisterOutOfState,
                format_args!("queue register {offset:#x} written in state {s:?}"),
            );
        }
        let sel = self.queue_sel as usize;
        let Some(q) = self.queues.get_mut(sel) else {
            return self.ignore(
                Ignored::QueueSel,
                format_args!("QueueSel {sel} (no such queue)"),
            );
        };
        let low = |old: u64| (old & !0xffff_ffff) | u64::from(value);
        let high = |old: u64| (old & 0xffff_ffff) | (u64::from(value) << 32);
        let which = match offset {
            reg::QUEUE_NUM => {
                let ok = value != 0 && value.is_power_of_two() && value <= u32::from(q.max_size());
                // Checked above, so try_set_size cannot fail (nor log).
                if ok && q.try_set_size(value as u16).is_ok() {
                    self.refused[sel][0] = false;
                } else {
                    self.refused[sel][0] = true;
                    note(
                        &mut self.log,
                        Ignored::QueueValue,
                        format_args!("QueueNum {value}"),
                    );
                }
                return;
            }
            reg::QUEUE_READY => {
                q.set_ready(value == 1);
                return;
            }
            reg::QUEUE_DESC_LOW | reg::QUEUE_DESC_HIGH => ADDR_DESC,
            reg::QUEUE_DRIVER_LOW | reg::QUEUE_DRIVER_HIGH => ADDR_DRIVER,
            reg::QUEUE_DEVICE_LOW | reg::QUEUE_DEVICE_HIGH => ADDR_DEVICE,
            _ => return,
        };
        let old = self.addrs[sel][which];
        let want = if matches!(
            offset,
            reg::QUEUE_DESC_LOW | reg::QUEUE_DRIVER_LOW | reg::QUEUE_DEVICE_LOW
        ) {
            low(old)
        } else {
            high(old)
        };
        self.addrs[sel][which] = want;
        // The whole address decides, whichever half was written last.
        let aligned = want % ALIGN[which] == 0;
        if aligned {
            let a = GuestAddress(want);
            // Aligned, so none of these can fail (nor log).
            let set = match which {
                ADDR_DESC => q.try_set_desc_table_address(a),
                ADDR_DRIVER => q.try_set_avail_ring_address(a),
                _ => q.try_set_used_ring_address(a),
            };
            self.refused[sel][which + 1] = set.is_err();
        } else {
            self.refused[sel][which + 1] = true;
            note(
                &mut self.log,
                Ignored::QueueValue,
                format_args!("misaligned queue address {want:#x} (register {offset:#x})"),
            );
        }
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC => MAGIC,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => self.device_type,
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => self.device_features_word(),
            reg::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => self.status.bits(),
            reg::CONFIG_GENERATION => 0,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            reg::DRIVER_FEATURES => {
                if self.status != DeviceStatus::DriverLoaded {
                    let s = self.status;
                    return self.ignore(
                        Ignored::FeaturesOutOfState,
                        format_args!("DriverFeatures written in state {s:?}"),
                    );
                }
                match self.driver_features_sel {
                    0 => {
                        self.driver_features =
                            (self.driver_features & !0xffff_ffff) | u64::from(value)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
                    }
                    _ => {}
                }
            }
            reg::QUEUE_SEL => self.queue_sel = value,
            reg::QUEUE_NUM
            | reg::QUEUE_READY
            | reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_DRIVER_LOW
            | reg::QUEUE_DRIVER_HIGH
            | reg::QUEUE_DEVICE_LOW
            | reg::QUEUE_DEVICE_HIGH => self.write_queue_register(offset, value),
            reg::QUEUE_NOTIFY => {
                // Normally an ioeventfd catches this write inside KVM.
                match self.queue_events.get(value as usize) {
                    Some(e) if self.status == DeviceStatus::Running => {
                        let _ = e.write(1);
                    }
                    _ => self.ignore(Ignored::Notify, format_args!("QueueNotify {value}")),
                }
            }
            reg::INTERRUPT_ACK => self.interrupt.ack(value),
            reg::STATUS => self.write_status(value),
            _ => self.ignore(
                Ignored::ReadOnlyRegister,
                format_args!("write to read-only or unknown register {offset:#x}"),
            ),
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            data.fill(0);
            return self.server.device().read_config(offset - reg::CONFIG, data);
        }
        if data.len() != 4 || offset % 4 != 0 {
            let n = data.len();
            return self.ignore(Ignored::Width, format_args!("{n}-byte read at {offset:#x}"));
        }
        data.copy_from_slice(&self.read_register(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            return self.ignore(
                Ignored::ReadOnlyRegister,
                format_args!("config space write at {offset:#x}"),
            );
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            let n = data.len();
            return self.ignore(
                Ignored::Width,
                format_args!("{n}-byte write at {offset:#x}"),
            );
        };
        if offset % 4 != 0 {
            return self.ignore(
                Ignored::Width,
                format_args!("unaligned write at {offset:#x}"),
            );
        }
        self.write_register(offset, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use vm_memory::GuestAddress;

    #[derive(Default)]
    struct Counts {
        activated: AtomicUsize,
        reset: AtomicUsize,
        processed: AtomicUsize,
        /// The queues of the last activation, as the device serves them.
        queues: Mutex<Vec<virtio_queue::QueueState>>,
    }

    struct Stub(Arc<Counts>);

    impl VirtioDevice for Stub {
        fn device_type(&self) -> u32 {
            2
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn features(&self) -> u64 {
            1 << 9
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            data[0] = offset as u8 + 0x40;
        }
        fn activate(&mut self, a: Activation) -> Result<(), super::super::ActivateError> {
            self.0.activated.fetch_add(1, Ordering::SeqCst);
            *self.0.queues.lock().unwrap() = a.queues.iter().map(|q| q.state()).collect();
            Ok(())
        }
        fn reset(&mut self) {
            self.0.reset.fetch_add(1, Ordering::SeqCst);
            self.0.queues.lock().unwrap().clear();
        }
        fn queue_states(&self) -> Vec<virtio_queue::QueueState> {
            self.0.queues.lock().unwrap().clone()
        }
        fn process_queue(&mut self, _: usize) {
            self.0.processed.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn transport() -> (MmioTransport, Arc<Counts>) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let counts = Arc::new(Counts::default());
        let t = MmioTransport::new(
            Box::new(Stub(counts.clone())),
            mem,
            EventFd::new(EFD_NONBLOCK).unwrap(),
        )
        .unwrap();
        (t, counts)
    }

    fn r(t: &mut MmioTransport, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn w(t: &mut MmioTransport, offset: u64, v: u32) {
        t.write(offset, &v.to_le_bytes());
    }

    use status::*;

    fn negotiate(t: &mut MmioTransport) {
        w(t, reg::STATUS, ACKNOWLEDGE);
        w(t, reg::STATUS, ACKNOWLEDGE | DRIVER);
        w(t, reg::DRIVER_FEATURES_SEL, 1);
        w(t, reg::DRIVER_FEATURES, 1); // VERSION_1
        w(t, reg::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    }

    fn setup_queue(t: &mut MmioTransport, size: u32, desc: u32) {
        w(t, reg::QUEUE_SEL, 0);
        w(t, reg::QUEUE_NUM, size);
        w(t, reg::QUEUE_DESC_LOW, desc);
        w(t, reg::QUEUE_DRIVER_LOW, 0x2000);
        w(t, reg::QUEUE_DEVICE_LOW, 0x3000);
        w(t, reg::QUEUE_READY, 1);
    }

    const ALL_OK: u32 = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK;

    #[test]
    fn a_running_transport_round_trips_through_a_snapshot() {
        let (mut t, counts) = transport();
        negotiate(&mut t);
        setup_queue(&mut t, 16, 0x1000);
        w(&mut t, reg::STATUS, ALL_OK);
        {
            let mut q = counts.queues.lock().unwrap();
            q[0].next_avail = 5;
            q[0].next_used = 4;
        }
        t.interrupt.raise(super::super::INT_VRING);
        let saved = t.snapshot(&t.queue_server().hold());
        assert_eq!(saved.status, ALL_OK);
        assert_eq!(
            (saved.queues[0].next_avail, saved.queues[0].next_used),
            (5, 4)
        );
        assert_eq!(saved.queues[0].rings, [0x1000, 0x2000, 0x3000]);

        let (mut back, back_counts) = transport();
        back.restore(&saved).unwrap();
        assert_eq!(back.status(), DeviceStatus::Running);
        assert_eq!(back_counts.activated.load(Ordering::SeqCst), 1);
        let live = back_counts.queues.lock().unwrap()[0];
        assert_eq!((live.next_avail, live.next_used, live.size), (5, 4, 16));
        assert_eq!(r(&mut back, reg::INTERRUPT_STATUS), 1);
        assert_eq!(
            back.queue_events()[0].read().unwrap(),
            1,
            "queue notified once"
        );
        assert_eq!(back.snapshot(&back.queue_server().hold()), saved);
    }

    #[test]
    fn a_bad_saved_transport_is_refused() {
        let (mut t, _) = transport();
        negotiate(&mut t);
        setup_queue(&mut t, 16, 0x1000);
        w(&mut t, reg::STATUS, ALL_OK);
        let saved = t.snapshot(&t.queue_server().hold());
        let refused = |edit: &dyn Fn(&mut TransportSnapshot)| {
            let mut bad = saved.clone();
            edit(&mut bad);
            let (mut back, _) = transport();
            back.restore(&bad).unwrap_err()
        };
        assert!(matches!(
            refused(&|s| s.device_type = 1),
            TransportStateError::DeviceType { saved: 1, here: 2 }
        ));
        assert!(matches!(
            refused(&|s| s.status = 0x40),
            TransportStateError::Status(0x40)
        ));
        assert!(matches!(
            refused(&|s| s.queues.clear()),
            TransportStateError::QueueCount { .. }
        ));
        assert!(matches!(
            refused(&|s| s.driver_features = 1 << 40),
            TransportStateError::Features(_)
        ));
        assert!(matches!(
            refused(&|s| s.queues[0].size = 3),
            TransportStateError::Queue { index: 0, .. }
        ));
        assert!(matches!(
            refused(&|s| s.queues[0].rings[0] = 1 << 40),
            TransportStateError::RingMismatch { index: 0 }
        ));
        // A ring outside guest memory: DRIVER_OK's own check refuses it.
        assert!(matches!(
            refused(&|s| {
                s.queues[0].rings[0] = 1 << 40;
                s.queues[0].written[0] = 1 << 40;
            }),
            TransportStateError::Activate
        ));
    }

    #[test]
    fn identity_registers() {
        let (mut t, _) = transport();
        assert_eq!(r(&mut t, reg::MAGIC), MAGIC);
        assert_eq!(r(&mut t, reg::VERSION), 2);
        assert_eq!(r(&mut t, reg::DEVICE_ID), 2);
        w(&mut t, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 1, "VERSION_1 offered");
        let mut b = [0u8; 1];
        t.read(reg::CONFIG + 3, &mut b);
        assert_eq!(b, [0x43]);
        let mut two = [0xaa; 2];
        t.read(reg::MAGIC, &mut two);
        assert_eq!(two, [0xaa; 2], "wrong width is ignored");
    }

    #[test]
    fn a_correct_driver_brings_the_device_up() {
        let (mut t, counts) = transport();
        negotiate(&mut t);
        assert_eq!(r(&mut t, reg::STATUS), ACKNOWLEDGE | DRIVER | FEATURES_OK);
        setup_queue(&mut t, 16, 0x1000);
        w(&mut t, reg::STATUS, ALL_OK);
        assert_eq!(t.status(), DeviceStatus::Running);
        assert_eq!(counts.activated.load(Ordering::SeqCst), 1);
        t.process_queue(0);
        assert_eq!(counts.processed.load(Ordering::SeqCst), 1);
        // Queue registers after DRIVER_OK are ignored.
        w(&mut t, reg::QUEUE_NUM, 4);
        w(&mut t, reg::STATUS, 0);
        assert_eq!(t.status(), DeviceStatus::Reset);
        assert_eq!(counts.reset.load(Ordering::SeqCst), 1);
        t.process_queue(0);
        assert_eq!(
            counts.processed.load(Ordering::SeqCst),
            1,
            "no work after reset"
        );
    }

    #[test]
    fn features_without_version_1_or_unoffered_are_refused() {
        let (mut t, _) = transport();
        w(&mut t, reg::STATUS, ACKNOWLEDGE);
        w(&mut t, reg::STATUS, ACKNOWLEDGE | DRIVER);
        w(&mut t, reg::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        assert_eq!(r(&mut t, reg::STATUS) & FEATURES_OK, 0);
        w(&mut t, reg::DRIVER_FEATURES_SEL, 1);
        w(&mut t, reg::DRIVER_FEATURES, 1 | 2); // bit 33: not offered
        w(&mut t, reg::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        assert_eq!(r(&mut t, reg::STATUS) & FEATURES_OK, 0);
    }

    #[test]
    fn queue_setup_before_features_ok_is_ignored() {
        let (mut t, counts) = transport();
        w(&mut t, reg::STATUS, ACKNOWLEDGE);
        setup_queue(&mut t, 16, 0x1000);
        assert_eq!(r(&mut t, reg::QUEUE_READY), 0);
        w(&mut t, reg::STATUS, ACKNOWLEDGE | DRIVER);
        w(&mut t, reg::DRIVER_FEATURES_SEL, 1);
        w(&mut t, reg::DRIVER_FEATURES, 1);
        w(&mut t, reg::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        w(&mut t, reg::STATUS, ALL_OK);
        assert_eq!(counts.activated.load(Ordering::SeqCst), 0, "no ready queue");
        assert_eq!(
            r(&mut t, reg::STATUS) & DEVICE_NEEDS_RESET,
            DEVICE_NEEDS_RESET
        );
    }

    #[test]
    fn bad_queues_refuse_driver_ok() {
        for (size, desc) in [
            (0, 0x1000),
            (12, 0x1000),
            (32, 0x1000),
            (16, 0x1001),
            (16, 0x10_0000),
        ] {
            let (mut t, counts) = transport();
            negotiate(&mut t);
            setup_queue(&mut t, size, desc);
            w(&mut t, reg::STATUS, ALL_OK);
            assert_eq!(
                counts.activated.load(Ordering::SeqCst),
                0,
                "size {size} desc {desc:#x}"
            );
            assert_ne!(t.status(), DeviceStatus::Running);
        }
    }

    #[test]
    fn out_of_range_queue_sel_and_notify_are_ignored() {
        let (mut t, _) = transport();
        negotiate(&mut t);
        w(&mut t, reg::QUEUE_SEL, 7);
        assert_eq!(r(&mut t, reg::QUEUE_NUM_MAX), 0);
        w(&mut t, reg::QUEUE_NUM, 16);
        w(&mut t, reg::QUEUE_NOTIFY, 9);
        w(&mut t, reg::QUEUE_SEL, 0);
        assert_eq!(r(&mut t, reg::QUEUE_NUM_MAX), 16);
        w(&mut t, reg::MAGIC, 0); // read-only
        assert_eq!(r(&mut t, reg::MAGIC), MAGIC);
    }

    #[test]
    fn failed_status_sticks_until_reset() {
        let (mut t, _) = transport();
        w(&mut t, reg::STATUS, ACKNOWLEDGE);
        w(&mut t, reg::STATUS, FAILED);
        assert_eq!(r(&mut t, reg::STATUS), FAILED);
        w(&mut t, reg::STATUS, ACKNOWLEDGE | DRIVER);
        assert_eq!(r(&mut t, reg::STATUS), FAILED);
        w(&mut t, reg::STATUS, 0);
        assert_eq!(r(&mut t, reg::STATUS), 0);
    }

    use crate::ratelimit::capture;

    /// Most lines a flood of one kind may log: the burst, plus one per
    /// interval (the test runs well within one), for each kind involved.
    const FEW: usize = 2 * (crate::ratelimit::BURST as usize + 1);

    #[test]
    fn a_flood_of_bad_register_writes_logs_a_handful_of_lines() {
        capture::start();
        let (mut t, _) = transport();
        negotiate(&mut t);
        for i in 0..100_000u32 {
            // Misaligned descriptor table (virtio-queue's setter would log
            // an error! for each of these).
            w(&mut t, reg::QUEUE_DESC_LOW, 0x5001 + 2 * (i % 7));
            w(&mut t, reg::QUEUE_DRIVER_LOW, 0x2001);
            w(&mut t, reg::QUEUE_NUM, 3);
        }
        let (n, lines) = capture::lines();
        assert!(n <= FEW, "{n} lines: {lines:?}");
        assert!(n >= 1, "the first ones are logged");
    }

    #[test]
    fn a_flood_of_bad_notifies_widths_and_states_logs_a_handful_of_lines() {
        capture::start();
        let (mut t, _) = transport();
        for i in 0..100_000u32 {
            w(&mut t, reg::QUEUE_NOTIFY, 5 + i % 3); // no such queue / not running
            t.write(reg::STATUS, &[1, 2]); // wrong width
            w(&mut t, reg::QUEUE_NUM, 16); // before FEATURES_OK
            w(&mut t, reg::MAGIC, i); // read-only
            w(&mut t, reg::STATUS, DRIVER_OK); // not a legal transition
        }
        let (n, lines) = capture::lines();
        assert!(n <= 5 * FEW, "{n} lines: {lines:?}");
    }

    #[test]
    fn refused_driver_ok_cycles_log_a_handful_of_lines() {
        capture::start();
        let (mut t, counts) = transport();
        for i in 0..100_000u32 {
            w(&mut t, reg::STATUS, 0);
            negotiate(&mut t);
            // Alternately misaligned and outside guest memory (the latter
            // reached virtio-queue's Queue::is_valid, which logs error!s).
            let desc = if i % 2 == 0 { 0x1008 } else { 0x20_0000 };
            setup_queue(&mut t, 16, desc);
            w(&mut t, reg::STATUS, ALL_OK);
            assert_ne!(t.status(), DeviceStatus::Running);
        }
        assert_eq!(counts.activated.load(Ordering::SeqCst), 0);
        let (n, lines) = capture::lines();
        assert!(n <= FEW, "{n} lines: {lines:?}");
    }

    #[test]
    fn a_high_write_after_a_refused_low_write_keeps_the_ring_refused() {
        for (low, high) in [
            (reg::QUEUE_DESC_LOW, reg::QUEUE_DESC_HIGH),
            (reg::QUEUE_DRIVER_LOW, reg::QUEUE_DRIVER_HIGH),
            (reg::QUEUE_DEVICE_LOW, reg::QUEUE_DEVICE_HIGH),
        ] {
            let (mut t, counts) = transport();
            negotiate(&mut t);
            setup_queue(&mut t, 16, 0x1000);
            // Before: the LOW write was refused (virtio-queue kept 0), the
            // HIGH write was "accepted" as 0 and cleared the refusal, and
            // DRIVER_OK ran a queue at address 0.
            w(&mut t, low, 0x5001);
            w(&mut t, high, 0);
            w(&mut t, reg::STATUS, ALL_OK);
            assert_ne!(t.status(), DeviceStatus::Running, "{low:#x}");
            assert_eq!(counts.activated.load(Ordering::SeqCst), 0);
        }
        // Correcting the LOW half makes the queue good again.
        let (mut t, counts) = transport();
        negotiate(&mut t);
        setup_queue(&mut t, 16, 0x1000);
        w(&mut t, reg::QUEUE_DESC_LOW, 0x5001);
        w(&mut t, reg::QUEUE_DESC_HIGH, 0);
        w(&mut t, reg::QUEUE_DESC_LOW, 0x5000);
        w(&mut t, reg::STATUS, ALL_OK);
        assert_eq!(t.status(), DeviceStatus::Running);
        assert_eq!(counts.activated.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_high_half_beyond_memory_refuses_driver_ok() {
        let (mut t, counts) = transport();
        negotiate(&mut t);
        setup_queue(&mut t, 16, 0x1000);
        w(&mut t, reg::QUEUE_DEVICE_HIGH, 1); // 4 GiB + 0x3000: no RAM there
        w(&mut t, reg::STATUS, ALL_OK);
        assert_ne!(t.status(), DeviceStatus::Running);
        assert_eq!(counts.activated.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn queue_registers_after_driver_ok_are_ignored_and_logged_a_few_times() {
        capture::start();
        let (mut t, counts) = transport();
        negotiate(&mut t);
        setup_queue(&mut t, 16, 0x1000);
        w(&mut t, reg::STATUS, ALL_OK);
        assert_eq!(t.status(), DeviceStatus::Running);
        for i in 0..10_000u32 {
            w(&mut t, reg::QUEUE_NUM, 4);
            w(&mut t, reg::QUEUE_DESC_LOW, 0x5001 + i);
            w(&mut t, reg::QUEUE_READY, 0);
            w(&mut t, reg::QUEUE_SEL, 9);
            w(&mut t, reg::QUEUE_NOTIFY, 9);
            t.write(reg::QUEUE_NOTIFY, &[0]); // wrong width
            w(&mut t, reg::QUEUE_SEL, 0);
        }
        assert_eq!(r(&mut t, reg::QUEUE_READY), 1, "still ready");
        assert_eq!(t.status(), DeviceStatus::Running);
        // The running queue is untouched: notifying queue 0 still works.
        w(&mut t, reg::QUEUE_NOTIFY, 0);
        assert_eq!(t.queue_events()[0].read().unwrap(), 1);
        assert_eq!(counts.activated.load(Ordering::SeqCst), 1);
        let (n, lines) = capture::lines();
        assert!(n <= 3 * FEW, "{n} lines: {lines:?}");
    }
}
