//! [`DmaMapper`] on a PV-IOMMU context: the device sees IOVAs, not guest
//! frames.
//!
//! An inner mapper provides the memory and says which guest frames back it
//! (its bus addresses are guest frame addresses: GFN << 12 — on PVH/HVM the
//! physical address, on PV the machine frame Xen's PV-IOMMU takes as gfn).
//! [`IommuDma`] gives each region or buffer a fresh IOVA range from an
//! [`IovaAllocator`] (the MSI window and other reserved ranges are never
//! used), maps every contiguous run of guest frames with one `map_pages`
//! call, and unmaps the whole range with one `unmap_pages` call.
//!
//! Rights follow the direction: a buffer the device reads (`ToDevice`) is
//! mapped read-only, one it writes (`FromDevice`) write-only; driver regions
//! (queues, PRP lists) read-write.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::cell::Cell;
use core::ptr::NonNull;

use drivers::hal::{BusAddr, DmaCpuAccess, DmaDirection, DmaMapper, DmaRegion, DmaSegment, Mapping, PAGE_SIZE};
use drivers::DmaError;

use crate::client::{Client, MapFlags, Transport};
use crate::iova::IovaAllocator;
use crate::types::{CtxNo, Dfn, Gfn};

const PS: u64 = PAGE_SIZE as u64;

struct Region {
    inner: DmaRegion,
    dfn: u64,
    mapped: u64,
}

struct Live {
    inner: Mapping,
    dfn: u64,
    pages: u64,
    mapped: u64,
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DmaStats {
    /// `map_pages` calls issued.
    pub map_calls: u64,
    /// Pages mapped.
    pub pages_mapped: u64,
    /// `unmap_pages` calls issued.
    pub unmap_calls: u64,
    /// Pages unmapped.
    pub pages_unmapped: u64,
    /// Map or unmap calls that failed.
    pub failures: u64,
}

/// Test hooks: deliberately incomplete mappings, to provoke IOMMU faults.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// The next buffer `map` maps only this many of its pages, yet reports
    /// the whole IOVA range to the driver.
    pub map_only: Option<u64>,
    /// The next `alloc_zeroed` gets an IOVA range that is never mapped.
    pub unmapped_alloc: bool,
}

/// A [`DmaMapper`] whose bus addresses are IOVAs in one PV-IOMMU context.
pub struct IommuDma<T: Transport, D: DmaMapper> {
    client: Client<T>,
    inner: D,
    ctx: Cell<CtxNo>,
    iova: IovaAllocator,
    regions: BTreeMap<u64, Region>,
    live: BTreeMap<u64, Live>,
    next_id: u64,
    faults: Cell<Faults>,
    hole: Cell<Option<(u64, u64)>>,
    stats: DmaStats,
    last_error: Option<crate::Error>,
}

impl<T: Transport, D: DmaMapper> IommuDma<T, D> {
    /// Maps through `client` into `ctx`, with IOVAs from `iova`.
    pub fn new(client: Client<T>, inner: D, ctx: CtxNo, iova: IovaAllocator) -> Self {
        IommuDma {
            client,
            inner,
            ctx: Cell::new(ctx),
            iova,
            regions: BTreeMap::new(),
            live: BTreeMap::new(),
            next_id: 1,
            faults: Cell::new(Faults::default()),
            hole: Cell::new(None),
            stats: DmaStats::default(),
            last_error: None,
        }
    }

    /// The context maps and unmaps go to.
    pub fn context(&self) -> CtxNo {
        self.ctx.get()
    }

    /// Switches to `ctx` after the caller has replayed every live mapping
    /// into it and reattached the device: IOVAs stay valid, later maps and
    /// unmaps go to `ctx`. (`&self`: the driver owns the mapper.)
    pub fn set_context(&self, ctx: CtxNo) {
        self.ctx.set(ctx);
    }

    /// Arms fault hooks (see [`Faults`]); each fires once.
    pub fn arm_faults(&self, f: Faults) {
        self.faults.set(f);
    }

    /// The last range a fault hook left unmapped: (first device frame, pages).
    pub fn last_hole(&self) -> Option<(u64, u64)> {
        self.hole.get()
    }

