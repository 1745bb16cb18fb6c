//! The data path of one ring: its polling context, the disk work made of
//! each validated request (split to the disk's transfer limit, answered
//! together), submission in order (flush and barrier wait for what came
//! before), completion and the answer.
//!
//! How the data moves between the guest's pages and the disk buffers lives
//! in [`grants`](crate::grants); the buffer budget in [`budget`](crate::budget).

use crate::abi::Response;
use crate::backend::{Stats, MAX_BUFFER_BYTES, MAX_REQUEST_BYTES, PAGE, RING_BUDGET};
use crate::budget::{charge, Budget, Charge};
use crate::engine::{Core, SPARE_BYTES};
use crate::request::{self, DataOp, Request, Segment, Status};
use crate::ring::BlkRing;
use crate::DiskInfo;
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use drivers::block::{BlockDevice, BlockRequest, SgEntry};
use xen::evtchn::EventOps;
use xen::gnttab::{GrantOps, LocalFrames, Mapping};
use xen::ratelimit::LogLimit;
use xen::shmem::SharedMem;
use xen::types::{DomId, EvtchnPort, GrantRef};
use xen_ring::PagesMem;

/// Disk work derived from one request.
#[derive(Clone)]
pub(crate) enum Step {
    Read {
        lba: u64,
    },
    /// `fua`: on stable media when it completes (the data of a flush or
    /// barrier on a disk with a volatile cache).
    Write {
        lba: u64,
        fua: bool,
    },
    Flush,
    Discard {
        lba: u64,
        blocks: u64,
    },
}

/// What answering a request takes (its id and operation): all of the
/// request its disk work keeps.
#[derive(Clone, Copy)]
pub(crate) struct Reply {
    id: u64,
    op: u8,
}

impl Reply {
    pub(crate) fn of(req: &Request) -> Self {
        Reply { id: req.id(), op: req.response_operation() }
    }
    #[cfg(test)]
    pub(crate) fn new(id: u64, op: u8) -> Self {
        Reply { id, op }
    }
    pub(crate) fn id(self) -> u64 {
        self.id
    }
    fn response(self, status: Status) -> Response {
        Response { id: self.id, operation: self.op, status: status.to_wire() }
    }
}

pub(crate) struct Work<B> {
    pub(crate) req: Reply,
    pub(crate) segs: Vec<Segment>,
    pub(crate) step: Step,
    pub(crate) buf: Option<B>,
    /// Zero-copy: the guest's pages by bus address (until submitted).
    pub(crate) sg: Option<Vec<SgEntry>>,
    /// The disk moves this work's data to or from the guest's pages
    /// directly: its grants are pinned (see [`crate::zerocopy`]).
    pub(crate) zc: bool,
    /// Part of a flush or barrier: submitted only when nothing else of this
    /// ring is in flight, and nothing after it is submitted before it
    /// completed (blkif.h's barrier: earlier requests complete first, later
    /// ones start after it).
    pub(crate) exclusive: bool,
    /// Part of a request split for the disk: answered when all parts are done.
    pub(crate) group: Option<u64>,
    /// Data bytes this piece moves.
    pub(crate) bytes: u64,
    /// When the disk took it (the event clock), for the latency histogram.
    pub(crate) submitted: u64,
    /// The buffer's share of the memory budgets, given back on drop.
    pub(crate) _charge: Charge,
}

/// One disk part of a request being built: its segments, step, length,
/// and buffer or (zero-copy) scatter list.
pub(crate) type Part<B> = (Vec<Segment>, Step, usize, Option<B>, Option<Vec<SgEntry>>);

/// A request split into parts.
pub(crate) struct Group {
    pub(crate) vbd: u32,
    pub(crate) remaining: usize,
    pub(crate) failed: bool,
}

