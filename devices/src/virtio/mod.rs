//! Virtio devices over the virtio-mmio transport (virtio 1.x, "version 2").

pub mod block;
pub mod console;
pub mod iov;
pub mod mmio;
pub mod net;
pub mod p9;
pub mod tap;

use std::sync::Arc;

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// VIRTIO_F_VERSION_1: the modern interface; every Ember device offers it.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Why a chain was refused whole. virtio-queue's own iterator silently
/// cuts chains short (on a loop, a `next` beyond the queue, a length
/// overflow) and follows indirect tables even when the feature was not
/// negotiated; `pop_chain` walks the descriptor table itself instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadChain {
    #[error("descriptor {index} chains to {next}, beyond the queue size")]
    NextOutOfRange { index: u16, next: u16 },
    #[error("descriptor {0} is indirect, and VIRTIO_RING_F_INDIRECT_DESC is not offered")]
    Indirect(u16),
    #[error("more than {0} descriptors (or a loop)")]
    TooLong(usize),
    #[error("over 4 GiB in total")]
    TooBig,
    #[error("descriptor {0} cannot be read")]
    Unreadable(u16),
}

/// The driver broke the queue itself: the device must stop using it until
/// a reset.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("the available ring is unusable: {0}")]
    Avail(#[source] virtio_queue::Error),
    #[error("the available ring names head {head}, beyond the queue size {size}")]
    HeadOutOfRange { head: u16, size: u16 },
}

/// One chain taken off the available ring.
#[derive(Debug)]
pub enum Popped {
    /// Its descriptors, in order; the last one has no NEXT flag.
    Chain {
        head: u16,
        descs: Vec<virtio_queue::desc::split::Descriptor>,
    },
    /// Malformed: return `head` with used length 0 and touch nothing.
    Bad { head: u16, why: BadChain },
}

/// Takes the next available chain and walks it, refusing it whole if it is
/// cut short (the last descriptor still has NEXT, e.g. `next` beyond the
/// queue), loops or has more than `max_descs` descriptors, has an indirect
/// descriptor (Ember offers no VIRTIO_RING_F_INDIRECT_DESC), or adds up to
/// more than 4 GiB. At most `min(max_descs, queue size)` descriptors are
/// read. An error means the driver broke the queue (avail.idx too far
/// ahead, a head beyond the queue).
pub fn pop_chain(
    queue: &mut virtio_queue::Queue,
    mem: &GuestMemoryMmap,
    max_descs: usize,
) -> Result<Option<Popped>, QueueError> {
    let mut descs = Vec::with_capacity(max_descs.min(16));
    Ok(
        pop_chain_into(queue, mem, max_descs, &mut descs)?.map(|head| match head {
            Taken::Chain(head) => Popped::Chain { head, descs },
            Taken::Bad { head, why } => Popped::Bad { head, why },
        }),
    )
}

/// A chain `pop_chain_into` took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// Its descriptors were appended to the caller's buffer.
    Chain(u16),
    /// Malformed: return `head` with used length 0 and touch nothing (the
    /// caller's buffer is as it was).
    Bad { head: u16, why: BadChain },
}

/// `pop_chain` into a buffer the caller keeps, so a device on a hot path
/// allocates nothing per chain.
pub fn pop_chain_into(
    queue: &mut virtio_queue::Queue,
    mem: &GuestMemoryMmap,
    max_descs: usize,
    descs: &mut Vec<virtio_queue::desc::split::Descriptor>,
) -> Result<Option<Taken>, QueueError> {
    use virtio_queue::{QueueOwnedT, QueueT};
    use vm_memory::GuestAddress;

    let Some(head) = queue
        .iter(mem)
        .map_err(QueueError::Avail)?
        .next()
        .map(|c| c.head_index())
    else {
        return Ok(None);
    };
    let size = queue.size();
    if head >= size {
        return Err(QueueError::HeadOutOfRange { head, size });
    }
    let table = GuestAddress(queue.desc_table());
    let max = max_descs.min(usize::from(size));
    let start = descs.len();
    match walk_chain(mem, table, head, size, max, descs) {
        Ok(()) => Ok(Some(Taken::Chain(head))),
        Err(why) => {
            descs.truncate(start);
            Ok(Some(Taken::Bad { head, why }))
        }
    }
}

