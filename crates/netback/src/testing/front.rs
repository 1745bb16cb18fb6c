//! The simulated Linux netfront: one frontend domain's grants, event
//! channels, rings and xenstore keys.

use super::{home, BE, DEVID, PAGE};
use crate::abi::*;
use std::collections::{BTreeMap, BTreeSet};
use std::format;
use std::string::{String, ToString};
use std::sync::Arc;
use std::vec::Vec;
use xen::evtchn::fake::FakeEvents;
use xen::evtchn::EventOps;
use xen::gnttab::fake::FakeGrants;
use xen::gnttab::GrantOps;
use xen::shmem::{SharedMem, VecShared};
use xen::types::{DomId, EvtchnPort, GrantRef, Pfn};
use xen_ring::mock::FrontRing;

/// What rx pages hold before the backend writes them (to see stale or
/// stray bytes).
pub const RX_FILL: u8 = 0xaa;

/// How a netfront connects.
#[derive(Clone, Copy, Debug)]
pub struct FrontOpts {
    /// Queues (`multi-queue-num-queues` when above 1).
    pub queues: u32,
    /// Separate tx and rx event channels.
    pub split: bool,
    /// `feature-sg`.
    pub sg: bool,
    /// `feature-gso-tcpv4`.
    pub gso_v4: bool,
    /// `feature-gso-tcpv6`.
    pub gso_v6: bool,
    /// Not `feature-no-csum-offload`.
    pub csum_v4: bool,
    /// `feature-ipv6-csum-offload`.
    pub csum_v6: bool,
    /// `request-rx-copy` value written (`None`: not written).
    pub rx_copy: Option<&'static str>,
    /// Set up a control ring (`ctrl-ring-ref`, `event-channel-ctrl`).
    pub ctrl: bool,
}

impl Default for FrontOpts {
    /// What Linux netfront offers.
    fn default() -> Self {
        FrontOpts {
            queues: 1,
            split: true,
            sg: true,
            gso_v4: true,
            gso_v6: true,
            csum_v4: true,
            csum_v6: true,
            rx_copy: Some("1"),
            ctrl: false,
        }
    }
}

/// A page granted to the backend.
#[derive(Clone)]
pub struct DPage {
    /// Its grant.
    pub gref: GrantRef,
    /// Its contents.
    pub page: Arc<VecShared>,
}

/// One queue of the frontend.
pub struct FQueue {
    /// tx ring.
    pub tx: FrontRing<Arc<VecShared>, TxEntry>,
    /// rx ring.
    pub rx: FrontRing<Arc<VecShared>, RxEntry>,
    /// Ring grants (tx, rx).
    pub ring_grefs: [GrantRef; 2],
    /// Our tx event channel end.
    pub tx_port: EvtchnPort,
    /// Our rx event channel end (= `tx_port` when shared).
    pub rx_port: EvtchnPort,
    /// Posted rx buffers by id.
    pub rx_posted: BTreeMap<u16, DPage>,
    /// Pages of tx slots by id, until answered.
    pub tx_pages: BTreeMap<u16, GrantRef>,
    next_rx_id: u16,
    next_tx_id: u16,
}

/// A packet to transmit.
#[derive(Clone, Debug, Default)]
pub struct TxPkt {
    /// The bytes.
    pub data: Vec<u8>,
    /// Fragment lengths, first slot's first (empty: one slot). Their sum
    /// is what the slots claim; it need not be `data.len()` (hostile).
    pub frags: Vec<usize>,
    /// Offset of every fragment in its page.
    pub offset: u16,
    /// Flags of the first slot (`NETTXF_*`, `more_data`/`extra_info` are
    /// added as needed).
    pub flags: u16,
    /// Extra-info segments after the first slot.
    pub extras: Vec<ExtraInfo>,
    /// Overrides the first slot's `size` (hostile).
    pub size: Option<u16>,
}

impl TxPkt {
    /// One slot holding `data`.
    pub fn new(data: Vec<u8>) -> Self {
        TxPkt { data, ..Default::default() }
    }
    /// `data` cut into fragments of these lengths.
    pub fn frags(mut self, f: &[usize]) -> Self {
        self.frags = f.to_vec();
        self
    }
    /// With a GSO extra.
    pub fn gso(mut self, mss: u16, ty: u8) -> Self {
        self.extras.push(ExtraInfo::gso(mss, ty));
        self.flags |= NETTXF_CSUM_BLANK;
        self
    }
}

