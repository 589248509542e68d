//! virtio-blk against a host file: IN, OUT, FLUSH (fdatasync), GET_ID.
//! Every descriptor is checked before the file or guest memory is touched;
//! every sector and length uses checked arithmetic; a malformed chain is
//! returned with length 0 so the queue never wedges.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};
use vmm_sys_util::eventfd::EventFd;

use super::iov::{chain_iovecs, pread_all, pread_slice_all, pwrite_all, pwrite_slice_all};
use super::{Activation, Interrupt, VirtioDevice, INT_VRING};
use crate::ratelimit::LogLimiter;

pub const SECTOR_SIZE: u64 = 512;
const QUEUE_SIZE: u16 = 256;
const VIRTIO_ID_BLOCK: u32 = 2;
const VIRTIO_BLK_F_SIZE_MAX: u64 = 1 << 1;
const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
/// Largest single data segment and segment count the device accepts
/// (advertised with VIRTIO_BLK_F_SIZE_MAX / VIRTIO_BLK_F_SEG_MAX, and
/// enforced: a request over either gets VIRTIO_BLK_S_IOERR). Together they
/// bound one request to 4 MiB of data, the per-event budget.
pub const SIZE_MAX: u32 = 32 << 10;
pub const SEG_MAX: u32 = 128;
/// Data bytes one `process_queue` call moves at most: once the next request
/// would go past it, the call stops and writes the queue's own eventfd, so
/// the event loop comes back to the disk after serving everything else.
pub const WORK_BYTES_PER_EVENT: u64 = 4 << 20;
/// What a FLUSH costs against that budget (an fdatasync can take a while).
const FLUSH_COST: u64 = 1 << 20;
/// What any request costs at least (GET_ID, malformed chains, errors).
const MIN_COST: u64 = 4 << 10;
const VIRTIO_BLK_ID_BYTES: usize = 20;

pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

enum State {
    Inactive,
    Active {
        mem: GuestMemoryMmap,
        queue: Queue,
        notify: EventFd,
        interrupt: Arc<Interrupt>,
        /// The driver broke the queue (e.g. avail.idx too far ahead):
        /// nothing more is processed until it resets the device.
        broken: bool,
    },
}

pub struct Block {
    file: File,
    capacity_bytes: u64,
    read_only: bool,
    id: [u8; VIRTIO_BLK_ID_BYTES],
    /// The id given to `new`, for host-side log lines.
    name: String,
    state: State,
    queue_sizes: [u16; 1],
    /// Every guest-triggerable line goes through here.
    log: LogLimiter,
    /// The descriptor buffer `process_queue` fills for each chain (taken
    /// out during a call, kept between calls) so that a request costs no
    /// allocation.
    descs: Vec<Descriptor>,
}

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("disk size {0} bytes is not a multiple of 512")]
    Size(u64),
    #[error("cannot read the disk size: {0}")]
    Metadata(#[source] std::io::Error),
}

impl Block {
    /// `file` must be opened read-only when `read_only` (the host kernel
    /// then refuses writes too). `id` is reported by GET_ID.
    pub fn new(file: File, read_only: bool, id: &str) -> Result<Self, BlockError> {
        let len = file.metadata().map_err(BlockError::Metadata)?.len();
        if len % SECTOR_SIZE != 0 {
            return Err(BlockError::Size(len));
        }
        let mut id_bytes = [0u8; VIRTIO_BLK_ID_BYTES];
        let n = id.len().min(VIRTIO_BLK_ID_BYTES);
        id_bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
        Ok(Self {
            file,
            capacity_bytes: len,
            read_only,
            id: id_bytes,
            name: id.to_string(),
            state: State::Inactive,
            queue_sizes: [QUEUE_SIZE],
            log: LogLimiter::new(),
            descs: Vec::new(),
        })
    }

    /// The disk's size as the guest sees it.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    fn config_bytes(&self) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0..8].copy_from_slice(&(self.capacity_bytes / SECTOR_SIZE).to_le_bytes());
        c[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        c
    }
}

/// The guest's request, parsed and checked. The status byte is kept as
/// the slice of guest memory it was found in, so completing the request
/// does not look its address up again.
struct Request<'d, 'm> {
    kind: u32,
    sector: u64,
    data: &'d [Descriptor],
    status: StatusByte<'m>,
}

/// A request's status byte in guest memory.
type StatusByte<'m> = VolatileSlice<'m, ()>;

/// What a chain turned out to be.
enum Parsed<'d, 'm> {
    /// No usable status byte, or a byte the request would touch outside
    /// RAM (the header's 16, the status byte, any data byte): returned with
    /// length 0, nothing touched.
    Malformed,
    /// A status byte, but more data segments than SEG_MAX or one larger than
    /// SIZE_MAX: VIRTIO_BLK_S_IOERR, nothing else touched.
    TooLarge(StatusByte<'m>),
    Request(Request<'d, 'm>),
}

/// Splits a chain into header, data and status, checking directions, that
/// every byte the request touches lies in guest RAM (the header's first 16
/// bytes, the status byte, the data buffers whole; a longer header or
/// status descriptor's tail is never touched), and the segment limits.
fn parse<'d, 'm>(mem: &'m GuestMemoryMmap, descs: &'d [Descriptor]) -> Parsed<'d, 'm> {
    let Some((first, rest)) = descs.split_first() else {
        return Parsed::Malformed;
    };
    let Some((status, data)) = rest.split_last() else {
        return Parsed::Malformed;
    };
    if first.is_write_only() || first.len() < 16 || !status.is_write_only() || status.len() < 1 {
        return Parsed::Malformed;
    }
    // Every byte the request touches lies in RAM: the header's 16 and the
    // status byte as the slices they are then read and written through
    // (one look-up each), the data buffers whole.
    let (Ok(header), Ok(status_byte)) = (
        mem.get_slice(first.addr(), 16),
        mem.get_slice(status.addr(), 1),
    ) else {
        return Parsed::Malformed;
    };
    if !data
        .iter()
        .all(|d| mem.check_range(d.addr(), d.len() as usize))
    {
        return Parsed::Malformed;
    }
    if data.len() > SEG_MAX as usize || data.iter().any(|d| d.len() > SIZE_MAX) {
        return Parsed::TooLarge(status_byte);
    }
    let (Ok(kind), Ok(sector)) = (header.read_obj::<u32>(0), header.read_obj::<u64>(8)) else {
        return Parsed::Malformed;
    };
    Parsed::Request(Request {
        kind,
        sector,
        data,
        status: status_byte,
    })
}

impl Request<'_, '_> {
    /// What running it costs against WORK_BYTES_PER_EVENT.
    fn cost(&self) -> u64 {
        let bytes = match self.kind {
            VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
                // At most SEG_MAX * SIZE_MAX: no overflow.
                self.data.iter().map(|d| u64::from(d.len())).sum()
            }
            VIRTIO_BLK_T_FLUSH => FLUSH_COST,
            _ => 0,
        };
        bytes.max(MIN_COST)
    }
}

