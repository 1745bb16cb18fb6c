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

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::vec::Vec;

use pv_iommu_abi::{
    self as abi, alloc_flags, cap, decode, errno, free_flags, map_flags, subop, AbiError, Alloc, Capabilities, Free,
    Init, MapPages, Op, ReattachDevice, RemoteCmd, UnmapPages,
};

use crate::hw::Hardware;
use crate::mem::{Memory, PageAlloc, PhysMem};
use crate::pagetable::{MappedRange, PtError, SlTable};
use crate::qi::{seq_done, InvQueue};
use crate::types::{CtxNo, Dfn, DomId, Gfn, Instant, Mfn, PciSbdf, Sid};
use crate::vtd::{
    AddrWidth, ContextEntry, ContextGranularity, FaultRecord, Inv, IotlbGranularity, Perm, RootEntry, TranslationType,
};

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
    /// Pages handled per map/unmap issue before a restart.
    pub preempt_pages: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            hardware_domain: DomId(0),
            max_ctx_limit: 1024,
            max_arena_order: 20,
            devtlb_timeout_ns: 60_000_000_000,
            preempt_pages: 256,
        }
    }
}

/// What the hypervisor around the core provides: page references, domain
/// memory, guest copies.
pub trait Platform {
    /// Takes a reference on the page `dom` names `gfn` (its own page or a
    /// page granted to it, writable if asked). `None`: not a usable page.
    fn get_page(&mut self, dom: DomId, gfn: Gfn, writable: bool) -> Option<Mfn>;
    /// Drops a reference taken by [`Platform::get_page`].
    fn put_page(&mut self, mfn: Mfn);
    /// The domain's own memory, for the default (bus = MFN) and identity
    /// (bus = GFN) contexts.
    fn domain_pages(&self, dom: DomId) -> Vec<(Gfn, Mfn)>;
    /// Copies from a guest virtual address; false on a fault.
    fn copy_from_guest(&mut self, dom: DomId, addr: u64, buf: &mut [u8]) -> bool;
    /// Copies to a guest virtual address; false on a fault.
    fn copy_to_guest(&mut self, dom: DomId, addr: u64, buf: &[u8]) -> bool;
}

/// Errors returned to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// -EPERM.
    Perm,
    /// -ENOENT.
    NoEnt,
    /// -E2BIG.
    TooBig,
    /// -ENOMEM.
    NoMem,
    /// -EACCES.
    Access,
    /// -EFAULT.
    Fault,
    /// -EBUSY.
    Busy,
    /// -ENODEV.
    NoDev,
    /// -EINVAL.
    Inval,
    /// -ENOSPC.
    NoSpc,
    /// -EOPNOTSUPP.
    OpNotSupp,
    /// -EADDRINUSE.
    AddrInUse,
    /// -EADDRNOTAVAIL.
    AddrNotAvail,
}

impl Error {
    /// The positive errno.
    pub fn errno(self) -> i64 {
        match self {
            Error::Perm => errno::EPERM,
            Error::NoEnt => errno::ENOENT,
            Error::TooBig => errno::E2BIG,
            Error::NoMem => errno::ENOMEM,
            Error::Access => errno::EACCES,
            Error::Fault => errno::EFAULT,
            Error::Busy => errno::EBUSY,
            Error::NoDev => errno::ENODEV,
            Error::Inval => errno::EINVAL,
            Error::NoSpc => errno::ENOSPC,
            Error::OpNotSupp => errno::EOPNOTSUPP,
            Error::AddrInUse => errno::EADDRINUSE,
            Error::AddrNotAvail => errno::EADDRNOTAVAIL,
        }
    }
}

impl From<AbiError> for Error {
    fn from(e: AbiError) -> Self {
        match e {
            AbiError::UnknownSubop(_) => Error::OpNotSupp,
            AbiError::Truncated { .. } => Error::Fault,
        }
    }
}

/// A successful handler result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Finished; the hypercall returns 0.
    Done,
    /// Preempted with progress recorded in the argument; re-issue the same
    /// hypercall (Xen: `hypercall_create_continuation`).
    Restart,
}

/// The value `do_iommu_op` returns for a handler result.
pub fn hypercall_return(r: Result<Outcome, Error>) -> i64 {
    match r {
        Ok(Outcome::Done) => 0,
        Ok(Outcome::Restart) => -errno::ERESTART,
        Err(e) => -e.errno(),
    }
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

struct Domain {
    enabled: bool,
    dying: bool,
    initialised: bool,
    max_ctx_no: u32,
    arena_limit: u64,
    arena_used: u64,
    contexts: BTreeMap<u16, Context>,
}

/// A reserved device-frame range of a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rmrr {
    /// First frame (mapped 1:1: dfn = mfn).
    pub first: u64,
    /// Pages.
    pub count: u64,
}

struct Device {
    owner: Option<DomId>,
    ctx: u16,
    ats: bool,
    broken: bool,
    rmrr: Vec<Rmrr>,
}

/// Resources freed once one wait descriptor completes.
#[derive(Default)]
struct Release {
    guest: Vec<Mfn>,
    tables: Vec<Mfn>,
    dids: Vec<u16>,
    budget: Option<(DomId, u64)>,
}

impl Release {
    fn is_empty(&self) -> bool {
        self.guest.is_empty() && self.tables.is_empty() && self.dids.is_empty() && self.budget.is_none()
    }
}

struct Held {
    seq: u32,
    group: u64,
    /// The ATS device whose device-TLB invalidation this wait covers.
    sid: Option<Sid>,
    deadline: Instant,
    release: Release,
}

/// One batch of invalidations and what waits on them.
#[derive(Default)]
struct Flush {
    context: Vec<(u16, Sid)>,
    iotlb_domain: Vec<u16>,
    /// (did, first dfn, pages), merged when contiguous.
    iotlb_pages: Vec<(u16, u64, u64)>,
    /// Device TLBs to invalidate: the listed page runs, or everything.
    devtlb: BTreeMap<Sid, Option<Vec<(u64, u64)>>>,
    release: Release,
}

