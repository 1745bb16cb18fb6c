//! A simulated frontend and a minimal backend shell over one fake ring,
//! driven by random request sequences and checked against a model disk.
//!
//! Both sides are event-driven the way real drivers are: the backend only
//! runs when notified or when its final check found work, the frontend only
//! consumes responses when notified. A wrong notify or final-check rule
//! therefore shows up as a stall (requests never answered).

use blkback::abi::{
    self, Abi, DiscardX32, DiscardX64, IndirectX32, IndirectX64, RawRequest, RequestX32, RequestX64, Response,
    BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT, BLKIF_OP_READ, BLKIF_OP_WRITE,
    BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY, MAX_REQUEST_SIZE,
};
use blkback::request::{parse, parse_indirect_segments, RejectLog, Request, Segment, Status};
use blkback::ring::{ring_size, BackRing, RingError, RingMem, REQ_EVENT, REQ_PROD, RING_HEADER, RSP_EVENT, RSP_PROD};
use blkback::{DiscardInfo, DiskInfo};
use proptest::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use xen_ring::mock::FakeRingMem;

const PAGE: usize = 4096;
const SECT: usize = 512;

/// Grant table stand-in: gref -> page contents.
type Grants = Rc<RefCell<HashMap<u32, Vec<u8>>>>;

// ---------------------------------------------------------------------------
// Backend shell (what the real I/O layer will do, minus the I/O).

struct Back {
    ring: BackRing<Rc<FakeRingMem>, Abi>,
    disk: DiskInfo,
    data: Vec<u8>,
    grants: Grants,
    log: RejectLog,
    /// True while the backend's last final check found more work.
    has_more: bool,
}

impl Back {
    fn transfer(&mut self, write: bool, sector: u64, segs: &[Segment]) -> Status {
        let mut pos = sector as usize * SECT;
        let gt = &mut *self.grants.borrow_mut();
        for s in segs {
            let Some(page) = gt.get_mut(&s.gref().0) else { return Status::Error };
            let (off, len) = (s.offset(), s.len());
            if write {
                self.data[pos..pos + len].copy_from_slice(&page[off..off + len]);
            } else {
                page[off..off + len].copy_from_slice(&self.data[pos..pos + len]);
            }
            pos += len;
        }
        Status::Okay
    }

    fn exec(&mut self, raw: &RawRequest) -> Response {
        let req = match parse(raw, &self.disk) {
            Ok(r) => r,
            Err(rej) => {
                self.log.note();
                return rej.response();
            }
        };
        let status = match req {
            Request::Read { sector, segments, .. } => self.transfer(false, sector, segments.as_slice()),
            Request::Write { sector, segments, .. }
            | Request::WriteBarrier { sector, segments, .. }
            | Request::Flush { sector, segments, .. } => self.transfer(true, sector, segments.as_slice()),
            Request::Discard { sector, nr_sectors, .. } => {
                let (a, b) = (sector as usize * SECT, (sector + nr_sectors) as usize * SECT);
                self.data[a..b].fill(0);
                Status::Okay
            }
            Request::Indirect(ind) => {
                // Copy the indirect pages once, then validate the copies.
                let copies: Option<Vec<Vec<u8>>> =
                    ind.pages().iter().map(|g| self.grants.borrow().get(&g.0).cloned()).collect();
                match copies {
                    None => Status::Error,
                    Some(pages) => {
                        let refs: Vec<&[u8]> = pages.iter().map(|p| p.as_slice()).collect();
                        match parse_indirect_segments(&ind, &refs, &self.disk) {
                            Ok(segs) => {
                                let write = ind.op == blkback::request::DataOp::Write;
                                self.transfer(write, ind.sector, &segs)
                            }
                            Err(rej) => {
                                self.log.note();
                                return rej.response();
                            }
                        }
                    }
                }
            }
        };
        req.response(status)
    }

