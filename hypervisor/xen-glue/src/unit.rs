//! The VT-d unit as the core sees it inside Xen: shared with Xen's own
//! VT-d driver.
//!
//! Xen keeps the hardware: root and context tables, queued invalidation,
//! interrupt remapping, and every device in its owner's normal mapping
//! (the core's default contexts and quarantine are Xen's). The core's
//! root/context tables and invalidation queue stay in hypervisor memory
//! that no unit reads. What reaches the hardware:
//!
//! * [`Hardware::attach`]: a device moved into one of the core's
//!   non-default contexts gets its context entry in Xen's table pointed at
//!   that context's second-level tables (which the core builds), tagged
//!   with a hardware domain id Xen reserves for the context (a Xen
//!   "pseudo" domain id, as Xen's quarantine uses; one per core domain id,
//!   taken on first attach), by Xen's code with its context-cache and
//!   IOTLB flushes (`ferrite_vtd_attach` in the project's patch);
//! * [`Hardware::detach`]: the device goes back to what Xen gives its
//!   owner (Xen's own context-mapping path); if Xen cannot, it clears the
//!   entry (the device's DMA faults): either way it reaches none of the
//!   core's tables once this returns;
//! * the core's invalidation queue is served here, in order: IOTLB
//!   invalidations of a domain id that has a hardware domain id become
//!   Xen's domain- or page-selective flushes of it (synchronous: the unit's
//!   own cache, fast), then the wait descriptors' status writes complete
//!   them. Context-cache invalidations need nothing more (attach and detach
//!   flushed). Device-TLB invalidations (devices whose ATS Xen enabled, Xen
//!   run with `ats`) are posted to the unit's real queue with a wait
//!   descriptor that writes a status dword in a page of this unit's, and
//!   serving stops there: nothing waits for the device. The status dword
//!   is read on the next [`Hardware::service`] (the core's next poll: every
//!   hypercall); once the unit wrote it, serving resumes behind them, so
//!   what the core holds for them is released only after the device
//!   answered. A device that never answers keeps the queue stopped until
//!   the core's time-out declares it broken ([`Hardware::abort_device_tlb`]
//!   skips its invalidations);
//! * [`Hardware::release_did`]: the hardware domain id is given back to
//!   Xen once the core no longer uses the domain id;
//! * [`Hardware::flush_cache`]: table writes are written back from the CPU
//!   caches for a unit without page-walk coherency (Xen's
//!   `iommu_sync_cache`).
//!
//! Only the first VT-d unit (the one whose capabilities the core uses);
//! Xen refuses devices behind another one.

use alloc::collections::BTreeMap;
use core::fmt::{self, Write};

use iommu_core::hw::{AttachError, Hardware};
use iommu_core::hw::{DESCS_PER_PAGE, DESC_SIZE};
use iommu_core::mem::PhysMem;
use iommu_core::mmio::Caps;
use iommu_core::qi::seq_done;
use iommu_core::types::{Mfn, Sid};
use iommu_core::vtd::{AddrWidth, FaultRecord, Inv, InvDesc, IotlbGranularity};
use pv_iommu_abi::errno;

use crate::xen;

/// Most device-TLB invalidation descriptors posted behind one status write
/// (the core asks for a whole-device invalidation beyond its own limit).
const MAX_DEVTLB_BATCH: usize = 16;

/// Device-TLB invalidations posted to the unit and not yet seen complete.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    /// The core's descriptors they stand for: this many from `head`.
    count: u32,
    sid: Sid,
    /// The value the unit writes to the status dword when they completed.
    seq: u32,
}

/// What happened to the core's device-TLB invalidations (the dump shows it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DevTlbStats {
    /// Descriptors posted to the unit's queue.
    pub posted: u64,
    /// Posted descriptors whose status write the unit made.
    pub completed: u64,
    /// Posts put off because the unit's queue had no room.
    pub busy: u64,
    /// Posts Xen refused (no such ATS device, no status page).
    pub refused: u64,
    /// Descriptors dropped for a device the core declared broken.
    pub aborted: u64,
}

