//! The PV-IOMMU hypercall handler and the state behind it.
//!
//! [`Iommu::handle`] is `do_iommu_op` without the guest-copy shell: the
//! caller copies `arg_size(subop)` bytes from the guest, calls it, copies
//! the bytes back, and turns the result into a return value with
//! [`hypercall_return`]; [`Outcome::Restart`] means "re-issue as a
//! continuation" (progress is already in the argument).
//!
//! Differences from the v6/v7 C core, on purpose: `init` never falls into
//! `alloc_context`; every page of a map is checked against reserved ranges;
//! a map over a mapping is `-EADDRINUSE`; granted (foreign) pages may be
//! mapped into any context; unknown flag bits are `-EINVAL`; unmapped pages,
//! freed tables and domain ids are only reused after the invalidation that
//! covers them has completed, including device-TLB invalidations.
//!
//! The code is split by concern:
//!
//! * this module: the [`Iommu`] type, its [`Config`], the [`Platform`]
//!   contract, and the per-domain, per-context and per-device state;
//! * `error`: the guest-visible [`Error`], [`Outcome`] and
//!   [`hypercall_return`], and the host-side [`MgmtError`];
//! * `hypercall`: decoding and dispatch of `iommu_op` sub-ops (`remote_cmd`,
//!   capabilities, `init`), with `hypercall::contexts` (alloc, free,
//!   reattach) and `hypercall::pages` (map, unmap);
//! * `policy`: who may do what (per-caller rules in front of the
//!   dispatcher: device ownership, frame ownership and grants, per-domain
//!   limits) and the counters and debug dump that show what a domain holds;
//! * `manage`: toolstack management (devices, domains, assignment,
//!   destruction);
//! * `context`: context entries (built by one function), moving devices
//!   between contexts and quarantine, and context teardown;
//! * `invalidate`: invalidation batches, their completion, deferred frees
//!   and broken devices;
//! * `tables`: table memory as the core writes it (cache flushes for a
//!   non-coherent unit, arena budgets).

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::vec::Vec;
use core::ops::Range;

use crate::hw::Hardware;
use crate::mem::{Memory, PageAlloc};
use crate::pagetable::{MappedRange, SlTable};
use crate::qi::InvQueue;
use crate::types::{CtxNo, DomId, Gfn, Mfn, PciSbdf, Sid};
use crate::vtd::{AddrWidth, FaultRecord};

mod context;
mod error;
mod hypercall;
mod invalidate;
mod manage;
mod policy;
mod tables;

pub use error::{hypercall_return, Error, MgmtError, Outcome};
pub use policy::Counters;

use invalidate::{Held, Release};
use tables::Tables;

/// The MSI window 0xFEE00000–0xFEEFFFFF as device frames: never mappable.
pub const MSI_FIRST_DFN: u64 = 0xfee00;
/// Pages in the MSI window.
pub const MSI_PAGES: u64 = 0x100;

/// Domain id reserved for the quarantine context (0 is reserved by VT-d
/// when caching mode is on, so it is never handed out either).
const QUARANTINE_DID: u16 = 1;

/// IOTLB/device-TLB invalidation ranges per flush beyond which one
/// domain-selective (or whole-device) invalidation is used instead.
const MAX_RANGES: usize = 16;

/// Host policy for the handler.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// The hardware domain (the only one allowed `remote_cmd`).
    pub hardware_domain: DomId,
    /// Largest `init.max_ctx_no` accepted (at most 0xffff: context numbers are u16).
    pub max_ctx_limit: u32,
    /// Largest `init.arena_order` accepted.
    pub max_arena_order: u32,
    /// How long a device may take to complete a device-TLB invalidation
    /// before it is declared broken (PCIe ATS allows one minute).
    pub devtlb_timeout_ns: u64,
    /// Pages handled per map/unmap issue (and per identity-context build
    /// step) before a restart.
    pub preempt_pages: u32,
    /// Limits of the hardware domain.
    pub hwdom_limits: Limits,
    /// Limits of every other domain (a driver domain).
    pub domu_limits: Limits,
    /// Page references and table pages released per call (per
    /// [`Iommu::poll`]) once their invalidation completed; the rest wait for
    /// the next call, so freeing a large context or a domain is preemptible.
    pub release_budget: u32,
    /// Identity contexts (bus address = GFN) offered: a platform that
    /// cannot list a domain's pages turns them off (-EOPNOTSUPP, and no
    /// `cap::IDENTITY`).
    pub identity_contexts: bool,
}

/// What one domain may hold, so that it cannot exhaust VT-d domain ids or
/// hypervisor memory for the others. `init` asks for less or is clamped to
/// these; past them a call fails and changes nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Allocated contexts (each one VT-d domain id), context 0 not counted.
    pub contexts: u32,
    /// Page-table pages of its allocated contexts.
    pub table_pages: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            hardware_domain: DomId(0),
            max_ctx_limit: 1024,
            max_arena_order: 20,
            devtlb_timeout_ns: 60_000_000_000,
            preempt_pages: 256,
            hwdom_limits: Limits { contexts: 1024, table_pages: 1 << 20 },
            domu_limits: Limits { contexts: 64, table_pages: 16384 },
            identity_contexts: true,
            release_budget: 1024,
        }
    }
}

