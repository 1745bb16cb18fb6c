//! What every ring context shares (the disk and the bookkeeping of work on
//! it), and one pass over all of them: disk completions, then one turn per
//! ring, round-robin.

use crate::backend::Opener;
use crate::backend::{
    Stats, MAX_BUFFER_BYTES, MAX_MAPPINGS, MAX_PERSISTENT_PER_RING, MAX_REQUEST_BYTES, TRANSIENT_RESERVE,
};
use crate::budget::Budget;
use crate::datapath::{DevRef, Group, Turn};
use crate::idmap::IdMap;
use crate::inflight::Tokens;
use crate::vbd::Vbd;
use crate::xenbus::BackendConfig;
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use drivers::block::{BlockDevice, BlockRequest};
use log::warn;
use xen::evtchn::EventOps;
use xen::gnttab::{GrantOps, LocalFrames};
use xen::shmem::SharedMem;

/// The disk of a removed vbd whose requests are still on it: kept (and
/// polled, its completions dropped) until they completed or `deadline`.
pub(crate) struct Retired<D> {
    pub(crate) vid: u32,
    pub(crate) disk: D,
    pub(crate) deadline: xen::wait::Nanos,
}

/// What every ring context shares: the opener of disks, the buffer
/// allocator and the bookkeeping of work on the disks.
pub(crate) struct Core<D: BlockDevice> {
    /// Opens a vbd's disk when the vbd is discovered.
    pub(crate) open: Box<Opener<D>>,
    /// The last vbd that could not be set up, and why (for operators).
    pub(crate) last_error: Option<String>,
    /// Log budget of open failures (the toolstack's input, through
    /// whatever a guest's administrator asked for).
    pub(crate) open_log: xen::ratelimit::LogLimit,
    pub(crate) alloc: Box<dyn FnMut(usize) -> Option<D::Buffer>>,
    /// Disk buffer memory in use, all rings.
    pub(crate) budget: Budget,
    /// Split requests still in progress.
    pub(crate) groups: BTreeMap<u64, Group>,
    pub(crate) next_group: u64,
    /// (vbd id, disk token) → (ring serial, work).
    pub(crate) tokens: Tokens<D::Buffer>,
    /// Serial of the next ring context (never reused: a late completion of
    /// a closed ring cannot reach its successor).
    pub(crate) next_serial: u64,
    /// Persistent grants each ring may keep mapped: its share of
    /// [`MAX_MAPPINGS`](crate::MAX_MAPPINGS) (see `Serve::rebalance`).
    pub(crate) persistent_cap: usize,
    /// Disks of removed vbds still draining.
    pub(crate) retired: Vec<Retired<D>>,
    /// Non-persistent rings move data by grant copy.
    pub(crate) grant_copy: bool,
    /// Persistent rings let the disk reach the guest's pages directly
    /// where it can (see [`crate::zerocopy`]).
    pub(crate) zerocopy: bool,
    /// Mappings of closed rings pinned by zero-copy work still on a disk:
    /// (ring serial, grant) → (mapping, pieces of work naming it).
    pub(crate) parked: BTreeMap<(u64, u32), (xen::gnttab::Mapping, u32)>,
    /// A vbd was removed since the last sweep of `tokens` (see
    /// `poll_retired`).
    pub(crate) sweep_tokens: bool,
    /// Disk buffers of finished requests, kept (at most [`SPARE_BYTES`])
    /// for writes only: a write's buffer is overwritten entirely from the
    /// guest's pages before the disk reads it, so it needs no zero-fill.
    /// Reads always get a fresh zeroed buffer (a device that reports
    /// success without writing all of it must not hand old bytes, maybe
    /// another guest's, to the guest).
    pub(crate) spare: Vec<D::Buffer>,
    pub(crate) spare_bytes: usize,
}

/// Bytes of spare disk buffers kept for writes (see `Core::spare`).
pub(crate) const SPARE_BYTES: usize = 1 << 20;

/// Everything the data path of all vbds borrows for one call: the disk
/// side, every vbd's rings, the counters, and the grant and event
/// operations. The vbd lifecycle glue ([`crate::vbd`]) works through it
/// too (a disconnect drains the disk, which completes any vbd's work).
pub(crate) struct Serve<'a, P: SharedMem, D: BlockDevice, G, E> {
    pub(crate) cfg: BackendConfig,
    pub(crate) core: &'a mut Core<D>,
    /// The vbds' data-path state by device id (ids grow: iteration order is
    /// adoption order).
    pub(crate) vbds: &'a mut IdMap<Vbd<P, D>>,
    pub(crate) stats: &'a mut Stats,
    pub(crate) g: &'a mut G,
    pub(crate) e: &'a mut E,
}

