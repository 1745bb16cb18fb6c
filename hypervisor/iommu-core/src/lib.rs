//! Hypervisor-side PV-IOMMU core for Intel VT-d.
//!
//! * [`iommu`]: the `iommu_op` handler ([`Iommu::handle`]) with per-domain
//!   contexts (default 0, allocated, identity), a page-table arena bounded by
//!   `init`, device attach/reattach/detach, a quarantine context for
//!   unowned devices, and reserved regions (RMRR unity maps, MSI window);
//!   in front of the dispatcher, a per-caller policy for domU driver
//!   domains (own devices, own and granted frames, per-domain [`Limits`],
//!   [`Counters`] and a debug dump).
//! * [`vtd`]: root/context entries, second-level PTEs, invalidation
//!   descriptors and fault records, bit for bit with spec sections cited.
//! * [`pagetable`]: 3- and 4-level second-level tables and replay.
//! * [`qi`]: the queued-invalidation ring with status-write waits.
//! * [`hw`]: the [`hw::Hardware`] contract and [`hw::SoftVtd`], a software
//!   VT-d that translates DMAs by walking the tables in model memory.
//! * [`mem`]: memory and page-allocation traits, with a host model.
//! * [`mmio`]: [`hw::Hardware`] for a real unit over a register-access
//!   trait (the volatile accesses stay in the HAL).
//! * [`acpi`]: RSDP/RSDT/XSDT walk and the DMAR table (units, RMRRs).
//!
//! Time is passed in ([`types::Instant`]); nothing here blocks or spins.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod acpi;
pub mod hw;
pub mod iommu;
pub mod mem;
pub mod mmio;
pub mod pagetable;
pub mod qi;
/// Host-test fixtures (in-process transport over the guest client): feature `testing` only.
#[cfg(feature = "testing")]
pub mod testing;
pub mod types;
pub mod vtd;

pub use iommu::{hypercall_return, Config, Counters, Error, Frame, Iommu, Limits, Outcome, Platform, Rmrr, Source};
