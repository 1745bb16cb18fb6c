use alloc::collections::{BTreeMap, BTreeSet};
use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use core::marker::PhantomData;
use core::ptr::NonNull;

use crate::error::DmaError;
use crate::hal::{
    BusAddr, DmaBuffer, DmaCpuAccess, DmaDirection, DmaMapper, DmaRegion, DmaSegment, Mapping, PAGE_SIZE,
};

const PS: u64 = PAGE_SIZE as u64;

/// Device-visible memory: allocations by first bus page number. Addresses
/// start above 4 GiB so truncation to 32 bits is caught, and allocations
/// are separated by never-mapped guard pages.
///
/// Each allocation is one contiguous, page-aligned run of `Cell<u8>`
/// pages: the fake device
/// reads and writes it through [`FakeMemory::read`]/[`FakeMemory::write`]
/// while a driver may hold a CPU pointer into it ([`FakeMemory::cpu_ptr`],
/// for pointer-based drivers such as virtio-drivers); interior mutability
/// keeps both views valid, and the run never moves until released.
pub struct FakeMemory {
    runs: BTreeMap<u64, Vec<Page>>,
    next_pfn: u64,
    /// Memory the device reaches that this fake did not allocate (another
    /// domain's granted pages mapped for the device: zero-copy I/O).
    foreign: Option<Rc<dyn ForeignMemory>>,
}

impl core::fmt::Debug for FakeMemory {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FakeMemory").field("runs", &self.runs.len()).field("next_pfn", &self.next_pfn).finish()
    }
}

/// Device-reachable memory outside [`FakeMemory`]'s own allocations, by
/// bus address (a host test wires in the fake grant table's pages mapped
/// with device access). Each call stays within one page. `false`: nothing
/// is reachable there (the device access then panics, as for any
/// unmapped address).
pub trait ForeignMemory {
    fn read(&self, addr: u64, out: &mut [u8]) -> bool;
    fn write(&self, addr: u64, data: &[u8]) -> bool;
}

/// One page of fake memory, aligned like a real one (CPU pointers into a
/// run are page aligned, as virtio-drivers' `Hal` requires).
#[derive(Debug)]
#[repr(C, align(4096))]
struct Page([Cell<u8>; PAGE_SIZE]);

const _: () = assert!(core::mem::size_of::<Page>() == PAGE_SIZE);

impl Page {
    fn filled(fill: u8) -> Page {
        Page(core::array::from_fn(|_| Cell::new(fill)))
    }
}

/// Memory shared by the fake mapper and the fake device.
pub type Memory = Rc<RefCell<FakeMemory>>;

impl FakeMemory {
    pub fn new_shared() -> Memory {
        Rc::new(RefCell::new(FakeMemory { runs: BTreeMap::new(), next_pfn: 0x10_0000, foreign: None }))
    }

    /// Lets the device reach `foreign` memory at bus addresses outside
    /// this fake's allocations.
    pub fn set_foreign(&mut self, foreign: Rc<dyn ForeignMemory>) {
        self.foreign = Some(foreign);
    }

    fn alloc(&mut self, pages: usize, fill: u8) -> u64 {
        let base = self.next_pfn;
        self.runs.insert(base, (0..pages).map(|_| Page::filled(fill)).collect());
        self.next_pfn += pages as u64 + 1; // guard page
        base
    }

    fn release(&mut self, pfn: u64, pages: usize) {
        let run = self.runs.remove(&pfn).expect("fake memory: releasing unmapped page");
        assert_eq!(run.len(), pages, "fake memory: releasing part of an allocation");
    }

    /// Bus page `pfn`.
    fn page(&self, pfn: u64) -> Option<&[Cell<u8>; PAGE_SIZE]> {
        let (&base, run) = self.runs.range(..=pfn).next_back()?;
        run.get(usize::try_from(pfn - base).ok()?).map(|p| &p.0)
    }

