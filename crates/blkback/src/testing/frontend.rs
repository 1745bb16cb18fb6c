//! The simulated blkfront: one frontend domain's grants, event channels,
//! rings and xenstore keys.

use super::{enc_indirect, enc_rw, home, pattern, Req, BE, DEV, PAGE, SECT};
use crate::abi::{self, Abi, Response, BLKIF_OP_READ};
use crate::ring::{ring_size, PagesMem};
use std::collections::BTreeSet;
use std::format;
use std::string::{String, ToString};
use std::sync::Arc;
use std::vec;
use std::vec::Vec;
use xen::evtchn::fake::FakeEvents;
use xen::evtchn::EventOps;
use xen::gnttab::fake::FakeGrants;
use xen::gnttab::{GrantError, GrantOps};
use xen::shmem::{SharedMem, VecShared};
use xen::types::{DomId, EvtchnPort, GrantRef, Pfn};
use xen_ring::mock::FrontRing;

/// One of the frontend's rings: its pages, grants and event channel.
pub struct FRing {
    /// The frontend's side of the shared ring.
    pub ring: FrontRing<PagesMem<Arc<VecShared>>, Abi>,
    /// The ring pages' grants, in order.
    pub grefs: Vec<GrantRef>,
    /// Our end of the ring's event channel.
    pub port: EvtchnPort,
}

impl FRing {
    /// Slots in the ring.
    pub fn size(&self) -> u32 {
        self.ring.size()
    }
    /// Writes `req_prod` directly (a hostile frontend).
    pub fn poke_req_prod(&mut self, val: u32) {
        self.ring.poke_req_prod(val);
    }
    /// Our response consumer.
    pub fn cons(&self) -> u32 {
        self.ring.rsp_cons()
    }
    /// Our private request producer.
    pub fn prod(&self) -> u32 {
        self.ring.req_prod_pvt()
    }
}

/// A data page granted to the backend.
#[derive(Clone)]
pub struct DPage {
    /// Its grant.
    pub gref: GrantRef,
    /// Its contents.
    pub page: Arc<VecShared>,
}

/// A frontend domain (blkfront).
pub struct Frontend {
    /// Its domain id.
    pub dom: DomId,
    /// Its grant interface.
    pub g: FakeGrants,
    /// Its event channels.
    pub e: FakeEvents,
    /// The ABI it speaks.
    pub abi: Abi,
    /// Next page frame to grant.
    pub next_pfn: u64,
    /// Last request id used.
    pub next_id: u64,
    /// Its rings (one per queue).
    pub rings: Vec<FRing>,
    /// Every grant given to the backend and not yet ended.
    pub granted: BTreeSet<u32>,
    /// Keys written by the last `talk_to_blkback`, removed before the next.
    pub keys_written: Vec<String>,
    /// feature-persistent: data pages are granted read-write (blkback maps
    /// persistent grants writable).
    pub persistent: bool,
}

/// How a frontend connects.
#[derive(Clone, Copy, Debug)]
pub struct Opts {
    /// `None`: no `protocol` key (x86_32 by default).
    pub protocol: Option<Abi>,
    /// Offer `feature-persistent`.
    pub persistent: bool,
    /// Queues (rings).
    pub queues: u32,
    /// `None`: single `ring-ref`, no `ring-page-order` key.
    pub order: Option<u8>,
    /// Starting value of the ring indices (to exercise the u32 wrap).
    pub start: u32,
}

impl Default for Opts {
    fn default() -> Self {
        Opts { protocol: Some(Abi::X86_64), persistent: false, queues: 1, order: None, start: 0 }
    }
}

impl Frontend {
    /// A frontend of domain `dom` (no rings yet).
    pub fn new(dom: DomId, g: FakeGrants, e: FakeEvents) -> Self {
        Frontend {
            dom,
            g,
            e,
            abi: Abi::X86_64,
            next_pfn: 0x100,
            next_id: 0x7000_0000_0000_0000 | (u64::from(dom.0) << 32),
            rings: Vec::new(),
            granted: BTreeSet::new(),
            persistent: false,
            keys_written: Vec::new(),
        }
    }

