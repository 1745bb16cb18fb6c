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
use drivers::poll::HybridPoll;
use log::{error, info, warn};
use netback::{NetConfig, Netback};
use netpath::local::LocalConfig;
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
/// Longest idle sleep while vifs are connected and a NIC is polled (it has
/// no event channel: received frames wait at most this long).
const NIC_IDLE_NS: u64 = 1_000_000;
/// Longest idle sleep while only Ferrite's own address (the metrics
/// endpoint) waits on the NIC.
const LOCAL_IDLE_NS: u64 = 10_000_000;
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

/// Counters of the main loop (and the backend's and the hybrid poller's,
/// copied in when logged).
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
    /// What `data/ferrite/metrics` says now (the endpoint's URL).
    metrics_listed: Option<String>,
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
    //   blk.zerocopy=0   never let the NVMe reach a guest's granted pages
    //                    directly (always copy through our own buffers)
    let zerocopy = !cmdline.split_whitespace().any(|w| w == "blk.zerocopy=0");
    //   poll=spin|hybrid   how to wait for the disk (default hybrid); also
    //                      data/ferrite/poll in xenstore, at run time
    let poll_mode = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("poll="))
        .and_then(PollMode::parse)
        .unwrap_or(PollMode::Hybrid);
    //   metrics=IP/PREFIX[,gw=IP][,port=N] | metrics=dhcp[,port=N]
    //                      Ferrite's own address on the switch's uplink side,
    //                      serving GET /metrics (Prometheus text) on port N
    //                      (default 9100); off unless given
    //   metrics.vifs=1     vifs may reach that address too (default: only
    //                      the NIC's side can)
    let metrics_cfg = match LocalConfig::from_cmdline(&cmdline) {
        Ok(c) => c,
        Err(e) => {
            warn!("metrics endpoint off: {e}");
            None
        }
    };
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
    // Zero-copy: persistent grants mapped with device access give the
    // page's machine address, which is the bus address of our NVMe DMA
    // (`Translation::PvMachineFrames`, Xen's 1:1 IOMMU map of a PV domain;
    // with PV-IOMMU the page also goes into the controllers' contexts
    // while it is mapped, `runtime::iomap`).
    let zerocopy = zerocopy && !controllers.is_empty();
    grants.set_device_map(zerocopy);
    runtime::iomap::set_grants_mapped(zerocopy);
    let contexts = crate::iommu::CONTEXTS.describe();
    if !contexts.is_empty() {
        info!("iommu: {contexts}");
        if let Err(e) = xs.write("data/ferrite/iommu", contexts.as_bytes()) {
            warn!("cannot write data/ferrite/iommu: {e:?}");
        }
    }
    info!("blkback zero-copy: {}", if zerocopy { "on (grants mapped for the device)" } else { "off" });
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
    let mut blk = Blkback::new(
        move |o: &OpenRequest<'_>| {
            opener.borrow_mut().open(o.params, o.readonly, o.holder, crate::disks::ram_disk).map_err(|e| e.to_string())
        },
        BackendConfig::default(),
        DmaBuf::zeroed,
    );
    blk.set_zerocopy(zerocopy);
    let store_port = EvtchnPort(si.store_evtchn);
    let s = Services { xs, events, grants, mm: b.mm };
    let net = Netback::new(NetConfig::default(), DmaBuf::zeroed);
    let nic_pci = nic.as_ref().map(|n| format!("{}", n.addr)).unwrap_or_default();
    let mut fabric = Fabric::new(net::switch::Config::default(), nic.map(|n| n.nic));
    if let Some(cfg) = metrics_cfg {
        match fabric.enable_local(cfg, runtime::time::now()) {
            Ok(mac) => info!(
                "metrics: own address {:?} on port {}, MAC {mac}, {}",
                cfg.addressing,
                cfg.port,
                if cfg.vifs { "reachable from vifs" } else { "reachable from the NIC only" }
            ),
            Err(e) => warn!("metrics endpoint off: switch port refused: {e:?}"),
        }
    }
    let mut d = Driver {
        s,
        blk,
        net,
        fabric,
        net_listed: String::new(),
        metrics_listed: None,
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
        // Hybrid polling: the disk's usual wait and how late naps end
        // (drivers::poll).
        let mut hp = HybridPoll::new();
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
            // Ferrite's own stack: once per pass, never blocking; the
            // metrics text is rendered only when a scraper asked for it.
            let now = runtime::time::now();
            let local = self.fabric.poll_local(now);
            if local.wants_metrics {
                let text = self.metrics_text();
                self.fabric.answer_local(&text, runtime::time::now());
            }
            busy |= local.busy;
            if let Some(before) = after_timeout.take() {
                if self.blk.stats.requests != before {
                    c.late += 1;
                }
            }
            if !busy {
                hp.idle();
                let mut ports = self.blk.ports();
                ports.extend(self.net.ports());
                ports.push(self.store_port);
                c.waits += 1;
                let now = runtime::time::now();
                let mut until = now
                    + if self.fabric.wants_polling() {
                        NIC_IDLE_NS
                    } else if self.fabric.local_wants_polling() {
                        LOCAL_IDLE_NS
                    } else {
                        MAINTENANCE_NS
                    };
                if let Some(t) = self.net.next_deadline() {
                    until = until.min(t.max(now));
                }
                if let Ok(false) = self.s.events.wait_any(&ports, until) {
                    c.timeouts += 1;
                    after_timeout = Some(self.blk.stats.requests);
                }
                self.s.events.take_pending(self.store_port);
            } else if self.blk.progressed() {
                hp.progressed(runtime::time::now());
            } else if self.blk.in_flight() > 0 {
                // Only the disk is working: in hybrid mode nap for part of
                // its usual wait (less the naps' measured lateness), then spin.
                let now = runtime::time::now();
                let nap = match self.poll_mode {
                    PollMode::Hybrid => hp.nap_until(now),
                    PollMode::Spin => {
                        hp.waiting(now);
                        None
                    }
                };
                if let Some(until) = nap {
                    // Wakes early for a ring event (a new request).
                    let ports = self.blk.ports();
                    let early = matches!(self.s.events.wait_any(&ports, until), Ok(true));
                    hp.woke(until, runtime::time::now(), early);
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
                c.naps = hp.naps;
                if c.requests != last.requests {
                    info!(
                        "io: {} requests (+{}), grant map batches +{}, persistent-grant hits +{}, grant copy batches +{}, errors +{}, idle waits +{} ({} timed out, {} then found requests), naps +{} (mean disk wait {} us, naps end {} us late, {} waits spun for it, {:?} polling)",
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
                        hp.wait_mean() / 1000,
                        hp.overshoot_mean() / 1000,
                        hp.spun,
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
    /// mappings and BARs), heap bytes in use, requests so far, grant copy
    /// batches and disk requests served by zero-copy; `iommu-pages`: pages
    /// our devices' PV-IOMMU contexts map (0 without PV-IOMMU), and
    /// `iommu-refused` the maps the hypervisor refused. Operators
    /// (and the lab's create/destroy cycles) read it to see that nothing
    /// leaks once guests are gone.
    fn publish_status(&mut self, last: &mut String) {
        let iommu = crate::iommu::CONTEXTS.counts();
        let s = format!(
            "vbds={} vifs={} net-maps={} buffers={} mapped-pages={} iommu-pages={} iommu-refused={} heap-used={} requests={} copy-batches={} zero-copy={}",
            self.blk.vbd_count(),
            self.net.vifs().filter(|v| v.connected).count(),
            self.net.mappings(),
            self.blk.buffer_bytes(),
            self.s.mm.lock().va_in_use(),
            iommu.0,
            iommu.1,
            runtime::heap_used(),
            self.blk.stats.requests,
            self.blk.stats.grant_copies,
            self.blk.stats.zero_copy
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

    /// The Prometheus text of every counter: per vbd (summed over its
    /// rings), per vif, per NVMe controller, the NIC, the switch.
    fn metrics_text(&self) -> String {
        let mut snap = metrics::Snapshot::default();
        for (be, _, st) in self.blk.ring_stats() {
            let i = match snap.vbds.iter().position(|v| v.name == be) {
                Some(i) => i,
                None => {
                    snap.vbds.push(metrics::Vbd {
                        name: String::from(be),
                        latency: metrics::Histogram {
                            bounds: blkback::LATENCY_BOUNDS_NS.to_vec(),
                            counts: alloc::vec![0; blkback::LATENCY_BOUNDS_NS.len() + 1],
                            sum_ns: 0,
                        },
                        ..metrics::Vbd::default()
                    });
                    snap.vbds.len() - 1
                }
            };
            let v = &mut snap.vbds[i];
            v.requests += st.requests;
            v.read_bytes += st.read_bytes;
            v.write_bytes += st.write_bytes;
            v.errors += st.errors;
            v.in_flight += st.in_flight;
            v.queued += st.queued;
            for (c, n) in v.latency.counts.iter_mut().zip(st.latency.counts) {
                *c = c.saturating_add(n);
            }
            v.latency.sum_ns = v.latency.sum_ns.saturating_add(st.latency.sum_ns);
        }
        let reg = self.registry.borrow();
        let mut n = 0;
        for i in 0..reg.device_count() {
            let Some(dev) = reg.device(i) else { continue };
            if let AnyDisk::Nvme(c) = dev.borrow().device() {
                let st = c.stats();
                snap.nvme.push(metrics::Nvme {
                    name: format!("nvme{n}"),
                    resets: u64::from(st.resets),
                    timeouts: u64::from(st.timeouts),
                    spurious: u64::from(st.spurious_completions),
                });
                n += 1;
            }
        }
        drop(reg);
        self.fabric.fill_metrics(&self.net, &mut snap);
        snap.heap_used = runtime::heap_used() as u64;
        metrics::render(&snap)
    }

    /// Keeps `data/ferrite/net` (the switch's gauges and counters, then
    /// one line per vif), `data/ferrite/nic` (the NIC, if any) and
    /// `data/ferrite/metrics` (the metrics URL, once the address is known)
    /// current.
    fn publish_net(&mut self) {
        let url = self.fabric.local().and_then(|l| l.url());
        if url != self.metrics_listed {
            let r = match &url {
                Some(u) => {
                    info!("metrics: serving {u}");
                    self.s.xs.write("data/ferrite/metrics", u.as_bytes())
                }
                None => self.s.xs.rm("data/ferrite/metrics"),
            };
            match r {
                Ok(()) => self.metrics_listed = url,
                Err(e) => warn!("cannot update data/ferrite/metrics: {e:?}"),
            }
        }
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
