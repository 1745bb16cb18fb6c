//! The adapter's bookkeeping, in safe code: live DMA regions and shared
//! buffers, keyed by the device address virtio-drivers hands back.
//!
//! virtio-drivers identifies a region or a shared buffer only by the
//! address `dma_alloc`/`share` returned, so [`HalState`] keeps the
//! [`DmaRegion`] or [`Mapping`] (and the staged buffer) under that address
//! until `dma_dealloc`/`unshare` gives it back.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::ptr::NonNull;

use drivers::hal::{DmaBuffer, DmaCpuAccess, DmaDirection, DmaRegion, Mapping};
use drivers::DmaError;
use virtio_drivers::BufferDirection;

/// What `share` returns when it cannot share (virtio-drivers' `share` has
/// no error channel): a page above every VT-d address width (39/48 bits)
/// and every physical address, so a device using it faults or hits
/// nothing — it fails closed. `unshare` of it does nothing.
pub const POISON: u64 = 0xffff_ffff_ffff_f000;

/// Why an operation was refused. virtio-drivers only learns "address 0"
/// (alloc), [`POISON`] (share) or a non-zero code (dealloc); the detail is
/// kept in [`HalState::last_error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HalError {
    /// No live region or shared buffer at this device address.
    Unknown,
    /// Size or direction differs from the one allocated or shared.
    Mismatch,
    /// `BufferDirection::Both` for a shared buffer (virtio-drivers never
    /// does it; a mapping has one direction).
    Bidirectional,
    /// The mapper gave the buffer more than one device segment; virtio
    /// needs a single address.
    Scattered,
    /// The mapper returned address 0 (virtio-drivers' failure value) or an
    /// address already live.
    AddressClash,
    /// The mapper has no CPU pointer for a region it just allocated.
    NoCpuAccess,
    /// The mapper failed.
    Dma(DmaError),
}

/// A buffer type the adapter stages a virtio buffer in before mapping it:
/// [`drivers::hal::DmaMapper::map`] takes an owned buffer, virtio-drivers
/// lends raw memory. After `unmap`, [`StagingBuffer::bytes`] hold what the
/// device wrote (for device-to-driver buffers).
pub trait StagingBuffer: DmaBuffer + Sized {
    /// A buffer holding a copy of `bytes`; `None` if out of memory.
    fn stage(bytes: &[u8]) -> Option<Self>;
    /// The buffer's bytes.
    fn bytes(&self) -> &[u8];
}

