//! The PV-IOMMU ABI (`xen/include/public/pv-iommu.h`, v6/v7 series): every
//! structure declared once, `#[repr(C)]` with its padding spelled out, checked
//! by compile-time size/offset assertions and golden-bytes tests; a decoder
//! ([`decode`]) that never panics on hostile bytes; the errno values.
//!
//! Both sides speak it: the guest's `pv-iommu-client` and the hypervisor's
//! `iommu-core`. It depends on nothing but the shared id types, so the
//! hypervisor core never links guest code.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod types;
mod wire;

pub use wire::*;