impl<P: SharedMem, D: BlockDevice, G: GrantOps<Page = P>, E: EventOps> Serve<'_, P, D, G, E>
where
    D::Buffer: AsRef<[u8]> + AsMut<[u8]> + LocalFrames,
{
    /// One round of work: disk completions, then one turn for every ring
    /// context, round-robin from `*next_turn`. Returns (anything happened,
    /// busy: poll again at once).
    pub(crate) fn poll(&mut self, next_turn: &mut usize) -> (bool, bool) {
        let now = self.e.now();
        // One pass over the vbds, in place (no lookup by id): their disks'
        // completions; how many ring contexts there are, how many wait for
        // buffers, whether any vbd has orphans.
        let (mut waiting, mut orphaned, mut contexts) = (0, false, 0);
        let mut busy = false;
        for v in self.vbds.values_mut() {
            orphaned |= v.orphans > 0;
            contexts += v.rings.len();
            waiting += v.rings.iter().filter(|r| r.waiting && !r.dead).count();
            busy |= poll_vbd_disk(v, &mut *self.core, &mut *self.stats, &mut *self.g, &mut *self.e, now);
        }
        busy |= self.poll_retired(now);
        // Waiting for a draining disk is not progress (the caller may nap:
        // the orphans keep `tokens` non-empty, so we still report busy).
        if orphaned {
            self.drain_check();
        }
        if contexts == 0 {
            return (busy, busy || !self.core.tokens.is_empty());
        }
        // While several rings wait for buffers, each may hold an equal
        // share (never less than one largest request); a ring alone may
        // use the whole budget.
        let share = (MAX_BUFFER_BYTES / waiting.max(1)).max(MAX_REQUEST_BYTES);
        // A different context goes first each time: none is always served
        // after the others have taken what was free. Contexts are numbered
        // in vbd order, then ring order; those from `start` on go first,
        // then those before it.
        let start = *next_turn % contexts;
        *next_turn = start + 1;
        for (lo, hi) in [(start, contexts), (0, start)] {
            if lo >= hi {
                continue;
            }
            let mut first = 0; // number of the vbd's first ring
            for v in self.vbds.values_mut() {
                if first >= hi {
                    break;
                }
                let n = v.rings.len();
                for ri in lo.saturating_sub(first)..n.min(hi - first) {
                    busy |= turn(v, ri, share, &mut *self.core, &mut *self.stats, &mut *self.g, &mut *self.e);
                }
                first += n;
            }
        }
        (busy, busy || !self.core.tokens.is_empty())
    }

    /// Polls the disks of removed vbds, dropping their completions; a disk
    /// is dropped once its requests completed or its deadline passed.
    fn poll_retired(&mut self, now: xen::wait::Nanos) -> bool {
        // Tokens of a vbd neither served nor retired are dropped below; such
        // tokens appear only when a vbd is removed. Nothing retired and no
        // removal since the last sweep: nothing to do.
        if self.core.retired.is_empty() && !core::mem::take(&mut self.core.sweep_tokens) {
            return false;
        }
        let mut any = false;
        let mut unmaps = Vec::new();
        let tokens = &mut self.core.tokens;
        for r in self.core.retired.iter_mut() {
            for q in 0..r.disk.queue_count().max(1) {
                // Bounded: a queue holds at most its depth of completions.
                for _ in 0..1024 {
                    let Some(c) = r.disk.poll(q, now) else { break };
                    any = true;
                    if let Some((serial, work)) = tokens.remove(&(r.vid, c.token.0)) {
                        unmaps.extend(parked_done(&mut self.core.parked, serial, &work, &c.result));
                    }
                }
            }
        }
        self.core.retired.retain(|r| {
            let left = tokens.keys().filter(|k| k.0 == r.vid).count();
            if left > 0 && now >= r.deadline {
                warn!("vbd {}: {left} request(s) still on the disk after 30 s; disk released anyway", r.vid);
            }
            left > 0 && now < r.deadline
        });
        let _ = self.g.unmap_batch(&unmaps);
        let gone: Vec<u32> = self.core.retired.iter().map(|r| r.vid).collect();
        tokens.retain(|k, _| self.vbds.contains_key(&k.0) || gone.contains(&k.0));
        any
    }

    /// Recomputes each ring's share of the mapping budget after rings came
    /// or went, and shrinks the persistent caches above it (least recently
    /// used first).
    pub(crate) fn rebalance(&mut self) {
        let rings = self.vbds.values().map(|v| v.rings.len()).sum::<usize>();
        let ring_pages: usize = self.vbds.values().flat_map(|v| &v.rings).map(|r| r.ring_maps.len()).sum();
        let free = MAX_MAPPINGS.saturating_sub(ring_pages + TRANSIENT_RESERVE);
        let cap = (free / rings.max(1)).min(MAX_PERSISTENT_PER_RING);
        self.core.persistent_cap = cap;
        let mut released = 0;
        for r in self.vbds.values_mut().flat_map(|v| v.rings.iter_mut()) {
            released += r.shrink_persistent(self.g, &self.core.tokens, cap, None);
        }
        if released > 0 {
            log::info!("{released} persistent grant mapping(s) released: {rings} ring(s) share {free} mappings");
        }
    }

    /// Vbds whose old requests outlived their rings: past the drain
    /// deadline they are forgotten (their completions, if they ever come,
    /// are dropped).
    fn drain_check(&mut self) {
        let now = self.e.now();
        for v in self.vbds.values_mut() {
            if v.orphans == 0 {
                continue;
            }
            if now < v.drain_deadline {
                continue;
            }
            warn!("vbd {}: {} request(s) still on the disk after 30 s; their answers dropped", v.be, v.orphans);
            v.orphans = 0;
            let (vid, live): (u32, Vec<u64>) = (v.id, v.rings.iter().map(|r| r.serial).collect());
            self.core.tokens.retain(|k, serial| k.0 != vid || live.contains(&serial));
        }
    }
}