    /// One scheduling of the backend: consume up to `budget`, answer them
    /// publishing every `batch` responses. Returns whether the frontend must
    /// be notified.
    fn run(&mut self, budget: usize, batch: usize) -> Result<bool, RingError> {
        let mut reqs = Vec::new();
        let n = self.ring.poll_requests(budget, |r| reqs.push(r))?;
        let mut notify = false;
        for (i, raw) in reqs.iter().enumerate() {
            let rsp = self.exec(raw);
            self.ring.push_response(&rsp)?;
            if (i + 1) % batch == 0 {
                notify |= self.ring.publish_responses();
            }
        }
        notify |= self.ring.publish_responses();
        self.has_more = if n == budget { true } else { self.ring.final_check_for_requests()? };
        Ok(notify)
    }
}

// ---------------------------------------------------------------------------
// Simulated frontend.

struct Expect {
    op: u8,
    status: i16,
    /// (gref, offset, bytes) that must be in the page after a read.
    reads: Vec<(u32, usize, Vec<u8>)>,
}

struct Front {
    mem: Rc<FakeRingMem>,
    abi: Abi,
    size: u32,
    req_prod_pvt: u32,
    rsp_cons: u32,
    grants: Grants,
    next_gref: u32,
    next_id: u64,
    model: Vec<u8>,
    pending: HashMap<u64, Expect>,
    answered: usize,
}

impl Front {
    fn new(mem: Rc<FakeRingMem>, abi: Abi, order: u8, start: u32, grants: Grants, sectors: u64) -> Self {
        // SHARED_RING_INIT, shifted to `start` to exercise index wrap.
        mem.store_u32_release(REQ_PROD, start);
        mem.store_u32_release(RSP_PROD, start);
        mem.store_u32_release(REQ_EVENT, start.wrapping_add(1));
        mem.store_u32_release(RSP_EVENT, start.wrapping_add(1));
        Front {
            mem,
            abi,
            size: ring_size(abi, order),
            req_prod_pvt: start,
            rsp_cons: start,
            grants,
            next_gref: 1,
            next_id: 0x1000,
            model: vec![0; sectors as usize * SECT],
            pending: HashMap::new(),
            answered: 0,
        }
    }

    fn free_slots(&self) -> u32 {
        self.size - self.req_prod_pvt.wrapping_sub(self.rsp_cons)
    }

    fn grant(&mut self, fill: u8) -> u32 {
        let g = self.next_gref;
        self.next_gref += 1;
        self.grants.borrow_mut().insert(g, vec![fill; PAGE]);
        g
    }

    /// Places a request in the next slot and pushes it
    /// (RING_PUSH_REQUESTS_AND_CHECK_NOTIFY). Returns notify.
    fn submit(&mut self, bytes: &[u8; MAX_REQUEST_SIZE], id: u64, exp: Expect) -> bool {
        assert!(self.free_slots() > 0);
        let slot = (self.req_prod_pvt & (self.size - 1)) as usize;
        let entry = self.abi.entry_size();
        self.mem.write(RING_HEADER + slot * entry, &bytes[..self.abi.request_size()]);
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
        let old = self.mem.load_u32_acquire(REQ_PROD);
        let new = self.req_prod_pvt;
        self.mem.store_u32_release(REQ_PROD, new);
        self.mem.fence();
        let ev = self.mem.load_u32_acquire(REQ_EVENT);
        assert!(self.pending.insert(id, exp).is_none());
        new.wrapping_sub(ev) < new.wrapping_sub(old)
    }

