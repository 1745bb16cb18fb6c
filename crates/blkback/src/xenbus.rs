//! The vbd backend's xenbus handshake as a pure state machine.
//!
//! [`BackendFsm::step`] takes one [`Event`] (something the shell observed:
//! a watch fired, a key was read, the disk was opened) and returns the
//! [`Effects`] to carry out, in order. No xenstore access happens here.
//!
//! Modelled on `xen/include/public/io/xenbus.h` (states), the state
//! diagram and node list in `io/blkif.h`, and Linux blkback's
//! `xenbus.c` (`frontend_changed`, `connect_ring`, `read_per_ring_refs`,
//! `connect`):
//!
//! ```text
//!  Initialising --Probe--> InitWait --frontend Initialised/Connected-->
//!     ReadFrontendKeys --keys ok--> MapRings --(disk open)--> Connected
//!  frontend Closing -> Closing;  frontend Closed -> UnmapAll, Closed
//!  Closed --frontend Initialising--> InitWait   (reconnect)
//!  bad keys / bad frontend state -> UnmapAll, error node, Closing
//! ```
//!
//! Shell contract: carry out effects in order. If `MapRings` fails, drop the
//! rest of that batch and feed [`Event::RingMapFailed`]. `UnmapAll` means:
//! stop taking requests, wait for (or abandon, answering nothing) in-flight
//! I/O, then unmap every ring and data grant and unbind the event channels;
//! it is only emitted when rings are mapped.

use crate::abi::Abi;
use crate::request::MAX_INDIRECT_SEGMENTS;
use crate::ring::MAX_RING_PAGE_ORDER;
use crate::{DiskInfo, EvtchnPort, GrantRef};
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

/// `enum xenbus_state` and the strict xenstore integer parser, shared by
/// every backend kind.
pub use xen_backend::{parse_u32, XenbusState};

/// Backend-wide limits we advertise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendConfig {
    /// `multi-queue-max-queues`, 1..=[`MAX_QUEUES`].
    pub max_queues: u32,
    /// `max-ring-page-order`, 0..=4.
    pub max_ring_page_order: u8,
    /// Offer `feature-persistent` (the shell keeps data grants mapped).
    pub persistent: bool,
}

/// Upper bound on queues, so key reads stay bounded whatever the config.
pub const MAX_QUEUES: u32 = 16;

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig { max_queues: 4, max_ring_page_order: MAX_RING_PAGE_ORDER, persistent: true }
    }
}

impl BackendConfig {
    fn clamped(self) -> Self {
        BackendConfig {
            max_queues: self.max_queues.clamp(1, MAX_QUEUES),
            max_ring_page_order: self.max_ring_page_order.min(MAX_RING_PAGE_ORDER),
            persistent: self.persistent,
        }
    }
}

/// One queue's transport parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueParams {
    /// Ring page grants, `1 << ring_page_order` of them, in page order.
    pub ring_refs: Vec<GrantRef>,
    /// The frontend's event channel for this queue.
    pub evtchn: EvtchnPort,
}

/// Everything needed to attach to the frontend's rings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectParams {
    /// Request/response layout.
    pub abi: Abi,
    /// log2 of ring pages per queue.
    pub ring_page_order: u8,
    /// One entry per queue, queue 0 first.
    pub queues: Vec<QueueParams>,
    /// Persistent grants negotiated (offered by us and the frontend).
    pub persistent: bool,
}

/// Frontend keys read from xenstore, by path relative to the frontend's
/// directory (e.g. `"ring-ref"`, `"queue-1/event-channel"`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FrontendKeys {
    map: BTreeMap<String, String>,
}

impl FrontendKeys {
    /// No keys.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one key (tests, or a shell that reads keys itself).
    pub fn insert(&mut self, key: &str, value: &str) -> &mut Self {
        self.map.insert(key.to_string(), value.to_string());
        self
    }