/// The unit Xen drives, shared with the core.
pub struct XenUnit {
    caps: Caps,
    aw: AddrWidth,
    /// The core's queue page (from `enable_queue`), the next descriptor to
    /// serve and the core's tail.
    queue: Option<Mfn>,
    head: u32,
    tail: u32,
    /// Device-TLB invalidations the unit has not answered yet: serving
    /// stops at them.
    inflight: Option<InFlight>,
    /// Machine address of the status dword the unit writes for them (a
    /// xenheap page of this unit's, allocated on first use, never freed),
    /// and the next value to ask for.
    status: Option<u64>,
    next_seq: u32,
    /// Device-TLB invalidation counts.
    pub devtlb: DevTlbStats,
    /// Core domain id → the Xen pseudo domain id whose hardware domain id
    /// tags the context's entries.
    hw_ids: BTreeMap<u16, u16>,
    /// Devices whose context entry in Xen's table points at a core
    /// context: source id → (core domain id, table root).
    attached: BTreeMap<Sid, (u16, Mfn)>,
    /// Flushes Xen reported failed, and detaches that had to block the
    /// device instead of restoring its owner's mapping.
    pub failures: u64,
}

impl XenUnit {
    /// `None` when the unit has neither 39- nor 48-bit tables.
    pub fn new(cap: u64, ecap: u64) -> Option<Self> {
        let caps = Caps { cap, ecap };
        Some(XenUnit {
            caps,
            aw: caps.addr_width()?,
            queue: None,
            head: 0,
            tail: 0,
            inflight: None,
            status: None,
            next_seq: 1,
            devtlb: DevTlbStats::default(),
            hw_ids: BTreeMap::new(),
            attached: BTreeMap::new(),
            failures: 0,
        })
    }

    /// The raw registers.
    pub fn caps(&self) -> Caps {
        self.caps
    }

    /// Devices attached to core contexts, and hardware domain ids held.
    pub fn attached(&self) -> (usize, usize) {
        (self.attached.len(), self.hw_ids.len())
    }

    /// One line per device in a core context: the core's view, and the
    /// context entry Xen's table holds for it (what the unit reads).
    pub fn dump(&self, out: &mut dyn Write) -> fmt::Result {
        for (sid, &(did, root)) in &self.attached {
            let id = self.hw_ids.get(&did).copied().unwrap_or(0);
            write!(
                out,
                "unit: 0000:{:02x}:{:02x}.{} core did {} (Xen id {:#x}) root {:#x}; Xen's entry: ",
                sid.bus(),
                sid.devfn() >> 3,
                sid.devfn() & 7,
                did,
                id,
                root.addr()
            )?;
            match xen::vtd_read_entry(sid.bus(), sid.devfn()) {
                Some((lo, hi)) => {
                    // VT-d 9.3: P bit 0, TT bits 3:2 (1: device-TLB enabled), ASR 63:12; DID 87:72.
                    let (present, eroot, hw_did) = (lo & 1 == 1, lo & !0xfff, (hi >> 8) & 0xffff);
                    let ok = present && eroot == root.addr();
                    writeln!(
                        out,
                        "present={} tt={} root={:#x} hw-did={:#x}: {}",
                        present as u8,
                        (lo >> 2) & 3,
                        eroot,
                        hw_did,
                        if ok { "the core's table" } else { "NOT the core's table" }
                    )?;
                }
                None => writeln!(out, "no context table")?,
            }
        }
        let d = self.devtlb;
        writeln!(
            out,
            "unit: device-TLB invalidations posted={} completed={} in-flight={} busy={} refused={} aborted={} status={}",
            d.posted,
            d.completed,
            self.inflight.map_or(0, |f| f.count),
            d.busy,
            d.refused,
            d.aborted,
            self.read_status().map_or(0, |v| v),
        )
    }

    fn desc(&self, mem: &dyn PhysMem, base: Mfn, idx: u32) -> InvDesc {
        let at = base.addr() + u64::from(idx % DESCS_PER_PAGE) * DESC_SIZE;
        InvDesc { lo: mem.read_u64(at).unwrap_or(0), hi: mem.read_u64(at + 8).unwrap_or(0) }
    }

