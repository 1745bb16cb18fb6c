//! Hardware contracts (STYLE.md §2). Drivers are generic over these; the
//! unikernel implements them in its unsafe `hal` layer, host tests use the
//! fakes in `crate::fake`, which enforce the rules written here.

use alloc::vec::Vec;
use core::ptr::NonNull;

use crate::error::DmaError;

/// Nanoseconds of monotonic time (the workspace's one time type).
pub use xen_types::Nanos;

/// Size of a host page and of the NVMe memory page we program (CC.MPS = 0).
pub const PAGE_SIZE: usize = 4096;

/// An address as the device sees it (after any IOMMU), not a CPU address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct BusAddr(pub u64);

impl BusAddr {
    /// Offset within a page of `page_size` bytes (a power of two).
    pub fn page_offset(self, page_size: usize) -> usize {
        (self.0 & (page_size as u64 - 1)) as usize
    }
    /// This address rounded down to its page.
    pub fn page_base(self, page_size: usize) -> BusAddr {
        BusAddr(self.0 & !(page_size as u64 - 1))
    }
    /// `self + n`, or `None` on overflow.
    pub fn checked_add(self, n: u64) -> Option<BusAddr> {
        self.0.checked_add(n).map(BusAddr)
    }
}

/// Access to a device's memory-mapped registers (BAR0 for NVMe), by byte
/// offset. Implementations do single, naturally aligned, volatile accesses;
/// they never hand out references to MMIO.
///
/// Ordering contract: a register write is ordered after every earlier
/// [`DmaMapper::write`] (the real implementation issues a write barrier
/// before doorbell writes), so a doorbell never overtakes the entry it
/// announces.
pub trait RegisterIo {
    /// Bytes of the register window (BAR0's size): drivers check every
    /// device-derived offset (doorbells) against it before using it.
    fn size(&self) -> usize;
    fn read32(&mut self, offset: usize) -> u32;
    fn write32(&mut self, offset: usize, value: u32);
    fn read64(&mut self, offset: usize) -> u64;
    fn write64(&mut self, offset: usize, value: u64);
}

/// Monotonic time source, used only for bounded spin-waits in blocking
/// sequences (bring-up, reset, shutdown). The I/O path takes `now` as an
/// argument instead.
pub trait Clock {
    fn now(&self) -> Nanos;
}

/// Direction of a buffer mapping, from the device's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaDirection {
    /// The device reads the buffer (disk write).
    ToDevice,
    /// The device writes the buffer (disk read).
    FromDevice,
}

/// A zeroed, physically contiguous, page-aligned DMA allocation owned by
/// the driver (queues, PRP lists, identify data). Not `Clone`: freeing
/// consumes it.
#[derive(Debug, PartialEq, Eq)]
pub struct DmaRegion {
    id: u64,
    bus: BusAddr,
    pages: usize,
}

impl DmaRegion {
    /// For [`DmaMapper`] implementations only.
    pub fn new(id: u64, bus: BusAddr, pages: usize) -> Self {
        Self { id, bus, pages }
    }
    /// The implementation's handle.
    pub fn id(&self) -> u64 {
        self.id
    }
    /// Device address of the first byte (page aligned).
    pub fn bus(&self) -> BusAddr {
        self.bus
    }
    /// Length in pages.
    pub fn pages(&self) -> usize {
        self.pages
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.pages * PAGE_SIZE
    }
    /// Never true: regions have at least one page.
    pub fn is_empty(&self) -> bool {
        self.pages == 0
    }
}

/// One device-visible piece of a mapped buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaSegment {
    pub bus: BusAddr,
    pub len: usize,
}

/// A live mapping of a caller buffer. Not `Clone`: [`DmaMapper::unmap`]
/// consumes it, and an implementation may panic if it sees one twice.
#[derive(Debug, PartialEq, Eq)]
pub struct Mapping {
    id: u64,
    direction: DmaDirection,
    segments: Vec<DmaSegment>,
}

impl Mapping {
    /// For [`DmaMapper`] implementations only.
    pub fn new(id: u64, direction: DmaDirection, segments: Vec<DmaSegment>) -> Self {
        Self { id, direction, segments }
    }
    pub fn id(&self) -> u64 {
        self.id
    }
    pub fn direction(&self) -> DmaDirection {
        self.direction
    }
    /// In buffer order; their lengths add up to the buffer length.
    pub fn segments(&self) -> &[DmaSegment] {
        &self.segments
    }
}

/// A caller buffer that can be mapped for DMA.
pub trait DmaBuffer {
    /// Length in bytes.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl DmaBuffer for Vec<u8> {
    fn len(&self) -> usize {
        Vec::len(self)
    }
}

/// DMA memory and buffer mapping.
///
/// Contract (enforced by `fake::FakeDma`):
/// - `alloc_zeroed` returns zeroed, contiguous, page-aligned memory.
/// - Driver-owned regions are read and written only through `read`/`write`
///   (shared memory is copied, never referenced — STYLE.md §5). `read` has
///   acquire semantics with respect to device writes.
/// - A buffer is device-visible only between `map` and `unmap`. Data the
///   device wrote (`FromDevice`) is guaranteed in the buffer only after
///   `unmap` (an implementation may bounce/copy). A mapping is unmapped
///   exactly once, with the buffer it was made from.
pub trait DmaMapper {
    /// The caller buffer type (guest pages under a grant, a bounce buffer,
    /// a `Vec<u8>` on the host...).
    type Buffer: DmaBuffer;

    fn alloc_zeroed(&mut self, pages: usize) -> Result<DmaRegion, DmaError>;
    fn free(&mut self, region: DmaRegion);
    fn read(&self, region: &DmaRegion, offset: usize, out: &mut [u8]) -> Result<(), DmaError>;
    fn write(&mut self, region: &DmaRegion, offset: usize, data: &[u8]) -> Result<(), DmaError>;
    fn map(&mut self, buffer: &mut Self::Buffer, direction: DmaDirection) -> Result<Mapping, DmaError>;
    fn unmap(&mut self, mapping: Mapping, buffer: &mut Self::Buffer) -> Result<(), DmaError>;
    /// Ends a mapping the device may still use (a reset that did not stop
    /// the controller). Afterwards nothing the device does can reach
    /// `buffer`: a mapper that can revoke access (an IOMMU) does so; one
    /// that cannot swaps fresh zeroed memory into `buffer` and keeps the old
    /// memory out of use forever. Nothing the device wrote is copied back.
    fn abandon(&mut self, mapping: Mapping, buffer: &mut Self::Buffer);
}

/// CPU access to driver regions by pointer, for drivers that read and write
/// their queues in place (virtio-drivers' `Hal::dma_alloc` returns a
/// pointer). Drivers here use [`DmaMapper::read`]/[`DmaMapper::write`]
/// instead; nothing in this crate dereferences the pointer.
///
/// Contract (relied on by unsafe consumers, who must say so in their own
/// `unsafe` contracts): the pointer is the first byte of `region`'s memory,
/// valid for reads and writes of `region.len()` bytes and page aligned
/// until [`DmaMapper::free`], and the implementation hands out no Rust
/// reference to that memory meanwhile. `None` for a region that is not
/// (or no longer) this mapper's.
pub trait DmaCpuAccess: DmaMapper {
    fn region_ptr(&self, region: &DmaRegion) -> Option<NonNull<u8>>;
}
