//! The vif backend's xenbus handshake as a pure state machine, and the
//! frontend's keys parsed into what a connect needs.
//!
//! Modelled on `io/netif.h`'s node list and Linux netback's `xenbus.c`
//! (`netback_probe`, `frontend_changed`, `connect`, `read_xenbus_vif_flags`,
//! `connect_data_rings`). Linux netfront goes Initialising -> Connected
//! (it never writes Initialised, but either starts the connect):
//!
//! ```text
//!  Initialising --Probe--> (features) InitWait
//!  InitWait --frontend Initialised/Connected--> ReadFrontendKeys
//!      --keys ok--> Connect --ok--> Connected
//!  frontend Closing -> Disconnect, Closing; frontend Closed -> Closed
//!  Closed --frontend Initialising--> InitWait (reconnect)
//!  online = 0 -> Closing (or, with the frontend closed, Closed + Remove)
//!  frontend gone -> Disconnect, Closed, Remove
//!  bad keys / failed connect -> Disconnect, error node, Closing
//! ```
//!
//! Shell contract: carry out effects in order; if `Connect` fails, drop the
//! rest of the batch and feed [`Event::ConnectFailed`].

use crate::EvtchnPort;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use xen_backend::{parse_u32, XenbusState};

/// Queues (ring pairs) we accept at most.
pub const MAX_QUEUES: u32 = 16;

/// What the frontend can take on its receive side (what we may send it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxFeatures {
    /// `feature-sg`: packets over several rx slots.
    pub sg: bool,
    /// `feature-gso-tcpv4`.
    pub gso_v4: bool,
    /// `feature-gso-tcpv6`.
    pub gso_v6: bool,
    /// Not `feature-no-csum-offload`: IPv4 partial checksums accepted.
    pub csum_v4: bool,
    /// `feature-ipv6-csum-offload`.
    pub csum_v6: bool,
    /// `feature-rx-notify` (we never wait for rx requests, so unused).
    pub rx_notify: bool,
}

/// One queue's rings and event channels as the frontend wrote them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueKeys {
    /// `tx-ring-ref`.
    pub tx_ref: u32,
    /// `rx-ring-ref`.
    pub rx_ref: u32,
    /// `event-channel-tx` (or the shared `event-channel`).
    pub tx_evtchn: EvtchnPort,
    /// `event-channel-rx` (equal to `tx_evtchn` when shared).
    pub rx_evtchn: EvtchnPort,
}

impl QueueKeys {
    /// Whether the queue has separate tx and rx event channels.
    pub fn split(&self) -> bool {
        self.tx_evtchn != self.rx_evtchn
    }
}

/// The control ring, if the frontend set one up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtrlKeys {
    /// `ctrl-ring-ref`.
    pub ring_ref: u32,
    /// `event-channel-ctrl`.
    pub evtchn: EvtchnPort,
}

/// What a connect needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectParams {
    /// The queues, in order.
    pub queues: Vec<QueueKeys>,
    /// What we may send the frontend.
    pub rx: RxFeatures,
    /// The control ring (`feature-ctrl-ring`), if any.
    pub ctrl: Option<CtrlKeys>,
}

/// Why the frontend's keys are refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyError {
    /// `request-rx-copy` missing or not 1 (page flipping is not offered).
    NoRxCopy,
    /// `multi-queue-num-queues` is 0 or above what we offered.
    BadQueueCount(String),
    /// A ring reference or event channel missing or not a number.
    Missing(String),
}

impl core::fmt::Display for KeyError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            KeyError::NoRxCopy => write!(f, "frontend does not request rx-copy (request-rx-copy must be 1)"),
            KeyError::BadQueueCount(v) => write!(f, "bad multi-queue-num-queues {v:?}"),
            KeyError::Missing(k) => write!(f, "reading {k}: missing or not a number"),
        }
    }
}

fn flag(read: &mut impl FnMut(&str) -> Option<String>, key: &str) -> bool {
    read(key).and_then(|v| parse_u32(v.trim())).is_some_and(|v| v != 0)
}