/// Splits `segs` into runs of at most `max` bytes (each segment is at most
/// one page, `max` at least one page).
pub(crate) fn split_segments(segs: Vec<Segment>, max: usize) -> Vec<Vec<Segment>> {
    let mut parts: Vec<Vec<Segment>> = Vec::new();
    let mut cur: Vec<Segment> = Vec::new();
    let mut cur_len = 0;
    for s in segs {
        if cur_len + s.len() > max && !cur.is_empty() {
            parts.push(core::mem::take(&mut cur));
            cur_len = 0;
        }
        cur_len += s.len();
        cur.push(s);
    }
    if !cur.is_empty() || parts.is_empty() {
        parts.push(cur);
    }
    parts
}

/// Upper bounds (ns, inclusive) of [`Latency`]'s buckets: 50 us to 1 s.
pub const LATENCY_BOUNDS_NS: [u64; 12] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    1_000_000_000,
];

/// A fixed-bucket histogram of disk latencies (submit to completion).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Latency {
    /// Completions per bucket of [`LATENCY_BOUNDS_NS`] (not cumulative);
    /// the last entry counts those slower than every bound.
    pub counts: [u64; LATENCY_BOUNDS_NS.len() + 1],
    /// Sum of the latencies (ns, saturating).
    pub sum_ns: u64,
}

impl Latency {
    /// Counts one completion that took `ns`.
    pub fn record(&mut self, ns: u64) {
        let i = LATENCY_BOUNDS_NS.iter().position(|&b| ns <= b).unwrap_or(LATENCY_BOUNDS_NS.len());
        self.counts[i] = self.counts[i].saturating_add(1);
        self.sum_ns = self.sum_ns.saturating_add(ns);
    }
}

/// Counters of one ring's polling context.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingStats {
    /// Turns the context had.
    pub turns: u64,
    /// Requests taken from the ring.
    pub requests: u64,
    /// Turns that ended with the per-turn budget used up.
    pub budget_spent: u64,
    /// Turns that left requests in the ring for lack of buffer budget.
    pub buffer_waits: u64,
    /// Bytes the disk read for this ring.
    pub read_bytes: u64,
    /// Bytes the disk wrote for this ring.
    pub write_bytes: u64,
    /// Disk operations that failed or were refused.
    pub errors: u64,
    /// Disk latency of its operations.
    pub latency: Latency,
    /// Disk operations in flight (a gauge, filled by `Blkback::ring_stats`).
    pub in_flight: u64,
    /// Operations waiting to be submitted (a gauge, filled by `Blkback::ring_stats`).
    pub queued: u64,
}

/// One ring's polling context: the ring and everything its requests hold.
pub(crate) struct RingCtx<P: SharedMem, B> {
    /// Position among its vbd's rings (the frontend's queue number).
    pub(crate) index: usize,
    /// Unique for the backend's life (see `Core::next_serial`).
    pub(crate) serial: u64,
    pub(crate) ring: BlkRing<PagesMem<P>>,
    pub(crate) ring_maps: Vec<Mapping>,
    pub(crate) port: EvtchnPort,
    /// Disk queue this ring submits to.
    pub(crate) queue: u16,
    pub(crate) persistent: bool,
    pub(crate) pgrants: crate::pgrants::Persistent,
    /// Persistent grants a controller that failed without stopping may
    /// still reach (zero-copy work it failed back): never released.
    pub(crate) poisoned: alloc::collections::BTreeSet<u32>,
    pub(crate) tick: u64,
    pub(crate) deferred: VecDeque<Work<B>>,
    /// The parts of the request being prepared (kept for its capacity).
    pub(crate) parts: Vec<Part<B>>,
    /// Lists reused by every request (kept for their capacity): grants
    /// being mapped, their mappings, copies of indirect pages.
    pub(crate) grefs: Vec<GrantRef>,
    pub(crate) maps: Vec<Option<(Mapping, bool)>>,
    pub(crate) indirect_pages: Vec<u8>,
    /// Segment lists and scatter lists of finished work, kept (at most
    /// [`RING_BUDGET`] of each, none longer than [`POOLED_LIST`]) for the
    /// next requests: no allocation per request once the ring is busy.
    pub(crate) seg_pool: Vec<Vec<Segment>>,
    pub(crate) sg_pool: Vec<Vec<SgEntry>>,
    pub(crate) in_flight: usize,
    /// Flush/barrier parts on the disk: while any is, nothing else of this
    /// ring is submitted.
    pub(crate) ordered_in_flight: usize,
    pub(crate) dead: bool,
    /// Buffer bytes this ring's requests hold.
    pub(crate) held: Budget,
    /// At its last turn it left requests in the ring for lack of buffers.
    pub(crate) waiting: bool,
    pub(crate) stats: RingStats,
}

