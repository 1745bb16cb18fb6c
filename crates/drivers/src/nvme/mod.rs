//! Polled NVMe driver.
//!
//! - [`regs`]: controller registers (typed), [`spec`]: queue entries,
//!   commands, identify data, [`prp`]: PRP construction, [`queue`]: rings.
//! - [`Nvme`]: bring-up ([`Nvme::init`]), split-phase I/O through
//!   [`BlockDevice`] ([`Nvme::submit`], [`Nvme::poll`]), command timeout →
//!   Abort → controller reset with every in-flight command failed back.
//!
//! Everything that waits on the controller has a deadline: CAP.TO for RDY
//! transitions, [`Config::admin_timeout_ns`] for admin commands during
//! bring-up/reset, [`Config::io_timeout_ns`] and
//! [`Config::abort_timeout_ns`] for I/O (checked in `poll` with the `now`
//! passed in).

mod controller;
mod io;
pub mod prp;
pub mod queue;
pub mod regs;
pub mod spec;

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use crate::block::{check_range, BlockCompletion, BlockDevice, BlockRequest, Features, SgEntry, Token, Volumes};
use crate::error::{Error, Wait};
use crate::hal::{Clock, DmaBuffer, DmaDirection, DmaMapper, DmaRegion, Mapping, Nanos, RegisterIo, PAGE_SIZE};
use queue::QueuePair;
use regs::{offset, Aqa, Cap, Version};
use spec::Cqe;

/// Driver settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// I/O queue pairs wanted (fewer if the controller grants fewer).
    pub io_queues: u16,
    /// Entries per I/O queue wanted; the driver uses
    /// min(CAP.MQES + 1, this, 4096).
    pub queue_depth: u16,
    /// Admin queue entries (2..=4096, also capped by CAP.MQES + 1).
    pub admin_depth: u16,
    /// Namespace served.
    pub nsid: u32,
    /// Largest read/write in bytes we accept (further capped by MDTS).
    pub max_transfer: usize,
    /// An admin command not answered within this fails bring-up/reset.
    pub admin_timeout_ns: u64,
    /// An I/O command not completed within this gets an Abort.
    pub io_timeout_ns: u64,
    /// After an Abort, the command has this long to come back before the
    /// controller is reset.
    pub abort_timeout_ns: u64,
    /// Describe data with SGLs when the controller supports them (Identify
    /// Controller SGLS); PRPs otherwise.
    pub use_sgl: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            io_queues: 1,
            queue_depth: 64,
            admin_depth: 32,
            nsid: 1,
            max_transfer: 128 * 1024,
            admin_timeout_ns: 5_000_000_000,
            io_timeout_ns: 30_000_000_000,
            abort_timeout_ns: 5_000_000_000,
            use_sgl: true,
        }
    }
}

/// The most namespaces one controller may contribute.
pub const MAX_NAMESPACES: usize = 16;

/// One active namespace the driver can serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub nsid: u32,
    /// Bytes per logical block (512 to 4096).
    pub block_size: u32,
    pub blocks: u64,
    /// Largest read/write in bytes (MDTS, 16-bit NLB and our limit).
    pub max_transfer: usize,
}

/// What bring-up learned about the controller and namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    pub version: Version,
    pub vid: u16,
    pub serial: [u8; 20],
    pub model: [u8; 40],
    pub firmware: [u8; 8],
    pub nsid: u32,
    pub block_size: u32,
    pub blocks: u64,
    pub io_queues: u16,
    pub queue_depth: u16,
    pub max_transfer: usize,
    pub volatile_write_cache: bool,
    pub dsm: bool,
    pub write_zeroes: bool,
    pub sgl: bool,
    /// Every active namespace that can be served, in NSID order; `nsid`,
    /// `block_size`, `blocks` and `max_transfer` above describe the primary
    /// one ([`Config::nsid`]), which [`BlockDevice`] addresses.
    pub namespaces: Vec<Namespace>,
    /// Active namespaces left out (a format we cannot serve: metadata,
    /// blocks above 4 KiB, zero size; or more than [`MAX_NAMESPACES`]).
    pub skipped_namespaces: u32,
}

fn ascii_field(b: &[u8]) -> &str {
    core::str::from_utf8(b).unwrap_or("?").trim_matches(|c: char| c == ' ' || c == '\0')
}

/// One line for logs: model, serial, version, geometry, queues, features.
impl core::fmt::Display for Info {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{} {} NVMe {}.{}, {} blocks of {} bytes, {} I/O queue(s) of depth {}, VWC {}, DSM {}, write-zeroes {}, SGL {}",
            ascii_field(&self.model),
            ascii_field(&self.serial),
            self.version.major(),
            self.version.minor(),
            self.blocks,
            self.block_size,
            self.io_queues,
            self.queue_depth,
            self.volatile_write_cache,
            self.dsm,
            self.write_zeroes,
            self.sgl
        )
    }
}

