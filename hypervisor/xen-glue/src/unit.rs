//! A VT-d unit as the core sees it in this first step: detached.
//!
//! Xen's own VT-d driver owns the hardware (root and context tables, queued
//! invalidation, interrupt remapping). The core reads the real unit's
//! capabilities (CAP_REG/ECAP_REG, from Xen's `struct vtd_iommu`) so what it
//! reports is true of the machine, but its own root table and invalidation
//! queue live in hypervisor memory only: nothing here writes a register.
//! That is why the glue lets only the sub-ops that do not depend on the
//! hardware (noop, query_capabilities) reach the core; the rest answer
//! -EOPNOTSUPP until the core cooperates with Xen's VT-d code.

use iommu_core::hw::Hardware;
use iommu_core::mem::PhysMem;
use iommu_core::mmio::Caps;
use iommu_core::types::{Mfn, Sid};
use iommu_core::vtd::{AddrWidth, FaultRecord};

/// The capabilities of a real unit, with no register access.
pub struct DetachedUnit {
    caps: Caps,
    aw: AddrWidth,
    tail: u32,
}

impl DetachedUnit {
    /// `None` when the unit has neither 39- nor 48-bit tables.
    pub fn new(cap: u64, ecap: u64) -> Option<Self> {
        let caps = Caps { cap, ecap };
        Some(DetachedUnit { caps, aw: caps.addr_width()?, tail: 0 })
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

    fn enable_queue(&mut self, _mem: &mut dyn PhysMem, _base: Mfn, _order: u8) {}

    fn set_queue_tail(&mut self, _mem: &mut dyn PhysMem, tail: u32) {
        self.tail = tail;
    }

    fn queue_head(&self) -> u32 {
        self.tail
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
