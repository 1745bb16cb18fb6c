//! The hardware contract of a VT-d remapping unit, and a software model.
//!
//! [`Hardware`] is what the core asks of the unit: capabilities, the root
//! table pointer, the invalidation queue's tail/head, recovery from a
//! device-TLB time-out, and fault records. The MMIO implementation (register
//! offsets of §10.4, with its `unsafe` volatile accesses) belongs in the
//! hypervisor's HAL; everything here is safe.
//!
//! [`SoftVtd`] implements it for host tests by doing what the hardware does
//! with the in-memory structures: it walks the real root, context and
//! second-level tables in the model memory, keeps a context cache, an IOTLB
//! and per-device ATCs (device TLBs) that go stale until invalidated, runs
//! the queued-invalidation ring, and records faults. Translation fails closed.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;

use crate::mem::PhysMem;
use crate::types::{Mfn, Sid};
use crate::vtd::{
    devtlb_decode, AddrWidth, ContextEntry, ContextGranularity, FaultReason, FaultRecord, Inv, InvDesc,
    IotlbGranularity, Perm, RootEntry, SlPte, TranslationType, ADDR_MASK,
};

/// Bytes per queued-invalidation descriptor (128-bit descriptors, DW=0).
pub const DESC_SIZE: u64 = 16;
/// Descriptors per 4 KiB queue page.
pub const DESCS_PER_PAGE: u32 = 256;
/// Bytes per CPU cache line: the unit of [`Hardware::flush_cache`] (CLFLUSH
/// works on 64-byte lines on every x86-64 CPU).
pub const CACHE_LINE: u64 = 64;

/// Operations the core needs from a VT-d remapping unit.
///
/// How an MMIO implementation maps them (register offsets §10.4; every
/// access is a volatile 32/64-bit access in the HAL, never a reference):
///
/// | method | registers |
/// |--------|-----------|
/// | `addr_width` | CAP_REG 0x08: SAGAW bits 12:8 (bit 1 → 39-bit, bit 2 → 48-bit) |
/// | `caching_mode` | CAP_REG: CM bit 7 |
/// | `domain_ids` | CAP_REG: ND bits 2:0 → 2^(4 + 2·ND) |
/// | `set_root_table` | RTADDR_REG 0x20 ← root; GCMD_REG 0x18 SRTP (bit 30), wait GSTS_REG 0x1C RTPS; then GCMD TE (bit 31), wait GSTS TES — each wait bounded |
/// | `enable_queue` | IQT_REG 0x88 ← 0; IQA_REG 0x90 ← base \| QS (order); GCMD QIE (bit 26), wait GSTS QIES |
/// | `set_queue_tail` | IQT_REG ← tail << 4 (after a store fence) |
/// | `queue_head` | IQH_REG 0x80 >> 4 |
/// | `abort_device_tlb` | FSTS_REG 0x34: clear ITE (bit 6, RW1C) and disable ATS in the device's config space |
/// | `take_fault` | FRCD registers at CAP.FRO·16 (bits 33:24), CAP.NFR+1 (bits 47:40) of them; clear F (bit 127) after reading; FSTS PPF/PFO |
/// | `coherent` | ECAP_REG 0x10: C bit 0 (page-walk coherency) |
/// | `flush_cache` | no register: CLFLUSH of every 64-byte line ([`PhysMem::write_back`]), fenced; only when ECAP.C = 0 |
pub trait Hardware {
    /// Address width used for every context (from CAP.SAGAW, §10.4.2).
    fn addr_width(&self) -> AddrWidth;
    /// CAP.CM: the unit may cache not-present entries, so maps need flushes too.
    fn caching_mode(&self) -> bool;
    /// Number of domain ids (CAP.ND).
    fn domain_ids(&self) -> u32;
    /// Programs RTADDR_REG and latches it (GCMD.SRTP), enabling translation.
    fn set_root_table(&mut self, mem: &mut dyn PhysMem, root: Mfn);
    /// Programs IQA_REG (base, 2^order pages) and enables queued invalidation.
    fn enable_queue(&mut self, mem: &mut dyn PhysMem, base: Mfn, order: u8);
    /// Writes IQT_REG: descriptors before index `tail` may be fetched.
    fn set_queue_tail(&mut self, mem: &mut dyn PhysMem, tail: u32);
    /// Reads IQH_REG: index of the next descriptor the unit will fetch.
    fn queue_head(&self) -> u32;
    /// Recovery from an invalidation time-out (ITE) on `sid`: drop its
    /// outstanding device-TLB invalidations and disable its ATS, so later
    /// ones complete at once. The device's translation cache is *not*
    /// trusted to be clean afterwards.
    fn abort_device_tlb(&mut self, mem: &mut dyn PhysMem, sid: Sid);
    /// Pops the oldest fault record (FRCD registers, §10.4.14).
    fn take_fault(&mut self) -> Option<FaultRecord>;
    /// ECAP.C (§10.4.3, bit 0): the unit snoops CPU caches when it reads
    /// root, context and second-level paging entries. When false it reads
    /// memory only, so software must write every entry it changes (and
    /// every new table page) back from the CPU caches before an invalidation
    /// or a parent entry publishes it. (Invalidation-queue descriptors are
    /// not covered by ECAP.C and need no flush.)
    fn coherent(&self) -> bool;
    /// Writes the CPU cache lines covering `[pa, pa + len)` back to memory
    /// so a non-coherent unit reads what was written. Acts only when
    /// [`Hardware::coherent`] is false; the core calls it after each table
    /// write in that case.
    fn flush_cache(&mut self, mem: &mut dyn PhysMem, pa: u64, len: u64);