impl Block {
    /// Byte offset and total length of a data transfer, if inside the disk.
    fn span(&self, sector: u64, data: &[Descriptor]) -> Option<(u64, u64)> {
        let total = data
            .iter()
            .try_fold(0u64, |acc, d| acc.checked_add(u64::from(d.len())))?;
        if total % SECTOR_SIZE != 0 {
            return None;
        }
        let offset = sector.checked_mul(SECTOR_SIZE)?;
        let end = offset.checked_add(total)?;
        (end <= self.capacity_bytes).then_some((offset, total))
    }

    /// IN: one preadv into every data buffer (short reads continued); a
    /// single buffer, the common case, without building an iovec list.
    fn read(&mut self, mem: &GuestMemoryMmap, r: &Request) -> Result<u32, u8> {
        let (offset, total) = self.span(r.sector, r.data).ok_or(VIRTIO_BLK_S_IOERR)?;
        let fd = self.file.as_raw_fd();
        let done = match r.data {
            [one] => pread_slice_all(fd, &single_buffer(mem, one, true)?, offset),
            data => pread_all(
                fd,
                &chain_iovecs(mem, data, true).ok_or(VIRTIO_BLK_S_IOERR)?,
                offset,
            ),
        };
        done.map_err(|_| VIRTIO_BLK_S_IOERR)?;
        u32::try_from(total).map_err(|_| VIRTIO_BLK_S_IOERR)
    }

    /// OUT: one pwritev from every data buffer (short writes continued),
    /// a single buffer as in `read`.
    fn write(&mut self, mem: &GuestMemoryMmap, r: &Request) -> Result<u32, u8> {
        if self.read_only {
            return Err(VIRTIO_BLK_S_IOERR);
        }
        let (offset, _) = self.span(r.sector, r.data).ok_or(VIRTIO_BLK_S_IOERR)?;
        let fd = self.file.as_raw_fd();
        let done = match r.data {
            [one] => pwrite_slice_all(fd, &single_buffer(mem, one, false)?, offset),
            data => pwrite_all(
                fd,
                &chain_iovecs(mem, data, false).ok_or(VIRTIO_BLK_S_IOERR)?,
                offset,
            ),
        };
        done.map_err(|_| VIRTIO_BLK_S_IOERR)?;
        Ok(0)
    }

    fn get_id(&self, mem: &GuestMemoryMmap, r: &Request) -> Result<u32, u8> {
        let d = r.data.first().ok_or(VIRTIO_BLK_S_IOERR)?;
        if !d.is_write_only() {
            return Err(VIRTIO_BLK_S_IOERR);
        }
        let n = (d.len() as usize).min(VIRTIO_BLK_ID_BYTES);
        mem.write_slice(&self.id[..n], d.addr())
            .map_err(|_| VIRTIO_BLK_S_IOERR)?;
        Ok(n as u32)
    }

    /// Runs one request; returns the used length (bytes written to guest
    /// memory, status byte included).
    fn execute(&mut self, mem: &GuestMemoryMmap, r: &Request) -> u32 {
        let result = match r.kind {
            VIRTIO_BLK_T_IN => self.read(mem, r),
            VIRTIO_BLK_T_OUT => self.write(mem, r),
            VIRTIO_BLK_T_FLUSH => self
                .file
                .sync_data()
                .map(|_| 0)
                .map_err(|_| VIRTIO_BLK_S_IOERR),
            VIRTIO_BLK_T_GET_ID => self.get_id(mem, r),
            _ => Err(VIRTIO_BLK_S_UNSUPP),
        };
        let (written, status) = match result {
            Ok(n) => (n, VIRTIO_BLK_S_OK),
            Err(s) => (0, s),
        };
        complete(&r.status, status, written)
    }
}

/// A request's only data buffer, if it goes the expected way (device-
/// writable for IN) and lies in one region of guest RAM, as
/// `chain_iovecs` checks for a list.
fn single_buffer<'m>(
    mem: &'m GuestMemoryMmap,
    d: &Descriptor,
    write: bool,
) -> Result<VolatileSlice<'m, ()>, u8> {
    if d.is_write_only() != write {
        return Err(VIRTIO_BLK_S_IOERR);
    }
    mem.get_slice(d.addr(), d.len() as usize)
        .map_err(|_| VIRTIO_BLK_S_IOERR)
}

