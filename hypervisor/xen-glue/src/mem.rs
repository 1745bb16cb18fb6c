//! The core's memory over Xen's xenheap: pages it allocated, and only those.
//!
//! Every access is checked against the set of frames this memory handed
//! out, so a bug in the core can at worst read `None` or drop a write; it
//! never touches memory that is not its own.

use alloc::collections::BTreeSet;

use iommu_core::mem::{PageAlloc, PhysMem};
use iommu_core::types::Mfn;

use crate::xen;

const PAGE_SHIFT: u32 = 12;

/// Xenheap pages owned by the core.
#[derive(Default)]
pub struct XenMemory {
    frames: BTreeSet<u64>,
    /// Writes refused because they were outside the core's pages.
    pub stray_writes: u64,
}

impl XenMemory {
    /// Pages currently held.
    pub fn pages(&self) -> usize {
        self.frames.len()
    }

    fn owned(&self, pa: u64) -> bool {
        pa.is_multiple_of(8) && self.frames.contains(&(pa >> PAGE_SHIFT))
    }
}

impl PhysMem for XenMemory {
    fn read_u64(&self, pa: u64) -> Option<u64> {
        // SAFETY: `owned` checked alignment and that the page is one of ours.
        self.owned(pa).then(|| unsafe { xen::read_word(pa) })
    }

    fn write_u64(&mut self, pa: u64, v: u64) {
        if self.owned(pa) {
            // SAFETY: as in read_u64.
            unsafe { xen::write_word(pa, v) }
        } else {
            self.stray_writes += 1;
        }
    }

    fn write_back(&mut self, _pa: u64, _len: u64) {
        // The core writes its tables back through the unit
        // (`Hardware::flush_cache`, Xen's iommu_sync_cache), not here.
    }
}

impl PageAlloc for XenMemory {
    fn alloc_zeroed(&mut self) -> Option<Mfn> {
        let maddr = xen::page_alloc()?;
        self.frames.insert(maddr >> PAGE_SHIFT);
        Some(Mfn(maddr >> PAGE_SHIFT))
    }

    fn free_page(&mut self, mfn: Mfn) {
        if self.frames.remove(&mfn.0) {
            // SAFETY: the frame came from page_alloc (it was in the set) and
            // leaves the set now, so it is freed once.
            unsafe { xen::page_free(mfn.0 << PAGE_SHIFT) }
        }
    }
}