    /// The status dword the unit writes for posted device-TLB invalidations.
    fn read_status(&self) -> Option<u32> {
        let at = self.status?;
        // SAFETY: the page came from page_alloc and is never freed; `at` is
        // its first (8-aligned) word. The unit writes the low dword.
        let v = unsafe { xen::read_word(at) };
        // The status write is seen before what it covers is released.
        core::sync::atomic::fence(core::sync::atomic::Ordering::Acquire);
        Some(v as u32)
    }

    /// Serves the core's queue from `head` to `tail`, in order, until
    /// device-TLB invalidations are posted and not yet answered.
    fn serve(&mut self, mem: &mut dyn PhysMem) {
        let Some(base) = self.queue else {
            return;
        };
        for _ in 0..DESCS_PER_PAGE {
            if self.head == self.tail || self.inflight.is_some() {
                return;
            }
            match self.desc(mem, base, self.head).decode() {
                Some(Inv::Iotlb(g)) => self.flush(g),
                Some(Inv::Wait { status_addr, data, .. }) => mem.write_u32(status_addr, data),
                Some(Inv::DevTlb { sid, .. }) => {
                    self.post_devtlb(mem, base, Sid(sid));
                    // Stop here: posted (answered on a later call), or put
                    // off (tried again on the next one).
                    return;
                }
                _ => {}
            }
            self.head = (self.head + 1) % DESCS_PER_PAGE;
        }
    }

    /// Posts the run of device-TLB invalidations of `sid` at `head` (up to
    /// [`MAX_DEVTLB_BATCH`]) to the unit, with a status write behind them.
    fn post_devtlb(&mut self, mem: &dyn PhysMem, base: Mfn, sid: Sid) {
        // (address, size) pairs; a fixed buffer: nothing to allocate here.
        let mut ranges = [0u64; 2 * MAX_DEVTLB_BATCH];
        let mut n = 0;
        let mut idx = self.head;
        while idx != self.tail && n < ranges.len() {
            match self.desc(mem, base, idx).decode() {
                Some(Inv::DevTlb { sid: s, addr, size }) if s == sid.0 => {
                    ranges[n] = addr;
                    ranges[n + 1] = size as u64;
                    n += 2;
                }
                _ => break,
            }
            idx = (idx + 1) % DESCS_PER_PAGE;
        }
        let ranges = &ranges[..n];
        if self.status.is_none() {
            self.status = xen::page_alloc();
        }
        let Some(status) = self.status else {
            self.devtlb.refused += 1;
            return;
        };
        let seq = self.next_seq;
        match xen::vtd_devtlb_submit(sid.0, ranges, status, seq) {
            0 => {
                let count = (ranges.len() / 2) as u32;
                self.next_seq = self.next_seq.wrapping_add(1);
                self.inflight = Some(InFlight { count, sid, seq });
                self.devtlb.posted += u64::from(count);
            }
            rc if rc == -errno::EBUSY => self.devtlb.busy += 1,
            // Left at the head: the core's time-out declares the device
            // broken, and abort_device_tlb skips them.
            _ => self.devtlb.refused += 1,
        }
    }

    fn flush(&mut self, g: IotlbGranularity) {
        let ok = match g {
            IotlbGranularity::Global => {
                let ids: alloc::vec::Vec<u16> = self.hw_ids.values().copied().collect();
                ids.iter().all(|&p| xen::vtd_flush(p, None))
            }
            IotlbGranularity::Domain { did } => self.hw_ids.get(&did).is_none_or(|&p| xen::vtd_flush(p, None)),
            IotlbGranularity::Page { did, addr, am } => {
                self.hw_ids.get(&did).is_none_or(|&p| xen::vtd_flush(p, Some((addr, am))))
            }
        };
        if !ok {
            self.failures += 1;
        }
    }
}

impl Hardware for XenUnit {
    fn addr_width(&self) -> AddrWidth {
        self.aw
    }

    fn caching_mode(&self) -> bool {
        self.caps.caching_mode()
    }

    fn domain_ids(&self) -> u32 {
        self.caps.domain_ids()
    }

    fn set_root_table(&mut self, _mem: &mut dyn PhysMem, _root: Mfn) {}

    fn enable_queue(&mut self, _mem: &mut dyn PhysMem, base: Mfn, _order: u8) {
        self.queue = Some(base);
        self.head = 0;
        self.tail = 0;
        self.inflight = None;
    }

