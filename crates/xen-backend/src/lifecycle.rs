//! The device table of one backend kind: discovery, watches, retire and
//! removal.
//!
//! Watch tokens (all start with the kind's name, e.g. `vbd`):
//!
//! | token              | watches                | means                      |
//! |--------------------|------------------------|----------------------------|
//! | `<kind>-list`      | `backend/<kind>`       | devices added or removed   |
//! | `<kind>-fe:<be>`   | `<fe>/state`           | the frontend moved         |
//! | `<kind>-online:<be>` | `<be>/online`        | the toolstack detaches     |
//!
//! Everything read here was written by the toolstack or a guest: lists are
//! bounded (256 frontend domains, 64 devices each), only `ENOENT` means
//! absent, and a device seen half-written is looked at again at the next
//! [`Lifecycle::maintenance`] instead of being guessed at.

use crate::node::{write_existing, DeviceXs};
use crate::state::XenbusState;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use log::{info, warn};
use xen::shmem::SharedMem;
use xen::wait::Notifier;
use xen::xenstore::{XsClient, XsErrno, XsError};
use xen_types::{DomId, Nanos};

/// How long a closed device's directory stays before we remove it.
pub const RM_DELAY_NS: Nanos = 2_000_000_000;
/// Frontend domains looked at per scan.
const MAX_DOMS: usize = 256;
/// Devices looked at per frontend domain per scan.
const MAX_DEVS_PER_DOM: usize = 64;

/// One adopted device.
#[derive(Clone, Debug)]
pub struct Device {
    /// Our id for it (unique for the life of the [`Lifecycle`], never reused).
    pub id: u32,
    /// The backend directory, `<home>/backend/<kind>/<domid>/<devid>` as
    /// listed (relative to our home).
    pub be: String,
    /// The frontend directory (the backend's `frontend` node).
    pub fe: String,
    /// The frontend's domain (the backend's `frontend-id` node).
    pub fe_dom: DomId,
    /// The toolstack removed our directory: write nothing more there.
    pub(crate) gone: bool,
    /// The frontend's state node has been read at least once: only then does
    /// its absence mean the frontend is gone (not "not written yet").
    pub(crate) fe_seen: bool,
}

/// What happened to a device, for its kind to act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceEvent {
    /// The device was adopted and its hotplug nodes written: probe it.
    Added,
    /// The frontend's `state` node holds this value.
    FrontendState(XenbusState),
    /// The frontend's `state` node holds something unparsable.
    FrontendStateInvalid,
    /// The frontend (or our own directory) vanished: its domain died.
    FrontendGone,
    /// The toolstack wants the device detached (backend `online` = 0).
    Offline,
}

/// What the kind made of an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The device lives on.
    Keep,
    /// The device is finished and everything of it released (at time `at`):
    /// drop its watches, forget it and remove its directory later.
    Removed {
        /// When it was released (the delay of the directory's removal
        /// starts here).
        at: Nanos,
    },
}

