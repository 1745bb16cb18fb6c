//! Device access for drivers: MMIO registers, DMA memory and buffer
//! mapping, PCI configuration through ports, and the clock — the unsafe
//! implementations of the `drivers::hal` / `drivers::pci` contracts.

use super::iomap::{self, Scope};
use super::pv::PvMm;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::alloc::Layout;
use core::ptr::NonNull;
use core::sync::atomic::{compiler_fence, fence, Ordering};
use drivers::hal::{
    BusAddr, Clock, DmaBuffer, DmaCpuAccess, DmaDirection, DmaMapper, DmaRegion, DmaSegment, Mapping, Nanos,
    RegisterIo, PAGE_SIZE,
};
use drivers::pci::PciDevice;
use drivers::DmaError;
use xen::gnttab::LocalFrames;
use xen::types::Pfn;

/// A BAR's registers mapped uncached at `base`.
pub struct Mmio {
    base: usize,
    len: usize,
}

impl Mmio {
    /// Registers at virtual address `base`, `len` bytes.
    ///
    /// # Safety
    /// `[base, base + len)` must map the device's registers (uncached) for
    /// the lifetime of the value, and nothing else may own them.
    pub unsafe fn new(base: u64, len: usize) -> Self {
        Self { base: base as usize, len }
    }
    /// Virtual base and length of the window.
    pub(crate) fn window(&self) -> (usize, usize) {
        (self.base, self.len)
    }
    fn at(&self, off: usize, size: usize) -> usize {
        assert!(
            off.is_multiple_of(size) && off + size <= self.len,
            "MMIO access {off:#x}+{size} outside BAR of {:#x}",
            self.len
        );
        self.base + off
    }
}

impl RegisterIo for Mmio {
    fn size(&self) -> usize {
        self.len
    }
    fn read32(&mut self, off: usize) -> u32 {
        let a = self.at(off, 4);
        // SAFETY: inside the mapped BAR, aligned (checked).
        let v = unsafe { core::ptr::read_volatile(a as *const u32) };
        // Acquire: DMA memory read after a register (e.g. CSTS) is not hoisted.
        fence(Ordering::Acquire);
        v
    }
    fn write32(&mut self, off: usize, v: u32) {
        let a = self.at(off, 4);
        // Release: queue entries written before a doorbell are visible to
        // the device first (x86 keeps stores in order; this stops the compiler).
        fence(Ordering::Release);
        // SAFETY: inside the mapped BAR, aligned (checked).
        unsafe { core::ptr::write_volatile(a as *mut u32, v) }
    }
    fn read64(&mut self, off: usize) -> u64 {
        let lo = self.read32(off) as u64;
        let hi = self.read32(off + 4) as u64;
        lo | hi << 32
    }
    fn write64(&mut self, off: usize, v: u64) {
        self.write32(off, v as u32);
        self.write32(off + 4, (v >> 32) as u32);
    }
}

/// The runtime clock for drivers.
#[derive(Clone, Copy, Default)]
pub struct HalClock;
impl Clock for HalClock {
    fn now(&self) -> Nanos {
        super::time::now()
    }
}

/// A page-aligned heap buffer a device can read or write.
pub struct DmaBuf {
    ptr: NonNull<u8>,
    len: usize,
    layout: Layout,
}

// SAFETY: DmaBuf owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for DmaBuf {}