    /// A unit shared with a host IOMMU driver (a hypervisor's own VT-d code,
    /// which owns the root and context tables the hardware reads): point
    /// `sid` at the second-level table rooted at `root`, tagged for the
    /// core's domain id `did` (the unit maps it to a hardware domain id of
    /// its own), with the context- and IOTLB invalidations that takes. The
    /// core calls it before it records a move into a non-default context;
    /// an error leaves the device where it was and the core changes nothing.
    /// A unit that reads the core's own context entries (the default) has
    /// nothing to do.
    fn attach(
        &mut self,
        _mem: &mut dyn PhysMem,
        _sid: Sid,
        _root: Mfn,
        _did: u16,
        _ats: bool,
    ) -> Result<(), AttachError> {
        Ok(())
    }

    /// The counterpart of [`Hardware::attach`]: `sid` goes back to what the
    /// host driver gives its owner (the core's default context, quarantine,
    /// or a broken device's blocked entry). It cannot fail: once it returns,
    /// the device reaches none of the core's tables (a unit that cannot
    /// restore the host's mapping blocks the device instead), so the core
    /// may free them after its invalidation.
    fn detach(&mut self, _mem: &mut dyn PhysMem, _sid: Sid) {}

    /// The core no longer uses domain id `did`: every invalidation that
    /// covers it completed, and no device is attached under it.
    fn release_did(&mut self, _did: u16) {}

    /// A unit whose queue is served in software (shared with a host driver
    /// that forwards some descriptors, such as device-TLB invalidations, to
    /// the hardware without waiting for them): look at what completed since
    /// the last call and move the queue on. The core calls it once at the
    /// start of every [`Iommu::poll`](crate::iommu::Iommu::poll), never in a
    /// loop: completion is noticed on a later call, not waited for. A unit
    /// that reads the core's queue itself has nothing to do.
    fn service(&mut self, _mem: &mut dyn PhysMem) {}
}

/// Why a shared unit refused [`Hardware::attach`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachError {
    /// The host driver does not support this device in a core context (a
    /// bridge, phantom functions, another unit, other table depth).
    NotSupported,
    /// The host driver does not know the device, or has not set it up.
    NoDevice,
    /// No hardware domain id is free.
    NoSpace,
    /// The host driver failed (memory, invalidation).
    Failed,
}

/// Invalidation activity seen by the model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InvStats {
    /// Context-cache descriptors processed.
    pub context: u64,
    /// IOTLB descriptors processed, by granularity.
    pub iotlb_global: u64,
    /// Domain-selective.
    pub iotlb_domain: u64,
    /// Page-selective.
    pub iotlb_page: u64,
    /// Device-TLB descriptors processed.
    pub devtlb: u64,
    /// Wait descriptors completed.
    pub waits: u64,
    /// Descriptors refused as malformed.
    pub errors: u64,
}

