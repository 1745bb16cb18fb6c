//! Host fakes that enforce the hardware contracts (STYLE.md §2): DMA memory
//! that copies on map and panics on double unmap or device access to
//! unmapped addresses, a settable clock, a PCI config space, and an NVMe
//! controller that runs its queues over the fake DMA memory.
//!
//! Their contract methods are `#[inline(never)]` (here and in the `xen`
//! crate's fakes): `./run.sh bench cpu` tells the fakes' cost, which it
//! excludes, from the code under test by the call chain.

mod clock;
mod dma;
mod nic;
mod nvme;
mod pci;

pub use clock::FakeClock;
pub use dma::{FakeDma, FakeMemory, ForeignMemory, Memory};
pub use nic::FakeNic;
pub use nvme::{FakeNvme, FakeNvmeConfig, Injection, Stall};
pub use pci::FakePci;
