//! The world of a test: the fake xenstore and hubs, the real backend, the
//! frontends, and the main loop that drives them.

use super::disk::TestDisk;
use super::{init_log, seg_bytes, Buf, Frontend, Opts, Req, BE, DEV, SECT};
use crate::abi::{Abi, Response, BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_RSP_OKAY};
use crate::xenbus::BackendConfig;
use crate::{Blkback, WATCH_PREFIX};
use block::{Registry, Shared, View};
use core::cell::{Cell, Ref, RefCell, RefMut};
use drivers::block::Volumes;
use std::boxed::Box;
use std::format;
use std::rc::Rc;
use std::string::{String, ToString};
use std::sync::Arc;
use std::vec;
use std::vec::Vec;
use xen::evtchn::fake::FakeEvents;
use xen::evtchn::EventOps;
use xen::gnttab::fake::FakeGrants;
use xen::shmem::VecShared;
use xen::types::DomId;
use xen::xenstore::fake::{FakePage, FakeXenstored};
use xen::xenstore::{Perm, PermKind, XsClient};

/// Xenstore, the grant and event hubs, the backend, the frontends.
pub struct World<D: Volumes<Buffer = Buf>> {
    /// The xenstore daemon (the toolstack writes through it).
    pub xsd: FakeXenstored,
    /// The backend's xenstore client.
    pub xs: XsClient<FakePage, FakeXenstored>,
    /// The backend domain's grants.
    pub g: FakeGrants,
    /// The backend domain's event channels.
    pub e: FakeEvents,
    /// The backend under test.
    pub blk: Blkback<Arc<VecShared>, TestDisk<D>>,
    /// The frontend domains.
    pub fronts: Vec<Frontend>,
    /// The disks the opener looks targets up in: device 0 is the test's
    /// disk, namespace `nvme0n1` (one writer or many readers, like the
    /// product). The target [`SHARED`] is a writable view of all of device
    /// 0 for every vbd that asks (tests of several guests on one disk).
    pub reg: Rc<RefCell<Registry<D>>>,
    /// Device 0.
    pub dev0: Rc<RefCell<Shared<D>>>,
    /// Whether disks opened from now on report a volatile write cache
    /// (default: yes, so flush and barrier are offered).
    pub volatile_cache: Rc<Cell<bool>>,
    /// Whether the views the opener makes refuse writes on a read-only vbd
    /// (default: yes, like `block::Registry`). Off: a lax disk layer that
    /// would write, so a test sees blkback's own refusal.
    pub view_enforces_readonly: Rc<Cell<bool>>,
    /// Every open request the backend made: (params, readonly, holder).
    pub opens: Rc<RefCell<Vec<(String, bool, String)>>>,
}

/// The target of [`World::attach`]: a writable view of all of device 0,
/// shared by every vbd.
pub const SHARED: &str = "test:shared";

/// A world with frontend domains `fe_doms`, watching for vbds.
pub fn world<D: Volumes<Buffer = Buf> + 'static>(disk: D, cfg: BackendConfig, fe_doms: &[u16]) -> World<D> {
    world_with(|_| disk, cfg, fe_doms)
}

