//! The Ferrite unikernel image.
//!
//! On Xen PV it is a driver domain: it connects to xenstore, marks itself
//! ready under `data/ferrite/state`, answers the lab's grant and event-channel
//! checks, and powers off when the toolstack asks. Booted via PVH under plain
//! QEMU it runs its hardware self-tests and reports through isa-debug-exit.
#![no_std]
#![no_main]
#![deny(unsafe_code)]

extern crate alloc;

mod bench;
mod disk;
mod disktest;
mod dma_probe;
mod iommu_test;
mod pci_nvme;
mod pv;
mod pvh;

use runtime::Boot;

// The runtime calls this by name; `no_mangle` is the only unsafe-lint item here.
#[allow(unsafe_code)]
#[no_mangle]
fn ferrite_main(boot: Boot) -> ! {
    match boot {
        Boot::Pv(b) => pv::run(b),
        Boot::Pvh(b) => pvh::run(b),
    }
}
