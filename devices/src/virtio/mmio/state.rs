//! A transport's registers and its device's ring positions, as a snapshot
//! keeps them, and the way back: a fresh transport put in the saved state,
//! a running device activated again on its saved rings. A saved state is
//! untrusted input (a file on disk): every value is checked as a guest's
//! register write would be.

use std::sync::MutexGuard;

use virtio_queue::{Queue, QueueState, QueueT};

use super::{DeviceStatus, MmioTransport};

/// VIRTIO_RING_F_EVENT_IDX (virtio 1.2, 6).
const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
use crate::virtio::VirtioDevice;

/// One queue: what the driver configured and where the device was.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueSnapshot {
    pub size: u16,
    pub ready: bool,
    /// Descriptor table, driver ring, device ring, as the queue holds them
    /// (the driver's last accepted values).
    pub rings: [u64; 3],
    /// The same, as the driver last wrote them (maybe refused).
    pub written: [u64; 3],
    /// Which of size and the three rings were refused.
    pub refused: [bool; 4],
    /// The device's ring positions (0 when it was not running).
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx: bool,
}

/// A virtio-mmio transport's register file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TransportSnapshot {
    pub device_type: u32,
    /// The Status register's bits.
    pub status: u32,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub driver_features: u64,
    pub queue_sel: u32,
    pub interrupt_status: u32,
    pub queues: Vec<QueueSnapshot>,
    /// The device's own state beyond its queues (`VirtioDevice::saved_state`).
    pub device: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum TransportStateError {
    #[error("the saved device has type {saved}, this one type {here}")]
    DeviceType { saved: u32, here: u32 },
    #[error("the saved device has {saved} queues, this one {here}")]
    QueueCount { saved: usize, here: usize },
    #[error("status {0:#x} is not a state the transport can be in")]
    Status(u32),
    #[error("the driver features {0:#x} include some the device does not offer")]
    Features(u64),
    #[error("queue {index} cannot hold the saved ring state")]
    Queue {
        index: usize,
        #[source]
        source: virtio_queue::Error,
    },
    #[error("queue {index}: the saved ring addresses differ from the driver's accepted ones")]
    RingMismatch { index: usize },
    #[error("queue {index}: EVENT_IDX in use, but the driver did not negotiate it")]
    EventIdx { index: usize },
    #[error("the device refused to run on its saved rings")]
    Activate,
    #[error("the device's saved state: {0}")]
    DeviceState(String),
}

/// The device behind a transport, locked: no queue work runs while it is
/// held, so the ring positions read through it stay true.
pub struct HeldDevice<'a>(pub(super) MutexGuard<'a, Box<dyn VirtioDevice>>);

impl MmioTransport {
    /// The registers, with the ring positions `held` (this transport's
    /// device, locked) has reached.
    pub fn snapshot(&self, held: &HeldDevice) -> TransportSnapshot {
        let live = held.0.queue_states();
        let queues = self
            .queues
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let kept = q.state();
                let pos = live.get(i).unwrap_or(&kept);
                QueueSnapshot {
                    size: kept.size,
                    ready: kept.ready,
                    rings: [kept.desc_table, kept.avail_ring, kept.used_ring],
                    written: self.addrs[i],
                    refused: self.refused[i],
                    next_avail: pos.next_avail,
                    next_used: pos.next_used,
                    event_idx: pos.event_idx_enabled,
                }
            })
            .collect();
        TransportSnapshot {
            device_type: self.device_type,
            status: self.status.bits(),
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            interrupt_status: self.interrupt.status(),
            queues,
            device: held.0.saved_state(),
        }
    }

    /// Puts a fresh transport (its device not yet active) in the saved
    /// state; a running device is activated on the saved rings and each of
    /// its queues notified once, so requests the guest queued before the
    /// snapshot are served.
    pub fn restore(&mut self, saved: &TransportSnapshot) -> Result<(), TransportStateError> {
        if saved.device_type != self.device_type {
            return Err(TransportStateError::DeviceType {
                saved: saved.device_type,
                here: self.device_type,
            });
        }
        if saved.queues.len() != self.queues.len() {
            return Err(TransportStateError::QueueCount {
                saved: saved.queues.len(),
                here: self.queues.len(),
            });
        }
        let status = DeviceStatus::from_bits(saved.status)
            .ok_or(TransportStateError::Status(saved.status))?;
        if saved.driver_features & !self.offered_features != 0 {
            return Err(TransportStateError::Features(saved.driver_features));
        }
        for (index, (q, s)) in self.queues.iter_mut().zip(&saved.queues).enumerate() {
            // DRIVER_OK checks the driver's accepted addresses against
            // guest memory; the queue must use those very addresses.
            let mismatch = (0..3).any(|r| !s.refused[r + 1] && s.written[r] != s.rings[r]);
            if mismatch {
                return Err(TransportStateError::RingMismatch { index });
            }
            if s.event_idx && saved.driver_features & VIRTIO_RING_F_EVENT_IDX == 0 {
                return Err(TransportStateError::EventIdx { index });
            }
            let state = QueueState {
                max_size: q.max_size(),
                next_avail: s.next_avail,
                next_used: s.next_used,
                event_idx_enabled: s.event_idx,
                size: s.size,
                ready: s.ready,
                desc_table: s.rings[0],
                avail_ring: s.rings[1],
                used_ring: s.rings[2],
            };
            *q = Queue::try_from(state)
                .map_err(|source| TransportStateError::Queue { index, source })?;
            self.addrs[index] = s.written;
            self.refused[index] = s.refused;
        }
        self.device_features_sel = saved.device_features_sel;
        self.driver_features_sel = saved.driver_features_sel;
        self.driver_features = saved.driver_features;
        self.queue_sel = saved.queue_sel;
        // A pending interrupt lives on in the restored irqchip; only the
        // register's bits are set here.
        self.interrupt.set_status(saved.interrupt_status);
        if status == DeviceStatus::Running {
            if self.activate() != DeviceStatus::Running {
                return Err(TransportStateError::Activate);
            }
            self.server
                .device()
                .restore_state(&saved.device)
                .map_err(TransportStateError::DeviceState)?;
            for e in &self.queue_events {
                let _ = e.write(1);
            }
        }
        self.set_status(status);
        Ok(())
    }
}

impl DeviceStatus {
    /// The state whose Status bits are `bits`, if there is one.
    fn from_bits(bits: u32) -> Option<Self> {
        [
            DeviceStatus::Reset,
            DeviceStatus::Acknowledged,
            DeviceStatus::DriverLoaded,
            DeviceStatus::FeaturesOk,
            DeviceStatus::Running,
            DeviceStatus::Failed { needs_reset: true },
            DeviceStatus::Failed { needs_reset: false },
        ]
        .into_iter()
        .find(|s| s.bits() == bits)
    }
}
