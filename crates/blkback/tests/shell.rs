//! Host tests of the blkback I/O shell (`blkback::Blkback`)
//! against a simulated toolstack and blkfront.
//!
//! Everything runs on the domain fakes: one [`FakeXenstored`] serving the
//! backend domain (the toolstack and the frontends write into it as dom0
//! would, with the permissions the toolstack sets), one [`FakeGrants`] hub
//! and one [`FakeEvents`] hub shared by the backend and the frontend domains.
//! A frontend grants its ring and data pages, allocates unbound event
//! channels, writes its keys and states, produces blkif requests on its own
//! view of the shared pages and consumes responses only when its event
//! channel fired (so a lost notification stalls the test).
//!
//! The backend is driven the way `ferrite`'s main loop drives it: watch
//! events from the backend's own `XsClient` go to `on_watch`, then `poll`,
//! until nothing is busy.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use proptest::prelude::*;

use blkback::abi::{
    self, Abi, IndirectX32, IndirectX64, RequestX32, RequestX64, Response, BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE,
    BLKIF_OP_INDIRECT, BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY,
    MAX_REQUEST_SIZE,
};
use blkback::ring::PagesMem;
use blkback::ring::{ring_size, REQ_EVENT, REQ_PROD, RING_HEADER, RSP_EVENT, RSP_PROD};
use blkback::xenbus::BackendConfig;
use blkback::{Blkback, MAX_PERSISTENT_PER_RING, WATCH_PREFIX};
use drivers::block::{BlockCompletion, BlockDevice, BlockRequest, Features, RamDisk, Token};
use xen::evtchn::fake::FakeEvents;
use xen::evtchn::EventOps;
use xen::gnttab::fake::{FakeGrants, FrameBuf};
use xen::gnttab::{GrantError, GrantOps};
use xen::shmem::{SharedMem, VecShared};
use xen::types::{DomId, EvtchnPort, GrantRef, Pfn};
use xen::xenstore::fake::{FakePage, FakeXenstored, Fault};
use xen::xenstore::{Perm, PermKind, XsClient};

const PAGE: usize = 4096;
const SECT: usize = 512;
/// The driver domain running Ferrite.
const BE: DomId = DomId(1);
/// Virtual device number of `xvda` (blkif.h: 202 << 8).
const DEV: u32 = 51712;
/// Disk size in 512-byte sectors (2 MiB: room for a few 256-segment requests).
const DISK_SECTORS: u64 = 4096;

type Req = [u8; MAX_REQUEST_SIZE];

// ---------------------------------------------------------------------------
// Logging: shell warnings show up in a failing test's output.

struct StderrLog;
impl log::Log for StderrLog {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        eprintln!("[{}] {}", r.level(), r.args());
    }
    fn flush(&self) {}
}
static LOGGER: StderrLog = StderrLog;

fn init_log() {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Info);
}

// ---------------------------------------------------------------------------
// A disk whose completions lag behind submission, with a log of what it saw.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DiskEv {
    Submit(char, u64),
    Done(char, u64),
}

/// Wraps a [`RamDisk`]: data takes effect at submit, but each completion is
/// only handed out after `delay` further polls of its queue, and each queue
/// holds at most `depth` requests (then `QueueFull`).
struct SlowDisk {
    inner: RamDisk<Buf>,
    delay: u32,
    depth: usize,
    held: Vec<VecDeque<(u32, BlockCompletion<Buf>)>>,
    log: Vec<DiskEv>,
    /// A hung device: nothing completes; each poll lets a second of
    /// simulated time pass on `clock` (the event hub's clock, which the
    /// shell's drain deadline reads).
    stuck: bool,
    clock: Option<FakeEvents>,
    /// Like the NVMe driver: buffers above this transfer limit are refused.
    limit: Option<usize>,
    /// The largest buffer submitted.
    largest: usize,
}

impl SlowDisk {
    fn new(sectors: u64, queues: u16, delay: u32, depth: usize) -> Self {
        SlowDisk {
            inner: RamDisk::new(512, sectors, queues, 4),
            delay,
            depth,
            held: (0..queues).map(|_| VecDeque::new()).collect(),
            log: Vec::new(),
            stuck: false,
            clock: None,
            limit: None,
            largest: 0,
        }
    }

    /// This disk with a transfer limit of `limit` bytes.
    fn with_limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }
}

fn kind(r: &BlockRequest<Buf>) -> (char, u64) {
    match r {
        BlockRequest::Read { lba, .. } => ('R', *lba),
        BlockRequest::Write { lba, .. } => ('W', *lba),
        BlockRequest::Flush => ('F', 0),
        BlockRequest::Discard { lba, .. } => ('D', *lba),
        BlockRequest::WriteZeroes { lba, .. } => ('Z', *lba),
    }
}

impl BlockDevice for SlowDisk {
    type Buffer = Buf;
    fn block_size(&self) -> u32 {
        self.inner.block_size()
    }
    fn capacity(&self) -> u64 {
        self.inner.capacity()
    }
    fn queue_count(&self) -> u16 {
        self.inner.queue_count()
    }
    fn max_transfer(&self) -> usize {
        self.limit.unwrap_or_else(|| self.inner.max_transfer())
    }
    fn features(&self) -> Features {
        self.inner.features()
    }
    fn submit(&mut self, queue: u16, request: BlockRequest<Buf>) -> Result<Token, (drivers::Error, BlockRequest<Buf>)> {
        let len = request.buffer().map(|b| b.len()).unwrap_or(0);
        if len > self.max_transfer() {
            return Err((drivers::Error::BadBuffer, request));
        }
        self.largest = self.largest.max(len);
        if self.held.get(usize::from(queue)).is_some_and(|h| h.len() >= self.depth) {
            return Err((drivers::Error::QueueFull, request));
        }
        let (k, lba) = kind(&request);
        let tok = self.inner.submit(queue, request)?;
        let c = self.inner.poll(queue, 0).expect("the RamDisk completes at submit");
        self.log.push(DiskEv::Submit(k, lba));
        self.held[usize::from(queue)].push_back((self.delay, c));
        Ok(tok)
    }
    fn poll(&mut self, queue: u16, _now: u64) -> Option<BlockCompletion<Buf>> {
        if self.stuck {
            if let Some(c) = self.clock.as_mut() {
                let now = c.now();
                let _ = c.wait_any(&[], now + 1_000_000_000);
            }
            return None;
        }
        let h = self.held.get_mut(usize::from(queue))?;
        let front = h.front_mut()?;
        if front.0 > 0 {
            front.0 -= 1;
            return None;
        }
        let (_, c) = h.pop_front()?;
        let (k, lba) = kind(&c.request);
        self.log.push(DiskEv::Done(k, lba));
        Some(c)
    }
}

/// Disk buffers: frames of the backend domain that grant copies can name
/// (the CPU's view and the frames' meet only at the syncs).
type Buf = FrameBuf;

// ---------------------------------------------------------------------------
// Request encoding (both ABIs), as in tests/sim.rs.

fn enc_rw(abi: Abi, op: u8, id: u64, sector: u64, segs: &[abi::Segment]) -> Req {
    let mut r = RequestX64 {
        operation: op,
        nr_segments: segs.len() as u8,
        handle: DEV as u16,
        id,
        sector_number: sector,
        ..Default::default()
    };
    for (d, s) in r.seg.iter_mut().zip(segs) {
        *d = *s;
    }
    let mut b = [0u8; MAX_REQUEST_SIZE];
    match abi {
        Abi::X86_64 => r.encode(&mut b),
        Abi::X86_32 => RequestX32::from(r).encode(&mut b),
    }
    b
}

fn enc_indirect(abi: Abi, op: u8, nr: u16, id: u64, sector: u64, pages: &[GrantRef]) -> Req {
    let mut grefs = [0u32; 8];
    for (d, p) in grefs.iter_mut().zip(pages) {
        *d = p.0;
    }
    let r = IndirectX64 {
        operation: BLKIF_OP_INDIRECT,
        indirect_op: op,
        nr_segments: nr,
        id,
        sector_number: sector,
        handle: DEV as u16,
        indirect_grefs: grefs,
    };
    let mut b = [0u8; MAX_REQUEST_SIZE];
    match abi {
        Abi::X86_64 => r.encode(&mut b),
        Abi::X86_32 => IndirectX32::from(r).encode(&mut b),
    }
    b
}

/// Deterministic page contents, different for every (seed, byte).
fn pattern(seed: u32, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seed.wrapping_mul(2654435761).wrapping_add(i as u32 * 7 + (i as u32 >> 9))) as u8).collect()
}

// ---------------------------------------------------------------------------
// The simulated frontend domain.

struct FRing {
    mem: PagesMem<Arc<VecShared>>,
    grefs: Vec<GrantRef>,
    port: EvtchnPort,
    size: u32,
    prod: u32,
    cons: u32,
}

/// A data page granted to the backend.
#[derive(Clone)]
struct DPage {
    gref: GrantRef,
    page: Arc<VecShared>,
}

struct Front {
    dom: DomId,
    g: FakeGrants,
    e: FakeEvents,
    abi: Abi,
    next_pfn: u64,
    next_id: u64,
    rings: Vec<FRing>,
    /// Every grant given to the backend and not yet ended.
    granted: BTreeSet<u32>,
    /// Keys written by the last `talk_to_blkback`, removed before the next.
    keys_written: Vec<String>,
    /// feature-persistent: data pages are granted read-write (blkback maps
    /// persistent grants writable).
    persistent: bool,
}

/// How a frontend connects.
#[derive(Clone, Copy, Debug)]
struct Opts {
    /// `None`: no `protocol` key (x86_32 by default).
    protocol: Option<Abi>,
    persistent: bool,
    queues: u32,
    /// `None`: single `ring-ref`, no `ring-page-order` key.
    order: Option<u8>,
    /// Starting value of the ring indices (to exercise the u32 wrap).
    start: u32,
}

impl Default for Opts {
    fn default() -> Self {
        Opts { protocol: Some(Abi::X86_64), persistent: false, queues: 1, order: None, start: 0 }
    }
}

impl Front {
    fn fe_dir(&self) -> String {
        format!("/local/domain/{}/device/vbd/{DEV}", self.dom.0)
    }
    fn be_dir(&self) -> String {
        format!("{}/backend/vbd/{}/{DEV}", home(), self.dom.0)
    }

    fn grant_page(&mut self, data: &[u8], readonly: bool) -> DPage {
        let pfn = Pfn(self.next_pfn);
        self.next_pfn += 1;
        let page = self.g.local_page(pfn);
        page.write(0, data);
        let gref = self.g.grant_access(BE, pfn, readonly).expect("grant");
        self.granted.insert(gref.0);
        DPage { gref, page }
    }

    /// Grants ring pages and allocates event channels (SHARED_RING_INIT).
    fn make_rings(&mut self, o: &Opts) {
        self.rings.clear();
        let order = o.order.unwrap_or(0);
        for _ in 0..o.queues {
            let mut pages = Vec::new();
            let mut grefs = Vec::new();
            for _ in 0..1u32 << order {
                let p = self.grant_page(&[0u8; PAGE], false);
                pages.push(p.page);
                grefs.push(p.gref);
            }
            let mem = PagesMem::new(pages);
            mem.store_u32_release(REQ_PROD, o.start);
            mem.store_u32_release(RSP_PROD, o.start);
            mem.store_u32_release(REQ_EVENT, o.start.wrapping_add(1));
            mem.store_u32_release(RSP_EVENT, o.start.wrapping_add(1));
            let port = self.e.alloc_unbound(BE).expect("alloc_unbound");
            self.rings.push(FRing { mem, grefs, port, size: ring_size(self.abi, order), prod: o.start, cons: o.start });
        }
    }

    /// The keys blkfront's `talk_to_blkback` writes.
    fn keys(&self, o: &Opts) -> Vec<(String, String)> {
        let mut k = Vec::new();
        if let Some(ord) = o.order {
            k.push(("ring-page-order".to_string(), ord.to_string()));
        }
        if o.queues > 1 {
            k.push(("multi-queue-num-queues".to_string(), o.queues.to_string()));
        }
        for (q, r) in self.rings.iter().enumerate() {
            let prefix = if o.queues > 1 { format!("queue-{q}/") } else { String::new() };
            match o.order {
                None => k.push((format!("{prefix}ring-ref"), r.grefs[0].0.to_string())),
                Some(_) => {
                    for (i, g) in r.grefs.iter().enumerate() {
                        k.push((format!("{prefix}ring-ref{i}"), g.0.to_string()));
                    }
                }
            }
            k.push((format!("{prefix}event-channel"), r.port.0.to_string()));
        }
        if let Some(abi) = o.protocol {
            k.push(("protocol".to_string(), abi.protocol().to_string()));
        }
        k.push(("feature-persistent".to_string(), u8::from(o.persistent).to_string()));
        k
    }