/// A received packet as netfront assembles it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RxPacket {
    /// The bytes (what the statuses say, concatenated).
    pub data: Vec<u8>,
    /// First response's flags.
    pub flags: u16,
    /// The GSO extra, if any.
    pub gso: Option<(u16, u8)>,
    /// A response carried an error status.
    pub error: bool,
    /// Slots used (extras included).
    pub slots: usize,
}

/// A frontend domain (Linux netfront).
pub struct Netfront {
    /// Its domain id.
    pub dom: DomId,
    /// Its grants.
    pub g: FakeGrants,
    /// Its event channels.
    pub e: FakeEvents,
    /// Its queues.
    pub queues: Vec<FQueue>,
    /// Grants given and not yet ended.
    pub granted: BTreeSet<u32>,
    /// Keys last written (removed before the next connect).
    pub keys_written: Vec<String>,
    /// The control ring and our end of its event channel.
    pub ctrl: Option<(FrontRing<Arc<VecShared>, CtrlEntry>, EvtchnPort)>,
    next_pfn: u64,
}

impl Netfront {
    /// A netfront of domain `dom` (no rings yet).
    pub fn new(dom: DomId, g: FakeGrants, e: FakeEvents) -> Self {
        Netfront {
            dom,
            g,
            e,
            queues: Vec::new(),
            granted: BTreeSet::new(),
            keys_written: Vec::new(),
            ctrl: None,
            next_pfn: 0x100,
        }
    }

    /// The frontend's xenstore directory.
    pub fn fe_dir(&self) -> String {
        format!("/local/domain/{}/device/vif/{DEVID}", self.dom.0)
    }

    /// The backend's directory for this frontend.
    pub fn be_dir(&self) -> String {
        format!("{}/backend/vif/{}/{DEVID}", home(), self.dom.0)
    }

    /// Grants a fresh page holding `data` at `off`, the rest `fill`.
    pub fn grant_page(&mut self, data: &[u8], off: usize, fill: u8, readonly: bool) -> DPage {
        let pfn = Pfn(self.next_pfn);
        self.next_pfn += 1;
        let page = self.g.local_page(pfn);
        page.write(0, &[fill; PAGE]);
        page.write(off, data);
        let gref = self.g.grant_access(BE, pfn, readonly).expect("grant");
        self.granted.insert(gref.0);
        DPage { gref, page }
    }

    /// Ends a grant we gave.
    pub fn end(&mut self, gref: GrantRef) {
        if self.granted.remove(&gref.0) {
            self.g.end_access(gref).expect("end_access (still mapped by the backend?)");
        }
    }

    /// Grants ring pages, allocates event channels, returns the keys to write.
    pub fn make_queues(&mut self, o: &FrontOpts) -> Vec<(String, String)> {
        self.queues.clear();
        let mut keys: Vec<(String, String)> = Vec::new();
        let mut put = |k: String, v: String| keys.push((k, v));
        if let Some(v) = o.rx_copy {
            put("request-rx-copy".into(), v.into());
        }
        for (k, on) in [
            ("feature-rx-notify", true),
            ("feature-sg", o.sg),
            ("feature-gso-tcpv4", o.gso_v4),
            ("feature-gso-tcpv6", o.gso_v6),
            ("feature-no-csum-offload", !o.csum_v4),
            ("feature-ipv6-csum-offload", o.csum_v6),
        ] {
            put(k.into(), u8::from(on).to_string());
        }
        if o.queues > 1 {
            put("multi-queue-num-queues".into(), o.queues.to_string());
        }
        self.ctrl = None;
        if o.ctrl {
            let page = self.grant_page(&[], 0, 0, false);
            let ring = FrontRing::init(page.page.clone(), CtrlEntry, 0, 0);
            let port = self.e.alloc_unbound(BE).expect("alloc_unbound");
            put("ctrl-ring-ref".into(), page.gref.0.to_string());
            put("event-channel-ctrl".into(), port.0.to_string());
            self.ctrl = Some((ring, port));
        }
        for qi in 0..o.queues {
            let tx_page = self.grant_page(&[], 0, 0, false);
            let rx_page = self.grant_page(&[], 0, 0, false);
            let tx = FrontRing::init(tx_page.page.clone(), TxEntry, 0, 0);
            let rx = FrontRing::init(rx_page.page.clone(), RxEntry, 0, 0);
            let tx_port = self.e.alloc_unbound(BE).expect("alloc_unbound");
            let rx_port = if o.split { self.e.alloc_unbound(BE).expect("alloc_unbound") } else { tx_port };
            let dir = if o.queues > 1 { format!("queue-{qi}/") } else { String::new() };
            put(format!("{dir}tx-ring-ref"), tx_page.gref.0.to_string());
            put(format!("{dir}rx-ring-ref"), rx_page.gref.0.to_string());
            if o.split {
                put(format!("{dir}event-channel-tx"), tx_port.0.to_string());
                put(format!("{dir}event-channel-rx"), rx_port.0.to_string());
            } else {
                put(format!("{dir}event-channel"), tx_port.0.to_string());
            }
            self.queues.push(FQueue {
                tx,
                rx,
                ring_grefs: [tx_page.gref, rx_page.gref],
                tx_port,
                rx_port,
                rx_posted: BTreeMap::new(),
                tx_pages: BTreeMap::new(),
                next_rx_id: 0,
                next_tx_id: 0,
            });
        }
        keys
    }