/// Counters for diagnostics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub timeouts: u32,
    pub aborts_sent: u32,
    /// Aborts the controller answered with "not aborted".
    pub aborts_refused: u32,
    pub resets: u32,
    /// Completions naming no command in flight (broken or hostile device).
    pub spurious_completions: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Running,
    /// The controller could not be recovered; nothing is accepted.
    Failed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AbortState {
    NotSent,
    /// Abort queued; its answer not reaped yet.
    Sent,
    /// The controller said it aborted the command; its completion is due.
    Answered,
}

/// A command in flight on an I/O queue.
struct IoSlot<B> {
    token: Token,
    request: BlockRequest<B>,
    mapping: Option<Mapping>,
    /// PRP list / DSM range pages, back to the pool on completion.
    pages: Vec<DmaRegion>,
    /// Set at the first poll that sees the command (submit has no clock).
    deadline: Option<Nanos>,
    abort: AbortState,
}

/// A command in flight on the admin queue.
enum AdminSlot {
    /// Issued by a blocking sequence, which waits for this id.
    Sync,
    /// Abort for command `cid` on I/O queue index `queue`.
    Abort { queue: usize, cid: u16 },
}

/// Upper bound on I/O queue entries we allocate.
const MAX_DEPTH: u16 = 4096;

/// The polled NVMe driver over registers `R`, DMA `D` and clock `C`.
pub struct Nvme<R: RegisterIo, D: DmaMapper, C: Clock> {
    regs: R,
    dma: D,
    clock: C,
    config: Config,
    cap: Cap,
    info: Info,
    state: State,
    stats: Stats,
    admin: QueuePair<AdminSlot>,
    /// Completion of the last `Sync` admin command seen by the reaper.
    admin_done: Option<(u16, Cqe)>,
    io: Vec<QueuePair<IoSlot<D::Buffer>>>,
    /// Completions ready for `poll`, per I/O queue.
    pending: Vec<VecDeque<BlockCompletion<D::Buffer>>>,
    /// Per I/O queue: the earliest time at which `check_timeouts` can find
    /// something to do (the earliest deadline of its commands; 0 when a
    /// command has no deadline yet). Polls before it skip the scan.
    next_check: Vec<Nanos>,
    /// Per I/O queue: command ids submitted since the last poll, whose
    /// deadlines that poll sets (no scan of the whole queue per command).
    unstamped: Vec<Vec<u16>>,
    /// A PRP list page's bytes on their way to the page (kept for its
    /// capacity).
    list_bytes: Vec<u8>,
    /// PRP entries of the command being built, and a scatter list's
    /// device segments (kept for their capacity: no allocation per command).
    prp_entries: Vec<u64>,
    sg_segs: Vec<crate::hal::DmaSegment>,
    /// Identify data page.
    scratch: DmaRegion,
    /// Free PRP-list/DSM pages.
    page_pool: Vec<DmaRegion>,
    /// Index of [`Config::nsid`] in `info.namespaces`.
    primary: usize,
    /// Pages we may not reuse: the controller did not stop.
    quarantine: Vec<DmaRegion>,
    max_prp_entries: usize,
    next_token: u64,
}

impl<R: RegisterIo, D: DmaMapper, C: Clock> Nvme<R, D, C> {
    /// Brings the controller up: disable → wait RDY=0 (CAP.TO) → admin
    /// queues → enable → wait RDY=1 (CAP.TO) → Identify Controller and
    /// Namespace → Set Features (Number of Queues) → create I/O CQ/SQ
    /// pairs. The PCI function must already decode memory and bus-master.
    pub fn init(mut regs: R, mut dma: D, clock: C, config: Config) -> Result<Self, Error> {
        let cap = Cap(regs.read64(offset::CAP));
        if cap.0 == u64::MAX {
            return Err(Error::DeviceGone);
        }
        // We program CC.MPS = 0 (4 KiB) and the NVM command set.
        if !cap.css_nvm() || cap.mpsmin() != 0 {
            return Err(Error::UnsupportedController);
        }
        // Limits the device reports are checked like any device data: a
        // queue needs two entries, and its doorbells must lie inside BAR0.
        if cap.mqes() == 0 {
            return Err(Error::BadCapability("CAP.MQES is 0: queues of one entry cannot work"));
        }
        if !doorbells_fit(0, cap.dstrd(), regs.size()) {
            return Err(Error::BadCapability("CAP.DSTRD puts the admin doorbells beyond BAR0"));
        }
        let version = Version(regs.read32(offset::VS));
        let admin_depth = config.admin_depth.clamp(2, Aqa::MAX_ENTRIES).min(clamp_entries(cap.max_queue_entries()));
        let admin = QueuePair::new(0, admin_depth, cap.dstrd(), &mut dma)?;
        let scratch = dma.alloc_zeroed(1)?;
        let mut nvme = Nvme {
            regs,
            dma,
            clock,
            config,
            cap,
            info: Info {
                version,
                vid: 0,
                serial: [0; 20],
                model: [0; 40],
                firmware: [0; 8],
                nsid: config.nsid,
                block_size: 0,
                blocks: 0,
                io_queues: 0,
                queue_depth: 0,
                max_transfer: 0,
                volatile_write_cache: false,
                dsm: false,
                write_zeroes: false,
                sgl: false,
                namespaces: Vec::new(),
                skipped_namespaces: 0,
            },
            state: State::Running,
            stats: Stats::default(),
            admin,
            admin_done: None,
            io: Vec::new(),
            pending: Vec::new(),
            next_check: Vec::new(),
            unstamped: Vec::new(),
            list_bytes: Vec::new(),
            prp_entries: Vec::new(),
            sg_segs: Vec::new(),
            scratch,
            page_pool: Vec::new(),
            primary: 0,
            quarantine: Vec::new(),
            max_prp_entries: 0,
            next_token: 0,
        };
        nvme.disable()?;
        nvme.enable()?;
        nvme.identify()?;
        let mut granted = nvme.set_queue_count(config.io_queues.max(1))?;
        // Only as many I/O queues as have doorbells inside BAR0.
        while granted > 0 && !doorbells_fit(granted, cap.dstrd(), nvme.regs.size()) {
            granted -= 1;
        }
        if granted == 0 {
            return Err(Error::BadCapability("CAP.DSTRD puts every I/O doorbell beyond BAR0"));
        }
        let depth = config.queue_depth.clamp(2, MAX_DEPTH).min(clamp_entries(cap.max_queue_entries()));
        nvme.info.io_queues = granted;
        nvme.info.queue_depth = depth;
        for i in 0..granted {
            let qp = QueuePair::new(i + 1, depth, cap.dstrd(), &mut nvme.dma)?;
            nvme.io.push(qp);
            nvme.pending.push(VecDeque::new());
            nvme.next_check.push(Nanos::MAX);
            nvme.unstamped.push(Vec::with_capacity(usize::from(depth)));
        }
        nvme.create_io_queues()?;
        Ok(nvme)
    }