    fn id(&mut self) -> u64 {
        self.next_id += 0x101;
        self.next_id
    }

    /// Places a request in the next free slot (not yet published).
    fn push(&mut self, q: usize, req: &Req) {
        let (abi, r) = (self.abi, &mut self.rings[q]);
        assert!(r.prod.wrapping_sub(r.cons) < r.size, "frontend ring full");
        let slot = (r.prod & (r.size - 1)) as usize;
        r.mem.write(RING_HEADER + slot * abi.entry_size(), &req[..abi.request_size()]);
        r.prod = r.prod.wrapping_add(1);
    }

    /// RING_PUSH_REQUESTS_AND_CHECK_NOTIFY, then the event if needed.
    fn publish(&mut self, q: usize) {
        let r = &mut self.rings[q];
        let old = r.mem.load_u32_acquire(REQ_PROD);
        let new = r.prod;
        r.mem.store_u32_release(REQ_PROD, new);
        r.mem.fence();
        let ev = r.mem.load_u32_acquire(REQ_EVENT);
        if new.wrapping_sub(ev) < new.wrapping_sub(old) {
            self.e.send(r.port).expect("send");
        }
    }

    /// Consumes responses, then RING_FINAL_CHECK_FOR_RESPONSES.
    fn take_responses(&mut self, q: usize) -> Vec<Response> {
        let (abi, r) = (self.abi, &mut self.rings[q]);
        let mut out = Vec::new();
        for _ in 0..64 {
            let prod = r.mem.load_u32_acquire(RSP_PROD);
            let n = prod.wrapping_sub(r.cons);
            assert!(n <= r.prod.wrapping_sub(r.cons), "backend answered more than was asked ({n})");
            while r.cons != prod {
                let slot = (r.cons & (r.size - 1)) as usize;
                let mut b = [0u8; 16];
                r.mem.read(RING_HEADER + slot * abi.entry_size(), &mut b[..abi.response_size()]);
                out.push(Response::decode(abi, &b));
                r.cons = r.cons.wrapping_add(1);
            }
            r.mem.store_u32_release(RSP_EVENT, r.cons.wrapping_add(1));
            r.mem.fence();
            if r.mem.load_u32_acquire(RSP_PROD) == r.cons {
                break;
            }
        }
        out
    }

    /// Ends every grant given to the backend; returns those that failed.
    fn end_all(&mut self) -> Vec<(u32, GrantError)> {
        let mut bad = Vec::new();
        for g in std::mem::take(&mut self.granted) {
            if let Err(e) = self.g.end_access(GrantRef(g)) {
                bad.push((g, e));
                self.granted.insert(g);
            }
        }
        bad
    }

    /// Builds a read/write request over fresh pages. `spans` gives
    /// `(first_sect, last_sect)` per segment; write pages carry `pattern`.
    fn rw(
        &mut self,
        op: u8,
        sector: u64,
        spans: &[(u8, u8)],
        seed: u32,
        readonly: bool,
    ) -> (Req, u64, Vec<(DPage, u8, u8)>) {
        let id = self.id();
        let mut segs = Vec::new();
        let mut wire = Vec::new();
        for (i, &(f, l)) in spans.iter().enumerate() {
            let data = if op == BLKIF_OP_READ { vec![0xa5; PAGE] } else { pattern(seed + i as u32, PAGE) };
            let p = self.grant_page(&data, readonly && !self.persistent);
            wire.push(abi::Segment { gref: p.gref.0, first_sect: f, last_sect: l });
            segs.push((p, f, l));
        }
        (enc_rw(self.abi, op, id, sector, &wire), id, segs)
    }

    /// Builds an indirect request with one segment per page (whole pages).
    fn indirect(&mut self, op: u8, sector: u64, n: usize, seed: u32) -> (Req, u64, Vec<DPage>) {
        let id = self.id();
        let data: Vec<DPage> = (0..n)
            .map(|i| {
                let d = if op == BLKIF_OP_READ { vec![0x5a; PAGE] } else { pattern(seed + i as u32, PAGE) };
                self.grant_page(&d, false)
            })
            .collect();
        let mut ind = Vec::new();
        for chunk in data.chunks(abi::SEGMENTS_PER_INDIRECT_PAGE) {
            let mut b = vec![0u8; PAGE];
            for (i, p) in chunk.iter().enumerate() {
                abi::Segment { gref: p.gref.0, first_sect: 0, last_sect: 7 }.encode(&mut b[i * 8..]);
            }
            let ro = !self.persistent;
            ind.push(self.grant_page(&b, ro).gref);
        }
        (enc_indirect(self.abi, op, data.len() as u16, id, sector, &ind), id, data)
    }
}