#[derive(Default)]
struct SoftDevice {
    /// Device TLB: dfn -> translation, filled on translated accesses.
    atc: BTreeMap<u64, (Mfn, Perm)>,
    /// Completions of device-TLB invalidations wait for the test.
    manual: bool,
    /// ATS disabled after an abort: invalidations complete at once.
    dead: bool,
}

struct PendingDevTlb {
    sid: u16,
    first: u64,
    count: u64,
}

/// Software VT-d unit for host tests.
///
/// Non-coherent mode ([`SoftVtd::set_coherent`]`(false)`, ECAP.C = 0): the
/// unit reads root, context and paging entries from its own view of memory,
/// which holds only the 64-byte lines last written back by
/// [`Hardware::flush_cache`] (a snapshot taken at the flush). A line never
/// flushed is unreadable to the unit (the walk faults with an access
/// error); a line changed but not flushed again stays stale. So a core that
/// forgets a flush gets a fault or a stale translation, as on hardware.
pub struct SoftVtd {
    aw: AddrWidth,
    cm: bool,
    coherent: bool,
    /// Non-coherent mode: line address -> the words the unit sees.
    view: BTreeMap<u64, [u64; 8]>,
    /// Test hook: ignore flush requests (a core that skips them).
    lose_flushes: bool,
    flushed_lines: u64,
    nd: u32,
    root: Option<Mfn>,
    queue: Option<(Mfn, u32)>,
    head: u32,
    tail: u32,
    /// Set on a malformed descriptor (IQE): the queue stops.
    queue_error: bool,
    ctx_cache: BTreeMap<u16, ContextEntry>,
    /// (did, dfn) -> translation; `None` is a cached not-present entry (CM=1 only).
    iotlb: BTreeMap<(u16, u64), Option<(Mfn, Perm)>>,
    devices: BTreeMap<u16, SoftDevice>,
    pending: Vec<PendingDevTlb>,
    faults: VecDeque<FaultRecord>,
    /// Counters for tests.
    pub stats: InvStats,
}

/// Base of the 1 MiB interrupt address range 0xFEE0_0000–0xFEEF_FFFF.
pub const INTERRUPT_WINDOW: u64 = 0xfee0_0000;

/// Fault records kept before new ones are dropped (the real unit has a
/// small fixed set of FRCD registers and sets an overflow flag).
const MAX_FAULTS: usize = 256;

impl SoftVtd {
    /// A unit with the given address width and 2^16 domain ids, CM=0.
    pub fn new(aw: AddrWidth) -> Self {
        SoftVtd {
            aw,
            cm: false,
            coherent: true,
            view: BTreeMap::new(),
            lose_flushes: false,
            flushed_lines: 0,
            nd: 1 << 16,
            root: None,
            queue: None,
            head: 0,
            tail: 0,
            queue_error: false,
            ctx_cache: BTreeMap::new(),
            iotlb: BTreeMap::new(),
            devices: BTreeMap::new(),
            pending: Vec::new(),
            faults: VecDeque::new(),
            stats: InvStats::default(),
        }
    }

    /// Declares `sid` an ATS device with a device TLB. With `manual`, its
    /// device-TLB invalidations complete only on [`SoftVtd::complete_device_tlb`].
    pub fn add_ats_device(&mut self, sid: Sid, manual: bool) {
        self.devices.insert(sid.0, SoftDevice { manual, ..Default::default() });
    }

    /// Sets CAP.CM: not-present translations are cached too, so software
    /// must invalidate after creating mappings (as under an emulated IOMMU).
    pub fn set_caching_mode(&mut self, on: bool) {
        self.cm = on;
    }

    /// Sets ECAP.C. With `false` the unit sees table writes only once they
    /// are flushed (see the type's documentation). Set before use.
    pub fn set_coherent(&mut self, on: bool) {
        self.coherent = on;
    }

