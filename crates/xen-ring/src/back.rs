//! The backend's side of one shared ring (`struct <name>_back_ring`).
//!
//! The frontend owns the other half of this memory and may write anything at
//! any time. So: `req_prod` is read once per poll (acquire), a producer that
//! claims more outstanding requests than the ring holds marks the ring
//! broken and we stop consuming from it for good, each request slot is copied
//! out exactly once into private memory before it is decoded, and nothing we
//! decide on is re-read from the ring.

use crate::{ring_size, RingEntry, RingMem, MAX_RING_PAGE_ORDER, PAGE_SIZE, REQ_EVENT, REQ_PROD, RING_HEADER};
use crate::{RSP_EVENT, RSP_PROD};
use alloc::vec;
use alloc::vec::Vec;

/// Ring-layer errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingError {
    /// Ring page order above [`MAX_RING_PAGE_ORDER`].
    BadOrder(u8),
    /// The mapped window is not `PAGE_SIZE << order` bytes.
    BadMemSize {
        /// Bytes expected.
        want: usize,
        /// Bytes mapped.
        got: usize,
    },
    /// The entry layout leaves no room for a single slot (a zero-sized or
    /// oversized entry: a bug in the device kind, not guest input).
    BadEntrySize(usize),
    /// The frontend published a `req_prod` that cannot be right: more
    /// outstanding requests than slots, or behind what we already consumed.
    /// The ring is dead from then on (fail closed).
    Broken {
        /// The `req_prod` value read.
        req_prod: u32,
        /// Our consumer index at the time.
        req_cons: u32,
        /// Our private response producer at the time.
        rsp_prod_pvt: u32,
    },
    /// A response was pushed with no consumed request left to answer
    /// (a caller bug, not guest input).
    NoRequestToAnswer,
}

impl RingError {
    /// A fixed phrase for a log line.
    pub fn as_str(&self) -> &'static str {
        match self {
            RingError::BadOrder(_) => "ring page order too large",
            RingError::BadMemSize { .. } => "ring mapping has the wrong size",
            RingError::BadEntrySize(_) => "ring entry size leaves no slot",
            RingError::Broken { .. } => "frontend published a bogus req_prod; ring halted",
            RingError::NoRequestToAnswer => "response pushed without an outstanding request",
        }
    }
}

/// The backend's side of one shared ring of `E` entries over memory `M`.
#[derive(Debug)]
pub struct BackRing<M: RingMem, E: RingEntry> {
    mem: M,
    entry: E,
    size: u32,
    req_cons: u32,
    rsp_prod_pvt: u32,
    /// Last `rsp_prod` we published: our own copy, since the shared one can
    /// be scribbled on by the frontend.
    rsp_published: u32,
    broken: Option<RingError>,
    /// Private copy of one slot: requests are read into it once, responses
    /// encoded in it before they are written (sized by `E`, never by guest
    /// input).
    scratch: Vec<u8>,
}

impl<M: RingMem, E: RingEntry> BackRing<M, E> {
    /// Attaches to a ring the frontend has initialised
    /// (`BACK_RING_ATTACH`): our indices start at the shared `rsp_prod`,
    /// as Linux's backends do, so a reconnecting frontend that kept its ring
    /// keeps working. A hostile starting value only ever hurts its sender:
    /// the first poll then finds the ring broken.
    pub fn attach(mem: M, entry: E, order: u8) -> Result<Self, RingError> {
        if order > MAX_RING_PAGE_ORDER {
            return Err(RingError::BadOrder(order));
        }
        let want = PAGE_SIZE << order;
        if mem.len() != want {
            return Err(RingError::BadMemSize { want, got: mem.len() });
        }
        let stride = entry.entry_size();
        let size = ring_size(stride, order);
        if size == 0 {
            return Err(RingError::BadEntrySize(stride));
        }
        let start = mem.load_u32_acquire(RSP_PROD);
        Ok(BackRing {
            mem,
            entry,
            size,
            req_cons: start,
            rsp_prod_pvt: start,
            rsp_published: start,
            broken: None,
            scratch: vec![0; stride],
        })
    }