/// The longest segment or scatter list a ring keeps for reuse (a
/// 128 KiB request's): longer ones (indirect requests up to 1 MiB) are
/// freed, so what a ring keeps stays small.
pub(crate) const POOLED_LIST: usize = 32;

/// Keeps `v` (emptied) in `pool` if it is short enough and the pool has room.
pub(crate) fn recycle<T>(pool: &mut Vec<Vec<T>>, mut v: Vec<T>) {
    if v.capacity() > 0 && v.capacity() <= POOLED_LIST && pool.len() < RING_BUDGET {
        v.clear();
        pool.push(v);
    }
}

/// What a ring context borrows for one call: the shared disk side, the
/// counters, and the grant and event operations.
pub(crate) struct Turn<'a, D: BlockDevice, G, E> {
    pub(crate) core: &'a mut Core<D>,
    /// The vbd's own disk.
    pub(crate) disk: &'a mut D,
    /// What the vbd's frontend was told about that disk.
    pub(crate) info: &'a DiskInfo,
    pub(crate) stats: &'a mut Stats,
    pub(crate) g: &'a mut G,
    pub(crate) e: &'a mut E,
}

/// The device a ring belongs to, as its data path sees it.
pub(crate) struct DevRef<'a> {
    pub(crate) id: u32,
    pub(crate) be: &'a str,
    pub(crate) fe_dom: DomId,
    /// The vbd's log budget for everything its guest can trigger.
    pub(crate) log: &'a mut LogLimit,
}

impl<P: SharedMem, B: AsRef<[u8]> + AsMut<[u8]> + LocalFrames> RingCtx<P, B> {
    /// One turn: submit deferred work, then take up to [`RING_BUDGET`]
    /// requests while the buffer budgets allow. `share`: the most buffer
    /// bytes this ring may hold before it lets others go first.
    pub(crate) fn turn<D: BlockDevice<Buffer = B>, G: GrantOps<Page = P>, E: EventOps>(
        &mut self,
        t: &mut Turn<'_, D, G, E>,
        d: &mut DevRef<'_>,
        share: usize,
    ) -> bool {
        self.stats.turns += 1;
        let busy = self.submit_deferred(t, d);
        if self.dead || !self.deferred.is_empty() {
            return busy;
        }
        // Take requests one at a time (up to the per-turn budget), each
        // only while the buffer budget can hold the largest request and
        // this ring is within its share: the frontend's requests wait in
        // its ring, nothing is refused.
        let mut taken = 0;
        let mut out_of_buffers = false;
        while taken < RING_BUDGET {
            if t.core.budget.used() + MAX_REQUEST_BYTES > MAX_BUFFER_BYTES || self.held.used() >= share {
                out_of_buffers = true;
                break;
            }
            let mut raw = None;
            if let Err(err) = self.ring.poll_requests(1, |x| raw = Some(x)) {
                self.dead = true;
                limited!(
                    d.log,
                    t.e.now(),
                    warn,
                    "vbd {}: ring {} broken ({}); no longer served",
                    d.be,
                    self.index,
                    err.as_str()
                );
                break;
            }
            let Some(raw) = raw else { break };
            taken += 1;
            t.stats.requests += 1;
            self.stats.requests += 1;
            let req = match request::parse(&raw, t.info) {
                Ok(req) => req,
                Err(rej) => {
                    t.stats.rejected += 1;
                    limited!(
                        d.log,
                        t.e.now(),
                        warn,
                        "vbd {}: refused a request from domain {}: {}",
                        d.be,
                        d.fe_dom,
                        rej.reason.as_str()
                    );
                    if self.ring.push_response(&rej.response()).is_err() {
                        self.dead = true;
                    }
                    continue;
                }
            };
            match self.prepare(t, d, req) {
                Ok(0) => self.push_answer(&req, Status::Okay),
                Ok(_) => {}
                Err(()) => self.push_answer(&req, Status::Error),
            }
        }
        if taken == RING_BUDGET {
            self.stats.budget_spent += 1;
        }
        // Waiting only if the frontend has requests we left in the ring.
        self.waiting = out_of_buffers && !self.dead && self.ring.pending().is_ok_and(|n| n > 0);
        if self.waiting {
            self.stats.buffer_waits += 1;
        }
        if taken == 0 && !out_of_buffers && !self.dead {
            // Going idle: arm req_event; a request that slipped in is taken
            // at the next poll.
            return matches!(self.ring.final_check_for_requests(), Ok(true)) || busy;
        }
        self.publish(t.e);
        self.submit_deferred(t, d);
        busy || taken > 0 || out_of_buffers
    }