/// Where a frame a domain names comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The domain's own page.
    Own,
    /// A page another domain granted to it (an active grant mapping).
    Granted {
        /// The granting domain (the page's owner).
        granter: DomId,
        /// The grant allows writes (not `GTF_readonly`).
        writable: bool,
    },
}

/// A frame as the platform found it for a domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The machine frame.
    pub mfn: Mfn,
    /// Own or granted.
    pub source: Source,
}

/// What the hypervisor around the core provides: what a domain's frames and
/// devices are, page references, domain memory, guest copies. The platform
/// reports facts and takes references; the policy (who may map what, with
/// which rights) is the core's.
pub trait Platform {
    /// What `gfn` names for `dom`: its own page, a page granted to it, or
    /// nothing (`None`). No reference is taken.
    fn frame_of(&mut self, dom: DomId, gfn: Gfn) -> Option<Frame>;
    /// Takes a reference on `frame` for `dom` (a writable-type reference if
    /// `writable`), checking it is still what [`Platform::frame_of`] said;
    /// false if it is not, and then nothing is held.
    fn get_frame(&mut self, dom: DomId, frame: Frame, writable: bool) -> bool;
    /// Drops a reference taken by [`Platform::get_frame`] (with the same `writable`).
    fn put_frame(&mut self, mfn: Mfn, writable: bool);
    /// Up to `max` of the domain's own pages with gfn at least `from`, in
    /// gfn order: for the default (bus = MFN) and identity (bus = GFN)
    /// contexts.
    fn domain_pages(&self, dom: DomId, from: Gfn, max: usize) -> Vec<(Gfn, Mfn)>;
    /// The domain a PCI function is assigned to (passed through), if any.
    fn device_owner(&self, dev: PciSbdf) -> Option<DomId>;
    /// Copies from a guest virtual address; false on a fault.
    fn copy_from_guest(&mut self, dom: DomId, addr: u64, buf: &mut [u8]) -> bool;
    /// Copies to a guest virtual address; false on a fault.
    fn copy_to_guest(&mut self, dom: DomId, addr: u64, buf: &[u8]) -> bool;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CtxKind {
    /// Context 0: the domain's pages at bus address = MFN; hypervisor-managed.
    Default,
    /// Allocated, guest-managed through map/unmap.
    Paged,
    /// Allocated with `IOMMU_ALLOC_identity`: bus address = GFN; fixed.
    Identity,
}

struct Context {
    did: u16,
    kind: CtxKind,
    table: SlTable,
    devices: BTreeSet<PciSbdf>,
    dying: bool,
}

/// An identity context being built across preempted calls.
struct Building {
    ctx_no: u16,
    did: u16,
    table: SlTable,
    /// Next gfn to map.
    next: Gfn,
}

struct Domain {
    enabled: bool,
    dying: bool,
    initialised: bool,
    limits: Limits,
    max_ctx_no: u32,
    arena_limit: u64,
    arena_used: u64,
    contexts: BTreeMap<u16, Context>,
    building: Option<Building>,
}

/// A reserved device-frame range of a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rmrr {
    /// First frame (mapped 1:1: dfn = mfn).
    pub first: u64,
    /// Pages.
    pub count: u64,
}

impl Rmrr {
    /// The frames to map 1:1 (clipped at the top of the frame space).
    fn frames(&self) -> Range<u64> {
        self.first..self.first.saturating_add(self.count)
    }

    /// True when `dfn` lies in the range.
    fn contains(&self, dfn: u64) -> bool {
        dfn >= self.first && dfn - self.first < self.count
    }
}

struct Device {
    owner: Option<DomId>,
    ctx: u16,
    ats: bool,
    broken: bool,
    rmrr: Vec<Rmrr>,
}

/// One VT-d unit (PCI segment 0) and the PV-IOMMU state of every domain.
pub struct Iommu<M: Memory, H: Hardware, P: Platform> {
    cfg: Config,
    mem: M,
    hw: H,
    plat: P,
    aw: AddrWidth,
    root: Mfn,
    ctx_tables: BTreeMap<u8, Mfn>,
    quarantine: SlTable,
    domains: BTreeMap<DomId, Domain>,
    devices: BTreeMap<PciSbdf, Device>,
    dids: BTreeSet<u16>,
    queue: InvQueue,
    held: VecDeque<Held>,
    /// Invalidated, waiting for their budgeted release.
    ready: VecDeque<Release>,
    leaked: Vec<Release>,
    next_group: u64,
    /// Guest page references held (mapped, or awaiting an invalidation).
    refs_held: u64,
}

