//! Bounce-buffer DMA: the device only ever sees a fixed pool of DMA-safe
//! pages; caller buffers are copied in and out.
//!
//! For a guest whose own memory the device cannot reach (or must not: an
//! auto-translated guest without PV-IOMMU), [`BounceDma`] takes a bounded
//! pool of pages from a lower [`DmaMapper`] once, at construction, and
//! serves every buffer mapping from it:
//!
//! - `map(ToDevice)`: the buffer is copied into pool pages; the rest of the
//!   last page is zeroed, so the device sees this buffer's bytes or zeros.
//! - `map(FromDevice)`: the pool pages are zeroed (a short device write
//!   never hands an earlier buffer's data back to the driver); `unmap`
//!   copies them into the buffer.
//! - Not enough free pool pages: [`DmaError::NoMemory`]; nothing is
//!   allocated after construction, nothing panics.
//!
//! The device never gets a caller buffer's address: segments point into
//! pool pages only (each page its own segment unless the lower mapper made
//! neighbours adjacent on the bus). Driver regions (`alloc_zeroed` & co.)
//! pass through to the lower mapper, which provides DMA-safe memory.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use core::marker::PhantomData;
use core::ptr::NonNull;

use crate::error::DmaError;
use crate::hal::{DmaBuffer, DmaCpuAccess, DmaDirection, DmaMapper, DmaRegion, DmaSegment, Mapping, PAGE_SIZE};

const ZERO_PAGE: [u8; PAGE_SIZE] = [0; PAGE_SIZE];

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BounceStats {
    /// Buffers mapped.
    pub maps: u64,
    /// Buffers unmapped.
    pub unmaps: u64,
    /// Bytes copied into pool pages for the device.
    pub bytes_in: u64,
    /// Bytes copied back from pool pages after the device wrote them.
    pub bytes_out: u64,
    /// Maps refused because the pool had too few free pages.
    pub exhausted: u64,
    /// Most pool pages in use at once.
    pub peak_pages: usize,
    /// Pool pages taken out of use for good: a device that did not stop
    /// may still write them.
    pub abandoned_pages: u64,
}

struct Live {
    pages: Vec<usize>,
    len: usize,
    direction: DmaDirection,
}

/// A [`DmaMapper`] that bounces buffers of type `B` through a bounded pool
/// of pages of the lower mapper `D`.
pub struct BounceDma<D: DmaMapper, B> {
    lower: D,
    pool: Vec<DmaRegion>,
    free: BTreeSet<usize>,
    live: BTreeMap<u64, Live>,
    next_id: u64,
    stats: BounceStats,
    _buffer: PhantomData<fn(B) -> B>,
}

impl<D: DmaMapper, B> BounceDma<D, B> {
    /// Takes `pages` one-page regions from `lower` as the pool. On failure
    /// (`lower` runs out: its error; an empty pool: `OutOfBounds`) the
    /// pages taken so far are returned and `lower` is handed back.
    pub fn new(mut lower: D, pages: usize) -> Result<Self, (DmaError, D)> {
        if pages == 0 {
            return Err((DmaError::OutOfBounds, lower));
        }
        let mut pool = Vec::new();
        if pool.try_reserve_exact(pages).is_err() {
            return Err((DmaError::NoMemory, lower));
        }
        for _ in 0..pages {
            match lower.alloc_zeroed(1) {
                Ok(r) => pool.push(r),
                Err(e) => {
                    for r in pool {
                        lower.free(r);
                    }
                    return Err((e, lower));
                }
            }
        }
        Ok(BounceDma {
            lower,
            pool,
            free: (0..pages).collect(),
            live: BTreeMap::new(),
            next_id: 1,
            stats: BounceStats::default(),
            _buffer: PhantomData,
        })
    }

    /// Pool size in pages.
    pub fn capacity(&self) -> usize {
        self.pool.len()
    }

    /// Pool pages not in use.
    pub fn free_pages(&self) -> usize {
        self.free.len()
    }

    /// Buffers currently mapped.
    pub fn live_mappings(&self) -> usize {
        self.live.len()
    }

    /// Counters.
    pub fn stats(&self) -> BounceStats {
        self.stats
    }