/// Reads the frontend's keys through `read` (a path relative to the
/// frontend directory; `None` if absent), for at most `max_queues` queues.
pub fn read_keys(max_queues: u32, mut read: impl FnMut(&str) -> Option<String>) -> Result<ConnectParams, KeyError> {
    if read("request-rx-copy").and_then(|v| parse_u32(v.trim())) != Some(1) {
        return Err(KeyError::NoRxCopy);
    }
    let rx = RxFeatures {
        sg: flag(&mut read, "feature-sg"),
        gso_v4: flag(&mut read, "feature-gso-tcpv4"),
        gso_v6: flag(&mut read, "feature-gso-tcpv6"),
        csum_v4: !flag(&mut read, "feature-no-csum-offload"),
        csum_v6: flag(&mut read, "feature-ipv6-csum-offload"),
        rx_notify: flag(&mut read, "feature-rx-notify"),
    };
    let nq = match read("multi-queue-num-queues") {
        None => 1,
        Some(v) => match parse_u32(v.trim()) {
            Some(n) if n >= 1 && n <= max_queues => n,
            _ => return Err(KeyError::BadQueueCount(v.chars().take(16).collect())),
        },
    };
    let mut queues = Vec::new();
    for q in 0..nq {
        // One queue: keys at the top of the frontend directory.
        let dir = if nq == 1 { String::new() } else { format!("queue-{q}/") };
        let mut num = |k: &str| {
            let key = format!("{dir}{k}");
            read(&key).and_then(|v| parse_u32(v.trim())).ok_or(KeyError::Missing(key))
        };
        let tx_ref = num("tx-ring-ref")?;
        let rx_ref = num("rx-ring-ref")?;
        let (tx_evtchn, rx_evtchn) = match num("event-channel") {
            Ok(p) => (p, p),
            Err(_) => (num("event-channel-tx")?, num("event-channel-rx")?),
        };
        queues.push(QueueKeys { tx_ref, rx_ref, tx_evtchn: EvtchnPort(tx_evtchn), rx_evtchn: EvtchnPort(rx_evtchn) });
    }
    let ctrl = match read("ctrl-ring-ref") {
        None => None,
        Some(r) => {
            let ring_ref = parse_u32(r.trim()).ok_or(KeyError::Missing("ctrl-ring-ref".into()))?;
            let ev = read("event-channel-ctrl").and_then(|v| parse_u32(v.trim()));
            let evtchn = EvtchnPort(ev.ok_or(KeyError::Missing("event-channel-ctrl".into()))?);
            Some(CtrlKeys { ring_ref, evtchn })
        }
    };
    Ok(ConnectParams { queues, rx, ctrl })
}

/// What the shell observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The device was adopted (hotplug nodes written).
    Probe,
    /// The frontend's state node changed.
    FrontendStateChanged(XenbusState),
    /// The frontend's state node is unparsable.
    FrontendStateInvalid,
    /// The frontend's keys, as read after [`Effect::ReadFrontendKeys`].
    FrontendKeys(Result<ConnectParams, KeyError>),
    /// [`Effect::Connect`] failed (why).
    ConnectFailed(String),
    /// The toolstack wants the device detached (`online` = 0).
    Offline,
    /// The frontend or our directory vanished.
    FrontendGone,
}

/// What the shell must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Write a node of our backend directory.
    Write {
        /// Key.
        key: &'static str,
        /// Value.
        value: String,
    },
    /// Write our `state`.
    SwitchState(XenbusState),
    /// Read the frontend's keys and feed [`Event::FrontendKeys`].
    ReadFrontendKeys,
    /// Map the rings and bind the event channels.
    Connect(ConnectParams),
    /// Release every ring mapping and event channel.
    Disconnect,
    /// Write the `error` node (and log within the vif's budget).
    WriteError(String),
    /// The device is finished: forget it.
    Remove,
}

/// The handshake of one vif.
#[derive(Clone, Debug)]
pub struct VifFsm {
    /// Our state.
    pub state: XenbusState,
    max_queues: u32,
    connected: bool,
    awaiting_keys: bool,
    detaching: bool,
    frontend: XenbusState,
}

impl VifFsm {
    /// A new vif offering `max_queues` queues.
    pub fn new(max_queues: u32) -> Self {
        VifFsm {
            state: XenbusState::Initialising,
            max_queues,
            connected: false,
            awaiting_keys: false,
            detaching: false,
            frontend: XenbusState::Unknown,
        }
    }

    /// Whether the rings are mapped.
    pub fn connected(&self) -> bool {
        self.connected
    }

    /// The features we publish at probe (Linux `netback_probe`).
    pub fn features(max_queues: u32) -> Vec<(&'static str, String)> {
        let one = || "1".to_string();
        alloc::vec![
            ("feature-sg", one()),
            ("feature-gso-tcpv4", one()),
            ("feature-gso-tcpv6", one()),
            ("feature-ipv6-csum-offload", one()),
            ("feature-rx-copy", one()),
            ("feature-rx-flip", "0".to_string()),
            ("feature-split-event-channels", one()),
            ("multi-queue-max-queues", max_queues.to_string()),
            ("feature-ctrl-ring", one()),
        ]
    }

