//! Puts virtio devices on the VM: opens their backing files (every problem
//! named before boot), places each transport in its MMIO window with its
//! IRQ (irqfd) and queue notifications (ioeventfds), and serves the queues
//! on the event loop.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::fd::RawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ember_devices::bus::{Bus, BusError};
use ember_devices::virtio::block::{Block, BlockError};
use ember_devices::virtio::mmio::{
    MmioTransport, QueueServer, TransportError, TransportSnapshot, TransportStateError,
    QUEUE_NOTIFY_OFFSET,
};
use ember_devices::virtio::net::Net;
use ember_devices::virtio::tap::{Tap, TapError};
use ember_devices::virtio::VirtioDevice;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use kvm_ioctls::{IoEventAddress, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::config::{DiskConfig, NetConfig};
use crate::event_loop::{self, Manager};
use crate::layout::VIRTIO_MMIO_SIZE;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("--disk {path}: cannot open")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--disk {path}: not a regular file")]
    NotAFile { path: PathBuf },
    #[error("--disk {path}")]
    Block {
        path: PathBuf,
        #[source]
        source: BlockError,
    },
}

/// Opens every disk, read-only ones with O_RDONLY.
pub fn open_disks(disks: &[DiskConfig]) -> Result<Vec<Block>, DiskError> {
    disks
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let open = |source| DiskError::Open {
                path: d.path.clone(),
                source,
            };
            // O_NONBLOCK so that a FIFO is refused below instead of
            // blocking the open; it means nothing for a regular file.
            let file: File = OpenOptions::new()
                .read(true)
                .write(!d.read_only)
                .custom_flags(libc::O_NONBLOCK)
                .open(&d.path)
                .map_err(open)?;
            if !file.metadata().map_err(open)?.is_file() {
                return Err(DiskError::NotAFile {
                    path: d.path.clone(),
                });
            }
            Block::new(
                file,
                d.read_only,
                &format!("ember-vd{}", (b'a' + i as u8) as char),
            )
            .map_err(|source| DiskError::Block {
                path: d.path.clone(),
                source,
            })
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("--net tap={tap}")]
    Tap {
        tap: String,
        #[source]
        source: TapError,
    },
}

/// Opens every TAP (errors name the interface) and picks the MACs.
pub fn open_nets(nets: &[NetConfig]) -> Result<Vec<Net>, NetError> {
    nets.iter()
        .map(|n| {
            let tap = Tap::open(&n.tap).map_err(|source| NetError::Tap {
                tap: n.tap.clone(),
                source,
            })?;
            let mac = n.mac.unwrap_or_else(random_mac);
            let m: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
            log::info!("net: TAP {} with MAC {}", tap.name(), m.join(":"));
            Ok(Net::new(mac, Box::new(tap)))
        })
        .collect()
}

/// A random locally administered unicast MAC (bit 1 set, bit 0 clear).
fn random_mac() -> [u8; 6] {
    let mut mac = [0u8; 6];
    let filled =
        File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut mac));
    if filled.is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
            ^ u128::from(std::process::id());
        mac.copy_from_slice(&t.to_le_bytes()[..6]);
    }
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("virtio device {index}: cannot {what}")]
    Kvm {
        index: usize,
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("virtio device {index}: cannot {what}")]
    Host {
        index: usize,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("virtio device {index}: cannot create its transport")]
    Transport {
        index: usize,
        #[source]
        source: TransportError,
    },
    #[error("virtio device {index}: cannot restore its saved state")]
    Restore {
        index: usize,
        #[source]
        source: TransportStateError,
    },
    #[error("virtio device {index}: cannot place its window on the MMIO bus")]
    Bus {
        index: usize,
        #[source]
        source: BusError,
    },
}

/// Where a virtio device sits: its index, MMIO window and IRQ (allocated
/// once by the builder, from `layout::virtio_slot`).
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    pub index: usize,
    pub base: u64,
    pub irq: u32,
}

/// Event data that marks the device's backend descriptor (a TAP).
const BACKEND: u32 = u32::MAX;
/// Event data of a host watch: this bit and the descriptor.
const HOST_WATCH: u32 = 1 << 31;

/// Serves one transport's queue notifications, and its backend descriptor
/// while the device wants it, on the event loop.
struct QueueEvents {
    /// The device, without the register file: a vCPU's MMIO access never
    /// waits for this loop's work.
    server: QueueServer,
    events: Vec<EventFd>,
    backend: Option<RawFd>,
    watching_backend: bool,
    /// The device's host watches as registered: descriptor → writable.
    host: BTreeMap<RawFd, EventSet>,
}