impl Flush {
    fn page(&mut self, did: u16, dfn: u64) {
        if let Some(last) = self.iotlb_pages.last_mut() {
            if last.0 == did && last.1 + last.2 == dfn {
                last.2 += 1;
                return;
            }
        }
        self.iotlb_pages.push((did, dfn, 1));
    }

    fn devtlb_page(&mut self, sid: Sid, dfn: u64) {
        let e = self.devtlb.entry(sid).or_insert_with(|| Some(Vec::new()));
        if let Some(runs) = e {
            if let Some(last) = runs.last_mut() {
                if last.0 + last.1 == dfn {
                    last.1 += 1;
                    return;
                }
            }
            runs.push((dfn, 1));
        }
    }

    fn devtlb_all(&mut self, sid: Sid) {
        self.devtlb.insert(sid, None);
    }

    fn is_empty(&self) -> bool {
        self.context.is_empty()
            && self.iotlb_domain.is_empty()
            && self.iotlb_pages.is_empty()
            && self.devtlb.is_empty()
            && self.release.is_empty()
    }
}

/// Splits `[first, first+count)` into naturally aligned power-of-two chunks.
fn aligned_chunks(mut first: u64, count: u64, out: &mut Vec<(u64, u8)>) {
    let end = first.saturating_add(count);
    while first < end {
        let align = if first == 0 { 63 } else { first.trailing_zeros().min(63) };
        let fit = 63 - (end - first).leading_zeros();
        let order = align.min(fit);
        out.push((first, order as u8));
        first += 1u64 << order;
    }
}

/// Table memory as the core writes it: root, context and second-level
/// entries, and new table pages. On a unit without page-walk coherency
/// (ECAP.C = 0) the unit does not snoop CPU caches, so each entry written
/// and each freshly zeroed table page is written back at once
/// ([`Hardware::flush_cache`]) — before the parent entry or the
/// invalidation that publishes it. On a coherent unit nothing is added.
struct Tables<'a, M, H> {
    mem: &'a mut M,
    hw: &'a mut H,
}

/// Bytes per table page.
const TABLE_PAGE: u64 = 4096;

impl<M: PhysMem, H: Hardware> Tables<'_, M, H> {
    fn flush(&mut self, pa: u64, len: u64) {
        if !self.hw.coherent() {
            self.hw.flush_cache(self.mem, pa, len);
        }
    }
}

impl<M: PhysMem, H: Hardware> PhysMem for Tables<'_, M, H> {
    fn read_u64(&self, pa: u64) -> Option<u64> {
        self.mem.read_u64(pa)
    }
    fn write_u64(&mut self, pa: u64, v: u64) {
        self.mem.write_u64(pa, v);
        self.flush(pa, 8);
    }
    fn write_back(&mut self, pa: u64, len: u64) {
        self.mem.write_back(pa, len)
    }
}

impl<M: Memory, H: Hardware> PageAlloc for Tables<'_, M, H> {
    fn alloc_zeroed(&mut self) -> Option<Mfn> {
        let m = self.mem.alloc_zeroed()?;
        // The zeroes too: a reused frame may still hold an old table in
        // memory, which is all a non-coherent unit would read.
        self.flush(m.addr(), TABLE_PAGE);
        Some(m)
    }
    fn free_page(&mut self, mfn: Mfn) {
        self.mem.free_page(mfn)
    }
}

/// Page allocation charged to a budget.
struct Budgeted<'a, M> {
    mem: &'a mut M,
    left: u64,
    used: u64,
}

impl<M: PhysMem> PhysMem for Budgeted<'_, M> {
    fn read_u64(&self, pa: u64) -> Option<u64> {
        self.mem.read_u64(pa)
    }
    fn write_u64(&mut self, pa: u64, v: u64) {
        self.mem.write_u64(pa, v)
    }
    fn write_back(&mut self, pa: u64, len: u64) {
        self.mem.write_back(pa, len)
    }
}

impl<M: PageAlloc> PageAlloc for Budgeted<'_, M> {
    fn alloc_zeroed(&mut self) -> Option<Mfn> {
        if self.left == 0 {
            return None;
        }
        let m = self.mem.alloc_zeroed()?;
        self.left -= 1;
        self.used += 1;
        Some(m)
    }
    fn free_page(&mut self, mfn: Mfn) {
        self.mem.free_page(mfn);
        self.used = self.used.saturating_sub(1);
        self.left = self.left.saturating_add(1);
    }
}