/// Writes the status byte; returns the used length (`written` data bytes
/// plus the status byte), 0 if the status byte cannot be written.
fn complete(status_byte: &StatusByte, status: u8, written: u32) -> u32 {
    if status_byte.write_obj(status, 0).is_err() {
        return 0;
    }
    written.saturating_add(1)
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        let ro = if self.read_only { VIRTIO_BLK_F_RO } else { 0 };
        VIRTIO_BLK_F_SIZE_MAX | VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_FLUSH | ro
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config_bytes(), offset, data);
    }

    fn activate(&mut self, a: Activation) -> Result<(), super::ActivateError> {
        let mut queues = a.queues.into_iter();
        let mut events = a.queue_events.into_iter();
        let (Some(queue), Some(notify)) = (queues.next(), events.next()) else {
            return Err(super::ActivateError::MissingQueues {
                device: "virtio-blk",
                needed: 1,
            });
        };
        self.state = State::Active {
            mem: a.mem,
            queue,
            notify,
            interrupt: a.interrupt,
            broken: false,
        };
        Ok(())
    }

    fn reset(&mut self) {
        self.state = State::Inactive;
    }

    fn queue_states(&self) -> Vec<virtio_queue::QueueState> {
        match &self.state {
            State::Active { queue, .. } => vec![queue.state()],
            State::Inactive => Vec::new(),
        }
    }

    /// fdatasync of the backing file, whatever the state (a write-back
    /// host page cache would otherwise hold the guest's last writes).
    fn shutdown(&mut self) {
        if self.read_only {
            return;
        }
        if let Err(e) = self.file.sync_data() {
            log::error!(
                "virtio-blk {}: cannot sync the disk at shutdown: {e}",
                self.name
            );
        }
    }

    /// Serves chains until WORK_BYTES_PER_EVENT data bytes or a queue's
    /// worth of chains are done, whichever comes first; if work may remain it
    /// writes the queue's own eventfd, so the event loop comes back after
    /// serving its other sources (no caller change needed).
    fn process_queue(&mut self, _index: usize) {
        let State::Active {
            mem,
            interrupt,
            broken,
            queue,
            ..
        } = &mut self.state
        else {
            return;
        };
        if *broken {
            return;
        }
        let (mem, interrupt) = (mem.clone(), interrupt.clone());
        let max_chains = queue.size();
        // One descriptor buffer for every chain of this call.
        let mut descs = std::mem::take(&mut self.descs);
        let mut chains = 0u16;
        let mut spent = 0u64;
        let mut more = false;
        loop {
            if chains == max_chains {
                more = true;
                break;
            }
            let State::Active { queue, broken, .. } = &mut self.state else {
                return;
            };
            // Loops are caught at queue size; seg_max is checked by parse
            // (more segments get IOERR, not a silent cut).
            descs.clear();
            let next = match super::pop_chain_into(queue, &mem, usize::from(max_chains), &mut descs)
            {
                Ok(next) => next,
                Err(e) => {
                    self.log.warn(
                        "broken",
                        format_args!(
                            "virtio-blk: queue broken by the driver ({e}); waiting for a reset"
                        ),
                    );
                    *broken = true;
                    break;
                }
            };
            let (head, chain) = match next {
                None => break,
                Some(super::Taken::Chain(head)) => (head, descs.as_slice()),
                Some(super::Taken::Bad { head, why }) => {
                    self.log.warn(
                        "bad-chain",
                        format_args!("virtio-blk: refusing chain {head}: {why}"),
                    );
                    (head, &[][..])
                }
            };
            // An empty chain parses as malformed: length 0, nothing touched.
            let used = match parse(&mem, chain) {
                Parsed::Malformed => {
                    spent = spent.saturating_add(MIN_COST);
                    0
                }
                Parsed::TooLarge(status) => {
                    spent = spent.saturating_add(MIN_COST);
                    complete(&status, VIRTIO_BLK_S_IOERR, 0)
                }
                Parsed::Request(r) => {
                    let cost = r.cost();
                    if spent > 0 && spent.saturating_add(cost) > WORK_BYTES_PER_EVENT {
                        // Leave it for the next turn.
                        queue.go_to_previous_position();
                        more = true;
                        break;
                    }
                    spent = spent.saturating_add(cost);
                    self.execute(&mem, &r)
                }
            };
            chains += 1;
            let State::Active { queue, .. } = &mut self.state else {
                return;
            };
            if let Err(e) = queue.add_used(&mem, head, used) {
                self.log.warn(
                    "add-used",
                    format_args!("virtio-blk: cannot return descriptor {head}: {e}"),
                );
            }
            if spent >= WORK_BYTES_PER_EVENT {
                more = true;
                break;
            }
        }
        self.descs = descs;
        let State::Active { notify, .. } = &mut self.state else {
            return;
        };
        if chains > 0 {
            interrupt.raise(INT_VRING);
        }
        if more {
            if let Err(e) = notify.write(1) {
                self.log.warn(
                    "rearm",
                    format_args!("virtio-blk: cannot re-signal the queue: {e}"),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use virtio_bindings::bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, GuestAddress};
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    const HDR: u64 = 0x1_0000;
    const DATA: u64 = 0x2_0000;
    const STATUS: u64 = 0x3_0000;
    const DISK_SECTORS: u64 = 64;
    const W: u16 = VRING_DESC_F_WRITE as u16;
    const N: u16 = VRING_DESC_F_NEXT as u16;

    struct Rig {
        mem: GuestMemoryMmap,
        path: std::path::PathBuf,
    }

    fn rig(name: &str) -> Rig {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let path = std::env::temp_dir().join(format!("ember-blk-{}-{name}", std::process::id()));
        let disk: Vec<u8> = (0..DISK_SECTORS * SECTOR_SIZE)
            .map(|i| (i / SECTOR_SIZE) as u8)
            .collect();
        std::fs::write(&path, disk).unwrap();
        Rig { mem, path }
    }

    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
    }

    fn header(mem: &GuestMemoryMmap, kind: u32, sector: u64) {
        mem.write_obj(kind, GuestAddress(HDR)).unwrap();
        mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
        mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
        mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    }

    /// Activates `dev` on `queue` with throwaway eventfds.
    fn start(dev: &mut Block, mem: &GuestMemoryMmap, queue: Queue) {
        dev.activate(Activation {
            mem: mem.clone(),
            queues: vec![queue],
            queue_events: vec![EventFd::new(EFD_NONBLOCK).unwrap()],
            interrupt: Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap())),
            acked_features: 0,
        })
        .unwrap();
    }

    /// Runs the chains through a device; returns (used len per chain, status byte).
    fn run(r: &Rig, read_only: bool, chains: &[RawDescriptor]) -> (Vec<u32>, u8) {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(&r.path)
            .unwrap();
        let mut dev = Block::new(file, read_only, "ember-test-disk").unwrap();
        let vq = MockSplitQueue::create(&r.mem, GuestAddress(0x8000), 16);
        vq.add_desc_chains(chains, 0).unwrap();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        dev.activate(Activation {
            mem: r.mem.clone(),
            queues: vec![vq.create_queue::<Queue>().unwrap()],
            queue_events: vec![EventFd::new(EFD_NONBLOCK).unwrap()],
            interrupt: Arc::new(Interrupt::new(irq.try_clone().unwrap())),
            acked_features: 0,
        })
        .unwrap();
        dev.process_queue(0);
        let used_idx: u16 = r.mem.read_obj(vq.used_addr().unchecked_add(2)).unwrap();
        let lens = (0..used_idx as u64)
            .map(|i| {
                r.mem
                    .read_obj::<u32>(vq.used_addr().unchecked_add(4 + i * 8 + 4))
                    .unwrap()
            })
            .collect();
        (lens, r.mem.read_obj(GuestAddress(STATUS)).unwrap())
    }

    fn disk(r: &Rig) -> Vec<u8> {
        let mut v = Vec::new();
        std::fs::File::open(&r.path)
            .unwrap()
            .read_to_end(&mut v)
            .unwrap();
        v
    }

    fn chain(data_len: u32, data_flags: u16) -> Vec<RawDescriptor> {
        vec![
            desc(HDR, 16, N, 1),
            desc(DATA, data_len, data_flags | N, 2),
            desc(STATUS, 1, W, 0),
        ]
    }

    #[test]
    fn reads_sectors_into_guest_memory() {
        let r = rig("read");
        header(&r.mem, VIRTIO_BLK_T_IN, 3);
        let (used, status) = run(&r, false, &chain(1024, W));
        assert_eq!((used, status), (vec![1025], VIRTIO_BLK_S_OK));
        let mut buf = [0u8; 1024];
        r.mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
        assert!(buf[..512].iter().all(|b| *b == 3) && buf[512..].iter().all(|b| *b == 4));
    }

    #[test]
    fn writes_reach_the_file_and_flush_syncs() {
        let r = rig("write");
        header(&r.mem, VIRTIO_BLK_T_OUT, 5);
        r.mem.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
        let (used, status) = run(&r, false, &chain(512, 0));
        assert_eq!((used, status), (vec![1], VIRTIO_BLK_S_OK));
        let d = disk(&r);
        assert!(d[5 * 512..6 * 512].iter().all(|b| *b == 0xab));
        assert!(d[6 * 512..7 * 512].iter().all(|b| *b == 6));
        header(&r.mem, VIRTIO_BLK_T_FLUSH, 0);
        let (used, status) = run(&r, false, &[desc(HDR, 16, N, 1), desc(STATUS, 1, W, 0)]);
        assert_eq!((used, status), (vec![1], VIRTIO_BLK_S_OK));
    }

    #[test]
    fn read_only_disks_refuse_writes_and_stay_byte_identical() {
        let r = rig("ro");
        let before = disk(&r);
        header(&r.mem, VIRTIO_BLK_T_OUT, 0);
        r.mem.write_slice(&[0xcd; 512], GuestAddress(DATA)).unwrap();
        let (used, status) = run(&r, true, &chain(512, 0));
        assert_eq!((used, status), (vec![1], VIRTIO_BLK_S_IOERR));
        assert_eq!(disk(&r), before);
    }

    #[test]
    fn out_of_range_and_misaligned_requests_are_ioerr() {
        let r = rig("range");
        let before = disk(&r);
        for (kind, sector, len) in [
            (VIRTIO_BLK_T_IN, DISK_SECTORS, 512),      // past the end
            (VIRTIO_BLK_T_IN, DISK_SECTORS - 1, 1024), // straddles the end
            (VIRTIO_BLK_T_IN, u64::MAX, 512),          // sector * 512 overflows
            (VIRTIO_BLK_T_IN, u64::MAX / 512, 512),    // offset + len overflows
            (VIRTIO_BLK_T_IN, 0, 100),                 // not a multiple of 512
            (VIRTIO_BLK_T_OUT, u64::MAX, 512),
        ] {
            header(&r.mem, kind, sector);
            let flags = if kind == VIRTIO_BLK_T_IN { W } else { 0 };
            let (used, status) = run(&r, false, &chain(len, flags));
            assert_eq!(
                (used, status),
                (vec![1], VIRTIO_BLK_S_IOERR),
                "{kind} {sector} {len}"
            );
        }
        assert_eq!(disk(&r), before);
    }

    #[test]
    fn wrong_direction_and_unknown_type() {
        let r = rig("dir");
        header(&r.mem, VIRTIO_BLK_T_IN, 0);
        assert_eq!(
            run(&r, false, &chain(512, 0)),
            (vec![1], VIRTIO_BLK_S_IOERR)
        );
        header(&r.mem, VIRTIO_BLK_T_OUT, 0);
        assert_eq!(
            run(&r, false, &chain(512, W)),
            (vec![1], VIRTIO_BLK_S_IOERR)
        );
        header(&r.mem, 77, 0);
        assert_eq!(
            run(&r, false, &chain(512, W)),
            (vec![1], VIRTIO_BLK_S_UNSUPP)
        );
    }

    #[test]
    fn get_id_returns_the_serial() {
        let r = rig("id");
        header(&r.mem, VIRTIO_BLK_T_GET_ID, 0);
        let (used, status) = run(&r, false, &chain(20, W));
        assert_eq!(
            (used, status),
            (vec![21], VIRTIO_BLK_S_OK),
            "20 id bytes + status"
        );
        let mut id = [0u8; 15];
        r.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id, b"ember-test-disk");
    }

    #[test]
    fn malformed_chains_complete_with_length_0_and_touch_nothing() {
        let r = rig("malformed");
        let before = disk(&r);
        header(&r.mem, VIRTIO_BLK_T_OUT, 0);
        let cases: Vec<Vec<RawDescriptor>> = vec![
            vec![desc(HDR, 16, 0, 0)], // header only
            vec![
                desc(HDR, 16, N, 1),
                desc(DATA, 512, N, 2),
                desc(STATUS, 1, 0, 0),
            ], // status read-only
            vec![desc(HDR, 8, N, 1), desc(STATUS, 1, W, 0)], // short header
            vec![desc(HDR, 16, W | N, 1), desc(STATUS, 1, W, 0)], // header write-only
            vec![
                desc(HDR, 16, N, 1),
                desc(2 << 20, 512, N, 2),
                desc(STATUS, 1, W, 0),
            ], // outside RAM
            vec![
                desc(2 << 20, 16, N, 1),
                desc(DATA, 512, N, 2),
                desc(STATUS, 1, W, 0),
            ], // header outside RAM
            vec![
                desc((1 << 20) - 8, 16, N, 1),
                desc(DATA, 512, N, 2),
                desc(STATUS, 1, W, 0),
            ], // header running past the end of RAM
            vec![
                desc(HDR, 16, N, 1),
                desc(DATA, 512, N, 2),
                desc(2 << 20, 1, W, 0),
            ], // status byte outside RAM
            vec![
                desc(HDR, 16, N, 1),
                desc(u64::MAX - 100, 512, N, 2),
                desc(STATUS, 1, W, 0),
            ], // wraps
            vec![
                desc(HDR, 16, N, 1),
                desc(DATA, u32::MAX, N, 2),
                desc(STATUS, 1, W, 0),
            ], // huge
        ];
        for c in cases {
            let (used, status) = run(&r, false, &c);
            assert_eq!(used, vec![0], "{c:?}");
            assert_eq!(status, 0xff, "status untouched");
        }
        assert_eq!(disk(&r), before);
    }

    #[test]
    fn next_or_head_beyond_the_queue_is_rejected() {
        let r = rig("next");
        let before = disk(&r);
        header(&r.mem, VIRTIO_BLK_T_OUT, 0);
        // `next` = 300 in a 16-entry queue: the chain stops at the header,
        // which alone is malformed.
        let (used, status) = run(&r, false, &[desc(HDR, 16, N, 300)]);
        assert_eq!((used, status), (vec![0], 0xff));
        assert_eq!(disk(&r), before);
    }

    #[test]
    fn a_looping_chain_is_refused_whole() {
        let r = rig("loop");
        header(&r.mem, VIRTIO_BLK_T_IN, 0);
        // 0 -> 1 -> 0 -> ...: refused after queue-size steps, length 0
        // (virtio-queue's iterator cut it, and the data buffer became the
        // status byte).
        r.mem.write_slice(&[0xee; 8], GuestAddress(DATA)).unwrap();
        let (used, status) = run(&r, false, &[desc(HDR, 16, N, 1), desc(DATA, 512, W | N, 0)]);
        assert_eq!((used, status), (vec![0], 0xff));
        assert_eq!(r.mem.read_obj::<u8>(GuestAddress(DATA)).unwrap(), 0xee);
    }

    #[test]
    fn a_refused_chain_between_good_ones_leaves_them_whole() {
        // The device keeps one descriptor buffer for every chain of a call:
        // a chain refused half-way must not leave descriptors behind for
        // the next one.
        let r = rig("between");
        header(&r.mem, VIRTIO_BLK_T_IN, 0);
        let i = VRING_DESC_F_INDIRECT as u16;
        let (used, status) = run(
            &r,
            false,
            &[
                desc(HDR, 16, N, 1),
                desc(DATA, 512, W | N, 2),
                desc(STATUS, 1, W, 0),
                desc(HDR, 16, N, 4),
                desc(DATA, 512, W | i, 0),
                desc(HDR, 16, N, 6),
                desc(DATA, 512, W | N, 7),
                desc(STATUS, 1, W, 0),
            ],
        );
        assert_eq!((used, status), (vec![513, 0, 513], VIRTIO_BLK_S_OK));
    }

    #[test]
    fn a_zero_length_data_buffer_reads_nothing_and_succeeds() {
        let r = rig("empty");
        header(&r.mem, VIRTIO_BLK_T_IN, 0);
        r.mem.write_slice(&[0xee; 8], GuestAddress(DATA)).unwrap();
        assert_eq!(run(&r, false, &chain(0, W)), (vec![1], VIRTIO_BLK_S_OK));
        assert_eq!(r.mem.read_obj::<u8>(GuestAddress(DATA)).unwrap(), 0xee);
    }

    #[test]
    fn a_chain_cut_by_next_beyond_the_queue_is_refused_whole() {
        let r = rig("cut");
        header(&r.mem, VIRTIO_BLK_T_IN, 0);
        r.mem.write_slice(&[0xee; 8], GuestAddress(DATA)).unwrap();
        // The data descriptor chains to 300 in a 16-entry queue: the real
        // status descriptor is never reached. Before, virtio-queue stopped
        // there and the data buffer was taken as the status byte.
        let (used, status) = run(
            &r,
            false,
            &[
                desc(HDR, 16, N, 1),
                desc(DATA, 512, W | N, 300),
                desc(STATUS, 1, W, 0),
            ],
        );
        assert_eq!((used, status), (vec![0], 0xff), "status untouched");
        assert_eq!(
            r.mem.read_obj::<u8>(GuestAddress(DATA)).unwrap(),
            0xee,
            "no status written into the data buffer"
        );
    }

    #[test]
    fn indirect_descriptors_are_refused_when_not_negotiated() {
        let r = rig("indirect");
        header(&r.mem, VIRTIO_BLK_T_IN, 0);
        // An indirect table at 0x5_0000 holding a good read request.
        let table = [
            desc(HDR, 16, N, 1),
            desc(DATA, 512, W | N, 2),
            desc(STATUS, 1, W, 0),
        ];
        for (i, d) in table.iter().enumerate() {
            r.mem
                .write_obj(*d, GuestAddress(0x5_0000 + 16 * i as u64))
                .unwrap();
        }
        let indirect = VRING_DESC_F_INDIRECT as u16;
        let (used, status) = run(&r, false, &[desc(0x5_0000, 48, indirect, 0)]);
        assert_eq!((used, status), (vec![0], 0xff), "not followed");
    }

    #[test]
    fn chains_over_4_gib_in_total_are_refused_whole() {
        let r = rig("4g");
        header(&r.mem, VIRTIO_BLK_T_IN, 0);
        let (used, status) = run(
            &r,
            false,
            &[
                desc(HDR, 16, N, 1),
                desc(DATA, 0x8000_0000, W | N, 2),
                desc(DATA, 0x8000_0000, W | N, 3),
                desc(STATUS, 1, W, 0),
            ],
        );
        assert_eq!((used, status), (vec![0], 0xff));
    }

    #[test]
    fn avail_index_too_far_ahead_breaks_the_queue_without_processing() {
        let r = rig("avail");
        header(&r.mem, VIRTIO_BLK_T_IN, 0);
        let file = std::fs::File::open(&r.path).unwrap();
        let mut dev = Block::new(file, true, "x").unwrap();
        let vq = MockSplitQueue::create(&r.mem, GuestAddress(0x8000), 16);
        vq.add_desc_chains(&chain(512, W), 0).unwrap();
        r.mem
            .write_obj(100u16, vq.avail_addr().unchecked_add(2))
            .unwrap();
        start(&mut dev, &r.mem, vq.create_queue::<Queue>().unwrap());
        dev.process_queue(0);
        dev.process_queue(0);
        let used_idx: u16 = r.mem.read_obj(vq.used_addr().unchecked_add(2)).unwrap();
        assert_eq!(used_idx, 0);
        assert_eq!(r.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0xff);
    }

    #[test]
    fn disk_size_must_be_whole_sectors() {
        let path = std::env::temp_dir().join(format!("ember-blk-{}-odd", std::process::id()));
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&[0; 1000])
            .unwrap();
        let e = Block::new(std::fs::File::open(&path).unwrap(), true, "x")
            .err()
            .unwrap();
        assert!(matches!(e, BlockError::Size(1000)));
    }

    /// A disk of `sectors` sectors (sparse past the first 64) and a device on
    /// a `size`-entry queue whose avail ring the test fills itself.
    fn big_device(
        r: &Rig,
        sectors: u64,
        size: u16,
    ) -> (Block, MockSplitQueue<'_, GuestMemoryMmap>, EventFd) {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&r.path)
            .unwrap();
        file.set_len(sectors * SECTOR_SIZE).unwrap();
        let mut dev = Block::new(file, false, "big").unwrap();
        let vq = MockSplitQueue::create(&r.mem, GuestAddress(0x8000), size);
        let notify = EventFd::new(EFD_NONBLOCK).unwrap();
        // The mock puts its used ring 4 + size bytes after the avail ring,
        // inside it for big queues: move it out of the way.
        let mut q = vq.create_queue::<Queue>().unwrap();
        q.try_set_used_ring_address(GuestAddress(USED)).unwrap();
        dev.activate(Activation {
            mem: r.mem.clone(),
            queues: vec![q],
            queue_events: vec![notify.try_clone().unwrap()],
            interrupt: Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap())),
            acked_features: 0,
        })
        .unwrap();
        (dev, vq, notify)
    }

    /// Writes descriptors at table index 0.. (as they are: flags and next
    /// included) and makes `heads` available.
    fn post(
        mem: &GuestMemoryMmap,
        vq: &MockSplitQueue<GuestMemoryMmap>,
        descs: &[RawDescriptor],
        heads: &[u16],
    ) {
        for (i, d) in descs.iter().enumerate() {
            vq.desc_table().store(i as u16, *d).unwrap();
        }
        let size = vq.desc_table().total_size() / 16;
        let idx_addr = vq.avail_addr().unchecked_add(2);
        let mut idx: u16 = mem.read_obj(idx_addr).unwrap();
        for h in heads {
            let slot = vq
                .avail_addr()
                .unchecked_add(4 + 2 * (u64::from(idx) % size));
            mem.write_obj(*h, slot).unwrap();
            idx = idx.wrapping_add(1);
        }
        mem.write_obj(idx, idx_addr).unwrap();
    }

    /// Where `big_device` puts the used ring.
    const USED: u64 = 0xc000;

    fn used_ring(mem: &GuestMemoryMmap, vq: &MockSplitQueue<GuestMemoryMmap>) -> Vec<(u32, u32)> {
        let used = GuestAddress(USED);
        let idx: u16 = mem.read_obj(used.unchecked_add(2)).unwrap();
        let size = vq.desc_table().total_size() / 16;
        (0..u64::from(idx).min(size))
            .map(|i| {
                let e = used.unchecked_add(4 + i * 8);
                (
                    mem.read_obj(e).unwrap(),
                    mem.read_obj(e.unchecked_add(4)).unwrap(),
                )
            })
            .collect()
    }

    /// A chain at index 0: header, `segs` data segments of `len` bytes (all
    /// on the same guest buffer, which is legal), status.
    fn wide_chain(segs: u16, len: u32, flags: u16) -> Vec<RawDescriptor> {
        let mut c = vec![desc(HDR, 16, N, 1)];
        for i in 0..segs {
            c.push(desc(DATA, len, flags | N, i + 2));
        }
        c.push(desc(STATUS, 1, W, 0));
        c
    }

    #[test]
    fn size_max_and_seg_max_are_advertised_and_enforced() {
        let r = rig("limits");
        let file = std::fs::File::open(&r.path).unwrap();
        let dev = Block::new(file, true, "x").unwrap();
        assert_ne!(dev.features() & VIRTIO_BLK_F_SIZE_MAX, 0);
        assert_ne!(dev.features() & VIRTIO_BLK_F_SEG_MAX, 0);
        let mut c = [0u8; 8];
        dev.read_config(8, &mut c);
        assert_eq!(u32::from_le_bytes(c[..4].try_into().unwrap()), SIZE_MAX);
        assert_eq!(u32::from_le_bytes(c[4..].try_into().unwrap()), SEG_MAX);
        assert!(u64::from(SIZE_MAX) * u64::from(SEG_MAX) <= WORK_BYTES_PER_EVENT);

        for (segs, len) in [
            (1u16, SIZE_MAX + 512),     // one segment too large
            (SEG_MAX as u16 + 1, 512),  // one segment too many
            (SEG_MAX as u16, SIZE_MAX), // at the limits: fine
        ] {
            let r = rig("limits2");
            header(&r.mem, VIRTIO_BLK_T_IN, 0);
            r.mem.write_slice(&[0xee; 64], GuestAddress(DATA)).unwrap();
            let (mut dev, vq, _) = big_device(&r, 16384, 256);
            post(&r.mem, &vq, &wide_chain(segs, len, W), &[0]);
            dev.process_queue(0);
            let status: u8 = r.mem.read_obj(GuestAddress(STATUS)).unwrap();
            let over = len > SIZE_MAX || u32::from(segs) > SEG_MAX;
            if over {
                assert_eq!(status, VIRTIO_BLK_S_IOERR, "{segs} x {len}");
                assert_eq!(used_ring(&r.mem, &vq), vec![(0, 1)]);
                let mut b = [0u8; 64];
                r.mem.read_slice(&mut b, GuestAddress(DATA)).unwrap();
                assert_eq!(b, [0xee; 64], "no data moved");
            } else {
                assert_eq!(status, VIRTIO_BLK_S_OK);
                let want = u32::from(segs) * len + 1;
                assert_eq!(used_ring(&r.mem, &vq), vec![(0, want)]);
            }
        }
    }

    #[test]
    fn a_flood_of_maximal_requests_is_served_4_mib_per_event_and_re_arms() {
        let r = rig("flood");
        header(&r.mem, VIRTIO_BLK_T_IN, 0);
        let (mut dev, vq, notify) = big_device(&r, 16384, 256);
        // 256 avail entries, every one the same legal 4 MiB read.
        post(
            &r.mem,
            &vq,
            &wide_chain(SEG_MAX as u16, SIZE_MAX, W),
            &[0; 256],
        );
        let request = u64::from(SEG_MAX) * u64::from(SIZE_MAX);
        let mut calls = 0;
        let mut served = 0;
        while served < 256 {
            dev.process_queue(0);
            calls += 1;
            let used = used_ring(&r.mem, &vq);
            let this_call = &used[served..];
            let bytes: u64 = this_call.iter().map(|(_, len)| u64::from(*len - 1)).sum();
            assert!(bytes <= WORK_BYTES_PER_EVENT, "{bytes} bytes in one call");
            assert!(!this_call.is_empty(), "progress every call");
            assert!(this_call.iter().all(|e| *e == (0, request as u32 + 1)));
            served = used.len();
            if served < 256 {
                assert_eq!(notify.read().unwrap(), 1, "re-armed while work remains");
            }
            assert!(calls <= 256);
        }
        assert_eq!(calls, 256, "one 4 MiB request per call");
    }

    #[test]
    fn a_flood_of_oversized_claims_is_refused_cheaply() {
        let r = rig("claims");
        header(&r.mem, VIRTIO_BLK_T_IN, 0);
        let (mut dev, vq, _) = big_device(&r, 16384, 256);
        // 256 chains claiming 256 MiB each: outside this 1 MiB guest, and
        // over size_max anyway. Then the same with 64 KiB segments in RAM.
        post(&r.mem, &vq, &wide_chain(1, 256 << 20, W), &[0; 256]);
        dev.process_queue(0);
        let used = used_ring(&r.mem, &vq);
        assert_eq!(used, vec![(0, 0); 256], "malformed: length 0");
        assert_eq!(r.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0xff);
        let r = rig("claims2");
        header(&r.mem, VIRTIO_BLK_T_IN, 0);
        let (mut dev, vq, _) = big_device(&r, 16384, 256);
        post(&r.mem, &vq, &wide_chain(1, 64 << 10, W), &[0; 256]);
        dev.process_queue(0);
        assert_eq!(used_ring(&r.mem, &vq), vec![(0, 1); 256]);
        assert_eq!(
            r.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(),
            VIRTIO_BLK_S_IOERR
        );
    }

    #[test]
    fn shutdown_syncs_an_inactive_and_an_active_disk_and_returns() {
        let r = rig("shutdown");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&r.path)
            .unwrap();
        let mut dev = Block::new(file, false, "sd").unwrap();
        dev.shutdown();
        let vq = MockSplitQueue::create(&r.mem, GuestAddress(0x8000), 16);
        header(&r.mem, VIRTIO_BLK_T_OUT, 1);
        r.mem.write_slice(&[0x5a; 512], GuestAddress(DATA)).unwrap();
        vq.add_desc_chains(&chain(512, 0), 0).unwrap();
        start(&mut dev, &r.mem, vq.create_queue::<Queue>().unwrap());
        dev.process_queue(0);
        dev.shutdown();
        dev.shutdown();
        assert!(disk(&r)[512..1024].iter().all(|b| *b == 0x5a));
        // Through the transport too, in any state.
        let file = std::fs::File::open(&r.path).unwrap();
        let mut t = crate::virtio::mmio::MmioTransport::new(
            Box::new(Block::new(file, true, "ro").unwrap()),
            r.mem.clone(),
            EventFd::new(EFD_NONBLOCK).unwrap(),
        )
        .unwrap();
        t.shutdown();
    }

    #[test]
    fn the_same_head_made_available_twice_is_completed_once_per_entry() {
        let r = rig("twice");
        header(&r.mem, VIRTIO_BLK_T_IN, 2);
        let (mut dev, vq, _) = big_device(&r, 64, 16);
        post(&r.mem, &vq, &chain(512, W), &[0, 0, 0]);
        dev.process_queue(0);
        dev.process_queue(0);
        // Three avail entries, three used entries, each the whole request.
        assert_eq!(used_ring(&r.mem, &vq), vec![(0, 513); 3]);
        assert_eq!(r.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0);
        let mut b = [0u8; 512];
        r.mem.read_slice(&mut b, GuestAddress(DATA)).unwrap();
        assert!(b.iter().all(|x| *x == 2), "sector 2, not a mix");
    }

    #[test]
    fn a_backing_file_error_is_ioerr_and_the_device_keeps_working() {
        // The file is open read-only but the device was told it is
        // writable: every write fails at run time (EBADF), as a full or
        // failing disk would.
        let r = rig("ioerr");
        let file = std::fs::File::open(&r.path).unwrap();
        let mut dev = Block::new(file, false, "failing").unwrap();
        let vq = MockSplitQueue::create(&r.mem, GuestAddress(0x8000), 16);
        header(&r.mem, VIRTIO_BLK_T_OUT, 0);
        r.mem.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
        vq.add_desc_chains(&chain(512, 0), 0).unwrap();
        start(&mut dev, &r.mem, vq.create_queue::<Queue>().unwrap());
        dev.process_queue(0);
        assert_eq!(
            r.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(),
            VIRTIO_BLK_S_IOERR
        );
        // The next request (a read) is served normally.
        header(&r.mem, VIRTIO_BLK_T_IN, 3);
        vq.add_desc_chains(&chain(512, W), 0).unwrap(); // table reused: the first is done
        dev.process_queue(0);
        assert_eq!(
            r.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(),
            VIRTIO_BLK_S_OK
        );
        let mut b = [0u8; 512];
        r.mem.read_slice(&mut b, GuestAddress(DATA)).unwrap();
        assert!(b.iter().all(|x| *x == 3));
        let used_idx: u16 = r.mem.read_obj(vq.used_addr().unchecked_add(2)).unwrap();
        assert_eq!(used_idx, 2);
    }

    /// BAD_INPUTS 16: a disk on a full tmpfs. Writes past the space fail
    /// with ENOSPC at run time: IOERR to the guest, and the device serves
    /// the next request.
    #[test]
    #[ignore = "needs root (mounts a tmpfs); make test runs it"]
    fn a_disk_on_a_full_filesystem_gets_ioerr_and_keeps_working() {
        let dir = std::env::temp_dir().join(format!("ember-blk-full-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(&dir)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount a 64 KiB tmpfs (needs root)");
        struct Unmount(std::path::PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount").arg(&self.0).status();
                let _ = std::fs::remove_dir(&self.0);
            }
        }
        let _unmount = Unmount(dir.clone());
        // A sparse 1 MiB disk on a 64 KiB filesystem, which a filler file
        // then fills up.
        let path = dir.join("disk.img");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        file.set_len(1 << 20).unwrap();
        let mut filler = std::fs::File::create(dir.join("filler")).unwrap();
        while filler.write_all(&[0u8; 4096]).is_ok() {}
        let mut dev = Block::new(file, false, "full").unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let vq = MockSplitQueue::create(&mem, GuestAddress(0x8000), 16);
        header(&mem, VIRTIO_BLK_T_OUT, 100);
        mem.write_slice(&[0xcd; 4096], GuestAddress(DATA)).unwrap();
        vq.add_desc_chains(&chain(4096, 0), 0).unwrap();
        start(&mut dev, &mem, vq.create_queue::<Queue>().unwrap());
        dev.process_queue(0);
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(),
            VIRTIO_BLK_S_IOERR,
            "a write with no space left is an I/O error"
        );
        // A read of a hole needs no space: served.
        header(&mem, VIRTIO_BLK_T_IN, 0);
        vq.add_desc_chains(&chain(512, W), 0).unwrap();
        dev.process_queue(0);
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(),
            VIRTIO_BLK_S_OK
        );
        let used_idx: u16 = mem.read_obj(vq.used_addr().unchecked_add(2)).unwrap();
        assert_eq!(used_idx, 2);
    }
}
