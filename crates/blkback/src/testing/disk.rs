//! Disks for tests: a RAM disk, and one whose completions lag, whose
//! queues fill, that can hang or refuse large transfers.

use block::View;
use drivers::block::{BlockCompletion, BlockDevice, BlockRequest, Features, RamDisk, Token, Volumes};
use std::collections::VecDeque;
use std::vec::Vec;
use xen::evtchn::fake::FakeEvents;
use xen::evtchn::EventOps;
use xen::gnttab::fake::FrameBuf;

use super::DISK_SECTORS;

// ---------------------------------------------------------------------------
// A disk whose completions lag behind submission, with a log of what it saw.

/// What the disk saw: (kind R/W/F/D/Z, lba).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskEv {
    /// Submitted.
    Submit(char, u64),
    /// Completed.
    Done(char, u64),
}

/// Wraps a [`RamDisk`]: data takes effect at submit, but each completion is
/// only handed out after `delay` further polls of its queue, and each queue
/// holds at most `depth` requests (then `QueueFull`).
pub struct SlowDisk {
    /// The data.
    pub inner: RamDisk<Buf>,
    /// Polls of its queue before a completion is handed out.
    pub delay: u32,
    /// Requests a queue holds before `QueueFull`.
    pub depth: usize,
    /// Completions held back, per queue.
    pub held: Vec<VecDeque<(u32, BlockCompletion<Buf>)>>,
    /// What the disk saw, in order.
    pub log: Vec<DiskEv>,
    /// A hung device: nothing completes; each poll lets a second of
    /// simulated time pass on `clock` (the event hub's clock, which the
    /// shell's drain deadline reads).
    pub stuck: bool,
    /// The event hub's clock (see `stuck`).
    pub clock: Option<FakeEvents>,
    /// Like the NVMe driver: buffers above this transfer limit are refused.
    pub limit: Option<usize>,
    /// The largest buffer submitted.
    pub largest: usize,
}

impl SlowDisk {
    /// `queues` queues of `depth`, completions `delay` polls late.
    pub fn new(sectors: u64, queues: u16, delay: u32, depth: usize) -> Self {
        SlowDisk {
            inner: RamDisk::new(512, sectors, queues, 4),
            delay,
            depth,
            held: (0..queues).map(|_| VecDeque::new()).collect(),
            log: Vec::new(),
            stuck: false,
            clock: None,
            limit: None,
            largest: 0,
        }
    }

    /// This disk with a transfer limit of `limit` bytes.
    pub fn with_limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }
}

fn kind(r: &BlockRequest<Buf>) -> (char, u64) {
    match r {
        BlockRequest::Read { lba, .. } | BlockRequest::ReadSg { lba, .. } => ('R', *lba),
        BlockRequest::Write { lba, .. } | BlockRequest::WriteSg { lba, .. } => ('W', *lba),
        BlockRequest::Flush => ('F', 0),
        BlockRequest::Discard { lba, .. } => ('D', *lba),
        BlockRequest::WriteZeroes { lba, .. } => ('Z', *lba),
    }
}

impl BlockDevice for SlowDisk {
    type Buffer = Buf;
    fn block_size(&self) -> u32 {
        self.inner.block_size()
    }
    fn capacity(&self) -> u64 {
        self.inner.capacity()
    }
    fn queue_count(&self) -> u16 {
        self.inner.queue_count()
    }
    fn max_transfer(&self) -> usize {
        self.limit.unwrap_or_else(|| self.inner.max_transfer())
    }
    fn features(&self) -> Features {
        self.inner.features()
    }
    fn submit(&mut self, queue: u16, request: BlockRequest<Buf>) -> Result<Token, (drivers::Error, BlockRequest<Buf>)> {
        let len = request.buffer().map(|b| b.len()).unwrap_or(0);
        if len > self.max_transfer() {
            return Err((drivers::Error::BadBuffer, request));
        }
        self.largest = self.largest.max(len);
        if self.held.get(usize::from(queue)).is_some_and(|h| h.len() >= self.depth) {
            return Err((drivers::Error::QueueFull, request));
        }
        let (k, lba) = kind(&request);
        let tok = self.inner.submit(queue, request)?;
        let c = self.inner.poll(queue, 0).expect("the RamDisk completes at submit");
        self.log.push(DiskEv::Submit(k, lba));
        self.held[usize::from(queue)].push_back((self.delay, c));
        Ok(tok)
    }
    fn poll(&mut self, queue: u16, _now: u64) -> Option<BlockCompletion<Buf>> {
        if self.stuck {
            if let Some(c) = self.clock.as_mut() {
                let now = c.now();
                let _ = c.wait_any(&[], now + 1_000_000_000);
            }
            return None;
        }
        let h = self.held.get_mut(usize::from(queue))?;
        let front = h.front_mut()?;
        if front.0 > 0 {
            front.0 -= 1;
            return None;
        }
        let (_, c) = h.pop_front()?;
        let (k, lba) = kind(&c.request);
        self.log.push(DiskEv::Done(k, lba));
        Some(c)
    }
}

/// Disk buffers: frames of the backend domain that grant copies can name
/// (the CPU's view and the frames' meet only at the syncs).
pub type Buf = FrameBuf;

/// A RAM disk of [`DISK_SECTORS`] with `queues` queues.
pub fn ram(queues: u16) -> RamDisk<Buf> {
    RamDisk::new(512, DISK_SECTORS, queues, 64)
}

/// A disk's whole contents.
pub trait DiskBytes {
    /// Copy of every byte.
    fn bytes(&self) -> Vec<u8>;
}
impl DiskBytes for RamDisk<Buf> {
    fn bytes(&self) -> Vec<u8> {
        self.contents().to_vec()
    }
}
impl DiskBytes for SlowDisk {
    fn bytes(&self) -> Vec<u8> {
        self.inner.contents().to_vec()
    }
}

impl Volumes for SlowDisk {}

/// What the test opener hands the backend: a [`View`] of a test disk that
/// reports a volatile write cache when `cache` is set (so flush and
/// barrier are offered over a RAM disk).
pub struct TestDisk<D: Volumes<Buffer = Buf>> {
    /// The view of the disk.
    pub view: View<D>,
    /// Report a volatile write cache.
    pub cache: bool,
}

impl<D: Volumes<Buffer = Buf>> BlockDevice for TestDisk<D> {
    type Buffer = Buf;
    fn block_size(&self) -> u32 {
        self.view.block_size()
    }
    fn capacity(&self) -> u64 {
        self.view.capacity()
    }
    fn queue_count(&self) -> u16 {
        self.view.queue_count()
    }
    fn max_transfer(&self) -> usize {
        self.view.max_transfer()
    }
    fn features(&self) -> Features {
        let mut f = self.view.features();
        f.volatile_cache |= self.cache && !self.view.readonly();
        f
    }
    fn submit(&mut self, queue: u16, request: BlockRequest<Buf>) -> Result<Token, (drivers::Error, BlockRequest<Buf>)> {
        self.view.submit(queue, request)
    }
    fn poll(&mut self, queue: u16, now: u64) -> Option<BlockCompletion<Buf>> {
        self.view.poll(queue, now)
    }
    fn scatter_gather(&self) -> bool {
        self.view.scatter_gather()
    }
    fn accepts_sg(&self, sg: &[drivers::block::SgEntry]) -> bool {
        self.view.accepts_sg(sg)
    }
}