    /// Consumes responses, then RING_FINAL_CHECK_FOR_RESPONSES.
    fn consume(&mut self) {
        loop {
            let prod = self.mem.load_u32_acquire(RSP_PROD);
            while self.rsp_cons != prod {
                let slot = (self.rsp_cons & (self.size - 1)) as usize;
                let mut b = [0u8; 16];
                let n = self.abi.response_size();
                self.mem.read(RING_HEADER + slot * self.abi.entry_size(), &mut b[..n]);
                let r = Response::decode(self.abi, &b[..n]);
                let exp = self.pending.remove(&r.id).unwrap_or_else(|| panic!("unexpected response {r:?}"));
                assert_eq!((r.operation, r.status), (exp.op, exp.status), "response {r:?}");
                let gt = self.grants.borrow();
                for (g, off, want) in &exp.reads {
                    assert_eq!(&gt[g][*off..*off + want.len()], &want[..], "read data for id {:#x}", r.id);
                }
                self.rsp_cons = self.rsp_cons.wrapping_add(1);
                self.answered += 1;
            }
            self.mem.store_u32_release(RSP_EVENT, self.rsp_cons.wrapping_add(1));
            self.mem.fence();
            if self.mem.load_u32_acquire(RSP_PROD) == self.rsp_cons {
                break;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Request encoding for either ABI.

fn enc_rw(abi: Abi, op: u8, nr: u8, id: u64, sector: u64, segs: &[abi::Segment]) -> [u8; MAX_REQUEST_SIZE] {
    let mut r =
        RequestX64 { operation: op, nr_segments: nr, handle: 0x51, id, sector_number: sector, ..Default::default() };
    for (d, s) in r.seg.iter_mut().zip(segs) {
        *d = *s;
    }
    let mut b = [0u8; MAX_REQUEST_SIZE];
    match abi {
        Abi::X86_64 => r.encode(&mut b),
        Abi::X86_32 => RequestX32::from(r).encode(&mut b),
    }
    b
}

fn enc_discard(abi: Abi, id: u64, sector: u64, n: u64) -> [u8; MAX_REQUEST_SIZE] {
    let mut b = [0u8; MAX_REQUEST_SIZE];
    let d = DiscardX64 { operation: BLKIF_OP_DISCARD, flag: 0, handle: 0, id, sector_number: sector, nr_sectors: n };
    match abi {
        Abi::X86_64 => d.encode(&mut b),
        Abi::X86_32 => DiscardX32::from(d).encode(&mut b),
    }
    b
}

fn enc_indirect(abi: Abi, op: u8, nr: u16, id: u64, sector: u64, page: u32) -> [u8; MAX_REQUEST_SIZE] {
    let mut b = [0u8; MAX_REQUEST_SIZE];
    let grefs = [page, 0, 0, 0, 0, 0, 0, 0];
    let r = IndirectX64 {
        operation: BLKIF_OP_INDIRECT,
        indirect_op: op,
        nr_segments: nr,
        id,
        sector_number: sector,
        handle: 0x51,
        indirect_grefs: grefs,
    };
    match abi {
        Abi::X86_64 => r.encode(&mut b),
        Abi::X86_32 => IndirectX32::from(r).encode(&mut b),
    }
    b
}

// ---------------------------------------------------------------------------
// Operations.

#[derive(Clone, Debug)]
enum Op {
    /// Direct read/write/flush/barrier: op, start sector, (first, last) per segment.
    Rw(u8, u64, Vec<(u8, u8)>, u8),
    Discard(u64, u64),
    /// Indirect: write?, sector, nr segments, fill.
    Indirect(bool, u64, u16, u8),
    /// A malformed request of a given kind.
    Bogus(u8),
    /// Schedule the backend with this budget and publish batch.
    Back(usize, usize),
    /// Deliver pending events to the frontend.
    Front,
}

fn seg_strategy() -> impl Strategy<Value = (u8, u8)> {
    (0u8..8).prop_flat_map(|f| (Just(f), f..8))
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (prop_oneof![Just(BLKIF_OP_READ), Just(BLKIF_OP_WRITE)], 0u64..140,
              prop::collection::vec(seg_strategy(), 1..=11), any::<u8>())
            .prop_map(|(o, s, g, f)| Op::Rw(o, s, g, f)),
        1 => (prop_oneof![Just(BLKIF_OP_FLUSH_DISKCACHE), Just(BLKIF_OP_WRITE_BARRIER)], 0u64..140,
              prop::collection::vec(seg_strategy(), 0..=3), any::<u8>())
            .prop_map(|(o, s, g, f)| Op::Rw(o, s, g, f)),
        1 => (0u64..140, 0u64..40).prop_map(|(s, n)| Op::Discard(s, n)),
        1 => (any::<bool>(), 0u64..140, 1u16..=300, any::<u8>()).prop_map(|(w, s, n, f)| Op::Indirect(w, s, n, f)),
        1 => (0u8..8).prop_map(Op::Bogus),
        3 => (1usize..9, 1usize..5).prop_map(|(b, p)| Op::Back(b, p)),
        2 => Just(Op::Front),
    ]
}

struct Sim {
    front: Front,
    back: Back,
    back_evt: bool,
    front_evt: bool,
}

impl Sim {
    fn schedule_back(&mut self, budget: usize, batch: usize) {
        if !(self.back_evt || self.back.has_more) {
            return; // asleep: only an event wakes it
        }
        self.back_evt = false;
        if self.back.run(budget, batch).expect("honest frontend broke the ring") {
            self.front_evt = true;
        }
    }

    fn schedule_front(&mut self) {
        if std::mem::take(&mut self.front_evt) {
            self.front.consume();
        }
    }

    /// Lets both sides run until the frontend has a free slot.
    fn make_room(&mut self) {
        for _ in 0..10_000 {
            if self.front.free_slots() > 0 {
                return;
            }
            self.schedule_back(7, 3);
            self.schedule_front();
        }
        panic!("stalled waiting for a free slot: lost notification");
    }

    fn submit(&mut self, bytes: [u8; MAX_REQUEST_SIZE], id: u64, exp: Expect) {
        self.make_room();
        if self.front.submit(&bytes, id, exp) {
            self.back_evt = true;
        }
    }

    fn id(&mut self) -> u64 {
        self.front.next_id += 1;
        self.front.next_id
    }

    fn apply(&mut self, op: Op) {
        let abi = self.front.abi;
        let sectors = self.back.disk.sectors;
        match op {
            Op::Rw(opc, sector, segs, fill) => {
                let id = self.id();
                let total: u64 = segs.iter().map(|&(f, l)| u64::from(l - f) + 1).sum();
                let ok = total == 0 || sector + total <= sectors;
                let mut wire = Vec::new();
                let mut reads = Vec::new();
                let mut pos = sector as usize * SECT;
                for (i, &(f, l)) in segs.iter().enumerate() {
                    let g = self.front.grant(fill.wrapping_add(i as u8));
                    wire.push(abi::Segment { gref: g, first_sect: f, last_sect: l });
                    let (off, len) = (usize::from(f) * SECT, usize::from(l - f + 1) * SECT);
                    if ok {
                        if opc == BLKIF_OP_READ {
                            reads.push((g, off, self.front.model[pos..pos + len].to_vec()));
                        } else {
                            let src = self.front.grants.borrow()[&g][off..off + len].to_vec();
                            self.front.model[pos..pos + len].copy_from_slice(&src);
                        }
                    }
                    pos += len;
                }
                let status = if ok { BLKIF_RSP_OKAY } else { BLKIF_RSP_ERROR };
                let bytes = enc_rw(abi, opc, segs.len() as u8, id, sector, &wire);
                self.submit(bytes, id, Expect { op: opc, status, reads });
            }
            Op::Discard(sector, n) => {
                let id = self.id();
                let ok = sector + n <= sectors;
                if ok && n > 0 {
                    self.front.model[sector as usize * SECT..(sector + n) as usize * SECT].fill(0);
                }
                let status = if ok { BLKIF_RSP_OKAY } else { BLKIF_RSP_ERROR };
                self.submit(
                    enc_discard(abi, id, sector, n),
                    id,
                    Expect { op: BLKIF_OP_DISCARD, status, reads: vec![] },
                );
            }
            Op::Indirect(write, sector, nr, fill) => {
                let id = self.id();
                let opc = if write { BLKIF_OP_WRITE } else { BLKIF_OP_READ };
                let ok_count = nr <= 256;
                let total = u64::from(nr) * 8;
                let ok = ok_count && sector + total <= sectors;
                let page = self.front.grant(0);
                let mut reads = Vec::new();
                if ok_count {
                    let mut pos = sector as usize * SECT;
                    for i in 0..nr as usize {
                        let g = self.front.grant(fill.wrapping_add(i as u8));
                        abi::Segment { gref: g, first_sect: 0, last_sect: 7 }
                            .encode(&mut self.front.grants.borrow_mut().get_mut(&page).unwrap()[i * 8..]);
                        if ok {
                            if write {
                                let src = self.front.grants.borrow()[&g].clone();
                                self.front.model[pos..pos + PAGE].copy_from_slice(&src);
                            } else {
                                reads.push((g, 0, self.front.model[pos..pos + PAGE].to_vec()));
                            }
                        }
                        pos += PAGE;
                    }
                }
                let status = if ok { BLKIF_RSP_OKAY } else { BLKIF_RSP_ERROR };
                self.submit(enc_indirect(abi, opc, nr, id, sector, page), id, Expect { op: opc, status, reads });
            }
            Op::Bogus(kind) => {
                let id = self.id();
                let g = self.front.grant(0xee);
                let good = abi::Segment { gref: g, first_sect: 0, last_sect: 7 };
                let (bytes, op, status) = match kind {
                    0 => (enc_rw(abi, 4, 1, id, 0, &[good]), 4, BLKIF_RSP_EOPNOTSUPP),
                    1 => (enc_rw(abi, 0xc3, 1, id, 0, &[good]), 0xc3, BLKIF_RSP_EOPNOTSUPP),
                    2 => (enc_rw(abi, BLKIF_OP_WRITE, 12, id, 0, &[good]), BLKIF_OP_WRITE, BLKIF_RSP_ERROR),
                    3 => (enc_rw(abi, BLKIF_OP_READ, 0, id, 0, &[]), BLKIF_OP_READ, BLKIF_RSP_ERROR),
                    4 => {
                        let s = abi::Segment { gref: g, first_sect: 5, last_sect: 2 };
                        (enc_rw(abi, BLKIF_OP_WRITE, 1, id, 0, &[s]), BLKIF_OP_WRITE, BLKIF_RSP_ERROR)
                    }
                    5 => {
                        let s = abi::Segment { gref: g, first_sect: 0, last_sect: 8 };
                        (enc_rw(abi, BLKIF_OP_READ, 1, id, 0, &[s]), BLKIF_OP_READ, BLKIF_RSP_ERROR)
                    }
                    6 => (enc_rw(abi, BLKIF_OP_WRITE, 1, id, u64::MAX - 2, &[good]), BLKIF_OP_WRITE, BLKIF_RSP_ERROR),
                    _ => (enc_indirect(abi, BLKIF_OP_DISCARD, 1, id, 0, g), BLKIF_OP_DISCARD, BLKIF_RSP_ERROR),
                };
                self.submit(bytes, id, Expect { op, status, reads: vec![] });
            }
            Op::Back(budget, batch) => self.schedule_back(budget, batch),
            Op::Front => self.schedule_front(),
        }
    }

    fn drain(&mut self) {
        for _ in 0..100_000 {
            if self.front.pending.is_empty() {
                return;
            }
            self.schedule_back(5, 2);
            self.schedule_front();
        }
        panic!("{} requests never answered: lost notification", self.front.pending.len());
    }
}

fn new_sim(abi: Abi, order: u8, start: u32, sectors: u64) -> Sim {
    let mem = Rc::new(FakeRingMem::new(PAGE << order));
    let grants: Grants = Rc::default();
    let front = Front::new(mem.clone(), abi, order, start, grants.clone(), sectors);
    let disk = DiskInfo {
        sectors,
        sector_size: 512,
        physical_sector_size: 512,
        readonly: false,
        removable: false,
        cdrom: false,
        flush: true,
        barrier: true,
        discard: Some(DiscardInfo { granularity: 512, alignment: 0, secure: false }),
    };
    let ring = BackRing::attach(mem, abi, order).unwrap();
    assert_eq!(ring.size(), front.size);
    let back =
        Back { ring, disk, data: vec![0; sectors as usize * SECT], grants, log: RejectLog::default(), has_more: false };
    Sim { front, back, back_evt: false, front_evt: false }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, .. ProptestConfig::default() })]

