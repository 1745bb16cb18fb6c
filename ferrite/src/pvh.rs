//! Ferrite booted via PVH under plain QEMU: hardware self-tests that end in
//! isa-debug-exit (33 = pass, 35 = fail).

use alloc::vec::Vec;
use domain::hal::{self, pvh, PvhBoot};
use log::{error, info};

/// One PCI function found by the bus scan.
struct PciFn {
    bdf: (u8, u8, u8),
    vendor: u16,
    device: u16,
    class: u32,
}

fn pci_read(bus: u8, dev: u8, func: u8, off: u8) -> u32 {
    let addr = 0x8000_0000u32 | (bus as u32) << 16 | (dev as u32) << 11 | (func as u32) << 8 | (off as u32 & 0xFC);
    pvh::outl(0xCF8, addr);
    pvh::inl(0xCFC)
}

fn pci_scan() -> Vec<PciFn> {
    let mut v = Vec::new();
    for dev in 0..32u8 {
        for func in 0..8u8 {
            let id = pci_read(0, dev, func, 0);
            if id & 0xFFFF == 0xFFFF {
                if func == 0 {
                    break;
                }
                continue;
            }
            let class = pci_read(0, dev, func, 8) >> 8;
            v.push(PciFn { bdf: (0, dev, func), vendor: id as u16, device: (id >> 16) as u16, class });
        }
    }
    v
}

fn check(name: &str, ok: bool, failures: &mut u32) {
    if ok {
        info!("pvh test {name}: PASS");
    } else {
        error!("pvh test {name}: FAIL");
        *failures += 1;
    }
}

pub fn run(b: PvhBoot) -> ! {
    info!(
        "Ferrite {} booting via PVH: RAM top {:#x}, heap {} MiB, TSC {} MHz",
        env!("CARGO_PKG_VERSION"),
        b.ram_top,
        b.heap_bytes >> 20,
        b.tsc_per_us
    );
    let mut failures = 0;

    // The heap hands out distinct, writable memory and takes it back.
    let mut bufs: Vec<Vec<u8>> = (0..8).map(|i| alloc::vec![i as u8; 256 * 1024]).collect();
    let distinct = bufs.iter().enumerate().all(|(i, b)| b.iter().all(|&x| x == i as u8));
    let (used, _) = hal::heap_usage();
    bufs.clear();
    let (after, _) = hal::heap_usage();
    check("heap", distinct && used >= 8 * 256 * 1024 && after + 8 * 256 * 1024 <= used, &mut failures);

    // Time moves forward and a busy-wait of ~1 ms takes about 1 ms.
    let t0 = hal::time::now();
    let mut spins = 0u64;
    while hal::time::now() < t0 + 1_000_000 && spins < 100_000_000 {
        spins += 1;
    }
    let t1 = hal::time::now();
    check("clock", t1 > t0 && t1 - t0 >= 1_000_000 && t1 - t0 < 1_000_000_000, &mut failures);

    // PCI configuration space through ports 0xCF8/0xCFC: q35 has its host
    // bridge at 00:00.0 (Intel 8086).
    let fns = pci_scan();
    for f in &fns {
        info!("pci {:02x}:{:02x}.{} {:04x}:{:04x} class {:06x}", f.bdf.0, f.bdf.1, f.bdf.2, f.vendor, f.device, f.class);
    }
    check("pci-scan", fns.first().map(|f| f.vendor == 0x8086).unwrap_or(false), &mut failures);

    if failures == 0 {
        info!("pvh self-test passed");
        hal::poweroff();
    }
    error!("pvh self-test: {failures} failure(s)");
    hal::crash();
}
