//! Ferrite as a Xen PV driver domain: boot, the NVMe passed through, the
//! blkback serve loop, `xl shutdown`. An [`Image`] decides how the disk is
//! checked at boot and may add xenstore watches of its own.

use crate::disk::AnyDisk;
use crate::pci_nvme::PvNvme;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use blkback::xenbus::BackendConfig;
use blkback::Blkback;
use blkback::OpenRequest;
use block::{Registry, View};
use core::cell::RefCell;
use log::{error, info, warn};
use netback::{NetConfig, Netback};
use netpath::Fabric;
use runtime::dev::DmaBuf;
use runtime::events::{PortNotifier, XenEvents};
use runtime::grants::XenGrants;
use runtime::page::MappedPage;
use runtime::{pv as hpv, PvBoot};
use xen::evtchn::EventOps;
use xen::types::EvtchnPort;
use xen::xenstore::{XsClient, XsErrno, XsError};

/// The xenstore client of a PV driver domain.
pub type Xs = XsClient<MappedPage, PortNotifier>;

/// How often the backend's periodic work runs (and the longest idle sleep).
const MAINTENANCE_NS: u64 = 250_000_000;
/// Hybrid polling naps only when the disk usually takes at least this long
/// (shorter naps cost more than they free: Xen's timer slop is 50 us).
const NAP_WORTH_NS: u64 = 40_000;
/// Longest nap while disk commands are outstanding.
const NAP_MAX_NS: u64 = 2_000_000;
/// Longest idle sleep while vifs are connected and a NIC is polled (it has
/// no event channel: received frames wait at most this long).
const NIC_IDLE_NS: u64 = 1_000_000;
/// How often I/O counters are logged (only while requests arrive).
const STATS_NS: u64 = 5_000_000_000;
/// Per-request xenstore deadline.
const XS_TIMEOUT_NS: u64 = 10_000_000_000;

/// What an image adds to the shared driver domain.
pub trait Image {
    /// Checks the NVMe controller after bring-up, before it is served:
    /// `Ok(verdict)` (written to `data/ferrite/nvme`, should start with
    /// `pass`) or `Err(why)` (then the RAM disk is served instead).
    fn check_nvme(&mut self, nvme: &mut PvNvme) -> Result<String, String>;
    /// Runs once after the backend started, before `data/ferrite/state = ready`.
    fn before_ready(&mut self, _s: &mut Services) {}
    /// Extra xenstore watches as (path, token); events go to [`Image::on_watch`].
    fn watches(&self) -> &'static [(&'static str, &'static str)] {
        &[]
    }
    /// A watch event for one of [`Image::watches`].
    fn on_watch(&mut self, _s: &mut Services, _token: &str) {}
}

/// The Xen services of the domain, lent to the [`Image`] hooks.
pub struct Services {
    pub xs: Xs,
    pub events: XenEvents,
    pub grants: XenGrants<'static>,
    pub mm: &'static spin::Mutex<hpv::PvMm>,
}

/// How the main loop waits while only disk commands are outstanding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PollMode {
    /// Spin on the completion queues (lowest latency on a dedicated CPU).
    Spin,
    /// Nap for half the mean disk wait, then spin (Linux's hybrid polling):
    /// frees the CPU for others — on a shared host, or under emulation where
    /// the device itself needs the CPU — while adding little latency.
    Hybrid,
}

impl PollMode {
    fn parse(s: &str) -> Option<PollMode> {
        match s.trim() {
            "spin" => Some(PollMode::Spin),
            "hybrid" => Some(PollMode::Hybrid),
            _ => None,
        }
    }
}

/// Counters of the main loop (and the backend's, copied in when logged).
#[derive(Clone, Copy, Default)]
struct LoopCounters {
    requests: u64,
    maps: u64,
    hits: u64,
    copies: u64,
    errors: u64,
    waits: u64,
    timeouts: u64,
    late: u64,
    naps: u64,
}