    /// Reads exactly the keys the handshake needs through `get` (a
    /// xenstore read relative to the frontend directory; `None` if absent).
    /// The number of reads is bounded by `cfg`, not by frontend values.
    pub fn read(cfg: &BackendConfig, mut get: impl FnMut(&str) -> Option<String>) -> Self {
        let cfg = cfg.clamped();
        let mut keys = FrontendKeys::new();
        let mut fetch = |keys: &mut FrontendKeys, k: &str| {
            if let Some(v) = get(k) {
                keys.map.insert(k.to_string(), v);
            }
        };
        for k in [KEY_PROTOCOL, KEY_NUM_QUEUES, KEY_RING_PAGE_ORDER, KEY_PERSISTENT] {
            fetch(&mut keys, k);
        }
        let nq = keys.get_u32(KEY_NUM_QUEUES).unwrap_or(1).clamp(1, cfg.max_queues);
        let order = keys.get_u32(KEY_RING_PAGE_ORDER);
        let pages = match order {
            None => 1,
            Some(o) if o <= u32::from(cfg.max_ring_page_order) => 1u32 << o,
            Some(_) => 0,
        };
        for q in 0..nq {
            let prefix = if nq == 1 { String::new() } else { format!("queue-{q}/") };
            fetch(&mut keys, &format!("{prefix}{KEY_EVTCHN}"));
            if order.is_none() {
                fetch(&mut keys, &format!("{prefix}ring-ref"));
            } else {
                for i in 0..pages {
                    fetch(&mut keys, &format!("{prefix}ring-ref{i}"));
                }
            }
        }
        keys
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.map.get(k).map(String::as_str)
    }

    fn get_u32(&self, k: &str) -> Option<u32> {
        self.get(k).and_then(parse_u32)
    }

    /// Reads an optional unsigned key: absent is `Ok(None)`, garbage an error.
    fn opt_u32(&self, k: &str) -> Result<Option<u32>, XenbusError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => parse_u32(v).map(Some).ok_or_else(|| XenbusError::Malformed(k.to_string())),
        }
    }

    fn req_u32(&self, k: &str) -> Result<u32, XenbusError> {
        self.opt_u32(k)?.ok_or_else(|| XenbusError::Missing(k.to_string()))
    }

    /// Validates the keys into ring parameters (Linux `connect_ring`).
    pub fn connect_params(&self, cfg: &BackendConfig) -> Result<ConnectParams, XenbusError> {
        let cfg = cfg.clamped();
        // Linux blkback on x86: a frontend that names no protocol is
        // taken to speak the 32-bit ABI (BLKIF_PROTOCOL_DEFAULT), the
        // legacy of 32-bit guests predating the node.
        let abi = match self.get(KEY_PROTOCOL) {
            None => Abi::X86_32,
            Some(p) => Abi::from_protocol(p).ok_or_else(|| XenbusError::UnknownProtocol(p.to_string()))?,
        };
        let nq = self.opt_u32(KEY_NUM_QUEUES)?.unwrap_or(1);
        if nq == 0 || nq > cfg.max_queues {
            return Err(XenbusError::BadQueueCount(nq));
        }
        let order = self.opt_u32(KEY_RING_PAGE_ORDER)?;
        if let Some(o) = order {
            if o > u32::from(cfg.max_ring_page_order) {
                return Err(XenbusError::BadRingPageOrder(o));
            }
        }
        let persistent = cfg.persistent && self.opt_u32(KEY_PERSISTENT)?.unwrap_or(0) != 0;
        let mut queues = Vec::with_capacity(nq as usize);
        for q in 0..nq {
            let prefix = if nq == 1 { String::new() } else { format!("queue-{q}/") };
            let evtchn = EvtchnPort(self.req_u32(&format!("{prefix}{KEY_EVTCHN}"))?);
            let ring_refs = match order {
                None => alloc::vec![GrantRef(self.req_u32(&format!("{prefix}ring-ref"))?)],
                Some(o) => (0..1u32 << o)
                    .map(|i| self.req_u32(&format!("{prefix}ring-ref{i}")).map(GrantRef))
                    .collect::<Result<Vec<_>, _>>()?,
            };
            queues.push(QueueParams { ring_refs, evtchn });
        }
        Ok(ConnectParams { abi, ring_page_order: order.unwrap_or(0) as u8, queues, persistent })
    }
}

