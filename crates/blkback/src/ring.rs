//! Back end of a Xen shared ring (`xen/include/public/io/ring.h`).
//!
//! Shared ring layout (`struct blkif_sring`), offsets in bytes:
//!
//! | off | field       | written by |
//! |-----|-------------|------------|
//! | 0   | `req_prod`  | frontend   |
//! | 4   | `req_event` | backend    |
//! | 8   | `rsp_prod`  | backend    |
//! | 12  | `rsp_event` | frontend   |
//! | 16  | padding to 64 bytes     | |
//! | 64  | `ring[]`: request/response union entries | both |
//!
//! Indices are free-running `u32`s; slot = index & (size - 1). The number of
//! entries is the largest power of two that fits in the ring pages after the
//! 64-byte header (`__CONST_RING_SIZE`).
//!
//! The frontend owns the other half of this memory and may write anything at
//! any time. So: `req_prod` is read once per poll (acquire), a producer that
//! claims more outstanding requests than the ring holds marks the ring
//! broken and we stop consuming from it for good, each request slot is copied
//! out exactly once, and nothing we decide on is re-read from the ring.

use crate::abi::{Abi, RawRequest, Response, MAX_REQUEST_SIZE, PAGE_SIZE};
use core::cell::RefCell;

use alloc::vec;
use alloc::vec::Vec;

/// Offset of `req_prod`.
pub const REQ_PROD: usize = 0;
/// Offset of `req_event`.
pub const REQ_EVENT: usize = 4;
/// Offset of `rsp_prod`.
pub const RSP_PROD: usize = 8;
/// Offset of `rsp_event`.
pub const RSP_EVENT: usize = 12;
/// Offset of the first ring entry (the header is padded to 64 bytes).
pub const RING_HEADER: usize = 64;
/// Largest ring page order we accept (`XENBUS_MAX_RING_GRANT_ORDER`: 16
/// pages).
pub const MAX_RING_PAGE_ORDER: u8 = 4;

/// A window of memory shared with the frontend, addressed by byte offset:
/// the runtime's [`SharedMem`](xen::shmem::SharedMem) (mapped grant pages
/// on Xen, a buffer in tests). Out-of-range offsets are a caller bug
/// (implementations may panic); every offset this crate passes is derived
/// from the ring geometry checked at [`BackRing::attach`].
pub use xen::shmem::SharedMem as RingMem;

/// A heap buffer standing in for mapped ring pages in host tests.
///
/// Interior mutability lets one test play frontend and backend over the same
/// window (share it with `Rc` or `&`). Single-threaded: accesses are already
/// ordered, so the barrier methods only need to exist.
#[derive(Debug)]
pub struct FakeRingMem {
    buf: RefCell<Vec<u8>>,
}

impl FakeRingMem {
    /// A zeroed window of `len` bytes.
    pub fn new(len: usize) -> Self {
        FakeRingMem { buf: RefCell::new(vec![0; len]) }
    }

    /// A zeroed window of `1 << order` pages, initialised the way a frontend
    /// does (`SHARED_RING_INIT`: producers 0, events 1).
    pub fn new_ring(order: u8) -> Self {
        let m = FakeRingMem::new(PAGE_SIZE << order);
        m.store_u32_release(REQ_EVENT, 1);
        m.store_u32_release(RSP_EVENT, 1);
        m
    }

    /// Copy of the whole window.
    pub fn snapshot(&self) -> Vec<u8> {
        self.buf.borrow().clone()
    }
}

impl RingMem for FakeRingMem {
    fn len(&self) -> usize {
        self.buf.borrow().len()
    }
    fn load_u32_acquire(&self, off: usize) -> u32 {
        let b = self.buf.borrow();
        u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
    }
    fn store_u32_release(&self, off: usize, val: u32) {
        self.buf.borrow_mut()[off..off + 4].copy_from_slice(&val.to_le_bytes());
    }
    fn read(&self, off: usize, buf: &mut [u8]) {
        buf.copy_from_slice(&self.buf.borrow()[off..off + buf.len()]);
    }
    fn write(&self, off: usize, data: &[u8]) {
        self.buf.borrow_mut()[off..off + data.len()].copy_from_slice(data);
    }
    fn fence(&self) {
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    }
}

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
    /// (a shell bug, not guest input).
    NoRequestToAnswer,
}

impl RingError {
    /// A fixed phrase for a log line.
    pub fn as_str(&self) -> &'static str {
        match self {
            RingError::BadOrder(_) => "ring page order too large",
            RingError::BadMemSize { .. } => "ring mapping has the wrong size",
            RingError::Broken { .. } => "frontend published a bogus req_prod; ring halted",
            RingError::NoRequestToAnswer => "response pushed without an outstanding request",
        }
    }
}