    /// One step.
    pub fn step(&mut self, ev: Event) -> Vec<Effect> {
        let mut fx = Vec::new();
        match ev {
            Event::Probe => {
                if self.state == XenbusState::Initialising {
                    for (key, value) in Self::features(self.max_queues) {
                        fx.push(Effect::Write { key, value });
                    }
                    self.switch(&mut fx, XenbusState::InitWait);
                    // A frontend that was quicker than us.
                    if matches!(self.frontend, XenbusState::Initialised | XenbusState::Connected) {
                        self.start_connect(&mut fx);
                    }
                }
            }
            Event::FrontendStateChanged(s) => {
                self.frontend = s;
                self.frontend_changed(&mut fx, s);
            }
            Event::FrontendStateInvalid => self.fatal(&mut fx, "frontend state node is not a xenbus state".into()),
            Event::FrontendKeys(keys) => {
                if core::mem::replace(&mut self.awaiting_keys, false) && !self.detaching {
                    match keys {
                        Ok(p) => {
                            self.connected = true;
                            fx.push(Effect::Connect(p));
                            self.switch(&mut fx, XenbusState::Connected);
                        }
                        Err(e) => self.fatal(&mut fx, e.to_string()),
                    }
                }
            }
            Event::ConnectFailed(why) => {
                if self.connected {
                    self.connected = false; // the shell released what it had
                    self.fatal(&mut fx, why);
                }
            }
            Event::Offline => {
                self.detaching = true;
                self.awaiting_keys = false;
                if matches!(self.frontend, XenbusState::Closed | XenbusState::Unknown) {
                    self.disconnect(&mut fx);
                    self.switch(&mut fx, XenbusState::Closed);
                    fx.push(Effect::Remove);
                } else {
                    self.switch(&mut fx, XenbusState::Closing);
                }
            }
            Event::FrontendGone => {
                self.frontend = XenbusState::Unknown;
                self.awaiting_keys = false;
                self.disconnect(&mut fx);
                self.switch(&mut fx, XenbusState::Closed);
                fx.push(Effect::Remove);
            }
        }
        fx
    }

    fn frontend_changed(&mut self, fx: &mut Vec<Effect>, s: XenbusState) {
        use XenbusState::*;
        match s {
            Initialising => {
                if self.state == Closed && !self.detaching {
                    self.switch(fx, InitWait);
                }
            }
            Initialised | Connected => {
                if self.state == InitWait && !self.detaching && !self.connected {
                    self.start_connect(fx);
                }
            }
            InitWait => {}
            Closing => {
                self.disconnect(fx);
                self.switch(fx, Closing);
            }
            Closed => {
                self.awaiting_keys = false;
                self.disconnect(fx);
                self.switch(fx, Closed);
                if self.detaching {
                    fx.push(Effect::Remove);
                }
            }
            Unknown => {
                self.awaiting_keys = false;
                self.disconnect(fx);
                self.switch(fx, Closed);
                fx.push(Effect::Remove);
            }
            Reconfiguring | Reconfigured => self.fatal(fx, format!("unexpected frontend state {}", s.to_u32())),
        }
    }

    fn start_connect(&mut self, fx: &mut Vec<Effect>) {
        if !self.awaiting_keys {
            self.awaiting_keys = true;
            fx.push(Effect::ReadFrontendKeys);
        }
    }

    fn fatal(&mut self, fx: &mut Vec<Effect>, why: String) {
        self.awaiting_keys = false;
        self.disconnect(fx);
        fx.push(Effect::WriteError(why));
        self.switch(fx, XenbusState::Closing);
    }

    fn disconnect(&mut self, fx: &mut Vec<Effect>) {
        if core::mem::replace(&mut self.connected, false) {
            fx.push(Effect::Disconnect);
        }
    }

