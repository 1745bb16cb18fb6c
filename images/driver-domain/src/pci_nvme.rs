//! NVMe on Xen PV: connect pcifront ([`connect`], shared with the NIC
//! setup), find every controller passed through with `pci=[...]`, map each one's BAR, bring it up and hand it to the image's
//! check.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use drivers::nvme::{Config, Nvme};
use drivers::pci::{BarKind, PciDevice, NVME_CLASS};
use log::{info, warn};
use runtime::dev::{pv_map_bar, HalClock, HalDma, Mmio};
use runtime::events::{PortNotifier, XenEvents};
use runtime::page::MappedPage;
use runtime::pv::PvMm;
use xen::evtchn::EventOps;
use xen::gnttab::GrantOps;
use xen::pcifront::{self, PciAddr, PciChannel};
use xen::wait::Notifier;
use xen::xenstore::XsClient;

/// The NVMe driver as Ferrite runs it on Xen PV.
pub type PvNvme = Nvme<Mmio, HalDma, HalClock>;

/// One NVMe controller Ferrite drives, named `nvme<index>` in PCI address order.
pub struct Controller {
    pub addr: PciAddr,
    pub nvme: PvNvme,
}

/// Brings up every NVMe controller among the functions pcifront passed
/// through (`bus`, see [`connect`]), in PCI address order, running `check` on each. Returns the controllers that
/// came up and a verdict line for `data/ferrite/nvme` (`pass: ...` when all
/// did, else `fail: ...` naming what failed).
pub fn setup<N: Notifier>(
    xs: &mut XsClient<MappedPage, N>,
    bus: &mut PciBus,
    mm: &'static spin::Mutex<PvMm>,
    use_sgl: bool,
    mut check: impl FnMut(&mut PvNvme) -> Result<String, String>,
) -> (Vec<Controller>, String) {
    let t0 = runtime::time::now();
    let mut addrs: Vec<PciAddr> = Vec::new();
    for &addr in &bus.devices {
        let mut dev = bus.chan.device(addr);
        let id = dev.config_read32(0);
        let class = dev.class_code();
        info!("pci {addr}: {:04x}:{:04x} class {:02x}{:02x}{:02x}", id & 0xFFFF, id >> 16, class.0, class.1, class.2);
        if class == NVME_CLASS {
            addrs.push(addr);
        }
    }
    addrs.sort();
    if addrs.is_empty() {
        return (Vec::new(), String::from("fail: no NVMe controller among the passed-through devices"));
    }
    let (kind, why) = crate::dma_probe::probe();
    let _ = xs.write("data/ferrite/dma", kind);
    info!("nvme: DMA strategy {kind}: {why}");
    let mut up = Vec::new();
    let mut verdicts = Vec::new();
    let mut failed = false;
    for (i, addr) in addrs.into_iter().enumerate() {
        let machine = bus.machine_addr(addr);
        match bring_up(&mut bus.chan, addr, machine, mm, kind, use_sgl).and_then(|mut n| {
            let v = check(&mut n)?;
            Ok((n, v))
        }) {
            Ok((nvme, v)) => {
                info!(
                    "nvme{i} ({addr}): check {v}; up {} ms after pcifront start",
                    (runtime::time::now() - t0) / 1_000_000
                );
                verdicts.push(format!("nvme{i} {}", v.strip_prefix("pass: ").unwrap_or(&v)));
                up.push(Controller { addr, nvme });
            }
            Err(e) => {
                warn!("nvme{i} ({addr}): {e}; not served");
                verdicts.push(format!("nvme{i} ({addr}) failed: {e}"));
                failed = true;
            }
        }
    }
    let verdict = format!("{}: {}", if failed { "fail" } else { "pass" }, verdicts.join("; "));
    (up, verdict)
}

/// pcifront's config-space channel and the functions passed through: one
/// connection that the NVMe and NIC setups share.
pub struct PciBus {
    pub chan: PciChannel<MappedPage, PortNotifier>,
    pub devices: Vec<PciAddr>,
    /// Machine addresses, same order as `devices` (see `pcifront::Connected`).
    pub machine: Vec<Option<PciAddr>>,
}

impl PciBus {
    /// The machine address of the function we see at `addr`.
    pub fn machine_addr(&self, addr: PciAddr) -> Option<PciAddr> {
        let i = self.devices.iter().position(|&d| d == addr)?;
        self.machine.get(i).copied().flatten()
    }
}

/// pcifront up: the config-space channel and the functions passed through.
pub fn connect<N: Notifier>(
    xs: &mut XsClient<MappedPage, N>,
    events: &mut XenEvents,
    grants: &mut impl GrantOps,
    mm: &'static spin::Mutex<PvMm>,
) -> Result<PciBus, String> {
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
    Ok(PciBus { chan: PciChannel::new(page, notifier, 2_000_000_000), devices: conn.devices, machine: conn.machine })
}

/// Maps one controller's BAR0 and brings it up.
fn bring_up(
    chan: &mut PciChannel<MappedPage, PortNotifier>,
    addr: PciAddr,
    machine: Option<PciAddr>,
    mm: &'static spin::Mutex<PvMm>,
    dma_kind: &str,
    use_sgl: bool,
) -> Result<PvNvme, String> {
    let t0 = runtime::time::now();
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
    let dma = crate::dma_probe::device_dma("nvme", addr, machine, mm, dma_kind, true)?;
    // 512 KiB per command (capped by the controller's MDTS): fewer splits of
    // large guest requests.
    let config = Config { io_queues: 2, queue_depth: 64, max_transfer: 512 * 1024, use_sgl, ..Config::default() };
    let nvme = Nvme::init(regs, dma, HalClock, config).map_err(|e| format!("bring-up: {e}"))?;
    let i = nvme.info().clone();
    info!(
        "nvme {addr}: {i}, {} namespace(s), up in {} ms",
        i.namespaces.len(),
        (runtime::time::now() - t0) / 1_000_000
    );
    if i.skipped_namespaces > 0 {
        warn!(
            "nvme {addr}: {} namespace(s) not served (format with metadata or blocks over 4 KiB)",
            i.skipped_namespaces
        );
    }
    Ok(nvme)
}
