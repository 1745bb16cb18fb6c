//! The NIC on Xen PV: find a virtio-net function among those pcifront
//! passed through (on the connection the NVMe setup uses too), map its
//! memory BARs, bring the driver up with the DMA strategy the NVMe uses,
//! and hand it over. The switch and netback are wired to it elsewhere.

use alloc::format;
use alloc::string::String;
use drivers::nic::Nic;
use drivers::pci::{BarKind, PciDevice};
use log::{info, warn};
use runtime::dev::{pv_map_bar, HalClock};
use runtime::pv::PvMm;
use virtio_drivers::transport::pci::PciTransport;
use virtio_net::{NetConfig, VirtioNet};
use xen::pcifront::PciAddr;

use crate::pci_nvme::PciBus;

/// The virtio-net driver as Ferrite runs it on Xen PV.
pub type PvNic = VirtioNet<runtime::virtio::Hal, PciTransport>;

/// The NIC Ferrite drives.
pub struct NicDevice {
    /// Its PCI address.
    pub addr: PciAddr,
    /// The driver.
    pub nic: PvNic,
}

/// Brings up the first virtio-net function (vendor 0x1af4, device 0x1000
/// or 0x1041, in PCI address order) on `bus`. `None`, with the reason
/// logged, when there is none or it fails.
pub fn setup(bus: &mut PciBus, mm: &'static spin::Mutex<PvMm>) -> Option<NicDevice> {
    let mut addrs = bus.devices.clone();
    addrs.sort();
    let addr = addrs.into_iter().find(|&a| {
        let id = bus.chan.device(a).config_read32(0);
        virtio_net::is_virtio_net(id as u16, (id >> 16) as u16)
    });
    let Some(addr) = addr else {
        info!("nic: no virtio-net among the passed-through devices");
        return None;
    };
    match bring_up(bus, addr, mm, NetConfig::default()) {
        Ok(nic) => {
            let o = nic.offloads();
            info!(
                "nic {addr}: virtio-net MAC {}, features {:#x}, {} queue pair(s), offloads tx-csum {} tso4 {} tso6 {} rx-csum {}",
                nic.mac(),
                nic.features(),
                nic.queue_pairs(),
                o.tx_csum,
                o.tso4,
                o.tso6,
                o.rx_csum
            );
            Some(NicDevice { addr, nic })
        }
        Err(e) => {
            warn!("nic {addr}: {e}; not used");
            None
        }
    }
}

/// Maps the memory BARs of the virtio-net function at `addr` and brings
/// the driver up with `cfg`.
pub fn bring_up(
    bus: &mut PciBus,
    addr: PciAddr,
    mm: &'static spin::Mutex<PvMm>,
    cfg: NetConfig,
) -> Result<PvNic, String> {
    let t0 = runtime::time::now();
    let (kind, _) = crate::dma_probe::probe();
    let machine = bus.machine_addr(addr);
    let mut dev = bus.chan.device(addr);
    let mut i = 0u8;
    while i < 6 {
        let bar = dev.bar(i);
        if let Some(b) = bar {
            if b.kind != BarKind::Io && b.base != 0 {
                if b.base % 4096 != 0 {
                    return Err(format!("BAR{i} not page aligned: {b:?}"));
                }
                let regs =
                    pv_map_bar(mm, b.base, b.size).map_err(|e| format!("mapping BAR{i} {:#x}: {e:?}", b.base))?;
                runtime::virtio::register_bar(b.base, regs);
                info!("nic {addr}: BAR{i} machine address {:#x} ({} KiB) mapped uncached", b.base, b.size / 1024);
            }
        }
        i += if matches!(bar, Some(b) if b.kind == BarKind::Mem64) { 2 } else { 1 };
    }
    dev.enable_memory_and_bus_master();
    if dev.errors() > 0 {
        return Err(format!("{} config-space operations failed", dev.errors()));
    }
    runtime::virtio::install_dma(crate::dma_probe::device_dma("nic", addr, machine, mm, kind, false)?);
    let transport = virtio_net::pci_transport::<runtime::virtio::Hal, _>(dev)
        .map_err(|e| format!("virtio PCI transport: {e:?}"))?;
    let nic = VirtioNet::new(transport, cfg, &HalClock).map_err(|e| format!("bring-up: {e:?}"))?;
    info!("nic {addr}: up in {} ms", (runtime::time::now() - t0) / 1_000_000);
    Ok(nic)
}