    /// The frontend's xenstore directory.
    pub fn fe_dir(&self) -> String {
        format!("/local/domain/{}/device/vbd/{DEV}", self.dom.0)
    }
    /// The backend's directory for this frontend.
    pub fn be_dir(&self) -> String {
        format!("{}/backend/vbd/{}/{DEV}", home(), self.dom.0)
    }

    /// Grants a fresh page holding `data`.
    pub fn grant_page(&mut self, data: &[u8], readonly: bool) -> DPage {
        let pfn = Pfn(self.next_pfn);
        self.next_pfn += 1;
        let page = self.g.local_page(pfn);
        page.write(0, data);
        let gref = self.g.grant_access(BE, pfn, readonly).expect("grant");
        self.granted.insert(gref.0);
        DPage { gref, page }
    }

    /// Grants ring pages and allocates event channels (SHARED_RING_INIT).
    pub fn make_rings(&mut self, o: &Opts) {
        self.rings.clear();
        let order = o.order.unwrap_or(0);
        for _ in 0..o.queues {
            let mut pages = Vec::new();
            let mut grefs = Vec::new();
            for _ in 0..1u32 << order {
                let p = self.grant_page(&[0u8; PAGE], false);
                pages.push(p.page);
                grefs.push(p.gref);
            }
            let port = self.e.alloc_unbound(BE).expect("alloc_unbound");
            let ring = FrontRing::init(PagesMem::new(pages), self.abi, order, o.start);
            debug_assert_eq!(ring.size(), ring_size(self.abi, order));
            self.rings.push(FRing { ring, grefs, port });
        }
    }

    /// The keys blkfront's `talk_to_blkback` writes.
    pub fn keys(&self, o: &Opts) -> Vec<(String, String)> {
        let mut k = Vec::new();
        if let Some(ord) = o.order {
            k.push(("ring-page-order".to_string(), ord.to_string()));
        }
        if o.queues > 1 {
            k.push(("multi-queue-num-queues".to_string(), o.queues.to_string()));
        }
        for (q, r) in self.rings.iter().enumerate() {
            let prefix = if o.queues > 1 { format!("queue-{q}/") } else { String::new() };
            match o.order {
                None => k.push((format!("{prefix}ring-ref"), r.grefs[0].0.to_string())),
                Some(_) => {
                    for (i, g) in r.grefs.iter().enumerate() {
                        k.push((format!("{prefix}ring-ref{i}"), g.0.to_string()));
                    }
                }
            }
            k.push((format!("{prefix}event-channel"), r.port.0.to_string()));
        }
        if let Some(abi) = o.protocol {
            k.push(("protocol".to_string(), abi.protocol().to_string()));
        }
        k.push(("feature-persistent".to_string(), u8::from(o.persistent).to_string()));
        k
    }

    /// A fresh request id.
    pub fn id(&mut self) -> u64 {
        self.next_id += 0x101;
        self.next_id
    }

    /// Places a request in the next free slot (not yet published).
    pub fn push(&mut self, q: usize, req: &Req) {
        let n = self.abi.request_size();
        assert!(self.rings[q].ring.push_bytes(&req[..n]), "frontend ring full");
    }

    /// RING_PUSH_REQUESTS_AND_CHECK_NOTIFY, then the event if needed.
    pub fn publish(&mut self, q: usize) {
        let r = &mut self.rings[q];
        if r.ring.publish() {
            self.e.send(r.port).expect("send");
        }
    }

    /// Consumes responses, then RING_FINAL_CHECK_FOR_RESPONSES.
    pub fn take_responses(&mut self, q: usize) -> Vec<Response> {
        self.rings[q].ring.take_responses(64)
    }