    fn switch(&mut self, fx: &mut Vec<Effect>, s: XenbusState) {
        if self.state != s {
            self.state = s;
            fx.push(Effect::SwitchState(s));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeMap;

    fn reader(kv: &[(&str, &str)]) -> impl FnMut(&str) -> Option<String> {
        let m: BTreeMap<String, String> = kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn keys_single_split_and_multi() {
        let p = read_keys(
            4,
            reader(&[
                ("request-rx-copy", "1"),
                ("feature-sg", "1"),
                ("feature-no-csum-offload", "1"),
                ("tx-ring-ref", "8"),
                ("rx-ring-ref", "9"),
                ("event-channel", "5"),
            ]),
        )
        .unwrap();
        assert_eq!(p.queues.len(), 1);
        assert!(!p.queues[0].split());
        assert!(p.rx.sg && !p.rx.csum_v4 && !p.rx.gso_v4);
        let p = read_keys(
            4,
            reader(&[
                ("request-rx-copy", "1"),
                ("multi-queue-num-queues", "2"),
                ("queue-0/tx-ring-ref", "1"),
                ("queue-0/rx-ring-ref", "2"),
                ("queue-0/event-channel-tx", "3"),
                ("queue-0/event-channel-rx", "4"),
                ("queue-1/tx-ring-ref", "5"),
                ("queue-1/rx-ring-ref", "6"),
                ("queue-1/event-channel", "7"),
            ]),
        )
        .unwrap();
        assert!(p.queues[0].split() && !p.queues[1].split());
        assert!(p.rx.csum_v4);
    }

    #[test]
    fn keys_refused() {
        assert_eq!(read_keys(4, reader(&[])), Err(KeyError::NoRxCopy));
        assert_eq!(read_keys(4, reader(&[("request-rx-copy", "0")])), Err(KeyError::NoRxCopy));
        let bad = read_keys(4, reader(&[("request-rx-copy", "1"), ("multi-queue-num-queues", "5")]));
        assert!(matches!(bad, Err(KeyError::BadQueueCount(_))));
        let bad = read_keys(4, reader(&[("request-rx-copy", "1"), ("tx-ring-ref", "1"), ("rx-ring-ref", "x")]));
        assert_eq!(bad, Err(KeyError::Missing("rx-ring-ref".into())));
        let bad = read_keys(4, reader(&[("request-rx-copy", "1"), ("tx-ring-ref", "1"), ("rx-ring-ref", "2")]));
        assert_eq!(bad, Err(KeyError::Missing("event-channel-tx".into())));
    }

    #[test]
    fn netfront_sequence() {
        let mut f = VifFsm::new(4);
        let fx = f.step(Event::Probe);
        assert_eq!(fx.last(), Some(&Effect::SwitchState(XenbusState::InitWait)));
        assert_eq!(f.step(Event::FrontendStateChanged(XenbusState::Connected)), [Effect::ReadFrontendKeys]);
        let p = ConnectParams { queues: alloc::vec![], rx: RxFeatures::default(), ctrl: None };
        let fx = f.step(Event::FrontendKeys(Ok(p.clone())));
        assert_eq!(fx, [Effect::Connect(p), Effect::SwitchState(XenbusState::Connected)]);
        // A second Connected event: nothing.
        assert!(f.step(Event::FrontendStateChanged(XenbusState::Connected)).is_empty());
        let fx = f.step(Event::FrontendStateChanged(XenbusState::Closing));
        assert_eq!(fx, [Effect::Disconnect, Effect::SwitchState(XenbusState::Closing)]);
        let fx = f.step(Event::FrontendStateChanged(XenbusState::Closed));
        assert_eq!(fx, [Effect::SwitchState(XenbusState::Closed)]);
        // Reconnect.
        let fx = f.step(Event::FrontendStateChanged(XenbusState::Initialising));
        assert_eq!(fx, [Effect::SwitchState(XenbusState::InitWait)]);
        let fx = f.step(Event::Offline);
        assert_eq!(fx, [Effect::SwitchState(XenbusState::Closing)]);
        let fx = f.step(Event::FrontendStateChanged(XenbusState::Closed));
        assert_eq!(fx, [Effect::SwitchState(XenbusState::Closed), Effect::Remove]);
    }

    #[test]
    fn bad_keys_and_failed_connect_close() {
        let mut f = VifFsm::new(4);
        f.step(Event::Probe);
        f.step(Event::FrontendStateChanged(XenbusState::Connected));
        let fx = f.step(Event::FrontendKeys(Err(KeyError::NoRxCopy)));
        assert!(matches!(fx[0], Effect::WriteError(_)));
        assert_eq!(f.state, XenbusState::Closing);
        let mut f = VifFsm::new(4);
        f.step(Event::Probe);
        f.step(Event::FrontendStateChanged(XenbusState::Initialised));
        f.step(Event::FrontendKeys(Ok(ConnectParams { queues: alloc::vec![], rx: RxFeatures::default(), ctrl: None })));
        let fx = f.step(Event::ConnectFailed("no".into()));
        assert_eq!(fx, [Effect::WriteError("no".into()), Effect::SwitchState(XenbusState::Closing)]);
        assert!(!f.connected());
    }
}
