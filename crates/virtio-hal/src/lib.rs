//! virtio-drivers' [`virtio_drivers::Hal`] on top of a
//! [`drivers::hal::DmaMapper`], so virtio devices get the same DMA
//! strategies as the NVMe driver: PV-IOMMU IOVAs
//! (`pv_iommu_client::dma::IommuDma`), bounce buffers
//! ([`drivers::bounce::BounceDma`]), machine frames or identity.
//!
//! | `Hal` method | here |
//! |---|---|
//! | `dma_alloc` | `DmaMapper::alloc_zeroed` + `DmaCpuAccess::region_ptr`; 0 on failure |
//! | `dma_dealloc` | `DmaMapper::free` of the region at that address; -1 if unknown or wrong size |
//! | `mmio_phys_to_virt` | the slot's [`MapperSlot::mmio`] |
//! | `share` | buffer staged ([`StagingBuffer`]), `DmaMapper::map` in its direction, one segment required; [`POISON`] on failure |
//! | `unshare` | `DmaMapper::unmap` (access revoked), then the device's bytes copied back for device-to-driver buffers |
//!
//! virtio-drivers calls `Hal` without a receiver, so the mapper is
//! registered in a slot type ([`MapperSlot`]) that owns a [`HalState`].
//! In the unikernel that is a `static spin::Mutex<Option<HalState<M>>>`
//! whose `with` uses `try_lock`; host tests use a thread-local.
//!
//! Only [`glue`]'s `Hal` implementation and raw-buffer accesses, and
//! [`queue`]'s two calls into virtio-drivers' unsafe virtqueue API (behind
//! the safe [`BufQueue`]), are `unsafe`; the bookkeeping in [`state`] is safe and host-tested.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

extern crate alloc;

pub mod glue;
pub mod pci;
pub mod queue;
pub mod state;

pub use glue::{MapperSlot, VirtioHal};
pub use queue::{BufQueue, QueueError, Used};
pub use state::{HalError, HalState, HalStats, StagingBuffer, POISON};