struct Driver<I: Image> {
    s: Services,
    blk: Blkback<MappedPage, View<AnyDisk>>,
    /// Every vif assigned to us.
    net: Netback<MappedPage, DmaBuf>,
    /// The switch between the vifs and the NIC (if one was passed through).
    fabric: Fabric<crate::PvNic>,
    /// What `data/ferrite/net` says now.
    net_listed: String,
    /// The NIC's PCI address, and what `data/ferrite/nic` says now.
    nic_pci: String,
    nic_listed: String,
    /// Every disk found at boot (and RAM disks vbds named): the one lookup
    /// from a vbd's target to what it may reach.
    registry: Rc<RefCell<Registry<AnyDisk>>>,
    /// What `data/ferrite/disks` says now.
    disks_listed: String,
    /// What `data/ferrite/last-error` says now.
    last_error: Option<String>,
    store_port: EvtchnPort,
    poll_mode: PollMode,
    image: I,
}

/// Boots the driver domain and serves guests until `xl shutdown`.
pub fn run<I: Image>(b: PvBoot, mut image: I) -> ! {
    let t0 = runtime::time::now();
    let si = &b.start_info;
    info!(
        "Ferrite {} booting on Xen PV ({}), {} pages ({} MiB), heap {} KiB, {} pages free",
        env!("CARGO_PKG_VERSION"),
        si.magic_str(),
        si.nr_pages,
        si.nr_pages / 256,
        b.heap_bytes / 1024,
        b.mm.lock().free_pages()
    );
    // Room for bursts: the toolstack writes a dozen nodes per device.
    let mut xs = XsClient::new(b.xs_page, b.xs_notifier, XS_TIMEOUT_NS).with_event_capacity(512);
    let mut events = b.events;
    let mut grants = match XenGrants::new(b.mm) {
        Ok(g) => g,
        Err(e) => {
            error!("grant table setup failed: {e:?}");
            runtime::crash();
        }
    };
    let domid = match xs.read_string("domid") {
        Ok(s) => s,
        Err(e) => {
            error!("cannot read my domid from xenstore: {e:?}");
            runtime::crash();
        }
    };
    info!("domain {domid}: xenstore connected, grant table and event channels ready");

    // Options from the xl config's `extra=` (space-separated):
    //   nvme.sgl=0   data pointers as PRP lists even if the controller does SGLs
    let cmdline = String::from(si.cmdline());
    if !cmdline.trim().is_empty() {
        info!("command line: {cmdline}");
    }
    let use_sgl = !cmdline.split_whitespace().any(|w| w == "nvme.sgl=0");
    //   poll=spin|hybrid   how to wait for the disk (default hybrid); also
    //                      data/ferrite/poll in xenstore, at run time
    let poll_mode = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("poll="))
        .and_then(PollMode::parse)
        .unwrap_or(PollMode::Hybrid);
    let mut controllers = Vec::new();
    let mut nic: Option<crate::pci_nic::NicDevice> = None;
    match xs.directory("device/pci") {
        Ok(devs) if devs.iter().any(|x| x == "0") => {
            match crate::pci_nvme::connect(&mut xs, &mut events, &mut grants, b.mm) {
                Ok(mut bus) => {
                    let (c, verdict) =
                        crate::pci_nvme::setup(&mut xs, &mut bus, b.mm, use_sgl, |n| image.check_nvme(n));
                    if let Err(e) = xs.write("data/ferrite/nvme", verdict.as_bytes()) {
                        warn!("cannot report the NVMe check: {e:?}");
                    }
                    controllers = c;
                    // The NIC is brought up and kept; the switch and netback
                    // are not wired to it yet.
                    nic = crate::pci_nic::setup(&mut bus, b.mm);
                }
                Err(e) => {
                    warn!("nvme: {e}");
                    if let Err(e) = xs.write("data/ferrite/nvme", format!("fail: {e}").as_bytes()) {
                        warn!("cannot report the NVMe check: {e:?}");
                    }
                }
            }
        }
        _ => info!("no PCI device passed through (device/pci/0 absent): not driving NVMe"),
    }
    let registry = Rc::new(RefCell::new(crate::disks::register(controllers)));
    let listing = registry.borrow().describe();
    if listing.is_empty() {
        warn!("no disks: every vbd must name a RAM disk (target=ram:SIZE) until an NVMe controller is passed through");
    }
    for line in listing.lines() {
        info!("disk {line}");
    }
    if let Err(e) = xs.write("data/ferrite/disks", listing.as_bytes()) {
        warn!("cannot write data/ferrite/disks: {e:?}");
    }
    let opener = registry.clone();
    let blk = Blkback::new(
        move |o: &OpenRequest<'_>| {
            opener.borrow_mut().open(o.params, o.readonly, o.holder, crate::disks::ram_disk).map_err(|e| e.to_string())
        },
        BackendConfig::default(),
        DmaBuf::zeroed,
    );
    let store_port = EvtchnPort(si.store_evtchn);
    let s = Services { xs, events, grants, mm: b.mm };
    let net = Netback::new(NetConfig::default(), DmaBuf::zeroed);
    let nic_pci = nic.as_ref().map(|n| format!("{}", n.addr)).unwrap_or_default();
    let fabric = Fabric::new(net::switch::Config::default(), nic.map(|n| n.nic));
    let mut d = Driver {
        s,
        blk,
        net,
        fabric,
        net_listed: String::new(),
        nic_pci,
        nic_listed: String::new(),
        registry,
        store_port,
        poll_mode,
        image,
        disks_listed: listing,
        last_error: None,
    };
    info!("polling mode: {poll_mode:?}");
    if let Err(e) = d.blk.start(&mut d.s.xs) {
        error!("cannot watch backend/vbd: {e:?}");
    }
    if let Err(e) = d.net.start(&mut d.s.xs) {
        error!("cannot watch backend/vif: {e:?}");
    }
    d.publish_net();
    d.image.before_ready(&mut d.s);
    let own = [("control/shutdown", "shutdown"), ("data/ferrite/poll", "poll")];
    for (path, token) in own.iter().chain(d.image.watches()) {
        if let Err(e) = d.s.xs.watch(path, token) {
            error!("cannot watch {path}: {e:?}");
        }
    }
    if let Err(e) = d.s.xs.write("data/ferrite/state", "ready") {
        error!("cannot write data/ferrite/state: {e:?}");
    }
    let ms = (runtime::time::now() - t0) / 1_000_000;
    info!("ready ({ms} ms after entry)");
    d.main_loop()
}

