//! The block backend: xenstore, grants, event channels and the disk
//! around the pure protocol core.
//!
//! One [`Blkback`] serves every vbd the toolstack assigns to this domain
//! (`backend/vbd/<frontend-domid>/<devid>` under our home), each from
//! its own [`BlockDevice`], opened from the vbd's `params` and `mode` when
//! the vbd is discovered and dropped when it is torn down (a target that
//! cannot be opened fails the vbd the way libxl expects: `hotplug-error`,
//! `hotplug-status` = `error`, no `state` node). Per vbd it runs the
//! [`BackendFsm`]; each ring is a
//! polling context of its own (its ring, deferred work, in-flight count,
//! buffer holdings, counters) that polls requests, validates copies, moves
//! data between the frontend's granted pages and disk buffers, and answers.
//!
//! Scheduling: Ferrite has one vCPU, so contexts are cooperative. Each
//! [`Blkback::poll`] gives every context one turn of at most
//! [`RING_BUDGET`] requests, starting one context further each time
//! (round-robin). Disk buffers are bounded by [`MAX_BUFFER_BYTES`] for all
//! rings together; while several rings wait for buffers, each may hold at
//! most an equal share, so a ring flooding the backend with large requests
//! cannot keep the others waiting.
//!
//! Data path: when the frontend negotiated `feature-persistent`, granted
//! pages are mapped and kept mapped (least recently used released past a
//! bound); where the mappings carry a bus address and the disk takes
//! scatter lists, the disk reads and writes them directly (zero-copy, see
//! [`crate::zerocopy`]), otherwise they are copied to or from a disk
//! buffer by the CPU. Otherwise data
//! moves by batched `GNTTABOP_copy` between the guest's pages and the disk
//! buffer's own frames ([`LocalFrames`]): one copy call for a request's
//! data (per part on reads split for the disk), one more for an indirect
//! request's segment pages; a buffer that names no frames falls back to
//! map + unmap per batch. A write is answered only after the disk
//! completed it. Reads get a fresh zeroed buffer from the allocator (a
//! device that reports success without writing all of it cannot hand old
//! bytes to a guest); writes reuse the buffers of finished requests (at
//! most 1 MiB kept), which their data overwrites entirely before the disk
//! reads them. The answers of a poll are published once per ring, with at
//! most one event. Flush and barrier wait until the ring has nothing else in
//! flight, flush the disk (preflush), then write their data (if any) with
//! FUA; the ring's later requests wait until all of that completed. Flush
//! and barrier are offered only on a disk with a volatile write cache.
//!
//! Everything the frontend writes is hostile: requests are copied once and
//! validated by the core; grant failures answer `BLKIF_RSP_ERROR`; work per
//! poll is bounded; everything a guest can trigger is logged within its
//! vbd's [`xen::ratelimit::LogLimit`]. A disconnect never waits for the
//! disk: old requests drain in the background while the other vbds are
//! served. Grant mappings of all vbds are bounded by [`MAX_MAPPINGS`].

//!
//! Where things live: the vbd lifecycle (discovery, watches, retire and
//! directory removal) is [`xen_backend::Lifecycle`], glued to the vbd's
//! handshake in [`crate::vbd`]; the per-ring data path is
//! [`crate::datapath`] and [`crate::grants`]; the buffer budget
//! [`crate::budget`].

use crate::budget::Budget;
use crate::datapath::RingStats;
use crate::engine::{Core, Serve};
use crate::idmap::IdMap;
use crate::vbd::Vbd;
use crate::xenbus::BackendConfig;
use crate::{DiskInfo, OpenRequest};
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use drivers::block::BlockDevice;
use xen::evtchn::EventOps;
use xen::gnttab::{GrantOps, LocalFrames};
use xen::shmem::SharedMem;
use xen::types::EvtchnPort;
use xen::wait::{Nanos, Notifier};
use xen::xenstore::{XsClient, XsError};
use xen_backend::Lifecycle;