    /// The lower mapper.
    pub fn lower(&self) -> &D {
        &self.lower
    }

    /// True if `[bus, bus + len)` lies inside one pool page.
    pub fn in_pool(&self, bus: u64, len: usize) -> bool {
        self.pool.iter().any(|r| bus >= r.bus().0 && bus.saturating_add(len as u64) <= r.bus().0 + r.len() as u64)
    }

    /// Returns the pool to the lower mapper and gives the mapper back, or
    /// gives `self` back while buffers are mapped (the device may still
    /// use their pages). Dropping a `BounceDma` instead leaks the pool.
    pub fn into_lower(mut self) -> Result<D, Box<Self>> {
        if !self.live.is_empty() {
            return Err(Box::new(self));
        }
        for r in self.pool.drain(..) {
            self.lower.free(r);
        }
        self.free.clear();
        // Nothing left to release; the fields are moved out below.
        let BounceDma { lower, .. } = self;
        Ok(lower)
    }

    fn release(&mut self, pages: &[usize]) {
        self.free.extend(pages.iter().copied());
    }
}

impl<D, B> DmaMapper for BounceDma<D, B>
where
    D: DmaMapper,
    B: DmaBuffer + AsRef<[u8]> + AsMut<[u8]>,
{
    type Buffer = B;

    fn alloc_zeroed(&mut self, pages: usize) -> Result<DmaRegion, DmaError> {
        self.lower.alloc_zeroed(pages)
    }

    fn free(&mut self, region: DmaRegion) {
        self.lower.free(region)
    }

    fn read(&self, region: &DmaRegion, offset: usize, out: &mut [u8]) -> Result<(), DmaError> {
        self.lower.read(region, offset, out)
    }

    fn write(&mut self, region: &DmaRegion, offset: usize, data: &[u8]) -> Result<(), DmaError> {
        self.lower.write(region, offset, data)
    }

    fn map(&mut self, buffer: &mut B, direction: DmaDirection) -> Result<Mapping, DmaError> {
        let data = buffer.as_ref();
        let len = data.len();
        if len == 0 || len != buffer.len() {
            return Err(DmaError::MapFailed);
        }
        let need = len.div_ceil(PAGE_SIZE);
        if need > self.free.len() {
            self.stats.exhausted += 1;
            return Err(DmaError::NoMemory);
        }
        let pages: Vec<usize> = self.free.iter().copied().take(need).collect();
        let mut segs: Vec<DmaSegment> = Vec::new();
        for (k, &p) in pages.iter().enumerate() {
            let chunk = &data[k * PAGE_SIZE..len.min((k + 1) * PAGE_SIZE)];
            let region = &self.pool[p];
            let filled = match direction {
                DmaDirection::ToDevice => self
                    .lower
                    .write(region, 0, chunk)
                    .and_then(|()| self.lower.write(region, chunk.len(), &ZERO_PAGE[chunk.len()..])),
                DmaDirection::FromDevice => self.lower.write(region, 0, &ZERO_PAGE),
            };
            // The pages are still free: nothing to undo.
            filled.map_err(|_| DmaError::MapFailed)?;
            let bus = region.bus();
            match segs.last_mut() {
                Some(s) if s.bus.checked_add(s.len as u64) == Some(bus) => s.len += chunk.len(),
                _ => segs.push(DmaSegment { bus, len: chunk.len() }),
            }
        }
        for p in &pages {
            self.free.remove(p);
        }
        if direction == DmaDirection::ToDevice {
            self.stats.bytes_in += len as u64;
        }
        self.stats.maps += 1;
        self.stats.peak_pages = self.stats.peak_pages.max(self.pool.len() - self.free.len());
        let id = self.next_id;
        self.next_id += 1;
        self.live.insert(id, Live { pages, len, direction });
        Ok(Mapping::new(id, direction, segs))
    }

    fn unmap(&mut self, mapping: Mapping, buffer: &mut B) -> Result<(), DmaError> {
        let live = self.live.remove(&mapping.id()).ok_or(DmaError::UnmapFailed)?;
        self.stats.unmaps += 1;
        // The mapping is over either way: its pages go back to the pool.
        let result = if buffer.len() != live.len || buffer.as_mut().len() != live.len {
            Err(DmaError::OutOfBounds)
        } else if live.direction == DmaDirection::FromDevice {
            let out = buffer.as_mut();
            let mut r = Ok(());
            for (k, &p) in live.pages.iter().enumerate() {
                let chunk = &mut out[k * PAGE_SIZE..live.len.min((k + 1) * PAGE_SIZE)];
                r = r.and(self.lower.read(&self.pool[p], 0, chunk));
            }
            if r.is_ok() {
                self.stats.bytes_out += live.len as u64;
            }
            r
        } else {
            Ok(())
        };
        self.release(&live.pages);
        result
    }

    fn abandon(&mut self, mapping: Mapping, _buffer: &mut B) {
        // The caller's buffer was never visible to the device; its bounce
        // pages were, and never go back to the pool.
        if let Some(live) = self.live.remove(&mapping.id()) {
            self.stats.unmaps += 1;
            self.stats.abandoned_pages += live.pages.len() as u64;
        }
    }
}

