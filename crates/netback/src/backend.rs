//! The public [`Netback`]: vifs found through [`xen_backend::Lifecycle`],
//! their handshake and queues, the guests' frames in and out.
//!
//! Scheduling: Ferrite has one vCPU and polls. Each [`Netback::poll`] gives
//! every connected queue one turn of at most [`TX_BUDGET`] tx slots,
//! starting one queue further each time (round-robin), whatever the event
//! channels say: an event flood costs a guest nothing extra and buys it
//! nothing. [`Netback::deliver`] never waits: a frame for a guest that has
//! not posted enough rx requests waits in its queue's backlog (bounded by
//! [`RX_BACKLOG_FRAMES`] and [`RX_BACKLOG_BYTES`], flushed in order by
//! `poll` as requests come); past that it is dropped (counted).
//!
//! Xenstore, per vif (`backend/vif/<domid>/<devid>` under our home):
//!
//! * read from our directory: `frontend`, `frontend-id`, `online`, `state`
//!   (the lifecycle's), `mac` (at discovery; `aa:bb:cc:dd:ee:ff`, else
//!   [`VifInfo::mac`] is `None`), `rate` (at each connect: `bytes,usec`,
//!   per queue like Linux; absent or malformed: no limit). `script` and
//!   everything else is ignored.
//! * written to our directory: `hotplug-status` = `connected` (at
//!   discovery, as dom0's hotplug script would), the features
//!   (`feature-sg`, `feature-gso-tcpv4`, `feature-gso-tcpv6`,
//!   `feature-ipv6-csum-offload`, `feature-rx-copy` = 1, `feature-rx-flip`
//!   = 0, `feature-split-event-channels`, `multi-queue-max-queues`,
//!   `feature-ctrl-ring`), `state`, `error`.
//! * read from the frontend's: `request-rx-copy` (must be 1),
//!   `feature-rx-notify`, `feature-sg`, `feature-gso-tcpv4/6`,
//!   `feature-no-csum-offload`, `feature-ipv6-csum-offload`,
//!   `multi-queue-num-queues`, `tx-ring-ref`, `rx-ring-ref`,
//!   `event-channel` or `event-channel-tx`/`-rx` (at the top for one
//!   queue, under `queue-N/` for several), `ctrl-ring-ref` and
//!   `event-channel-ctrl` (optional).

use crate::credit::Credit;
use crate::xenbus::{RxFeatures, VifFsm};
use crate::VifId;
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use net::{Frame, MacAddr};
use xen::evtchn::EventOps;
use xen::gnttab::{GrantOps, LocalFrames, Mapping};
use xen::ratelimit::LogLimit;
use xen::shmem::SharedMem;
use xen::types::{DomId, EvtchnPort};
use xen::wait::{Nanos, Notifier};
use xen::xenstore::{XsClient, XsError};
use xen_backend::Lifecycle;
use xen_ring::BackRing;

/// The token prefix of our xenstore watches (the device kind's name).
pub const WATCH_PREFIX: &str = "vif";
/// Tx slots one queue takes per turn (per [`Netback::poll`]).
pub const TX_BUDGET: usize = 64;
/// Frames one queue keeps while its guest has no rx requests for them.
pub const RX_BACKLOG_FRAMES: usize = 64;
/// Bytes one queue keeps while its guest has no rx requests for them.
pub const RX_BACKLOG_BYTES: usize = 256 * 1024;
/// How soon a queue whose guest posted too few rx requests for the next
/// frame is looked at again.
pub const RX_RETRY_NS: Nanos = 1_000_000;
/// Control requests one vif's control ring gets answered per poll.
pub const CTRL_BUDGET: usize = 8;
/// Bytes of the staging buffer frames are copied through (one largest
/// frame, in whole pages).
pub const STAGING_BYTES: usize = 16 * 4096;

/// Backend-wide settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// Queues offered (`multi-queue-max-queues`), 1..=16.
    pub max_queues: u32,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig { max_queues: 4 }
    }
}

/// Why a frame was not delivered to a guest (it is dropped; nothing waits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drop {
    /// No such vif.
    NoSuchVif,
    /// The vif is not connected.
    NotConnected,
    /// The guest has not posted enough rx requests.
    NoRxRequests,
    /// Larger than one page and the frontend did not negotiate `feature-sg`,
    /// or over [`net::MAX_FRAME`], or empty.
    BadSize,
    /// An offload the frontend cannot take and we could not do in software
    /// (unparsable headers).
    Offload,
    /// A grant copy into the guest's pages failed (the guest's fault: its
    /// requests are answered with an error).
    CopyFailed,
    /// The rx ring is broken.
    RingBroken,
}

