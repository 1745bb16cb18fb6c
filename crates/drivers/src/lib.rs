//! Ferrite device drivers.
//!
//! Everything here is safe, host-testable protocol code (STYLE.md §1, §3):
//!
//! - [`hal`]: the hardware contracts as traits — [`hal::RegisterIo`] (BAR
//!   registers), [`hal::DmaMapper`] (DMA memory and buffer mapping; the
//!   PV-IOMMU plugs in here), [`hal::Clock`]. The unsafe MMIO/DMA
//!   implementations live in `runtime`.
//! - [`pci`]: the [`pci::PciDevice`] contract (config space, BARs, enables).
//! - [`block`]: the [`block::BlockDevice`] contract the blkback serves, and
//!   [`block::RamDisk`].
//! - [`bounce`]: [`bounce::BounceDma`], a `DmaMapper` that copies buffers
//!   through a bounded pool of DMA-safe pages.
//! - [`nvme`]: the polled NVMe driver (registers, queue entries, PRPs, queue
//!   pairs, bring-up, split-phase I/O, timeout → abort → reset).
//! - [`nic`]: the [`nic::Nic`] contract (polled, split-phase network devices).
//! - `fake` (tests or feature `fakes`): host fakes that enforce the contracts.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod block;
pub mod bounce;
pub mod error;
pub mod hal;
pub mod inflight;
pub mod nic;
pub mod nvme;
pub mod pci;
pub mod poll;

#[cfg(any(test, feature = "fakes"))]
pub mod fake;

#[cfg(test)]
mod tests;

pub use error::{DmaError, Error, Status};
#[cfg(test)]
mod tests_sg;