    /// Pushes an answer; it is published with the turn's batch.
    pub(crate) fn push_answer(&mut self, req: &Request, status: Status) {
        if self.ring.push_response(&req.response(status)).is_err() {
            self.dead = true;
        }
    }

    /// Pushes the answer of finished disk work. It is published, with one
    /// event at most for all the answers of the poll, by
    /// [`publish`](Self::publish) at the end of this ring's turn (every
    /// poll gives every ring one).
    pub(crate) fn respond(&mut self, req: Reply, status: Status) {
        if self.ring.push_response(&req.response(status)).is_err() {
            self.dead = true;
        }
    }

    /// Publishes the answers pushed so far, notifying the frontend if it
    /// asked.
    pub(crate) fn publish<E: EventOps>(&mut self, e: &mut E) {
        if self.ring.publish_responses() {
            let _ = e.send(self.port);
        }
    }

    /// Whether this ring moves data by grant copy.
    pub(crate) fn copies<D: BlockDevice, G, E>(&self, t: &Turn<'_, D, G, E>) -> bool {
        !self.persistent && t.core.grant_copy
    }

    /// Turns a validated request into disk work, queued in order; returns
    /// how many parts (0: nothing to do).
    fn prepare<D: BlockDevice<Buffer = B>, G: GrantOps<Page = P>, E: EventOps>(
        &mut self,
        t: &mut Turn<'_, D, G, E>,
        d: &mut DevRef<'_>,
        req: Request,
    ) -> Result<usize, ()> {
        let bs = u64::from(t.disk.block_size().max(512));
        let lba_of = |sector: u64| -> Result<u64, ()> {
            let byte = sector.checked_mul(512).ok_or(())?;
            if byte % bs != 0 {
                return Err(());
            }
            Ok(byte / bs)
        };
        // The request's segments, in a list kept from finished work.
        let mut seg_list = |segments: &[Segment]| {
            let mut v = self.seg_pool.pop().unwrap_or_default();
            v.extend_from_slice(segments);
            v
        };
        let (mut segs, step, exclusive, write) = match req {
            Request::Read { sector, segments, .. } => {
                (seg_list(segments.as_slice()), Step::Read { lba: lba_of(sector)? }, false, false)
            }
            Request::Write { sector, segments, .. } => {
                (seg_list(segments.as_slice()), Step::Write { lba: lba_of(sector)?, fua: false }, false, true)
            }
            // Like Linux maps them onto a block device: a flush or barrier
            // waits for the ring's earlier requests, flushes the disk
            // cache (preflush), then writes its data, if any, with FUA on a
            // disk with a volatile cache, so the data is durable when
            // answered and never reaches the media before what the flush
            // made durable. Later requests wait for all of it (below).
            Request::Flush { sector, segments, .. } | Request::WriteBarrier { sector, segments, .. } => {
                if segments.as_slice().is_empty() {
                    (Vec::new(), Step::Flush, true, false)
                } else {
                    let fua = t.disk.features().volatile_cache;
                    (seg_list(segments.as_slice()), Step::Write { lba: lba_of(sector)?, fua }, true, true)
                }
            }
            Request::Discard { sector, nr_sectors, .. } => {
                let blocks = nr_sectors.checked_mul(512).ok_or(())? / bs;
                if blocks == 0 {
                    return Ok(0);
                }
                (Vec::new(), Step::Discard { lba: lba_of(sector)?, blocks }, false, false)
            }
            Request::Indirect(ind) => {
                let segs = self.indirect_segments(t, d, &ind)?;
                match ind.op {
                    DataOp::Read => (segs, Step::Read { lba: lba_of(ind.sector)? }, false, false),
                    DataOp::Write => (segs, Step::Write { lba: lba_of(ind.sector)?, fua: false }, false, true),
                }
            }
        };
        // Each part: its segments, its disk step and its buffer (in a list
        // reused by every request).
        let mut built = core::mem::take(&mut self.parts);
        built.clear();
        let zc = match self.zero_copy_parts(t, d, &mut segs, &step, &mut built) {
            Ok(zc) => zc,
            Err(()) => {
                built.clear();
                self.parts = built;
                return Err(());
            }
        };
        let made = if zc { Ok(()) } else { self.build_parts(t, d, segs, step, write, &mut built) };
        let n = match made {
            Ok(()) => {
                if exclusive && write {
                    // The preflush goes first.
                    built.insert(0, (Vec::new(), Step::Flush, 0, None, None));
                }
                let group = if built.len() > 1 {
                    let gid = t.core.next_group;
                    t.core.next_group += 1;
                    t.core.groups.insert(gid, Group { vbd: d.id, remaining: built.len(), failed: false });
                    Some(gid)
                } else {
                    None
                };
                let n = built.len();
                let reply = Reply::of(&req);
                for (segs, step, len, buf, sg) in built.drain(..) {
                    let _charge = charge(&t.core.budget, &self.held, len);
                    let zc = sg.is_some();
                    self.deferred.push_back(Work {
                        req: reply,
                        segs,
                        step,
                        buf,
                        sg,
                        zc,
                        exclusive,
                        group,
                        bytes: len as u64,
                        submitted: 0,
                        _charge,
                    });
                }
                Ok(n)
            }
            Err(()) => Err(()),
        };
        built.clear();
        self.parts = built;
        n
    }