    /// Counters.
    pub fn stats(&self) -> DmaStats {
        self.stats
    }

    /// The last PV-IOMMU error seen.
    pub fn last_error(&self) -> Option<crate::Error> {
        self.last_error
    }

    /// The inner mapper.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    /// IOVA (device frame) of a region this mapper allocated, and the guest
    /// frame behind it (for logs and tests).
    pub fn region_frames(&self, r: &DmaRegion) -> Option<(u64, u64)> {
        let reg = self.regions.get(&r.id())?;
        Some((reg.dfn, reg.inner.bus().0 / PS))
    }

    fn map_run(&mut self, gfn: u64, dfn: u64, n: u64, flags: MapFlags) -> Result<(), u64> {
        let nr = u32::try_from(n).map_err(|_| 0u64)?;
        self.stats.map_calls += 1;
        match self.client.map_pages(self.ctx.get(), Gfn(gfn), Dfn(dfn), nr, flags) {
            Ok(()) => {
                self.stats.pages_mapped += n;
                Ok(())
            }
            Err(e) => {
                self.stats.failures += 1;
                self.stats.pages_mapped += u64::from(e.done);
                self.last_error = Some(e.error);
                Err(u64::from(e.done))
            }
        }
    }

    /// Unmaps `[dfn, dfn + n)`; false if any page may still be mapped.
    fn unmap_range(&mut self, dfn: u64, n: u64) -> bool {
        if n == 0 {
            return true;
        }
        let Ok(nr) = u32::try_from(n) else {
            return false;
        };
        self.stats.unmap_calls += 1;
        match self.client.unmap_pages(self.ctx.get(), Dfn(dfn), nr) {
            Ok(()) => {
                self.stats.pages_unmapped += n;
                true
            }
            Err(e) => {
                self.stats.failures += 1;
                self.last_error = Some(e.error);
                false
            }
        }
    }
}

/// Guest-frame runs of a segment list: (first gfn, pages), merged when the
/// next segment continues in the next frame. `None` if two segments share a
/// frame (the IOVA layout could not keep them apart).
fn runs(segs: &[DmaSegment]) -> Option<Vec<(u64, u64)>> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut last_frame: Option<u64> = None;
    for s in segs {
        if s.len == 0 {
            continue;
        }
        let first = s.bus.0 / PS;
        let last = s.bus.0.checked_add(s.len as u64 - 1)? / PS;
        if last_frame.is_some_and(|l| first <= l) {
            return None;
        }
        match out.last_mut() {
            Some(r) if r.0 + r.1 == first => r.1 += last - first + 1,
            _ => out.push((first, last - first + 1)),
        }
        last_frame = Some(last);
    }
    Some(out)
}

impl<T: Transport, D: DmaMapper> DmaMapper for IommuDma<T, D> {
    type Buffer = D::Buffer;

    fn alloc_zeroed(&mut self, pages: usize) -> Result<DmaRegion, DmaError> {
        let inner = self.inner.alloc_zeroed(pages)?;
        let n = inner.pages() as u64;
        let Some(dfn) = self.iova.alloc(n) else {
            self.inner.free(inner);
            return Err(DmaError::NoMemory);
        };
        let mut f = self.faults.get();
        let skip = core::mem::take(&mut f.unmapped_alloc);
        self.faults.set(f);
        let mapped = if skip {
            self.hole.set(Some((dfn, n)));
            0
        } else {
            match self.map_run(inner.bus().0 / PS, dfn, n, MapFlags::READ_WRITE) {
                Ok(()) => n,
                Err(done) => {
                    let ok = self.unmap_range(dfn, done);
                    if ok {
                        self.iova.free(dfn, n);
                    }
                    self.inner.free(inner);
                    return Err(DmaError::NoMemory);
                }
            }
        };
        let id = self.next_id;
        self.next_id += 1;
        let out = DmaRegion::new(id, BusAddr(dfn * PS), inner.pages());
        self.regions.insert(id, Region { inner, dfn, mapped });
        Ok(out)
    }

