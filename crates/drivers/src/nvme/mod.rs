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

pub mod prp;
pub mod queue;
pub mod regs;
pub mod spec;

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use crate::block::{check_range, BlockCompletion, BlockDevice, BlockRequest, Features, Token};
use crate::error::{Error, Wait};
use crate::hal::{Clock, DmaBuffer, DmaDirection, DmaMapper, DmaRegion, Mapping, Nanos, RegisterIo, PAGE_SIZE};
use queue::QueuePair;
use regs::{offset, Aqa, Cap, Cc, Csts, Version};
use spec::{cns, Cqe, DsmRange, IdentifyController, IdentifyNamespace, SglDescriptor, Sqe};

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
    /// Identify data page.
    scratch: DmaRegion,
    /// Free PRP-list/DSM pages.
    page_pool: Vec<DmaRegion>,
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
            },
            state: State::Running,
            stats: Stats::default(),
            admin,
            admin_done: None,
            io: Vec::new(),
            pending: Vec::new(),
            scratch,
            page_pool: Vec::new(),
            quarantine: Vec::new(),
            max_prp_entries: 0,
            next_token: 0,
        };
        nvme.disable()?;
        nvme.enable()?;
        nvme.identify()?;
        let granted = nvme.set_queue_count(config.io_queues.max(1))?;
        let depth = config.queue_depth.clamp(2, MAX_DEPTH).min(clamp_entries(cap.max_queue_entries()));
        nvme.info.io_queues = granted;
        nvme.info.queue_depth = depth;
        for i in 0..granted {
            let qp = QueuePair::new(i + 1, depth, cap.dstrd(), &mut nvme.dma)?;
            nvme.io.push(qp);
            nvme.pending.push(VecDeque::new());
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

    // ---------------------------------------------------------------
    // Blocking sequences (bring-up, reset, shutdown), each wait bounded.

    fn csts(&mut self) -> Result<Csts, Error> {
        let csts = Csts(self.regs.read32(offset::CSTS));
        if csts.is_all_ones() {
            return Err(Error::DeviceGone);
        }
        Ok(csts)
    }

    /// Spins until `done(CSTS)` or the deadline; every read checks for a
    /// vanished device.
    fn wait_csts(&mut self, timeout: u64, what: Wait, done: impl Fn(Csts) -> bool) -> Result<(), Error> {
        let deadline = self.clock.now().saturating_add(timeout);
        loop {
            let csts = self.csts()?;
            if done(csts) {
                return Ok(());
            }
            if self.clock.now() >= deadline {
                return Err(Error::Timeout(what));
            }
        }
    }

    /// CC.EN = 0 and wait for CSTS.RDY = 0 within CAP.TO (§3.1.5, §7.6.1).
    /// Once this returns `Ok` the controller has stopped all queue
    /// processing and DMA.
    fn disable(&mut self) -> Result<(), Error> {
        let cc = Cc(self.regs.read32(offset::CC));
        if cc.enabled() {
            self.regs.write32(offset::CC, cc.with_enable(false).0);
        }
        self.wait_csts(self.cap.timeout_ns(), Wait::Disable, |c| !c.ready())
    }

    /// Programs the admin queues and CC, sets CC.EN = 1 and waits for
    /// CSTS.RDY = 1 within CAP.TO (§7.6.1 steps 2-5).
    fn enable(&mut self) -> Result<(), Error> {
        self.admin.reset_rings(&mut self.dma)?;
        self.admin_done = None;
        let depth = self.admin.depth();
        self.regs.write32(offset::AQA, Aqa::new(depth, depth).0);
        self.regs.write64(offset::ASQ, self.admin.sq_bus());
        self.regs.write64(offset::ACQ, self.admin.cq_bus());
        self.regs.write32(offset::CC, Cc::ours().0);
        self.regs.write32(offset::CC, Cc::ours().with_enable(true).0);
        self.wait_csts(self.cap.timeout_ns(), Wait::Enable, |c| c.ready() || c.fatal())?;
        if self.csts()?.fatal() {
            return Err(Error::ControllerFatal);
        }
        Ok(())
    }

    /// Submits an admin command and spins for its completion.
    fn admin_sync(&mut self, sqe: Sqe) -> Result<Cqe, Error> {
        let cid = self.admin.submit(&mut self.dma, &mut self.regs, sqe, AdminSlot::Sync).map_err(|(e, _)| e)?;
        let deadline = self.clock.now().saturating_add(self.config.admin_timeout_ns);
        loop {
            self.reap_admin();
            if let Some((done, cqe)) = self.admin_done {
                if done == cid {
                    self.admin_done = None;
                    return match cqe.result() {
                        Ok(()) => Ok(cqe),
                        Err(s) => Err(s.into_error()),
                    };
                }
            }
            if self.csts()?.fatal() {
                return Err(Error::ControllerFatal);
            }
            if self.clock.now() >= deadline {
                // The slot stays taken: the id must not be reused while the
                // controller may still answer it. Reset clears it.
                return Err(Error::Timeout(Wait::AdminCommand));
            }
        }
    }

    fn identify(&mut self) -> Result<(), Error> {
        let page = self.scratch.bus().0;
        self.admin_sync(Sqe::identify(cns::CONTROLLER, 0, page))?;
        let mut buf = [0u8; 4096];
        self.dma.read(&self.scratch, 0, &mut buf)?;
        let ctrl = IdentifyController::parse(&buf);
        // SQES/CQES: required (3:0) ≤ our size ≤ maximum (7:4); 0 means a
        // pre-1.2 controller that leaves them unset.
        let fits = |v: u8, ours: u32| v == 0 || (u32::from(v & 0xF) <= ours && ours <= u32::from(v >> 4));
        if !fits(ctrl.sqes, Cc::SQES_LOG2) || !fits(ctrl.cqes, Cc::CQES_LOG2) {
            return Err(Error::UnsupportedController);
        }
        if ctrl.nn != 0 && self.config.nsid > ctrl.nn {
            return Err(Error::UnsupportedController);
        }

        buf.fill(0);
        self.dma.write(&self.scratch, 0, &buf)?;
        self.admin_sync(Sqe::identify(cns::NAMESPACE, self.config.nsid, page))?;
        self.dma.read(&self.scratch, 0, &mut buf)?;
        let ns = IdentifyNamespace::parse(&buf);
        let lbads = ns.lbaf.lbads();
        // Blocks from 512 B to one page; no metadata (we have no MPTR use).
        if !(9..=12).contains(&lbads) || ns.lbaf.metadata_size() != 0 || ns.nsze == 0 {
            return Err(Error::UnsupportedController);
        }
        let block_size = 1u32 << lbads;
        let mdts = ctrl.max_transfer(self.cap.min_page_size()).unwrap_or(u64::MAX);
        let max = (self.config.max_transfer as u64).min(mdts);
        let max = (max / u64::from(block_size)) * u64::from(block_size);
        if max == 0 {
            return Err(Error::UnsupportedController);
        }
        // NLB is 16 bits: at most 65536 blocks per command.
        let max = max.min(65536 * u64::from(block_size)) as usize;
        self.info.vid = ctrl.vid;
        self.info.serial = ctrl.serial;
        self.info.model = ctrl.model;
        self.info.firmware = ctrl.firmware;
        self.info.block_size = block_size;
        self.info.blocks = ns.nsze;
        self.info.max_transfer = max;
        self.info.volatile_write_cache = ctrl.volatile_write_cache();
        self.info.dsm = ctrl.oncs.dsm();
        self.info.write_zeroes = ctrl.oncs.write_zeroes();
        self.info.sgl = ctrl.sgl_supported();
        self.max_prp_entries = max / PAGE_SIZE + 2;
        Ok(())
    }

    /// Set Features / Number of Queues; returns the number of I/O queue
    /// pairs granted (§5.21.1.7: DW0 NCQA 31:16, NSQA 15:0, 0-based).
    fn set_queue_count(&mut self, wanted: u16) -> Result<u16, Error> {
        let cqe = self.admin_sync(Sqe::set_number_of_queues(wanted))?;
        let nsqa = (cqe.dw0 & 0xFFFF) as u16;
        let ncqa = (cqe.dw0 >> 16) as u16;
        Ok(wanted.min(nsqa.saturating_add(1)).min(ncqa.saturating_add(1)))
    }

    /// Creates every I/O CQ, then its SQ (§7.6.1 step 7-8).
    fn create_io_queues(&mut self) -> Result<(), Error> {
        for i in 0..self.io.len() {
            let (qid, depth, cq, sq) = {
                let q = &self.io[i];
                (q.qid(), q.depth(), q.cq_bus(), q.sq_bus())
            };
            self.admin_sync(Sqe::create_io_cq(qid, depth, cq))?;
            self.admin_sync(Sqe::create_io_sq(qid, depth, qid, sq))?;
        }
        Ok(())
    }

    /// Orderly shutdown (§7.6.2): delete every I/O SQ, then every I/O CQ,
    /// then CC.SHN = 01b and wait for CSTS.SHST = 10b within CAP.TO. Call
    /// once I/O has drained (every token completed); commands still in
    /// flight are failed back with [`Error::Reset`]. Afterwards the driver
    /// accepts no more commands.
    pub fn shutdown(&mut self) -> Result<(), Error> {
        let mut first_err = None;
        if self.state == State::Running {
            for i in 0..self.io.len() {
                let qid = self.io[i].qid();
                if let Err(e) = self.admin_sync(Sqe::delete_io_sq(qid)) {
                    first_err.get_or_insert(e);
                }
            }
            for i in 0..self.io.len() {
                let qid = self.io[i].qid();
                if let Err(e) = self.admin_sync(Sqe::delete_io_cq(qid)) {
                    first_err.get_or_insert(e);
                }
            }
        }
        self.state = State::Failed;
        for qi in 0..self.io.len() {
            for (_, slot) in self.io[qi].drain() {
                let c = self.finish(qi, slot, Err(Error::Reset));
                self.pending[qi].push_back(c);
            }
        }
        let cc = Cc(self.regs.read32(offset::CC));
        self.regs.write32(offset::CC, cc.with_normal_shutdown().0);
        self.wait_csts(self.cap.timeout_ns(), Wait::Shutdown, |c| c.shutdown_complete())?;
        first_err.map_or(Ok(()), Err)
    }

    /// Resets the controller after a failure: disable, fail every in-flight
    /// command back with [`Error::Reset`], then bring the same queues up
    /// again. If the controller does not stop or come back, the driver is
    /// marked failed (every later submit is refused) — but in-flight
    /// commands are still returned through `poll`.
    pub fn reset(&mut self) {
        self.stats.resets += 1;
        let stopped = self.disable();
        if stopped.is_err() {
            // Not stopped: its queue and PRP pages stay out of reuse.
            self.state = State::Failed;
        }
        // The controller has stopped (or is beyond help): hand every
        // command back. Buffers are unmapped, which under an IOMMU also
        // revokes a runaway device's access.
        for qi in 0..self.io.len() {
            for (_, slot) in self.io[qi].drain() {
                let c = self.finish(qi, slot, Err(Error::Reset));
                self.pending[qi].push_back(c);
            }
        }
        let _ = self.admin.drain();
        self.admin_done = None;
        if stopped.is_err() {
            return;
        }
        self.state = match self.restart() {
            Ok(()) => State::Running,
            Err(_) => State::Failed,
        };
    }

    fn restart(&mut self) -> Result<(), Error> {
        self.enable()?;
        let want = self.io.len() as u16;
        if self.set_queue_count(want)? < want {
            return Err(Error::ControllerFailed);
        }
        for q in 0..self.io.len() {
            self.io[q].reset_rings(&mut self.dma)?;
        }
        self.create_io_queues()
    }

    // ---------------------------------------------------------------
    // Split-phase I/O.

    fn take_page(&mut self) -> Result<DmaRegion, Error> {
        match self.page_pool.pop() {
            Some(p) => Ok(p),
            None => Ok(self.dma.alloc_zeroed(1)?),
        }
    }

    /// Builds the command for `request` (mapping its buffer and writing PRP
    /// lists / DSM ranges into pool pages). On error everything is undone.
    fn prepare(
        &mut self,
        request: &mut BlockRequest<D::Buffer>,
    ) -> Result<(Sqe, Option<Mapping>, Vec<DmaRegion>), Error> {
        let nsid = self.info.nsid;
        let bs = u64::from(self.info.block_size);
        let capacity = self.info.blocks;
        match request {
            BlockRequest::Flush => Ok((Sqe::flush(nsid), None, Vec::new())),
            BlockRequest::Discard { lba, blocks } => {
                if !self.info.dsm {
                    return Err(Error::NotSupported);
                }
                if *blocks == 0 || *blocks > u64::from(u32::MAX) {
                    return Err(Error::BadBuffer);
                }
                check_range(*lba, *blocks, capacity)?;
                let page = self.take_page()?;
                let range = DsmRange { attributes: 0, blocks: *blocks as u32, slba: *lba };
                if let Err(e) = self.dma.write(&page, 0, &range.to_bytes()) {
                    self.page_pool.push(page);
                    return Err(e.into());
                }
                let sqe = Sqe::dsm_deallocate(nsid, 1, page.bus().0);
                Ok((sqe, None, alloc::vec![page]))
            }
            BlockRequest::WriteZeroes { lba, blocks } => {
                if !self.info.write_zeroes {
                    return Err(Error::NotSupported);
                }
                if *blocks == 0 || *blocks > 65536 {
                    return Err(Error::BadBuffer);
                }
                check_range(*lba, *blocks, capacity)?;
                Ok((Sqe::write_zeroes(nsid, *lba, *blocks as u32), None, Vec::new()))
            }
            BlockRequest::Read { lba, buffer } | BlockRequest::Write { lba, buffer, .. } => {
                let len = buffer.len();
                if len == 0 || !(len as u64).is_multiple_of(bs) || len > self.info.max_transfer {
                    return Err(Error::BadBuffer);
                }
                let blocks = len as u64 / bs;
                check_range(*lba, blocks, capacity)?;
                let lba = *lba;
                let (dir, sqe) = match request {
                    BlockRequest::Write { fua, .. } => {
                        (DmaDirection::ToDevice, Sqe::write(nsid, lba, blocks as u32, *fua))
                    }
                    _ => (DmaDirection::FromDevice, Sqe::read(nsid, lba, blocks as u32)),
                };
                let buffer = request.buffer_mut().ok_or(Error::BadBuffer)?;
                let mapping = self.dma.map(buffer, dir)?;
                let built = if self.info.sgl && self.config.use_sgl {
                    self.build_sgl(&mapping, sqe)
                } else {
                    self.build_prp(&mapping, sqe)
                };
                match built {
                    Ok((sqe, pages)) => Ok((sqe, Some(mapping), pages)),
                    Err(e) => {
                        let buffer = request.buffer_mut().ok_or(Error::BadBuffer)?;
                        let _ = self.dma.unmap(mapping, buffer);
                        Err(e)
                    }
                }
            }
        }
    }

    /// One Data Block descriptor for a contiguous buffer; otherwise a Last
    /// Segment descriptor pointing to a pool page of Data Block descriptors
    /// (up to 256, one page: more than any transfer we allow).
    fn build_sgl(&mut self, mapping: &Mapping, mut sqe: Sqe) -> Result<(Sqe, Vec<DmaRegion>), Error> {
        let segs = mapping.segments();
        let block = |bus: u64, len: usize| -> Result<SglDescriptor, Error> {
            // SGLS 10b asks dword alignment; our buffers are block-aligned.
            if !bus.is_multiple_of(4) || len == 0 || !len.is_multiple_of(4) {
                return Err(Error::BadBuffer);
            }
            Ok(SglDescriptor::data_block(bus, u32::try_from(len).map_err(|_| Error::BadBuffer)?))
        };
        match segs {
            [] => Err(Error::BadBuffer),
            [one] => {
                sqe.set_sgl(block(one.bus.0, one.len)?);
                Ok((sqe, Vec::new()))
            }
            many if many.len() > PAGE_SIZE / SglDescriptor::SIZE => Err(Error::BadBuffer),
            many => {
                let mut bytes = Vec::with_capacity(many.len() * SglDescriptor::SIZE);
                for s in many {
                    bytes.extend_from_slice(&block(s.bus.0, s.len)?.to_bytes());
                }
                let page = self.take_page()?;
                if let Err(e) = self.dma.write(&page, 0, &bytes) {
                    self.page_pool.push(page);
                    return Err(e.into());
                }
                sqe.set_sgl(SglDescriptor::last_segment(page.bus().0, many.len()));
                Ok((sqe, alloc::vec![page]))
            }
        }
    }

    fn build_prp(&mut self, mapping: &Mapping, mut sqe: Sqe) -> Result<(Sqe, Vec<DmaRegion>), Error> {
        let entries = prp::entries(mapping.segments(), PAGE_SIZE, self.max_prp_entries)?;
        let need = prp::list_pages_needed(entries.len(), PAGE_SIZE);
        let mut pages = Vec::with_capacity(need);
        for _ in 0..need {
            match self.take_page() {
                Ok(p) => pages.push(p),
                Err(e) => {
                    self.page_pool.append(&mut pages);
                    return Err(e);
                }
            }
        }
        let addrs: Vec<_> = pages.iter().map(|p| p.bus()).collect();
        let built = prp::build(&entries, &addrs, PAGE_SIZE).and_then(|prp| {
            for (page, list) in pages.iter().zip(prp.lists.iter()) {
                self.dma.write(page, 0, &prp::list_bytes(list))?;
            }
            Ok(prp)
        });
        match built {
            Ok(prp) => {
                sqe.prp1 = prp.prp1;
                sqe.prp2 = prp.prp2;
                Ok((sqe, pages))
            }
            Err(e) => {
                self.page_pool.append(&mut pages);
                Err(e)
            }
        }
    }

    /// Queues `request` on I/O queue `queue` (0-based). `Ok` promises one
    /// completion from [`Nvme::poll`] on that queue; `Err` hands the
    /// request back untouched.
    pub fn submit(
        &mut self,
        queue: u16,
        mut request: BlockRequest<D::Buffer>,
    ) -> Result<Token, (Error, BlockRequest<D::Buffer>)> {
        if self.state == State::Failed {
            return Err((Error::ControllerFailed, request));
        }
        let qi = usize::from(queue);
        match self.io.get(qi) {
            None => return Err((Error::NoSuchQueue, request)),
            Some(q) if q.is_full() => return Err((Error::QueueFull, request)),
            Some(_) => {}
        }
        let (sqe, mapping, pages) = match self.prepare(&mut request) {
            Ok(v) => v,
            Err(e) => return Err((e, request)),
        };
        let token = Token(self.next_token);
        let slot = IoSlot { token, request, mapping, pages, deadline: None, abort: AbortState::NotSent };
        match self.io[qi].submit(&mut self.dma, &mut self.regs, sqe, slot) {
            Ok(_) => {
                self.next_token += 1;
                Ok(token)
            }
            Err((e, slot)) => {
                let c = self.finish(qi, slot, Err(e));
                Err((e, c.request))
            }
        }
    }

    /// Releases what a finished command held and builds its completion.
    fn finish(
        &mut self,
        qi: usize,
        mut slot: IoSlot<D::Buffer>,
        result: Result<(), Error>,
    ) -> BlockCompletion<D::Buffer> {
        let mut result = result;
        if let Some(mapping) = slot.mapping.take() {
            if let Some(buffer) = slot.request.buffer_mut() {
                if let Err(e) = self.dma.unmap(mapping, buffer) {
                    if result.is_ok() {
                        result = Err(e.into());
                    }
                }
            }
        }
        if self.state == State::Failed {
            self.quarantine.append(&mut slot.pages);
        } else {
            self.page_pool.append(&mut slot.pages);
        }
        BlockCompletion { token: slot.token, queue: qi as u16, result, request: slot.request }
    }

    /// Next completion on I/O queue `queue`, if any. Also reaps the admin
    /// queue, and checks the queue's commands against their deadlines:
    /// a command past `io_timeout_ns` gets an Abort; one still missing
    /// `abort_timeout_ns` after that triggers a controller reset (as does
    /// CSTS.CFS or a full admin queue when an Abort is due).
    pub fn poll(&mut self, queue: u16, now: Nanos) -> Option<BlockCompletion<D::Buffer>> {
        let qi = usize::from(queue);
        if let Some(c) = self.pending.get_mut(qi)?.pop_front() {
            return Some(c);
        }
        if self.state == State::Failed {
            return None;
        }
        // I/O first, so a command that finished is seen before an Abort
        // answer about it.
        self.reap_io(qi);
        self.reap_admin();
        if self.pending[qi].is_empty() && self.check_timeouts(qi, now) {
            self.reset();
        }
        self.pending[qi].pop_front()
    }

    /// Moves every posted completion of queue `qi` to `pending`.
    fn reap_io(&mut self, qi: usize) {
        let mut consumed = false;
        // Bounded: at most one lap of the ring per call.
        for _ in 0..self.io[qi].depth() {
            let Some(cqe) = self.io[qi].peek(&self.dma) else {
                break;
            };
            self.io[qi].pop(&cqe);
            consumed = true;
            let aborting = cqe.sq_id == self.io[qi].qid()
                && self.io[qi].get_mut(cqe.cid).is_some_and(|s| s.abort == AbortState::Sent);
            let slot = if cqe.sq_id != self.io[qi].qid() {
                None
            } else if aborting {
                // Our Abort for this id is still out: park the id until its
                // answer is reaped.
                self.io[qi].take_and_hold(cqe.cid)
            } else {
                self.io[qi].take(cqe.cid)
            };
            match slot {
                Some(slot) => {
                    let result = cqe.result().map_err(|s| s.into_error());
                    let c = self.finish(qi, slot, result);
                    self.pending[qi].push_back(c);
                }
                None => self.stats.spurious_completions += 1,
            }
        }
        if consumed {
            self.io[qi].ring_cq_doorbell(&mut self.regs);
        }
    }

    /// Reaps the admin queue: records `Sync` answers, and Abort answers on
    /// the commands they name.
    fn reap_admin(&mut self) {
        let mut consumed = false;
        for _ in 0..self.admin.depth() {
            let Some(cqe) = self.admin.peek(&self.dma) else {
                break;
            };
            self.admin.pop(&cqe);
            consumed = true;
            match self.admin.take(cqe.cid) {
                Some(AdminSlot::Sync) => self.admin_done = Some((cqe.cid, cqe)),
                Some(AdminSlot::Abort { queue, cid }) => {
                    // §5.1: DW0 bit 0 set = command not aborted.
                    let aborted = cqe.result().is_ok() && cqe.dw0 & 1 == 0;
                    // The id was not reused while the Abort was out (see
                    // `take_and_hold`), so a live slot is the same command.
                    // Either way the command keeps its abort deadline: a
                    // command "not aborted" may still complete (or may
                    // already have, its completion not yet reaped); if it
                    // has not come back by then, the controller is reset.
                    if !aborted {
                        self.stats.aborts_refused += 1;
                    }
                    if let Some(q) = self.io.get_mut(queue) {
                        match q.get_mut(cid) {
                            Some(slot) => slot.abort = AbortState::Answered,
                            None => q.release(cid),
                        }
                    }
                }
                None => self.stats.spurious_completions += 1,
            }
        }
        if consumed {
            self.admin.ring_cq_doorbell(&mut self.regs);
        }
    }

    /// Stamps and checks deadlines on queue `qi`; sends Aborts. Returns
    /// true if the controller must be reset.
    fn check_timeouts(&mut self, qi: usize, now: Nanos) -> bool {
        let io_timeout = self.config.io_timeout_ns;
        let mut overdue = Vec::new();
        let mut need_reset = false;
        for (cid, slot) in self.io[qi].iter_mut() {
            match slot.deadline {
                None => slot.deadline = Some(now.saturating_add(io_timeout)),
                Some(d) if now >= d => match slot.abort {
                    AbortState::NotSent => overdue.push(cid),
                    AbortState::Sent | AbortState::Answered => need_reset = true,
                },
                Some(_) => {}
            }
        }
        if need_reset || overdue.is_empty() {
            return need_reset;
        }
        self.stats.timeouts += overdue.len() as u32;
        match self.csts() {
            Ok(c) if !c.fatal() => {}
            _ => return true,
        }
        let qid = self.io[qi].qid();
        for cid in overdue {
            let sent = self
                .admin
                .submit(&mut self.dma, &mut self.regs, Sqe::abort(qid, cid), AdminSlot::Abort { queue: qi, cid })
                .is_ok();
            if !sent {
                return true; // admin queue full or broken: escalate
            }
            self.stats.aborts_sent += 1;
            if let Some(slot) = self.io[qi].get_mut(cid) {
                slot.abort = AbortState::Sent;
                slot.deadline = Some(now.saturating_add(self.config.abort_timeout_ns));
            }
        }
        false
    }
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
}