impl<M: Memory, H: Hardware, P: Platform> Iommu<M, H, P> {
    /// Sets up the root table, the quarantine context and the invalidation
    /// queue, and enables translation.
    pub fn new(cfg: Config, mut mem: M, mut hw: H, plat: P) -> Result<Self, MgmtError> {
        let aw = hw.addr_width();
        let mut t = Tables { mem: &mut mem, hw: &mut hw };
        let root = t.alloc_zeroed().ok_or(MgmtError::NoMemory)?;
        let quarantine = SlTable::new(&mut t, aw).map_err(|_| MgmtError::NoMemory)?;
        let queue = InvQueue::new(&mut mem, &mut hw).ok_or(MgmtError::NoMemory)?;
        hw.set_root_table(&mut mem, root);
        let mut dids = BTreeSet::new();
        dids.insert(0);
        dids.insert(QUARANTINE_DID);
        Ok(Iommu {
            cfg,
            mem,
            hw,
            plat,
            aw,
            root,
            ctx_tables: BTreeMap::new(),
            quarantine,
            domains: BTreeMap::new(),
            devices: BTreeMap::new(),
            dids,
            queue,
            held: VecDeque::new(),
            ready: VecDeque::new(),
            leaked: Vec::new(),
            next_group: 0,
            refs_held: 0,
        })
    }

    /// The hardware (tests drive the software model through it).
    pub fn hw_mut(&mut self) -> &mut H {
        &mut self.hw
    }

    /// Hardware and memory together (a DMA in the model reads memory).
    pub fn hw_and_mem(&mut self) -> (&mut H, &mut M) {
        (&mut self.hw, &mut self.mem)
    }

    /// The memory.
    pub fn mem(&self) -> &M {
        &self.mem
    }

    /// The platform.
    pub fn platform(&self) -> &P {
        &self.plat
    }

    /// The platform, mutably.
    pub fn platform_mut(&mut self) -> &mut P {
        &mut self.plat
    }

    /// Guest pages whose reference is still held waiting for an invalidation,
    /// including those held for good behind a broken device.
    pub fn held_guest_pages(&self) -> Vec<Mfn> {
        let mut v: Vec<Mfn> = self.held.iter().flat_map(|h| h.release.guest.iter().map(|g| g.0)).collect();
        v.extend(self.ready.iter().chain(self.leaked.iter()).flat_map(|r| r.guest.iter().map(|g| g.0)));
        v
    }

    /// Table frames not yet returned to the allocator.
    pub fn held_table_pages(&self) -> Vec<Mfn> {
        let mut v: Vec<Mfn> = self.held.iter().flat_map(|h| h.release.tables.iter().copied()).collect();
        v.extend(self.ready.iter().chain(self.leaked.iter()).flat_map(|r| r.tables.iter().copied()));
        v
    }

    /// True while something awaits an invalidation or its budgeted release
    /// (each [`Iommu::poll`] moves it on).
    pub fn releases_pending(&self) -> bool {
        !self.held.is_empty() || !self.ready.is_empty()
    }

    /// True when `dev` was declared broken after a device-TLB time-out.
    pub fn device_broken(&self, dev: PciSbdf) -> bool {
        self.devices.get(&dev).is_some_and(|d| d.broken)
    }

    /// The context a device is attached to (None: quarantine or broken).
    pub fn device_context(&self, dev: PciSbdf) -> Option<(DomId, CtxNo)> {
        let d = self.devices.get(&dev)?;
        if d.broken {
            return None;
        }
        d.owner.map(|o| (o, CtxNo(d.ctx)))
    }

    /// Page-table pages a domain's allocated contexts use (its arena usage).
    pub fn arena_used(&self, dom: DomId) -> Option<u64> {
        self.domains.get(&dom).map(|d| d.arena_used)
    }

    fn alloc_did(&mut self) -> Option<u16> {
        let nd = self.hw.domain_ids().min(1 << 16);
        let did = (2..nd).find(|d| !self.dids.contains(&(*d as u16)))? as u16;
        self.dids.insert(did);
        Some(did)
    }

    /// The next DMA-remapping fault the unit recorded, with the device and
    /// owning domain it belongs to (for logging and quarantine decisions).
    pub fn next_fault(&mut self) -> Option<(FaultRecord, Option<PciSbdf>, Option<DomId>)> {
        let f = self.hw.take_fault()?;
        let dev = self.devices.keys().copied().find(|k| Sid::from(*k).0 == f.sid());
        let owner = dev.and_then(|d| self.devices.get(&d)).and_then(|d| d.owner);
        Some((f, dev, owner))
    }

    /// Replay: the context's mappings as coalesced ranges (walks the table).
    pub fn replay(&self, dom: DomId, ctx: CtxNo) -> Result<Vec<MappedRange>, Error> {
        let d = self.domains.get(&dom).ok_or(Error::NoDev)?;
        let c = d.contexts.get(&ctx.0).ok_or(Error::NoEnt)?;
        c.table.replay(&self.mem).map_err(|_| Error::Fault)
    }
}

fn in_msi(dfn: u64) -> bool {
    (MSI_FIRST_DFN..MSI_FIRST_DFN + MSI_PAGES).contains(&dfn)
}