    /// Serves the descriptors up to `tail` in order (see the module
    /// documentation): IOTLB invalidations through Xen, status writes of
    /// wait descriptors, until device-TLB invalidations are posted to the
    /// unit. At most one ring's worth per call.
    fn set_queue_tail(&mut self, mem: &mut dyn PhysMem, tail: u32) {
        self.tail = tail % DESCS_PER_PAGE;
        self.serve(mem);
    }

    fn queue_head(&self) -> u32 {
        self.head
    }

    /// Reads the status dword once: if the unit answered the posted
    /// device-TLB invalidations, the queue moves past them and is served on.
    fn service(&mut self, mem: &mut dyn PhysMem) {
        if let Some(f) = self.inflight {
            if self.read_status().is_some_and(|v| seq_done(v, f.seq)) {
                self.head = (self.head + f.count) % DESCS_PER_PAGE;
                self.devtlb.completed += u64::from(f.count);
                self.inflight = None;
            }
        }
        self.serve(mem);
    }

    /// The core declared `sid` broken: its posted invalidations are no
    /// longer waited for (a late status write only writes an older value),
    /// nor are the ones not posted yet; the queue is served on.
    fn abort_device_tlb(&mut self, mem: &mut dyn PhysMem, sid: Sid) {
        if let Some(f) = self.inflight.filter(|f| f.sid == sid) {
            self.head = (self.head + f.count) % DESCS_PER_PAGE;
            self.devtlb.aborted += u64::from(f.count);
            self.inflight = None;
        }
        if let (Some(base), None) = (self.queue, self.inflight) {
            for _ in 0..DESCS_PER_PAGE {
                if self.head == self.tail {
                    break;
                }
                match self.desc(mem, base, self.head).decode() {
                    Some(Inv::DevTlb { sid: s, .. }) if s == sid.0 => {
                        self.head = (self.head + 1) % DESCS_PER_PAGE;
                        self.devtlb.aborted += 1;
                    }
                    _ => break,
                }
            }
        }
        self.serve(mem);
    }

    fn take_fault(&mut self) -> Option<FaultRecord> {
        None
    }

    fn coherent(&self) -> bool {
        self.caps.coherent()
    }

    fn flush_cache(&mut self, _mem: &mut dyn PhysMem, pa: u64, len: u64) {
        xen::sync_cache(pa, len);
    }

    fn attach(&mut self, _mem: &mut dyn PhysMem, sid: Sid, root: Mfn, did: u16, ats: bool) -> Result<(), AttachError> {
        let (pseudo, new) = match self.hw_ids.get(&did) {
            Some(&p) => (p, false),
            None => (xen::vtd_domid_alloc().ok_or(AttachError::NoSpace)?, true),
        };
        let rc = xen::vtd_attach(sid.bus(), sid.devfn(), root.addr(), pseudo, self.aw.levels(), ats);
        if rc != 0 {
            if new {
                xen::vtd_domid_free(pseudo);
            }
            return Err(match -rc {
                errno::EOPNOTSUPP | errno::EINVAL => AttachError::NotSupported,
                errno::ENODEV | errno::ENOENT => AttachError::NoDevice,
                errno::ENOSPC | errno::EBUSY => AttachError::NoSpace,
                _ => AttachError::Failed,
            });
        }
        self.hw_ids.insert(did, pseudo);
        self.attached.insert(sid, (did, root));
        Ok(())
    }

    fn detach(&mut self, _mem: &mut dyn PhysMem, sid: Sid) {
        if self.attached.remove(&sid).is_some() && !xen::vtd_detach(sid.bus(), sid.devfn()) {
            // Xen cleared the entry instead: the device is blocked.
            self.failures += 1;
        }
    }

    fn release_did(&mut self, did: u16) {
        if self.attached.values().any(|&(d, _)| d == did) {
            // Cannot happen (the core detaches first); keep the id rather
            // than let Xen reuse one a device still uses.
            self.failures += 1;
            return;
        }
        if let Some(p) = self.hw_ids.remove(&did) {
            xen::vtd_domid_free(p);
        }
    }
}
