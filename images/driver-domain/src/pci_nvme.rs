//! NVMe on Xen PV: find the controller passed through with `pci=[...]`
//! via pcifront, map its BAR, bring it up and hand it to the image's check.

use alloc::format;
use alloc::string::String;
use drivers::nvme::{Config, Nvme};
use drivers::pci::{BarKind, PciDevice, NVME_CLASS};
use log::{info, warn};
use runtime::dev::{pv_map_bar, HalClock, HalDma, Mmio, Translation};
use runtime::events::{PortNotifier, XenEvents};
use runtime::page::MappedPage;
use runtime::pv::PvMm;
use xen::evtchn::EventOps;
use xen::gnttab::GrantOps;
use xen::pcifront::{self, PciChannel};
use xen::wait::Notifier;
use xen::xenstore::XsClient;

/// The NVMe driver as Ferrite runs it on Xen PV.
pub type PvNvme = Nvme<Mmio, HalDma, HalClock>;

/// Connects pcifront, brings up the first NVMe controller and runs `check`
/// on it. Returns the controller (for serving) and a verdict line.
pub fn setup<N: Notifier>(
    xs: &mut XsClient<MappedPage, N>,
    events: &mut XenEvents,
    grants: &mut impl GrantOps,
    mm: &'static spin::Mutex<PvMm>,
    use_sgl: bool,
    check: impl FnOnce(&mut PvNvme) -> Result<String, String>,
) -> (Option<PvNvme>, String) {
    match try_setup(xs, events, grants, mm, use_sgl, check) {
        Ok((n, v)) => (Some(n), v),
        Err(e) => {
            warn!("nvme: {e}");
            (None, format!("fail: {e}"))
        }
    }
}

fn try_setup<N: Notifier>(
    xs: &mut XsClient<MappedPage, N>,
    events: &mut XenEvents,
    grants: &mut impl GrantOps,
    mm: &'static spin::Mutex<PvMm>,
    use_sgl: bool,
    check: impl FnOnce(&mut PvNvme) -> Result<String, String>,
) -> Result<(PvNvme, String), String> {
    let t0 = runtime::time::now();
    let pfn = mm.lock().alloc_frame().map_err(|e| format!("no frame for pcifront: {e:?}"))?;
    let p =
        pcifront::start(xs, events, grants, "device/pci/0", pfn).map_err(|e| format!("pcifront handshake: {e:?}"))?;
    let deadline = t0 + 30_000_000_000;
    let conn = loop {
        match pcifront::poll_connected(xs, &p).map_err(|e| format!("pcifront: {e:?}"))? {
            Some(c) => break c,
            None if runtime::time::now() > deadline => return Err(String::from("pciback did not connect within 30 s")),
            None => {
                let _ = events.wait_any(&[p.port], runtime::time::now() + 20_000_000);
            }
        }
    };
    info!(
        "pcifront connected to backend domain {} ({} device(s)) in {} ms",
        p.backend_id,
        conn.devices.len(),
        (runtime::time::now() - t0) / 1_000_000
    );
    let page = mm.lock().frame_page(pfn).map_err(|e| format!("{e:?}"))?;
    let notifier: PortNotifier = events.notifier(p.port);
    let mut chan = PciChannel::new(page, notifier, 2_000_000_000);
    let mut found = None;
    for &addr in &conn.devices {
        let mut dev = chan.device(addr);
        let id = dev.config_read32(0);
        let class = dev.class_code();
        info!("pci {addr}: {:04x}:{:04x} class {:02x}{:02x}{:02x}", id & 0xFFFF, id >> 16, class.0, class.1, class.2);
        if class == NVME_CLASS && found.is_none() {
            found = Some(addr);
        }
    }
    let addr = found.ok_or("no NVMe controller among the passed-through devices")?;
    let mut dev = chan.device(addr);
    let bar = dev.bar(0).ok_or("NVMe BAR0 is not decodable")?;
    if bar.kind == BarKind::Io || bar.base == 0 || bar.base % 4096 != 0 {
        return Err(format!("NVMe BAR0 unusable: {bar:?}"));
    }
    dev.enable_memory_and_bus_master();
    if dev.errors() > 0 {
        return Err(format!("{} config-space operations failed", dev.errors()));
    }
    let regs = pv_map_bar(mm, bar.base, bar.size).map_err(|e| format!("mapping BAR0 {:#x}: {e:?}", bar.base))?;
    info!("nvme {addr}: BAR0 machine address {:#x} ({} KiB) mapped uncached", bar.base, bar.size / 1024);
    let (kind, why) = crate::dma_probe::probe();
    let _ = xs.write("data/ferrite/dma", kind);
    info!("nvme: DMA strategy {kind}: {why}");
    if kind != "machine-frames" {
        return Err(format!("DMA strategy {kind} is not implemented for NVMe yet"));
    }
    let dma = HalDma::new(Translation::PvMachineFrames(mm));
    // 512 KiB per command (capped by the controller's MDTS): fewer splits of
    // large guest requests.
    let config = Config { io_queues: 2, queue_depth: 64, max_transfer: 512 * 1024, use_sgl, ..Config::default() };
    let mut nvme = Nvme::init(regs, dma, HalClock, config).map_err(|e| format!("bring-up: {e:?}"))?;
    let i = nvme.info().clone();
    info!("nvme: {i}, up in {} ms", (runtime::time::now() - t0) / 1_000_000);
    let verdict = check(&mut nvme)?;
    info!("nvme check {verdict}");
    Ok((nvme, verdict))
}