    /// The slots of `pkt` (pages granted read-only).
    pub fn tx_slots(&mut self, q: usize, pkt: &TxPkt) -> Vec<TxSlot> {
        let lens = if pkt.frags.is_empty() { std::vec![pkt.data.len()] } else { pkt.frags.clone() };
        let total: usize = lens.iter().sum();
        let mut at = 0;
        let mut slots = Vec::new();
        let mut extras = Vec::new();
        for (i, x) in pkt.extras.iter().enumerate() {
            let mut x = *x;
            if i + 1 < pkt.extras.len() {
                x.flags |= XEN_NETIF_EXTRA_FLAG_MORE;
            }
            let mut s = [0u8; 12];
            x.encode(&mut s);
            extras.push(s);
        }
        for (i, &len) in lens.iter().enumerate() {
            let chunk = pkt.data.get(at..(at + len).min(pkt.data.len())).unwrap_or(&[]).to_vec();
            let fit = chunk.len().min(PAGE.saturating_sub(usize::from(pkt.offset)));
            let page = self.grant_page(&chunk[..fit], usize::from(pkt.offset).min(PAGE), 0x55, true);
            at += len;
            let fq = &mut self.queues[q];
            let id = fq.next_tx_id;
            fq.next_tx_id = fq.next_tx_id.wrapping_add(1);
            fq.tx_pages.insert(id, page.gref);
            let mut flags = if i == 0 { pkt.flags } else { 0 };
            if i + 1 < lens.len() {
                flags |= NETTXF_MORE_DATA;
            }
            if i == 0 && !extras.is_empty() {
                flags |= NETTXF_EXTRA_INFO;
            }
            let size = if i == 0 { pkt.size.unwrap_or(total as u16) } else { len as u16 };
            let mut s = [0u8; 12];
            TxRequest { gref: page.gref.0, offset: pkt.offset, flags, id, size }.encode(&mut s);
            slots.push(s);
            if i == 0 {
                slots.append(&mut extras);
            }
        }
        slots
    }

    /// Places a control request and publishes it, notifying if asked.
    pub fn ctrl_send(&mut self, req: &CtrlRequest) {
        let (ring, port) = self.ctrl.as_mut().expect("no control ring");
        assert!(ring.push_request(req), "control ring full");
        if ring.publish() {
            self.e.send(*port).expect("send");
        }
    }

    /// Takes control responses if the control event fired.
    pub fn ctrl_take(&mut self) -> Vec<CtrlResponse> {
        let Some((ring, port)) = self.ctrl.as_mut() else { return Vec::new() };
        if !self.e.take_pending(*port) {
            return Vec::new();
        }
        ring.take_responses(4)
    }

    /// Places slots on tx ring `q` (not yet published).
    pub fn push_slots(&mut self, q: usize, slots: &[TxSlot]) {
        for s in slots {
            assert!(self.queues[q].tx.push_bytes(s), "tx ring full");
        }
    }

    /// Publishes tx ring `q`, notifying if the backend asked.
    pub fn publish_tx(&mut self, q: usize) {
        let fq = &mut self.queues[q];
        if fq.tx.publish() {
            self.e.send(fq.tx_port).expect("send");
        }
    }

