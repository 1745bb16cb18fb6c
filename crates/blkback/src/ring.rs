//! blkif's shared ring: the generic [`xen_ring::BackRing`] over blkif
//! entries, for both x86 ABIs.
//!
//! A slot holds the union of `blkif_request` (112 bytes on x86_64, 108 on
//! x86_32) and `blkif_response` (16 / 12 bytes); the frontend's `protocol`
//! key picks the [`Abi`], which is the ring's [`RingEntry`]. Requests come
//! out as [`RawRequest`] copies for [`request::parse`](crate::request::parse).

use crate::abi::{Abi, RawRequest, Response, MAX_REQUEST_SIZE};
use xen_ring::RingEntry;

pub use xen_ring::{
    BackRing, PagesMem, RingError, RingMem, MAX_RING_PAGE_ORDER, REQ_EVENT, REQ_PROD, RING_HEADER, RSP_EVENT, RSP_PROD,
};

/// The backend's side of one blkif ring.
pub type BlkRing<M> = BackRing<M, Abi>;

/// Ring entries for `abi` in `1 << order` pages: the largest power of two
/// with `64 + n * entry_size <= pages * 4096`.
pub const fn ring_size(abi: Abi, order: u8) -> u32 {
    xen_ring::ring_size(abi.entry_size(), order)
}

impl RingEntry for Abi {
    type Request = RawRequest;
    type Response = Response;

    fn request_size(&self) -> usize {
        Abi::request_size(*self)
    }
    fn response_size(&self) -> usize {
        Abi::response_size(*self)
    }
    fn entry_size(&self) -> usize {
        Abi::entry_size(*self)
    }
    /// Bytes past the ABI's request size are zero.
    fn decode_request(&self, bytes: &[u8]) -> RawRequest {
        let mut raw = RawRequest { abi: *self, bytes: [0; MAX_REQUEST_SIZE] };
        let n = bytes.len().min(MAX_REQUEST_SIZE);
        raw.bytes[..n].copy_from_slice(&bytes[..n]);
        raw
    }
    fn encode_response(&self, rsp: &Response, out: &mut [u8]) {
        let b = rsp.encode(*self);
        let n = out.len().min(b.len());
        out[..n].copy_from_slice(&b[..n]);
    }
    fn encode_request(&self, req: &RawRequest, out: &mut [u8]) {
        let n = out.len().min(MAX_REQUEST_SIZE);
        out[..n].copy_from_slice(&req.bytes[..n]);
    }
    fn decode_response(&self, bytes: &[u8]) -> Response {
        let mut b = [0u8; 16];
        let n = bytes.len().min(16);
        b[..n].copy_from_slice(&bytes[..n]);
        Response::decode(*self, &b)
    }
}

#[cfg(test)]
mod tests {
    //! blkif-specific ring tests; the ring's own hardening is tested in
    //! `xen-ring` (same assertions, a blkif-shaped entry).
    use super::*;
    use xen_ring::mock::FakeRingMem;

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
            let mut r = BlkRing::attach(&m, abi, 1).unwrap();
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
        let mut r = BlkRing::attach(&m, Abi::X86_32, 0).unwrap();
        assert_eq!(r.poll_requests(8, |_| ()).unwrap(), 0);
        m.store_u32_release(REQ_PROD, 2); // wrapped: 4 new requests
        assert_eq!(r.poll_requests(8, |_| ()).unwrap(), 4);
    }
}