/// Appends the descriptors of the chain at `head` to `descs`: at most
/// `max`, none indirect, under 4 GiB in all, every `next` inside the
/// table of `size` entries at `table`.
fn walk_chain(
    mem: &GuestMemoryMmap,
    table: vm_memory::GuestAddress,
    head: u16,
    size: u16,
    max: usize,
    descs: &mut Vec<virtio_queue::desc::split::Descriptor>,
) -> Result<(), BadChain> {
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT};
    use virtio_queue::desc::split::Descriptor;
    use vm_memory::{Address, Bytes, GuestMemoryBackend};

    // The table as one slice of guest memory when it lies in one region
    // (one address look-up for the whole chain), else each entry looked
    // up on its own.
    let whole = mem.get_slice(table, usize::from(size) * 16).ok();
    let read = |index: u16| -> Option<Descriptor> {
        // index < size <= 32768, so this cannot overflow.
        let offset = usize::from(index) * 16;
        match &whole {
            Some(slice) => slice.read_obj::<Descriptor>(offset).ok(),
            None => mem
                .read_obj::<Descriptor>(table.checked_add(offset as u64)?)
                .ok(),
        }
    };
    let mut total = 0u32;
    let mut index = head;
    for _ in 0..max {
        let d = read(index).ok_or(BadChain::Unreadable(index))?;
        if d.flags() & VRING_DESC_F_INDIRECT as u16 != 0 {
            return Err(BadChain::Indirect(index));
        }
        total = total.checked_add(d.len()).ok_or(BadChain::TooBig)?;
        descs.push(d);
        if d.flags() & VRING_DESC_F_NEXT as u16 == 0 {
            return Ok(());
        }
        if d.next() >= size {
            return Err(BadChain::NextOutOfRange {
                index,
                next: d.next(),
            });
        }
        index = d.next();
    }
    Err(BadChain::TooLong(max))
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
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// The driver reset the device: drop the queues, stop serving.
    fn reset(&mut self);
    /// The queues as the device serves them (their ring positions), in
    /// order; empty while the device is not active. For snapshots.
    fn queue_states(&self) -> Vec<virtio_queue::QueueState>;
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
    /// The backend failed for good (e.g. the TAP interface was deleted):
    /// the event loop must stop watching `backend_fd`; `backend_wanted`
    /// stays false from then on.
    fn backend_failed(&self) -> bool {
        false
    }
    /// The event loop saw EPOLLERR or EPOLLHUP on `backend_fd`.
    fn backend_hangup(&mut self) {}
    /// Host descriptors the device wants watched right now, besides
    /// `backend_fd` (a console's stdin while the guest has room, its
    /// stdout while a write waits). Empty while the device is not active.
    fn host_watches(&self) -> Vec<HostWatch> {
        Vec::new()
    }
    /// One of `host_watches` is ready (or in error: the device finds out
    /// when it uses it).
    fn host_ready(&mut self, _fd: std::os::fd::RawFd) {}
    /// What a snapshot keeps of the device beyond its queues' positions
    /// (empty: nothing). Called with the device held, not processing.
    fn saved_state(&self) -> Vec<u8> {
        Vec::new()
    }
    /// Puts `saved_state`'s bytes back into the just activated device.
    /// They come from a snapshot file: untrusted.
    fn restore_state(&mut self, state: &[u8]) -> Result<(), String> {
        match state.is_empty() {
            true => Ok(()),
            false => Err(format!(
                "{} bytes of state for a device that keeps none",
                state.len()
            )),
        }
    }
    /// The VM is ending (or the device is being dropped): make everything
    /// the guest wrote durable (a disk syncs its file). Callable in any
    /// state, more than once.
    fn shutdown(&mut self) {}
}

/// A host descriptor to watch, readable or writable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostWatch {
    pub fd: std::os::fd::RawFd,
    pub writable: bool,
}

/// Why a device refused to start.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("{device} needs {needed} queue(s) and their eventfds")]
    MissingQueues { device: &'static str, needed: usize },
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

    /// Sets InterruptStatus without raising the line (a restored device:
    /// the line's state is the irqchip's).
    pub fn set_status(&self, bits: u32) {
        self.status.store(bits, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn ack(&self, bits: u32) {
        self.status
            .fetch_and(!bits, std::sync::atomic::Ordering::SeqCst);
    }
}