    fn free(&mut self, region: DmaRegion) {
        let Some(r) = self.regions.remove(&region.id()) else {
            return;
        };
        if self.unmap_range(r.dfn, r.mapped) {
            self.iova.free(r.dfn, r.inner.pages() as u64);
            self.inner.free(r.inner);
        }
        // Otherwise the device may still reach the memory: leak it and the
        // IOVA range rather than reuse either.
    }

    fn read(&self, region: &DmaRegion, offset: usize, out: &mut [u8]) -> Result<(), DmaError> {
        let r = self.regions.get(&region.id()).ok_or(DmaError::OutOfBounds)?;
        self.inner.read(&r.inner, offset, out)
    }

    fn write(&mut self, region: &DmaRegion, offset: usize, data: &[u8]) -> Result<(), DmaError> {
        let r = self.regions.get(&region.id()).ok_or(DmaError::OutOfBounds)?;
        self.inner.write(&r.inner, offset, data)
    }

    fn map(&mut self, buffer: &mut D::Buffer, direction: DmaDirection) -> Result<Mapping, DmaError> {
        let inner = self.inner.map(buffer, direction)?;
        let Some(runs) = runs(inner.segments()) else {
            let _ = self.inner.unmap(inner, buffer);
            return Err(DmaError::MapFailed);
        };
        let pages: u64 = runs.iter().map(|r| r.1).sum();
        let Some(dfn) = self.iova.alloc(pages) else {
            let _ = self.inner.unmap(inner, buffer);
            return Err(DmaError::NoMemory);
        };
        let flags = match direction {
            DmaDirection::ToDevice => MapFlags::READ,
            DmaDirection::FromDevice => MapFlags::WRITE,
        };
        let mut f = self.faults.get();
        let limit = f.map_only.take().unwrap_or(u64::MAX);
        self.faults.set(f);
        // Map run by run; the IOVA range is contiguous across runs.
        let mut at = 0u64;
        for &(gfn, n) in &runs {
            let n = n.min(limit.saturating_sub(at));
            if n == 0 {
                break;
            }
            if let Err(done) = self.map_run(gfn, dfn + at, n, flags) {
                let ok = self.unmap_range(dfn, at + done);
                if ok {
                    self.iova.free(dfn, pages);
                }
                let _ = self.inner.unmap(inner, buffer);
                return Err(DmaError::MapFailed);
            }
            at += n;
        }
        if at < pages {
            self.hole.set(Some((dfn + at, pages - at)));
        }
        // Device addresses: each inner segment keeps its offset in its page;
        // its frames sit at the run's place in the IOVA range.
        let mut segs: Vec<DmaSegment> = Vec::new();
        let mut page = 0u64;
        for s in inner.segments().iter().filter(|s| s.len > 0) {
            let off = s.bus.0 % PS;
            let bus = (dfn + page) * PS + off;
            let spanned = (off + s.len as u64).div_ceil(PS);
            match segs.last_mut() {
                Some(l) if l.bus.0 + l.len as u64 == bus => l.len += s.len,
                _ => segs.push(DmaSegment { bus: BusAddr(bus), len: s.len }),
            }
            page += spanned;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.live.insert(id, Live { inner, dfn, pages, mapped: at });
        Ok(Mapping::new(id, direction, segs))
    }

    fn unmap(&mut self, mapping: Mapping, buffer: &mut D::Buffer) -> Result<(), DmaError> {
        let l = self.live.remove(&mapping.id()).ok_or(DmaError::UnmapFailed)?;
        let revoked = self.unmap_range(l.dfn, l.mapped);
        if revoked {
            self.iova.free(l.dfn, l.pages);
        }
        self.inner.unmap(l.inner, buffer)?;
        if revoked {
            Ok(())
        } else {
            Err(DmaError::UnmapFailed)
        }
    }

    fn abandon(&mut self, mapping: Mapping, buffer: &mut D::Buffer) {
        let Some(l) = self.live.remove(&mapping.id()) else { return };
        if self.unmap_range(l.dfn, l.mapped) {
            // Revoked in the IOMMU: the buffer is the caller's again.
            self.iova.free(l.dfn, l.pages);
            let _ = self.inner.unmap(l.inner, buffer);
        } else {
            // Still reachable through the IOVAs (kept allocated): the inner
            // mapper swaps the memory out.
            self.inner.abandon(l.inner, buffer);
        }
    }
}

/// The CPU sees a region where the inner mapper put it; only the device
/// address is an IOVA.
impl<T: Transport, D: DmaCpuAccess> DmaCpuAccess for IommuDma<T, D> {
    fn region_ptr(&self, region: &DmaRegion) -> Option<NonNull<u8>> {
        let r = self.regions.get(&region.id())?;
        if region.bus() != BusAddr(r.dfn * PS) {
            return None;
        }
        self.inner.region_ptr(&r.inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{decode, Op};
    use crate::iova::MSI_WINDOW;
    use drivers::fake::{FakeDma, FakeMemory};
    use std::cell::RefCell;
    use std::collections::BTreeMap as Map;
    use std::rc::Rc;

    /// A context as a map dfn → (gfn, flags); refuses maps over maps,
    /// unmaps of holes and the MSI window, like the hypervisor.
    #[derive(Default)]
    struct Ctx {
        map: Map<u64, (u64, u32)>,
        calls: u32,
    }

    struct Fake(Rc<RefCell<Ctx>>);

    impl Transport for Fake {
        fn iommu_op(&mut self, subop: u32, arg: &mut [u8]) -> i64 {
            let mut c = self.0.borrow_mut();
            c.calls += 1;
            match decode(subop, arg) {
                Ok(Op::MapPages(mut m)) => {
                    for i in m.mapped..m.nr_pages {
                        let d = m.dfn + i as u64;
                        if (MSI_WINDOW.0..MSI_WINDOW.0 + MSI_WINDOW.1).contains(&d) {
                            m.write_to(arg).unwrap();
                            return -99;
                        }
                        if c.map.insert(d, (m.gfn + i as u64, m.map_flags)).is_some() {
                            m.write_to(arg).unwrap();
                            return -98;
                        }
                        m.mapped = i + 1;
                    }
                    m.write_to(arg).unwrap();
                    0
                }
                Ok(Op::UnmapPages(mut u)) => {
                    for i in u.unmapped..u.nr_pages {
                        if c.map.remove(&(u.dfn + i as u64)).is_none() {
                            u.write_to(arg).unwrap();
                            return -2;
                        }
                        u.unmapped = i + 1;
                    }
                    u.write_to(arg).unwrap();
                    0
                }
                _ => -22,
            }
        }
    }

    fn rig(first: u64) -> (IommuDma<Fake, FakeDma>, Rc<RefCell<Ctx>>) {
        let ctx = Rc::new(RefCell::new(Ctx::default()));
        let d = IommuDma::new(
            Client::new(Fake(ctx.clone())),
            FakeDma::new(FakeMemory::new_shared()),
            CtxNo(1),
            IovaAllocator::new(first, 1 << 27, &[MSI_WINDOW]),
        );
        (d, ctx)
    }

    #[test]
    fn regions_get_iovas_mapped_in_one_call() {
        let (mut d, ctx) = rig(0x8_0000);
        let r = d.alloc_zeroed(4).unwrap();
        assert_eq!(r.bus(), BusAddr(0x8_0000 * PS));
        let (dfn, gfn) = d.region_frames(&r).unwrap();
        assert_eq!(dfn, 0x8_0000);
        assert_ne!(gfn, dfn, "bus addresses are IOVAs, not guest frames");
        {
            let c = ctx.borrow();
            assert_eq!(c.calls, 1);
            assert_eq!(c.map.get(&0x8_0003), Some(&(gfn + 3, 3)));
        }
        d.write(&r, 4095, &[7, 8]).unwrap();
        let mut b = [0u8; 2];
        d.read(&r, 4095, &mut b).unwrap();
        assert_eq!(b, [7, 8]);
        d.free(r);
        assert!(ctx.borrow().map.is_empty());
        assert_eq!(d.stats().unmap_calls, 1);
    }

    #[test]
    fn buffers_are_mapped_by_direction_and_unmapped() {
        let (mut d, ctx) = rig(0x100);
        let mut buf = vec![0u8; 3 * PAGE_SIZE + 100];
        let m = d.map(&mut buf, DmaDirection::FromDevice).unwrap();
        let total: usize = m.segments().iter().map(|s| s.len).sum();
        assert_eq!(total, buf.len());
        assert!(m.segments()[0].bus.0 >= 0x100 * PS);
        assert!(ctx.borrow().map.values().all(|&(_, f)| f == MapFlags::WRITE.bits()));
        d.unmap(m, &mut buf).unwrap();
        assert!(ctx.borrow().map.is_empty());
        let m = d.map(&mut buf, DmaDirection::ToDevice).unwrap();
        assert!(ctx.borrow().map.values().all(|&(_, f)| f == MapFlags::READ.bits()));
        d.unmap(m, &mut buf).unwrap();
    }

    #[test]
    fn region_cpu_pointer_is_the_inner_one() {
        let (mut d, _) = rig(0x8_0000);
        let r = d.alloc_zeroed(1).unwrap();
        let (_, gfn) = d.region_frames(&r).unwrap();
        let p = d.region_ptr(&r).unwrap();
        // The inner fake placed the region at guest frame `gfn`.
        let mem = d.inner().memory();
        assert_eq!(mem.borrow().cpu_ptr(gfn * PS), Some(p));
        let forged = DmaRegion::new(r.id(), BusAddr(gfn * PS), 1);
        assert_eq!(d.region_ptr(&forged), None, "the IOVA must match");
        d.free(r);
        assert_eq!(d.region_ptr(&DmaRegion::new(1, BusAddr(0x8_0000 * PS), 1)), None);
    }

    #[test]
    fn never_uses_the_msi_window() {
        // Start just below the window: the second region must jump over it.
        let (mut d, ctx) = rig(MSI_WINDOW.0 - 2);
        let a = d.alloc_zeroed(2).unwrap();
        let b = d.alloc_zeroed(2).unwrap();
        assert_eq!(a.bus().0 / PS, MSI_WINDOW.0 - 2);
        assert_eq!(b.bus().0 / PS, MSI_WINDOW.0 + MSI_WINDOW.1);
        assert!(ctx.borrow().map.keys().all(|k| !(MSI_WINDOW.0..MSI_WINDOW.0 + 0x100).contains(k)));
    }

    #[test]
    fn fault_hooks_leave_holes_and_unmap_cleans_up() {
        let (mut d, ctx) = rig(0x100);
        d.arm_faults(Faults { map_only: Some(1), ..Default::default() });
        let mut buf = vec![0u8; 2 * PAGE_SIZE];
        let m = d.map(&mut buf, DmaDirection::FromDevice).unwrap();
        let first = m.segments()[0].bus.0 / PS;
        assert_eq!(m.segments()[0].len, 2 * PAGE_SIZE);
        assert!(ctx.borrow().map.contains_key(&first));
        assert!(!ctx.borrow().map.contains_key(&(first + 1)));
        assert_eq!(d.last_hole(), Some((first + 1, 1)));
        d.unmap(m, &mut buf).unwrap();
        assert!(ctx.borrow().map.is_empty());
        d.arm_faults(Faults { unmapped_alloc: true, ..Default::default() });
        let r = d.alloc_zeroed(1).unwrap();
        assert!(ctx.borrow().map.is_empty());
        d.free(r);
        // One-shot: the next allocation is mapped again.
        let r = d.alloc_zeroed(1).unwrap();
        assert_eq!(ctx.borrow().map.len(), 1);
        d.free(r);
    }

    #[test]
    fn failed_map_rolls_back() {
        let (mut d, ctx) = rig(0x100);
        // Occupy the frame the second page will get: the map fails midway.
        ctx.borrow_mut().map.insert(0x101, (0, 1));
        let mut buf = vec![0u8; 2 * PAGE_SIZE];
        assert_eq!(d.map(&mut buf, DmaDirection::ToDevice), Err(DmaError::MapFailed));
        assert_eq!(ctx.borrow().map.len(), 1, "partial progress undone");
        assert_eq!(d.last_error(), Some(crate::Error::AddressInUse));
    }
}