    /// Ends every grant given to the backend; returns those that failed.
    pub fn end_all(&mut self) -> Vec<(u32, GrantError)> {
        let mut bad = Vec::new();
        for g in std::mem::take(&mut self.granted) {
            if let Err(e) = self.g.end_access(GrantRef(g)) {
                bad.push((g, e));
                self.granted.insert(g);
            }
        }
        bad
    }

    /// Builds a read/write request over fresh pages. `spans` gives
    /// `(first_sect, last_sect)` per segment; write pages carry `pattern`.
    pub fn rw(
        &mut self,
        op: u8,
        sector: u64,
        spans: &[(u8, u8)],
        seed: u32,
        readonly: bool,
    ) -> (Req, u64, Vec<(DPage, u8, u8)>) {
        let id = self.id();
        let mut segs = Vec::new();
        let mut wire = Vec::new();
        for (i, &(f, l)) in spans.iter().enumerate() {
            let data = if op == BLKIF_OP_READ { vec![0xa5; PAGE] } else { pattern(seed + i as u32, PAGE) };
            let p = self.grant_page(&data, readonly && !self.persistent);
            wire.push(abi::Segment { gref: p.gref.0, first_sect: f, last_sect: l });
            segs.push((p, f, l));
        }
        (enc_rw(self.abi, op, id, sector, &wire), id, segs)
    }

    /// Builds an indirect request with one segment per page (whole pages).
    pub fn indirect(&mut self, op: u8, sector: u64, n: usize, seed: u32) -> (Req, u64, Vec<DPage>) {
        let id = self.id();
        let data: Vec<DPage> = (0..n)
            .map(|i| {
                let d = if op == BLKIF_OP_READ { vec![0x5a; PAGE] } else { pattern(seed + i as u32, PAGE) };
                self.grant_page(&d, false)
            })
            .collect();
        let mut ind = Vec::new();
        for chunk in data.chunks(abi::SEGMENTS_PER_INDIRECT_PAGE) {
            let mut b = vec![0u8; PAGE];
            for (i, p) in chunk.iter().enumerate() {
                abi::Segment { gref: p.gref.0, first_sect: 0, last_sect: 7 }.encode(&mut b[i * 8..]);
            }
            let ro = !self.persistent;
            ind.push(self.grant_page(&b, ro).gref);
        }
        (enc_indirect(self.abi, op, data.len() as u16, id, sector, &ind), id, data)
    }
}

impl Frontend {
    /// An indirect request over fresh pages with the given spans (write
    /// pages carry `pattern`, read pages 0x5a).
    pub fn indirect_spans(
        &mut self,
        op: u8,
        sector: u64,
        spans: &[(u8, u8)],
        seed: u32,
    ) -> (Req, u64, Vec<(DPage, u8, u8)>) {
        let id = self.id();
        let segs: Vec<(DPage, u8, u8)> = spans
            .iter()
            .enumerate()
            .map(|(i, &(f, l))| {
                let d = if op == BLKIF_OP_READ { vec![0x5a; PAGE] } else { pattern(seed + i as u32, PAGE) };
                (self.grant_page(&d, false), f, l)
            })
            .collect();
        let mut ind = Vec::new();
        for chunk in segs.chunks(abi::SEGMENTS_PER_INDIRECT_PAGE) {
            let mut b = vec![0u8; PAGE];
            for (i, (p, f, l)) in chunk.iter().enumerate() {
                abi::Segment { gref: p.gref.0, first_sect: *f, last_sect: *l }.encode(&mut b[i * 8..]);
            }
            // Read-only, unless persistent: blkfront grants persistent
            // grants read-write (blkback maps them writable).
            let ro = !self.persistent;
            ind.push(self.grant_page(&b, ro).gref);
        }
        (enc_indirect(self.abi, op, segs.len() as u16, id, sector, &ind), id, segs)
    }
}

/// Bytes a segment list covers, in order.
pub fn seg_bytes(segs: &[(DPage, u8, u8)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (p, f, l) in segs {
        let snap = p.page.snapshot();
        out.extend_from_slice(&snap[usize::from(*f) * SECT..(usize::from(*l) + 1) * SECT]);
    }
    out
}