    /// The disk parts of a request's data (or its one part without data),
    /// with their buffers, filled from the guest for a write. The disk
    /// takes at most `max_transfer` bytes per command: a larger read or
    /// write (indirect requests reach 1 MiB) is split into parts answered
    /// together (a flush's data too: its parts go down one after another).
    fn build_parts<D: BlockDevice<Buffer = B>, G: GrantOps<Page = P>, E: EventOps>(
        &mut self,
        t: &mut Turn<'_, D, G, E>,
        d: &mut DevRef<'_>,
        segs: Vec<Segment>,
        step: Step,
        write: bool,
        built: &mut Vec<Part<B>>,
    ) -> Result<(), ()> {
        let bs = u64::from(t.disk.block_size().max(512));
        let max = t.disk.max_transfer().max(PAGE);
        let mut offset = 0u64;
        let mut add = |part: Vec<Segment>, built: &mut Vec<Part<B>>| -> Result<(), ()> {
            let len: usize = part.iter().map(|s| s.len()).sum();
            let step = match step {
                Step::Read { lba } => Step::Read { lba: lba + offset / bs },
                Step::Write { lba, fua } => Step::Write { lba: lba + offset / bs, fua },
                Step::Flush => Step::Flush,
                Step::Discard { lba, blocks } => Step::Discard { lba, blocks },
            };
            let mut buf = None;
            if len > 0 {
                if !(len as u64).is_multiple_of(bs) || !offset.is_multiple_of(bs) {
                    return Err(());
                }
                // A write's buffer is filled from the guest right below
                // (every byte: its segments cover it), so a spare one does.
                let spare = if write { take_spare(&mut t.core.spare, &mut t.core.spare_bytes, len) } else { None };
                t.stats.buffers_reused += u64::from(spare.is_some());
                buf = Some(match spare {
                    Some(b) => b,
                    None => {
                        t.stats.buffers_allocated += 1;
                        (t.core.alloc)(len).ok_or(())?
                    }
                });
            }
            offset += len as u64;
            built.push((part, step, len, buf, None));
            Ok(())
        };
        let data = matches!(step, Step::Read { .. } | Step::Write { .. });
        if data && segs.iter().map(|s| s.len()).sum::<usize>() > max {
            for part in split_segments(segs, max) {
                add(part, built)?;
            }
        } else {
            add(segs, built)?;
        }
        if write {
            self.fill_from_guest(t, d, built)?;
        }
        Ok(())
    }