    #[test]
    fn random_sequences_match_model(
        x32 in any::<bool>(),
        order in 0u8..=2,
        start in prop_oneof![Just(0u32), Just(u32::MAX - 20), any::<u32>()],
        sectors in 64u64..=4200,
        ops in prop::collection::vec(op_strategy(), 1..250),
    ) {
        let abi = if x32 { Abi::X86_32 } else { Abi::X86_64 };
        let mut sim = new_sim(abi, order, start, sectors);
        let n_req = ops.iter().filter(|o| !matches!(o, Op::Back(..) | Op::Front)).count();
        for op in ops {
            sim.apply(op);
        }
        sim.drain();
        prop_assert_eq!(sim.front.answered, n_req);
        prop_assert!(sim.back.data == sim.front.model, "disk differs from model");
        prop_assert!(sim.back.ring.broken().is_none());
    }

    /// A hostile frontend scribbling over the whole ring page, req_prod
    /// included, never makes the backend panic, consume more than the ring
    /// holds, or come back from a broken state.
    #[test]
    fn hostile_ring_contents(
        x32 in any::<bool>(),
        writes in prop::collection::vec((0usize..4096, any::<u8>()), 0..400),
        prods in prop::collection::vec(any::<u32>(), 1..8),
    ) {
        let abi = if x32 { Abi::X86_32 } else { Abi::X86_64 };
        let mem = FakeRingMem::new_ring(0);
        let mut ring = BackRing::attach(&mem, abi, 0).unwrap();
        let mut disk = new_sim(abi, 0, 0, 64).back.disk;
        disk.sectors = 64;
        let mut consumed: u64 = 0;
        for (k, p) in prods.iter().enumerate() {
            for &(off, v) in writes.iter().skip(k * 50).take(50) {
                mem.write(off, &[v]);
            }
            mem.store_u32_release(REQ_PROD, *p);
            let was_broken = ring.broken().is_some();
            match ring.poll_requests(usize::MAX, |raw| { let _ = parse(&raw, &disk); }) {
                Ok(n) => {
                    prop_assert!(!was_broken);
                    consumed += n as u64;
                    prop_assert!(ring.in_flight() <= ring.size());
                    // Answer everything so the ring can keep going.
                    for _ in 0..n {
                        ring.push_response(&Response { id: 0, operation: 0, status: 0 }).unwrap();
                    }
                    let _ = ring.publish_responses();
                }
                Err(e) => {
                    let broken = matches!(e, RingError::Broken { .. });
                    prop_assert!(broken);
                }
            }
        }
        prop_assert!(consumed <= prods.len() as u64 * u64::from(ring.size()));
    }
}

