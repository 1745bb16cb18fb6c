//! Ferrite's virtio-net driver: polled, several queue pairs when the device
//! offers MQ, checksum and TCP segmentation offloads when offered, behind
//! [`drivers::nic::Nic`].
//!
//! Built on virtio-drivers' transport (PCI, over Ferrite's config-space
//! access: [`virtio_hal::pci`]) and its virtqueues (through the owning,
//! safe [`virtio_hal::BufQueue`]), not on its `VirtIONet`, which negotiates
//! no offloads and one queue pair. DMA goes through virtio-drivers' `Hal`,
//! i.e. [`virtio_hal::VirtioHal`] over the same `DmaMapper` strategies as
//! NVMe. Every buffer is at most one page, so a mapper that cannot make
//! two pages contiguous on the bus (Xen PV machine frames) still works.
//!
//! - [`features`]: feature bits and negotiation.
//! - [`hdr`]: `virtio_net_hdr` and its mapping to [`net::Meta`].
//! - [`dev`]: the device.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod dev;
pub mod features;
pub mod hdr;

pub use dev::{NetConfig, NetError, VirtioNet, QUEUE_SIZE};
pub use virtio_hal::pci::{is_virtio_net, transport as pci_transport};
