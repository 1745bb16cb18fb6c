//! Host test helpers (feature `test-utils`): a heap-backed ring window and
//! the frontend's side of a ring.
//!
//! The [`FrontRing`] plays a well-behaved frontend and checks what the
//! backend does to the shared header: it panics if the backend answers more
//! requests than were published (a ring invariant a fuzzer relies on).

use crate::{ring_size, RingEntry, RingMem, PAGE_SIZE, REQ_EVENT, REQ_PROD, RING_HEADER, RSP_EVENT, RSP_PROD};
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;

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

/// The frontend's side of a ring (`struct <name>_front_ring`), for tests.
#[derive(Debug)]
pub struct FrontRing<M: RingMem, E: RingEntry> {
    mem: M,
    entry: E,
    size: u32,
    req_prod_pvt: u32,
    rsp_cons: u32,
    /// The furthest `req_prod` ever published, by us or by
    /// [`FrontRing::poke_req_prod`]: the backend may answer up to here
    /// (slots we never filled, after a poke), never further.
    published: u32,
    /// What we last wrote to `req_prod` and `rsp_event` (the frontend's
    /// header fields), to check the backend never writes them.
    req_prod_written: u32,
    rsp_event_written: u32,
}

impl<M: RingMem, E: RingEntry> FrontRing<M, E> {
    /// `SHARED_RING_INIT` + `FRONT_RING_ATTACH` at index `start`: both
    /// producers at `start`, both events at `start + 1`. `mem` must be
    /// `PAGE_SIZE << order` bytes.
    pub fn init(mem: M, entry: E, order: u8, start: u32) -> Self {
        mem.store_u32_release(REQ_PROD, start);
        mem.store_u32_release(RSP_PROD, start);
        mem.store_u32_release(REQ_EVENT, start.wrapping_add(1));
        mem.store_u32_release(RSP_EVENT, start.wrapping_add(1));
        let size = ring_size(entry.entry_size(), order);
        FrontRing {
            mem,
            entry,
            size,
            req_prod_pvt: start,
            rsp_cons: start,
            published: start,
            req_prod_written: start,
            rsp_event_written: start.wrapping_add(1),
        }
    }

    /// Number of slots.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// The entry layout.
    pub fn entry(&self) -> &E {
        &self.entry
    }

    /// The shared memory.
    pub fn mem(&self) -> &M {
        &self.mem
    }

    /// Requests placed and not yet answered (answers not yet taken count
    /// as outstanding).
    pub fn outstanding(&self) -> u32 {
        self.req_prod_pvt.wrapping_sub(self.rsp_cons)
    }

    /// Our private request producer (`req_prod_pvt`).
    pub fn req_prod_pvt(&self) -> u32 {
        self.req_prod_pvt
    }

    /// Our response consumer (`rsp_cons`).
    pub fn rsp_cons(&self) -> u32 {
        self.rsp_cons
    }

    /// Free request slots.
    pub fn free_slots(&self) -> u32 {
        self.size.saturating_sub(self.outstanding())
    }

    /// Places a request in the next slot (not yet published). `false` if
    /// the ring is full.
    pub fn push_request(&mut self, req: &E::Request) -> bool {
        let mut b = vec![0u8; self.entry.request_size()];
        self.entry.encode_request(req, &mut b);
        self.push_bytes(&b)
    }

    /// Places raw request bytes (at most `request_size`; hostile tests) in
    /// the next slot. `false` if the ring is full.
    pub fn push_bytes(&mut self, bytes: &[u8]) -> bool {
        if self.size == 0 || self.free_slots() == 0 {
            return false;
        }
        let n = bytes.len().min(self.entry.request_size());
        let off = RING_HEADER + (self.req_prod_pvt & (self.size - 1)) as usize * self.entry.entry_size();
        self.mem.write(off, &bytes[..n]);
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
        true
    }

    /// `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`: publishes placed requests and
    /// says whether the backend asked for an event.
    pub fn publish(&mut self) -> bool {
        let old = self.mem.load_u32_acquire(REQ_PROD);
        let new = self.req_prod_pvt;
        self.mem.store_u32_release(REQ_PROD, new);
        self.req_prod_written = new;
        self.note_published(new);
        self.mem.fence();
        let ev = self.mem.load_u32_acquire(REQ_EVENT);
        new.wrapping_sub(ev) < new.wrapping_sub(old)
    }

    /// Writes `req_prod` directly (a hostile or buggy frontend). The
    /// backend may then answer slots we never filled, up to the furthest
    /// value ever published (see [`take_responses`](Self::take_responses)).
    pub fn poke_req_prod(&mut self, val: u32) {
        self.mem.store_u32_release(REQ_PROD, val);
        self.req_prod_written = val;
        self.note_published(val);
    }

    /// Moves the high-water mark of published `req_prod`s forward to `val`
    /// if `val` lies ahead of it (free-running indices: "ahead" is a
    /// wrapping distance below 2^31).
    fn note_published(&mut self, val: u32) {
        if val.wrapping_sub(self.published).wrapping_sub(1) < 1 << 31 {
            self.published = val;
        }
    }

    /// Checks the header fields only the frontend writes (`req_prod`,
    /// `rsp_event`) hold what it last wrote.
    ///
    /// # Panics
    /// If the backend wrote either.
    pub fn check_frontend_fields(&self) {
        assert_eq!(self.mem.load_u32_acquire(REQ_PROD), self.req_prod_written, "req_prod written by the backend");
        assert_eq!(self.mem.load_u32_acquire(RSP_EVENT), self.rsp_event_written, "rsp_event written by the backend");
    }

