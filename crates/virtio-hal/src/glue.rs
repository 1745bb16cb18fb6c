//! The unsafe edge, and all of it: virtio-drivers' `Hal` (static methods,
//! raw pointers) on the safe [`HalState`] that a [`MapperSlot`] holds.
//!
//! Three things need `unsafe` here: the `unsafe trait` implementations
//! themselves, reading a buffer virtio-drivers shares, and writing back into
//! a device-to-driver buffer at `unshare`. Everything else is in
//! [`crate::state`].
#![allow(unsafe_code)]

use core::marker::PhantomData;
use core::ptr::NonNull;

use drivers::hal::DmaCpuAccess;
use virtio_drivers::{BufferDirection, Hal, PhysAddr};

use crate::state::{HalState, StagingBuffer, POISON};

/// Where a [`VirtioHal`] finds its mapper. virtio-drivers calls `Hal`
/// methods without a receiver, so the state lives in a place the slot type
/// names: a `static` behind a lock in the unikernel, a thread-local in host
/// tests. One slot type serves one mapper.
///
/// # Safety
///
/// Implementing this trait promises, for `Mapper`, the
/// [`DmaCpuAccess`] contract: every pointer `region_ptr` returns is valid for
/// reads and writes of the region's length, aligned to 4 KiB, and aliased
/// by no Rust reference until the region is freed. [`VirtioHal::dma_alloc`]
/// hands those pointers to virtio-drivers on the strength of this promise.
pub unsafe trait MapperSlot: 'static {
    /// The mapper behind the slot.
    type Mapper: DmaCpuAccess<Buffer: StagingBuffer>;

    /// Runs `f` on the registered state. `None` when nothing is registered
    /// or the state is in use (never re-entrantly).
    fn with<R>(f: impl FnOnce(&mut HalState<Self::Mapper>) -> R) -> Option<R>;

    /// A CPU pointer to device registers at physical address `paddr`
    /// (`size` bytes of a BAR), or `None` to refuse the range.
    fn mmio(paddr: PhysAddr, size: usize) -> Option<NonNull<u8>>;
}

/// virtio-drivers' [`Hal`] over the mapper registered in slot `S`.
pub struct VirtioHal<S>(PhantomData<S>);

// SAFETY: `dma_alloc` returns only pointers from `HalState::alloc`, i.e.
// from the mapper's `region_ptr` for a region just allocated with
// `alloc_zeroed` (zeroed, page aligned, unaliased until `dma_dealloc` frees
// it: `MapperSlot`'s contract); on failure it returns address 0, which
// virtio-drivers treats as failure without touching the pointer.
// `mmio_phys_to_virt` returns only what the slot vouches for, and panics
// otherwise (which `Hal` allows).
unsafe impl<S: MapperSlot> Hal for VirtioHal<S> {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        // Regions are mapped read-write whatever the direction.
        match S::with(|s| s.alloc(pages)) {
            Some(Ok((bus, ptr))) => (bus, ptr),
            _ => (0, NonNull::dangling()),
        }
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, pages: usize) -> i32 {
        match S::with(|s| s.dealloc(paddr, pages)) {
            Some(Ok(())) => 0,
            _ => -1,
        }
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        S::mmio(paddr, size).unwrap_or_else(|| panic!("virtio MMIO {paddr:#x}+{size:#x} refused by the platform"))
    }

    unsafe fn share(buffer: NonNull<[u8]>, direction: BufferDirection) -> PhysAddr {
        // SAFETY: the caller guarantees `buffer` is valid and accessed by
        // nobody else during this call. It is only read: driver-to-device
        // buffers come from shared references.
        let data: &[u8] = unsafe { buffer.as_ref() };
        match S::with(|s| s.share(data, direction)) {
            Some(Ok(bus)) => bus,
            _ => POISON,
        }
    }

    unsafe fn unshare(paddr: PhysAddr, buffer: NonNull<[u8]>, direction: BufferDirection) {
        if paddr == POISON {
            return;
        }
        let out = match direction {
            // SAFETY: valid and exclusively ours during this call (caller
            // contract); virtio-drivers passes device-to-driver buffers
            // derived from `&mut [u8]`, so writing them is allowed.
            BufferDirection::DeviceToDriver => Some(unsafe { &mut *buffer.as_ptr() }),
            // Never written (may come from a shared reference).
            _ => None,
        };
        let len = buffer.len();
        // Failures are counted in the state; `unshare` cannot report them.
        let _ = S::with(|s| s.unshare(paddr, direction, len, out));
    }
}
