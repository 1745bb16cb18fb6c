//! The Ferrite product image: a Xen PV driver domain that serves guests and
//! nothing else. It claims the NVMe passed through to it, checks it
//! read-only (identify, then LBA 0 and the last LBA), serves blkback and
//! powers off on `xl shutdown`. It never writes to a disk except what guests
//! write. Self-tests, benchmarks and lab hooks are in `ferrite-selftest`.
#![no_std]
#![no_main]
#![deny(unsafe_code)]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use driver_domain::{Image, PvNvme};
use drivers::block::BlockDevice;
use log::error;
use runtime::Boot;

struct Product;

impl Image for Product {
    fn check_nvme(&mut self, nvme: &mut PvNvme) -> Result<String, String> {
        let last = driver_domain::check::read_first_and_last(nvme)?;
        Ok(format!("pass: {} I/O queues, read-only check of LBA 0 and LBA {last} ok", nvme.queue_count()))
    }
}

// The runtime calls this by name; `no_mangle` is the only unsafe-lint item here.
#[allow(unsafe_code)]
#[no_mangle]
fn ferrite_main(boot: Boot) -> ! {
    match boot {
        Boot::Pv(b) => driver_domain::run(b, Product),
        Boot::Pvh(_) => {
            error!("the product image runs only as a Xen PV driver domain; the PVH self-tests are in ferrite-selftest");
            runtime::crash();
        }
    }
}