/// What one device kind does (blkback for `vbd`, netback for `vif`).
pub trait DeviceKind {
    /// Nodes written into a newly adopted device's backend directory before
    /// [`DeviceEvent::Added`]: what dom0's hotplug script would write for a
    /// backend in dom0 (e.g. `physical-device`).
    fn hotplug_nodes(&self) -> Vec<(&'static str, String)>;

    /// Handles one event for the device `xs.device()`. Returning
    /// [`Outcome::Removed`] means its kind state is gone.
    fn event<M: SharedMem, N: Notifier>(&mut self, xs: &mut DeviceXs<'_, M, N>, ev: DeviceEvent) -> Outcome;
}

/// The devices of one kind assigned to this domain.
#[derive(Debug)]
pub struct Lifecycle {
    kind: &'static str,
    devices: Vec<Device>,
    /// Backend directories whose device we removed while the directory
    /// stayed (the frontend vanished, or a detach waiting for the
    /// toolstack's cleanup): not probed again until the toolstack re-creates
    /// them (`state` back to Initialising) or removes them. Bounded by the
    /// directories `scan` looks at.
    retired: Vec<String>,
    /// A device directory was seen incomplete, or watch events were lost:
    /// look again at the next [`Lifecycle::maintenance`].
    rescan: bool,
    /// Backend directories to remove, and when.
    pending_rm: Vec<(String, Nanos)>,
    next_id: u32,
}

impl Lifecycle {
    /// The lifecycle of devices under `backend/<kind>` (`kind` is also the
    /// watch token prefix).
    pub fn new(kind: &'static str) -> Self {
        Lifecycle { kind, devices: Vec::new(), retired: Vec::new(), rescan: false, pending_rm: Vec::new(), next_id: 1 }
    }

    /// The kind's name, which every watch token of ours starts with.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The adopted devices, oldest first.
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// Backend directories due for removal, with their deadlines.
    pub fn pending_removals(&self) -> &[(String, Nanos)] {
        &self.pending_rm
    }

    fn list_path(&self) -> String {
        format!("backend/{}", self.kind)
    }

    /// Starts watching for devices assigned to us.
    pub fn start<M: SharedMem, N: Notifier>(&mut self, xs: &mut XsClient<M, N>) -> Result<(), XsError> {
        let (path, token) = (self.list_path(), format!("{}-list", self.kind));
        xs.watch(&path, &token)
    }

    /// Asks for a rescan at the next maintenance (call it when the xenstore
    /// client dropped watch events).
    pub fn request_rescan(&mut self) {
        self.rescan = true;
    }

    /// Periodic work: removes the directories of closed devices whose delay
    /// has passed by `now`, and rescans if an earlier look found a device
    /// incomplete or watch events were lost. Returns whether it rescanned.
    pub fn maintenance<M: SharedMem, N: Notifier, K: DeviceKind>(
        &mut self,
        xs: &mut XsClient<M, N>,
        now: Nanos,
        kind: &mut K,
    ) -> bool {
        let due: Vec<String> = self.pending_rm.iter().filter(|(_, t)| *t <= now).map(|(be, _)| be.clone()).collect();
        self.pending_rm.retain(|(_, t)| *t > now);
        for be in due {
            match xs.rm(&be) {
                Ok(()) | Err(XsError::Xs(_)) => info!("{} {be}: backend directory removed", self.kind),
                Err(err) => warn!("{} {be}: cannot remove the backend directory: {err:?}", self.kind),
            }
        }
        if !core::mem::replace(&mut self.rescan, false) {
            return false;
        }
        self.scan(xs, kind);
        true
    }

    /// Handles a watch event whose token starts with [`kind`](Self::kind).
    pub fn on_watch<M: SharedMem, N: Notifier, K: DeviceKind>(
        &mut self,
        xs: &mut XsClient<M, N>,
        token: &str,
        kind: &mut K,
    ) {
        let Some(rest) = token.strip_prefix(self.kind) else { return };
        if rest == "-list" {
            self.scan(xs, kind);
        } else if let Some(be) = rest.strip_prefix("-fe:") {
            let Some(i) = self.find(be) else { return };
            let fe_state = format!("{}/state", self.devices[i].fe);
            let ev = match xs.read_string(&fe_state) {
                Ok(s) => {
                    self.devices[i].fe_seen = true;
                    match XenbusState::parse(s.trim()) {
                        Some(st) => DeviceEvent::FrontendState(st),
                        None => DeviceEvent::FrontendStateInvalid,
                    }
                }
                // Not written yet: the toolstack is still creating it.
                Err(XsError::Xs(_)) if !self.devices[i].fe_seen => return,
                Err(XsError::Xs(_)) => DeviceEvent::FrontendGone,
                Err(err) => {
                    warn!("{} {be}: reading {fe_state}: {err:?}", self.kind);
                    return;
                }
            };
            self.feed(xs, kind, i, ev);
        } else if let Some(be) = rest.strip_prefix("-online:") {
            let Some(i) = self.find(be) else { return };
            match xs.read_string(&format!("{be}/online")) {
                Ok(s) if s.trim() == "0" => self.feed(xs, kind, i, DeviceEvent::Offline),
                Ok(_) => {}
                Err(_) => self.feed(xs, kind, i, DeviceEvent::FrontendGone),
            }
        }
    }

    fn find(&self, be: &str) -> Option<usize> {
        self.devices.iter().position(|v| v.be == be)
    }

    /// Looks for new and vanished device directories.
    fn scan<M: SharedMem, N: Notifier, K: DeviceKind>(&mut self, xs: &mut XsClient<M, N>, kind: &mut K) {
        let mut present = Vec::new();
        let what = self.kind;
        // Only ENOENT means absent: on any other error (a timeout, EIO) we
        // cannot tell, and must not take every device for removed.
        let list = |xs: &mut XsClient<M, N>, path: &str| match xs.directory(path) {
            Ok(d) => Ok(d),
            Err(XsError::Xs(XsErrno::NoEnt)) => Ok(Vec::new()),
            Err(err) => {
                warn!("listing {path}: {err:?}; {what} scan skipped");
                Err(err)
            }
        };
        let root = self.list_path();
        let Ok(doms) = list(xs, &root) else { return };
        for dom in doms.iter().take(MAX_DOMS) {
            let Ok(devs) = list(xs, &format!("{root}/{dom}")) else { return };
            for dev in devs.iter().take(MAX_DEVS_PER_DOM) {
                present.push(format!("{root}/{dom}/{dev}"));
            }
        }
        // Vanished: the toolstack removed the directory (domain destroyed).
        let gone: Vec<String> =
            self.devices.iter().filter(|v| !present.contains(&v.be)).map(|v| v.be.clone()).collect();
        for be in gone {
            if let Some(i) = self.find(&be) {
                self.devices[i].gone = true;
                self.feed(xs, kind, i, DeviceEvent::FrontendGone);
            }
        }
        // Forget retired directories the toolstack removed; one it
        // re-created for a new device starts over at Initialising.
        self.retired.retain(|be| present.contains(be));
        for be in present {
            if let Some(k) = self.retired.iter().position(|r| *r == be) {
                match xs.read_string(&format!("{be}/state")) {
                    Ok(s) if XenbusState::parse(s.trim()) == Some(XenbusState::Initialising) => {
                        self.retired.swap_remove(k);
                    }
                    _ => continue,
                }
            }
            if self.find(&be).is_none() {
                self.add(xs, kind, &be);
            }
        }
    }

    /// Adopts the device at `be` if the toolstack finished writing it.
    fn add<M: SharedMem, N: Notifier, K: DeviceKind>(&mut self, xs: &mut XsClient<M, N>, kind: &mut K, be: &str) {
        let fe = match xs.read_string(&format!("{be}/frontend")) {
            Ok(s) => s,
            Err(_) => {
                self.rescan = true; // not fully written yet: look again later
                return;
            }
        };
        let fe_dom = match xs.read_string(&format!("{be}/frontend-id")).ok().and_then(|s| s.trim().parse::<u16>().ok())
        {
            Some(d) => DomId(d),
            None => {
                self.rescan = true;
                return;
            }
        };
        // A device being torn down (online 0, or Closing/Closed) is not
        // adopted again: libxl is waiting for it to go away.
        let online = xs.read_string(&format!("{be}/online")).unwrap_or_default();
        let state = xs.read_string(&format!("{be}/state")).unwrap_or_default();
        if online.trim() == "0" || matches!(state.trim(), "5" | "6") {
            return;
        }
        if xs.read(&format!("{be}/state")).is_err() || xs.read(&format!("{fe}/state")).is_err() {
            // Not fully written yet (our writes need our `state`; the
            // frontend's must exist before its absence can mean anything).
            self.rescan = true;
            return;
        }
        let params = xs.read_string(&format!("{be}/params")).unwrap_or_default();
        let id = self.next_id;
        self.next_id += 1;
        info!("{} {be}: new device for domain {fe_dom} (frontend {fe}, params {params:?})", self.kind);
        self.devices.push(Device { id, be: String::from(be), fe: fe.clone(), fe_dom, gone: false, fe_seen: false });
        let i = self.devices.len() - 1;
        for (path, token) in [
            (format!("{fe}/state"), format!("{}-fe:{be}", self.kind)),
            (format!("{be}/online"), format!("{}-online:{be}", self.kind)),
        ] {
            if let Err(err) = xs.watch(&path, &token) {
                warn!("{} {be}: cannot watch {path}: {err:?}", self.kind);
            }
        }
        // What dom0's hotplug script would write: the device is open.
        for (key, value) in kind.hotplug_nodes() {
            match write_existing(xs, be, key, &value) {
                Ok(true) => {}
                Ok(false) => self.devices[i].gone = true,
                Err(err) => warn!("{} {be}: writing {key}: {err:?}", self.kind),
            }
        }
        self.feed(xs, kind, i, DeviceEvent::Added);
    }

    /// Hands `ev` for device `i` to the kind, and retires the device if the
    /// kind finished it.
    fn feed<M: SharedMem, N: Notifier, K: DeviceKind>(
        &mut self,
        xs: &mut XsClient<M, N>,
        kind: &mut K,
        i: usize,
        ev: DeviceEvent,
    ) {
        let Some(dev) = self.devices.get_mut(i) else { return };
        let outcome = kind.event(&mut DeviceXs { xs: &mut *xs, dev, kind: self.kind }, ev);
        let Outcome::Removed { at } = outcome else { return };
        let v = self.devices.remove(i);
        let be = v.be;
        let _ = xs.unwatch(&format!("{}/state", v.fe), &format!("{}-fe:{be}", self.kind));
        let _ = xs.unwatch(&format!("{be}/online"), &format!("{}-online:{be}", self.kind));
        if v.gone {
            info!("{} {be}: removed", self.kind);
            return;
        }
        // A driver domain removes its own backend directory once the device
        // is closed (xl devd does it for a Linux one); libxl waits for that
        // before it calls a detach or a domain destruction done. It first
        // waits to read state 6, so the directory goes a little later (see
        // `maintenance`).
        info!("{} {be}: closed; backend directory removed in {} ms", self.kind, RM_DELAY_NS / 1_000_000);
        self.pending_rm.push((be.clone(), at.saturating_add(RM_DELAY_NS)));
        // Until then (and if removing fails): not probed again.
        self.retired.push(be);
    }
}