const KEY_PROTOCOL: &str = "protocol";
const KEY_NUM_QUEUES: &str = "multi-queue-num-queues";
const KEY_RING_PAGE_ORDER: &str = "ring-page-order";
const KEY_PERSISTENT: &str = "feature-persistent";
const KEY_EVTCHN: &str = "event-channel";

/// Handshake errors; each becomes the text of the `error` node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XenbusError {
    /// A required frontend key is absent.
    Missing(String),
    /// A frontend key is not a plain decimal `u32`.
    Malformed(String),
    /// `protocol` names an ABI we do not speak.
    UnknownProtocol(String),
    /// `multi-queue-num-queues` is 0 or above our maximum.
    BadQueueCount(u32),
    /// `ring-page-order` above our maximum.
    BadRingPageOrder(u32),
    /// The frontend entered a state the protocol does not allow here.
    BadFrontendState(Option<XenbusState>),
    /// The shell could not map the rings or bind the event channels.
    MapFailed(&'static str),
}

impl fmt::Display for XenbusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XenbusError::Missing(k) => write!(f, "reading {k}: missing"),
            XenbusError::Malformed(k) => write!(f, "reading {k}: malformed"),
            XenbusError::UnknownProtocol(p) => write!(f, "unknown fe protocol {p}"),
            XenbusError::BadQueueCount(n) => write!(f, "invalid number of requested queues {n}"),
            XenbusError::BadRingPageOrder(o) => write!(f, "requested ring page order {o} exceeds max"),
            XenbusError::BadFrontendState(Some(s)) => write!(f, "saw state {} at frontend", s.to_u32()),
            XenbusError::BadFrontendState(None) => write!(f, "saw invalid state at frontend"),
            XenbusError::MapFailed(why) => write!(f, "mapping ring: {why}"),
        }
    }
}

/// Something the shell observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The toolstack created our backend directory: publish transport
    /// limits and wait for the frontend.
    Probe,
    /// The backing disk is open (what dom0's hotplug script reports).
    HotplugDone(DiskInfo),
    /// The frontend's `state` node holds this value.
    FrontendStateChanged(XenbusState),
    /// The frontend's `state` node holds something unparsable.
    FrontendStateInvalid,
    /// Answer to [`Effect::ReadFrontendKeys`].
    FrontendKeys(FrontendKeys),
    /// `MapRings` failed in the shell.
    RingMapFailed(&'static str),
    /// The toolstack wants the device detached (backend `online` = 0).
    Disconnect,
    /// The frontend's directory vanished (its domain died).
    FrontendGone,
}

/// Something for the shell to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Write `value` at `key` in our backend directory.
    Write {
        /// Node name relative to the backend directory.
        key: &'static str,
        /// Decimal or literal text.
        value: String,
    },
    /// Write our `state` node.
    SwitchState(XenbusState),
    /// Read the frontend's keys ([`FrontendKeys::read`]) and feed back
    /// [`Event::FrontendKeys`].
    ReadFrontendKeys,
    /// Map each queue's ring pages, bind its event channel, start serving.
    MapRings(ConnectParams),
    /// Stop serving and release every ring, grant and event channel.
    UnmapAll,
    /// Write the `error` node (`xenbus_dev_fatal`).
    WriteError(String),
    /// The device is finished: drop watches and the backend directory.
    Remove,
}

/// Effects of one step, in execution order.
pub type Effects = Vec<Effect>;

/// The vbd backend's handshake state.
#[derive(Clone, Debug)]
pub struct BackendFsm {
    cfg: BackendConfig,
    state: XenbusState,
    frontend: XenbusState,
    disk: Option<DiskInfo>,
    mapped: Option<ConnectParams>,
    awaiting_keys: bool,
    detaching: bool,
    removed: bool,
}

