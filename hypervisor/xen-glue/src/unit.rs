//! A VT-d unit as the core sees it in this first step: detached.
//!
//! Xen's own VT-d driver owns the hardware (root and context tables, queued
//! invalidation, interrupt remapping). The core reads the real unit's
//! capabilities (CAP_REG/ECAP_REG, from Xen's `struct vtd_iommu`) so what it
//! reports is true of the machine, but its own root table and invalidation
//! queue live in hypervisor memory only: nothing here writes a register.
//! Its invalidation queue is served here, in software, at once: no device
//! ever uses the core's tables, so nothing can cache them, and a wait
//! descriptor's status write is all that completing an invalidation means.
//! That lets unmaps and teardown release page references and tables as on
//! hardware. What reaches the core is decided in `lib.rs` (sub-ops that
//! would move a device, reattach, stay refused until the core cooperates
//! with Xen's VT-d code).

use iommu_core::hw::Hardware;
use iommu_core::hw::{DESCS_PER_PAGE, DESC_SIZE};
use iommu_core::mem::PhysMem;
use iommu_core::mmio::Caps;
use iommu_core::types::{Mfn, Sid};
use iommu_core::vtd::{AddrWidth, FaultRecord, Inv, InvDesc};

/// The capabilities of a real unit, with no register access.
pub struct DetachedUnit {
    caps: Caps,
    aw: AddrWidth,
    /// The queue page (from `enable_queue`) and the next descriptor to serve.
    queue: Option<Mfn>,
    head: u32,
}

impl DetachedUnit {
    /// `None` when the unit has neither 39- nor 48-bit tables.
    pub fn new(cap: u64, ecap: u64) -> Option<Self> {
        let caps = Caps { cap, ecap };
        Some(DetachedUnit { caps, aw: caps.addr_width()?, queue: None, head: 0 })
    }

    /// The raw registers.
    pub fn caps(&self) -> Caps {
        self.caps
    }
}

impl Hardware for DetachedUnit {
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

    /// Serves every descriptor up to `tail` at once: a wait descriptor
    /// writes its status; the others have nothing to invalidate. At most
    /// one ring's worth per call (the index is taken modulo the ring).
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
            if let Some(Inv::Wait { status_addr, data, .. }) = d.decode() {
                mem.write_u32(status_addr, data);
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

    fn flush_cache(&mut self, _mem: &mut dyn PhysMem, _pa: u64, _len: u64) {}
}