impl<I: Image> Driver<I> {
    /// The polling loop: xenstore watch events, then every ring and the
    /// disk; when nothing is in flight and no ring has work, block on the
    /// event channels (xenstore and every ring) until the next maintenance.
    /// While only disk commands are outstanding it spins, or, in hybrid
    /// mode, first naps for half the usual device wait (see [`PollMode`]).
    fn main_loop(&mut self) -> ! {
        let mut errors = 0u32;
        let mut dropped = 0u64;
        let mut next_maintenance = 0u64;
        let mut status = String::new();
        let mut c = LoopCounters::default();
        let mut last = LoopCounters::default();
        let mut next_stats = 0u64;
        // Requests found right after a wait that timed out: a frontend
        // published them without an event reaching us (a lost wake-up).
        let mut after_timeout: Option<u64> = None;
        // Hybrid polling: when the current wait for the disk began, whether
        // we napped in it, and the running mean of such waits (ns).
        let mut disk_wait_since: Option<u64> = None;
        let mut napped = false;
        let mut disk_wait_mean = 0u64;
        loop {
            // Bounded: the client's event queue is bounded.
            for _ in 0..64 {
                match self.s.xs.poll_watch() {
                    Ok(Some(ev)) => self.dispatch(&ev.token, &ev.path),
                    Ok(None) => break,
                    Err(e) => {
                        errors += 1;
                        if errors <= 5 {
                            warn!("xenstore: {e:?}");
                        }
                        if matches!(e, XsError::RingBroken) {
                            error!("xenstore ring is broken; stopping");
                            runtime::crash();
                        }
                        break;
                    }
                }
            }
            if self.s.xs.dropped_events() != dropped {
                dropped = self.s.xs.dropped_events();
                warn!("xenstore watch events were dropped ({dropped} so far): rescanning devices");
                self.blk.request_rescan();
                self.net.request_rescan();
            }
            let mut busy = self.blk.poll(&mut self.s.grants, &mut self.s.events);
            busy |= self.fabric.poll(&mut self.net, &mut self.s.grants, &mut self.s.events);
            if let Some(before) = after_timeout.take() {
                if self.blk.stats.requests != before {
                    c.late += 1;
                }
            }
            if !busy {
                disk_wait_since = None;
                let mut ports = self.blk.ports();
                ports.extend(self.net.ports());
                ports.push(self.store_port);
                c.waits += 1;
                let now = runtime::time::now();
                let mut until = now + if self.fabric.wants_polling() { NIC_IDLE_NS } else { MAINTENANCE_NS };
                if let Some(t) = self.net.next_deadline() {
                    until = until.min(t.max(now));
                }
                if let Ok(false) = self.s.events.wait_any(&ports, until) {
                    c.timeouts += 1;
                    after_timeout = Some(self.blk.stats.requests);
                }
                self.s.events.take_pending(self.store_port);
            } else if self.blk.progressed() {
                if let Some(t0) = disk_wait_since.take() {
                    let sample = runtime::time::now().saturating_sub(t0);
                    disk_wait_mean =
                        if disk_wait_mean == 0 { sample } else { disk_wait_mean - disk_wait_mean / 8 + sample / 8 };
                }
            } else if self.blk.in_flight() > 0 {
                // Only the disk is working.
                let now = runtime::time::now();
                if disk_wait_since.is_none() {
                    disk_wait_since = Some(now);
                    napped = false;
                }
                if self.poll_mode == PollMode::Hybrid && !napped && disk_wait_mean >= NAP_WORTH_NS {
                    napped = true;
                    c.naps += 1;
                    let nap = (disk_wait_mean / 2).min(NAP_MAX_NS);
                    // Wakes early for a ring event (a new request).
                    let ports = self.blk.ports();
                    let _ = self.s.events.wait_any(&ports, now + nap);
                }
            }
            let now = runtime::time::now();
            if now >= next_stats {
                next_stats = now + STATS_NS;
                let s = &self.blk.stats;
                c.requests = s.requests;
                c.maps = s.grant_maps;
                c.hits = s.persistent_hits;
                c.copies = s.grant_copies;
                c.errors = s.errors;
                if c.requests != last.requests {
                    info!(
                        "io: {} requests (+{}), grant map batches +{}, persistent-grant hits +{}, grant copy batches +{}, errors +{}, idle waits +{} ({} timed out, {} then found requests), naps +{} (mean disk wait {} us, {:?} polling)",
                        c.requests,
                        c.requests - last.requests,
                        c.maps - last.maps,
                        c.hits - last.hits,
                        c.copies - last.copies,
                        c.errors - last.errors,
                        c.waits - last.waits,
                        c.timeouts - last.timeouts,
                        c.late - last.late,
                        c.naps - last.naps,
                        disk_wait_mean / 1000,
                        self.poll_mode
                    );
                }
                last = c;
            }
            if runtime::time::now() >= next_maintenance {
                next_maintenance = runtime::time::now() + MAINTENANCE_NS;
                self.blk.maintenance(&mut self.s.xs, &mut self.s.grants, &mut self.s.events);
                self.net.maintenance(&mut self.s.xs, &mut self.s.grants, &mut self.s.events);
                self.publish_status(&mut status);
                self.publish_disks();
                self.publish_net();
            }
        }
    }

