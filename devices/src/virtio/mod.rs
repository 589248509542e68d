//! Virtio devices over the virtio-mmio transport (virtio 1.x, "version 2").

pub mod block;
pub mod mmio;
pub mod net;
pub mod tap;

use std::sync::Arc;

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// VIRTIO_F_VERSION_1: the modern interface; every Ember device offers it.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Takes the next available chain: its head and its descriptors (at most
/// queue-size of them: virtio-queue stops loops and out-of-range `next`).
/// An error means the driver broke the queue (e.g. avail.idx too far
/// ahead): the device must stop using it until a reset.
pub fn pop_chain(
    queue: &mut virtio_queue::Queue,
    mem: &GuestMemoryMmap,
) -> Result<Option<(u16, Vec<virtio_queue::desc::split::Descriptor>)>, virtio_queue::Error> {
    use virtio_queue::QueueOwnedT;
    Ok(queue
        .iter(mem)?
        .next()
        .map(|c| (c.head_index(), c.collect())))
}

/// Copies the part of a device's configuration space at `offset` into
/// `data`; bytes past its end stay as the transport left them (zero).
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    let Some(src) = usize::try_from(offset)
        .ok()
        .and_then(|start| config.get(start..))
    else {
        return;
    };
    let n = src.len().min(data.len());
    data[..n].copy_from_slice(&src[..n]);
}

/// What the transport needs from a device model.
pub trait VirtioDevice: Send {
    /// Virtio device ID (2 = block, 1 = net).
    fn device_type(&self) -> u32;
    /// Largest size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits the device offers (VIRTIO_F_VERSION_1 included).
    fn features(&self) -> u64;
    /// Reads the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// The driver set DRIVER_OK: start serving `queues` with the features
    /// it accepted. Interrupts are raised through `interrupt`.
    fn activate(&mut self, activation: Activation) -> Result<(), String>;
    /// The driver reset the device: drop the queues, stop serving.
    fn reset(&mut self);
    /// Queue `index` was notified: do a bounded amount of its work.
    fn process_queue(&mut self, index: usize);
    /// A host descriptor the device reads from (a TAP), if any.
    fn backend_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    /// Whether the event loop should watch `backend_fd` right now (false
    /// while the guest has posted no buffers to fill).
    fn backend_wanted(&self) -> bool {
        false
    }
    /// `backend_fd` is readable.
    fn process_backend(&mut self) {}
}

/// What a device gets when the driver starts it.
pub struct Activation {
    pub mem: GuestMemoryMmap,
    pub queues: Vec<virtio_queue::Queue>,
    /// One eventfd per queue, signalled by the driver's QueueNotify writes.
    pub queue_events: Vec<EventFd>,
    pub interrupt: Arc<Interrupt>,
    pub acked_features: u64,
}

/// The device's interrupt line and its InterruptStatus register.
pub struct Interrupt {
    status: std::sync::atomic::AtomicU32,
    irq: EventFd,
}

/// InterruptStatus bit: a used buffer was returned.
pub const INT_VRING: u32 = 1;
/// InterruptStatus bit: the configuration changed.
pub const INT_CONFIG: u32 = 2;

impl Interrupt {
    pub fn new(irq: EventFd) -> Self {
        Self {
            status: Default::default(),
            irq,
        }
    }

    /// Sets `bits` in InterruptStatus and raises the line.
    pub fn raise(&self, bits: u32) {
        self.status
            .fetch_or(bits, std::sync::atomic::Ordering::SeqCst);
        if let Err(e) = self.irq.write(1) {
            log::warn!("virtio: cannot raise the interrupt: {e}");
        }
    }

    pub fn status(&self) -> u32 {
        self.status.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn ack(&self, bits: u32) {
        self.status
            .fetch_and(!bits, std::sync::atomic::Ordering::SeqCst);
    }
}