    /// Test hook: while `on`, flush requests are dropped, as if the core
    /// had skipped them.
    pub fn lose_flushes(&mut self, on: bool) {
        self.lose_flushes = on;
    }

    /// Cache lines written back so far (requests dropped by
    /// [`SoftVtd::lose_flushes`] not counted).
    pub fn flushed_lines(&self) -> u64 {
        self.flushed_lines
    }

    /// A root/context/paging word as the unit reads it: from memory when
    /// coherent, else from the flushed lines only.
    fn table_read(&self, mem: &dyn PhysMem, pa: u64) -> Option<u64> {
        if self.coherent {
            return mem.read_u64(pa);
        }
        if !pa.is_multiple_of(8) {
            return None;
        }
        let line = self.view.get(&(pa & !(CACHE_LINE - 1)))?;
        line.get(((pa % CACHE_LINE) / 8) as usize).copied()
    }

    /// True when a malformed descriptor stopped the queue.
    pub fn queue_error(&self) -> bool {
        self.queue_error
    }

    /// Device-TLB invalidations still outstanding for `sid`.
    pub fn pending_device_tlb(&self, sid: Sid) -> usize {
        self.pending.iter().filter(|p| p.sid == sid.0).count()
    }

    /// The device answers its outstanding invalidations: its ATC drops the
    /// ranges and the queue resumes.
    pub fn complete_device_tlb(&mut self, mem: &mut dyn PhysMem, sid: Sid) {
        let mut i = 0;
        while i < self.pending.len() {
            if self.pending[i].sid == sid.0 {
                let p = self.pending.remove(i);
                self.flush_atc(p.sid, p.first, p.count);
            } else {
                i += 1;
            }
        }
        self.run(mem);
    }

    fn flush_atc(&mut self, sid: u16, first: u64, count: u64) {
        if let Some(d) = self.devices.get_mut(&sid) {
            let end = first.saturating_add(count);
            d.atc.retain(|&dfn, _| dfn < first || dfn >= end);
        }
    }

    fn desc_at(&self, mem: &dyn PhysMem, idx: u32) -> Option<InvDesc> {
        let (base, _) = self.queue?;
        let at = base.addr() + idx as u64 * DESC_SIZE;
        Some(InvDesc { lo: mem.read_u64(at)?, hi: mem.read_u64(at + 8)? })
    }

    /// Processes descriptors from head to tail. Stops at a wait descriptor
    /// while device-TLB invalidations posted before it are outstanding.
    fn run(&mut self, mem: &mut dyn PhysMem) {
        let Some((_, entries)) = self.queue else {
            return;
        };
        // Bounded: at most one pass over the ring.
        for _ in 0..entries {
            if self.queue_error || self.head == self.tail {
                return;
            }
            let Some(inv) = self.desc_at(mem, self.head).and_then(InvDesc::decode) else {
                self.queue_error = true;
                self.stats.errors += 1;
                return;
            };
            match inv {
                Inv::Context(g) => {
                    self.stats.context += 1;
                    match g {
                        ContextGranularity::Global => self.ctx_cache.clear(),
                        ContextGranularity::Domain { did } => self.ctx_cache.retain(|_, c| c.did() != did),
                        ContextGranularity::Device { sid, .. } => {
                            self.ctx_cache.remove(&sid);
                        }
                    }
                }
                Inv::Iotlb(g) => match g {
                    IotlbGranularity::Global => {
                        self.stats.iotlb_global += 1;
                        self.iotlb.clear();
                    }
                    IotlbGranularity::Domain { did } => {
                        self.stats.iotlb_domain += 1;
                        self.iotlb.retain(|&(d, _), _| d != did);
                    }
                    IotlbGranularity::Page { did, addr, am } => {
                        self.stats.iotlb_page += 1;
                        let count = 1u64.checked_shl(am as u32).unwrap_or(u64::MAX);
                        let first = (addr >> 12) & !(count.wrapping_sub(1));
                        let end = first.saturating_add(count);
                        self.iotlb.retain(|&(d, dfn), _| d != did || dfn < first || dfn >= end);
                    }
                },
                Inv::DevTlb { sid, addr, size } => {
                    self.stats.devtlb += 1;
                    let (first, count) = devtlb_decode(addr, size);
                    let manual = self.devices.get(&sid).is_some_and(|d| d.manual && !d.dead);
                    if manual {
                        self.pending.push(PendingDevTlb { sid, first, count });
                    } else {
                        self.flush_atc(sid, first, count);
                    }
                }
                Inv::Wait { status_addr, data, .. } => {
                    if !self.pending.is_empty() {
                        return; // head stays on the wait
                    }
                    if mem.read_u32(status_addr).is_none() {
                        self.queue_error = true;
                        self.stats.errors += 1;
                        return;
                    }
                    mem.write_u32(status_addr, data);
                    self.stats.waits += 1;
                }
            }
            self.head = (self.head + 1) % entries;
        }
    }