    /// Writes `data/ferrite/status` when it changed: served devices, disk
    /// buffer bytes held, pages of the mapping window in use (grant
    /// mappings and BARs), heap bytes in use, requests so far. Operators
    /// (and the lab's create/destroy cycles) read it to see that nothing
    /// leaks once guests are gone.
    fn publish_status(&mut self, last: &mut String) {
        let s = format!(
            "vbds={} vifs={} net-maps={} buffers={} mapped-pages={} heap-used={} requests={} copy-batches={}",
            self.blk.vbd_count(),
            self.net.vifs().filter(|v| v.connected).count(),
            self.net.mappings(),
            self.blk.buffer_bytes(),
            self.s.mm.lock().va_in_use(),
            runtime::heap_used(),
            self.blk.stats.requests,
            self.blk.stats.grant_copies
        );
        if s != *last {
            if let Err(e) = self.s.xs.write("data/ferrite/status", s.as_bytes()) {
                warn!("cannot write data/ferrite/status: {e:?}");
            }
            *last = s;
        }
    }

    /// Keeps `data/ferrite/disks` (who uses which disk) and
    /// `data/ferrite/last-error` (the last vbd that could not be served, and
    /// why: libxl does not show the backend's reason) current.
    fn publish_disks(&mut self) {
        let listing = {
            let mut reg = self.registry.borrow_mut();
            reg.prune();
            reg.describe()
        };
        if listing != self.disks_listed {
            if let Err(e) = self.s.xs.write("data/ferrite/disks", listing.as_bytes()) {
                warn!("cannot write data/ferrite/disks: {e:?}");
            }
            self.disks_listed = listing;
        }
        let err = self.blk.last_error().map(String::from);
        if err.is_some() && err != self.last_error {
            if let Some(e) = &err {
                if let Err(x) = self.s.xs.write("data/ferrite/last-error", e.as_bytes()) {
                    warn!("cannot write data/ferrite/last-error: {x:?}");
                }
            }
            self.last_error = err;
        }
    }