    /// True if every byte of `[addr, addr + len)` is mapped.
    pub fn is_mapped(&self, addr: u64, len: usize) -> bool {
        let last = addr + len.max(1) as u64 - 1;
        (addr / PS..=last / PS).all(|p| self.page(p).is_some())
    }

    /// CPU pointer to the byte at bus address `addr`, valid until its
    /// allocation is released.
    pub fn cpu_ptr(&self, addr: u64) -> Option<NonNull<u8>> {
        NonNull::new(self.page(addr / PS)?[(addr % PS) as usize].as_ptr())
    }

    /// Device read. Panics on an unmapped address: the driver handed the
    /// device an address it does not own (or no longer owns).
    pub fn read(&self, addr: u64, out: &mut [u8]) {
        let mut done = 0;
        while done < out.len() {
            let a = addr + done as u64;
            let off = (a % PS) as usize;
            let n = (PAGE_SIZE - off).min(out.len() - done);
            let Some(page) = self.page(a / PS) else {
                let ok = self.foreign.as_ref().is_some_and(|f| f.read(a, &mut out[done..done + n]));
                assert!(ok, "DMA read from unmapped bus address {a:#x}");
                done += n;
                continue;
            };
            for (o, c) in out[done..done + n].iter_mut().zip(&page[off..off + n]) {
                *o = c.get();
            }
            done += n;
        }
    }

    /// Device write. Panics on an unmapped address.
    pub fn write(&mut self, addr: u64, data: &[u8]) {
        let mut done = 0;
        while done < data.len() {
            let a = addr + done as u64;
            let off = (a % PS) as usize;
            let n = (PAGE_SIZE - off).min(data.len() - done);
            let Some(page) = self.page(a / PS) else {
                let ok = self.foreign.as_ref().is_some_and(|f| f.write(a, &data[done..done + n]));
                assert!(ok, "DMA write to unmapped bus address {a:#x}");
                done += n;
                continue;
            };
            for (c, d) in page[off..off + n].iter().zip(&data[done..done + n]) {
                c.set(*d);
            }
            done += n;
        }
    }
}

#[derive(Debug)]
struct MapRecord {
    /// (pfn, pages) runs backing the mapping.
    runs: Vec<(u64, usize)>,
    offset: usize,
    len: usize,
    direction: DmaDirection,
}

/// A [`DmaMapper`] over [`FakeMemory`] that behaves like a bounce-buffering
/// IOMMU: `map` copies the buffer into fresh device pages (starting at
/// `map_offset` within the first page; page by page at scattered addresses
/// if `scatter`), `unmap` copies device writes back and removes the pages.
/// A driver that forgets to unmap never sees read data; one that unmaps
/// twice, frees twice or uses a freed region panics; a device access after
/// unmap panics.
///
/// Caller buffers are `B` (`Vec<u8>` unless a test needs another buffer
/// type, e.g. blkback's grant-copy frames): any [`DmaBuffer`] whose bytes
/// the CPU can see.
#[derive(Debug)]
pub struct FakeDma<B = Vec<u8>> {
    mem: Memory,
    regions: BTreeMap<u64, (u64, usize)>,
    maps: BTreeMap<u64, MapRecord>,
    retired: BTreeSet<u64>,
    /// Mappings the driver abandoned: their device memory is never released.
    abandoned: Vec<MapRecord>,
    next_id: u64,
    /// In-page offset of mapped buffers (dword multiple).
    pub map_offset: usize,
    /// Back each page of a mapping with a separate, non-adjacent page.
    pub scatter: bool,
    /// Refuse allocations beyond this many live regions.
    pub region_limit: Option<usize>,
    _buffer: PhantomData<fn(B) -> B>,
}

impl FakeDma<Vec<u8>> {
    pub fn new(mem: Memory) -> Self {
        FakeDma::for_buffers(mem)
    }
}

