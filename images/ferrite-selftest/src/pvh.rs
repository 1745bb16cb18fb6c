//! Ferrite booted via PVH under plain QEMU: hardware self-tests that end in
//! isa-debug-exit (33 = pass, 35 = fail).

use alloc::vec::Vec;
use drivers::nvme::{Config, Nvme};
use drivers::pci::{BarKind, PciDevice};
use log::{error, info};
use runtime::dev::{HalClock, HalDma, PortPci, Translation};
use runtime::{pvh, PvhBoot};

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
    let (used, _) = runtime::heap_usage();
    bufs.clear();
    let (after, _) = runtime::heap_usage();
    check("heap", distinct && used >= 8 * 256 * 1024 && after + 8 * 256 * 1024 <= used, &mut failures);

    // Time moves forward and a busy-wait of ~1 ms takes about 1 ms.
    let t0 = runtime::time::now();
    let mut spins = 0u64;
    while runtime::time::now() < t0 + 1_000_000 && spins < 100_000_000 {
        spins += 1;
    }
    let t1 = runtime::time::now();
    check("clock", t1 > t0 && t1 - t0 >= 1_000_000 && t1 - t0 < 1_000_000_000, &mut failures);

    // PCI configuration space through ports 0xCF8/0xCFC: q35 has its host
    // bridge at 00:00.0 (Intel 8086).
    let fns = pci_scan();
    for f in &fns {
        info!(
            "pci {:02x}:{:02x}.{} {:04x}:{:04x} class {:06x}",
            f.bdf.0, f.bdf.1, f.bdf.2, f.vendor, f.device, f.class
        );
    }
    check("pci-scan", fns.first().map(|f| f.vendor == 0x8086).unwrap_or(false), &mut failures);

    let bench = b.cmdline.split_whitespace().find_map(|w| w.strip_prefix("bench=")).and_then(|s| s.parse::<u64>().ok());
    let nvme = fns.iter().find(|f| f.class == 0x010802);
    if b.cmdline.split_whitespace().any(|w| w == "iommu") {
        // VT-d self-test (tests/pvh-iommu.sh): NVMe I/O through IOMMU contexts.
        failures += crate::iommu_test::run(&b, nvme.map(|f| f.bdf));
    } else {
        match (nvme, bench) {
            (Some(f), Some(secs)) => check("nvme-bench", nvme_bench(f.bdf, secs), &mut failures),
            (Some(f), None) => check("nvme", nvme_test(f.bdf), &mut failures),
            (None, _) => info!("no NVMe controller on bus 0: NVMe tests skipped"),
        }
    }

    // virtio-net on QEMU's user-mode network (tests/pvh-nic.sh).
    match fns.iter().find(|f| virtio_net::is_virtio_net(f.vendor, f.device)) {
        Some(f) => check("nic", crate::nic_test::run(f.bdf), &mut failures),
        None => info!("no virtio-net device on bus 0: NIC test skipped"),
    }

    if failures == 0 {
        info!("pvh self-test passed");
        runtime::poweroff();
    }
    error!("pvh self-test: {failures} failure(s)");
    runtime::crash();
}

/// Brings up the NVMe controller at `bdf` (identity DMA, PVH).
fn nvme_up(bdf: (u8, u8, u8), io_queues: u16, depth: u16) -> Option<Nvme<runtime::dev::Mmio, HalDma, HalClock>> {
    let mut pci = PortPci::new(bdf.0, bdf.1, bdf.2);
    let bar = match pci.bar(0) {
        Some(b) if b.kind != BarKind::Io => b,
        other => {
            error!("nvme: BAR0 unusable: {other:?}");
            return None;
        }
    };
    if bar.base + bar.size > 0x1_0000_0000 {
        error!("nvme: BAR0 at {:#x} is above the 4 GiB identity map", bar.base);
        return None;
    }
    pci.enable_memory_and_bus_master();
    info!("nvme at {:02x}:{:02x}.{}: BAR0 {:#x} ({} KiB)", bdf.0, bdf.1, bdf.2, bar.base, bar.size / 1024);
    let regs = runtime::dev::mmio_identity(bar.base, bar.size as usize);
    let dma = HalDma::new(Translation::Identity);
    info!("nvme: DMA strategy: {}", dma.describe());
    let config = Config { io_queues, queue_depth: depth, ..Config::default() };
    let nvme = match Nvme::init(regs, dma, HalClock, config) {
        Ok(n) => n,
        Err(e) => {
            error!("nvme: bring-up failed: {e:?}");
            return None;
        }
    };
    info!("nvme: {}", nvme.info());
    Some(nvme)
}

/// Brings up the NVMe controller at `bdf` with several queues and runs the
/// disk self-test on it.
fn nvme_test(bdf: (u8, u8, u8)) -> bool {
    let Some(mut nvme) = nvme_up(bdf, 4, 64) else { return false };
    let ok = match crate::disktest::run(&mut nvme, 16 * 1024, 512) {
        Ok(r) => {
            info!("nvme disk test passed: {} bytes written and verified", r.bytes_written);
            true
        }
        Err(e) => {
            error!("nvme disk test: {e}");
            false
        }
    };
    let s = nvme.stats();
    info!(
        "nvme stats: timeouts {} aborts {} resets {} spurious {}",
        s.timeouts, s.aborts_sent, s.resets, s.spurious_completions
    );
    if let Err(e) = nvme.shutdown() {
        error!("nvme: shutdown: {e:?}");
        return false;
    }
    ok
}

/// 4 KiB random reads at QD1 and QD32 for `secs` seconds each (after 1 s of
/// warm-up), printed as `BENCH` lines for the comparison script.
fn nvme_bench(bdf: (u8, u8, u8), secs: u64) -> bool {
    let Some(mut nvme) = nvme_up(bdf, 1, 64) else { return false };
    for qd in [1usize, 32] {
        match crate::bench::randread(&mut nvme, qd, 1_000_000_000, secs * 1_000_000_000, 0x5EED + qd as u64) {
            Ok(r) => runtime::console::print(format_args!(
                "BENCH ferrite randread-4k qd={qd} ios={} secs={:.1} iops={:.0} mean_lat_us={:.1}\n",
                r.ios,
                r.secs,
                r.iops(),
                r.mean_lat_us
            )),
            Err(e) => {
                error!("bench qd={qd}: {e:?}");
                return false;
            }
        }
    }
    nvme.shutdown().is_ok()
}