    /// Number of slots (a power of two).
    pub fn size(&self) -> u32 {
        self.size
    }

    /// The entry layout.
    pub fn entry(&self) -> &E {
        &self.entry
    }

    /// Requests consumed but not yet answered.
    pub fn in_flight(&self) -> u32 {
        self.req_cons.wrapping_sub(self.rsp_prod_pvt)
    }

    /// Our consumer index (`req_cons`).
    pub fn req_cons(&self) -> u32 {
        self.req_cons
    }

    /// Our private response producer (`rsp_prod_pvt`).
    pub fn rsp_prod_pvt(&self) -> u32 {
        self.rsp_prod_pvt
    }

    /// Set once the frontend has broken the ring.
    pub fn broken(&self) -> Option<RingError> {
        self.broken
    }

    /// The memory window (for teardown).
    pub fn mem(&self) -> &M {
        &self.mem
    }

    /// Offset of the slot of free-running index `idx`: slot < size and
    /// `64 + size * stride <= len` (checked at attach), so it is in the
    /// window.
    fn slot_off(&self, idx: u32) -> usize {
        RING_HEADER + (idx & (self.size - 1)) as usize * self.scratch.len()
    }

    /// Reads `req_prod` once and checks it against our indices.
    ///
    /// Returns how many requests may be consumed now.
    fn snapshot_prod(&mut self) -> Result<u32, RingError> {
        if let Some(e) = self.broken {
            return Err(e);
        }
        // Acquire: the request slots up to `prod` were written before the
        // frontend's release store of `req_prod` (its wmb in
        // RING_PUSH_REQUESTS); our slot reads must not be hoisted above
        // this load.
        let prod = self.mem.load_u32_acquire(REQ_PROD);
        // Every unanswered request occupies a slot, so at most `size`
        // requests can lie between our response producer and `prod`
        // (Linux's RING_REQUEST_PROD_OVERFLOW). And `prod` cannot lie
        // behind what we already consumed: then `prod - req_cons` wraps to
        // more than `prod - rsp_prod_pvt`. Both are wrapping u32 differences
        // of free-running indices, which is the ring's arithmetic.
        let outstanding = prod.wrapping_sub(self.rsp_prod_pvt);
        let avail = prod.wrapping_sub(self.req_cons);
        if outstanding > self.size || avail > outstanding {
            let e = RingError::Broken { req_prod: prod, req_cons: self.req_cons, rsp_prod_pvt: self.rsp_prod_pvt };
            self.broken = Some(e);
            return Err(e);
        }
        Ok(avail)
    }

    /// Copies out up to `budget` new requests, oldest first, handing each
    /// decoded copy to `sink`. Returns how many were consumed.
    ///
    /// `req_prod` is read once per call. On a broken ring this returns the
    /// error every time and consumes nothing.
    pub fn poll_requests(&mut self, budget: usize, mut sink: impl FnMut(E::Request)) -> Result<usize, RingError> {
        let avail = self.snapshot_prod()?;
        let n = budget.min(avail as usize);
        let req_size = self.entry.request_size();
        for _ in 0..n {
            // `avail <= outstanding <= size` (checked above), so consuming
            // `n` requests never laps our unanswered ones
            // (RING_REQUEST_CONS_OVERFLOW cannot trigger).
            let off = self.slot_off(self.req_cons);
            let copy = &mut self.scratch[..req_size];
            copy.fill(0);
            // The one and only read of this slot (XSA-155): everything
            // after works on the private copy.
            self.mem.read(off, copy);
            let req = self.entry.decode_request(copy);
            self.req_cons = self.req_cons.wrapping_add(1);
            sink(req);
        }
        Ok(n)
    }

    /// Requests the frontend has published and we have not consumed yet
    /// (reads `req_prod` once; arms nothing). A broken ring is an error.
    pub fn pending(&mut self) -> Result<u32, RingError> {
        self.snapshot_prod()
    }