    fn fault(&mut self, ctx: Option<ContextEntry>, sid: u16, iova: u64, write: bool, r: FaultReason) -> FaultReason {
        if !ctx.is_some_and(|c| c.fault_disable()) && self.faults.len() < MAX_FAULTS {
            self.faults.push_back(FaultRecord::new(sid, iova, write, r));
        }
        r
    }

    fn context_entry(&mut self, mem: &dyn PhysMem, sid: u16) -> Result<ContextEntry, FaultReason> {
        if let Some(c) = self.ctx_cache.get(&sid) {
            return Ok(*c);
        }
        let root = self.root.ok_or(FaultReason::RootAccess)?;
        let bus = (sid >> 8) as u64;
        let devfn = (sid & 0xff) as u64;
        let r = RootEntry {
            lo: self.table_read(mem, root.addr() + bus * 16).ok_or(FaultReason::RootAccess)?,
            hi: self.table_read(mem, root.addr() + bus * 16 + 8).ok_or(FaultReason::RootAccess)?,
        };
        if !r.present() {
            return Err(FaultReason::RootNotPresent);
        }
        if r.reserved_set() {
            return Err(FaultReason::RootReserved);
        }
        let at = r.ctp().addr() + devfn * 16;
        let c = ContextEntry {
            lo: self.table_read(mem, at).ok_or(FaultReason::ContextAccess)?,
            hi: self.table_read(mem, at + 8).ok_or(FaultReason::ContextAccess)?,
        };
        if !c.present() {
            return Err(FaultReason::ContextNotPresent);
        }
        if c.reserved_set() {
            return Err(FaultReason::ContextReserved);
        }
        self.ctx_cache.insert(sid, c);
        Ok(c)
    }

    fn walk(&self, mem: &dyn PhysMem, c: ContextEntry, dfn: u64) -> Result<(Mfn, Perm), FaultReason> {
        let aw = c.addr_width().ok_or(FaultReason::ContextInvalid)?;
        let mut table = c.slptptr();
        let mut level = aw.levels();
        // Rights are the AND over all levels.
        let mut perm = Perm::RW;
        loop {
            let idx = (dfn >> (9 * (level as u32 - 1))) & 511;
            let pte = SlPte(self.table_read(mem, table.addr() + idx * 8).ok_or(FaultReason::PagingAccess)?);
            if !pte.present() {
                return Err(FaultReason::Read); // refined by the caller
            }
            if pte.superpage() || pte.0 & !ADDR_MASK & 0x800 != 0 {
                return Err(FaultReason::PagingReserved);
            }
            perm.read &= pte.perm().read;
            perm.write &= pte.perm().write;
            if level == 1 {
                return Ok((pte.frame(), perm));
            }
            table = pte.frame();
            level -= 1;
        }
    }

