//! Ferrite's self-test image: everything that tests or measures, kept out of
//! the product image (`images/ferrite`).
//!
//! Booted via PVH under plain QEMU it runs the hardware self-tests and
//! reports through isa-debug-exit: runtime checks, the destructive NVMe disk
//! test, the NVMe benchmark (`bench=SECS`) or the VT-d test (`iommu`),
//! and the virtio-net test when a virtio-net device is present. Booted
//! as a Xen PV driver domain it is the product's driver domain plus the
//! destructive disk test at boot and the lab's grant and event-channel checks.
#![no_std]
#![no_main]
#![deny(unsafe_code)]

extern crate alloc;

mod bench;
mod disktest;
mod iommu_test;
mod lab;
mod nic_test;
mod pvh;

use runtime::Boot;

// The runtime calls this by name; `no_mangle` is the only unsafe-lint item here.
#[allow(unsafe_code)]
#[no_mangle]
fn ferrite_main(boot: Boot) -> ! {
    match boot {
        Boot::Pv(b) => driver_domain::run(b, lab::LabChecks),
        Boot::Pvh(b) => pvh::run(b),
    }
}