impl BackendFsm {
    /// A backend in `Initialising`, waiting for [`Event::Probe`].
    pub fn new(cfg: BackendConfig) -> Self {
        BackendFsm {
            cfg: cfg.clamped(),
            state: XenbusState::Initialising,
            frontend: XenbusState::Unknown,
            disk: None,
            mapped: None,
            awaiting_keys: false,
            detaching: false,
            removed: false,
        }
    }

    /// Our published state.
    pub fn state(&self) -> XenbusState {
        self.state
    }

    /// The rings we currently have mapped.
    pub fn mapped(&self) -> Option<&ConnectParams> {
        self.mapped.as_ref()
    }

    /// Whether the device has been removed (all further events ignored).
    pub fn removed(&self) -> bool {
        self.removed
    }

    /// The effective config (clamped).
    pub fn config(&self) -> &BackendConfig {
        &self.cfg
    }

    /// Advances the machine by one event.
    pub fn step(&mut self, ev: Event) -> Effects {
        let mut fx = Effects::new();
        if self.removed {
            return fx;
        }
        match ev {
            Event::Probe => {
                if self.state == XenbusState::Initialising {
                    fx.push(write("feature-max-indirect-segments", MAX_INDIRECT_SEGMENTS));
                    fx.push(write("multi-queue-max-queues", self.cfg.max_queues));
                    fx.push(write("max-ring-page-order", self.cfg.max_ring_page_order));
                    self.switch(&mut fx, XenbusState::InitWait);
                    // A frontend that raced ahead of the probe is served now.
                    let f = self.frontend;
                    if matches!(f, XenbusState::Initialised | XenbusState::Connected) {
                        self.frontend_changed(&mut fx, f);
                    }
                }
            }
            Event::HotplugDone(disk) => {
                if self.disk.is_none() {
                    self.disk = Some(disk);
                    fx.push(write("hotplug-status", "connected"));
                    self.try_connect(&mut fx);
                }
            }
            Event::FrontendStateChanged(s) => {
                self.frontend = s;
                self.frontend_changed(&mut fx, s);
            }
            Event::FrontendStateInvalid => self.fatal(&mut fx, XenbusError::BadFrontendState(None)),
            Event::FrontendKeys(keys) => {
                if core::mem::replace(&mut self.awaiting_keys, false) {
                    match keys.connect_params(&self.cfg) {
                        Ok(p) => {
                            fx.push(Effect::MapRings(p.clone()));
                            self.mapped = Some(p);
                            self.try_connect(&mut fx);
                        }
                        Err(e) => self.fatal(&mut fx, e),
                    }
                }
            }
            Event::RingMapFailed(why) => {
                if self.mapped.is_some() {
                    self.fatal(&mut fx, XenbusError::MapFailed(why));
                }
            }
            Event::Disconnect => {
                self.detaching = true;
                self.awaiting_keys = false;
                if matches!(self.frontend, XenbusState::Closed | XenbusState::Unknown) {
                    self.unmap(&mut fx);
                    self.switch(&mut fx, XenbusState::Closed);
                    self.remove(&mut fx);
                } else {
                    self.switch(&mut fx, XenbusState::Closing);
                }
            }
            Event::FrontendGone => {
                self.frontend = XenbusState::Unknown;
                self.awaiting_keys = false;
                self.unmap(&mut fx);
                self.switch(&mut fx, XenbusState::Closed);
                self.remove(&mut fx);
            }
        }
        fx
    }