    /// A DMA by device `sid` at `iova`: the host physical address it reaches,
    /// or the fault it raised (recorded unless the context sets FPD).
    ///
    /// An ATS device first looks in its own ATC; such translated requests
    /// are still checked against the context entry (present, TT=01b).
    pub fn dma(&mut self, mem: &dyn PhysMem, sid: Sid, iova: u64, write: bool) -> Result<u64, FaultReason> {
        // Writes to the interrupt window 0xFEEx_xxxx are interrupt requests
        // (§3.14, §5.1): they bypass DMA remapping in every context and are
        // returned untranslated; reads there fault.
        if iova >> 20 == INTERRUPT_WINDOW >> 20 {
            if write {
                return Ok(iova);
            }
            return Err(self.fault(None, sid.0, iova, write, FaultReason::Read));
        }
        let sid = sid.0;
        let dfn = iova >> 12;
        let off = iova & 0xfff;
        let ctx = match self.context_entry(mem, sid) {
            Ok(c) => c,
            Err(r) => return Err(self.fault(None, sid, iova, write, r)),
        };
        let deny = if write { FaultReason::Write } else { FaultReason::Read };
        let allowed = |p: Perm| if write { p.write } else { p.read };
        if let Some((mfn, perm)) = self.devices.get(&sid).and_then(|d| d.atc.get(&dfn)).copied() {
            if ctx.translation_type() != Some(TranslationType::DeviceTlb) {
                return Err(self.fault(Some(ctx), sid, iova, write, FaultReason::TranslatedBlocked));
            }
            if !allowed(perm) {
                return Err(self.fault(Some(ctx), sid, iova, write, deny));
            }
            return Ok(mfn.addr() | off);
        }
        let Some(aw) = ctx.addr_width() else {
            return Err(self.fault(Some(ctx), sid, iova, write, FaultReason::ContextInvalid));
        };
        match ctx.translation_type() {
            Some(TranslationType::Untranslated) | Some(TranslationType::DeviceTlb) => {}
            // Pass-through and the reserved encoding are refused: fail closed.
            _ => return Err(self.fault(Some(ctx), sid, iova, write, FaultReason::ContextInvalid)),
        }
        if aw != self.aw {
            return Err(self.fault(Some(ctx), sid, iova, write, FaultReason::ContextInvalid));
        }
        if iova >> aw.bits() != 0 {
            return Err(self.fault(Some(ctx), sid, iova, write, FaultReason::AddrBeyondAw));
        }
        let did = ctx.did();
        let hit = self.iotlb.get(&(did, dfn)).copied();
        let (mfn, perm) = match hit {
            Some(Some(t)) => t,
            Some(None) => return Err(self.fault(Some(ctx), sid, iova, write, deny)),
            None => match self.walk(mem, ctx, dfn) {
                Ok(t) => {
                    self.iotlb.insert((did, dfn), Some(t));
                    t
                }
                Err(FaultReason::Read) => {
                    // With caching mode the unit may remember the miss.
                    if self.cm {
                        self.iotlb.insert((did, dfn), None);
                    }
                    return Err(self.fault(Some(ctx), sid, iova, write, deny));
                }
                Err(r) => return Err(self.fault(Some(ctx), sid, iova, write, r)),
            },
        };
        if !allowed(perm) {
            return Err(self.fault(Some(ctx), sid, iova, write, deny));
        }
        if ctx.translation_type() == Some(TranslationType::DeviceTlb) {
            if let Some(d) = self.devices.get_mut(&sid) {
                if !d.dead {
                    d.atc.insert(dfn, (mfn, perm));
                }
            }
        }
        Ok(mfn.addr() | off)
    }

    /// Entries cached in the IOTLB (for tests).
    pub fn iotlb_len(&self) -> usize {
        self.iotlb.len()
    }
}

impl Hardware for SoftVtd {
    fn addr_width(&self) -> AddrWidth {
        self.aw
    }

    fn caching_mode(&self) -> bool {
        self.cm
    }

    fn domain_ids(&self) -> u32 {
        self.nd
    }

    fn set_root_table(&mut self, _mem: &mut dyn PhysMem, root: Mfn) {
        self.root = Some(root);
        self.ctx_cache.clear();
        self.iotlb.clear();
    }

    fn enable_queue(&mut self, _mem: &mut dyn PhysMem, base: Mfn, order: u8) {
        self.queue = Some((base, DESCS_PER_PAGE << order));
        self.head = 0;
        self.tail = 0;
    }

    fn set_queue_tail(&mut self, mem: &mut dyn PhysMem, tail: u32) {
        if let Some((_, entries)) = self.queue {
            if tail < entries {
                self.tail = tail;
                self.run(mem);
            } else {
                self.queue_error = true;
            }
        }
    }