    pub fn info(&self) -> &Info {
        &self.info
    }
    pub fn stats(&self) -> Stats {
        self.stats
    }
    pub fn capabilities(&self) -> Cap {
        self.cap
    }
    /// True once recovery failed; submits are refused.
    pub fn is_failed(&self) -> bool {
        self.state == State::Failed
    }
    /// Commands in flight on I/O queue `queue`.
    pub fn in_flight(&self, queue: u16) -> usize {
        self.io.get(usize::from(queue)).map_or(0, |q| q.in_flight())
    }
    /// The DMA mapper (tests inspect the fake's bookkeeping).
    pub fn dma(&self) -> &D {
        &self.dma
    }
}

/// True if both doorbells of queue `qid` lie inside a register window of
/// `size` bytes (checked arithmetic: a huge stride cannot wrap).
fn doorbells_fit(qid: u16, dstrd: u8, size: usize) -> bool {
    let stride = 4usize.checked_shl(u32::from(dstrd));
    let last = stride
        .and_then(|s| s.checked_mul(2 * usize::from(qid) + 1))
        .and_then(|o| o.checked_add(regs::offset::DOORBELL_BASE));
    last.and_then(|o| o.checked_add(4)).is_some_and(|end| end <= size)
}

/// CAP.MQES+1 as a queue size we allocate.
fn clamp_entries(n: u32) -> u16 {
    n.min(u32::from(MAX_DEPTH)) as u16
}

impl<R: RegisterIo, D: DmaMapper, C: Clock> BlockDevice for Nvme<R, D, C> {
    type Buffer = D::Buffer;
    fn block_size(&self) -> u32 {
        self.info.block_size
    }
    fn capacity(&self) -> u64 {
        self.info.blocks
    }
    fn queue_count(&self) -> u16 {
        self.io.len() as u16
    }
    fn max_transfer(&self) -> usize {
        self.info.max_transfer
    }
    fn features(&self) -> Features {
        Features {
            volatile_cache: self.info.volatile_write_cache,
            discard: self.info.dsm,
            write_zeroes: self.info.write_zeroes,
        }
    }
    fn submit(
        &mut self,
        queue: u16,
        request: BlockRequest<D::Buffer>,
    ) -> Result<Token, (Error, BlockRequest<D::Buffer>)> {
        Nvme::submit(self, queue, request)
    }
    fn poll(&mut self, queue: u16, now: Nanos) -> Option<BlockCompletion<D::Buffer>> {
        Nvme::poll(self, queue, now)
    }
    /// The bus addresses of a scatter list go into the command as they
    /// are (SGL data blocks or PRP entries); whoever passes them made the
    /// memory reachable by the device.
    fn scatter_gather(&self) -> bool {
        true
    }
    fn accepts_sg(&self, sg: &[SgEntry]) -> bool {
        self.sg_fits(sg)
    }
}

impl<R: RegisterIo, D: DmaMapper, C: Clock> Volumes for Nvme<R, D, C> {
    fn volumes(&self) -> usize {
        self.info.namespaces.len()
    }
    fn volume_geometry(&self, v: usize) -> Option<(u32, u64)> {
        self.info.namespaces.get(v).map(|n| (n.block_size, n.blocks))
    }
    fn submit_to(
        &mut self,
        v: usize,
        queue: u16,
        request: BlockRequest<D::Buffer>,
    ) -> Result<Token, (Error, BlockRequest<D::Buffer>)> {
        Nvme::submit_to(self, v, queue, request)
    }
}
