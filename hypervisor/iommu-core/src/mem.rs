//! Memory the IOMMU reads: page-table pages, context tables, the
//! invalidation queue and its status words.
//!
//! The core writes through [`PhysMem`] and allocates through [`PageAlloc`];
//! on the real hypervisor both sit in the `hw` layer over the direct map.
//! [`VecMemory`] is the host stand-in: a bounded set of zeroed 4 KiB frames.

use alloc::boxed::Box;
use alloc::vec::Vec;

use crate::types::Mfn;

/// Word access to host physical memory.
pub trait PhysMem {
    /// Reads the 8-byte-aligned word at `pa`; `None` if `pa` is not backed
    /// (a model of a DMA read error; callers fail closed).
    fn read_u64(&self, pa: u64) -> Option<u64>;
    /// Writes the 8-byte-aligned word at `pa`. Writing unbacked memory is a
    /// bug in the core (it only writes pages it allocated): panics on host.
    fn write_u64(&mut self, pa: u64, v: u64);
    /// Writes the CPU cache lines covering `[pa, pa + len)` back to memory
    /// (CLFLUSH on x86), for a VT-d unit that does not snoop (ECAP.C = 0).
    /// Called through [`crate::hw::Hardware::flush_cache`] only.
    fn write_back(&mut self, pa: u64, len: u64);

    /// Writes a 4-byte-aligned dword (read-modify-write of its word).
    fn write_u32(&mut self, pa: u64, v: u32) {
        let word = pa & !7;
        let old = self.read_u64(word).unwrap_or(0);
        let shift = (pa & 4) * 8;
        let new = (old & !(0xffff_ffffu64 << shift)) | ((v as u64) << shift);
        self.write_u64(word, new);
    }

    /// Reads a 4-byte-aligned dword.
    fn read_u32(&self, pa: u64) -> Option<u32> {
        let shift = (pa & 4) * 8;
        self.read_u64(pa & !7).map(|w| (w >> shift) as u32)
    }
}

/// Allocation of zeroed 4 KiB frames for IOMMU structures.
pub trait PageAlloc {
    /// A zeroed frame, or `None` when memory is exhausted.
    fn alloc_zeroed(&mut self) -> Option<Mfn>;
    /// Returns a frame. The caller guarantees no IOMMU cache still refers to it.
    fn free_page(&mut self, mfn: Mfn);
}

/// Both halves, as the core needs them.
pub trait Memory: PhysMem + PageAlloc {}
impl<T: PhysMem + PageAlloc> Memory for T {}

/// Host memory model: up to `capacity` frames numbered from `base`.
pub struct VecMemory {
    base: u64,
    frames: Vec<Option<Box<[u64; 512]>>>,
    free: Vec<usize>,
    allocated: usize,
}

impl VecMemory {
    /// Frames `base .. base + capacity`, all free.
    pub fn new(base: Mfn, capacity: usize) -> Self {
        let mut frames = Vec::new();
        frames.resize_with(capacity, || None);
        VecMemory { base: base.0, frames, free: (0..capacity).rev().collect(), allocated: 0 }
    }

    /// Frames currently allocated.
    pub fn allocated(&self) -> usize {
        self.allocated
    }

    /// True if `mfn` is currently allocated.
    pub fn is_allocated(&self, mfn: Mfn) -> bool {
        self.slot(mfn).and_then(|i| self.frames.get(i)).is_some_and(|f| f.is_some())
    }

    fn slot(&self, mfn: Mfn) -> Option<usize> {
        mfn.0.checked_sub(self.base).and_then(|i| usize::try_from(i).ok()).filter(|&i| i < self.frames.len())
    }

    fn locate(&self, pa: u64) -> Option<(usize, usize)> {
        if pa & 7 != 0 {
            return None;
        }
        let i = self.slot(Mfn::from_addr(pa))?;
        Some((i, ((pa & 0xfff) / 8) as usize))
    }
}

impl PhysMem for VecMemory {
    fn read_u64(&self, pa: u64) -> Option<u64> {
        let (i, w) = self.locate(pa)?;
        self.frames[i].as_ref().map(|f| f[w])
    }

    fn write_u64(&mut self, pa: u64, v: u64) {
        let (i, w) = self.locate(pa).expect("write outside model memory");
        let f = self.frames[i].as_mut().expect("write to a free frame");
        f[w] = v;
    }

    /// Nothing to do: the host model has no cache between the core and the
    /// unit; `SoftVtd` models non-coherence itself.
    fn write_back(&mut self, _pa: u64, _len: u64) {}
}

impl PageAlloc for VecMemory {
    fn alloc_zeroed(&mut self) -> Option<Mfn> {
        let i = self.free.pop()?;
        self.frames[i] = Some(Box::new([0; 512]));
        self.allocated += 1;
        Some(Mfn(self.base + i as u64))
    }

    fn free_page(&mut self, mfn: Mfn) {
        let i = self.slot(mfn).expect("free of a frame outside model memory");
        assert!(self.frames[i].take().is_some(), "double free of {mfn:?}");
        self.allocated -= 1;
        self.free.push(i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vec_memory_bounds_and_dwords() {
        let mut m = VecMemory::new(Mfn(0x100), 2);
        let a = m.alloc_zeroed().unwrap();
        let b = m.alloc_zeroed().unwrap();
        assert!(m.alloc_zeroed().is_none());
        assert_ne!(a, b);
        m.write_u64(a.addr() + 8, 0x1111_2222_3333_4444);
        m.write_u32(a.addr() + 12, 0xdead_beef);
        assert_eq!(m.read_u64(a.addr() + 8), Some(0xdead_beef_3333_4444));
        assert_eq!(m.read_u32(a.addr() + 8), Some(0x3333_4444));
        assert_eq!(m.read_u64(0), None);
        assert_eq!(m.read_u64(a.addr() + 1), None);
        m.free_page(a);
        assert_eq!(m.read_u64(a.addr()), None, "freed frames read as unbacked");
        assert_eq!(m.allocated(), 1);
    }
}
