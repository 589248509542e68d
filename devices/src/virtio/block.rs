//! virtio-blk against a host file: IN, OUT, FLUSH (fdatasync), GET_ID.
//! Every descriptor is checked before the file or guest memory is touched;
//! every sector and length uses checked arithmetic; a malformed chain is
//! returned with length 0 so the queue never wedges.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::sync::Arc;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::{Activation, Interrupt, VirtioDevice, INT_VRING};
use crate::ratelimit::LogLimiter;

pub const SECTOR_SIZE: u64 = 512;
const QUEUE_SIZE: u16 = 256;
const VIRTIO_ID_BLOCK: u32 = 2;
const VIRTIO_BLK_F_SIZE_MAX: u64 = 1 << 1;
const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
/// Largest single data segment and segment count the device accepts.
const SIZE_MAX: u32 = 1 << 20;
const SEG_MAX: u32 = (QUEUE_SIZE - 2) as u32;
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
    state: State,
    queue_sizes: [u16; 1],
    /// Every guest-triggerable line goes through here.
    log: LogLimiter,
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
            state: State::Inactive,
            queue_sizes: [QUEUE_SIZE],
            log: LogLimiter::new(),
        })
    }

    fn config_bytes(&self) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0..8].copy_from_slice(&(self.capacity_bytes / SECTOR_SIZE).to_le_bytes());
        c[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        c
    }
}

/// The guest's request, parsed and checked.
struct Request {
    kind: u32,
    sector: u64,
    data: Vec<Descriptor>,
    status: Descriptor,
}

/// Splits a chain into header, data and status, checking directions and
/// that every buffer lies in guest RAM. None: malformed.
fn parse(mem: &GuestMemoryMmap, descs: Vec<Descriptor>) -> Option<Request> {
    let (first, rest) = descs.split_first()?;
    let (status, data) = rest.split_last()?;
    if first.is_write_only() || first.len() < 16 || !status.is_write_only() || status.len() < 1 {
        return None;
    }
    let all_in_ram = descs
        .iter()
        .all(|d| mem.check_range(d.addr(), d.len() as usize));
    if !all_in_ram {
        return None;
    }
    let kind: u32 = mem.read_obj(first.addr()).ok()?;
    let sector: u64 = mem.read_obj(first.addr().checked_add(8)?).ok()?;
    Some(Request {
        kind,
        sector,
        data: data.to_vec(),
        status: *status,
    })
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

    fn read(&mut self, mem: &GuestMemoryMmap, r: &Request) -> Result<u32, u8> {
        if r.data.iter().any(|d| !d.is_write_only()) {
            return Err(VIRTIO_BLK_S_IOERR);
        }
        let (mut offset, total) = self.span(r.sector, &r.data).ok_or(VIRTIO_BLK_S_IOERR)?;
        for d in &r.data {
            self.file
                .seek(SeekFrom::Start(offset))
                .map_err(|_| VIRTIO_BLK_S_IOERR)?;
            mem.read_exact_volatile_from(d.addr(), &mut self.file, d.len() as usize)
                .map_err(|_| VIRTIO_BLK_S_IOERR)?;
            offset += u64::from(d.len());
        }
        u32::try_from(total).map_err(|_| VIRTIO_BLK_S_IOERR)
    }

    fn write(&mut self, mem: &GuestMemoryMmap, r: &Request) -> Result<u32, u8> {
        if self.read_only || r.data.iter().any(|d| d.is_write_only()) {
            return Err(VIRTIO_BLK_S_IOERR);
        }
        let (mut offset, _) = self.span(r.sector, &r.data).ok_or(VIRTIO_BLK_S_IOERR)?;
        for d in &r.data {
            self.file
                .seek(SeekFrom::Start(offset))
                .map_err(|_| VIRTIO_BLK_S_IOERR)?;
            mem.write_all_volatile_to(d.addr(), &mut self.file, d.len() as usize)
                .map_err(|_| VIRTIO_BLK_S_IOERR)?;
            offset += u64::from(d.len());
        }
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
    /// memory, status byte included), 0 for a malformed chain.
    fn execute(&mut self, mem: &GuestMemoryMmap, descs: Vec<Descriptor>) -> u32 {
        let Some(r) = parse(mem, descs) else { return 0 };
        let result = match r.kind {
            VIRTIO_BLK_T_IN => self.read(mem, &r),
            VIRTIO_BLK_T_OUT => self.write(mem, &r),
            VIRTIO_BLK_T_FLUSH => self
                .file
                .sync_data()
                .map(|_| 0)
                .map_err(|_| VIRTIO_BLK_S_IOERR),
            VIRTIO_BLK_T_GET_ID => self.get_id(mem, &r),
            _ => Err(VIRTIO_BLK_S_UNSUPP),
        };
        let (written, status) = match result {
            Ok(n) => (n, VIRTIO_BLK_S_OK),
            Err(s) => (0, s),
        };
        if mem.write_obj(status, r.status.addr()).is_err() {
            return 0;
        }
        written.saturating_add(1)
    }
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

    fn activate(&mut self, a: Activation) -> Result<(), String> {
        let mut queues = a.queues.into_iter();
        let mut events = a.queue_events.into_iter();
        let (Some(queue), Some(notify)) = (queues.next(), events.next()) else {
            return Err("virtio-blk needs one queue".into());
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

    /// Serves at most one queue's worth of chains, then re-signals itself
    /// if more wait, so one busy disk cannot starve the event loop.
    fn process_queue(&mut self, _index: usize) {
        let State::Active {
            mem,
            queue,
            notify,
            interrupt,
            broken,
        } = &mut self.state
        else {
            return;
        };
        if *broken {
            return;
        }
        let _ = notify;
        let (mem, interrupt) = (mem.clone(), interrupt.clone());
        let mut done = 0u16;
        let budget = queue.size();
        let mut pending = Vec::new();
        while done < budget {
            let State::Active { queue, broken, .. } = &mut self.state else {
                return;
            };
            let next = match super::pop_chain(queue, &mem) {
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
            let Some((head, descs)) = next else { break };
            let used = self.execute(&mem, descs);
            pending.push((head, used));
            done += 1;
        }
        let State::Active { queue, notify, .. } = &mut self.state else {
            return;
        };
        for (head, used) in pending {
            if let Err(e) = queue.add_used(&mem, head, used) {
                self.log.warn(
                    "add-used",
                    format_args!("virtio-blk: cannot return descriptor {head}: {e}"),
                );
            }
        }
        if done > 0 {
            interrupt.raise(INT_VRING);
        }
        if done == budget {
            let _ = notify.write(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;
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
    fn a_looping_chain_terminates() {
        let r = rig("loop");
        header(&r.mem, VIRTIO_BLK_T_IN, 0);
        // 0 -> 1 -> 0 -> ...: the chain iterator stops after queue-size steps.
        let (used, _) = run(&r, false, &[desc(HDR, 16, N, 1), desc(DATA, 512, W | N, 0)]);
        assert_eq!(used.len(), 1);
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
        dev.activate(Activation {
            mem: r.mem.clone(),
            queues: vec![vq.create_queue::<Queue>().unwrap()],
            queue_events: vec![EventFd::new(EFD_NONBLOCK).unwrap()],
            interrupt: Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap())),
            acked_features: 0,
        })
        .unwrap();
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
}