    /// Submits deferred work in order while the disk takes it.
    #[inline]
    pub(crate) fn submit_deferred<D: BlockDevice<Buffer = B>, G, E: EventOps>(
        &mut self,
        t: &mut Turn<'_, D, G, E>,
        d: &mut DevRef<'_>,
    ) -> bool {
        // Nothing deferred (most calls): no call into the submission path.
        !self.deferred.is_empty() && self.submit_queued(t, d)
    }

    /// [`submit_deferred`](Self::submit_deferred) with work queued.
    fn submit_queued<D: BlockDevice<Buffer = B>, G, E: EventOps>(
        &mut self,
        t: &mut Turn<'_, D, G, E>,
        d: &mut DevRef<'_>,
    ) -> bool {
        let mut any = false;
        // Bounded by the deferred queue length.
        for _ in 0..RING_BUDGET * 2 {
            let Some(w) = self.deferred.front() else { break };
            if self.ordered_in_flight > 0 {
                break; // a flush/barrier on the disk: everything after it waits
            }
            if w.exclusive && self.in_flight > 0 {
                break; // flush/barrier: wait for everything before it
            }
            let Some(mut w) = self.deferred.pop_front() else { break };
            // A part of a request whose earlier part failed (a preflush):
            // not submitted, the request is answered with an error.
            if w.group.is_some_and(|g| t.core.groups.get(&g).is_some_and(|gr| gr.failed)) {
                self.finish(t, &w, Status::Error);
                any = true;
                continue;
            }
            let breq = match (w.step.clone(), w.sg.take()) {
                (Step::Read { lba }, Some(sg)) => BlockRequest::ReadSg { lba, sg },
                (Step::Write { lba, fua }, Some(sg)) => BlockRequest::WriteSg { lba, sg, fua },
                (Step::Read { lba }, None) => {
                    BlockRequest::Read { lba, buffer: w.buf.take().expect("read has a buffer") }
                }
                (Step::Write { lba, fua }, None) => {
                    BlockRequest::Write { lba, buffer: w.buf.take().expect("write has a buffer"), fua }
                }
                (Step::Flush, _) => BlockRequest::Flush,
                (Step::Discard { lba, blocks }, _) => BlockRequest::Discard { lba, blocks },
            };
            match t.disk.submit(self.queue, breq) {
                Ok(tok) => {
                    any = true;
                    w.submitted = t.e.now();
                    self.in_flight += 1;
                    if w.exclusive {
                        self.ordered_in_flight += 1;
                    }
                    t.core.tokens.insert((d.id, tok.0), (self.serial, w));
                }
                Err((drivers::Error::QueueFull, back)) => {
                    match back {
                        BlockRequest::Read { buffer, .. } | BlockRequest::Write { buffer, .. } => w.buf = Some(buffer),
                        BlockRequest::ReadSg { sg, .. } | BlockRequest::WriteSg { sg, .. } => w.sg = Some(sg),
                        _ => {}
                    }
                    self.deferred.push_front(w);
                    break;
                }
                Err((err, _)) => {
                    t.stats.errors += 1;
                    self.stats.errors += 1;
                    limited!(d.log, t.e.now(), warn, "vbd {}: disk refused request {}: {err:?}", d.be, w.req.id());
                    self.finish(t, &w, Status::Error);
                    any = true;
                }
            }
        }
        any
    }