impl QueueEvents {
    /// Registers what the device wants watched now, and only that.
    fn update_host_watches(&mut self, ops: &mut EventOps) {
        let mut want: BTreeMap<RawFd, EventSet> = BTreeMap::new();
        for w in self.server.host_watches() {
            let set = if w.writable {
                EventSet::OUT
            } else {
                EventSet::IN
            };
            *want.entry(w.fd).or_insert(EventSet::empty()) |= set;
        }
        if want == self.host {
            return;
        }
        let event = |fd: RawFd, set| Events::with_data_raw(fd, HOST_WATCH | fd as u32, set);
        for (&fd, &set) in &self.host {
            if !want.contains_key(&fd) {
                if let Err(e) = ops.remove(event(fd, set)) {
                    log::error!("virtio: cannot stop watching descriptor {fd}: {e}");
                }
            }
        }
        let mut registered = BTreeMap::new();
        for (&fd, &set) in &want {
            let r = match self.host.get(&fd) {
                Some(&old) if old == set => Ok(()),
                Some(_) => ops.modify(event(fd, set)),
                None => ops.add(event(fd, set)),
            };
            match r {
                Ok(()) => {
                    registered.insert(fd, set);
                }
                // Not registered: tried again at the next event.
                Err(e) => log::error!("virtio: cannot watch descriptor {fd}: {e}"),
            }
        }
        self.host = registered;
    }

    fn update_backend_watch(&mut self, ops: &mut EventOps) {
        let Some(fd) = self.backend else { return };
        let want = self.server.backend_wanted();
        if want == self.watching_backend {
            return;
        }
        let ev = Events::with_data_raw(fd, BACKEND, EventSet::IN);
        let r = if want { ops.add(ev) } else { ops.remove(ev) };
        match r {
            Ok(()) => self.watching_backend = want,
            Err(e) => log::error!("virtio: cannot change the backend watch: {e}"),
        }
    }
}

impl MutEventSubscriber for QueueEvents {
    fn init(&mut self, ops: &mut EventOps) {
        for (i, e) in self.events.iter().enumerate() {
            if let Err(err) = ops.add(Events::with_data(e, i as u32, EventSet::IN)) {
                log::error!("virtio: cannot watch queue {i}: {err}");
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let index = events.data();
        if index != BACKEND && index & HOST_WATCH != 0 {
            self.server.host_ready((index & !HOST_WATCH) as RawFd);
        } else if index == BACKEND {
            let t = &self.server;
            // A deleted or detached TAP reports ERROR/HUP forever: the
            // device marks its backend failed and stops wanting it, so the
            // watch is removed below instead of spinning.
            if events
                .event_set()
                .intersects(EventSet::ERROR | EventSet::HANG_UP)
            {
                t.backend_hangup();
            }
            t.process_backend();
        } else if let Some(e) = self.events.get(index as usize) {
            let _ = e.read();
            self.server.process_queue(index as usize);
        }
        self.update_backend_watch(ops);
        self.update_host_watches(ops);
    }
}

/// A transport on the bus, and its device's queue server (for the
/// machine to flush when the VM ends).
pub type Attached = (Arc<Mutex<MmioTransport>>, QueueServer);

/// Attaches `device` in `slot`, in the state `saved` if it is restored
/// from a snapshot.
pub fn attach(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    mmio: &mut Bus,
    manager: &mut Manager,
    slot: Slot,
    device: Box<dyn VirtioDevice>,
    saved: Option<&TransportSnapshot>,
) -> Result<Attached, AttachError> {
    let Slot { index, base, irq } = slot;
    let kvm = |what| {
        move |source| AttachError::Kvm {
            index,
            what,
            source,
        }
    };
    let host = |what| {
        move |source| AttachError::Host {
            index,
            what,
            source,
        }
    };
    let irq_evt = EventFd::new(EFD_NONBLOCK).map_err(host("create its irqfd"))?;
    vm.register_irqfd(&irq_evt, irq)
        .map_err(kvm("register its irqfd"))?;
    let mut transport = MmioTransport::new(device, mem.clone(), irq_evt)
        .map_err(|source| AttachError::Transport { index, source })?;
    if let Some(saved) = saved {
        transport
            .restore(saved)
            .map_err(|source| AttachError::Restore { index, source })?;
    }
    let mut events = Vec::new();
    for (q, e) in transport.queue_events().iter().enumerate() {
        vm.register_ioevent(
            e,
            &IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET),
            q as u32,
        )
        .map_err(kvm("register a queue ioeventfd"))?;
        events.push(e.try_clone().map_err(host("clone a queue eventfd"))?);
    }
    let backend = transport.backend_fd();
    let server = transport.queue_server();
    let transport = Arc::new(Mutex::new(transport));
    mmio.insert(base, VIRTIO_MMIO_SIZE, transport.clone())
        .map_err(|source| AttachError::Bus { index, source })?;
    event_loop::add(
        manager,
        QueueEvents {
            server: server.clone(),
            events,
            backend,
            watching_backend: false,
            host: BTreeMap::new(),
        },
    );
    Ok((transport, server))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_macs_are_locally_administered_unicast() {
        for _ in 0..16 {
            let m = random_mac();
            assert_eq!(m[0] & 0b11, 0b10, "{m:?}");
        }
        assert_ne!(random_mac(), random_mac());
    }
}