/// Ring entries for `abi` in `1 << order` pages: the largest power of two
/// with `64 + n * entry_size <= pages * 4096`.
pub const fn ring_size(abi: Abi, order: u8) -> u32 {
    let n = ((PAGE_SIZE << order) - RING_HEADER) / abi.entry_size();
    1 << (usize::BITS - 1 - n.leading_zeros())
}

/// The backend's side of one shared ring (`struct blkif_back_ring`).
#[derive(Debug)]
pub struct BackRing<M: RingMem> {
    mem: M,
    abi: Abi,
    size: u32,
    req_cons: u32,
    rsp_prod_pvt: u32,
    /// Last `rsp_prod` we published: our own copy, since the shared one can
    /// be scribbled on by the frontend.
    rsp_published: u32,
    broken: Option<RingError>,
}

impl<M: RingMem> BackRing<M> {
    /// Attaches to a ring the frontend has initialised
    /// (`BACK_RING_ATTACH`): our indices start at the shared `rsp_prod`,
    /// as Linux blkback does, so a reconnecting frontend that kept its ring
    /// keeps working. A hostile starting value only ever hurts its sender:
    /// the first poll then finds the ring broken.
    pub fn attach(mem: M, abi: Abi, order: u8) -> Result<Self, RingError> {
        if order > MAX_RING_PAGE_ORDER {
            return Err(RingError::BadOrder(order));
        }
        let want = PAGE_SIZE << order;
        if mem.len() != want {
            return Err(RingError::BadMemSize { want, got: mem.len() });
        }
        let start = mem.load_u32_acquire(RSP_PROD);
        Ok(BackRing {
            mem,
            abi,
            size: ring_size(abi, order),
            req_cons: start,
            rsp_prod_pvt: start,
            rsp_published: start,
            broken: None,
        })
    }

    /// Number of slots.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// The frontend's ABI.
    pub fn abi(&self) -> Abi {
        self.abi
    }

    /// Requests consumed but not yet answered.
    pub fn in_flight(&self) -> u32 {
        self.req_cons.wrapping_sub(self.rsp_prod_pvt)
    }

    /// Set once the frontend has broken the ring.
    pub fn broken(&self) -> Option<RingError> {
        self.broken
    }

    /// The memory window (for the shell's teardown).
    pub fn mem(&self) -> &M {
        &self.mem
    }

    /// Reads `req_prod` once and checks it against our indices.
    ///
    /// Returns how many requests may be consumed now.
    fn snapshot_prod(&mut self) -> Result<(u32, u32), RingError> {
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
        Ok((prod, avail))
    }

    /// Copies out up to `budget` new requests, oldest first, handing each
    /// copy to `sink`. Returns how many were consumed.
    ///
    /// `req_prod` is read once per call. On a broken ring this returns the
    /// error every time and consumes nothing.
    pub fn poll_requests(&mut self, budget: usize, mut sink: impl FnMut(RawRequest)) -> Result<usize, RingError> {
        let (_prod, avail) = self.snapshot_prod()?;
        let n = budget.min(avail as usize);
        let entry = self.abi.entry_size();
        let req_size = self.abi.request_size();
        for _ in 0..n {
            // `avail <= outstanding <= size` (checked above), so consuming
            // `n` requests never laps our unanswered ones
            // (RING_REQUEST_CONS_OVERFLOW cannot trigger).
            let slot = (self.req_cons & (self.size - 1)) as usize;
            // slot < size and 64 + size * entry <= len (ring_size), so the
            // offset is in the window.
            let off = RING_HEADER + slot * entry;
            let mut raw = RawRequest { abi: self.abi, bytes: [0; MAX_REQUEST_SIZE] };
            // The one and only read of this slot (XSA-155): everything
            // after works on `raw`.
            self.mem.read(off, &mut raw.bytes[..req_size]);
            self.req_cons = self.req_cons.wrapping_add(1);
            sink(raw);
        }
        Ok(n)
    }

    /// Requests the frontend has published and we have not consumed yet
    /// (reads `req_prod` once; arms nothing). A broken ring is an error.
    pub fn pending(&mut self) -> Result<u32, RingError> {
        self.snapshot_prod().map(|(_, avail)| avail)
    }

