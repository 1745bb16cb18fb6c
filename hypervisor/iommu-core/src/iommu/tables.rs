//! Table memory as the core writes it: cache write-back for a unit without
//! page-walk coherency, and page allocation charged to a domain's arena.

use crate::hw::Hardware;
use crate::mem::{Memory, PageAlloc, PhysMem};
use crate::types::Mfn;

use super::{Iommu, Platform};

/// Table memory as the core writes it: root, context and second-level
/// entries, and new table pages. On a unit without page-walk coherency
/// (ECAP.C = 0) the unit does not snoop CPU caches, so each entry written
/// and each freshly zeroed table page is written back at once
/// ([`Hardware::flush_cache`]) — before the parent entry or the
/// invalidation that publishes it. On a coherent unit nothing is added.
pub(super) struct Tables<'a, M, H> {
    pub(super) mem: &'a mut M,
    pub(super) hw: &'a mut H,
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
pub(super) struct Budgeted<'a, M> {
    pub(super) mem: &'a mut M,
    pub(super) left: u64,
    pub(super) used: u64,
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

impl<M: Memory, H: Hardware, P: Platform> Iommu<M, H, P> {
    /// Table memory with the flushes a non-coherent unit needs.
    pub(super) fn tables(&mut self) -> Tables<'_, M, H> {
        Tables { mem: &mut self.mem, hw: &mut self.hw }
    }
}