impl DmaBuf {
    /// A zeroed buffer of `len` bytes (at least 1), aligned to 4 KiB.
    pub fn zeroed(len: usize) -> Option<Self> {
        let size = len.max(1).div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let layout = Layout::from_size_align(size, PAGE_SIZE).ok()?;
        // SAFETY: non-zero size.
        let p = unsafe { alloc::alloc::alloc_zeroed(layout) };
        NonNull::new(p).map(|ptr| Self { ptr, len: len.max(1), layout })
    }
    /// A buffer of no bytes (no allocation).
    pub fn empty() -> Self {
        Self { ptr: NonNull::dangling(), len: 0, layout: Layout::new::<()>() }
    }
    fn addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        if self.layout.size() == 0 {
            return; // `empty`: nothing was allocated
        }
        // SAFETY: allocated in `zeroed` with this layout.
        unsafe { alloc::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

impl AsRef<[u8]> for DmaBuf {
    fn as_ref(&self) -> &[u8] {
        compiler_fence(Ordering::SeqCst);
        // SAFETY: `len` initialised bytes owned by us.
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}
impl AsMut<[u8]> for DmaBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        compiler_fence(Ordering::SeqCst);
        // SAFETY: `len` initialised bytes owned exclusively by us.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}
impl DmaBuffer for DmaBuf {
    fn len(&self) -> usize {
        self.len
    }
}

/// A `DmaBuf` lives on the heap, which both boot paths place where
/// `va = frame << 12`: on PV inside the 1:1 map of our pseudo-physical
/// memory (`PvMm::init`), on PVH in identity-mapped RAM. The frame is thus
/// the PFN (GFN on PVH); `XenGrants::copy_batch` turns it into the MFN a PV
/// domain's `GNTTABOP_copy` wants, as `HalDma` does for bus addresses.
impl LocalFrames for DmaBuf {
    fn local_frame(&self, off: usize) -> Option<(Pfn, u16)> {
        if off >= self.len {
            return None;
        }
        let va = self.addr().checked_add(off as u64)?;
        Some((Pfn(va / PAGE_SIZE as u64), (va % PAGE_SIZE as u64) as u16))
    }
    fn sync_for_copy(&mut self) {
        // The hypercall reads the buffer behind the compiler's back.
        compiler_fence(Ordering::SeqCst);
    }
    fn sync_for_cpu(&mut self) {
        // ... and wrote it: no load may be served from before the copy.
        compiler_fence(Ordering::SeqCst);
    }
}

/// How CPU addresses become bus addresses.
#[derive(Clone, Copy)]
pub enum Translation {
    /// PVH / bare metal without an IOMMU context: bus = physical = virtual.
    Identity,
    /// Xen PV without PV-IOMMU: Xen maps our pages 1:1 by machine frame in
    /// the device's IOMMU tables, so bus = MFN << 12.
    PvMachineFrames(&'static spin::Mutex<PvMm>),
    /// Xen PV with PV-IOMMU: the device has its own context `ctx`, which
    /// holds only what this mapper maps ([`crate::iomap`]) at IOVA = MFN <<
    /// 12, so bus addresses are those of `PvMachineFrames`.
    PvIommu(&'static spin::Mutex<PvMm>, u16),
}

/// The machine frames `segs` touch, in order (bus address = MFN << 12).
fn frames(segs: &[DmaSegment]) -> impl Iterator<Item = u64> + '_ {
    segs.iter().flat_map(|s| {
        let first = s.bus.0 / PAGE_SIZE as u64;
        let last = (s.bus.0 + s.len.max(1) as u64 - 1) / PAGE_SIZE as u64;
        first..=last
    })
}

/// DMA memory and mappings on heap pages.
pub struct HalDma {
    tr: Translation,
    regions: BTreeMap<u64, (NonNull<u8>, Layout)>,
    live: BTreeMap<u64, ()>,
    next_id: u64,
    /// Buffers a device that did not stop may still write: never freed.
    abandoned: Vec<DmaBuf>,
}

impl HalDma {
    pub fn new(tr: Translation) -> Self {
        Self { tr, regions: BTreeMap::new(), live: BTreeMap::new(), next_id: 1, abandoned: Vec::new() }
    }
    /// Describes the strategy in use, for the log.
    pub fn describe(&self) -> &'static str {
        match self.tr {
            Translation::Identity => "identity (bus address = physical address)",
            Translation::PvMachineFrames(_) => {
                "PV machine frames (bus address = MFN, Xen's 1:1 IOMMU map of a PV domain)"
            }
            Translation::PvIommu(..) => "PV-IOMMU context of its own (bus address = MFN, mapped on use)",
        }
    }
    /// The device's own context, if it has one.
    fn scope(&self) -> Option<Scope> {
        match self.tr {
            Translation::PvIommu(_, ctx) => Some(Scope::Context(ctx)),
            _ => None,
        }
    }
    /// Puts the pages of `segs` into the device's context (all or none).
    fn map_segments(&self, segs: &[DmaSegment], writable: bool) -> Result<(), DmaError> {
        let Some(scope) = self.scope() else { return Ok(()) };
        for (done, mfn) in frames(segs).enumerate() {
            if !iomap::map(scope, mfn, writable) {
                for m in frames(segs).take(done) {
                    iomap::unmap(scope, m);
                }
                return Err(DmaError::MapFailed);
            }
        }
        Ok(())
    }
    /// Takes the pages of `segs` back out of the device's context.
    fn unmap_segments(&self, segs: &[DmaSegment]) {
        let Some(scope) = self.scope() else { return };
        for mfn in frames(segs) {
            iomap::unmap(scope, mfn);
        }
    }
    fn bus(&self, va: u64) -> Result<u64, DmaError> {
        match self.tr {
            Translation::Identity => Ok(va),
            Translation::PvMachineFrames(mm) | Translation::PvIommu(mm, _) => {
                let mfn = mm.lock().pfn_to_mfn(Pfn(va / 4096)).map_err(|_| DmaError::MapFailed)?;
                Ok(mfn.0 * 4096 + va % 4096)
            }
        }
    }
    fn segments(&self, va: u64, len: usize) -> Result<Vec<DmaSegment>, DmaError> {
        let mut segs: Vec<DmaSegment> = Vec::new();
        let mut off = 0usize;
        while off < len {
            let cur = va + off as u64;
            let chunk = (PAGE_SIZE - (cur as usize % PAGE_SIZE)).min(len - off);
            let bus = self.bus(cur)?;
            match segs.last_mut() {
                Some(s) if s.bus.0 + s.len as u64 == bus => s.len += chunk,
                _ => segs.push(DmaSegment { bus: BusAddr(bus), len: chunk }),
            }
            off += chunk;
        }
        Ok(segs)
    }
    fn region_ptr(&self, r: &DmaRegion, off: usize, n: usize) -> Result<*mut u8, DmaError> {
        let (p, _) = self.regions.get(&r.id()).ok_or(DmaError::OutOfBounds)?;
        match off.checked_add(n) {
            Some(end) if end <= r.len() => Ok(p.as_ptr().wrapping_add(off)),
            _ => Err(DmaError::OutOfBounds),
        }
    }
}

impl DmaMapper for HalDma {
    type Buffer = DmaBuf;

    fn alloc_zeroed(&mut self, pages: usize) -> Result<DmaRegion, DmaError> {
        let layout = Layout::from_size_align(pages.max(1) * PAGE_SIZE, PAGE_SIZE).map_err(|_| DmaError::NoMemory)?;
        // SAFETY: non-zero size.
        let p = NonNull::new(unsafe { alloc::alloc::alloc_zeroed(layout) }).ok_or(DmaError::NoMemory)?;
        let segs = self.segments(p.as_ptr() as u64, layout.size());
        match segs {
            Ok(s) if s.len() == 1 && self.map_segments(&s, true).is_ok() => {
                let id = self.next_id;
                self.next_id += 1;
                self.regions.insert(id, (p, layout));
                Ok(DmaRegion::new(id, s[0].bus, pages.max(1)))
            }
            _ => {
                // Not contiguous on the bus (PV frames are scattered), or
                // the device's context would not take it.
                // SAFETY: just allocated with this layout.
                unsafe { alloc::alloc::dealloc(p.as_ptr(), layout) };
                Err(DmaError::NoMemory)
            }
        }
    }
    fn free(&mut self, r: DmaRegion) {
        if let Some((p, layout)) = self.regions.remove(&r.id()) {
            // Out of the device's reach before the memory is reused.
            self.unmap_segments(&[DmaSegment { bus: r.bus(), len: layout.size() }]);
            // SAFETY: allocated in alloc_zeroed with this layout; removed once.
            unsafe { alloc::alloc::dealloc(p.as_ptr(), layout) };
        }
    }
    fn read(&self, r: &DmaRegion, off: usize, out: &mut [u8]) -> Result<(), DmaError> {
        let p = self.region_ptr(r, off, out.len())?;
        // Acquire: see the device's writes that preceded what we observed.
        fence(Ordering::Acquire);
        // SAFETY: inside the region (checked); the device may write other
        // bytes concurrently, we copy out without creating references.
        unsafe { core::ptr::copy_nonoverlapping(p as *const u8, out.as_mut_ptr(), out.len()) };
        compiler_fence(Ordering::SeqCst);
        Ok(())
    }
    fn write(&mut self, r: &DmaRegion, off: usize, data: &[u8]) -> Result<(), DmaError> {
        let p = self.region_ptr(r, off, data.len())?;
        compiler_fence(Ordering::SeqCst);
        // SAFETY: inside the region (checked).
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
        fence(Ordering::Release);
        Ok(())
    }
    fn map(&mut self, b: &mut DmaBuf, dir: DmaDirection) -> Result<Mapping, DmaError> {
        let segs = self.segments(b.addr(), b.len)?;
        self.map_segments(&segs, dir == DmaDirection::FromDevice)?;
        let id = self.next_id;
        self.next_id += 1;
        self.live.insert(id, ());
        fence(Ordering::Release);
        Ok(Mapping::new(id, dir, segs))
    }
    fn unmap(&mut self, m: Mapping, _b: &mut DmaBuf) -> Result<(), DmaError> {
        if self.live.remove(&m.id()).is_none() {
            return Err(DmaError::UnmapFailed);
        }
        self.unmap_segments(m.segments());
        fence(Ordering::Acquire);
        Ok(())
    }
    fn abandon(&mut self, m: Mapping, b: &mut DmaBuf) {
        // Machine frames: access cannot be revoked. The device keeps the old
        // memory forever; the caller gets fresh zeroed memory (or an empty
        // buffer when the heap is out: the completion is an error anyway).
        // With a context of its own the device loses the pages now; the
        // memory is still kept out of use (a write may be in flight).
        if self.live.remove(&m.id()).is_some() {
            self.unmap_segments(m.segments());
        }
        let fresh = DmaBuf::zeroed(b.len).unwrap_or_else(DmaBuf::empty);
        self.abandoned.push(core::mem::replace(b, fresh));
    }
}

/// Regions are page-aligned heap allocations owned by the mapper until
/// `free`; no reference to them is kept (read/write copy by pointer).
impl DmaCpuAccess for HalDma {
    fn region_ptr(&self, r: &DmaRegion) -> Option<NonNull<u8>> {
        let (p, layout) = self.regions.get(&r.id())?;
        (r.len() <= layout.size()).then_some(*p)
    }
}

/// A PCI function's configuration space through ports 0xCF8/0xCFC (PVH).
pub struct PortPci {
    bus: u8,
    dev: u8,
    func: u8,
}

impl PortPci {
    pub fn new(bus: u8, dev: u8, func: u8) -> Self {
        Self { bus, dev, func }
    }
    fn select(&self, off: u16) {
        let a = 0x8000_0000u32
            | (self.bus as u32) << 16
            | (self.dev as u32) << 11
            | (self.func as u32) << 8
            | (off as u32 & 0xFC);
        super::pvh::outl(0xCF8, a);
    }
}

impl PciDevice for PortPci {
    fn config_read8(&mut self, off: u16) -> u8 {
        (self.config_read32(off & !3) >> ((off & 3) * 8)) as u8
    }
    fn config_read16(&mut self, off: u16) -> u16 {
        (self.config_read32(off & !3) >> ((off & 2) * 8)) as u16
    }
    fn config_read32(&mut self, off: u16) -> u32 {
        self.select(off);
        super::pvh::inl(0xCFC)
    }
    fn config_write8(&mut self, off: u16, v: u8) {
        let sh = (off & 3) * 8;
        let old = self.config_read32(off & !3);
        self.config_write32(off & !3, (old & !(0xFF << sh)) | (v as u32) << sh);
    }
    fn config_write16(&mut self, off: u16, v: u16) {
        let sh = (off & 2) * 8;
        let old = self.config_read32(off & !3);
        self.config_write32(off & !3, (old & !(0xFFFF << sh)) | (v as u32) << sh);
    }
    fn config_write32(&mut self, off: u16, v: u32) {
        self.select(off);
        super::pvh::outl(0xCFC, v);
    }
}

/// Registers of a BAR below 4 GiB when booted via PVH, where the boot code
/// identity-maps the low 4 GiB. Panics on any other platform or range.
pub fn mmio_identity(base: u64, len: usize) -> Mmio {
    assert!(super::platform() == super::Platform::Pvh, "identity MMIO only exists on PVH");
    assert!(base.checked_add(len as u64).is_some_and(|e| e <= 1 << 32), "BAR outside the identity map");
    // SAFETY: on PVH the low 4 GiB are identity-mapped (boot.rs); the caller
    // is the BAR's only driver.
    unsafe { Mmio::new(base, len) }
}

/// Maps a device BAR (machine address `maddr`, `size` bytes) on Xen PV and
/// returns its registers.
pub fn pv_map_bar(mm: &spin::Mutex<PvMm>, maddr: u64, size: u64) -> Result<Mmio, super::pv::MmError> {
    let va = mm.lock().map_mmio(maddr, size)?;
    // SAFETY: map_mmio mapped [va, va + size) uncached to the BAR and the
    // range is never reused (dynamic window bump allocation).
    Ok(unsafe { Mmio::new(va, size as usize) })
}
