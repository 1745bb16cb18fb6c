//! The world of a test: the fake xenstore and hubs, the real backend, the
//! netfronts, and the main loop that drives them.

use super::{init_log, FrontOpts, Netfront, RxPacket, TxPkt, BE};
use crate::abi::TxResponse;
use crate::{Drop, NetConfig, Netback, VifId, VifInfo, WATCH_PREFIX};
use net::Frame;
use std::format;
use std::string::{String, ToString};
use std::sync::Arc;
use std::vec;
use std::vec::Vec;
use xen::evtchn::fake::FakeEvents;
use xen::evtchn::EventOps;
use xen::gnttab::fake::{FakeGrants, FrameBuf};
use xen::gnttab::LocalFrames;
use xen::shmem::VecShared;
use xen::types::{DomId, Pfn};
use xen::xenstore::fake::{FakePage, FakeXenstored};
use xen::xenstore::{Perm, PermKind, XsClient};

/// Xenstore, the hubs, the backend, the netfronts.
pub struct World {
    /// The xenstore daemon.
    pub xsd: FakeXenstored,
    /// The backend's xenstore client.
    pub xs: XsClient<FakePage, FakeXenstored>,
    /// The backend domain's grants.
    pub g: FakeGrants,
    /// The backend domain's event channels.
    pub e: FakeEvents,
    /// The backend under test.
    pub nb: Netback<Arc<VecShared>, TestBuf>,
    /// The frontend domains.
    pub fronts: Vec<Netfront>,
    /// Frames the backend took from the guests, in order.
    pub got: Vec<(VifId, Frame)>,
    /// Polls of the last [`pump`](Self::pump).
    pub polls: usize,
}

/// The staging buffer of a test backend: frames grant copies can name, or
/// a plain vector (the backend then maps the guest's pages instead).
pub enum TestBuf {
    /// Frames of the backend domain ([`FrameBuf`]).
    Frames(FrameBuf),
    /// No frames: map, copy, unmap.
    Plain(Vec<u8>),
}

impl AsRef<[u8]> for TestBuf {
    fn as_ref(&self) -> &[u8] {
        match self {
            TestBuf::Frames(b) => b.as_ref(),
            TestBuf::Plain(v) => v,
        }
    }
}

impl AsMut<[u8]> for TestBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        match self {
            TestBuf::Frames(b) => b.as_mut(),
            TestBuf::Plain(v) => v,
        }
    }
}

impl LocalFrames for TestBuf {
    fn local_frame(&self, off: usize) -> Option<(Pfn, u16)> {
        match self {
            TestBuf::Frames(b) => b.local_frame(off),
            TestBuf::Plain(_) => None,
        }
    }
    fn sync_for_copy(&mut self) {
        if let TestBuf::Frames(b) = self {
            b.sync_for_copy();
        }
    }
    fn sync_for_cpu(&mut self) {
        if let TestBuf::Frames(b) = self {
            b.sync_for_cpu();
        }
    }
}

/// A world with frontend domains `fe_doms`, watching for vifs; data moves
/// by grant copy.
pub fn world(cfg: NetConfig, fe_doms: &[u16]) -> World {
    world_with(cfg, fe_doms, true)
}

/// Like [`world`]; `grant_copy: false` gives the backend buffers without
/// frames, so data moves by mapping the guest's pages.
pub fn world_with(cfg: NetConfig, fe_doms: &[u16], grant_copy: bool) -> World {
    init_log();
    let mut ids = vec![BE];
    ids.extend(fe_doms.iter().map(|&d| DomId(d)));
    let mut gs = FakeGrants::domains(&ids, 8192).into_iter();
    let mut es = FakeEvents::domains(&ids).into_iter();
    let (g, e) = (gs.next().expect("backend grants"), es.next().expect("backend events"));
    let fronts = fe_doms.iter().zip(gs.zip(es)).map(|(&d, (g, e))| Netfront::new(DomId(d), g, e)).collect();
    let xsd = FakeXenstored::new(BE);
    let mut xs = xsd.client(1_000_000_000).with_event_capacity(1 << 16);
    let frames = g.frame_alloc();
    let mut nb = Netback::new(cfg, move |n| {
        Some(if grant_copy { TestBuf::Frames(frames.alloc(n)) } else { TestBuf::Plain(vec![0; n]) })
    });
    nb.start(&mut xs).expect("watch backend/vif");
    let mut w = World { xsd, xs, g, e, nb, fronts, got: Vec::new(), polls: 0 };
    assert!(w.pump());
    w
}

impl World {
    /// The main loop until idle: watch events to `on_watch`, then `poll`.
    /// `false` if still busy after many rounds.
    pub fn pump(&mut self) -> bool {
        let mut events = 0;
        self.polls = 0;
        for _ in 0..500 {
            let mut got = false;
            while let Some(ev) = self.xs.poll_watch().expect("xenstore client") {
                got = true;
                events += 1;
                assert!(events < 500, "watch storm: {} keeps firing", ev.path);
                if ev.token.starts_with(WATCH_PREFIX) {
                    self.nb.on_watch(&mut self.xs, &mut self.g, &mut self.e, &ev.token);
                }
            }
            self.polls += 1;
            let busy = self.nb.poll(&mut self.g, &mut self.e, &mut self.got);
            if !got && !busy {
                return true;
            }
        }
        false
    }

    /// A xenstore value as text.
    pub fn value(&self, path: &str) -> Option<String> {
        self.xsd.value(path).map(|v| String::from_utf8(v).expect("utf8 node"))
    }

    /// A node of frontend `fi`'s backend directory.
    pub fn be(&self, fi: usize, key: &str) -> Option<String> {
        self.value(&format!("{}/{key}", self.fronts[fi].be_dir()))
    }