/// Bytes a segment list covers, in order.
fn seg_bytes(segs: &[(DPage, u8, u8)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (p, f, l) in segs {
        let snap = p.page.snapshot();
        out.extend_from_slice(&snap[usize::from(*f) * SECT..(usize::from(*l) + 1) * SECT]);
    }
    out
}

fn home() -> String {
    format!("/local/domain/{}", BE.0)
}

// ---------------------------------------------------------------------------
// The world: xenstore, hubs, the backend, the frontends.

struct World<D: BlockDevice<Buffer = Buf>> {
    xsd: FakeXenstored,
    xs: XsClient<FakePage, FakeXenstored>,
    g: FakeGrants,
    e: FakeEvents,
    blk: Blkback<Arc<VecShared>, D>,
    fronts: Vec<Front>,
}

fn world<D: BlockDevice<Buffer = Buf>>(disk: D, cfg: BackendConfig, fe_doms: &[u16]) -> World<D> {
    world_with(|_| disk, cfg, fe_doms)
}

/// `make` gets a handle on the event hub's clock (a spare domain).
fn world_with<D: BlockDevice<Buffer = Buf>>(
    make: impl FnOnce(FakeEvents) -> D,
    cfg: BackendConfig,
    fe_doms: &[u16],
) -> World<D> {
    init_log();
    let mut ids = vec![BE];
    ids.extend(fe_doms.iter().map(|&d| DomId(d)));
    let mut gs = FakeGrants::domains(&ids, 8192).into_iter();
    let mut all = ids.clone();
    all.push(DomId(0x7ff0));
    let mut es = FakeEvents::domains(&all);
    let disk = make(es.pop().expect("clock domain"));
    let mut es = es.into_iter();
    let (g, e) = (gs.next().unwrap(), es.next().unwrap());
    let fronts = fe_doms
        .iter()
        .zip(gs.zip(es))
        .map(|(&d, (g, e))| Front {
            dom: DomId(d),
            g,
            e,
            abi: Abi::X86_64,
            next_pfn: 0x100,
            next_id: 0x7000_0000_0000_0000 | (u64::from(d) << 32),
            rings: Vec::new(),
            granted: BTreeSet::new(),
            persistent: false,
            keys_written: Vec::new(),
        })
        .collect();
    let xsd = FakeXenstored::new(BE);
    let mut xs = xsd.client(1_000_000_000).with_event_capacity(1 << 16);
    let frames = g.frame_alloc();
    let mut blk = Blkback::new(disk, cfg, move |n| Some(frames.alloc(n)));
    blk.start(&mut xs).expect("watch backend/vbd");
    let mut w = World { xsd, xs, g, e, blk, fronts };
    assert!(w.pump());
    w
}

fn ram(queues: u16) -> RamDisk<Buf> {
    RamDisk::new(512, DISK_SECTORS, queues, 64)
}

impl<D: BlockDevice<Buffer = Buf>> World<D> {
    /// The main loop until idle: watch events to `on_watch`, then `poll`.
    /// Returns `false` if the backend was still busy after many rounds.
    /// Panics on a watch storm (the backend re-triggering itself).
    fn pump(&mut self) -> bool {
        let mut events = 0;
        for _ in 0..500 {
            let mut got = false;
            while let Some(ev) = self.xs.poll_watch().expect("xenstore client") {
                got = true;
                events += 1;
                assert!(events < 500, "watch storm: {} keeps firing", ev.path);
                if ev.token.starts_with(WATCH_PREFIX) {
                    self.blk.on_watch(&mut self.xs, &mut self.g, &mut self.e, &ev.token);
                }
            }
            let busy = self.blk.poll(&mut self.g, &mut self.e);
            if !got && !busy {
                assert_eq!(self.xs.dropped_events(), 0);
                return true;
            }
        }
        false
    }

    fn value(&self, path: &str) -> Option<String> {
        self.xsd.value(path).map(|v| String::from_utf8(v).expect("utf8 node"))
    }

    fn be(&self, fi: usize, key: &str) -> Option<String> {
        self.value(&format!("{}/{key}", self.fronts[fi].be_dir()))
    }

    fn be_state(&self, fi: usize) -> Option<String> {
        self.be(fi, "state")
    }

    fn fe_write(&mut self, fi: usize, key: &str, val: &str) {
        let p = format!("{}/{key}", self.fronts[fi].fe_dir());
        self.xsd.external_write(&p, val.as_bytes());
    }

    fn fe_state(&mut self, fi: usize, s: u32) {
        self.fe_write(fi, "state", &s.to_string());
        assert!(self.pump(), "backend busy after frontend state {s}");
    }

    /// The toolstack creates the vbd (libxl's device_add): backend and
    /// frontend directories, each owned by its domain and readable by the
    /// other.
    fn attach(&mut self, fi: usize) {
        let f = &self.fronts[fi];
        let (be, fe, dom) = (f.be_dir(), f.fe_dir(), f.dom.0);
        self.xsd.external_write(&be, b"");
        self.xsd.external_set_perms(&be, &[Perm::new(PermKind::None, BE.0), Perm::new(PermKind::Read, dom)]);
        self.xsd.external_write(&fe, b"");
        self.xsd.external_set_perms(&fe, &[Perm::new(PermKind::None, dom), Perm::new(PermKind::Read, BE.0)]);
        for (k, v) in [
            ("backend", be.clone()),
            ("backend-id", BE.0.to_string()),
            ("state", "1".into()),
            ("virtual-device", DEV.to_string()),
        ] {
            self.xsd.external_write(&format!("{fe}/{k}"), v.as_bytes());
        }
        for (k, v) in [
            ("frontend", fe.clone()),
            ("frontend-id", dom.to_string()),
            ("params", "ram0".into()),
            ("online", "1".into()),
            ("removable", "0".into()),
            ("state", "1".into()),
        ] {
            self.xsd.external_write(&format!("{be}/{k}"), v.as_bytes());
        }
        assert!(self.pump());
        assert_eq!(self.be_state(fi).as_deref(), Some("2"), "backend waits for the frontend (InitWait)");
    }

    /// blkfront's talk_to_blkback: rings, keys, Initialised; then the
    /// backend connects and the frontend goes Connected.
    fn connect(&mut self, fi: usize, o: Opts) {
        self.connect_initialised(fi, o);
        assert_eq!(self.be_state(fi).as_deref(), Some("4"), "backend Connected");
        self.fe_state(fi, 4);
        assert_eq!(self.be_state(fi).as_deref(), Some("4"));
    }

    fn connect_initialised(&mut self, fi: usize, o: Opts) {
        let f = &mut self.fronts[fi];
        f.abi = o.protocol.unwrap_or(Abi::X86_32);
        f.persistent = o.persistent;
        f.make_rings(&o);
        let keys = f.keys(&o);
        for k in std::mem::take(&mut f.keys_written) {
            let p = format!("{}/{k}", f.fe_dir());
            if self.xsd.value(&p).is_some() {
                self.xsd.external_rm(&p);
            }
        }
        for (k, v) in &keys {
            self.fe_write(fi, k, v);
        }
        self.fronts[fi].keys_written = keys.into_iter().map(|(k, _)| k).collect();
        self.fe_state(fi, 3);
    }

    /// Publishes `reqs` on ring `q` of frontend `fi` and runs both sides
    /// until all are answered. The frontend only looks at the ring when its
    /// event channel fired.
    fn io(&mut self, fi: usize, q: usize, reqs: &[Req]) -> Vec<Response> {
        for r in reqs {
            self.fronts[fi].push(q, r);
        }
        self.fronts[fi].publish(q);
        self.collect(fi, q, reqs.len())
    }

    fn collect(&mut self, fi: usize, q: usize, n: usize) -> Vec<Response> {
        let mut out = Vec::new();
        for _ in 0..50 {
            self.pump();
            let f = &mut self.fronts[fi];
            if f.e.take_pending(f.rings[q].port) {
                out.extend(f.take_responses(q));
            }
            if out.len() >= n {
                break;
            }
        }
        assert_eq!(out.len(), n, "responses missing (lost notification or request dropped): {out:?}");
        out
    }

    /// Requests of several sizes through ring `q`, checked against a model.
    fn write_read_back(&mut self, fi: usize, q: usize, base: u64, seed: u32) {
        let spans: [&[(u8, u8)]; 3] = [&[(0, 7)], &[(1, 6), (0, 7), (3, 3)], &[(0, 7); 11]];
        let mut sector = base;
        for (k, sp) in spans.iter().enumerate() {
            let f = &mut self.fronts[fi];
            let (wreq, wid, wsegs) = f.rw(BLKIF_OP_WRITE, sector, sp, seed + 100 * k as u32, true);
            let (rreq, rid, rsegs) = f.rw(BLKIF_OP_READ, sector, sp, 0, false);
            let rsp = self.io(fi, q, &[wreq]);
            assert_eq!(rsp, [Response { id: wid, operation: BLKIF_OP_WRITE, status: BLKIF_RSP_OKAY }]);
            let rsp = self.io(fi, q, &[rreq]);
            assert_eq!(rsp, [Response { id: rid, operation: BLKIF_OP_READ, status: BLKIF_RSP_OKAY }]);
            let written = seg_bytes(&wsegs);
            assert_eq!(seg_bytes(&rsegs), written, "read back what was written");
            sector += (written.len() / SECT) as u64;
        }
    }
}

fn okay(id: u64, op: u8) -> Response {
    Response { id, operation: op, status: BLKIF_RSP_OKAY }
}

fn error(id: u64, op: u8) -> Response {
    Response { id, operation: op, status: BLKIF_RSP_ERROR }
}

fn by_id(rsp: &[Response]) -> HashMap<u64, Response> {
    rsp.iter().map(|r| (r.id, *r)).collect()
}

// ---------------------------------------------------------------------------
// 1. Handshake.

#[test]
fn connect_handshake_publishes_features_and_connects() {
    let mut w = world(ram(1), BackendConfig::default(), &[5]);
    w.attach(0);
    // What the probe publishes before the frontend does anything.
    for (k, v) in [
        ("feature-max-indirect-segments", "256"),
        ("multi-queue-max-queues", "4"),
        ("max-ring-page-order", "4"),
        ("hotplug-status", "connected"),
        ("state", "2"),
    ] {
        assert_eq!(w.be(0, k).as_deref(), Some(v), "{k}");
    }
    assert_eq!(w.be(0, "sectors"), None, "disk details wait for the frontend");
    assert!(w.blk.ports().is_empty());

    w.connect_initialised(0, Opts { persistent: true, ..Opts::default() });
    for (k, v) in [
        ("feature-persistent", "1".to_string()),
        ("feature-flush-cache", "1".into()),
        ("feature-barrier", "1".into()),
        ("feature-discard", "1".into()),
        ("discard-granularity", "512".into()),
        ("sectors", DISK_SECTORS.to_string()),
        ("sector-size", "512".into()),
        ("physical-sector-size", "512".into()),
        ("info", "0".into()),
        ("hotplug-status", "connected".into()),
        ("state", "4".into()),
    ] {
        assert_eq!(w.be(0, k).as_deref(), Some(v.as_str()), "{k}");
    }
    assert_eq!(w.be(0, "error"), None);
    assert_eq!(w.blk.ports().len(), 1, "one ring bound");
    // The ring page is mapped: the frontend cannot take it back.
    let ring_ref = w.fronts[0].rings[0].grefs[0];
    assert_eq!(w.fronts[0].g.end_access(ring_ref), Err(GrantError::InUse));
    // Frontend Connected: nothing changes, nothing breaks.
    w.fe_state(0, 4);
    assert_eq!(w.be_state(0).as_deref(), Some("4"));
    assert_eq!(w.blk.vbd_count(), 1);
}

#[test]
fn bad_ring_ref_never_advertises_connected() {
    let mut w = world(ram(1), BackendConfig::default(), &[5]);
    w.attach(0);
    let o = Opts::default();
    let f = &mut w.fronts[0];
    f.make_rings(&o);
    let mut keys = f.keys(&o);
    for (k, v) in keys.iter_mut() {
        if k == "ring-ref" {
            *v = "4000".into(); // never granted
        }
    }
    for (k, v) in keys {
        w.fe_write(0, &k, &v);
    }
    w.fe_state(0, 3);
    assert_eq!(w.be_state(0).as_deref(), Some("5"), "fatal: Closing");
    assert!(w.be(0, "error").is_some(), "error node written");
    // Linux's connect() publishes disk details only once the rings work.
    assert_eq!(w.be(0, "sectors"), None, "advertised a disk over an unmapped ring");
    assert!(w.blk.ports().is_empty());
    assert_eq!(w.fronts[0].end_all(), []);
}

// ---------------------------------------------------------------------------
// 2. Data through the ring, both ABIs.

fn write_read_abi(protocol: Option<Abi>, start: u32) {
    let mut w = world(ram(1), BackendConfig::default(), &[5]);
    w.attach(0);
    w.connect(0, Opts { protocol, start, ..Opts::default() });
    // Enough round trips to wrap the 32-slot ring (and the u32 indices
    // when `start` is near the top).
    for round in 0..12u32 {
        w.write_read_back(0, 0, 100 + u64::from(round) * 200, round * 1000);
    }
    // The disk holds what the frontend wrote.
    let (req, id, segs) = w.fronts[0].rw(BLKIF_OP_WRITE, 8, &[(0, 7), (0, 7)], 77, true);
    assert_eq!(w.io(0, 0, &[req]), [okay(id, BLKIF_OP_WRITE)]);
    assert_eq!(&w.blk.disk_mut().contents()[8 * SECT..24 * SECT], &seg_bytes(&segs)[..]);
    assert_eq!(w.blk.stats.rejected, 0);
}

#[test]
fn write_read_back_x86_64() {
    write_read_abi(Some(Abi::X86_64), 0);
}

#[test]
fn write_read_back_x86_32_without_protocol_key() {
    write_read_abi(None, u32::MAX - 40);
}

#[test]
fn write_read_back_x86_32_explicit() {
    write_read_abi(Some(Abi::X86_32), 7);
}

#[test]
fn batch_of_requests_with_discard_and_small_disk_queue() {
    // Disk queue depth 2 and slow completions: requests wait in the shell.
    let mut w = world(SlowDisk::new(DISK_SECTORS, 1, 2, 2), BackendConfig::default(), &[5]);
    w.attach(0);
    w.connect(0, Opts::default());
    let mut reqs = Vec::new();
    let mut writes = Vec::new();
    for i in 0..20u64 {
        let (r, id, segs) = w.fronts[0].rw(BLKIF_OP_WRITE, i * 16, &[(0, 7), (0, 7)], i as u32, true);
        reqs.push(r);
        writes.push((id, i * 16, segs));
    }
    // Discard the second half of request 3's range.
    let did = w.fronts[0].id();
    let mut b = [0u8; MAX_REQUEST_SIZE];
    abi::DiscardX64 {
        operation: BLKIF_OP_DISCARD,
        flag: 0,
        handle: 0,
        id: did,
        sector_number: 3 * 16 + 8,
        nr_sectors: 8,
    }
    .encode(&mut b);
    reqs.push(b);
    let rsp = by_id(&w.io(0, 0, &reqs));
    assert_eq!(rsp.len(), 21);
    for (id, _, _) in &writes {
        assert_eq!(rsp[id], okay(*id, BLKIF_OP_WRITE));
    }
    assert_eq!(rsp[&did], okay(did, BLKIF_OP_DISCARD));
    let disk = w.blk.disk_mut().inner.contents().to_vec();
    for (i, (_, sector, segs)) in writes.iter().enumerate() {
        let mut want = seg_bytes(segs);
        if i == 3 {
            want[8 * SECT..].fill(0);
        }
        let s = *sector as usize * SECT;
        assert_eq!(&disk[s..s + want.len()], &want[..], "request {i}");
    }
}

// ---------------------------------------------------------------------------
// 3. Persistent grants.

#[test]
fn persistent_grants_are_mapped_once() {
    let mut w = world(ram(1), BackendConfig::default(), &[5]);
    w.attach(0);
    w.connect(0, Opts { persistent: true, ..Opts::default() });
    let f = &mut w.fronts[0];
    // blkfront's persistent pages: granted read-write, reused for every I/O.
    let pages: Vec<DPage> = (0..4).map(|i| f.grant_page(&pattern(i, PAGE), false)).collect();
    let wire: Vec<abi::Segment> =
        pages.iter().map(|p| abi::Segment { gref: p.gref.0, first_sect: 0, last_sect: 7 }).collect();
    let id = f.id();
    let req = enc_rw(f.abi, BLKIF_OP_WRITE, id, 64, &wire);
    assert_eq!(w.io(0, 0, &[req]), [okay(id, BLKIF_OP_WRITE)]);
    let maps = w.g.map_calls();
    let hits = w.blk.stats.persistent_hits;
    for round in 0..10u32 {
        let f = &mut w.fronts[0];
        let op = if round % 2 == 0 { BLKIF_OP_READ } else { BLKIF_OP_WRITE };
        if op == BLKIF_OP_READ {
            for p in &pages {
                p.page.write(0, &[0u8; PAGE]);
            }
        } else {
            for (i, p) in pages.iter().enumerate() {
                p.page.write(0, &pattern(round * 10 + i as u32, PAGE));
            }
        }
        let expect: Vec<u8> =
            (0..4).flat_map(|i| pattern(if round == 0 { i } else { (round - 1) * 10 + i }, PAGE)).collect();
        let id = f.id();
        let req = enc_rw(f.abi, op, id, 64, &wire);
        assert_eq!(w.io(0, 0, &[req]), [okay(id, op)]);
        if op == BLKIF_OP_READ {
            let got: Vec<u8> = pages.iter().flat_map(|p| p.page.snapshot()).collect();
            assert!(got == expect, "round {round}: read back the last write");
        }
    }
    assert_eq!(w.g.map_calls(), maps, "reused persistent grants must not be mapped again");
    assert_eq!(w.blk.stats.persistent_hits, hits + 40);
    // Still mapped while connected.
    for p in &pages {
        assert_eq!(w.fronts[0].g.end_access(p.gref), Err(GrantError::InUse));
    }
    // Disconnect releases them all.
    w.fe_state(0, 5);
    w.fe_state(0, 6);
    assert_eq!(w.be_state(0).as_deref(), Some("6"));
    assert_eq!(w.fronts[0].end_all(), []);
}

#[test]
fn without_persistent_every_mapping_is_released_per_request() {
    let mut w = world(ram(1), BackendConfig::default(), &[5]);
    w.attach(0);
    w.connect(0, Opts { persistent: false, ..Opts::default() });
    let ring: BTreeSet<u32> = w.fronts[0].rings[0].grefs.iter().map(|g| g.0).collect();
    for round in 0..3u32 {
        let f = &mut w.fronts[0];
        let (wreq, wid, _) = f.rw(BLKIF_OP_WRITE, 32, &[(0, 7), (2, 5)], round, true);
        let (rreq, rid, _) = f.rw(BLKIF_OP_READ, 32, &[(0, 7), (2, 5)], 0, false);
        let (ireq, iid, _) = f.indirect(BLKIF_OP_WRITE, 256, 20, round);
        let rsp = by_id(&w.io(0, 0, &[wreq, rreq, ireq]));
        assert_eq!(rsp[&wid], okay(wid, BLKIF_OP_WRITE));
        assert_eq!(rsp[&rid], okay(rid, BLKIF_OP_READ));
        assert_eq!(rsp[&iid], okay(iid, BLKIF_OP_WRITE));
        // Every data and indirect grant can be revoked right away.
        let f = &mut w.fronts[0];
        let data: Vec<u32> = f.granted.iter().copied().filter(|g| !ring.contains(g)).collect();
        for g in data {
            assert_eq!(f.g.end_access(GrantRef(g)), Ok(()), "round {round}: grant {g} still mapped");
            f.granted.remove(&g);
        }
    }
    assert_eq!(w.blk.stats.persistent_hits, 0);
}

#[test]
fn persistent_grants_bounded_lru() {
    let mut w = world(ram(1), BackendConfig::default(), &[5]);
    w.attach(0);
    w.connect(0, Opts { persistent: true, ..Opts::default() });
    let ring: BTreeSet<u32> = w.fronts[0].rings[0].grefs.iter().map(|g| g.0).collect();
    // 5 indirect requests of 256 segments: 1285 distinct grants, above
    // the per-ring bound; the oldest ones must be let go.
    let mut order = Vec::new();
    for k in 0..5u32 {
        let f = &mut w.fronts[0];
        let (req, id, pages) = f.indirect(BLKIF_OP_WRITE, u64::from(k) * 256 * 8 % DISK_SECTORS, 256, k * 1000);
        assert_eq!(w.io(0, 0, &[req]), [okay(id, BLKIF_OP_WRITE)]);
        order.extend(pages.iter().map(|p| p.gref.0));
    }
    let f = &mut w.fronts[0];
    let mut still = 0;
    for g in f.granted.clone() {
        if ring.contains(&g) {
            continue;
        }
        match f.g.end_access(GrantRef(g)) {
            Ok(()) => {
                f.granted.remove(&g);
            }
            Err(GrantError::InUse) => still += 1,
            Err(e) => panic!("grant {g}: {e:?}"),
        }
    }
    // Exactly the bound is kept: of 1285 mapped (indirect pages are
    // persistent too), the 229 least recently used were unmapped: the first
    // request's indirect page and its 228 oldest data pages.
    assert_eq!(still, MAX_PERSISTENT_PER_RING, "persistent mappings kept");
    let released: Vec<u32> = order.iter().copied().filter(|g| !f.granted.contains(g)).collect();
    assert_eq!(released.len(), 1285 - 1 - MAX_PERSISTENT_PER_RING, "data grants released");
    assert!(released.iter().all(|g| order[..256].contains(g)), "only the oldest request's grants released");
    assert!(order[256..].iter().all(|g| f.granted.contains(g)), "newer grants kept");
}

// ---------------------------------------------------------------------------
// 4. Indirect requests.

fn indirect_abi(abi: Abi) {
    let mut w = world(ram(1), BackendConfig::default(), &[5]);
    w.attach(0);
    w.connect(0, Opts { protocol: Some(abi), ..Opts::default() });
    let (wreq, wid, wpages) = w.fronts[0].indirect(BLKIF_OP_WRITE, 1000, 40, 5);
    assert_eq!(w.io(0, 0, &[wreq]), [okay(wid, BLKIF_OP_WRITE)]);
    let written: Vec<u8> = wpages.iter().flat_map(|p| p.page.snapshot()).collect();
    assert_eq!(&w.blk.disk_mut().contents()[1000 * SECT..1000 * SECT + 40 * PAGE], &written[..]);
    let (rreq, rid, rpages) = w.fronts[0].indirect(BLKIF_OP_READ, 1000, 40, 0);
    assert_eq!(w.io(0, 0, &[rreq]), [okay(rid, BLKIF_OP_READ)]);
    let read: Vec<u8> = rpages.iter().flat_map(|p| p.page.snapshot()).collect();
    assert!(read == written, "indirect read returns the indirect write");
    // A 256-segment read over the same range, one page earlier.
    let (req, id, pages) = w.fronts[0].indirect(BLKIF_OP_READ, 1000 - 8, 256, 0);
    assert_eq!(w.io(0, 0, &[req]), [okay(id, BLKIF_OP_READ)]);
    assert_eq!(pages[1].page.snapshot(), wpages[0].page.snapshot());
    assert_eq!(pages[40].page.snapshot(), wpages[39].page.snapshot());
    // 257 segments is over what we advertised.
    let (req, id, _) = w.fronts[0].indirect(BLKIF_OP_READ, 0, 257, 0);
    assert_eq!(w.io(0, 0, &[req]), [error(id, BLKIF_OP_READ)]);
}

#[test]
fn indirect_40_segments_x86_64() {
    indirect_abi(Abi::X86_64);
}

#[test]
fn indirect_40_segments_x86_32() {
    indirect_abi(Abi::X86_32);
}

// ---------------------------------------------------------------------------
// 5. Multi-queue and multi-page rings.

#[test]
fn two_queues_with_two_page_rings() {
    let mut w = world(ram(2), BackendConfig::default(), &[5]);
    w.attach(0);
    w.connect(0, Opts { queues: 2, order: Some(1), persistent: true, ..Opts::default() });
    assert_eq!(w.blk.ports().len(), 2);
    assert_eq!(w.fronts[0].rings[0].size, 64);
    for q in 0..2 {
        // Fill the 64-slot ring: entries past slot 35 live on the second page.
        let mut reqs = Vec::new();
        let mut exp = Vec::new();
        for i in 0..64u64 {
            let sector = 2048 * q as u64 + i * 8;
            let (r, id, segs) = w.fronts[0].rw(BLKIF_OP_WRITE, sector, &[(0, 7)], (q as u32) << 16 | i as u32, false);
            reqs.push(r);
            exp.push((id, sector, seg_bytes(&segs)));
        }
        let rsp = by_id(&w.io(0, q, &reqs));
        for (id, sector, data) in &exp {
            assert_eq!(rsp[id], okay(*id, BLKIF_OP_WRITE), "queue {q}");
            let s = *sector as usize * SECT;
            assert_eq!(&w.blk.disk_mut().contents()[s..s + PAGE], &data[..], "queue {q} sector {sector}");
        }
        w.write_read_back(0, q, 2048 * q as u64 + 600, 9 + q as u32);
    }
    // Interleaved on both queues at once.
    let (a, ida, _) = w.fronts[0].rw(BLKIF_OP_READ, 0, &[(0, 7)], 0, false);
    let (b, idb, _) = w.fronts[0].rw(BLKIF_OP_READ, 2048, &[(0, 7)], 0, false);
    w.fronts[0].push(0, &a);
    w.fronts[0].push(1, &b);
    w.fronts[0].publish(0);
    w.fronts[0].publish(1);
    assert_eq!(w.collect(0, 0, 1), [okay(ida, BLKIF_OP_READ)]);
    assert_eq!(w.collect(0, 1, 1), [okay(idb, BLKIF_OP_READ)]);
}

#[test]
fn more_queues_than_the_disk_has() {
    // 3 frontend queues on a one-queue disk share the disk queue.
    let mut w = world(ram(1), BackendConfig::default(), &[5]);
    w.attach(0);
    w.connect(0, Opts { queues: 3, ..Opts::default() });
    for q in 0..3 {
        w.write_read_back(0, q, 300 * q as u64, q as u32);
    }
}

// ---------------------------------------------------------------------------
// 6. Hostile frontends.

#[test]
fn hostile_requests_get_errors_and_the_ring_keeps_working() {
    let mut w = world(ram(1), BackendConfig::default(), &[5, 6]);
    w.attach(0);
    w.connect(0, Opts::default());
    let f = &mut w.fronts[0];
    let other = f.g.grant_access(DomId(6), Pfn(0x999), false).unwrap(); // granted to someone else
    let good = f.grant_page(&pattern(1, PAGE), false);
    let ro = f.grant_page(&pattern(2, PAGE), true);
    let seg = |g: u32| [abi::Segment { gref: g, first_sect: 0, last_sect: 7 }];
    let mut cases = Vec::new();
    let abi = f.abi;
    // Out of range: last sector past the end, and a sector number that overflows.
    for (op, sector) in
        [(BLKIF_OP_WRITE, DISK_SECTORS - 7), (BLKIF_OP_READ, DISK_SECTORS), (BLKIF_OP_WRITE, u64::MAX - 3)]
    {
        let id = f.id();
        cases.push((enc_rw(abi, op, id, sector, &seg(good.gref.0)), error(id, op)));
    }
    // Grants that are not ours to map: never granted, granted to another
    // domain, read-only used as a read target.
    for (op, g) in
        [(BLKIF_OP_WRITE, 0xdead), (BLKIF_OP_READ, 0xdead), (BLKIF_OP_READ, other.0), (BLKIF_OP_READ, ro.gref.0)]
    {
        let id = f.id();
        cases.push((enc_rw(abi, op, id, 0, &seg(g)), error(id, op)));
    }
    // Indirect request whose indirect page is not granted.
    let id = f.id();
    cases.push((enc_indirect(abi, BLKIF_OP_WRITE, 4, id, 0, &[GrantRef(0xbeef)]), error(id, BLKIF_OP_WRITE)));
    // Indirect request whose segments name a bad grant.
    let id = f.id();
    let mut b = vec![0u8; PAGE];
    abi::Segment { gref: good.gref.0, first_sect: 0, last_sect: 7 }.encode(&mut b);
    abi::Segment { gref: 0xdead, first_sect: 0, last_sect: 7 }.encode(&mut b[8..]);
    let ind_page = f.grant_page(&b, true);
    let req = enc_indirect(abi, BLKIF_OP_WRITE, 2, id, 0, &[ind_page.gref]);
    cases.push((req, error(id, BLKIF_OP_WRITE)));
    // And one honest request in the middle of it all.
    let (okreq, okid, oksegs) = f.rw(BLKIF_OP_WRITE, 40, &[(0, 7)], 3, true);
    cases.insert(4, (okreq, okay(okid, BLKIF_OP_WRITE)));
    let reqs: Vec<Req> = cases.iter().map(|c| c.0).collect();
    let rsp = by_id(&w.io(0, 0, &reqs));
    for (_, want) in &cases {
        assert_eq!(rsp.get(&want.id), Some(want));
    }
    assert_eq!(&w.blk.disk_mut().contents()[40 * SECT..40 * SECT + PAGE], &seg_bytes(&oksegs)[..]);
    assert_eq!(&w.blk.disk_mut().contents()[..PAGE], &[0u8; PAGE][..], "nothing written by a failed request");
    // The ring still serves.
    w.write_read_back(0, 0, 500, 4);
    // Nothing of the failed requests stays mapped.
    let f = &mut w.fronts[0];
    for g in [good.gref, ro.gref, ind_page.gref] {
        assert_eq!(f.g.end_access(g), Ok(()));
        f.granted.remove(&g.0);
    }
}

#[test]
fn req_prod_beyond_ring_kills_only_that_ring() {
    let mut w = world(ram(2), BackendConfig::default(), &[5, 6]);
    w.attach(0);
    w.attach(1);
    w.connect(0, Opts { queues: 2, persistent: true, ..Opts::default() });
    w.connect(1, Opts::default());
    w.write_read_back(0, 0, 0, 1);
    let bad_port = w.fronts[0].rings[0].port;
    // Frontend 5 pushes req_prod a ring and more past its consumer.
    {
        let f = &mut w.fronts[0];
        let (req, _, _) = f.rw(BLKIF_OP_READ, 0, &[(0, 7)], 0, false);
        f.push(0, &req);
        let r = &mut f.rings[0];
        r.mem.store_u32_release(REQ_PROD, r.cons.wrapping_add(r.size + 5));
        f.e.send(r.port).unwrap();
    }
    let before = w.blk.stats.requests;
    assert!(w.pump());
    assert_eq!(w.blk.stats.requests, before, "nothing consumed from a broken ring");
    assert_eq!(w.blk.ports().len(), 2, "the broken ring is no longer waited on");
    {
        let f = &mut w.fronts[0];
        assert!(!f.e.take_pending(bad_port));
        assert!(f.take_responses(0).is_empty());
    }
    // Not revived by a sane req_prod either.
    {
        let r = &mut w.fronts[0].rings[0];
        r.mem.store_u32_release(REQ_PROD, r.cons.wrapping_add(1));
        w.fronts[0].e.send(bad_port).unwrap();
    }
    assert!(w.pump());
    assert_eq!(w.blk.stats.requests, before);
    // The same frontend's other queue and the other frontend still work.
    w.write_read_back(0, 1, 800, 2);
    w.write_read_back(1, 0, 1600, 3);
    // Closing tears down the broken ring too.
    w.fe_state(0, 5);
    w.fe_state(0, 6);
    assert_eq!(w.fronts[0].end_all(), []);
    assert_eq!(w.blk.ports().len(), 1);
    w.write_read_back(1, 0, 2000, 4);
}

#[test]
fn req_prod_behind_consumer_is_broken_too() {
    let mut w = world(ram(1), BackendConfig::default(), &[5]);
    w.attach(0);
    w.connect(0, Opts { start: 100, ..Opts::default() });
    w.write_read_back(0, 0, 0, 1);
    let r = &mut w.fronts[0].rings[0];
    r.mem.store_u32_release(REQ_PROD, r.cons.wrapping_sub(3));
    let port = r.port;
    w.fronts[0].e.send(port).unwrap();
    assert!(w.pump());
    assert!(w.blk.ports().is_empty());
    w.fe_state(0, 5);
    w.fe_state(0, 6);
    assert_eq!(w.fronts[0].end_all(), []);
}

#[test]
fn bad_handshake_keys_are_refused() {
    for (key, val) in
        [("protocol", "arm-abi"), ("multi-queue-num-queues", "17"), ("ring-page-order", "9"), ("event-channel", "x")]
    {
        let mut w = world(ram(1), BackendConfig::default(), &[5]);
        w.attach(0);
        let o = Opts::default();
        w.fronts[0].make_rings(&o);
        let keys = w.fronts[0].keys(&o);
        for (k, v) in keys {
            w.fe_write(0, &k, &v);
        }
        w.fe_write(0, key, val);
        w.fe_state(0, 3);
        assert_eq!(w.be_state(0).as_deref(), Some("5"), "{key}={val}");
        assert!(w.be(0, "error").is_some());
        assert!(w.blk.ports().is_empty());
        assert_eq!(w.fronts[0].end_all(), [], "{key}={val}");
    }
    // A missing ring-ref, and a state node that is not a number.
    for bad_state in [false, true] {
        let mut w = world(ram(1), BackendConfig::default(), &[5]);
        w.attach(0);
        let o = Opts::default();
        w.fronts[0].make_rings(&o);
        for (k, v) in w.fronts[0].keys(&o) {
            w.fe_write(0, &k, &v);
        }
        if bad_state {
            w.fe_write(0, "state", "Initialised");
            assert!(w.pump());
        } else {
            let p = format!("{}/ring-ref", w.fronts[0].fe_dir());
            w.xsd.external_rm(&p);
            w.fe_state(0, 3);
        }
        assert_eq!(w.be_state(0).as_deref(), Some("5"), "bad_state {bad_state}");
        assert!(w.be(0, "error").is_some());
        assert_eq!(w.be(0, "sectors"), None);
        assert!(w.blk.ports().is_empty());
        assert_eq!(w.fronts[0].end_all(), []);
    }
    // An event channel not offered to us.
    let mut w = world(ram(1), BackendConfig::default(), &[5]);
    w.attach(0);
    let o = Opts::default();
    w.fronts[0].make_rings(&o);
    for (k, v) in w.fronts[0].keys(&o) {
        w.fe_write(0, &k, &v);
    }
    w.fe_write(0, "event-channel", "77");
    w.fe_state(0, 3);
    assert_eq!(w.be_state(0).as_deref(), Some("5"));
    assert_eq!(w.be(0, "sectors"), None);
    assert_eq!(w.fronts[0].end_all(), []);
}

// ---------------------------------------------------------------------------
// 7. Flush and barrier ordering.

#[test]
fn flush_and_barrier_wait_for_earlier_writes() {
    let mut w = world(SlowDisk::new(DISK_SECTORS, 1, 3, 16), BackendConfig::default(), &[5]);
    w.attach(0);
    w.connect(0, Opts::default());
    w.blk.disk_mut().log.clear();
    let f = &mut w.fronts[0];
    let (w1, id1, s1) = f.rw(BLKIF_OP_WRITE, 0, &[(0, 7)], 1, true);
    let (w2, id2, s2) = f.rw(BLKIF_OP_WRITE, 8, &[(0, 7)], 2, true);
    let fid = f.id();
    let flush = enc_rw(f.abi, BLKIF_OP_FLUSH_DISKCACHE, fid, 0, &[]);
    let (w3, id3, _) = f.rw(BLKIF_OP_WRITE, 16, &[(0, 7)], 3, true);
    let (mut barrier, bid, bsegs) = f.rw(BLKIF_OP_WRITE, 24, &[(0, 7)], 4, true);
    barrier[0] = BLKIF_OP_WRITE_BARRIER;
    let (w4, id4, _) = f.rw(BLKIF_OP_WRITE, 32, &[(0, 7)], 5, true);
    let rsp = w.io(0, 0, &[w1, w2, flush, w3, barrier, w4]);
    let pos = |id: u64| rsp.iter().position(|r| r.id == id).expect("answered");
    for (id, op) in [
        (id1, BLKIF_OP_WRITE),
        (id2, BLKIF_OP_WRITE),
        (fid, BLKIF_OP_FLUSH_DISKCACHE),
        (id3, BLKIF_OP_WRITE),
        (bid, BLKIF_OP_WRITE_BARRIER),
        (id4, BLKIF_OP_WRITE),
    ] {
        assert_eq!(rsp[pos(id)], okay(id, op));
    }
    assert!(pos(fid) > pos(id1) && pos(fid) > pos(id2), "flush answered before earlier writes: {rsp:?}");
    assert!(pos(bid) > pos(id3) && pos(bid) > pos(fid), "barrier answered before earlier requests: {rsp:?}");
    let log = w.blk.disk_mut().log.clone();
    let at = |e: DiskEv| log.iter().position(|x| *x == e).unwrap_or_else(|| panic!("{e:?} not in {log:?}"));
    let flushes: Vec<usize> =
        log.iter().enumerate().filter(|(_, e)| matches!(e, DiskEv::Submit('F', _))).map(|(i, _)| i).collect();
    assert_eq!(flushes.len(), 2, "one flush for FLUSH, one for the barrier: {log:?}");
    // FLUSH reaches the disk only after both earlier writes completed.
    assert!(flushes[0] > at(DiskEv::Done('W', 0)) && flushes[0] > at(DiskEv::Done('W', 8)), "{log:?}");
    // The barrier's data goes down after everything before it completed,
    // its flush after its data completed, and it is answered after that.
    let bw = at(DiskEv::Submit('W', 24));
    assert!(bw > at(DiskEv::Done('W', 16)) && bw > at(DiskEv::Done('F', 0)), "{log:?}");
    assert!(flushes[1] > at(DiskEv::Done('W', 24)), "{log:?}");
    let contents = w.blk.disk_mut().inner.contents().to_vec();
    assert_eq!(&contents[..PAGE], &seg_bytes(&s1)[..]);
    assert_eq!(&contents[8 * SECT..8 * SECT + PAGE], &seg_bytes(&s2)[..]);
    assert_eq!(&contents[24 * SECT..24 * SECT + PAGE], &seg_bytes(&bsegs)[..]);
}

#[test]
fn flush_alone_and_in_batches_on_idle_ring() {
    let mut w = world(ram(1), BackendConfig::default(), &[5]);
    w.attach(0);
    w.connect(0, Opts::default());
    for _ in 0..3 {
        let f = &mut w.fronts[0];
        let fid = f.id();
        let flush = enc_rw(f.abi, BLKIF_OP_FLUSH_DISKCACHE, fid, 0, &[]);
        assert_eq!(w.io(0, 0, &[flush]), [okay(fid, BLKIF_OP_FLUSH_DISKCACHE)]);
    }
}

// ---------------------------------------------------------------------------
// 8. Disconnect and reconnect.

#[test]
fn disconnect_releases_everything_and_reconnect_works() {
    let mut w = world(SlowDisk::new(DISK_SECTORS, 1, 2, 8), BackendConfig::default(), &[5]);
    w.attach(0);
    w.connect(0, Opts { persistent: true, order: Some(1), ..Opts::default() });
    w.write_read_back(0, 0, 0, 1);
    let (ireq, iid, ipages) = w.fronts[0].indirect(BLKIF_OP_WRITE, 400, 30, 7);
    assert_eq!(w.io(0, 0, &[ireq]), [okay(iid, BLKIF_OP_WRITE)]);
    // Leave requests in flight on the slow disk while the frontend closes.
    let (late, _, _) = w.fronts[0].rw(BLKIF_OP_WRITE, 700, &[(0, 7)], 9, true);
    w.fronts[0].push(0, &late);
    w.fronts[0].publish(0);
    w.blk.poll(&mut w.g, &mut w.e);
    w.fe_state(0, 5);
    assert_eq!(w.be_state(0).as_deref(), Some("5"));
    w.fe_state(0, 6);
    assert_eq!(w.be_state(0).as_deref(), Some("6"));
    assert!(w.blk.ports().is_empty());
    assert_eq!(w.fronts[0].end_all(), [], "every grant can be revoked after Closed");
    assert_eq!(w.blk.vbd_count(), 1, "still online: the device stays for a reconnect");
    // The frontend comes back with a fresh ring (blkfront resume).
    w.fe_state(0, 1);
    assert_eq!(w.be_state(0).as_deref(), Some("2"));
    w.connect(0, Opts { persistent: true, start: 1000, ..Opts::default() });
    // Data written before the disconnect is still there.
    let (rreq, rid, rpages) = w.fronts[0].indirect(BLKIF_OP_READ, 400, 30, 0);
    assert_eq!(w.io(0, 0, &[rreq]), [okay(rid, BLKIF_OP_READ)]);
    let got: Vec<u8> = rpages.iter().flat_map(|p| p.page.snapshot()).collect();
    let want: Vec<u8> = ipages.iter().flat_map(|p| p.page.snapshot()).collect();
    assert!(got == want, "data survives a reconnect");
    w.write_read_back(0, 0, 1200, 2);
    // And a second cycle, without persistent grants this time.
    w.fe_state(0, 5);
    w.fe_state(0, 6);
    assert_eq!(w.fronts[0].end_all(), []);
    w.fe_state(0, 1);
    w.connect(0, Opts { protocol: None, ..Opts::default() });
    w.write_read_back(0, 0, 1400, 3);
}

#[test]
fn frontend_closes_with_io_in_flight() {
    // Completions lag 6 polls behind: the frontend closes while its reads
    // and writes are still on the disk.
    let mut w = world(SlowDisk::new(DISK_SECTORS, 1, 6, 8), BackendConfig::default(), &[5]);
    w.attach(0);
    w.connect(0, Opts { persistent: true, ..Opts::default() });
    w.write_read_back(0, 0, 0, 1);
    for i in 0..6u64 {
        let op = if i % 2 == 0 { BLKIF_OP_READ } else { BLKIF_OP_WRITE };
        let (r, _, _) = w.fronts[0].rw(op, i * 8, &[(0, 7), (0, 7)], i as u32, true);
        w.fronts[0].push(0, &r);
    }
    w.fronts[0].publish(0);
    w.blk.poll(&mut w.g, &mut w.e);
    assert!(w.blk.disk_mut().held[0].len() >= 2, "requests in flight");
    // Straight to Closed (blkfront on a crash), no Closing first.
    w.fe_state(0, 6);
    assert_eq!(w.be_state(0).as_deref(), Some("6"));
    assert_eq!(w.fronts[0].end_all(), [], "every grant can be revoked once Closed");
    // Late completions must not land on the next connection's ring.
    w.fe_state(0, 1);
    w.connect(0, Opts { start: 50, ..Opts::default() });
    for _ in 0..20 {
        w.blk.poll(&mut w.g, &mut w.e);
    }
    assert!(w.fronts[0].take_responses(0).is_empty(), "stale responses on the new ring");
    w.write_read_back(0, 0, 100, 2);
}

#[test]
fn disconnect_gives_up_on_a_stuck_disk() {
    let mut w = world_with(
        |clock| {
            let mut d = SlowDisk::new(DISK_SECTORS, 1, 0, 8);
            d.clock = Some(clock);
            d
        },
        BackendConfig::default(),
        &[5],
    );
    w.attach(0);
    w.connect(0, Opts { persistent: true, ..Opts::default() });
    w.write_read_back(0, 0, 0, 1);
    w.blk.disk_mut().stuck = true;
    let (r, _, _) = w.fronts[0].rw(BLKIF_OP_READ, 0, &[(0, 7), (0, 7)], 0, true);
    let (wr, _, _) = w.fronts[0].rw(BLKIF_OP_WRITE, 64, &[(0, 7)], 3, true);
    w.fronts[0].push(0, &r);
    w.fronts[0].push(0, &wr);
    w.fronts[0].publish(0);
    w.blk.poll(&mut w.g, &mut w.e);
    assert_eq!(w.blk.disk_mut().held[0].len(), 2, "both requests on the hung disk");
    let t0 = w.e.now();
    w.fe_state(0, 6);
    assert!(w.e.now() - t0 >= 30_000_000_000, "gave up before the 30 s drain deadline");
    assert!(w.e.now() - t0 < 40_000_000_000, "waited well past the drain deadline");
    assert_eq!(w.be_state(0).as_deref(), Some("6"));
    assert_eq!(w.fronts[0].end_all(), [], "mappings released despite the hung disk");
    // The device recovers and completes the old requests after the
    // frontend reconnected with a new ring: they must be dropped.
    w.fe_state(0, 1);
    w.connect(0, Opts { start: 9, ..Opts::default() });
    w.blk.disk_mut().stuck = false;
    for _ in 0..10 {
        w.blk.poll(&mut w.g, &mut w.e);
    }
    assert!(w.blk.disk_mut().held[0].is_empty());
    assert!(w.fronts[0].take_responses(0).is_empty(), "stale answers on the new ring");
    w.write_read_back(0, 0, 100, 2);
}

// ---------------------------------------------------------------------------
// 9. Frontend and backend directories vanishing; toolstack detach.

fn connected_with_io() -> World<RamDisk<Buf>> {
    let mut w = world(ram(1), BackendConfig::default(), &[5, 6]);
    w.attach(0);
    w.attach(1);
    w.connect(0, Opts { persistent: true, queues: 2, ..Opts::default() });
    w.connect(1, Opts::default());
    w.write_read_back(0, 0, 0, 1);
    w.write_read_back(0, 1, 200, 2);
    w.write_read_back(1, 0, 400, 3);
    w
}

#[test]
fn frontend_directory_removed() {
    let mut w = connected_with_io();
    let fe = w.fronts[0].fe_dir();
    w.xsd.external_rm(&fe);
    assert!(w.pump(), "backend settles after the frontend vanished");
    assert_eq!(w.fronts[0].end_all(), [], "all mappings released");
    assert_eq!(w.blk.ports().len(), 1, "only the other vbd's ring is left");
    assert_eq!(w.be_state(0).as_deref(), Some("6"));
    assert_eq!(w.blk.vbd_count(), 1, "the dead vbd is not probed again");
    // Nothing happens on further activity elsewhere in the backend tree.
    w.write_read_back(1, 0, 600, 4);
    w.xsd.external_write(&format!("{}/backend/vbd/6/{DEV}/removable", home()), b"0");
    assert!(w.pump());
    assert_eq!(w.blk.vbd_count(), 1);
    assert_eq!(w.be_state(0).as_deref(), Some("6"));
    // We remove our own (closed) directory after the delay; and once the
    // toolstack also cleans up, nothing comes back.
    let be = w.fronts[0].be_dir();
    remove_after_delay(&mut w, &be);
    assert!(w.pump());
    assert_eq!(w.value(&format!("{be}/state")), None);
    w.write_read_back(1, 0, 800, 5);
}

#[test]
fn backend_directory_removed_by_toolstack() {
    for fe_first in [false, true] {
        let mut w = connected_with_io();
        let (be, fe) = (w.fronts[0].be_dir(), w.fronts[0].fe_dir());
        // Domain destruction: libxl removes both directories.
        if fe_first {
            w.xsd.external_rm(&fe);
            w.xsd.external_rm(&be);
        } else {
            w.xsd.external_rm(&be);
            w.xsd.external_rm(&fe);
        }
        assert!(w.pump());
        assert_eq!(w.value(&be), None, "backend dir re-created (fe_first {fe_first})");
        for k in ["state", "physical-device", "hotplug-status", "error"] {
            assert_eq!(w.value(&format!("{be}/{k}")), None, "{k} re-created (fe_first {fe_first})");
        }
        assert_eq!(w.fronts[0].end_all(), [], "all mappings released (fe_first {fe_first})");
        assert_eq!(w.blk.vbd_count(), 1);
        assert_eq!(w.blk.ports().len(), 1);
        w.write_read_back(1, 0, 800, 5);
    }
}

#[test]
fn backend_directory_removed_alone() {
    // The toolstack removes only our directory; the frontend lives on.
    let mut w = connected_with_io();
    let be = w.fronts[0].be_dir();
    w.xsd.external_rm(&be);
    assert!(w.pump());
    assert_eq!(w.value(&be), None);
    assert_eq!(w.fronts[0].end_all(), []);
    assert_eq!(w.blk.vbd_count(), 1);
    // The frontend noticing and closing changes nothing either.
    w.fe_state(0, 5);
    w.fe_state(0, 6);
    assert_eq!(w.value(&be), None, "a gone directory is not re-created");
}

/// A closed device's backend directory stays until `RM_DELAY_NS` has passed
/// (libxl must read state 6 first), then `maintenance` removes it.
fn remove_after_delay<D: BlockDevice<Buffer = Buf>>(w: &mut World<D>, be: &str) {
    w.blk.maintenance(&mut w.xs, &mut w.g, &mut w.e);
    assert_eq!(w.value(&format!("{be}/state")).as_deref(), Some("6"), "kept, Closed, until libxl has seen it");
    let later = w.e.now() + blkback::RM_DELAY_NS + 1;
    let _ = w.e.wait_any(&[], later);
    w.blk.maintenance(&mut w.xs, &mut w.g, &mut w.e);
    assert!(w.pump());
    assert_eq!(w.value(be), None, "backend directory removed by the backend");
}

#[test]
fn toolstack_detach_online_zero() {
    let mut w = connected_with_io();
    let be = w.fronts[0].be_dir();
    w.xsd.external_write(&format!("{be}/online"), b"0");
    assert!(w.pump());
    assert_eq!(w.be_state(0).as_deref(), Some("5"), "asks the frontend to close");
    // Still serving until the frontend closes.
    w.write_read_back(0, 0, 1000, 6);
    w.fe_state(0, 5);
    w.fe_state(0, 6);
    assert_eq!(w.be_state(0).as_deref(), Some("6"), "Closed, not probed again");
    assert_eq!(w.fronts[0].end_all(), []);
    assert_eq!(w.blk.vbd_count(), 1, "the detached vbd is gone");
    // libxl saw Closed; the driver domain removes its backend directory
    // (libxl waits for that), then libxl removes the frontend's.
    remove_after_delay(&mut w, &be);
    let fe = w.fronts[0].fe_dir();
    w.xsd.external_rm(&fe);
    assert!(w.pump());
    // A new device on the same path later is served again.
    w.attach(0);
    w.connect(0, Opts::default());
    w.write_read_back(0, 0, 1000, 7);
}

#[test]
fn transient_xenstore_errors_do_not_tear_down_devices() {
    // A scan whose directory listing fails (EIO, a timeout, or the listing
    // of one domain's devices failing) cannot tell "absent" from
    // "unknown": it must not treat every vbd as removed.
    let cases: [&[Fault]; 3] =
        [&[Fault::Error("EIO")], &[Fault::Swallow], &[Fault::Payload(b"5\x006\x00".to_vec()), Fault::Error("EIO")]];
    for faults in cases {
        let mut w = connected_with_io();
        for f in faults {
            w.xsd.inject(f.clone());
        }
        // Any change under backend/vbd makes the backend rescan.
        w.xsd.external_write(&format!("{}/backend/vbd/6/{DEV}/removable", home()), b"0");
        assert!(w.pump());
        assert_eq!(w.be_state(0).as_deref(), Some("4"), "{faults:?}");
        assert_eq!(w.be_state(1).as_deref(), Some("4"), "{faults:?}");
        assert_eq!(w.blk.ports().len(), 3, "{faults:?}");
        w.write_read_back(0, 1, 1000, 8);
        w.write_read_back(1, 0, 1200, 9);
    }
}

/// Watch events can be lost (queue overflow) or arrive while the toolstack
/// is still writing the directory: `maintenance` finds the vbd anyway.
#[test]
fn vbd_found_by_maintenance_after_lost_or_early_events() {
    let mut w = world(ram(1), BackendConfig::default(), &[5]);
    let (be, fe, dom) = (w.fronts[0].be_dir(), w.fronts[0].fe_dir(), w.fronts[0].dom.0);
    w.xsd.external_write(&be, b"");
    w.xsd.external_set_perms(&be, &[Perm::new(PermKind::None, BE.0), Perm::new(PermKind::Read, dom)]);
    w.xsd.external_write(&fe, b"");
    w.xsd.external_set_perms(&fe, &[Perm::new(PermKind::None, dom), Perm::new(PermKind::Read, BE.0)]);
    for (k, v) in [("backend", be.clone()), ("backend-id", BE.0.to_string()), ("state", "1".into())] {
        w.xsd.external_write(&format!("{fe}/{k}"), v.as_bytes());
    }
    // The backend sees the events while `frontend` is not written yet.
    w.xsd.external_write(&format!("{be}/frontend-id"), dom.to_string().as_bytes());
    assert!(w.pump());
    assert_eq!(w.be_state(0), None, "incomplete directory: nothing written yet");
    // The rest arrives, but its watch events are lost.
    for (k, v) in [("frontend", fe.clone()), ("params", "ram0".into()), ("online", "1".into()), ("state", "1".into())] {
        w.xsd.external_write(&format!("{be}/{k}"), v.as_bytes());
    }
    while w.xs.poll_watch().expect("client").is_some() {}
    assert!(w.pump());
    assert_eq!(w.be_state(0).as_deref(), Some("1"), "events were lost: not handled yet");
    assert!(w.blk.maintenance(&mut w.xs, &mut w.g, &mut w.e), "the early look asked for a rescan");
    assert!(w.pump());
    assert_eq!(w.be_state(0).as_deref(), Some("2"), "found by the rescan, InitWait");
    assert!(!w.blk.maintenance(&mut w.xs, &mut w.g, &mut w.e), "no rescan needed any more");
    // A later loss reported by the main loop (dropped events) also rescans.
    w.blk.request_rescan();
    assert!(w.blk.maintenance(&mut w.xs, &mut w.g, &mut w.e));
    assert!(w.pump());
    w.connect(0, Opts::default());
    w.write_read_back(0, 0, 64, 7);
}

/// A frontend filling its ring with the largest requests cannot make the
/// backend hold more disk buffers than `MAX_BUFFER_BYTES`: the rest waits in
/// the ring and is served as buffers come back; nothing is refused.
#[test]
fn buffer_memory_is_bounded_whatever_the_frontend_asks() {
    use blkback::MAX_BUFFER_BYTES;
    let mut w = world(ram(1), BackendConfig::default(), &[5]);
    w.attach(0);
    w.connect(0, Opts::default());
    let n = 12; // 12 MiB of reads, three times the budget
    let mut ids = Vec::new();
    for _ in 0..n {
        let (req, id, _) = w.fronts[0].indirect(BLKIF_OP_READ, 0, 256, 0);
        w.fronts[0].push(0, &req);
        ids.push(id);
    }
    w.fronts[0].publish(0);
    assert!(w.blk.poll(&mut w.g, &mut w.e), "work to do");
    let held = w.blk.buffer_bytes();
    assert!(held > 0 && held <= MAX_BUFFER_BYTES, "one poll took {held} bytes of buffers (budget {MAX_BUFFER_BYTES})");
    let rsp = w.collect(0, 0, n);
    for id in ids {
        assert!(rsp.contains(&okay(id, BLKIF_OP_READ)), "request {id:#x} answered OKAY: {rsp:?}");
    }
    assert_eq!(w.blk.buffer_bytes(), 0, "every buffer returned");
}

/// libxl's `block-detach` of a device served by a driver domain: it writes
/// `online = 0` and `state = 5` into our directory, waits for state 6, then
/// waits for the driver domain to remove the directory, then removes the
/// frontend's. The device must not be probed again at any point.
#[test]
fn libxl_block_detach_sequence() {
    let mut w = connected_with_io();
    let (be, fe) = (w.fronts[0].be_dir(), w.fronts[0].fe_dir());
    w.xsd.external_write(&format!("{be}/online"), b"0");
    w.xsd.external_write(&format!("{be}/state"), b"5");
    assert!(w.pump());
    assert_eq!(w.be_state(0).as_deref(), Some("5"));
    w.fe_state(0, 5);
    w.fe_state(0, 6);
    assert_eq!(w.be_state(0).as_deref(), Some("6"), "Closed for libxl");
    assert_eq!(w.fronts[0].end_all(), [], "everything unmapped");
    for _ in 0..3 {
        w.blk.maintenance(&mut w.xs, &mut w.g, &mut w.e);
        assert!(w.pump());
    }
    assert_eq!(w.blk.vbd_count(), 1, "not probed again while Closed");
    remove_after_delay(&mut w, &be);
    assert_eq!(w.blk.vbd_count(), 1);
    w.xsd.external_rm(&fe);
    assert!(w.pump());
    w.blk.request_rescan();
    w.blk.maintenance(&mut w.xs, &mut w.g, &mut w.e);
    assert!(w.pump());
    assert_eq!(w.blk.vbd_count(), 1, "nothing comes back");
    assert_eq!(w.value(&be), None);
    // block-attach of the same vdev again works.
    w.attach(0);
    w.connect(0, Opts::default());
    w.write_read_back(0, 0, 100, 9);
}

/// The toolstack may write our directory before the frontend's: the device
/// waits (it is neither served nor treated as gone), then connects.
#[test]
fn backend_written_before_frontend() {
    let mut w = world(ram(1), BackendConfig::default(), &[5]);
    let (be, fe, dom) = (w.fronts[0].be_dir(), w.fronts[0].fe_dir(), w.fronts[0].dom.0);
    w.xsd.external_write(&be, b"");
    w.xsd.external_set_perms(&be, &[Perm::new(PermKind::None, BE.0), Perm::new(PermKind::Read, dom)]);
    for (k, v) in [
        ("frontend", fe.clone()),
        ("frontend-id", dom.to_string()),
        ("params", "ram0".into()),
        ("online", "1".into()),
        ("state", "1".into()),
    ] {
        w.xsd.external_write(&format!("{be}/{k}"), v.as_bytes());
    }
    assert!(w.pump());
    for _ in 0..3 {
        w.blk.maintenance(&mut w.xs, &mut w.g, &mut w.e);
        let later = w.e.now() + blkback::RM_DELAY_NS + 1;
        let _ = w.e.wait_any(&[], later);
        assert!(w.pump());
    }
    assert_eq!(w.be_state(0).as_deref(), Some("1"), "waiting for the frontend, directory intact");
    w.xsd.external_write(&fe, b"");
    w.xsd.external_set_perms(&fe, &[Perm::new(PermKind::None, dom), Perm::new(PermKind::Read, BE.0)]);
    for (k, v) in [("backend", be.clone()), ("backend-id", BE.0.to_string()), ("state", "1".into())] {
        w.xsd.external_write(&format!("{fe}/{k}"), v.as_bytes());
    }
    assert!(w.pump());
    w.blk.maintenance(&mut w.xs, &mut w.g, &mut w.e);
    assert!(w.pump());
    assert_eq!(w.be_state(0).as_deref(), Some("2"), "probed once the frontend exists");
    w.connect(0, Opts::default());
    w.write_read_back(0, 0, 100, 11);
}

/// Requests above the disk's transfer limit are split into parts and
/// answered once, OKAY, with the data where it belongs.
#[test]
fn large_requests_are_split_for_the_disk() {
    let mut w = world(SlowDisk::new(DISK_SECTORS, 1, 0, 64).with_limit(16 * 1024), BackendConfig::default(), &[5]);
    w.attach(0);
    w.connect(0, Opts { protocol: Some(Abi::X86_64), ..Opts::default() });
    let (wreq, wid, wpages) = w.fronts[0].indirect(BLKIF_OP_WRITE, 64, 40, 21);
    assert_eq!(w.io(0, 0, &[wreq]), [okay(wid, BLKIF_OP_WRITE)], "one answer for the split write");
    let written: Vec<u8> = wpages.iter().flat_map(|p| p.page.snapshot()).collect();
    assert_eq!(&w.blk.disk_mut().inner.contents()[64 * SECT..64 * SECT + 40 * PAGE], &written[..]);
    let (rreq, rid, rpages) = w.fronts[0].indirect(BLKIF_OP_READ, 64, 40, 0);
    assert_eq!(w.io(0, 0, &[rreq]), [okay(rid, BLKIF_OP_READ)]);
    let read: Vec<u8> = rpages.iter().flat_map(|p| p.page.snapshot()).collect();
    assert!(read == written, "the split read returns the split write");
    assert_eq!(w.blk.disk_mut().largest, 16 * 1024, "no command above the limit");
    assert_eq!(w.blk.buffer_bytes(), 0);
}

/// A directory found with online = 0 or in Closing/Closed (a device being
/// torn down, e.g. left over by a crashed backend) is not adopted.
#[test]
fn devices_being_torn_down_are_not_adopted() {
    for (online, state) in [("0", "1"), ("1", "5"), ("1", "6")] {
        let mut w = world(ram(1), BackendConfig::default(), &[5]);
        let (be, fe, dom) = (w.fronts[0].be_dir(), w.fronts[0].fe_dir(), w.fronts[0].dom.0);
        w.xsd.external_write(&fe, b"");
        w.xsd.external_set_perms(&fe, &[Perm::new(PermKind::None, dom), Perm::new(PermKind::Read, BE.0)]);
        w.xsd.external_write(&format!("{fe}/state"), b"1");
        w.xsd.external_write(&be, b"");
        w.xsd.external_set_perms(&be, &[Perm::new(PermKind::None, BE.0), Perm::new(PermKind::Read, dom)]);
        for (k, v) in [
            ("frontend", fe.clone()),
            ("frontend-id", dom.to_string()),
            ("online", online.into()),
            ("state", state.into()),
        ] {
            w.xsd.external_write(&format!("{be}/{k}"), v.as_bytes());
        }
        assert!(w.pump());
        w.blk.request_rescan();
        w.blk.maintenance(&mut w.xs, &mut w.g, &mut w.e);
        assert!(w.pump());
        assert_eq!(w.blk.vbd_count(), 0, "online {online}, state {state}: not adopted");
        assert_eq!(w.be_state(0).as_deref(), Some(state), "nothing written");
    }
}

// ---------------------------------------------------------------------------
// 10. Grant copy: the data path of rings without persistent grants.

impl Front {
    /// An indirect request over fresh pages with the given spans (write
    /// pages carry `pattern`, read pages 0x5a).
    fn indirect_spans(
        &mut self,
        op: u8,
        sector: u64,
        spans: &[(u8, u8)],
        seed: u32,
    ) -> (Req, u64, Vec<(DPage, u8, u8)>) {
        let id = self.id();
        let segs: Vec<(DPage, u8, u8)> = spans
            .iter()
            .enumerate()
            .map(|(i, &(f, l))| {
                let d = if op == BLKIF_OP_READ { vec![0x5a; PAGE] } else { pattern(seed + i as u32, PAGE) };
                (self.grant_page(&d, false), f, l)
            })
            .collect();
        let mut ind = Vec::new();
        for chunk in segs.chunks(abi::SEGMENTS_PER_INDIRECT_PAGE) {
            let mut b = vec![0u8; PAGE];
            for (i, (p, f, l)) in chunk.iter().enumerate() {
                abi::Segment { gref: p.gref.0, first_sect: *f, last_sect: *l }.encode(&mut b[i * 8..]);
            }
            ind.push(self.grant_page(&b, true).gref);
        }
        (enc_indirect(self.abi, op, segs.len() as u16, id, sector, &ind), id, segs)
    }
}

/// Reads and writes of every shape round-trip by grant copy, one copy call
/// per request (two for an indirect one: its segment page, then the data),
/// and nothing is ever mapped but the ring. With grant copy switched off
/// the same traffic maps instead.
#[test]
fn copy_path_round_trips_without_mapping() {
    for copy in [true, false] {
        let mut w = world(ram(1), BackendConfig::default(), &[5]);
        w.blk.set_grant_copy(copy);
        w.attach(0);
        w.connect(0, Opts::default());
        let ring: BTreeSet<u32> = w.fronts[0].rings[0].grefs.iter().map(|g| g.0).collect();
        let (maps, copies) = (w.g.map_calls(), w.g.copy_calls());
        // 3 writes and 3 reads of 1, 3 and 11 segments.
        w.write_read_back(0, 0, 64, 1);
        let (wreq, wid, wsegs) = w.fronts[0].indirect_spans(BLKIF_OP_WRITE, 1000, &[(0, 7); 40], 9);
        assert_eq!(w.io(0, 0, &[wreq]), [okay(wid, BLKIF_OP_WRITE)]);
        let (rreq, rid, rsegs) = w.fronts[0].indirect_spans(BLKIF_OP_READ, 1000, &[(0, 7); 40], 0);
        assert_eq!(w.io(0, 0, &[rreq]), [okay(rid, BLKIF_OP_READ)]);
        assert!(seg_bytes(&rsegs) == seg_bytes(&wsegs), "copy {copy}: indirect read returns the indirect write");
        assert_eq!(&w.blk.disk_mut().contents()[1000 * SECT..1000 * SECT + 40 * PAGE], &seg_bytes(&wsegs)[..]);
        if copy {
            assert_eq!(w.g.map_calls(), maps, "no grant mapped on a copy ring");
            assert_eq!(
                w.g.copy_calls() - copies,
                6 + 2 * 2,
                "one copy call per request, plus one per indirect page set"
            );
            assert_eq!(w.blk.stats.grant_copies, 10);
            assert_eq!(w.blk.stats.grant_maps, 0);
        } else {
            assert_eq!(w.g.copy_calls(), copies, "copy switched off");
            assert_eq!(w.blk.stats.grant_maps, 6 + 2 * 2);
        }
        // Either way nothing stays mapped: every data grant ends at once.
        let f = &mut w.fronts[0];
        for g in f.granted.clone() {
            if !ring.contains(&g) {
                assert_eq!(f.g.end_access(GrantRef(g)), Ok(()), "grant {g} still in use");
            }
        }
        assert_eq!(w.blk.buffer_bytes(), 0);
    }
}

/// Segments that start and end inside their pages land at buffer offsets
/// that are not page aligned: each copy element is cut where the disk
/// buffer crosses a frame (the fake refuses elements crossing a page), and
/// a read with other sector offsets returns exactly the bytes written.
#[test]
fn copy_segments_split_at_frame_boundaries() {
    let mut w = world(ram(1), BackendConfig::default(), &[5]);
    w.attach(0);
    w.connect(0, Opts::default());
    // 6 + 8 sectors: the second segment covers buffer bytes 3072..7168.
    let ops = w.g.copy_ops();
    let (wreq, wid, wsegs) = w.fronts[0].rw(BLKIF_OP_WRITE, 200, &[(1, 6), (0, 7)], 3, true);
    assert_eq!(w.io(0, 0, &[wreq]), [okay(wid, BLKIF_OP_WRITE)]);
    assert_eq!(w.g.copy_ops() - ops, 3, "3072 bytes, then 1024 + 3072 across the frame boundary");
    let written = seg_bytes(&wsegs);
    assert_eq!(&w.blk.disk_mut().contents()[200 * SECT..214 * SECT], &written[..]);
    // The same 14 sectors as 5 + 8 + 1 at other offsets in their pages.
    let ops = w.g.copy_ops();
    let (rreq, rid, rsegs) = w.fronts[0].rw(BLKIF_OP_READ, 200, &[(3, 7), (0, 7), (7, 7)], 0, false);
    assert_eq!(w.io(0, 0, &[rreq]), [okay(rid, BLKIF_OP_READ)]);
    assert_eq!(w.g.copy_ops() - ops, 4, "2560, then 1536 + 2560, then 512");
    assert_eq!(seg_bytes(&rsegs), written);
    // Bytes of the read pages outside the segments are untouched.
    let first = rsegs[0].0.page.snapshot();
    assert!(first[..3 * SECT].iter().all(|&b| b == 0xa5), "bytes before first_sect kept");
}

/// A copy element that fails (a grant never given, a read into a read-only
/// grant, an indirect page not granted) answers ERROR for its request only;
/// the requests around it complete, and a failed write reaches no disk.
#[test]
fn failing_copy_fails_only_its_request() {
    let mut w = world(ram(1), BackendConfig::default(), &[5]);
    w.attach(0);
    w.connect(0, Opts::default());
    let maps = w.g.map_calls();
    let f = &mut w.fronts[0];
    let abi = f.abi;
    let (a, aid, asegs) = f.rw(BLKIF_OP_WRITE, 0, &[(0, 7)], 1, true);
    // Three segments, the middle one never granted.
    let (good1, good2) = (f.grant_page(&pattern(2, PAGE), true), f.grant_page(&pattern(3, PAGE), true));
    let bid = f.id();
    let b = enc_rw(
        abi,
        BLKIF_OP_WRITE,
        bid,
        64,
        &[
            abi::Segment { gref: good1.gref.0, first_sect: 0, last_sect: 7 },
            abi::Segment { gref: 0xdead, first_sect: 0, last_sect: 7 },
            abi::Segment { gref: good2.gref.0, first_sect: 0, last_sect: 7 },
        ],
    );
    let (c, cid, csegs) = f.rw(BLKIF_OP_READ, 0, &[(0, 7)], 0, false);
    // A read whose target page is granted read-only: the copy into it fails.
    let ro = f.grant_page(&[0x11; PAGE], true);
    let did = f.id();
    let d = enc_rw(abi, BLKIF_OP_READ, did, 0, &[abi::Segment { gref: ro.gref.0, first_sect: 0, last_sect: 7 }]);
    let eid = f.id();
    let e = enc_indirect(abi, BLKIF_OP_WRITE, 2, eid, 128, &[GrantRef(0xbeef)]);
    let (g, gid, gsegs) = f.rw(BLKIF_OP_WRITE, 256, &[(0, 7), (2, 5)], 4, true);
    let rsp = by_id(&w.io(0, 0, &[a, b, c, d, e, g]));
    assert_eq!(rsp[&aid], okay(aid, BLKIF_OP_WRITE));
    assert_eq!(rsp[&bid], error(bid, BLKIF_OP_WRITE));
    assert_eq!(rsp[&cid], okay(cid, BLKIF_OP_READ));
    assert_eq!(rsp[&did], error(did, BLKIF_OP_READ));
    assert_eq!(rsp[&eid], error(eid, BLKIF_OP_WRITE));
    assert_eq!(rsp[&gid], okay(gid, BLKIF_OP_WRITE));
    assert_eq!(seg_bytes(&csegs), seg_bytes(&asegs), "the read behind the failures got its data");
    assert_eq!(ro.page.snapshot(), vec![0x11; PAGE], "read-only page untouched");
    let disk = w.blk.disk_mut().contents().to_vec();
    assert_eq!(&disk[..PAGE], &seg_bytes(&asegs)[..]);
    assert!(disk[64 * SECT..64 * SECT + 3 * PAGE].iter().all(|&x| x == 0), "the failed write wrote nothing");
    assert!(disk[128 * SECT..136 * SECT].iter().all(|&x| x == 0));
    assert_eq!(&disk[256 * SECT..256 * SECT + 12 * SECT], &seg_bytes(&gsegs)[..]);
    assert_eq!(w.g.map_calls(), maps, "failures do not fall back to mapping");
    assert_eq!(w.blk.stats.errors, 0, "grant failures are not disk errors");
    assert_eq!(w.blk.buffer_bytes(), 0);
    // The ring keeps serving.
    w.write_read_back(0, 0, 500, 7);
}

#[derive(Clone, Debug)]
enum CopyOpK {
    Write { at: u16, spans: Vec<(u8, u8)>, seed: u32, indirect: bool },
    Read { at: u16, spans: Vec<(u8, u8)>, indirect: bool },
    Flush,
    Discard { at: u16, sectors: u8 },
}

fn span_strategy() -> impl Strategy<Value = (u8, u8)> {
    (0u8..8, 0u8..8).prop_map(|(a, b)| (a.min(b), a.max(b)))
}

fn copy_op_strategy() -> impl Strategy<Value = CopyOpK> {
    prop_oneof![
        4 => (any::<u16>(), prop::collection::vec(span_strategy(), 1..=11), any::<u32>())
            .prop_map(|(at, spans, seed)| CopyOpK::Write { at, spans, seed, indirect: false }),
        4 => (any::<u16>(), prop::collection::vec(span_strategy(), 1..=11)).prop_map(|(at, spans)| CopyOpK::Read { at, spans, indirect: false }),
        2 => (any::<u16>(), prop::collection::vec(span_strategy(), 1..=48), any::<u32>())
            .prop_map(|(at, spans, seed)| CopyOpK::Write { at, spans, seed, indirect: true }),
        2 => (any::<u16>(), prop::collection::vec(span_strategy(), 1..=48)).prop_map(|(at, spans)| CopyOpK::Read { at, spans, indirect: true }),
        1 => Just(CopyOpK::Flush),
        1 => (any::<u16>(), 1u8..64).prop_map(|(at, sectors)| CopyOpK::Discard { at, sectors }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// Random request sequences on a ring without persistent grants, some
    /// split for a disk with a 16 KiB transfer limit, checked against a
    /// model disk: every answer OKAY, every read returns the model's bytes,
    /// the disk ends equal to the model, and no data grant was ever mapped.
    #[test]
    fn random_requests_by_copy_match_a_model(ops in prop::collection::vec(copy_op_strategy(), 1..24), limit in any::<bool>()) {
        let disk = SlowDisk::new(DISK_SECTORS, 1, 0, 64).with_limit(if limit { 16 * 1024 } else { usize::MAX });
        let mut w = world(disk, BackendConfig::default(), &[5]);
        w.attach(0);
        w.connect(0, Opts::default());
        let maps = w.g.map_calls();
        let mut model = vec![0u8; DISK_SECTORS as usize * SECT];
        for (k, op) in ops.into_iter().enumerate() {
            // Place a transfer of `n` sectors somewhere on the disk.
            let place = |at: u16, n: u64| u64::from(at) % (DISK_SECTORS - n + 1);
            let total = |spans: &[(u8, u8)]| spans.iter().map(|(f, l)| u64::from(l - f) + 1).sum::<u64>();
            let f = &mut w.fronts[0];
            match op {
                CopyOpK::Write { at, spans, seed, indirect } => {
                    let sector = place(at, total(&spans));
                    let (req, id, segs) = if indirect {
                        f.indirect_spans(BLKIF_OP_WRITE, sector, &spans, seed)
                    } else {
                        f.rw(BLKIF_OP_WRITE, sector, &spans, seed, true)
                    };
                    prop_assert_eq!(w.io(0, 0, &[req]), vec![okay(id, BLKIF_OP_WRITE)], "op {}", k);
                    let data = seg_bytes(&segs);
                    let s = sector as usize * SECT;
                    model[s..s + data.len()].copy_from_slice(&data);
                }
                CopyOpK::Read { at, spans, indirect } => {
                    let sector = place(at, total(&spans));
                    let (req, id, segs) = if indirect {
                        f.indirect_spans(BLKIF_OP_READ, sector, &spans, 0)
                    } else {
                        f.rw(BLKIF_OP_READ, sector, &spans, 0, false)
                    };
                    prop_assert_eq!(w.io(0, 0, &[req]), vec![okay(id, BLKIF_OP_READ)], "op {}", k);
                    let s = sector as usize * SECT;
                    let got = seg_bytes(&segs);
                    prop_assert!(got[..] == model[s..s + got.len()], "op {}: read at sector {} differs from the model", k, sector);
                }
                CopyOpK::Flush => {
                    let id = f.id();
                    let req = enc_rw(f.abi, BLKIF_OP_FLUSH_DISKCACHE, id, 0, &[]);
                    prop_assert_eq!(w.io(0, 0, &[req]), vec![okay(id, BLKIF_OP_FLUSH_DISKCACHE)]);
                }
                CopyOpK::Discard { at, sectors } => {
                    let n = u64::from(sectors);
                    let sector = place(at, n);
                    let id = f.id();
                    let mut b = [0u8; MAX_REQUEST_SIZE];
                    abi::DiscardX64 { operation: BLKIF_OP_DISCARD, flag: 0, handle: 0, id, sector_number: sector, nr_sectors: n }.encode(&mut b);
                    prop_assert_eq!(w.io(0, 0, &[b]), vec![okay(id, BLKIF_OP_DISCARD)]);
                    model[sector as usize * SECT..(sector + n) as usize * SECT].fill(0);
                }
            }
        }
        prop_assert!(w.blk.disk_mut().inner.contents() == &model[..], "disk differs from the model");
        prop_assert_eq!(w.g.map_calls(), maps, "nothing but the ring was mapped");
        prop_assert!(w.blk.disk_mut().largest <= w.blk.disk_mut().max_transfer());
        prop_assert_eq!(w.blk.buffer_bytes(), 0);
    }
}

// ---------------------------------------------------------------------------
// 11. One polling context per ring: a flooding ring cannot starve another.

/// Frontend 0 keeps its ring full of 1 MiB indirect reads (more than the
/// buffer budget can hold); frontend 1 asks for one small write. It is
/// answered within a few polls, and the flood keeps being served too.
fn flood_does_not_starve<D: BlockDevice<Buffer = Buf> + DiskBytes>(disk: D, bound: u32) {
    let mut w = world(disk, BackendConfig::default(), &[5, 6]);
    w.attach(0);
    w.attach(1);
    w.connect(0, Opts { order: Some(1), ..Opts::default() });
    w.connect(1, Opts::default());
    // One set of 256 pages (and their indirect page) for every flood read.
    let f = &mut w.fronts[0];
    let pages: Vec<DPage> = (0..256).map(|_| f.grant_page(&[0u8; PAGE], false)).collect();
    let mut b = vec![0u8; PAGE];
    for (i, p) in pages.iter().enumerate() {
        abi::Segment { gref: p.gref.0, first_sect: 0, last_sect: 7 }.encode(&mut b[i * 8..]);
    }
    let ind = f.grant_page(&b, true).gref;
    let refill = |f: &mut Front| {
        let mut n = 0;
        while f.rings[0].prod.wrapping_sub(f.rings[0].cons) < f.rings[0].size {
            let id = f.id();
            let req = enc_indirect(f.abi, BLKIF_OP_READ, 256, id, 0, &[ind]);
            f.push(0, &req);
            n += 1;
        }
        f.publish(0);
        n
    };
    // The flooder consumes its answers and refills its ring; returns how
    // many answers it got.
    let flood_step = |w: &mut World<D>| {
        let f = &mut w.fronts[0];
        let mut got = 0;
        if f.e.take_pending(f.rings[0].port) {
            let rsp = f.take_responses(0);
            assert!(rsp.iter().all(|r| r.status == BLKIF_RSP_OKAY), "flood read failed: {rsp:?}");
            got = rsp.len();
        }
        refill(f);
        got
    };
    let mut flood_answers = flood_step(&mut w);
    // Saturate: the flood holds (nearly) the whole buffer budget.
    for _ in 0..4 {
        w.blk.poll(&mut w.g, &mut w.e);
        flood_answers += flood_step(&mut w);
    }
    assert!(w.blk.buffer_bytes() >= 3 << 20, "the flood holds the buffers ({} bytes)", w.blk.buffer_bytes());
    let (req, id, segs) = w.fronts[1].rw(BLKIF_OP_WRITE, 2048, &[(0, 7), (0, 7)], 42, true);
    w.fronts[1].push(0, &req);
    w.fronts[1].publish(0);
    let before = flood_answers;
    let mut answered = None;
    for poll in 1..=60u32 {
        w.blk.poll(&mut w.g, &mut w.e);
        flood_answers += flood_step(&mut w);
        let f = &mut w.fronts[1];
        if f.e.take_pending(f.rings[0].port) {
            assert_eq!(f.take_responses(0), [okay(id, BLKIF_OP_WRITE)]);
            answered = Some(poll);
            break;
        }
    }
    let at = answered.expect("the small write was starved by the flood");
    assert!(at <= bound, "answered after {at} polls (bound {bound})");
    assert_eq!(&w.blk.disk_mut().bytes()[2048 * SECT..2048 * SECT + 2 * PAGE], &seg_bytes(&segs)[..]);
    // The flood was not stopped to make room: it was answered meanwhile,
    // and each ring had its own turns.
    assert!(flood_answers > before || at <= 2, "flood answered meanwhile");
    let stats = w.blk.ring_stats();
    assert_eq!(stats.len(), 2);
    assert!(stats.iter().all(|(_, _, s)| s.turns >= u64::from(at)), "every context polled each time: {stats:?}");
    assert!(stats[0].2.buffer_waits > 0, "the flood ran into the buffer budget: {stats:?}");
    // Drain: stop flooding, everything is answered and given back.
    for _ in 0..200 {
        if !w.blk.poll(&mut w.g, &mut w.e) {
            break;
        }
        let f = &mut w.fronts[0];
        if f.e.take_pending(f.rings[0].port) {
            f.take_responses(0);
        }
    }
    assert_eq!(w.blk.buffer_bytes(), 0);
}

/// The bytes of a test disk.
trait DiskBytes {
    fn bytes(&self) -> Vec<u8>;
}
impl DiskBytes for RamDisk<Buf> {
    fn bytes(&self) -> Vec<u8> {
        self.contents().to_vec()
    }
}
impl DiskBytes for SlowDisk {
    fn bytes(&self) -> Vec<u8> {
        self.inner.contents().to_vec()
    }
}

#[test]
fn flooding_ring_does_not_starve_another_fast_disk() {
    flood_does_not_starve(ram(1), 3);
}

#[test]
fn flooding_ring_does_not_starve_another_slow_disk() {
    // Completions lag 2 polls, one at a time: buffers come back slowly.
    flood_does_not_starve(SlowDisk::new(DISK_SECTORS, 1, 2, 64), 16);
}

#[test]
fn progress_is_told_apart_from_waiting_on_the_disk() {
    // Completions lag 3 polls: the backend must say "busy, but only the
    // disk is working" (the main loop's cue to nap) until the answer.
    let mut w = world(SlowDisk::new(DISK_SECTORS, 1, 3, 64), BackendConfig::default(), &[5]);
    w.attach(0);
    w.connect(0, Opts::default());
    assert_eq!(w.blk.in_flight(), 0);
    let (req, id, _segs) = w.fronts[0].rw(BLKIF_OP_WRITE, 64, &[(0, 7)], 7, true);
    w.fronts[0].push(0, &req);
    w.fronts[0].publish(0);
    assert!(w.blk.poll(&mut w.g, &mut w.e));
    assert!(w.blk.progressed(), "taking and submitting the request is progress");
    assert_eq!(w.blk.in_flight(), 1);
    let mut waiting_polls = 0;
    let mut answered = false;
    for _ in 0..10 {
        let busy = w.blk.poll(&mut w.g, &mut w.e);
        if w.blk.progressed() {
            answered = true;
            break;
        }
        assert!(busy, "a command in flight keeps the backend busy");
        assert_eq!(w.blk.in_flight(), 1);
        waiting_polls += 1;
    }
    assert!(answered, "the write was never completed");
    assert!(waiting_polls >= 1, "polls that only waited for the disk must not count as progress");
    assert_eq!(w.blk.in_flight(), 0);
    let f = &mut w.fronts[0];
    assert!(f.e.take_pending(f.rings[0].port));
    assert_eq!(f.take_responses(0), [okay(id, BLKIF_OP_WRITE)]);
    // Idle: nothing in flight, nothing to do.
    assert!(!w.blk.poll(&mut w.g, &mut w.e));
    assert!(!w.blk.progressed());
}