    /// Linux `frontend_changed`.
    fn frontend_changed(&mut self, fx: &mut Effects, s: XenbusState) {
        use XenbusState::*;
        match s {
            Initialising => {
                // The frontend re-initialises after a disconnect.
                if self.state == Closed && !self.detaching {
                    self.switch(fx, InitWait);
                }
            }
            Initialised | Connected => {
                // Two watch events in quick succession land here twice;
                // once connected there is nothing to do.
                // Before the probe we have published nothing; the probe
                // picks this up.
                if matches!(self.state, Initialising | Connected | Closing) || self.detaching {
                    return;
                }
                // Never keep an old mapping across a (re)connect.
                self.unmap(fx);
                self.awaiting_keys = true;
                fx.push(Effect::ReadFrontendKeys);
            }
            Closing => self.switch(fx, Closing),
            Closed => {
                self.awaiting_keys = false;
                self.unmap(fx);
                self.switch(fx, Closed);
                if self.detaching {
                    self.remove(fx);
                }
            }
            Unknown => {
                self.awaiting_keys = false;
                self.unmap(fx);
                self.switch(fx, Closed);
                self.remove(fx);
            }
            InitWait | Reconfiguring | Reconfigured => self.fatal(fx, XenbusError::BadFrontendState(Some(s))),
        }
    }

    /// Publishes device properties and goes `Connected` once both the
    /// rings and the disk are ready (Linux `connect`).
    fn try_connect(&mut self, fx: &mut Effects) {
        let (Some(disk), Some(_)) = (self.disk, self.mapped.as_ref()) else { return };
        if self.state == XenbusState::Connected || self.detaching {
            return;
        }
        if disk.flush {
            fx.push(write("feature-flush-cache", 1));
        }
        if disk.barrier {
            fx.push(write("feature-barrier", 1));
        }
        if let Some(d) = disk.discard {
            fx.push(write("feature-discard", 1));
            fx.push(write("discard-granularity", d.granularity));
            fx.push(write("discard-alignment", d.alignment));
            fx.push(write("discard-secure", u8::from(d.secure)));
        }
        fx.push(write("feature-persistent", u8::from(self.cfg.persistent)));
        fx.push(write("sectors", disk.sectors));
        fx.push(write("info", disk.vdisk_info()));
        fx.push(write("sector-size", disk.sector_size));
        fx.push(write("physical-sector-size", disk.physical_sector_size));
        self.switch(fx, XenbusState::Connected);
    }

    /// `xenbus_dev_fatal`: stop serving, say why, go `Closing`.
    fn fatal(&mut self, fx: &mut Effects, e: XenbusError) {
        self.awaiting_keys = false;
        self.unmap(fx);
        fx.push(Effect::WriteError(e.to_string()));
        self.switch(fx, XenbusState::Closing);
    }

    fn unmap(&mut self, fx: &mut Effects) {
        if self.mapped.take().is_some() {
            fx.push(Effect::UnmapAll);
        }
    }

    fn switch(&mut self, fx: &mut Effects, s: XenbusState) {
        if self.state != s {
            self.state = s;
            fx.push(Effect::SwitchState(s));
        }
    }

    fn remove(&mut self, fx: &mut Effects) {
        self.removed = true;
        fx.push(Effect::Remove);
    }
}

fn write(key: &'static str, value: impl ToString) -> Effect {
    Effect::Write { key, value: value.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_u32_strict() {
        assert_eq!(parse_u32("0"), Some(0));
        assert_eq!(parse_u32("4294967295"), Some(u32::MAX));
        for bad in ["", "4294967296", "99999999999", "-1", "+1", " 1", "1 ", "0x10", "1\n"] {
            assert_eq!(parse_u32(bad), None, "{bad:?}");
        }
        assert_eq!(XenbusState::parse("4"), Some(XenbusState::Connected));
        assert_eq!(XenbusState::parse("9"), None);
        assert_eq!(XenbusState::Closed.to_node(), "6");
    }

    #[test]
    fn default_protocol_is_x86_32() {
        let mut k = FrontendKeys::new();
        k.insert("ring-ref", "8").insert("event-channel", "5");
        let p = k.connect_params(&BackendConfig::default()).unwrap();
        assert_eq!(p.abi, Abi::X86_32);
        assert_eq!(p.queues, [QueueParams { ring_refs: alloc::vec![GrantRef(8)], evtchn: EvtchnPort(5) }]);
        assert!(!p.persistent);
        k.insert("protocol", "arm-abi");
        assert_eq!(k.connect_params(&BackendConfig::default()), Err(XenbusError::UnknownProtocol("arm-abi".into())));
    }
}