    /// Takes tx responses of queue `q` if its event fired, ending the
    /// grants of answered slots.
    pub fn take_tx(&mut self, q: usize) -> Vec<TxResponse> {
        let port = self.queues[q].tx_port;
        if !self.e.take_pending(port) {
            return Vec::new();
        }
        let rsps = self.queues[q].tx.take_responses(4);
        for r in &rsps {
            if r.status != NETIF_RSP_NULL {
                if let Some(g) = self.queues[q].tx_pages.remove(&r.id) {
                    self.end(g);
                }
            }
        }
        rsps
    }

    /// Posts `n` rx buffers on queue `q` (pages filled with [`RX_FILL`]).
    pub fn post_rx(&mut self, q: usize, n: usize) {
        for _ in 0..n {
            let page = self.grant_page(&[], 0, RX_FILL, false);
            let fq = &mut self.queues[q];
            let id = fq.next_rx_id;
            fq.next_rx_id = fq.next_rx_id.wrapping_add(1);
            assert!(fq.rx.push_request(&RxRequest { id, pad: 0, gref: page.gref.0 }), "rx ring full");
            fq.rx_posted.insert(id, page);
        }
        // Linux netfront notifies when the backend asked (req_event).
        if self.queues[q].rx.publish() {
            let port = self.queues[q].rx_port;
            self.e.send(port).expect("send");
        }
    }

    /// Posts one rx request naming grant `gref` as is (hostile: it may not
    /// exist or not be ours).
    pub fn post_rx_raw(&mut self, q: usize, gref: u32) {
        let dummy = Arc::new(VecShared::new(PAGE));
        let fq = &mut self.queues[q];
        let id = fq.next_rx_id;
        fq.next_rx_id = fq.next_rx_id.wrapping_add(1);
        if fq.rx.push_request(&RxRequest { id, pad: 0, gref }) {
            fq.rx_posted.insert(id, DPage { gref: GrantRef(gref), page: dummy });
        }
        fq.rx.publish();
    }

    /// Takes received packets of queue `q` if its rx event fired.
    ///
    /// # Panics
    /// On a response for an id we did not post, a non-zero offset, a
    /// status larger than a page, or a byte written past the status.
    pub fn take_rx(&mut self, q: usize) -> Vec<RxPacket> {
        let port = self.queues[q].rx_port;
        if !self.e.take_pending(port) {
            return Vec::new();
        }
        let slots = self.queues[q].rx.take_responses(4);
        let mut out = Vec::new();
        let mut cur: Option<RxPacket> = None;
        let mut want_extra = false;
        let mut more = false;
        for s in slots {
            let RxSlot::Rsp(r) = s else { unreachable!("decode_response gives Rsp") };
            if want_extra {
                let mut b = [0u8; 8];
                r.encode(&mut b);
                let x = ExtraInfo::decode(&b);
                let p = cur.as_mut().expect("extra without packet");
                let (size, ty, _) = x.gso_fields();
                assert_eq!(x.ty, XEN_NETIF_EXTRA_TYPE_GSO);
                p.gso = Some((size, ty));
                p.slots += 1;
                want_extra = false;
                if !more {
                    out.extend(cur.take());
                }
                continue;
            }
            let page = self.queues[q].rx_posted.remove(&r.id).expect("response for an id we posted");
            assert_eq!(r.offset, 0);
            let p = cur.get_or_insert_with(|| RxPacket {
                data: Vec::new(),
                flags: r.flags,
                gso: None,
                error: false,
                slots: 0,
            });
            p.slots += 1;
            if r.status < 0 {
                p.error = true;
            } else {
                let n = r.status as usize;
                assert!(n <= PAGE, "status {n} over a page");
                let snap = page.page.snapshot();
                p.data.extend_from_slice(&snap[..n]);
                assert!(snap[n..].iter().all(|&b| b == RX_FILL), "backend wrote past the status");
            }
            self.end(page.gref);
            want_extra = r.flags & NETRXF_EXTRA_INFO != 0 && p.slots == 1;
            more = r.flags & NETRXF_MORE_DATA != 0;
            if !more && !want_extra {
                out.extend(cur.take());
            }
        }
        assert!(!more && cur.is_none(), "packet cut off in the middle");
        out
    }
}