/// `make` gets a handle on the event hub's clock (a spare domain).
pub fn world_with<D: Volumes<Buffer = Buf> + 'static>(
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
    let fronts = fe_doms.iter().zip(gs.zip(es)).map(|(&d, (g, e))| Frontend::new(DomId(d), g, e)).collect();
    let xsd = FakeXenstored::new(BE);
    let mut xs = xsd.client(1_000_000_000).with_event_capacity(1 << 16);
    let frames = g.frame_alloc();
    let mut reg = Registry::new();
    let d0 = reg.add_device(disk);
    assert!(reg.add_namespace("nvme0n1", d0, 0, "test disk", "0"));
    let dev0 = reg.device(d0).expect("device 0").clone();
    let reg = Rc::new(RefCell::new(reg));
    let volatile_cache = Rc::new(Cell::new(true));
    let opens = Rc::new(RefCell::new(Vec::new()));
    let view_enforces_readonly = Rc::new(Cell::new(true));
    let (r, d, vc, log) = (reg.clone(), dev0.clone(), volatile_cache.clone(), opens.clone());
    let strict = view_enforces_readonly.clone();
    let open = move |o: &crate::OpenRequest<'_>| {
        log.borrow_mut().push((o.params.to_string(), o.readonly, o.holder.to_string()));
        let view = if o.params == SHARED {
            let blocks = d.borrow().device().capacity();
            let ro = o.readonly && strict.get();
            View::new(&d, 0, block::Extent::new(0, blocks), ro).ok_or_else(|| "no view".to_string())?
        } else {
            r.borrow_mut().open(o.params, o.readonly, o.holder, |_| None).map_err(|e| e.to_string())?
        };
        Ok(TestDisk { view, cache: vc.get() })
    };
    let mut blk = Blkback::new(Box::new(open), cfg, move |n| Some(frames.alloc(n)));
    blk.start(&mut xs).expect("watch backend/vbd");
    let mut w = World { xsd, xs, g, e, blk, fronts, reg, dev0, volatile_cache, view_enforces_readonly, opens };
    assert!(w.pump());
    w
}
impl<D: Volumes<Buffer = Buf>> World<D> {
    /// Device 0, the test's disk.
    pub fn disk(&self) -> Ref<'_, D> {
        Ref::map(self.dev0.borrow(), |s| s.device())
    }

    /// Device 0, mutably.
    pub fn disk_mut(&self) -> RefMut<'_, D> {
        RefMut::map(self.dev0.borrow_mut(), |s| s.device_mut())
    }

    /// The main loop until idle: watch events to `on_watch`, then `poll`.
    /// Returns `false` if the backend was still busy after many rounds.
    /// Panics on a watch storm (the backend re-triggering itself).
    pub fn pump(&mut self) -> bool {
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

    /// A xenstore value as text.
    pub fn value(&self, path: &str) -> Option<String> {
        self.xsd.value(path).map(|v| String::from_utf8(v).expect("utf8 node"))
    }

    /// A node of frontend `fi`'s backend directory.
    pub fn be(&self, fi: usize, key: &str) -> Option<String> {
        self.value(&format!("{}/{key}", self.fronts[fi].be_dir()))
    }

    /// The backend state node of frontend `fi`'s vbd.
    pub fn be_state(&self, fi: usize) -> Option<String> {
        self.be(fi, "state")
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

    /// The toolstack creates the vbd (libxl's device_add): backend and
    /// frontend directories, each owned by its domain and readable by the
    /// other.
    pub fn attach(&mut self, fi: usize) {
        self.attach_nodes(fi);
        assert!(self.pump());
        assert_eq!(self.be_state(fi).as_deref(), Some("2"), "backend waits for the frontend (InitWait)");
    }

    /// The toolstack's writes of [`attach`](Self::attach), without running
    /// the backend or checking anything.
    pub fn attach_nodes(&mut self, fi: usize) {
        self.attach_nodes_with(fi, SHARED, Some("w"));
    }

    /// The toolstack's writes for a vbd of target `params`, `mode` (none
    /// if `None`), without running the backend.
    pub fn attach_nodes_with(&mut self, fi: usize, params: &str, mode: Option<&str>) {
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
            ("params", params.into()),
            ("online", "1".into()),
            ("removable", "0".into()),
            ("state", "1".into()),
        ] {
            self.xsd.external_write(&format!("{be}/{k}"), v.as_bytes());
        }
        if let Some(m) = mode {
            self.xsd.external_write(&format!("{be}/mode"), m.as_bytes());
        }
    }

    /// blkfront's talk_to_blkback: rings, keys, Initialised; then the
    /// backend connects and the frontend goes Connected.
    pub fn connect(&mut self, fi: usize, o: Opts) {
        self.connect_initialised(fi, o);
        assert_eq!(self.be_state(fi).as_deref(), Some("4"), "backend Connected");
        self.fe_state(fi, 4);
        assert_eq!(self.be_state(fi).as_deref(), Some("4"));
    }

    /// Rings, keys, Initialised (the backend then connects).
    pub fn connect_initialised(&mut self, fi: usize, o: Opts) {
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
    pub fn io(&mut self, fi: usize, q: usize, reqs: &[Req]) -> Vec<Response> {
        for r in reqs {
            self.fronts[fi].push(q, r);
        }
        self.fronts[fi].publish(q);
        self.collect(fi, q, reqs.len())
    }

    /// Runs both sides until `n` answers came on ring `q` of frontend `fi`.
    pub fn collect(&mut self, fi: usize, q: usize, n: usize) -> Vec<Response> {
        let mut out = Vec::new();
        for _ in 0..50 {
            self.pump();
            let f = &mut self.fronts[fi];
            if f.e.take_pending(f.rings[q].port) {
                out.extend(f.take_responses(q));
            }
            f.rings[q].ring.check_frontend_fields();
            if out.len() >= n {
                break;
            }
        }
        assert_eq!(out.len(), n, "responses missing (lost notification or request dropped): {out:?}");
        out
    }

    /// Requests of several sizes through ring `q`, checked against a model.
    pub fn write_read_back(&mut self, fi: usize, q: usize, base: u64, seed: u32) {
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