impl<B> FakeDma<B> {
    /// A mapper of caller buffers of type `B`.
    pub fn for_buffers(mem: Memory) -> Self {
        FakeDma {
            mem,
            regions: BTreeMap::new(),
            maps: BTreeMap::new(),
            retired: BTreeSet::new(),
            abandoned: Vec::new(),
            next_id: 1,
            map_offset: 0,
            scatter: false,
            region_limit: None,
            _buffer: PhantomData,
        }
    }
    pub fn memory(&self) -> Memory {
        self.mem.clone()
    }
    /// Buffers currently mapped (leak check).
    pub fn live_mappings(&self) -> usize {
        self.maps.len()
    }
    /// Mappings abandoned (device memory kept out of use forever).
    pub fn abandoned(&self) -> usize {
        self.abandoned.len()
    }
    /// Driver-owned regions currently allocated.
    pub fn live_regions(&self) -> usize {
        self.regions.len()
    }
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
    fn region(&self, r: &DmaRegion) -> (u64, usize) {
        match self.regions.get(&r.id()) {
            Some(&(pfn, pages)) => {
                assert_eq!(BusAddr(pfn * PS), r.bus(), "forged DmaRegion");
                (pfn, pages)
            }
            None => panic!("use of freed or foreign DmaRegion {}", r.id()),
        }
    }
}

impl<B: DmaBuffer + AsRef<[u8]> + AsMut<[u8]>> DmaMapper for FakeDma<B> {
    type Buffer = B;

    #[inline(never)]
    fn alloc_zeroed(&mut self, pages: usize) -> Result<DmaRegion, DmaError> {
        if pages == 0 {
            return Err(DmaError::OutOfBounds);
        }
        if self.region_limit.is_some_and(|l| self.regions.len() >= l) {
            return Err(DmaError::NoMemory);
        }
        let pfn = self.mem.borrow_mut().alloc(pages, 0);
        let id = self.id();
        self.regions.insert(id, (pfn, pages));
        Ok(DmaRegion::new(id, BusAddr(pfn * PS), pages))
    }

    #[inline(never)]
    fn free(&mut self, region: DmaRegion) {
        let (pfn, pages) = self.region(&region);
        self.regions.remove(&region.id());
        self.mem.borrow_mut().release(pfn, pages);
    }

    #[inline(never)]
    fn read(&self, region: &DmaRegion, offset: usize, out: &mut [u8]) -> Result<(), DmaError> {
        let (pfn, pages) = self.region(region);
        if offset.checked_add(out.len()).is_none_or(|end| end > pages * PAGE_SIZE) {
            return Err(DmaError::OutOfBounds);
        }
        self.mem.borrow().read(pfn * PS + offset as u64, out);
        Ok(())
    }

    #[inline(never)]
    fn write(&mut self, region: &DmaRegion, offset: usize, data: &[u8]) -> Result<(), DmaError> {
        let (pfn, pages) = self.region(region);
        if offset.checked_add(data.len()).is_none_or(|end| end > pages * PAGE_SIZE) {
            return Err(DmaError::OutOfBounds);
        }
        self.mem.borrow_mut().write(pfn * PS + offset as u64, data);
        Ok(())
    }

    #[inline(never)]
    fn map(&mut self, buffer: &mut B, direction: DmaDirection) -> Result<Mapping, DmaError> {
        if DmaBuffer::is_empty(buffer) {
            return Err(DmaError::MapFailed);
        }
        assert!(self.map_offset.is_multiple_of(4) && self.map_offset < PAGE_SIZE, "bad fake map_offset");
        let off = self.map_offset;
        let len = DmaBuffer::len(buffer);
        let pages = (off + len).div_ceil(PAGE_SIZE);
        // Device-bound data is copied in; device-written memory starts as
        // poison so a read that transfers nothing is noticed.
        let fill = if direction == DmaDirection::FromDevice { 0xA5 } else { 0 };
        let mut mem = self.mem.borrow_mut();
        let runs: Vec<(u64, usize)> = if self.scatter {
            (0..pages).map(|_| (mem.alloc(1, fill), 1)).collect()
        } else {
            vec![(mem.alloc(pages, fill), pages)]
        };
        let mut segments = Vec::new();
        let mut done = 0usize;
        for &(pfn, n) in &runs {
            let start = if done == 0 { off } else { 0 };
            let seg_len = (n * PAGE_SIZE - start).min(len - done);
            let bus = pfn * PS + start as u64;
            if direction == DmaDirection::ToDevice {
                mem.write(bus, &buffer.as_ref()[done..done + seg_len]);
            }
            segments.push(DmaSegment { bus: BusAddr(bus), len: seg_len });
            done += seg_len;
        }
        drop(mem);
        let id = self.id();
        self.maps.insert(id, MapRecord { runs, offset: off, len, direction });
        Ok(Mapping::new(id, direction, segments))
    }