/// Per-vif counters. "tx" is what the guest sent (our input), "rx" what it
/// received (our output), as the guest sees them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VifStats {
    /// Frames taken from the guest.
    pub tx_packets: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Packets refused as malformed (answered `NETIF_RSP_ERROR`).
    pub tx_errors: u64,
    /// Packets the guest sent that were dropped for other reasons.
    pub tx_drops: u64,
    /// Frames delivered to the guest.
    pub rx_packets: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Deliveries that failed on the guest's side (bad grants).
    pub rx_errors: u64,
    /// Frames dropped (no rx requests, no sg, unoffloadable).
    pub rx_drops: u64,
}

/// What the integrator sees of one vif.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VifInfo {
    /// Our id for it.
    pub id: VifId,
    /// Its backend directory (relative to our home).
    pub be: String,
    /// The frontend's domain.
    pub fe_dom: DomId,
    /// The `mac` node of the backend directory, if it parsed.
    pub mac: Option<MacAddr>,
    /// Rings mapped, frames flow.
    pub connected: bool,
    /// Queues connected.
    pub queues: usize,
    /// Counters.
    pub stats: VifStats,
}

/// Backend-wide counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Grant copy hypercall batches.
    pub grant_copies: u64,
    /// Grant map batches for data (fallback when buffers name no frames).
    pub data_maps: u64,
    /// Queues stopped because their frontend broke the tx protocol.
    pub fatal_queues: u64,
}

/// One queue: a tx and an rx ring with their event channels.
pub(crate) struct Queue<P: SharedMem> {
    pub(crate) tx: BackRing<P, crate::abi::TxEntry>,
    pub(crate) rx: BackRing<P, crate::abi::RxEntry>,
    pub(crate) maps: Vec<Mapping>,
    pub(crate) tx_port: EvtchnPort,
    pub(crate) rx_port: EvtchnPort,
    /// Slots of a packet whose end is not published yet (at most
    /// [`crate::tx::MAX_PACKET_SLOTS`]).
    pub(crate) carry: Vec<crate::abi::TxSlot>,
    /// The frontend broke the tx protocol: no more tx from this queue.
    pub(crate) dead: bool,
    pub(crate) credit: Credit,
    /// Waiting for credit until this time.
    pub(crate) throttled: Option<Nanos>,
    /// Frames waiting for rx requests, oldest first (at most
    /// [`RX_BACKLOG_FRAMES`] and [`RX_BACKLOG_BYTES`]).
    pub(crate) backlog: alloc::collections::VecDeque<Frame>,
    pub(crate) backlog_bytes: usize,
    /// Too few rx requests for the backlog's head: look again then.
    pub(crate) rx_retry: Option<Nanos>,
}

/// A vif's control ring.
pub(crate) struct CtrlRing<P: SharedMem> {
    pub(crate) ring: BackRing<P, crate::abi::CtrlEntry>,
    pub(crate) map: Mapping,
    pub(crate) port: EvtchnPort,
    /// The frontend broke the ring.
    pub(crate) dead: bool,
}

/// One vif.
pub(crate) struct Vif<P: SharedMem> {
    pub(crate) ctrl: Option<CtrlRing<P>>,
    pub(crate) hash: crate::ctrl::HashState,
    pub(crate) be: String,
    pub(crate) fe_dom: DomId,
    pub(crate) mac: Option<MacAddr>,
    pub(crate) fsm: VifFsm,
    pub(crate) queues: Vec<Queue<P>>,
    pub(crate) rx: RxFeatures,
    pub(crate) stats: VifStats,
    pub(crate) log: LogLimit,
}

/// Makes a zeroed staging buffer of a given length.
pub(crate) type Alloc<B> = dyn FnMut(usize) -> Option<B>;

/// What the lifecycle and the data path borrow.
pub(crate) struct Serve<'a, P: SharedMem, B, G, E> {
    pub(crate) cfg: NetConfig,
    pub(crate) vifs: &'a mut BTreeMap<u32, Vif<P>>,
    pub(crate) generation: &'a mut u64,
    pub(crate) stats: &'a mut Stats,
    pub(crate) staging: &'a mut Option<B>,
    pub(crate) alloc: &'a mut Alloc<B>,
    pub(crate) g: &'a mut G,
    pub(crate) e: &'a mut E,
}

/// The network backend.
pub struct Netback<P: SharedMem, B> {
    cfg: NetConfig,
    life: Lifecycle,
    vifs: BTreeMap<u32, Vif<P>>,
    generation: u64,
    staging: Option<B>,
    alloc: Box<Alloc<B>>,
    next_turn: usize,
    /// Counters.
    pub stats: Stats,
}

impl<P: SharedMem, B: AsRef<[u8]> + AsMut<[u8]> + LocalFrames> Netback<P, B> {
    /// A backend for every vif assigned to this domain. `alloc` makes a
    /// zeroed buffer of the given length whose frames grant copies can name
    /// ([`LocalFrames`]); one of [`STAGING_BYTES`] is taken at the first
    /// frame. A buffer that names no frames (a plain `Vec<u8>`) works too:
    /// the guest's pages are then mapped and unmapped per packet.
    pub fn new(cfg: NetConfig, alloc: impl FnMut(usize) -> Option<B> + 'static) -> Self {
        let cfg = NetConfig { max_queues: cfg.max_queues.clamp(1, crate::xenbus::MAX_QUEUES) };
        Netback {
            cfg,
            life: Lifecycle::new(WATCH_PREFIX),
            vifs: BTreeMap::new(),
            generation: 0,
            staging: None,
            alloc: Box::new(alloc),
            next_turn: 0,
            stats: Stats::default(),
        }
    }