    fn queue_head(&self) -> u32 {
        self.head
    }

    fn abort_device_tlb(&mut self, mem: &mut dyn PhysMem, sid: Sid) {
        self.pending.retain(|p| p.sid != sid.0);
        if let Some(d) = self.devices.get_mut(&sid.0) {
            d.dead = true;
        }
        self.run(mem);
    }

    fn take_fault(&mut self) -> Option<FaultRecord> {
        self.faults.pop_front()
    }

    fn coherent(&self) -> bool {
        self.coherent
    }

    /// Snapshots each line into the unit's view (non-coherent mode); a line
    /// whose memory is not backed any more leaves the view.
    fn flush_cache(&mut self, mem: &mut dyn PhysMem, pa: u64, len: u64) {
        if self.lose_flushes {
            return;
        }
        let mut line = pa & !(CACHE_LINE - 1);
        let end = pa.saturating_add(len.max(1));
        // Bounded: one step per line of the range.
        while line < end {
            self.flushed_lines += 1;
            if !self.coherent {
                let mut words = [0u64; 8];
                let mut backed = true;
                for (i, w) in words.iter_mut().enumerate() {
                    match mem.read_u64(line + 8 * i as u64) {
                        Some(v) => *w = v,
                        None => backed = false,
                    }
                }
                if backed {
                    self.view.insert(line, words);
                } else {
                    self.view.remove(&line);
                }
            }
            match line.checked_add(CACHE_LINE) {
                Some(next) => line = next,
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::{PageAlloc, VecMemory};
    use crate::pagetable::SlTable;
    use crate::vtd::ContextEntry;

    /// `pages` of memory with a root table, one context table for bus 0
    /// and a table mapping dfn 5 -> mfn 0x99 read-only; device 00:01.0
    /// uses `ctx`. Returns the memory, the root and context table frames
    /// and the page table.
    fn tables(pages: usize, ctx: impl Fn(Mfn) -> ContextEntry) -> (VecMemory, Mfn, Mfn, SlTable) {
        let mut mem = VecMemory::new(Mfn(0x200), pages);
        let root = mem.alloc_zeroed().unwrap();
        let ct = mem.alloc_zeroed().unwrap();
        let t = SlTable::new(&mut mem, AddrWidth::Aw39).unwrap();
        t.map(&mut mem, crate::types::Dfn(5), Mfn(0x99), Perm::RO, false).unwrap();
        let r = RootEntry::new(ct);
        mem.write_u64(root.addr(), r.lo);
        let c = ctx(t.root());
        mem.write_u64(ct.addr() + 8 * 16, c.lo);
        mem.write_u64(ct.addr() + 8 * 16 + 8, c.hi);
        (mem, root, ct, t)
    }

    /// [`tables`] in 32 pages, behind a coherent unit.
    fn rig(ctx: impl Fn(Mfn) -> ContextEntry) -> (VecMemory, SoftVtd) {
        let (mut mem, root, _, _) = tables(32, ctx);
        let mut hw = SoftVtd::new(AddrWidth::Aw39);
        hw.set_root_table(&mut mem, root);
        (mem, hw)
    }

    const DEV: Sid = Sid(0x0008);

    #[test]
    fn translates_and_fails_closed() {
        let (mem, mut hw) = rig(|t| ContextEntry::new(t, AddrWidth::Aw39, 3, TranslationType::Untranslated));
        assert_eq!(hw.dma(&mem, DEV, 0x5abc, false), Ok(0x99abc));
        assert_eq!(hw.dma(&mem, DEV, 0x5abc, true), Err(FaultReason::Write));
        assert_eq!(hw.dma(&mem, DEV, 0x6000, false), Err(FaultReason::Read));
        assert_eq!(hw.dma(&mem, DEV, 1 << 39, false), Err(FaultReason::AddrBeyondAw));
        assert_eq!(hw.dma(&mem, Sid(0x0010), 0x5000, false), Err(FaultReason::ContextNotPresent));
        let f = hw.take_fault().unwrap();
        assert_eq!((f.sid(), f.addr(), f.reason(), f.is_write()), (8, 0x5000, 5, true));
        assert_eq!(hw.iotlb_len(), 1);
    }

    #[test]
    fn refuses_pass_through_and_wrong_width() {
        let (mem, mut hw) = rig(|t| ContextEntry::new(t, AddrWidth::Aw39, 3, TranslationType::PassThrough));
        assert_eq!(hw.dma(&mem, DEV, 0x5000, false), Err(FaultReason::ContextInvalid));
        let (mem, mut hw) = rig(|t| ContextEntry::new(t, AddrWidth::Aw48, 3, TranslationType::Untranslated));
        assert_eq!(hw.dma(&mem, DEV, 0x5000, false), Err(FaultReason::ContextInvalid));
    }

    #[test]
    fn fault_processing_disable_suppresses_records() {
        let (mem, mut hw) = rig(|t| {
            let mut c = ContextEntry::new(t, AddrWidth::Aw39, 3, TranslationType::Untranslated);
            c.lo |= 2; // FPD
            c
        });
        assert!(hw.dma(&mem, DEV, 0x7000, false).is_err());
        assert!(hw.take_fault().is_none());
    }

    #[test]
    fn non_coherent_unit_sees_only_flushed_lines() {
        let (mut mem, root, ct, t) =
            tables(8, |r| ContextEntry::new(r, AddrWidth::Aw39, 3, TranslationType::Untranslated));
        let mut hw = SoftVtd::new(AddrWidth::Aw39);
        hw.set_coherent(false);
        assert!(!hw.coherent());
        hw.set_root_table(&mut mem, root);
        // Nothing written back: the unit cannot even read the root entry.
        assert_eq!(hw.dma(&mem, DEV, 0x5abc, false), Err(FaultReason::RootAccess));
        // Root and context written back, the paging structures not yet.
        hw.flush_cache(&mut mem, root.addr(), 4096);
        hw.flush_cache(&mut mem, ct.addr() + 8 * 16, 16);
        assert_eq!(hw.flushed_lines(), 64 + 1);
        assert_eq!(hw.dma(&mem, DEV, 0x5abc, false), Err(FaultReason::PagingAccess));
        // Every frame written back: translation works.
        for f in 0x202..0x208 {
            hw.flush_cache(&mut mem, Mfn(f).addr(), 4096);
        }
        assert_eq!(hw.dma(&mem, DEV, 0x5abc, false), Ok(0x99abc));
        // Unmapped in memory but not written back, caches dropped: the unit
        // still walks to the stale entry.
        t.unmap(&mut mem, crate::types::Dfn(5)).unwrap();
        hw.set_root_table(&mut mem, root);
        assert_eq!(hw.dma(&mem, DEV, 0x5abc, false), Ok(0x99abc));
        // A dropped flush changes nothing; a real one publishes the unmap.
        // dfn 5: index 0 at levels 3 and 2, index 5 in the leaf table.
        let l2 = SlPte(mem.read_u64(t.root().addr()).unwrap()).frame();
        let leaf = SlPte(mem.read_u64(l2.addr()).unwrap()).frame();
        hw.lose_flushes(true);
        hw.flush_cache(&mut mem, leaf.addr() + 5 * 8, 8);
        hw.set_root_table(&mut mem, root);
        assert_eq!(hw.dma(&mem, DEV, 0x5abc, false), Ok(0x99abc));
        hw.lose_flushes(false);
        hw.flush_cache(&mut mem, leaf.addr() + 5 * 8, 8);
        hw.set_root_table(&mut mem, root);
        assert_eq!(hw.dma(&mem, DEV, 0x5abc, false), Err(FaultReason::Read));
    }

    #[test]
    fn malformed_descriptor_stops_the_queue() {
        let (mut mem, mut hw) = rig(|t| ContextEntry::new(t, AddrWidth::Aw39, 3, TranslationType::Untranslated));
        let q = mem.alloc_zeroed().unwrap();
        hw.enable_queue(&mut mem, q, 0);
        mem.write_u64(q.addr(), 0x7); // type 7: not a descriptor this unit knows
        hw.set_queue_tail(&mut mem, 1);
        assert!(hw.queue_error());
        assert_eq!(hw.queue_head(), 0);
    }
}