    /// The disk finished `work`.
    pub(crate) fn complete<D: BlockDevice<Buffer = B>, G: GrantOps<Page = P>, E: EventOps>(
        &mut self,
        t: &mut Turn<'_, D, G, E>,
        d: &mut DevRef<'_>,
        mut work: Work<B>,
        result: Result<(), drivers::Error>,
    ) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if work.exclusive {
            self.ordered_in_flight = self.ordered_in_flight.saturating_sub(1);
        }
        if work.zc && !crate::zerocopy::device_done(&result) {
            // The device may still reach these pages: they stay mapped for
            // the ring's life and parked after it.
            self.poisoned.extend(work.segs.iter().map(|s| s.gref().0));
            limited!(d.log, t.e.now(), warn, "vbd {}: disk failed without stopping; its pages stay mapped", d.be);
        }
        let mut status = if result.is_ok() { Status::Okay } else { Status::Error };
        self.stats.latency.record(t.e.now().saturating_sub(work.submitted));
        match (&result, &work.step) {
            (Ok(()), Step::Read { .. }) => self.stats.read_bytes = self.stats.read_bytes.saturating_add(work.bytes),
            (Ok(()), Step::Write { .. }) => self.stats.write_bytes = self.stats.write_bytes.saturating_add(work.bytes),
            _ => {}
        }
        if let Err(err) = result {
            t.stats.errors += 1;
            self.stats.errors += 1;
            limited!(d.log, t.e.now(), warn, "vbd {}: disk error {err:?} for request {}", d.be, work.req.id());
        }
        if status == Status::Okay && !work.zc && matches!(work.step, Step::Read { .. }) {
            status = match self.deliver_read(t, d, &mut work) {
                Ok(()) => Status::Okay,
                Err(()) => Status::Error,
            };
        }
        self.finish(t, &work, status);
        if let Some(b) = work.buf.take() {
            keep_spare(&mut t.core.spare, &mut t.core.spare_bytes, b);
        }
        recycle(&mut self.seg_pool, core::mem::take(&mut work.segs));
        if let Some(sg) = work.sg.take() {
            recycle(&mut self.sg_pool, sg);
        }
    }

    /// Answers a finished piece of work; a part of a split request answers
    /// only when it is the last part (ERROR if any part failed).
    pub(crate) fn finish<D: BlockDevice<Buffer = B>, G, E: EventOps>(
        &mut self,
        t: &mut Turn<'_, D, G, E>,
        work: &Work<B>,
        status: Status,
    ) {
        let Some(gid) = work.group else {
            self.respond(work.req, status);
            return;
        };
        let Some(gr) = t.core.groups.get_mut(&gid) else { return };
        gr.failed |= status != Status::Okay;
        gr.remaining = gr.remaining.saturating_sub(1);
        if gr.remaining == 0 {
            let failed = gr.failed;
            t.core.groups.remove(&gid);
            self.respond(work.req, if failed { Status::Error } else { Status::Okay });
        }
    }
}

/// A spare buffer of exactly `len` bytes, if one is kept.
fn take_spare<B: AsRef<[u8]>>(spare: &mut Vec<B>, bytes: &mut usize, len: usize) -> Option<B> {
    let i = spare.iter().position(|b| b.as_ref().len() == len)?;
    *bytes -= len;
    Some(spare.swap_remove(i))
}

/// Keeps a finished request's buffer for a later write while the spares
/// stay within [`SPARE_BYTES`]; drops it otherwise.
fn keep_spare<B: AsRef<[u8]>>(spare: &mut Vec<B>, bytes: &mut usize, b: B) {
    let len = b.as_ref().len();
    if len > 0 && *bytes + len <= SPARE_BYTES {
        *bytes += len;
        spare.push(b);
    }
}