impl<D: DmaCpuAccess, B> DmaCpuAccess for BounceDma<D, B>
where
    B: DmaBuffer + AsRef<[u8]> + AsMut<[u8]>,
{
    fn region_ptr(&self, region: &DmaRegion) -> Option<NonNull<u8>> {
        // Pool pages are not driver regions.
        if self.pool.iter().any(|r| r.id() == region.id()) {
            return None;
        }
        self.lower.region_ptr(region)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{FakeDma, FakeMemory, Memory};
    use proptest::prelude::*;

    type Bounce = BounceDma<FakeDma, Vec<u8>>;

    fn rig(pages: usize) -> (Memory, Bounce) {
        let mem = FakeMemory::new_shared();
        let b = BounceDma::new(FakeDma::new(mem.clone()), pages).map_err(|(e, _)| e).unwrap();
        (mem, b)
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1).collect()
    }

    /// What the device reads through a mapping's segments.
    fn device_read(mem: &Memory, m: &Mapping) -> Vec<u8> {
        let mut out = Vec::new();
        for s in m.segments() {
            let mut b = vec![0u8; s.len];
            mem.borrow().read(s.bus.0, &mut b);
            out.extend_from_slice(&b);
        }
        out
    }

    fn device_write(mem: &Memory, m: &Mapping, data: &[u8]) {
        let mut done = 0;
        for s in m.segments() {
            let n = s.len.min(data.len() - done);
            mem.borrow_mut().write(s.bus.0, &data[done..done + n]);
            done += n;
            if done == data.len() {
                break;
            }
        }
    }

    #[test]
    fn to_device_copies_into_pool_pages_only() {
        let (mem, mut b) = rig(4);
        // Dirty a pool page first: the device writes all of it.
        let mut junk = vec![0u8; PAGE_SIZE];
        let m = b.map(&mut junk, DmaDirection::FromDevice).unwrap();
        device_write(&mem, &m, &[0xff; PAGE_SIZE]);
        b.unmap(m, &mut junk).unwrap();

        let mut buf = pattern(PAGE_SIZE + 700, 7);
        let original = buf.clone();
        let m = b.map(&mut buf, DmaDirection::ToDevice).unwrap();
        let addr = buf.as_ptr() as u64;
        for s in m.segments() {
            assert!(b.in_pool(s.bus.0, s.len), "segment {s:?} outside the pool");
            assert!(s.bus.0 >= addr + buf.len() as u64 || s.bus.0 + (s.len as u64) <= addr);
        }
        assert_eq!(device_read(&mem, &m), original);
        // The rest of the last page is zero, not the earlier buffer's 0xff.
        let last = m.segments().last().unwrap();
        let mut tail = vec![1u8; PAGE_SIZE - 700];
        mem.borrow().read(last.bus.0 + last.len as u64, &mut tail);
        assert!(tail.iter().all(|&x| x == 0), "stale bytes visible to the device");
        assert_eq!(b.lower().live_mappings(), 0, "the caller buffer is never mapped below");
        b.unmap(m, &mut buf).unwrap();
        assert_eq!(buf, original, "ToDevice never writes the buffer back");
        assert_eq!(b.stats().bytes_in, (PAGE_SIZE + 700) as u64);
    }

    #[test]
    fn from_device_data_lands_at_unmap_and_short_writes_leak_nothing() {
        let (mem, mut b) = rig(4);
        // An earlier buffer leaves its data in the pool pages.
        let mut first = pattern(3 * PAGE_SIZE, 3);
        let m = b.map(&mut first, DmaDirection::ToDevice).unwrap();
        b.unmap(m, &mut first).unwrap();

        let mut buf = vec![0x11u8; 2 * PAGE_SIZE + 10];
        let m = b.map(&mut buf, DmaDirection::FromDevice).unwrap();
        assert_eq!(m.segments().iter().map(|s| s.len).sum::<usize>(), buf.len());
        let written = pattern(PAGE_SIZE + 5, 9);
        device_write(&mem, &m, &written);
        assert!(buf.iter().all(|&x| x == 0x11), "nothing lands before unmap");
        b.unmap(m, &mut buf).unwrap();
        assert_eq!(&buf[..written.len()], &written[..]);
        assert!(buf[written.len()..].iter().all(|&x| x == 0), "unwritten bytes come back zero, not stale");
        assert_eq!(b.stats().bytes_out, buf.len() as u64);
    }

    #[test]
    fn exhaustion_is_an_error_and_unmap_releases() {
        let (_, mut b) = rig(3);
        let mut two = vec![1u8; 2 * PAGE_SIZE];
        let mut also_two = vec![2u8; PAGE_SIZE + 1];
        let m = b.map(&mut two, DmaDirection::ToDevice).unwrap();
        assert_eq!(b.free_pages(), 1);
        assert_eq!(b.map(&mut also_two, DmaDirection::FromDevice), Err(DmaError::NoMemory));
        assert_eq!((b.free_pages(), b.live_mappings(), b.stats().exhausted), (1, 1, 1));
        let mut one = vec![3u8; 1];
        let small = b.map(&mut one, DmaDirection::ToDevice).unwrap();
        assert_eq!(b.map(&mut one, DmaDirection::ToDevice), Err(DmaError::NoMemory));
        b.unmap(m, &mut two).unwrap();
        let m = b.map(&mut also_two, DmaDirection::FromDevice).unwrap();
        assert_eq!(b.free_pages(), 0);
        assert_eq!(b.stats().peak_pages, 3);
        // Unknown or repeated mappings are refused, not panicked on.
        let forged = Mapping::new(m.id(), m.direction(), m.segments().to_vec());
        b.unmap(m, &mut also_two).unwrap();
        assert_eq!(b.unmap(forged, &mut also_two), Err(DmaError::UnmapFailed));
        // A wrong-length buffer is an error, but the pages come back.
        let mut wrong = vec![0u8; 7];
        assert_eq!(b.unmap(small, &mut wrong), Err(DmaError::OutOfBounds));
        assert_eq!(b.free_pages(), 3);
        assert_eq!(b.map(&mut Vec::new(), DmaDirection::ToDevice), Err(DmaError::MapFailed));
    }

    #[test]
    fn pool_is_bounded_and_returned() {
        let mem = FakeMemory::new_shared();
        let mut lower = FakeDma::new(mem.clone());
        lower.region_limit = Some(2);
        let (e, lower) = BounceDma::<_, Vec<u8>>::new(lower, 3).err().unwrap();
        assert_eq!(e, DmaError::NoMemory);
        assert_eq!(lower.live_regions(), 0, "partial pool handed back");
        assert_eq!(BounceDma::<_, Vec<u8>>::new(lower, 0).err().unwrap().0, DmaError::OutOfBounds);

        let (_, mut b) = rig(2);
        assert_eq!(b.lower().live_regions(), 2);
        let mut buf = vec![0u8; 10];
        let m = b.map(&mut buf, DmaDirection::FromDevice).unwrap();
        let mut b = *b.into_lower().expect_err("refused while mapped");
        b.unmap(m, &mut buf).unwrap();
        let lower = b.into_lower().ok().unwrap();
        assert_eq!(lower.live_regions(), 0);
    }

    #[test]
    fn driver_regions_pass_through() {
        let (mem, mut b) = rig(1);
        let r = b.alloc_zeroed(2).unwrap();
        assert!(!b.in_pool(r.bus().0, 1));
        b.write(&r, PAGE_SIZE - 2, &[4, 5, 6]).unwrap();
        let mut out = [0u8; 3];
        mem.borrow().read(r.bus().0 + PS - 2, &mut out);
        assert_eq!(out, [4, 5, 6]);
        b.read(&r, PAGE_SIZE - 2, &mut out).unwrap();
        assert_eq!(out, [4, 5, 6]);
        assert!(b.region_ptr(&r).is_some());
        b.free(r);
        assert_eq!(b.lower().live_regions(), 1, "only the pool page is left");
    }

    const PS: u64 = PAGE_SIZE as u64;

    #[derive(Clone, Debug)]
    enum Op {
        Map { len: usize, to_device: bool, seed: u8 },
        DeviceWrite { pick: usize, len: usize, seed: u8 },
        Unmap { pick: usize },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1usize..3 * PAGE_SIZE, any::<bool>(), any::<u8>())
                .prop_map(|(len, to_device, seed)| Op::Map { len, to_device, seed }),
            2 => (any::<usize>(), 0usize..3 * PAGE_SIZE, any::<u8>())
                .prop_map(|(pick, len, seed)| Op::DeviceWrite { pick, len, seed }),
            3 => any::<usize>().prop_map(|pick| Op::Unmap { pick }),
        ]
    }

    /// A live mapping and what its buffer must hold after unmap.
    struct Expect {
        mapping: Mapping,
        buffer: Vec<u8>,
        after: Vec<u8>,
    }

    proptest! {
        #[test]
        fn bounce_matches_model(pool in 1usize..8, ops in proptest::collection::vec(op(), 1..60)) {
            let (mem, mut b) = rig(pool);
            let mut free = pool;
            let mut live: Vec<Expect> = Vec::new();
            for o in ops {
                match o {
                    Op::Map { len, to_device, seed } => {
                        let dir = if to_device { DmaDirection::ToDevice } else { DmaDirection::FromDevice };
                        let mut buffer = pattern(len, seed);
                        let need = len.div_ceil(PAGE_SIZE);
                        let r = b.map(&mut buffer, dir);
                        if need > free {
                            prop_assert_eq!(r, Err(DmaError::NoMemory));
                            continue;
                        }
                        let mapping = r.unwrap();
                        free -= need;
                        prop_assert_eq!(mapping.segments().iter().map(|s| s.len).sum::<usize>(), len);
                        for s in mapping.segments() {
                            prop_assert!(b.in_pool(s.bus.0, s.len));
                            // No two live mappings share a pool page.
                            for e in &live {
                                for t in e.mapping.segments() {
                                    prop_assert!(s.bus.0 / PS != t.bus.0 / PS);
                                }
                            }
                        }
                        let seen = device_read(&mem, &mapping);
                        let after = if to_device {
                            prop_assert_eq!(&seen, &buffer);
                            buffer.clone()
                        } else {
                            prop_assert!(seen.iter().all(|&x| x == 0));
                            vec![0; len]
                        };
                        live.push(Expect { mapping, buffer, after });
                    }
                    Op::DeviceWrite { pick, len, seed } => {
                        if live.is_empty() {
                            continue;
                        }
                        let i = pick % live.len();
                        let e = &mut live[i];
                        if e.mapping.direction() != DmaDirection::FromDevice {
                            continue;
                        }
                        let n = len.min(e.after.len());
                        let data = pattern(n, seed);
                        device_write(&mem, &e.mapping, &data);
                        e.after[..n].copy_from_slice(&data);
                    }
                    Op::Unmap { pick } => {
                        if live.is_empty() {
                            continue;
                        }
                        let mut e = live.swap_remove(pick % live.len());
                        free += e.after.len().div_ceil(PAGE_SIZE);
                        prop_assert_eq!(b.unmap(e.mapping, &mut e.buffer), Ok(()));
                        prop_assert_eq!(&e.buffer, &e.after);
                    }
                }
                prop_assert_eq!(b.free_pages(), free);
                prop_assert_eq!(b.live_mappings(), live.len());
                prop_assert_eq!(b.lower().live_mappings(), 0);
                prop_assert_eq!(b.lower().live_regions(), pool);
            }
        }
    }
}