    /// Writes one response into the next response slot (not yet visible to
    /// the frontend: call [`publish_responses`](Self::publish_responses)).
    pub fn push_response(&mut self, rsp: &E::Response) -> Result<(), RingError> {
        if self.rsp_prod_pvt == self.req_cons {
            return Err(RingError::NoRequestToAnswer);
        }
        let off = self.slot_off(self.rsp_prod_pvt);
        let out = &mut self.scratch[..self.entry.response_size()];
        out.fill(0);
        self.entry.encode_response(rsp, out);
        // Whole struct including padding, so nothing of ours leaks
        // (XSA-216); the slot's tail still holds the frontend's request.
        self.mem.write(off, out);
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Publishes pushed responses and says whether the frontend wants an
    /// event (`RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`): notify iff `rsp_event`
    /// lies in `(old, new]`.
    pub fn publish_responses(&mut self) -> bool {
        let old = self.rsp_published;
        let new = self.rsp_prod_pvt;
        if old == new {
            // Nothing new: rsp_event cannot lie in an empty range.
            return false;
        }
        // Release: the response bodies written by push_response are visible
        // before the new producer index (the macro's wmb).
        self.mem.store_u32_release(RSP_PROD, new);
        self.rsp_published = new;
        // Full barrier: our rsp_prod store must be visible before we read
        // rsp_event (the macro's mb). Otherwise a frontend that just set
        // rsp_event and saw the old rsp_prod could sleep with no event
        // coming.
        self.mem.fence();
        let event = self.mem.load_u32_acquire(RSP_EVENT);
        new.wrapping_sub(event) < new.wrapping_sub(old)
    }

    /// Whether unconsumed requests remain, arming `req_event` if not
    /// (`RING_FINAL_CHECK_FOR_REQUESTS`). Call when going idle: a `false`
    /// means the frontend will send an event for its next request.
    pub fn final_check_for_requests(&mut self) -> Result<bool, RingError> {
        if self.snapshot_prod()? > 0 {
            return Ok(true);
        }
        // Ask for an event on the very next request.
        self.mem.store_u32_release(REQ_EVENT, self.req_cons.wrapping_add(1));
        // Full barrier: the req_event store must be visible before we
        // re-read req_prod, or a request published in between could be
        // missed with no event sent (lost wake-up).
        self.mem.fence();
        Ok(self.snapshot_prod()? > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::FakeRingMem;

    /// A blkif-shaped test entry: 112-byte requests with a u64 id at 8,
    /// 16-byte responses `(id, status)`.
    #[derive(Clone, Copy, Debug)]
    struct Wide;

    impl RingEntry for Wide {
        type Request = u64;
        type Response = (u64, i16);
        fn request_size(&self) -> usize {
            112
        }
        fn response_size(&self) -> usize {
            16
        }
        fn decode_request(&self, b: &[u8]) -> u64 {
            u64::from_le_bytes(b[8..16].try_into().unwrap())
        }
        fn encode_response(&self, r: &(u64, i16), out: &mut [u8]) {
            out[..8].copy_from_slice(&r.0.to_le_bytes());
            out[10..12].copy_from_slice(&r.1.to_le_bytes());
        }
        fn encode_request(&self, id: &u64, out: &mut [u8]) {
            out[8..16].copy_from_slice(&id.to_le_bytes());
        }
        fn decode_response(&self, b: &[u8]) -> (u64, i16) {
            (u64::from_le_bytes(b[..8].try_into().unwrap()), i16::from_le_bytes([b[10], b[11]]))
        }
    }

    fn put_req(m: &FakeRingMem, size: u32, idx: u32, id: u64) {
        let mut b = [0u8; 112];
        b[0] = 0;
        b[1] = 1;
        Wide.encode_request(&id, &mut b);
        m.write(RING_HEADER + (idx & (size - 1)) as usize * 112, &b);
    }

    #[test]
    fn attach_checks_geometry() {
        let m = FakeRingMem::new(4096);
        assert_eq!(BackRing::attach(&m, Wide, 5).unwrap_err(), RingError::BadOrder(5));
        assert_eq!(BackRing::attach(&m, Wide, 1).unwrap_err(), RingError::BadMemSize { want: 8192, got: 4096 });
    }

    /// An entry too large for one slot in the pages is refused, not a
    /// shift overflow.
    #[test]
    fn attach_refuses_entry_without_slot() {
        #[derive(Debug)]
        struct Huge;
        impl RingEntry for Huge {
            type Request = ();
            type Response = ();
            fn request_size(&self) -> usize {
                5000
            }
            fn response_size(&self) -> usize {
                0
            }
            fn decode_request(&self, _: &[u8]) {}
            fn encode_response(&self, _: &(), _: &mut [u8]) {}
            fn encode_request(&self, _: &(), _: &mut [u8]) {}
            fn decode_response(&self, _: &[u8]) {}
        }
        let m = FakeRingMem::new_ring(0);
        assert_eq!(BackRing::attach(&m, Huge, 0).unwrap_err(), RingError::BadEntrySize(5000));
        let m = FakeRingMem::new_ring(1);
        assert_eq!(BackRing::attach(&m, Huge, 1).unwrap().size(), 1);
    }

    #[test]
    fn prod_jump_breaks_ring_for_good() {
        let m = FakeRingMem::new_ring(0);
        let mut r = BackRing::attach(&m, Wide, 0).unwrap();
        m.store_u32_release(REQ_PROD, 33);
        let e = r.poll_requests(100, |_| panic!("consumed from a broken ring")).unwrap_err();
        assert!(matches!(e, RingError::Broken { req_prod: 33, .. }));
        assert_eq!(r.broken(), Some(e));
        // Even a sane value later does not revive it.
        m.store_u32_release(REQ_PROD, 1);
        assert_eq!(r.poll_requests(100, |_| ()).unwrap_err(), e);
        assert_eq!(r.final_check_for_requests().unwrap_err(), e);
    }

    #[test]
    fn pending_counts_without_consuming_or_arming() {
        let m = FakeRingMem::new_ring(0);
        let mut r = BackRing::attach(&m, Wide, 0).unwrap();
        assert_eq!(r.pending(), Ok(0));
        for i in 0..3 {
            put_req(&m, 32, i, i as u64);
        }
        m.store_u32_release(REQ_PROD, 3);
        let ev = m.load_u32_acquire(REQ_EVENT);
        assert_eq!(r.pending(), Ok(3));
        assert_eq!(r.pending(), Ok(3), "nothing consumed");
        assert_eq!(m.load_u32_acquire(REQ_EVENT), ev, "req_event not armed");
        assert_eq!(r.poll_requests(2, |_| ()).unwrap(), 2);
        assert_eq!(r.pending(), Ok(1));
        m.store_u32_release(REQ_PROD, 40);
        assert!(matches!(r.pending(), Err(RingError::Broken { req_prod: 40, .. })));
    }

    #[test]
    fn prod_moving_backwards_breaks_ring() {
        let m = FakeRingMem::new_ring(0);
        let mut r = BackRing::attach(&m, Wide, 0).unwrap();
        for i in 0..4 {
            put_req(&m, 32, i, i as u64);
        }
        m.store_u32_release(REQ_PROD, 4);
        assert_eq!(r.poll_requests(10, |_| ()).unwrap(), 4);
        r.push_response(&(0, 0)).unwrap();
        // prod - rsp_prod_pvt = 2 <= 32, but prod is behind req_cons.
        m.store_u32_release(REQ_PROD, 3);
        assert!(matches!(r.poll_requests(10, |_| ()), Err(RingError::Broken { .. })));
    }

    #[test]
    fn full_ring_of_unanswered_requests_is_the_limit() {
        let m = FakeRingMem::new_ring(0);
        let mut r = BackRing::attach(&m, Wide, 0).unwrap();
        for i in 0..32 {
            put_req(&m, 32, i, i as u64);
        }
        m.store_u32_release(REQ_PROD, 32);
        assert_eq!(r.poll_requests(usize::MAX, |_| ()).unwrap(), 32);
        assert_eq!(r.in_flight(), 32);
        // One more without answering anything: 33 outstanding.
        m.store_u32_release(REQ_PROD, 33);
        assert!(r.poll_requests(1, |_| ()).is_err());
    }

    #[test]
    fn single_copy_and_budget() {
        let m = FakeRingMem::new_ring(0);
        let mut r = BackRing::attach(&m, Wide, 0).unwrap();
        for i in 0..5 {
            put_req(&m, 32, i, 100 + i as u64);
        }
        m.store_u32_release(REQ_PROD, 5);
        let mut got = Vec::new();
        assert_eq!(r.poll_requests(3, |q| got.push(q)).unwrap(), 3);
        // The frontend rewrites a consumed slot: our copy is unaffected.
        put_req(&m, 32, 0, 999);
        assert_eq!(got[0], 100);
        assert_eq!(r.poll_requests(3, |q| got.push(q)).unwrap(), 2);
        assert_eq!(got, [100, 101, 102, 103, 104]);
        assert_eq!((r.req_cons(), r.rsp_prod_pvt()), (5, 0));
    }

    #[test]
    fn responses_and_notify_rule() {
        let m = FakeRingMem::new_ring(0);
        let mut r = BackRing::attach(&m, Wide, 0).unwrap();
        for i in 0..3 {
            put_req(&m, 32, i, i as u64);
        }
        m.store_u32_release(REQ_PROD, 3);
        r.poll_requests(3, |_| ()).unwrap();
        // Frontend waits for the first response (rsp_event = 1).
        r.push_response(&(0, 0)).unwrap();
        assert!(r.publish_responses());
        // rsp_event still 1: already passed, no new event.
        r.push_response(&(1, 0)).unwrap();
        assert!(!r.publish_responses());
        // Frontend re-arms for response index 3 (rsp_cons + 1 = 3).
        m.store_u32_release(RSP_EVENT, 3);
        r.push_response(&(2, 0)).unwrap();
        assert!(r.publish_responses());
        assert_eq!(m.load_u32_acquire(RSP_PROD), 3);
        // Nothing new: never notify.
        assert!(!r.publish_responses());
        assert_eq!(r.push_response(&(9, 0)), Err(RingError::NoRequestToAnswer));
    }

    #[test]
    fn final_check_arms_req_event() {
        let m = FakeRingMem::new_ring(0);
        let mut r = BackRing::attach(&m, Wide, 0).unwrap();
        put_req(&m, 32, 0, 0);
        m.store_u32_release(REQ_PROD, 1);
        assert!(r.final_check_for_requests().unwrap());
        r.poll_requests(8, |_| ()).unwrap();
        assert!(!r.final_check_for_requests().unwrap());
        assert_eq!(m.load_u32_acquire(REQ_EVENT), 2);
    }

    /// The response overwrites exactly `response_size` bytes of its slot
    /// (padding zeroed), leaving the request's tail.
    #[test]
    fn response_overwrites_only_its_bytes() {
        let m = FakeRingMem::new_ring(0);
        let mut req = [0xeeu8; 112];
        Wide.encode_request(&7, &mut req);
        m.write(RING_HEADER + 112, &req);
        m.store_u32_release(RSP_PROD, 1);
        m.store_u32_release(REQ_PROD, 2);
        let mut r = BackRing::attach(&m, Wide, 0).unwrap();
        let mut got = Vec::new();
        assert_eq!(r.poll_requests(4, |q| got.push(q)).unwrap(), 1);
        assert_eq!(got, [7]);
        r.push_response(&(7, -1)).unwrap();
        assert!(!r.publish_responses(), "rsp_event 1 already passed");
        let snap = m.snapshot();
        let off = RING_HEADER + 112;
        assert_eq!(&snap[off..off + 16], &[7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0]);
        assert_eq!(&snap[off + 16..off + 112], &req[16..]);
    }

    #[test]
    fn attach_resumes_at_shared_rsp_prod() {
        let m = FakeRingMem::new_ring(0);
        m.store_u32_release(RSP_PROD, u32::MAX - 1);
        m.store_u32_release(REQ_PROD, u32::MAX - 1);
        let mut r = BackRing::attach(&m, Wide, 0).unwrap();
        assert_eq!(r.poll_requests(8, |_| ()).unwrap(), 0);
        m.store_u32_release(REQ_PROD, 2); // wrapped: 4 new requests
        assert_eq!(r.poll_requests(8, |_| ()).unwrap(), 4);
    }
}
