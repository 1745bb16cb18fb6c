//! Ferrite as a Xen PV driver domain.

use crate::disk::AnyDisk;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use blkback::xenbus::BackendConfig;
use blkback::Blkback;
use log::{error, info, warn};
use runtime::dev::DmaBuf;
use runtime::events::{PortNotifier, XenEvents};
use runtime::grants::XenGrants;
use runtime::page::MappedPage;
use runtime::{pv as hpv, PvBoot};
use xen::evtchn::EventOps;
use xen::gnttab::{CopyEnd, CopyOp, GrantOps, MapRequest};
use xen::shmem::SharedMem;
use xen::types::{DomId, EvtchnPort, GrantRef, Pfn};
use xen::xenstore::{XsClient, XsErrno, XsError};

type Xs = XsClient<MappedPage, PortNotifier>;

/// Size of the RAM disk served when no NVMe controller is passed through.
const RAMDISK_BYTES: u64 = 4 << 20;
/// How often the backend's periodic work runs (and the longest idle sleep).
const MAINTENANCE_NS: u64 = 250_000_000;
/// Hybrid polling naps only when the disk usually takes at least this long
/// (shorter naps cost more than they free: Xen's timer slop is 50 us).
const NAP_WORTH_NS: u64 = 40_000;
/// Longest nap while disk commands are outstanding.
const NAP_MAX_NS: u64 = 2_000_000;
/// How often I/O counters are logged (only while requests arrive).
const STATS_NS: u64 = 5_000_000_000;
/// Per-request xenstore deadline.
const XS_TIMEOUT_NS: u64 = 10_000_000_000;
/// How long the lab's event-channel check waits for dom0's reply.
const EVTCHN_TEST_TIMEOUT_NS: u64 = 20_000_000_000;