    fn serve<'a, G: GrantOps<Page = P>, E: EventOps>(
        &'a mut self,
        g: &'a mut G,
        e: &'a mut E,
    ) -> (&'a mut Lifecycle, Serve<'a, P, B, G, E>) {
        let serve = Serve {
            cfg: self.cfg,
            vifs: &mut self.vifs,
            generation: &mut self.generation,
            stats: &mut self.stats,
            staging: &mut self.staging,
            alloc: &mut *self.alloc,
            g,
            e,
        };
        (&mut self.life, serve)
    }

    /// Starts watching `backend/vif` for vifs assigned to us.
    pub fn start<M: SharedMem, N: Notifier>(&mut self, xs: &mut XsClient<M, N>) -> Result<(), XsError> {
        self.life.start(xs)
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

    /// Periodic work (every few hundred ms): removes closed vifs'
    /// directories when due, rescans if asked. Returns whether it rescanned.
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

    /// Asks for a rescan of `backend/vif` at the next maintenance (after
    /// lost watch events).
    pub fn request_rescan(&mut self) {
        self.life.request_rescan();
    }

    /// Event channels of every connected queue (to wait on when idle).
    pub fn ports(&self) -> Vec<EvtchnPort> {
        let mut out: Vec<EvtchnPort> = self.vifs.values().filter_map(|v| v.ctrl.as_ref()).map(|c| c.port).collect();
        for q in self.vifs.values().flat_map(|v| &v.queues) {
            out.push(q.tx_port);
            if q.rx_port != q.tx_port {
                out.push(q.rx_port);
            }
        }
        out
    }

    /// One round of transmit work: every connected queue gets one turn of
    /// at most [`TX_BUDGET`] slots, round-robin; the validated frames go to
    /// `out` with their vif. Returns whether to poll again at once (work
    /// was left); `false` means idle until an event or
    /// [`next_deadline`](Self::next_deadline).
    pub fn poll<G: GrantOps<Page = P>, E: EventOps>(
        &mut self,
        g: &mut G,
        e: &mut E,
        out: &mut Vec<(VifId, Frame)>,
    ) -> bool {
        let mut next = self.next_turn;
        let (_, mut serve) = self.serve(g, e);
        let busy = serve.poll(&mut next, out);
        self.next_turn = next;
        busy
    }

    /// Copies `frame` into the guest of `vif` (its posted rx requests),
    /// segmenting or completing checksums in software when its frontend
    /// cannot take the offload. Never waits: without enough rx requests the
    /// frame joins the queue's bounded backlog (`Ok`, delivered by a later
    /// [`poll`](Self::poll)), or is dropped when that is full.
    pub fn deliver<G: GrantOps<Page = P>, E: EventOps>(
        &mut self,
        g: &mut G,
        e: &mut E,
        vif: VifId,
        frame: &Frame,
    ) -> Result<(), Drop> {
        let (_, mut serve) = self.serve(g, e);
        serve.deliver(vif.0, frame)
    }

    /// Every vif known, connected or not.
    pub fn vifs(&self) -> impl Iterator<Item = VifInfo> + '_ {
        self.vifs.iter().map(|(&id, v)| VifInfo {
            id: VifId(id),
            be: v.be.clone(),
            fe_dom: v.fe_dom,
            mac: v.mac,
            connected: v.fsm.connected(),
            queues: v.queues.len(),
            stats: v.stats,
        })
    }

    /// Bumps whenever a vif connects or disconnects (re-sync switch ports).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Grant mappings held now (two ring pages per connected queue, one
    /// per control ring).
    pub fn mappings(&self) -> usize {
        let ctrl = self.vifs.values().filter(|v| v.ctrl.is_some()).count();
        ctrl + self.vifs.values().flat_map(|v| &v.queues).map(|q| q.maps.len()).sum::<usize>()
    }

    /// The earliest time [`poll`](Self::poll) has timed work (a queue
    /// waiting for transmit credit, or a backlog waiting for more rx
    /// requests than the guest posted): sleep no later than this.
    pub fn next_deadline(&self) -> Option<Nanos> {
        self.vifs.values().flat_map(|v| &v.queues).flat_map(|q| [q.throttled, q.rx_retry]).flatten().min()
    }

    /// Frames waiting in the vifs' rx backlogs.
    pub fn backlog(&self) -> usize {
        self.vifs.values().flat_map(|v| &v.queues).map(|q| q.backlog.len()).sum()
    }
}