    /// Frontend `fi` writes `key` in its directory.
    pub fn fe_write(&mut self, fi: usize, key: &str, val: &str) {
        let p = format!("{}/{key}", self.fronts[fi].fe_dir());
        self.xsd.external_write(&p, val.as_bytes());
    }

    /// Frontend `fi` switches state, then the main loop runs.
    pub fn fe_state(&mut self, fi: usize, s: u32) {
        self.fe_write(fi, "state", &s.to_string());
        assert!(self.pump(), "backend busy after frontend state {s}");
    }

    /// The toolstack creates the vif (libxl's device_add for a vif whose
    /// backend is a driver domain), with `rate` if given.
    pub fn attach(&mut self, fi: usize, rate: Option<&str>) {
        let f = &self.fronts[fi];
        let (be, fe, dom) = (f.be_dir(), f.fe_dir(), f.dom.0);
        let mac = format!("00:16:3e:00:00:{:02x}", dom as u8);
        self.xsd.external_write(&be, b"");
        self.xsd.external_set_perms(&be, &[Perm::new(PermKind::None, BE.0), Perm::new(PermKind::Read, dom)]);
        self.xsd.external_write(&fe, b"");
        self.xsd.external_set_perms(&fe, &[Perm::new(PermKind::None, dom), Perm::new(PermKind::Read, BE.0)]);
        for (k, v) in [
            ("backend", be.clone()),
            ("backend-id", BE.0.to_string()),
            ("state", "1".into()),
            ("handle", "0".into()),
            ("mac", mac.clone()),
        ] {
            self.xsd.external_write(&format!("{fe}/{k}"), v.as_bytes());
        }
        let mut nodes = vec![
            ("frontend", fe.clone()),
            ("frontend-id", dom.to_string()),
            ("online", "1".into()),
            ("state", "1".into()),
            ("script", "/etc/xen/scripts/vif-bridge".into()),
            ("mac", mac),
            ("handle", "0".into()),
            ("type", "vif".into()),
        ];
        if let Some(r) = rate {
            nodes.push(("rate", r.to_string()));
        }
        for (k, v) in nodes {
            self.xsd.external_write(&format!("{be}/{k}"), v.as_bytes());
        }
        assert!(self.pump());
    }

    /// Linux netfront's connect: rings, keys, then Connected.
    pub fn connect(&mut self, fi: usize, o: FrontOpts) {
        let keys = self.fronts[fi].make_queues(&o);
        for k in std::mem::take(&mut self.fronts[fi].keys_written) {
            let p = format!("{}/{k}", self.fronts[fi].fe_dir());
            if self.xsd.value(&p).is_some() {
                self.xsd.external_rm(&p);
            }
        }
        for (k, v) in &keys {
            self.fe_write(fi, k, v);
        }
        self.fronts[fi].keys_written = keys.into_iter().map(|(k, _)| k).collect();
        self.fe_state(fi, 4);
    }

    /// The vif of frontend `fi`.
    pub fn vif(&self, fi: usize) -> VifId {
        self.info(fi).expect("vif of frontend").id
    }

    /// What the backend says of frontend `fi`'s vif.
    pub fn info(&self, fi: usize) -> Option<VifInfo> {
        let dom = self.fronts[fi].dom;
        self.nb.vifs().find(|v| v.fe_dom == dom)
    }

    /// Publishes `slots` on queue `q` of frontend `fi`, runs both sides,
    /// and returns the tx responses (at most `rounds` pumps).
    pub fn send_slots(&mut self, fi: usize, q: usize, slots: &[crate::abi::TxSlot]) -> Vec<TxResponse> {
        self.fronts[fi].push_slots(q, slots);
        self.fronts[fi].publish_tx(q);
        let mut out = Vec::new();
        for _ in 0..20 {
            self.pump();
            out.extend(self.fronts[fi].take_tx(q));
            self.fronts[fi].queues[q].tx.check_frontend_fields();
            if out.len() >= slots.len() {
                break;
            }
        }
        out
    }

    /// Sends `pkt` from frontend `fi` on queue `q`; returns the responses.
    pub fn send(&mut self, fi: usize, q: usize, pkt: &TxPkt) -> Vec<TxResponse> {
        let slots = self.fronts[fi].tx_slots(q, pkt);
        self.send_slots(fi, q, &slots)
    }

    /// Sends a control request from frontend `fi` and returns the answer.
    pub fn ctrl(&mut self, fi: usize, req: crate::abi::CtrlRequest) -> crate::abi::CtrlResponse {
        self.fronts[fi].ctrl_send(&req);
        for _ in 0..10 {
            self.pump();
            if let Some(r) = self.fronts[fi].ctrl_take().pop() {
                return r;
            }
        }
        panic!("no control response (lost notification?)");
    }

    /// Delivers `frame` to frontend `fi`'s vif.
    pub fn deliver(&mut self, fi: usize, frame: &Frame) -> Result<(), Drop> {
        let vif = self.vif(fi);
        self.nb.deliver(&mut self.g, &mut self.e, vif, frame)
    }

    /// Packets frontend `fi` received on all queues.
    pub fn received(&mut self, fi: usize) -> Vec<RxPacket> {
        let n = self.fronts[fi].queues.len();
        (0..n).flat_map(|q| self.fronts[fi].take_rx(q)).collect()
    }

    /// Advances simulated time by `ns` (the backend's clock).
    pub fn advance(&mut self, ns: u64) {
        let now = self.e.now();
        // wait_any on no port times out at the deadline: time jumps there.
        let _ = self.e.wait_any(&[], now + ns);
    }
}