#[test]
fn wraparound_with_odd_batches_both_abis() {
    for abi in [Abi::X86_32, Abi::X86_64] {
        for order in [0u8, 1, 4] {
            let mut sim = new_sim(abi, order, u32::MAX - 7, 256);
            // Far more requests than slots, odd budgets and batches, so both
            // ring slots and u32 indices wrap several times.
            let n = 3 * sim.front.size as usize + 5;
            for i in 0..n {
                let sector = (i as u64 * 3) % 200;
                sim.apply(Op::Rw(
                    if i % 3 == 0 { BLKIF_OP_READ } else { BLKIF_OP_WRITE },
                    sector,
                    vec![(1, 6), (0, 7)],
                    i as u8,
                ));
                if i % 5 == 0 {
                    sim.apply(Op::Back(3, 2));
                }
                if i % 7 == 0 {
                    sim.apply(Op::Front);
                }
            }
            sim.drain();
            assert_eq!(sim.front.answered, n);
            assert!(sim.back.data == sim.front.model);
        }
    }
}

#[test]
fn missing_grant_is_an_error_not_a_panic() {
    let mut sim = new_sim(Abi::X86_64, 0, 0, 64);
    let id = sim.id();
    let seg = abi::Segment { gref: 0xdead, first_sect: 0, last_sect: 7 };
    let bytes = enc_rw(Abi::X86_64, BLKIF_OP_READ, 1, id, 0, &[seg]);
    sim.submit(bytes, id, Expect { op: BLKIF_OP_READ, status: BLKIF_RSP_ERROR, reads: vec![] });
    sim.drain();
}