    /// Takes every published response, then `RING_FINAL_CHECK_FOR_RESPONSES`
    /// (re-arms `rsp_event`, looks again). Bounded to `max_rounds` rounds.
    ///
    /// # Panics
    /// If the backend published more responses than requests were ever
    /// published (`req_prod` values we or
    /// [`poke_req_prod`](Self::poke_req_prod) wrote): a ring invariant.
    pub fn take_responses(&mut self, max_rounds: usize) -> Vec<E::Response> {
        let mut out = Vec::new();
        if self.size == 0 {
            return out; // no ring a backend could attach to
        }
        let mut b = vec![0u8; self.entry.response_size()];
        for _ in 0..max_rounds {
            let prod = self.mem.load_u32_acquire(RSP_PROD);
            let n = prod.wrapping_sub(self.rsp_cons);
            let limit = self.published.wrapping_sub(self.rsp_cons);
            assert!(n <= limit, "backend published {n} responses, at most {limit} possible");
            for _ in 0..n {
                let off = RING_HEADER + (self.rsp_cons & (self.size - 1)) as usize * self.entry.entry_size();
                self.mem.read(off, &mut b);
                out.push(self.entry.decode_response(&b));
                self.rsp_cons = self.rsp_cons.wrapping_add(1);
            }
            if self.outstanding() > self.size {
                // Answers to slots we never filled (after a poke): count
                // them as ours.
                self.req_prod_pvt = self.rsp_cons;
            }
            self.mem.store_u32_release(RSP_EVENT, self.rsp_cons.wrapping_add(1));
            self.rsp_event_written = self.rsp_cons.wrapping_add(1);
            self.mem.fence();
            if self.mem.load_u32_acquire(RSP_PROD) == self.rsp_cons {
                break;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BackRing;

    /// 8-byte requests, 8-byte responses: both plain u64s.
    struct Words;
    impl RingEntry for Words {
        type Request = u64;
        type Response = u64;
        fn request_size(&self) -> usize {
            8
        }
        fn response_size(&self) -> usize {
            8
        }
        fn decode_request(&self, b: &[u8]) -> u64 {
            u64::from_le_bytes(b.try_into().unwrap())
        }
        fn encode_response(&self, r: &u64, out: &mut [u8]) {
            out.copy_from_slice(&r.to_le_bytes());
        }
        fn encode_request(&self, r: &u64, out: &mut [u8]) {
            out.copy_from_slice(&r.to_le_bytes());
        }
        fn decode_response(&self, b: &[u8]) -> u64 {
            u64::from_le_bytes(b.try_into().unwrap())
        }
    }

    /// Front and back over one window, across the u32 wrap, with odd batch
    /// sizes: every request answered once, in order, and each wake-up rule
    /// gives an event exactly when the peer sleeps.
    #[test]
    fn front_and_back_round_trip_across_wrap() {
        let m = FakeRingMem::new(PAGE_SIZE);
        let mut f = FrontRing::init(&m, Words, 0, u32::MAX - 300);
        let mut b = BackRing::attach(&m, Words, 0).unwrap();
        assert_eq!(f.size(), 256);
        let (mut next, mut expect) = (0u64, 0u64);
        for round in 0..40u64 {
            for _ in 0..(round * 7) % 23 + 1 {
                if f.push_request(&next) {
                    next += 1;
                }
            }
            let notify = f.publish();
            let mut got = Vec::new();
            b.poll_requests(usize::MAX, |r| got.push(r)).unwrap();
            assert!(notify || got.is_empty() || round > 0);
            for r in &got {
                b.push_response(&(r * 2)).unwrap();
            }
            b.publish_responses();
            assert!(!b.final_check_for_requests().unwrap());
            for r in f.take_responses(4) {
                assert_eq!(r, expect * 2);
                expect += 1;
            }
        }
        assert_eq!(expect, next);
        assert_eq!(f.outstanding(), 0);
        f.check_frontend_fields();
    }

    #[test]
    #[should_panic(expected = "responses")]
    fn over_answer_is_caught() {
        let m = FakeRingMem::new(PAGE_SIZE);
        let mut f = FrontRing::init(&m, Words, 0, 0);
        m.store_u32_release(RSP_PROD, 1);
        f.take_responses(1);
    }

    /// After a poke the backend may answer the slots up to the poked
    /// producer (garbage the frontend never filled), and no further.
    #[test]
    fn poked_producer_bounds_the_answers() {
        let m = FakeRingMem::new(PAGE_SIZE);
        let mut f = FrontRing::init(&m, Words, 0, 10);
        let mut b = BackRing::attach(&m, Words, 0).unwrap();
        assert!(f.push_request(&1));
        f.publish();
        f.poke_req_prod(14);
        let mut n = 0;
        b.poll_requests(usize::MAX, |_| n += 1).unwrap();
        assert_eq!(n, 4);
        for _ in 0..4 {
            b.push_response(&0).unwrap();
        }
        b.publish_responses();
        assert_eq!(f.take_responses(2).len(), 4);
        assert_eq!((f.outstanding(), f.rsp_cons()), (0, 14));
        // Poking backwards does not move the mark back.
        f.poke_req_prod(12);
        m.store_u32_release(RSP_PROD, 15);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f.take_responses(1)));
        assert!(r.is_err(), "an answer past everything published");
    }
}
