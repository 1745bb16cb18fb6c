//! PV-IOMMU: the guest side of Xen's `__HYPERVISOR_iommu_op` interface.
//!
//! * [`abi`] declares every structure of `xen/include/public/pv-iommu.h`
//!   (v6/v7 series) once, `#[repr(C)]` with its padding spelled out, checked
//!   by compile-time size/offset assertions and golden-bytes tests, and a
//!   decoder ([`abi::decode`]) that never panics on hostile bytes.
//! * [`client`] issues typed calls over a [`client::Transport`] and maps Xen
//!   errno values to [`error::Error`].
//! * [`dma`]: `drivers::hal::DmaMapper` on a context (IOVAs from [`iova`],
//!   batched maps of contiguous runs, one unmap per buffer).
//!
//! No unsafe code here: the hypercall itself lives in the runtime's HAL,
//! which implements [`client::Transport`].
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod client;
pub mod dma;
pub mod error;
pub mod iova;

pub use pv_iommu_abi as abi;
pub use pv_iommu_abi::types;

pub use client::{Client, Transport};
pub use error::{Error, PartialError};