/// Errors of the host-side management calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MgmtError {
    /// Out of hypervisor memory.
    NoMemory,
    /// No such domain or device, or it is in the wrong state.
    Invalid,
    /// A reserved range collides with an existing mapping.
    Conflict,
    /// The invalidation backlog is full; poll and retry.
    Busy,
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
    leaked: Vec<Release>,
    next_group: u64,
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
            leaked: Vec::new(),
            next_group: 0,
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
        let mut v: Vec<Mfn> = self.held.iter().flat_map(|h| h.release.guest.iter().copied()).collect();
        v.extend(self.leaked.iter().flat_map(|r| r.guest.iter().copied()));
        v
    }

    /// Table frames not yet returned to the allocator.
    pub fn held_table_pages(&self) -> Vec<Mfn> {
        let mut v: Vec<Mfn> = self.held.iter().flat_map(|h| h.release.tables.iter().copied()).collect();
        v.extend(self.leaked.iter().flat_map(|r| r.tables.iter().copied()));
        v
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

    fn context_slot(&self, sid: Sid) -> Option<u64> {
        self.ctx_tables.get(&sid.bus()).map(|t| t.addr() + sid.devfn() as u64 * 16)
    }

    /// Rewrites a device's context entry: clear P, write the high half,
    /// then the low half with P. A DMA in between faults (fail closed).
    /// Each write is flushed on a non-coherent unit (the entry's 16 bytes
    /// share one cache line, so the unit never sees the new high half with
    /// a stale present low half).
    fn write_context_entry(&mut self, sid: Sid, e: ContextEntry) {
        if let Some(at) = self.context_slot(sid) {
            let mut t = self.tables();
            t.write_u64(at, 0);
            t.write_u64(at + 8, e.hi);
            t.write_u64(at, e.lo);
        }
    }

    /// Table memory with the flushes a non-coherent unit needs.
    fn tables(&mut self) -> Tables<'_, M, H> {
        Tables { mem: &mut self.mem, hw: &mut self.hw }
    }

    // ----- management (host side, not guest-reachable) -----

    /// Registers a PCI function behind this unit; it starts in quarantine.
    pub fn add_device(&mut self, dev: PciSbdf, ats: bool, rmrr: &[Rmrr]) -> Result<(), MgmtError> {
        if dev.seg != 0 || self.devices.contains_key(&dev) {
            return Err(MgmtError::Invalid);
        }
        let sid = Sid::from(dev);
        if !self.ctx_tables.contains_key(&sid.bus()) {
            let ct = self.tables().alloc_zeroed().ok_or(MgmtError::NoMemory)?;
            self.ctx_tables.insert(sid.bus(), ct);
            let r = RootEntry::new(ct);
            let at = self.root.addr() + sid.bus() as u64 * 16;
            let mut t = self.tables();
            t.write_u64(at + 8, r.hi);
            t.write_u64(at, r.lo);
        }
        let e = ContextEntry::new(self.quarantine.root(), self.aw, QUARANTINE_DID, TranslationType::Untranslated);
        self.write_context_entry(sid, e);
        // The entry was not present before: nothing cached (with CM=0).
        let mut f = Flush::default();
        if self.hw.caching_mode() {
            f.context.push((QUARANTINE_DID, sid));
        }
        self.devices.insert(dev, Device { owner: None, ctx: 0, ats, broken: false, rmrr: rmrr.to_vec() });
        self.commit(f, Instant(0));
        Ok(())
    }

    /// Creates a domain's PV-IOMMU state with its default context (bus
    /// address = MFN of each of its pages). `enabled` false: every call
    /// returns -ENODEV.
    pub fn add_domain(&mut self, dom: DomId, enabled: bool) -> Result<(), MgmtError> {
        if self.domains.get(&dom).is_some_and(|d| !d.dying) {
            return Err(MgmtError::Invalid);
        }
        // A dying predecessor's arena pages still await release.
        let pending = self.held.iter().any(|h| h.release.budget.is_some_and(|(d, _)| d == dom));
        if pending {
            return Err(MgmtError::Busy);
        }
        let did = self.alloc_did().ok_or(MgmtError::NoMemory)?;
        let aw = self.aw;
        let table = match SlTable::new(&mut self.tables(), aw) {
            Ok(t) => t,
            Err(_) => {
                self.dids.remove(&did);
                return Err(MgmtError::NoMemory);
            }
        };
        for (_, mfn) in self.plat.domain_pages(dom) {
            if in_msi(mfn.0) {
                continue;
            }
            match table.map(&mut self.tables(), Dfn(mfn.0), mfn, Perm::RW, false) {
                Ok(()) | Err(PtError::InUse) | Err(PtError::OutOfRange) => {}
                Err(_) => {
                    // No device was ever attached: nothing cached, free at once.
                    let (frames, _) = table.destroy(&self.mem).unwrap_or_default();
                    for f in frames {
                        self.mem.free_page(f);
                    }
                    self.dids.remove(&did);
                    return Err(MgmtError::NoMemory);
                }
            }
        }
        let mut contexts = BTreeMap::new();
        contexts.insert(0, Context { did, kind: CtxKind::Default, table, devices: BTreeSet::new(), dying: false });
        self.domains.insert(
            dom,
            Domain {
                enabled,
                dying: false,
                initialised: false,
                max_ctx_no: 0,
                arena_limit: 0,
                arena_used: 0,
                contexts,
            },
        );
        Ok(())
    }

    /// Gives a quarantined device to `dom`: its RMRRs are mapped 1:1 in every
    /// context of the domain and it is attached to context 0.
    pub fn assign_device(&mut self, dev: PciSbdf, dom: DomId, now: Instant) -> Result<(), MgmtError> {
        let d = self.devices.get(&dev).ok_or(MgmtError::Invalid)?;
        if d.owner.is_some() || d.broken {
            return Err(MgmtError::Invalid);
        }
        let rmrr = d.rmrr.clone();
        let ats = d.ats;
        let domain = self.domains.get(&dom).ok_or(MgmtError::Invalid)?;
        if domain.dying {
            return Err(MgmtError::Invalid);
        }
        if !self.queue.has_room(8) {
            return Err(MgmtError::Busy);
        }
        // Check first, then change: a reserved frame mapped to anything but
        // itself is a conflict.
        for ctx in domain.contexts.values() {
            for r in &rmrr {
                for p in r.first..r.first.saturating_add(r.count) {
                    if let Some(l) = ctx.table.lookup(&self.mem, Dfn(p)) {
                        if l.mfn != Mfn(p) || l.holds_ref {
                            return Err(MgmtError::Conflict);
                        }
                    }
                }
            }
        }
        let domain = self.domains.get_mut(&dom).ok_or(MgmtError::Invalid)?;
        for ctx in domain.contexts.values() {
            let mut t = Tables { mem: &mut self.mem, hw: &mut self.hw };
            let mut b = Budgeted {
                mem: &mut t,
                left: if ctx.kind == CtxKind::Default {
                    u64::MAX
                } else {
                    domain.arena_limit.saturating_sub(domain.arena_used)
                },
                used: 0,
            };
            let mut res = Ok(());
            'outer: for r in &rmrr {
                for p in r.first..r.first.saturating_add(r.count) {
                    match ctx.table.map(&mut b, Dfn(p), Mfn(p), Perm::RW, false) {
                        Ok(()) | Err(PtError::InUse) => {}
                        Err(_) => {
                            res = Err(MgmtError::NoMemory);
                            break 'outer;
                        }
                    }
                }
            }
            if ctx.kind != CtxKind::Default {
                domain.arena_used += b.used;
            }
            res?;
        }
        let ctx0 = domain.contexts.get_mut(&0).ok_or(MgmtError::Invalid)?;
        ctx0.devices.insert(dev);
        let e = ContextEntry::new(
            ctx0.table.root(),
            self.aw,
            ctx0.did,
            if ats { TranslationType::DeviceTlb } else { TranslationType::Untranslated },
        );
        if let Some(d) = self.devices.get_mut(&dev) {
            d.owner = Some(dom);
            d.ctx = 0;
        }
        let sid = Sid::from(dev);
        self.write_context_entry(sid, e);
        let mut f = Flush::default();
        f.context.push((QUARANTINE_DID, sid));
        f.iotlb_domain.push(QUARANTINE_DID);
        self.commit(f, now);
        Ok(())
    }

    /// Takes a device back from its domain into quarantine.
    pub fn deassign_device(&mut self, dev: PciSbdf, now: Instant) -> Result<(), MgmtError> {
        let d = self.devices.get(&dev).ok_or(MgmtError::Invalid)?;
        let owner = d.owner.ok_or(MgmtError::Invalid)?;
        if !self.queue.has_room(8) {
            return Err(MgmtError::Busy);
        }
        let mut f = Flush::default();
        self.detach_to_quarantine(dev, owner, &mut f);
        if let Some(d) = self.devices.get_mut(&dev) {
            d.owner = None;
            d.ctx = 0;
        }
        self.commit(f, now);
        Ok(())
    }

    fn detach_to_quarantine(&mut self, dev: PciSbdf, owner: DomId, f: &mut Flush) {
        let Some(d) = self.devices.get(&dev) else {
            return;
        };
        let (ctx_no, ats, broken) = (d.ctx, d.ats, d.broken);
        let sid = Sid::from(dev);
        let mut old_did = None;
        if let Some(ctx) = self.domains.get_mut(&owner).and_then(|dm| dm.contexts.get_mut(&ctx_no)) {
            if ctx.devices.remove(&dev) {
                old_did = Some(ctx.did);
            }
        }
        if broken {
            return; // its entry stays not-present
        }
        let e = ContextEntry::new(self.quarantine.root(), self.aw, QUARANTINE_DID, TranslationType::Untranslated);
        self.write_context_entry(sid, e);
        if let Some(did) = old_did {
            f.context.push((did, sid));
            f.iotlb_domain.push(did);
        }
        if ats {
            f.devtlb_all(sid);
        }
    }

    /// Starts tearing a domain down: no call is served for it any more, its
    /// devices go to quarantine, and its contexts are freed (tables and page
    /// references released once invalidated).
    pub fn destroy_domain(&mut self, dom: DomId, now: Instant) -> Result<(), MgmtError> {
        let domain = self.domains.get_mut(&dom).ok_or(MgmtError::Invalid)?;
        if domain.dying {
            return Err(MgmtError::Invalid);
        }
        domain.dying = true;
        for c in domain.contexts.values_mut() {
            c.dying = true;
        }
        let owned: Vec<PciSbdf> = self.devices.iter().filter(|(_, d)| d.owner == Some(dom)).map(|(k, _)| *k).collect();
        let mut f = Flush::default();
        for dev in owned {
            self.detach_to_quarantine(dev, dom, &mut f);
            if let Some(d) = self.devices.get_mut(&dev) {
                d.owner = None;
                d.ctx = 0;
            }
        }
        let ctx_nos: Vec<u16> =
            self.domains.get(&dom).map(|d| d.contexts.keys().copied().collect()).unwrap_or_default();
        for n in ctx_nos {
            self.teardown_context(dom, n, &mut f);
        }
        self.commit(f, now);
        // The entry stays, marked dying, so late calls get -EINVAL; a new
        // domain with the same id replaces it.
        Ok(())
    }

    fn teardown_context(&mut self, dom: DomId, ctx_no: u16, f: &mut Flush) {
        let Some(domain) = self.domains.get_mut(&dom) else {
            return;
        };
        let Some(ctx) = domain.contexts.remove(&ctx_no) else {
            return;
        };
        // A corrupt table is leaked rather than half freed.
        let (frames, leaves) = ctx.table.destroy(&self.mem).unwrap_or_default();
        for l in leaves {
            if l.holds_ref {
                f.release.guest.push(l.mfn);
            }
        }
        if ctx.kind != CtxKind::Default {
            let n = frames.len() as u64;
            let (d, total) = f.release.budget.get_or_insert((dom, 0));
            debug_assert_eq!(*d, dom);
            *total += n;
        }
        f.release.tables.extend(frames);
        f.iotlb_domain.push(ctx.did);
        f.release.dids.push(ctx.did);
    }

    // ----- invalidation -----

    /// Queues a batch: context-cache, IOTLB and a wait; then per ATS device
    /// its device-TLB invalidations and a wait of its own, so a late device
    /// is identified by its wait. Resources are released after the last wait.
    fn commit(&mut self, mut f: Flush, now: Instant) {
        if f.is_empty() {
            return;
        }
        let group = self.next_group;
        self.next_group += 1;
        for (did, sid) in core::mem::take(&mut f.context) {
            self.queue.push(Inv::Context(ContextGranularity::Device { did, sid: sid.0 }));
        }
        let mut domains: BTreeSet<u16> = f.iotlb_domain.iter().copied().collect();
        let mut chunks = Vec::new();
        let mut by_did: BTreeMap<u16, Vec<(u64, u8)>> = BTreeMap::new();
        for &(did, first, count) in &f.iotlb_pages {
            if domains.contains(&did) {
                continue;
            }
            chunks.clear();
            aligned_chunks(first, count, &mut chunks);
            by_did.entry(did).or_default().extend_from_slice(&chunks);
        }
        for (did, ch) in &by_did {
            if ch.len() > MAX_RANGES {
                domains.insert(*did);
            }
        }
        for did in &domains {
            self.queue.push(Inv::Iotlb(IotlbGranularity::Domain { did: *did }));
        }
        for (did, ch) in by_did {
            if domains.contains(&did) {
                continue;
            }
            for (first, order) in ch {
                self.queue.push(Inv::Iotlb(IotlbGranularity::Page { did, addr: first << 12, am: order }));
            }
        }
        let mut waits: Vec<(u32, Option<Sid>)> = Vec::new();
        let (w, seq) = self.queue.wait();
        self.queue.push(w);
        waits.push((seq, None));
        for (sid, runs) in core::mem::take(&mut f.devtlb) {
            if self.sid_broken(sid) {
                continue;
            }
            let mut descs = Vec::new();
            if let Some(runs) = runs {
                for (first, count) in runs {
                    aligned_chunks(first, count, &mut descs);
                }
            }
            if descs.is_empty() || descs.len() > MAX_RANGES {
                // S=1 with every address bit below 63 set: all of the device TLB.
                self.queue.push(Inv::DevTlb { sid: sid.0, addr: 0x7fff_ffff_ffff_f000, size: true });
            } else {
                for (first, order) in descs {
                    let (addr, size) = crate::vtd::devtlb_range(first, order);
                    self.queue.push(Inv::DevTlb { sid: sid.0, addr, size });
                }
            }
            let (w, seq) = self.queue.wait();
            self.queue.push(w);
            waits.push((seq, Some(sid)));
        }
        let last = waits.len() - 1;
        let deadline = now.after_ns(self.cfg.devtlb_timeout_ns);
        let mut release = Some(core::mem::take(&mut f.release));
        for (i, (seq, sid)) in waits.into_iter().enumerate() {
            let r = if i == last { release.take().unwrap_or_default() } else { Release::default() };
            self.held.push_back(Held { seq, group, sid, deadline, release: r });
        }
        self.poll(now);
    }

    fn sid_broken(&self, sid: Sid) -> bool {
        self.devices.iter().any(|(k, d)| Sid::from(*k) == sid && d.broken)
    }

    fn release(&mut self, r: Release) {
        for m in r.guest {
            self.plat.put_page(m);
        }
        for t in r.tables {
            self.mem.free_page(t);
        }
        for did in r.dids {
            self.dids.remove(&did);
        }
        if let Some((dom, n)) = r.budget {
            if let Some(d) = self.domains.get_mut(&dom) {
                d.arena_used = d.arena_used.saturating_sub(n);
            }
        }
    }

    /// Advances invalidation: pushes queued descriptors, releases what
    /// completed waits cover, and declares broken any ATS device whose
    /// device-TLB invalidation is older than the time-out (its context entry
    /// is blocked; everything its invalidation covered stays held for good).
    pub fn poll(&mut self, now: Instant) {
        // Each round moves descriptors, releases or breaks at least one
        // entry, or stops; the bound covers all of them.
        let rounds = self.held.len() + self.queue.backlog_len() + 1;
        for _ in 0..rounds {
            let moved = self.queue.pump(&mut self.mem, &mut self.hw);
            let done = self.queue.completed(&self.mem);
            while let Some(h) = self.held.front() {
                if !seq_done(done, h.seq) {
                    break;
                }
                if let Some(h) = self.held.pop_front() {
                    self.release(h.release);
                }
            }
            match self.held.front() {
                Some(h) if now >= h.deadline && h.sid.is_some() => {
                    let sid = h.sid.unwrap_or_default();
                    self.break_device(sid, now);
                }
                _ if moved > 0 && self.queue.backlog_len() > 0 => {}
                _ => break,
            }
        }
    }

    fn break_device(&mut self, sid: Sid, now: Instant) {
        let groups: BTreeSet<u64> = self.held.iter().filter(|h| h.sid == Some(sid)).map(|h| h.group).collect();
        for h in self.held.iter_mut() {
            if groups.contains(&h.group) && !h.release.is_empty() {
                self.leaked.push(core::mem::take(&mut h.release));
            }
        }
        let devs: Vec<PciSbdf> = self.devices.keys().copied().filter(|k| Sid::from(*k) == sid).collect();
        let mut f = Flush::default();
        for dev in devs {
            let Some(d) = self.devices.get_mut(&dev) else {
                continue;
            };
            if d.broken {
                continue;
            }
            d.broken = true;
            let (owner, ctx_no) = (d.owner, d.ctx);
            if let Some(ctx) = owner.and_then(|o| self.domains.get_mut(&o)).and_then(|dm| dm.contexts.get_mut(&ctx_no))
            {
                ctx.devices.remove(&dev);
                f.context.push((ctx.did, sid));
                f.iotlb_domain.push(ctx.did);
            }
            if let Some(at) = self.context_slot(sid) {
                // Not present: untranslated and translated requests fault.
                let mut t = self.tables();
                t.write_u64(at, 0);
                t.write_u64(at + 8, 0);
            }
        }
        self.hw.abort_device_tlb(&mut self.mem, sid);
        // Queued behind the aborted wait; processed now that it completes.
        if !f.is_empty() {
            let group = self.next_group;
            self.next_group += 1;
            for (did, s) in core::mem::take(&mut f.context) {
                self.queue.push(Inv::Context(ContextGranularity::Device { did, sid: s.0 }));
            }
            for did in core::mem::take(&mut f.iotlb_domain) {
                self.queue.push(Inv::Iotlb(IotlbGranularity::Domain { did }));
            }
            let (w, seq) = self.queue.wait();
            self.queue.push(w);
            self.held.push_back(Held {
                seq,
                group,
                sid: None,
                deadline: now.after_ns(self.cfg.devtlb_timeout_ns),
                release: Release::default(),
            });
        }
    }

    // ----- the hypercall -----

    /// `do_iommu_op(subop, arg)` for `caller`, at time `now`.
    pub fn handle(&mut self, caller: DomId, subop: u32, arg: &mut [u8], now: Instant) -> Result<Outcome, Error> {
        self.poll(now);
        if subop == abi::subop::REMOTE_CMD {
            return self.remote_cmd(caller, arg, now);
        }
        self.handle_for(caller, subop, arg, now)
    }

    fn remote_cmd(&mut self, caller: DomId, arg: &mut [u8], now: Instant) -> Result<Outcome, Error> {
        if caller != self.cfg.hardware_domain {
            return Err(Error::Perm);
        }
        self.domain(caller)?;
        let rc = RemoteCmd::parse(arg)?;
        let inner = rc.subop as u32;
        if inner == subop::REMOTE_CMD {
            return Err(Error::Inval);
        }
        let size = abi::arg_size(inner)?;
        let mut buf = [0u8; 64];
        let buf = buf.get_mut(..size).ok_or(Error::Fault)?;
        if !self.plat.copy_from_guest(caller, rc.arg, buf) {
            return Err(Error::Fault);
        }
        let r = self.handle_for(rc.target(), inner, buf, now);
        if !self.plat.copy_to_guest(caller, rc.arg, buf) {
            return Err(Error::Fault);
        }
        r
    }

    fn domain(&self, dom: DomId) -> Result<&Domain, Error> {
        match self.domains.get(&dom) {
            Some(d) if d.enabled && !d.dying => Ok(d),
            Some(d) if d.dying => Err(Error::Inval),
            _ => Err(Error::NoDev),
        }
    }

    fn domain_mut(&mut self, dom: DomId) -> Result<&mut Domain, Error> {
        match self.domains.get_mut(&dom) {
            Some(d) if d.enabled && !d.dying => Ok(d),
            Some(d) if d.dying => Err(Error::Inval),
            _ => Err(Error::NoDev),
        }
    }

    fn handle_for(&mut self, dom: DomId, subop: u32, arg: &mut [u8], now: Instant) -> Result<Outcome, Error> {
        self.domain(dom)?;
        match decode(subop, arg)? {
            Op::Noop => Ok(Outcome::Done),
            Op::QueryCapabilities => self.query_caps(dom, arg),
            Op::Init(i) => self.init(dom, i),
            Op::AllocContext(a) => self.alloc_context(dom, a, arg),
            Op::FreeContext(f) => self.free_context(dom, f, now),
            Op::ReattachDevice(r) => self.reattach(dom, r, now),
            Op::MapPages(m) => self.map_pages(dom, m, arg, now),
            Op::UnmapPages(u) => self.unmap_pages(dom, u, arg, now),
            Op::RemoteCmd(_) => Err(Error::Inval),
            Op::Unsupported(_) => Err(Error::OpNotSupp),
        }
    }

    fn query_caps(&mut self, dom: DomId, arg: &mut [u8]) -> Result<Outcome, Error> {
        let d = self.domain(dom)?;
        let caps = Capabilities {
            max_iova_addr: (1u64 << self.aw.bits()) - 1,
            cap_flags: cap::DEFAULT_IDENTITY | cap::IDENTITY,
            pgsize_mask: 1 << 12,
            max_pasid: 0,
            max_ctx_no: d.max_ctx_no.min(u16::MAX as u32) as u16,
            pad0: 0,
        };
        caps.write_to(arg)?;
        Ok(Outcome::Done)
    }

    fn init(&mut self, dom: DomId, i: Init) -> Result<Outcome, Error> {
        let limit = self.cfg.max_ctx_limit.min(u16::MAX as u32);
        let max_order = self.cfg.max_arena_order.min(40);
        let d = self.domain_mut(dom)?;
        if d.initialised {
            return Err(Error::Access);
        }
        if i.max_ctx_no == u32::MAX || i.max_ctx_no > limit || i.arena_order > max_order {
            return Err(Error::TooBig);
        }
        d.initialised = true;
        d.max_ctx_no = i.max_ctx_no;
        d.arena_limit = 1u64 << i.arena_order;
        // No fall-through into alloc_context.
        Ok(Outcome::Done)
    }

    /// Reserved frames of `dom`: the MSI window and its devices' RMRRs.
    fn reserved(&self, dom: DomId, dfn: u64) -> bool {
        in_msi(dfn)
            || self
                .devices
                .values()
                .filter(|d| d.owner == Some(dom))
                .any(|d| d.rmrr.iter().any(|r| dfn >= r.first && dfn - r.first < r.count))
    }

    fn alloc_context(&mut self, dom: DomId, a: Alloc, arg: &mut [u8]) -> Result<Outcome, Error> {
        if a.alloc_flags & !alloc_flags::ALL != 0 {
            return Err(Error::Inval);
        }
        let identity = a.alloc_flags & alloc_flags::IDENTITY != 0;
        let d = self.domain(dom)?;
        let max = d.max_ctx_no.min(u16::MAX as u32) as u16;
        let ctx_no = (1..=max).find(|n| !d.contexts.contains_key(n)).ok_or(Error::NoSpc)?;
        let (limit, used) = (d.arena_limit, d.arena_used);
        let rmrr: Vec<Rmrr> =
            self.devices.values().filter(|x| x.owner == Some(dom)).flat_map(|x| x.rmrr.iter().copied()).collect();
        let pages = if identity { self.plat.domain_pages(dom) } else { Vec::new() };
        let did = self.alloc_did().ok_or(Error::NoSpc)?;
        let mut t = Tables { mem: &mut self.mem, hw: &mut self.hw };
        let mut b = Budgeted { mem: &mut t, left: limit.saturating_sub(used), used: 0 };
        let built = (|| -> Result<SlTable, (Option<SlTable>, Error)> {
            let table = SlTable::new(&mut b, self.aw).map_err(|_| (None, Error::NoMem))?;
            for r in &rmrr {
                for p in r.first..r.first.saturating_add(r.count) {
                    match table.map(&mut b, Dfn(p), Mfn(p), Perm::RW, false) {
                        Ok(()) | Err(PtError::InUse) => {}
                        Err(_) => return Err((Some(table), Error::NoMem)),
                    }
                }
            }
            for (gfn, mfn) in &pages {
                if in_msi(gfn.0) || rmrr.iter().any(|r| gfn.0 >= r.first && gfn.0 - r.first < r.count) {
                    continue;
                }
                match table.map(&mut b, Dfn(gfn.0), *mfn, Perm::RW, false) {
                    Ok(()) | Err(PtError::InUse) | Err(PtError::OutOfRange) => {}
                    Err(_) => return Err((Some(table), Error::NoMem)),
                }
            }
            Ok(table)
        })();
        let table = match built {
            Ok(t) => t,
            Err((t, e)) => {
                // Never referenced by a context entry under a used domain id:
                // no cache can hold it, so it is freed at once.
                if let Some(t) = t {
                    if let Ok((frames, _)) = t.destroy(&*b.mem) {
                        for fr in frames {
                            b.mem.free_page(fr);
                        }
                    }
                }
                self.dids.remove(&did);
                return Err(e);
            }
        };
        let used_now = b.used;
        let d = self.domain_mut(dom)?;
        d.arena_used += used_now;
        let kind = if identity { CtxKind::Identity } else { CtxKind::Paged };
        d.contexts.insert(ctx_no, Context { did, kind, table, devices: BTreeSet::new(), dying: false });
        Alloc { ctx_no, ..a }.write_to(arg)?;
        Ok(Outcome::Done)
    }

    fn free_context(&mut self, dom: DomId, fr: Free, now: Instant) -> Result<Outcome, Error> {
        if fr.free_flags & !free_flags::ALL != 0 || fr.ctx_no == 0 {
            return Err(Error::Inval);
        }
        let d = self.domain(dom)?;
        let ctx = d.contexts.get(&fr.ctx_no).ok_or(Error::NoEnt)?;
        if ctx.dying {
            return Err(Error::Inval);
        }
        let devs: Vec<PciSbdf> = ctx.devices.iter().copied().collect();
        if !devs.is_empty() && fr.free_flags & free_flags::REATTACH_DEFAULT == 0 {
            return Err(Error::Busy);
        }
        if !self.queue.has_room(8 + 4 * devs.len()) {
            return Err(Error::Busy);
        }
        let mut f = Flush::default();
        for dev in devs {
            self.move_device(dom, dev, 0, &mut f);
        }
        self.teardown_context(dom, fr.ctx_no, &mut f);
        self.commit(f, now);
        Ok(Outcome::Done)
    }

    /// Points `dev` at context `to` of `dom` and queues the invalidations
    /// for the context it leaves.
    fn move_device(&mut self, dom: DomId, dev: PciSbdf, to: u16, f: &mut Flush) {
        let Some(d) = self.devices.get(&dev) else {
            return;
        };
        let (from, ats) = (d.ctx, d.ats);
        let Some(domain) = self.domains.get_mut(&dom) else {
            return;
        };
        let old_did = domain.contexts.get_mut(&from).map(|c| {
            c.devices.remove(&dev);
            c.did
        });
        let Some(target) = domain.contexts.get_mut(&to) else {
            return;
        };
        target.devices.insert(dev);
        let e = ContextEntry::new(
            target.table.root(),
            self.aw,
            target.did,
            if ats { TranslationType::DeviceTlb } else { TranslationType::Untranslated },
        );
        if let Some(d) = self.devices.get_mut(&dev) {
            d.ctx = to;
        }
        let sid = Sid::from(dev);
        self.write_context_entry(sid, e);
        if let Some(did) = old_did {
            f.context.push((did, sid));
            f.iotlb_domain.push(did);
        }
        if ats {
            f.devtlb_all(sid);
        }
    }

    fn reattach(&mut self, dom: DomId, r: ReattachDevice, now: Instant) -> Result<Outcome, Error> {
        if r.pasid != 0 {
            return Err(Error::OpNotSupp);
        }
        let dev = PciSbdf::from(r.dev);
        let d = self.domain(dom)?;
        let ctx = d.contexts.get(&r.ctx_no).ok_or(Error::Inval)?;
        if ctx.dying {
            return Err(Error::Inval);
        }
        let device = self.devices.get(&dev).filter(|x| x.owner == Some(dom)).ok_or(Error::NoEnt)?;
        if device.broken {
            return Err(Error::NoDev);
        }
        if device.ctx == r.ctx_no {
            return Ok(Outcome::Done);
        }
        if !self.queue.has_room(8) {
            return Err(Error::Busy);
        }
        let mut f = Flush::default();
        self.move_device(dom, dev, r.ctx_no, &mut f);
        self.commit(f, now);
        Ok(Outcome::Done)
    }

    /// Looks up a guest-managed context for map/unmap.
    fn paged_ctx(&self, dom: DomId, ctx_no: u16) -> Result<(SlTable, u16, Vec<Sid>), Error> {
        if ctx_no == 0 {
            return Err(Error::Inval);
        }
        let d = self.domain(dom)?;
        let ctx = d.contexts.get(&ctx_no).ok_or(Error::Inval)?;
        if ctx.dying || ctx.kind != CtxKind::Paged {
            return Err(Error::Inval);
        }
        let ats: Vec<Sid> = ctx
            .devices
            .iter()
            .filter(|dv| self.devices.get(dv).is_some_and(|x| x.ats && !x.broken))
            .map(|dv| Sid::from(*dv))
            .collect();
        Ok((ctx.table, ctx.did, ats))
    }

    fn map_pages(&mut self, dom: DomId, mut m: MapPages, arg: &mut [u8], now: Instant) -> Result<Outcome, Error> {
        let (table, did, _) = self.paged_ctx(dom, m.ctx_no)?;
        if m.map_flags & !map_flags::ALL != 0 || m.pgsize != 1 << 12 || m.mapped > m.nr_pages {
            return Err(Error::Inval);
        }
        let perm =
            Perm { read: m.map_flags & map_flags::READABLE != 0, write: m.map_flags & map_flags::WRITEABLE != 0 };
        if !perm.read && !perm.write {
            return Err(Error::Inval);
        }
        if !self.queue.has_room(MAX_RANGES + 2) {
            return Err(Error::Busy);
        }
        let d = self.domain(dom)?;
        let left = d.arena_limit.saturating_sub(d.arena_used);
        let caching_mode = self.hw.caching_mode();
        let mut t = Tables { mem: &mut self.mem, hw: &mut self.hw };
        let mut b = Budgeted { mem: &mut t, left, used: 0 };
        let start = m.mapped;
        let stop = m.nr_pages.min(start.saturating_add(self.cfg.preempt_pages.max(1)));
        let mut f = Flush::default();
        let mut result = Ok(());
        for i in start..stop {
            let (Some(dfn), Some(gfn)) = (m.dfn.checked_add(i as u64), m.gfn.checked_add(i as u64)) else {
                result = Err(Error::Inval);
                break;
            };
            if dfn >= table.dfn_limit() {
                result = Err(Error::Inval);
                break;
            }
            // Every page, not just the first, is checked against reserved ranges.
            let reserved = in_msi(dfn)
                || self
                    .devices
                    .values()
                    .filter(|x| x.owner == Some(dom))
                    .any(|x| x.rmrr.iter().any(|r| dfn >= r.first && dfn - r.first < r.count));
            if reserved {
                result = Err(Error::AddrNotAvail);
                break;
            }
            if table.lookup(&*b.mem, Dfn(dfn)).is_some() {
                result = Err(Error::AddrInUse);
                break;
            }
            let Some(mfn) = self.plat.get_page(dom, Gfn(gfn), perm.write) else {
                result = Err(Error::Inval);
                break;
            };
            match table.map(&mut b, Dfn(dfn), mfn, perm, true) {
                Ok(()) => {}
                Err(e) => {
                    self.plat.put_page(mfn);
                    result = Err(match e {
                        PtError::NoMemory => Error::NoMem,
                        PtError::InUse => Error::AddrInUse,
                        _ => Error::Inval,
                    });
                    break;
                }
            }
            if caching_mode {
                f.page(did, dfn);
            }
            m.mapped = i + 1;
        }
        let used = b.used;
        if let Some(d) = self.domains.get_mut(&dom) {
            d.arena_used += used;
        }
        self.commit(f, now);
        m.write_to(arg)?;
        result?;
        Ok(if m.mapped < m.nr_pages { Outcome::Restart } else { Outcome::Done })
    }

    fn unmap_pages(&mut self, dom: DomId, mut u: UnmapPages, arg: &mut [u8], now: Instant) -> Result<Outcome, Error> {
        let (table, did, ats) = self.paged_ctx(dom, u.ctx_no)?;
        if u.pgsize != 1 << 12 || u.unmapped > u.nr_pages {
            return Err(Error::Inval);
        }
        if !self.queue.has_room(MAX_RANGES * (1 + ats.len()) + 2 + ats.len()) {
            return Err(Error::Busy);
        }
        let start = u.unmapped;
        let stop = u.nr_pages.min(start.saturating_add(self.cfg.preempt_pages.max(1)));
        let mut f = Flush::default();
        let mut result = Ok(());
        for i in start..stop {
            let Some(dfn) = u.dfn.checked_add(i as u64) else {
                result = Err(Error::Inval);
                break;
            };
            if self.reserved(dom, dfn) {
                result = Err(Error::AddrNotAvail);
                break;
            }
            match table.unmap(&mut self.tables(), Dfn(dfn)) {
                Ok(leaf) => {
                    if leaf.holds_ref {
                        f.release.guest.push(leaf.mfn);
                    }
                }
                Err(PtError::NotMapped) => {
                    result = Err(Error::NoEnt);
                    break;
                }
                Err(PtError::OutOfRange) => {
                    result = Err(Error::Inval);
                    break;
                }
                Err(_) => {
                    result = Err(Error::Inval);
                    break;
                }
            }
            f.page(did, dfn);
            for s in &ats {
                f.devtlb_page(*s, dfn);
            }
            u.unmapped = i + 1;
        }
        // Flush what was unmapped, also on error (partial progress).
        self.commit(f, now);
        u.write_to(arg)?;
        result?;
        Ok(if u.unmapped < u.nr_pages { Outcome::Restart } else { Outcome::Done })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_aligned_and_cover() {
        let mut v = Vec::new();
        aligned_chunks(3, 13, &mut v);
        assert_eq!(v, [(3, 0), (4, 2), (8, 3)]);
        let mut v = Vec::new();
        aligned_chunks(0, 1, &mut v);
        assert_eq!(v, [(0, 0)]);
        let mut v = Vec::new();
        aligned_chunks(0, 512, &mut v);
        assert_eq!(v, [(0, 9)]);
    }

    #[test]
    fn return_values() {
        assert_eq!(hypercall_return(Ok(Outcome::Done)), 0);
        assert_eq!(hypercall_return(Ok(Outcome::Restart)), -85);
        assert_eq!(hypercall_return(Err(Error::AddrInUse)), -98);
    }
}