/// Byte `i` of the page dom0 grants us in the lab check.
pub fn dom0_pattern(i: usize) -> u8 {
    ((i * 131) + 17 + (i >> 8)) as u8
}
/// Byte `i` of the page we grant dom0.
pub fn our_pattern(i: usize) -> u8 {
    ((i * 29) + 5) as u8
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

struct Driver {
    xs: Xs,
    events: XenEvents,
    grants: XenGrants<'static>,
    mm: &'static spin::Mutex<hpv::PvMm>,
    blk: Blkback<MappedPage, AnyDisk>,
    store_port: EvtchnPort,
    poll_mode: PollMode,
}

pub fn run(b: PvBoot) -> ! {
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
    let mut nvme = None;
    match xs.directory("device/pci") {
        Ok(devs) if devs.iter().any(|x| x == "0") => {
            let (n, verdict) = crate::pci_nvme::setup(&mut xs, &mut events, &mut grants, b.mm, 128, use_sgl);
            if let Err(e) = xs.write("data/ferrite/nvme", verdict.as_bytes()) {
                warn!("cannot report the NVMe self-test: {e:?}");
            }
            nvme = n;
        }
        _ => info!("no PCI device passed through (device/pci/0 absent): not driving NVMe"),
    }
    let disk = match nvme {
        Some(n) => AnyDisk::Nvme(n),
        None => AnyDisk::Ram(drivers::block::RamDisk::new(512, RAMDISK_BYTES / 512, 1, 64)),
    };
    info!("serving guests from the {} ({} sectors)", disk.describe(), {
        use drivers::block::BlockDevice;
        disk.capacity() * disk.block_size() as u64 / 512
    });
    let blk = Blkback::new(disk, BackendConfig::default(), DmaBuf::zeroed);
    let store_port = EvtchnPort(si.store_evtchn);
    let mut d = Driver { xs, events, grants, mm: b.mm, blk, store_port, poll_mode };
    info!("polling mode: {poll_mode:?}");
    if let Err(e) = d.self_checks() {
        warn!("self-check: {e}");
    }
    if let Err(e) = d.blk.start(&mut d.xs) {
        error!("cannot watch backend/vbd: {e:?}");
    }
    if let Err(e) = d.offer_page_to_dom0() {
        warn!("could not grant a page to dom0: {e}");
    }
    for (path, token) in
        [("control/shutdown", "shutdown"), ("data/ferrite/test/request", "test"), ("data/ferrite/poll", "poll")]
    {
        if let Err(e) = d.xs.watch(path, token) {
            error!("cannot watch {path}: {e:?}");
        }
    }
    if let Err(e) = d.xs.write("data/ferrite/state", "ready") {
        error!("cannot write data/ferrite/state: {e:?}");
    }
    let ms = (runtime::time::now() - t0) / 1_000_000;
    info!("ready ({ms} ms after entry)");
    d.main_loop()
}

impl Driver {
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
                match self.xs.poll_watch() {
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
            if self.xs.dropped_events() != dropped {
                dropped = self.xs.dropped_events();
                warn!("xenstore watch events were dropped ({dropped} so far): rescanning devices");
                self.blk.request_rescan();
            }
            let busy = self.blk.poll(&mut self.grants, &mut self.events);
            if let Some(before) = after_timeout.take() {
                if self.blk.stats.requests != before {
                    c.late += 1;
                }
            }
            if !busy {
                disk_wait_since = None;
                let mut ports = self.blk.ports();
                ports.push(self.store_port);
                c.waits += 1;
                if let Ok(false) = self.events.wait_any(&ports, runtime::time::now() + MAINTENANCE_NS) {
                    c.timeouts += 1;
                    after_timeout = Some(self.blk.stats.requests);
                }
                self.events.take_pending(self.store_port);
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
                    let _ = self.events.wait_any(&ports, now + nap);
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
                self.blk.maintenance(&mut self.xs, &mut self.grants, &mut self.events);
                self.publish_status(&mut status);
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
            "vbds={} buffers={} mapped-pages={} heap-used={} requests={} copy-batches={}",
            self.blk.vbd_count(),
            self.blk.buffer_bytes(),
            self.mm.lock().va_in_use(),
            runtime::heap_used(),
            self.blk.stats.requests,
            self.blk.stats.grant_copies
        );
        if s != *last {
            if let Err(e) = self.xs.write("data/ferrite/status", s.as_bytes()) {
                warn!("cannot write data/ferrite/status: {e:?}");
            }
            *last = s;
        }
    }

    fn dispatch(&mut self, token: &str, path: &str) {
        match token {
            "shutdown" => self.on_shutdown(),
            "test" => self.on_test_request(),
            "poll" => self.on_poll_mode(),
            t if t.starts_with(blkback::WATCH_PREFIX) => {
                self.blk.on_watch(&mut self.xs, &mut self.grants, &mut self.events, t)
            }
            other => warn!("watch event with unknown token {other:?} for {path}"),
        }
    }

    /// `data/ferrite/poll` = `spin` | `hybrid` switches the polling mode.
    fn on_poll_mode(&mut self) {
        let Ok(v) = self.xs.read_string("data/ferrite/poll") else { return };
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
        let req = match self.xs.read_string("control/shutdown") {
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
                if let AnyDisk::Nvme(n) = self.blk.disk_mut() {
                    if let Err(e) = n.shutdown() {
                        warn!("nvme shutdown: {e:?}");
                    }
                }
                let _ = self.xs.write("control/shutdown", "");
                let _ = self.xs.write("data/ferrite/state", "closing");
                runtime::poweroff();
            }
            other => {
                warn!("shutdown request {other:?} refused: Ferrite only supports poweroff");
                let _ = self.xs.write("control/shutdown", "");
            }
        }
    }

    fn read_u32(&mut self, path: &str) -> Result<u32, String> {
        let s = self.xs.read_string(path).map_err(|e| format!("read {path}: {e:?}"))?;
        s.trim().parse::<u32>().map_err(|_| format!("{path} is not a number: {s:?}"))
    }

    fn on_test_request(&mut self) {
        match self.xs.read_string("data/ferrite/test/request") {
            Ok(s) if s == "go" => {}
            _ => return, // initial watch event or cleared
        }
        let _ = self.xs.write("data/ferrite/test/request", "taken");
        let grant = self.read_u32("data/ferrite/test/gref").map(GrantRef);
        let port = self.read_u32("data/ferrite/test/port").map(EvtchnPort);
        let verdict = match &grant {
            Ok(g) => self.check_grant(*g),
            Err(e) => Err(e.clone()),
        };
        report(&mut self.xs, "grant", &verdict);
        let verdict = match port {
            Ok(p) => self.check_evtchn(p),
            Err(e) => Err(e),
        };
        report(&mut self.xs, "evtchn", &verdict);
    }

    /// Maps dom0's page, checks its pattern, copies it with GNTTABOP_copy,
    /// signs it with `ferrite!` and unmaps it.
    fn check_grant(&mut self, gref: GrantRef) -> Result<String, String> {
        let req = [MapRequest { dom: DomId::DOM0, gref, readonly: false }];
        let m = self.grants.map_batch(&req).remove(0).map_err(|e| format!("map gref {gref}: {e:?}"))?;
        let page = self.grants.page(&m);
        let mut buf = vec![0u8; 4096];
        page.read(0, &mut buf);
        let bad = (0..4096).find(|&i| buf[i] != dom0_pattern(i));
        let copy = self.copy_check(gref);
        if bad.is_none() {
            page.write(0, b"ferrite!");
        }
        let un = self.grants.unmap_batch(&[m]).remove(0);
        if let Some(i) = bad {
            return Err(format!("byte {i} is {:#x}, expected {:#x}", buf[i], dom0_pattern(i)));
        }
        un.map_err(|e| format!("unmap: {e:?}"))?;
        let copied = copy?;
        info!("grant check: mapped dom0 gref {gref}, 4096 bytes match, grant copy of {copied} bytes matches, unmapped");
        Ok(String::from("ok"))
    }

    fn copy_check(&mut self, gref: GrantRef) -> Result<usize, String> {
        let pfn = self.mm.lock().alloc_frame().map_err(|e| format!("no frame: {e:?}"))?;
        let op = CopyOp {
            src: CopyEnd::Grant { dom: DomId::DOM0, gref, offset: 8 },
            dst: CopyEnd::Local { pfn, offset: 0 },
            len: 4088,
        };
        let r = self.grants.copy_batch(&[op]).remove(0);
        let local = self.mm.lock().frame_page(pfn).map_err(|e| format!("{e:?}"))?;
        let mut buf = vec![0u8; 4088];
        local.read(0, &mut buf);
        self.mm.lock().free_frame(pfn);
        r.map_err(|e| format!("grant copy: {e:?}"))?;
        match (0..4088).find(|&i| buf[i] != dom0_pattern(i + 8)) {
            Some(i) => Err(format!("grant copy: byte {} differs", i + 8)),
            None => Ok(4088),
        }
    }

    /// Binds to dom0's port, sends one event and waits for one back.
    fn check_evtchn(&mut self, remote: EvtchnPort) -> Result<String, String> {
        let local = self
            .events
            .bind_interdomain(DomId::DOM0, remote)
            .map_err(|e| format!("bind to dom0 port {remote}: {e:?}"))?;
        self.events.take_pending(local);
        let _ = self.xs.write("data/ferrite/test/evtchn", "sent");
        let r = self.events.send(local).map_err(|e| format!("send: {e:?}")).and_then(|()| {
            let deadline = runtime::time::now() + EVTCHN_TEST_TIMEOUT_NS;
            match self.events.wait_any(&[local], deadline) {
                Ok(true) => {
                    self.events.take_pending(local);
                    Ok(String::from("ok"))
                }
                Ok(false) => Err(String::from("timeout waiting for dom0's event")),
                Err(e) => Err(format!("poll: {e:?}")),
            }
        });
        let _ = self.events.close(local);
        if r.is_ok() {
            info!("event channel check: local port {local} <-> dom0 port {remote}, round trip ok");
        }
        r
    }

    /// Grants dom0 read access to one of our pages holding a pattern.
    fn offer_page_to_dom0(&mut self) -> Result<(), String> {
        let pfn: Pfn = self.mm.lock().alloc_frame().map_err(|e| format!("{e:?}"))?;
        let page = self.mm.lock().frame_page(pfn).map_err(|e| format!("{e:?}"))?;
        let data: alloc::vec::Vec<u8> = (0..4096).map(our_pattern).collect();
        page.write(0, &data);
        let gref = self.grants.grant_access(DomId::DOM0, pfn, true).map_err(|e| format!("{e:?}"))?;
        self.xs.write("data/ferrite/test/our-gref", format!("{gref}")).map_err(|e| format!("{e:?}"))?;
        info!("granted page (pfn {}) to dom0 as gref {gref}", pfn.0);
        Ok(())
    }

    /// Exercises error paths against the real hypervisor and xenstored:
    /// each must come back as a typed error, never a hang or a panic.
    fn self_checks(&mut self) -> Result<(), String> {
        match self.xs.read_string("data/ferrite/no-such-node") {
            Err(XsError::Xs(e)) => info!("self-check: xenstore error reply for a missing node -> {e:?}"),
            other => return Err(format!("missing node read gave {other:?}")),
        }
        match self.events.send(EvtchnPort(4000)) {
            Err(e) => info!("self-check: EVTCHNOP_send on an unbound port -> {e}"),
            Ok(()) => return Err(String::from("send on an unbound port succeeded")),
        }
        match self.grants.map_batch(&[MapRequest { dom: DomId(0x7FF0), gref: GrantRef(1), readonly: true }]).remove(0) {
            Err(e) => info!("self-check: mapping a grant of an invalid domain -> {e:?}"),
            Ok(m) => {
                let _ = self.grants.unmap_batch(&[m]);
                return Err(String::from("bogus grant map succeeded"));
            }
        }
        Ok(())
    }
}

fn report(xs: &mut Xs, key: &str, verdict: &Result<String, String>) {
    let value = match verdict {
        Ok(v) => v.clone(),
        Err(e) => {
            warn!("{key} check failed: {e}");
            format!("fail: {e}")
        }
    };
    if let Err(e) = xs.write(&format!("data/ferrite/test/{key}"), value) {
        warn!("cannot report {key}: {e:?}");
    }
}