pub(crate) const PAGE: usize = 4096;
/// Requests one ring context takes per turn (per [`Blkback::poll`]).
pub const RING_BUDGET: usize = 32;
/// Persistent grants kept mapped per ring (Linux blkback's default).
pub const MAX_PERSISTENT_PER_RING: usize = 1056;
/// Grant mappings (ring pages and persistent grants) all vbds together may
/// hold: 16 MiB of guest pages mapped into Ferrite at once. Each connected
/// ring's persistent-grant cache is bounded by an equal share of what the
/// ring pages and one request's transient mappings leave, so a new guest
/// can always connect: the others' caches shrink (least recently used
/// first). A ring whose pages do not fit is refused.
pub const MAX_MAPPINGS: usize = 4096;
/// Mappings kept free for one request's transient mappings (256 data
/// segments and their 8 indirect pages) on top of the persistent caches.
pub(crate) const TRANSIENT_RESERVE: usize = 256 + 8;
/// Disk buffers all rings together may hold. A ring takes no new requests
/// while less than one largest request (256 segments) is left, nor while it
/// holds its share of this when other rings wait for buffers too.
pub const MAX_BUFFER_BYTES: usize = 4 << 20;
pub(crate) const MAX_REQUEST_BYTES: usize = 256 * PAGE;
/// How long a closed device's directory stays before we remove it.
pub const RM_DELAY_NS: Nanos = xen_backend::RM_DELAY_NS;
/// How long a disconnected vbd's requests may stay on the disk (drained in
/// the background) before they are forgotten.
pub(crate) const DRAIN_NS: Nanos = 30_000_000_000;
/// What opens a vbd's disk (see [`Blkback::new`]).
pub(crate) type Opener<D> = dyn FnMut(&OpenRequest<'_>) -> Result<D, String>;
/// The token prefix of our xenstore watches (the device kind's name).
pub const WATCH_PREFIX: &str = "vbd";

/// Counters for logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests taken from rings.
    pub requests: u64,
    /// Requests refused by validation.
    pub rejected: u64,
    /// Requests the disk failed or refused.
    pub errors: u64,
    /// Grant map hypercall batches.
    pub grant_maps: u64,
    /// Segments served from an already mapped persistent grant.
    pub persistent_hits: u64,
    /// Grant copy hypercall batches (`GrantOps::copy_batch` calls).
    pub grant_copies: u64,
    /// Writes served from a spare buffer (no allocation, no zero-fill).
    pub buffers_reused: u64,
    /// Disk buffers allocated (each zero-filled by the allocator).
    pub buffers_allocated: u64,
    /// Disk requests whose data the disk moved straight to or from the
    /// guest's pages (no buffer, no copy).
    pub zero_copy: u64,
}

/// The block backend.
pub struct Blkback<P: SharedMem, D: BlockDevice> {
    cfg: BackendConfig,
    core: Core<D>,
    /// Discovery, watches, retire and removal of vbd directories.
    life: Lifecycle,
    /// Each vbd's handshake and rings, by the lifecycle's device id.
    vbds: IdMap<Vbd<P, D>>,
    /// Round-robin cursor: the ring context that goes first at the next poll.
    next_turn: usize,
    /// Whether the last `poll` did anything besides waiting for the disk.
    progressed: bool,
    /// Counters.
    pub stats: Stats,
}