    /// Keeps `data/ferrite/net` (the switch's gauges and counters, then
    /// one line per vif) and `data/ferrite/nic` (the NIC, if any) current.
    fn publish_net(&mut self) {
        let listing = self.fabric.describe(&self.net);
        if listing != self.net_listed {
            if let Err(e) = self.s.xs.write("data/ferrite/net", listing.as_bytes()) {
                warn!("cannot write data/ferrite/net: {e:?}");
            }
            self.net_listed = listing;
        }
        if let Some(nic) = self.fabric.describe_nic(&self.nic_pci, "virtio-net") {
            if nic != self.nic_listed {
                if let Err(e) = self.s.xs.write("data/ferrite/nic", nic.as_bytes()) {
                    warn!("cannot write data/ferrite/nic: {e:?}");
                }
                self.nic_listed = nic;
            }
        }
    }

    fn dispatch(&mut self, token: &str, path: &str) {
        match token {
            "shutdown" => self.on_shutdown(),
            "poll" => self.on_poll_mode(),
            t if t.starts_with(blkback::WATCH_PREFIX) => {
                self.blk.on_watch(&mut self.s.xs, &mut self.s.grants, &mut self.s.events, t)
            }
            t if t.starts_with(netback::WATCH_PREFIX) => {
                self.net.on_watch(&mut self.s.xs, &mut self.s.grants, &mut self.s.events, t)
            }
            t if self.image.watches().iter().any(|(_, tok)| *tok == t) => self.image.on_watch(&mut self.s, t),
            other => warn!("watch event with unknown token {other:?} for {path}"),
        }
    }

    /// `data/ferrite/poll` = `spin` | `hybrid` switches the polling mode.
    fn on_poll_mode(&mut self) {
        let Ok(v) = self.s.xs.read_string("data/ferrite/poll") else { return };
        match PollMode::parse(&v) {
            Some(m) if m != self.poll_mode => {
                info!("polling mode: {m:?} (was {:?}; data/ferrite/poll)", self.poll_mode);
                self.poll_mode = m;
            }
            Some(_) => {}
            None => warn!("data/ferrite/poll = {v:?} ignored: spin or hybrid"),
        }
    }

    fn on_shutdown(&mut self) {
        let req = match self.s.xs.read_string("control/shutdown") {
            Ok(s) => s,
            Err(XsError::Xs(XsErrno::NoEnt)) => return,
            Err(e) => {
                warn!("cannot read control/shutdown: {e:?}");
                return;
            }
        };
        match req.as_str() {
            "" => {}
            "poweroff" | "halt" => {
                info!("poweroff (control/shutdown = {req})");
                let reg = self.registry.borrow();
                for i in 0..reg.device_count() {
                    let Some(dev) = reg.device(i) else { continue };
                    if let AnyDisk::Nvme(n) = dev.borrow_mut().device_mut() {
                        if let Err(e) = n.shutdown() {
                            warn!("nvme shutdown: {e:?}");
                        }
                    }
                }
                drop(reg);
                let _ = self.s.xs.write("control/shutdown", "");
                let _ = self.s.xs.write("data/ferrite/state", "closing");
                runtime::poweroff();
            }
            other => {
                warn!("shutdown request {other:?} refused: Ferrite only supports poweroff");
                let _ = self.s.xs.write("control/shutdown", "");
            }
        }
    }
}