    #[inline(never)]
    fn unmap(&mut self, mapping: Mapping, buffer: &mut B) -> Result<(), DmaError> {
        let Some(rec) = self.maps.remove(&mapping.id()) else {
            if self.retired.contains(&mapping.id()) {
                panic!("double unmap of mapping {}", mapping.id());
            }
            panic!("unmap of unknown mapping {}", mapping.id());
        };
        assert_eq!(rec.len, DmaBuffer::len(buffer), "unmap with a different buffer than was mapped");
        assert_eq!(rec.direction, mapping.direction());
        let mut mem = self.mem.borrow_mut();
        if rec.direction == DmaDirection::FromDevice {
            let mut done = 0usize;
            for &(pfn, n) in &rec.runs {
                let start = if done == 0 { rec.offset } else { 0 };
                let seg_len = (n * PAGE_SIZE - start).min(rec.len - done);
                mem.read(pfn * PS + start as u64, &mut buffer.as_mut()[done..done + seg_len]);
                done += seg_len;
            }
        }
        for &(pfn, n) in &rec.runs {
            mem.release(pfn, n);
        }
        self.retired.insert(mapping.id());
        Ok(())
    }

    #[inline(never)]
    fn abandon(&mut self, mapping: Mapping, buffer: &mut B) {
        let Some(rec) = self.maps.remove(&mapping.id()) else {
            panic!("abandon of unknown or retired mapping {}", mapping.id());
        };
        assert_eq!(rec.len, DmaBuffer::len(buffer), "abandon with a different buffer than was mapped");
        // The device memory stays allocated (never reused); the caller's
        // buffer gets fresh zeroes, as a mapper without an IOMMU must do.
        buffer.as_mut().fill(0);
        self.retired.insert(mapping.id());
        self.abandoned.push(rec);
    }
}