    /// Writes one response into the next response slot (not yet visible to
    /// the frontend: call [`publish_responses`](Self::publish_responses)).
    pub fn push_response(&mut self, rsp: &Response) -> Result<(), RingError> {
        if self.rsp_prod_pvt == self.req_cons {
            return Err(RingError::NoRequestToAnswer);
        }
        let slot = (self.rsp_prod_pvt & (self.size - 1)) as usize;
        let off = RING_HEADER + slot * self.abi.entry_size();
        let bytes = rsp.encode(self.abi);
        // Whole struct including padding, so nothing of ours leaks
        // (XSA-216); the slot's tail still holds the frontend's request.
        self.mem.write(off, &bytes[..self.abi.response_size()]);
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Publishes pushed responses and says whether the frontend wants an
    /// event (`RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`): notify iff `rsp_event`
    /// lies in `(old, new]`.
    pub fn publish_responses(&mut self) -> bool {
        let old = self.rsp_published;
        let new = self.rsp_prod_pvt;
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
        let (_, avail) = self.snapshot_prod()?;
        if avail > 0 {
            return Ok(true);
        }
        // Ask for an event on the very next request.
        self.mem.store_u32_release(REQ_EVENT, self.req_cons.wrapping_add(1));
        // Full barrier: the req_event store must be visible before we
        // re-read req_prod, or a request published in between could be
        // missed with no event sent (lost wake-up).
        self.mem.fence();
        let (_, avail) = self.snapshot_prod()?;
        Ok(avail > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{RequestX64, BLKIF_OP_READ, BLKIF_RSP_OKAY};

    #[test]
    fn sizes_match_const_ring_size() {
        // (4096 - 64) / 112 = 36 -> 32; (4096 - 64) / 108 = 37 -> 32.
        assert_eq!(ring_size(Abi::X86_64, 0), 32);
        assert_eq!(ring_size(Abi::X86_32, 0), 32);
        assert_eq!(ring_size(Abi::X86_64, 1), 64);
        assert_eq!(ring_size(Abi::X86_64, 2), 128);
        assert_eq!(ring_size(Abi::X86_64, 3), 256);
        assert_eq!(ring_size(Abi::X86_64, 4), 512);
        assert_eq!(ring_size(Abi::X86_32, 4), 512);
    }

    fn put_req(m: &FakeRingMem, size: u32, idx: u32, id: u64) {
        let r = RequestX64 { operation: BLKIF_OP_READ, nr_segments: 1, id, ..Default::default() };
        let mut b = [0u8; 112];
        r.encode(&mut b);
        m.write(RING_HEADER + (idx & (size - 1)) as usize * 112, &b);
    }

    #[test]
    fn attach_checks_geometry() {
        let m = FakeRingMem::new(4096);
        assert_eq!(BackRing::attach(&m, Abi::X86_64, 5).unwrap_err(), RingError::BadOrder(5));
        assert_eq!(BackRing::attach(&m, Abi::X86_64, 1).unwrap_err(), RingError::BadMemSize { want: 8192, got: 4096 });
    }

    #[test]
    fn prod_jump_breaks_ring_for_good() {
        let m = FakeRingMem::new_ring(0);
        let mut r = BackRing::attach(&m, Abi::X86_64, 0).unwrap();
        m.store_u32_release(REQ_PROD, 33);
        let e = r.poll_requests(100, |_| panic!("consumed from a broken ring")).unwrap_err();
        assert!(matches!(e, RingError::Broken { req_prod: 33, .. }));
        // Even a sane value later does not revive it.
        m.store_u32_release(REQ_PROD, 1);
        assert_eq!(r.poll_requests(100, |_| ()).unwrap_err(), e);
        assert_eq!(r.final_check_for_requests().unwrap_err(), e);
    }

    #[test]
    fn pending_counts_without_consuming_or_arming() {
        let m = FakeRingMem::new_ring(0);
        let mut r = BackRing::attach(&m, Abi::X86_64, 0).unwrap();
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
        let mut r = BackRing::attach(&m, Abi::X86_64, 0).unwrap();
        for i in 0..4 {
            put_req(&m, 32, i, i as u64);
        }
        m.store_u32_release(REQ_PROD, 4);
        assert_eq!(r.poll_requests(10, |_| ()).unwrap(), 4);
        r.push_response(&Response { id: 0, operation: 0, status: 0 }).unwrap();
        // prod - rsp_prod_pvt = 2 <= 32, but prod is behind req_cons.
        m.store_u32_release(REQ_PROD, 3);
        assert!(matches!(r.poll_requests(10, |_| ()), Err(RingError::Broken { .. })));
    }

    #[test]
    fn full_ring_of_unanswered_requests_is_the_limit() {
        let m = FakeRingMem::new_ring(0);
        let mut r = BackRing::attach(&m, Abi::X86_64, 0).unwrap();
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
        let mut r = BackRing::attach(&m, Abi::X86_64, 0).unwrap();
        for i in 0..5 {
            put_req(&m, 32, i, 100 + i as u64);
        }
        m.store_u32_release(REQ_PROD, 5);
        let mut got = Vec::new();
        assert_eq!(r.poll_requests(3, |q| got.push(q)).unwrap(), 3);
        // The frontend rewrites a consumed slot: our copy is unaffected.
        put_req(&m, 32, 0, 999);
        assert_eq!(got[0].id(), 100);
        assert_eq!(r.poll_requests(3, |q| got.push(q)).unwrap(), 2);
        let ids: Vec<u64> = got.iter().map(|q| q.id()).collect();
        assert_eq!(ids, [100, 101, 102, 103, 104]);
    }

    #[test]
    fn responses_and_notify_rule() {
        let m = FakeRingMem::new_ring(0);
        let mut r = BackRing::attach(&m, Abi::X86_64, 0).unwrap();
        for i in 0..3 {
            put_req(&m, 32, i, i as u64);
        }
        m.store_u32_release(REQ_PROD, 3);
        r.poll_requests(3, |_| ()).unwrap();
        // Frontend waits for the first response (rsp_event = 1).
        r.push_response(&Response { id: 0, operation: 0, status: BLKIF_RSP_OKAY }).unwrap();
        assert!(r.publish_responses());
        // rsp_event still 1: already passed, no new event.
        r.push_response(&Response { id: 1, operation: 0, status: BLKIF_RSP_OKAY }).unwrap();
        assert!(!r.publish_responses());
        // Frontend re-arms for response index 3 (rsp_cons + 1 = 3).
        m.store_u32_release(RSP_EVENT, 3);
        r.push_response(&Response { id: 2, operation: 0, status: BLKIF_RSP_OKAY }).unwrap();
        assert!(r.publish_responses());
        assert_eq!(m.load_u32_acquire(RSP_PROD), 3);
        // Nothing new: never notify.
        assert!(!r.publish_responses());
        assert_eq!(r.push_response(&Response { id: 9, operation: 0, status: 0 }), Err(RingError::NoRequestToAnswer));
    }

    #[test]
    fn final_check_arms_req_event() {
        let m = FakeRingMem::new_ring(0);
        let mut r = BackRing::attach(&m, Abi::X86_64, 0).unwrap();
        put_req(&m, 32, 0, 0);
        m.store_u32_release(REQ_PROD, 1);
        assert!(r.final_check_for_requests().unwrap());
        r.poll_requests(8, |_| ()).unwrap();
        assert!(!r.final_check_for_requests().unwrap());
        assert_eq!(m.load_u32_acquire(REQ_EVENT), 2);
    }

    /// Slot strides from the header, written by hand: 108 bytes on x86_32,
    /// 112 on x86_64, entries from byte 64; multi-page rings run across page
    /// boundaries.
    #[test]
    fn literal_strides() {
        for (abi, stride, rsp_len) in [(Abi::X86_32, 108usize, 12usize), (Abi::X86_64, 112, 16)] {
            let m = FakeRingMem::new_ring(1);
            // Slot 37 is on the second page; on x86_32 it straddles the
            // page boundary (4060..4168).
            let off = 64 + 37 * stride;
            assert_eq!(abi == Abi::X86_32, off < 4096 && off + stride > 4096);
            let mut req = [0u8; 112];
            req[0] = crate::abi::BLKIF_OP_WRITE;
            let id_off = if abi == Abi::X86_32 { 4 } else { 8 };
            req[id_off..id_off + 8].copy_from_slice(&0x1122334455667788u64.to_le_bytes());
            m.write(off, &req[..stride]);
            m.store_u32_release(RSP_PROD, 37);
            m.store_u32_release(REQ_PROD, 38);
            let mut r = BackRing::attach(&m, abi, 1).unwrap();
            assert_eq!(r.size(), 64);
            let mut got = None;
            assert_eq!(r.poll_requests(4, |q| got = Some(q)).unwrap(), 1);
            let got = got.unwrap();
            assert_eq!((got.operation(), got.id()), (1, 0x1122334455667788));
            assert_eq!(&got.bytes[stride..], &[0u8; 112][stride..]);
            r.push_response(&Response { id: 5, operation: 1, status: -1 }).unwrap();
            r.publish_responses();
            let snap = m.snapshot();
            assert_eq!(&snap[off..off + 12], &[5, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0xff, 0xff]);
            // The rest of the slot still holds the request tail.
            assert_eq!(&snap[off + rsp_len..off + stride], &req[rsp_len..stride]);
            assert_eq!(m.load_u32_acquire(RSP_PROD), 38);
        }
    }

    #[test]
    fn attach_resumes_at_shared_rsp_prod() {
        let m = FakeRingMem::new_ring(0);
        m.store_u32_release(RSP_PROD, u32::MAX - 1);
        m.store_u32_release(REQ_PROD, u32::MAX - 1);
        let mut r = BackRing::attach(&m, Abi::X86_32, 0).unwrap();
        assert_eq!(r.poll_requests(8, |_| ()).unwrap(), 0);
        m.store_u32_release(REQ_PROD, 2); // wrapped: 4 new requests
        assert_eq!(r.poll_requests(8, |_| ()).unwrap(), 4);
    }
}
