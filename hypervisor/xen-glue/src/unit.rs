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
//! * the core's invalidation queue is served here, at once: IOTLB
//!   invalidations of a domain id that has a hardware domain id become
//!   Xen's domain- or page-selective flushes of it (synchronous), then the
//!   wait descriptors' status writes complete them. Context-cache
//!   invalidations need nothing more (attach and detach flushed);
//!   device-TLB ones cannot occur (devices are registered without ATS and
//!   attach refuses ATS);
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
use iommu_core::types::{Mfn, Sid};
use iommu_core::vtd::{AddrWidth, FaultRecord, Inv, InvDesc, IotlbGranularity};
use pv_iommu_abi::errno;

use crate::xen;

/// The unit Xen drives, shared with the core.
pub struct XenUnit {
    caps: Caps,
    aw: AddrWidth,
    /// The core's queue page (from `enable_queue`) and the next descriptor to serve.
    queue: Option<Mfn>,
    head: u32,
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
                    let (present, eroot, hw_did) = (lo & 1 == 1, lo & !0xfff, (hi >> 8) & 0xffff);
                    let ok = present && eroot == root.addr();
                    writeln!(
                        out,
                        "present={} root={:#x} hw-did={:#x}: {}",
                        present as u8,
                        eroot,
                        hw_did,
                        if ok { "the core's table" } else { "NOT the core's table" }
                    )?;
                }
                None => writeln!(out, "no context table")?,
            }
        }
        Ok(())
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
    }

    /// Serves every descriptor up to `tail` at once, in order: IOTLB
    /// invalidations through Xen (synchronous), then a wait descriptor
    /// writes its status. At most one ring's worth per call.
    fn set_queue_tail(&mut self, mem: &mut dyn PhysMem, tail: u32) {
        let Some(base) = self.queue else {
            return;
        };
        let tail = tail % DESCS_PER_PAGE;
        for _ in 0..DESCS_PER_PAGE {
            if self.head == tail {
                break;
            }
            let at = base.addr() + self.head as u64 * DESC_SIZE;
            let d = InvDesc { lo: mem.read_u64(at).unwrap_or(0), hi: mem.read_u64(at + 8).unwrap_or(0) };
            match d.decode() {
                Some(Inv::Iotlb(g)) => self.flush(g),
                Some(Inv::Wait { status_addr, data, .. }) => mem.write_u32(status_addr, data),
                _ => {}
            }
            self.head = (self.head + 1) % DESCS_PER_PAGE;
        }
    }

    fn queue_head(&self) -> u32 {
        self.head
    }

    fn abort_device_tlb(&mut self, _mem: &mut dyn PhysMem, _sid: Sid) {}

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
        if ats {
            // Device-TLB invalidations are not routed to Xen yet.
            return Err(AttachError::NotSupported);
        }
        let (pseudo, new) = match self.hw_ids.get(&did) {
            Some(&p) => (p, false),
            None => (xen::vtd_domid_alloc().ok_or(AttachError::NoSpace)?, true),
        };
        let rc = xen::vtd_attach(sid.bus(), sid.devfn(), root.addr(), pseudo, self.aw.levels());
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