impl<B: DmaBuffer + AsRef<[u8]> + AsMut<[u8]>> DmaCpuAccess for FakeDma<B> {
    fn region_ptr(&self, region: &DmaRegion) -> Option<NonNull<u8>> {
        let &(pfn, _) = self.regions.get(&region.id())?;
        if BusAddr(pfn * PS) != region.bus() {
            return None;
        }
        self.mem.borrow().cpu_ptr(pfn * PS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (Memory, FakeDma) {
        let mem = FakeMemory::new_shared();
        (mem.clone(), FakeDma::new(mem))
    }

    #[test]
    fn copy_on_map_and_back_on_unmap() {
        let (mem, mut dma) = setup();
        dma.map_offset = 0x100;
        let mut buf = vec![1u8; 6000];
        let m = dma.map(&mut buf, DmaDirection::FromDevice).unwrap();
        assert_eq!(m.segments().len(), 1);
        let seg = m.segments()[0];
        assert_eq!(seg.bus.page_offset(PAGE_SIZE), 0x100);
        assert!(seg.bus.0 >= 1 << 32, "bus addresses above 4 GiB");
        mem.borrow_mut().write(seg.bus.0, &[9; 6000]);
        assert_eq!(buf, vec![1; 6000], "device writes land only at unmap");
        dma.unmap(m, &mut buf).unwrap();
        assert_eq!(buf, vec![9; 6000]);
        assert!(!mem.borrow().is_mapped(seg.bus.0, 1), "pages gone after unmap");
        assert_eq!(dma.live_mappings(), 0);
    }

    #[test]
    fn scatter_gives_page_sized_segments() {
        let (_, mut dma) = setup();
        dma.scatter = true;
        dma.map_offset = 0x800;
        let mut buf = vec![3u8; 3 * PAGE_SIZE];
        let m = dma.map(&mut buf, DmaDirection::ToDevice).unwrap();
        let lens: Vec<usize> = m.segments().iter().map(|s| s.len).collect();
        assert_eq!(lens, vec![0x800, PAGE_SIZE, PAGE_SIZE, 0x800]);
        assert!(m.segments().windows(2).all(|w| w[0].bus.0 + w[0].len as u64 != w[1].bus.0), "not adjacent");
        dma.unmap(m, &mut buf).unwrap();
    }

    #[test]
    #[should_panic(expected = "double unmap")]
    fn double_unmap_panics() {
        let (_, mut dma) = setup();
        let mut buf = vec![0u8; 512];
        let m = dma.map(&mut buf, DmaDirection::ToDevice).unwrap();
        let forged = Mapping::new(m.id(), m.direction(), m.segments().to_vec());
        dma.unmap(m, &mut buf).unwrap();
        let _ = dma.unmap(forged, &mut buf);
    }

    #[test]
    #[should_panic(expected = "unmapped bus address")]
    fn device_access_after_unmap_panics() {
        let (mem, mut dma) = setup();
        let mut buf = vec![0u8; 512];
        let m = dma.map(&mut buf, DmaDirection::ToDevice).unwrap();
        let bus = m.segments()[0].bus.0;
        dma.unmap(m, &mut buf).unwrap();
        let mut out = [0u8; 4];
        mem.borrow().read(bus, &mut out);
    }

    #[test]
    #[should_panic(expected = "freed")]
    fn use_after_free_panics() {
        let (_, mut dma) = setup();
        let r = dma.alloc_zeroed(1).unwrap();
        let forged = DmaRegion::new(r.id(), r.bus(), r.pages());
        dma.free(r);
        let mut b = [0u8; 4];
        let _ = dma.read(&forged, 0, &mut b);
    }

    #[test]
    fn region_cpu_pointer_sees_the_device_view() {
        let (mem, mut dma) = setup();
        let r = dma.alloc_zeroed(2).unwrap();
        let p = dma.region_ptr(&r).unwrap();
        let bus = r.bus().0;
        assert_eq!(p.as_ptr() as usize % PAGE_SIZE, 0, "page aligned");
        // The pointer and the device address name the same bytes, across
        // the page boundary (the allocation is one contiguous run).
        assert_eq!(mem.borrow().cpu_ptr(r.bus().0 + PS + 3), NonNull::new(p.as_ptr().wrapping_add(PAGE_SIZE + 3)));
        mem.borrow_mut().write(r.bus().0 + PS - 1, &[0x5a, 0xa5]);
        let mut b = [0u8; 2];
        dma.read(&r, PAGE_SIZE - 1, &mut b).unwrap();
        assert_eq!(b, [0x5a, 0xa5]);
        let forged = DmaRegion::new(r.id(), BusAddr(r.bus().0 + PS), 1);
        assert_eq!(dma.region_ptr(&forged), None);
        dma.free(r);
        assert_eq!(mem.borrow().cpu_ptr(bus), None, "gone with the region");
    }

    #[test]
    fn regions_are_zeroed_and_bounded() {
        let (_, mut dma) = setup();
        let r = dma.alloc_zeroed(2).unwrap();
        let mut b = [1u8; 16];
        dma.read(&r, PAGE_SIZE - 8, &mut b).unwrap();
        assert_eq!(b, [0; 16]);
        assert_eq!(dma.write(&r, 2 * PAGE_SIZE - 8, &[0; 16]), Err(DmaError::OutOfBounds));
        dma.region_limit = Some(1);
        assert_eq!(dma.alloc_zeroed(1), Err(DmaError::NoMemory));
        dma.free(r);
        assert_eq!(dma.live_regions(), 0);
    }
}