impl<P: SharedMem, D: BlockDevice> Blkback<P, D>
where
    D::Buffer: AsRef<[u8]> + AsMut<[u8]> + LocalFrames,
{
    /// Serves each vbd from the disk `open` gives for it: called once per
    /// vbd when it is discovered, with its `params` and `mode` (see
    /// [`OpenRequest`]); the disk is dropped when the vbd is torn down. An
    /// `Err` fails the vbd the way libxl understands (see
    /// [`last_error`](Self::last_error)); other vbds are unaffected.
    /// `alloc` makes a zeroed disk buffer of a given length. Rings without
    /// persistent grants move data by grant copy (see
    /// [`set_grant_copy`](Self::set_grant_copy)).
    pub fn new(
        open: impl FnMut(&OpenRequest<'_>) -> Result<D, String> + 'static,
        cfg: BackendConfig,
        alloc: impl FnMut(usize) -> Option<D::Buffer> + 'static,
    ) -> Self {
        let core = Core {
            open: Box::new(open),
            last_error: None,
            open_log: xen::ratelimit::LogLimit::guest(),
            alloc: Box::new(alloc),
            budget: Budget::default(),
            groups: BTreeMap::new(),
            next_group: 1,
            tokens: Default::default(),
            grant_copy: true,
            zerocopy: true,
            parked: BTreeMap::new(),
            next_serial: 1,
            persistent_cap: MAX_PERSISTENT_PER_RING,
            retired: Vec::new(),
            sweep_tokens: false,
            spare: Vec::new(),
            spare_bytes: 0,
        };
        Self {
            cfg,
            core,
            life: Lifecycle::new(WATCH_PREFIX),
            vbds: IdMap::default(),
            next_turn: 0,
            progressed: false,
            stats: Stats::default(),
        }
    }

    /// What everything below borrows: the data path of all vbds, the
    /// counters, and the grant and event operations.
    fn serve<'a, G: GrantOps<Page = P>, E: EventOps>(
        &'a mut self,
        g: &'a mut G,
        e: &'a mut E,
    ) -> (&'a mut Lifecycle, Serve<'a, P, D, G, E>) {
        let serve = Serve { cfg: self.cfg, core: &mut self.core, vbds: &mut self.vbds, stats: &mut self.stats, g, e };
        (&mut self.life, serve)
    }

    /// Whether rings without persistent grants move data by grant copy
    /// (the default) or by mapping each batch of grants and unmapping it
    /// after use. Applies from the next request on.
    pub fn set_grant_copy(&mut self, on: bool) {
        self.core.grant_copy = on;
    }

    /// Whether the disk may move data straight to or from the guest's
    /// pages where it can (the default; see [`crate::zerocopy`]). Applies
    /// from the next request on.
    pub fn set_zerocopy(&mut self, on: bool) {
        self.core.zerocopy = on;
    }

    /// Counters of each connected ring's polling context: (backend
    /// directory, ring index, counters).
    pub fn ring_stats(&self) -> Vec<(&str, usize, RingStats)> {
        self.vbds
            .values()
            .flat_map(|v| {
                v.rings.iter().map(|r| {
                    let st = RingStats { in_flight: r.in_flight as u64, queued: r.deferred.len() as u64, ..r.stats };
                    (v.be.as_str(), r.index, st)
                })
            })
            .collect()
    }

    /// What we tell the frontend of the vbd at backend directory `be`
    /// about its disk.
    pub fn disk_info(&self, be: &str) -> Option<&DiskInfo> {
        self.vbds.values().find(|v| v.be == be).map(|v| &v.info)
    }

    /// The disk of the vbd at backend directory `be`.
    pub fn disk_mut(&mut self, be: &str) -> Option<&mut D> {
        self.vbds.values_mut().find(|v| v.be == be).map(|v| &mut v.disk)
    }

    /// Every vbd's disk, with its backend directory (for shutdown).
    pub fn disks_mut(&mut self) -> impl Iterator<Item = (&str, &mut D)> {
        self.vbds.values_mut().map(|v| (v.be.as_str(), &mut v.disk))
    }

    /// The last vbd whose disk could not be opened: `"<backend dir>: <reason>"`
    /// (for an operator's node such as `data/ferrite/last-error`). The
    /// reason is the opener's text, which names a target from the
    /// toolstack: escape it before printing.
    pub fn last_error(&self) -> Option<&str> {
        self.core.last_error.as_deref()
    }

    /// Starts watching for vbds assigned to us.
    pub fn start<M: SharedMem, N: Notifier>(&mut self, xs: &mut XsClient<M, N>) -> Result<(), XsError> {
        self.life.start(xs)
    }

    /// Event channels of all connected rings (to wait on when idle).
    pub fn ports(&self) -> Vec<EvtchnPort> {
        self.vbds.values().flat_map(|v| v.rings.iter().filter(|r| !r.dead).map(|r| r.port)).collect()
    }

    /// Asks for a rescan of `backend/vbd` at the next maintenance (call it
    /// when the xenstore client dropped watch events).
    pub fn request_rescan(&mut self) {
        self.life.request_rescan();
    }

    /// Periodic work (call every few hundred milliseconds): removes the
    /// directories of closed devices whose delay has passed, and rescans
    /// the vbd directories if an earlier look found one incomplete or watch
    /// events were lost. Returns whether it rescanned.
    pub fn maintenance<M: SharedMem, N: Notifier, G: GrantOps<Page = P>, E: EventOps>(
        &mut self,
        xs: &mut XsClient<M, N>,
        g: &mut G,
        e: &mut E,
    ) -> bool {
        let now = e.now();
        let (life, mut serve) = self.serve(g, e);
        life.maintenance(xs, now, &mut serve)
    }

    /// Grant mappings held now: ring pages and persistent grants of every
    /// connected ring (at most [`MAX_MAPPINGS`] between requests), and
    /// those of closed rings the disk may still reach (zero-copy).
    pub fn mappings(&self) -> usize {
        self.vbds.values().flat_map(|v| &v.rings).map(|r| r.ring_maps.len() + r.pgrants.len()).sum::<usize>()
            + self.core.parked.len()
    }

    /// Bytes of disk buffers currently held by requests.
    pub fn buffer_bytes(&self) -> usize {
        self.core.budget.used()
    }

    /// Number of vbds known.
    pub fn vbd_count(&self) -> usize {
        self.vbds.len()
    }

    /// Handles a watch event whose token starts with [`WATCH_PREFIX`].
    pub fn on_watch<M: SharedMem, N: Notifier, G: GrantOps<Page = P>, E: EventOps>(
        &mut self,
        xs: &mut XsClient<M, N>,
        g: &mut G,
        e: &mut E,
        token: &str,
    ) {
        let (life, mut serve) = self.serve(g, e);
        life.on_watch(xs, token, &mut serve);
    }

    /// One round of work: disk completions, then one turn for every ring
    /// context, round-robin. Returns whether anything happened (poll again
    /// at once) — `false` means idle.
    pub fn poll<G: GrantOps<Page = P>, E: EventOps>(&mut self, g: &mut G, e: &mut E) -> bool {
        let mut next_turn = self.next_turn;
        let (_, mut serve) = self.serve(g, e);
        let (progressed, busy) = serve.poll(&mut next_turn);
        self.next_turn = next_turn;
        self.progressed = progressed;
        busy
    }

    /// Whether the last [`poll`](Self::poll) completed, took or answered
    /// anything. `poll` returning `true` with this `false` means only disk
    /// commands are outstanding: the caller may nap before polling again.
    pub fn progressed(&self) -> bool {
        self.progressed
    }

    /// Disk commands submitted and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.core.tokens.len()
    }
}