impl StagingBuffer for Vec<u8> {
    fn stage(bytes: &[u8]) -> Option<Self> {
        let mut v = Vec::new();
        v.try_reserve_exact(bytes.len()).ok()?;
        v.extend_from_slice(bytes);
        Some(v)
    }
    fn bytes(&self) -> &[u8] {
        self
    }
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HalStats {
    /// Regions allocated.
    pub allocs: u64,
    /// Regions freed.
    pub deallocs: u64,
    /// Buffers shared.
    pub shares: u64,
    /// Buffers unshared.
    pub unshares: u64,
    /// Operations refused (see [`HalState::last_error`]).
    pub failures: u64,
}

struct Shared<B> {
    mapping: Mapping,
    buffer: B,
    direction: DmaDirection,
}

/// The mapper and what virtio-drivers holds of it.
pub struct HalState<M: DmaCpuAccess> {
    mapper: M,
    regions: BTreeMap<u64, DmaRegion>,
    shares: BTreeMap<u64, Shared<M::Buffer>>,
    stats: HalStats,
    last_error: Option<HalError>,
}

fn mapping_direction(d: BufferDirection) -> Result<DmaDirection, HalError> {
    match d {
        BufferDirection::DriverToDevice => Ok(DmaDirection::ToDevice),
        BufferDirection::DeviceToDriver => Ok(DmaDirection::FromDevice),
        BufferDirection::Both => Err(HalError::Bidirectional),
    }
}

impl<M: DmaCpuAccess> HalState<M>
where
    M::Buffer: StagingBuffer,
{
    /// Serves virtio-drivers from `mapper`.
    pub fn new(mapper: M) -> Self {
        HalState {
            mapper,
            regions: BTreeMap::new(),
            shares: BTreeMap::new(),
            stats: HalStats::default(),
            last_error: None,
        }
    }

    /// The mapper.
    pub fn mapper(&self) -> &M {
        &self.mapper
    }

    /// Counters.
    pub fn stats(&self) -> HalStats {
        self.stats
    }

    /// The last refusal.
    pub fn last_error(&self) -> Option<HalError> {
        self.last_error
    }

    /// Regions allocated and not yet freed.
    pub fn live_regions(&self) -> usize {
        self.regions.len()
    }

    /// Buffers shared and not yet unshared.
    pub fn live_shares(&self) -> usize {
        self.shares.len()
    }

    fn fail<T>(&mut self, e: HalError) -> Result<T, HalError> {
        self.stats.failures += 1;
        self.last_error = Some(e);
        Err(e)
    }

    /// `dma_alloc`: a zeroed region of `pages` pages; its device address
    /// and the CPU pointer to it.
    pub fn alloc(&mut self, pages: usize) -> Result<(u64, NonNull<u8>), HalError> {
        let region = match self.mapper.alloc_zeroed(pages) {
            Ok(r) => r,
            Err(e) => return self.fail(HalError::Dma(e)),
        };
        let bus = region.bus().0;
        let refused = if region.pages() != pages {
            Some(HalError::Mismatch)
        } else if bus == 0 || self.regions.contains_key(&bus) {
            Some(HalError::AddressClash)
        } else {
            None
        };
        let ptr = self.mapper.region_ptr(&region);
        match (refused, ptr) {
            (None, Some(p)) => {
                self.regions.insert(bus, region);
                self.stats.allocs += 1;
                Ok((bus, p))
            }
            (r, _) => {
                self.mapper.free(region);
                self.fail(r.unwrap_or(HalError::NoCpuAccess))
            }
        }
    }

    /// `dma_dealloc`: frees the region at `bus`, which must have `pages`
    /// pages (otherwise it stays allocated).
    pub fn dealloc(&mut self, bus: u64, pages: usize) -> Result<(), HalError> {
        match self.regions.get(&bus) {
            None => return self.fail(HalError::Unknown),
            Some(r) if r.pages() != pages => return self.fail(HalError::Mismatch),
            Some(_) => {}
        }
        if let Some(r) = self.regions.remove(&bus) {
            self.mapper.free(r);
            self.stats.deallocs += 1;
        }
        Ok(())
    }

    /// `share`: stages `data`, maps it for the device in `direction`, and
    /// returns its single device address.
    pub fn share(&mut self, data: &[u8], direction: BufferDirection) -> Result<u64, HalError> {
        let dir = match mapping_direction(direction) {
            Ok(d) => d,
            Err(e) => return self.fail(e),
        };
        if data.is_empty() {
            return self.fail(HalError::Mismatch);
        }
        let Some(mut buffer) = M::Buffer::stage(data) else {
            return self.fail(HalError::Dma(DmaError::NoMemory));
        };
        let mapping = match self.mapper.map(&mut buffer, dir) {
            Ok(m) => m,
            Err(e) => return self.fail(HalError::Dma(e)),
        };
        let bus = match mapping.segments() {
            [s] if s.len == data.len() => Ok(s.bus.0),
            _ => Err(HalError::Scattered),
        };
        let bus = bus.and_then(|b| {
            if b == 0 || b == POISON || self.shares.contains_key(&b) {
                Err(HalError::AddressClash)
            } else {
                Ok(b)
            }
        });
        match bus {
            Ok(b) => {
                self.shares.insert(b, Shared { mapping, buffer, direction: dir });
                self.stats.shares += 1;
                Ok(b)
            }
            Err(e) => {
                if self.mapper.unmap(mapping, &mut buffer).is_err() {
                    // The device may still reach the staged copy: keep it.
                    core::mem::forget(buffer);
                }
                self.fail(e)
            }
        }
    }

    /// `unshare`: revokes the device's access to the buffer shared at
    /// `bus` and, for a device-to-driver buffer, copies what the device
    /// wrote into `out` (`None` for driver-to-device buffers, which are
    /// not written). Access is revoked even when the arguments do not
    /// match the share; nothing is copied then.
    pub fn unshare(
        &mut self,
        bus: u64,
        direction: BufferDirection,
        len: usize,
        out: Option<&mut [u8]>,
    ) -> Result<(), HalError> {
        let Some(mut s) = self.shares.remove(&bus) else {
            return self.fail(HalError::Unknown);
        };
        if let Err(e) = self.mapper.unmap(s.mapping, &mut s.buffer) {
            // The device may still reach the staged copy: keep it.
            core::mem::forget(s.buffer);
            return self.fail(HalError::Dma(e));
        }
        self.stats.unshares += 1;
        let consistent = mapping_direction(direction) == Ok(s.direction) && s.buffer.len() == len;
        match (s.direction, out) {
            (DmaDirection::FromDevice, Some(o)) if consistent && o.len() == s.buffer.bytes().len() => {
                o.copy_from_slice(s.buffer.bytes());
                Ok(())
            }
            (DmaDirection::ToDevice, None) if consistent => Ok(()),
            _ => self.fail(HalError::Mismatch),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drivers::fake::{FakeDma, FakeMemory, Memory};

    fn rig() -> (Memory, HalState<FakeDma>) {
        let mem = FakeMemory::new_shared();
        (mem.clone(), HalState::new(FakeDma::new(mem)))
    }

    #[test]
    fn alloc_and_dealloc_by_device_address() {
        let (mem, mut s) = rig();
        let (bus, ptr) = s.alloc(2).unwrap();
        assert_eq!(mem.borrow().cpu_ptr(bus), Some(ptr));
        assert!(mem.borrow().is_mapped(bus, 2 * 4096));
        assert_eq!(s.dealloc(bus, 1), Err(HalError::Mismatch));
        assert_eq!(s.dealloc(bus + 4096, 2), Err(HalError::Unknown));
        assert!(mem.borrow().is_mapped(bus, 1), "a wrong dealloc frees nothing");
        s.dealloc(bus, 2).unwrap();
        assert!(!mem.borrow().is_mapped(bus, 1));
        assert_eq!(s.dealloc(bus, 2), Err(HalError::Unknown), "no double free");
        assert_eq!(s.stats().failures, 3);
        assert_eq!(s.live_regions(), 0);
    }

    #[test]
    fn alloc_failure_is_reported() {
        let (_, mut s) = rig();
        s.mapper.region_limit = Some(0);
        assert_eq!(s.alloc(1), Err(HalError::Dma(DmaError::NoMemory)));
        assert_eq!(s.last_error(), Some(HalError::Dma(DmaError::NoMemory)));
    }

    #[test]
    fn share_stages_maps_and_unshare_copies_back() {
        let (mem, mut s) = rig();
        let data: Vec<u8> = (0..600u32).map(|i| i as u8).collect();
        let bus = s.share(&data, BufferDirection::DriverToDevice).unwrap();
        let mut seen = vec![0u8; 600];
        mem.borrow().read(bus, &mut seen);
        assert_eq!(seen, data);
        s.unshare(bus, BufferDirection::DriverToDevice, 600, None).unwrap();
        assert!(!mem.borrow().is_mapped(bus, 1), "revoked");

        let mut out = vec![0u8; 600];
        let bus = s.share(&out, BufferDirection::DeviceToDriver).unwrap();
        mem.borrow_mut().write(bus, &data);
        assert!(out.iter().all(|&b| b == 0));
        s.unshare(bus, BufferDirection::DeviceToDriver, 600, Some(&mut out)).unwrap();
        assert_eq!(out, data);
        assert_eq!((s.stats().shares, s.stats().unshares, s.live_shares()), (2, 2, 0));
    }

    #[test]
    fn refusals_fail_closed() {
        let (mem, mut s) = rig();
        assert_eq!(s.share(&[1, 2], BufferDirection::Both), Err(HalError::Bidirectional));
        assert_eq!(s.share(&[], BufferDirection::DriverToDevice), Err(HalError::Mismatch));
        // Scattered (two segments): refused and unmapped again.
        s.mapper.scatter = true;
        s.mapper.map_offset = 0x800;
        assert_eq!(s.share(&[0; 4096], BufferDirection::DeviceToDriver), Err(HalError::Scattered));
        assert_eq!(s.mapper().live_mappings(), 0);
        s.mapper.scatter = false;
        // Unshare with the wrong direction or length: revoked, nothing copied.
        let mut out = vec![7u8; 16];
        let bus = s.share(&out, BufferDirection::DeviceToDriver).unwrap();
        mem.borrow_mut().write(bus, &[9; 16]);
        assert_eq!(s.unshare(bus, BufferDirection::DeviceToDriver, 15, Some(&mut out)), Err(HalError::Mismatch));
        assert_eq!(out, vec![7u8; 16]);
        assert!(!mem.borrow().is_mapped(bus, 1));
        assert_eq!(s.unshare(bus, BufferDirection::DeviceToDriver, 16, Some(&mut out)), Err(HalError::Unknown));
        let bus = s.share(&out, BufferDirection::DriverToDevice).unwrap();
        assert_eq!(s.unshare(bus, BufferDirection::DeviceToDriver, 16, Some(&mut out)), Err(HalError::Mismatch));
        assert_eq!(out, vec![7u8; 16]);
        assert_eq!(s.live_shares(), 0);
        assert_eq!(s.mapper().live_mappings(), 0);
    }
}
