//! What both Ferrite images share: the Xen PV driver domain. It connects to
//! xenstore, brings up the NVMe controller passed through to it, serves every
//! vbd assigned to it with blkback, and powers off on `xl shutdown`.
//!
//! The product image (`images/ferrite`) plugs in a read-only disk check and
//! nothing else; the self-test image (`images/ferrite-selftest`) plugs in the
//! destructive disk test and the lab's grant and event-channel checks.
#![no_std]
#![deny(unsafe_code)]

extern crate alloc;

pub mod check;
pub mod disk;
pub mod disks;
pub mod dma_probe;
pub mod iommu;
pub mod pci_nic;
pub mod pci_nvme;
pub mod serve;

pub use pci_nic::PvNic;
pub use pci_nvme::PvNvme;
pub use serve::{run, Image, Services, Xs};