/// Ring `ri` of vbd `v` takes its turn (if it exists and may).
fn turn<P: SharedMem, D: BlockDevice, G: GrantOps<Page = P>, E: EventOps>(
    v: &mut Vbd<P, D>,
    ri: usize,
    share: usize,
    core: &mut Core<D>,
    stats: &mut Stats,
    g: &mut G,
    e: &mut E,
) -> bool
where
    D::Buffer: AsRef<[u8]> + AsMut<[u8]> + LocalFrames,
{
    let Some(ring) = v.rings.get_mut(ri) else { return false };
    // A reconnected vbd whose old requests are still on the disk
    // takes no new ones yet: they could overtake the old.
    if v.orphans > 0 {
        ring.publish(e);
        return false;
    }
    let pending = e.take_pending(ring.port);
    let mut t = Turn { core, disk: &mut v.disk, info: &v.info, stats, g, e: &mut *e };
    let mut d = DevRef { id: v.id, be: &v.be, fe_dom: v.fe_dom, log: &mut v.log };
    let busy = ring.turn(&mut t, &mut d, share) || pending;
    // The answers of this poll's completions and of this turn: one
    // publish, one event at most.
    ring.publish(e);
    busy
}

/// Hands every completion of vbd `v`'s disk to its ring. Returns whether
/// there were any.
fn poll_vbd_disk<P: SharedMem, D: BlockDevice, G: GrantOps<Page = P>, E: EventOps>(
    v: &mut Vbd<P, D>,
    core: &mut Core<D>,
    stats: &mut Stats,
    g: &mut G,
    e: &mut E,
    now: xen::wait::Nanos,
) -> bool
where
    D::Buffer: AsRef<[u8]> + AsMut<[u8]> + LocalFrames,
{
    let mut any = false;
    let vid = v.id;
    let nq = v.disk.queue_count().max(1);
    for q in 0..nq {
        // Bounded: a queue holds at most its depth of completions.
        for _ in 0..1024 {
            let Some(c) = v.disk.poll(q, now) else { break };
            any = true;
            let Some((serial, mut work)) = core.tokens.remove(&(vid, c.token.0)) else { continue };
            let Some(ring) = v.rings.iter_mut().find(|r| r.serial == serial) else {
                // A ring that is gone: the work (and its buffer charge)
                // is dropped unanswered; pages it kept mapped for the
                // disk are unmapped once nothing on the disk names them.
                v.orphans = v.orphans.saturating_sub(1);
                let done = parked_done(&mut core.parked, serial, &work, &c.result);
                if !done.is_empty() {
                    let _ = g.unmap_batch(&done);
                }
                continue;
            };
            match c.request {
                BlockRequest::Read { buffer, .. } | BlockRequest::Write { buffer, .. } => work.buf = Some(buffer),
                // Its list is kept for the ring's next requests.
                BlockRequest::ReadSg { sg, .. } | BlockRequest::WriteSg { sg, .. } => work.sg = Some(sg),
                _ => {}
            }
            let mut t =
                Turn { core: &mut *core, disk: &mut v.disk, info: &v.info, stats: &mut *stats, g: &mut *g, e: &mut *e };
            let mut d = DevRef { id: v.id, be: &v.be, fe_dom: v.fe_dom, log: &mut v.log };
            ring.complete(&mut t, &mut d, work, c.result);
        }
    }
    any
}

/// The parked mappings a finished piece of work of closed ring `serial`
/// released (see `Core::unpark`).
fn parked_done<B>(
    parked: &mut BTreeMap<(u64, u32), (xen::gnttab::Mapping, u32)>,
    serial: u64,
    work: &crate::datapath::Work<B>,
    result: &Result<(), drivers::Error>,
) -> Vec<xen::gnttab::Mapping> {
    let mut out = Vec::new();
    if !work.zc || !crate::zerocopy::device_done(result) {
        return out;
    }
    for s in &work.segs {
        let key = (serial, s.gref().0);
        if let Some((m, n)) = parked.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                out.push(*m);
                parked.remove(&key);
            }
        }
    }
    out
}
