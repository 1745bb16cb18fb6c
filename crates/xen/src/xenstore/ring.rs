//! The xenstore shared page: `struct xenstore_domain_interface`
//! (`xen/include/public/io/xs_wire.h`).
//!
//! ```text
//! offset  size  field
//!      0  1024  req[]            guest -> xenstored bytes
//!   1024  1024  rsp[]            xenstored -> guest bytes (replies, watch events)
//!   2048     4  req_cons         written by xenstored
//!   2052     4  req_prod         written by us
//!   2056     4  rsp_cons         written by us
//!   2060     4  rsp_prod         written by xenstored
//!   2064     4  server_features  bit 0: reconnection, bit 1: `error` field
//!   2068     4  connection       0 connected, 1 reconnect in progress
//!   2072     4  error            0 none, 1 communication, 2 bad ring index
//! ```
//!
//! Indices are free-running `u32`s; the byte for index `i` sits at
//! `i & (RING_SIZE - 1)`. Both rings are byte streams: messages wrap around
//! the end of the array and may be split across several steps.
//!
//! The daemon can write anything to its indices. Each step reads every index
//! once, checks `prod - cons <= RING_SIZE` with wrapping arithmetic and
//! returns [`XsError::RingBroken`] otherwise, so no loop depends on them.

use super::XsError;
use crate::shmem::SharedMem;

/// `XENSTORE_RING_SIZE`: bytes in each direction.
pub const RING_SIZE: usize = 1024;
/// Offset of `req[]`.
pub const REQ_OFF: usize = 0;
/// Offset of `rsp[]`.
pub const RSP_OFF: usize = 1024;
/// Offset of `req_cons`.
pub const REQ_CONS: usize = 2048;
/// Offset of `req_prod`.
pub const REQ_PROD: usize = 2052;
/// Offset of `rsp_cons`.
pub const RSP_CONS: usize = 2056;
/// Offset of `rsp_prod`.
pub const RSP_PROD: usize = 2060;
/// Offset of `server_features`.
pub const SERVER_FEATURES: usize = 2064;
/// Offset of `connection`.
pub const CONNECTION: usize = 2068;
/// Offset of `error`.
pub const ERROR: usize = 2072;
/// Bytes of the page this module touches.
pub const INTERFACE_LEN: usize = 2076;

/// `XENSTORE_SERVER_FEATURE_ERROR`: the `error` field is meaningful.
pub const FEATURE_ERROR: u32 = 2;

/// `MASK_XENSTORE_IDX`.
#[inline]
pub fn mask(idx: u32) -> usize {
    idx as usize & (RING_SIZE - 1)
}

/// Bytes in flight between `cons` and `prod`, or `RingBroken` when the
/// producer claims to be more than a ring ahead (or behind) of the consumer.
#[inline]
pub fn in_flight(prod: u32, cons: u32) -> Result<usize, XsError> {
    // Wrapping difference is correct across the 2^32 index wrap.
    let used = prod.wrapping_sub(cons) as usize;
    if used > RING_SIZE {
        Err(XsError::RingBroken)
    } else {
        Ok(used)
    }
}

/// The guest side of both rings on one shared page.
pub struct XsRing<M: SharedMem> {
    mem: M,
}

impl<M: SharedMem> XsRing<M> {
    /// Wraps the xenstore page.
    ///
    /// # Panics
    /// If `mem` is shorter than [`INTERFACE_LEN`]: that is a wiring bug in
    /// the caller, not something the daemon controls.
    pub fn new(mem: M) -> Self {
        assert!(mem.len() >= INTERFACE_LEN, "xenstore page too small");
        XsRing { mem }
    }

    /// The underlying page.
    pub fn mem(&self) -> &M {
        &self.mem
    }

    /// Copies as much of `data` as fits into the request ring and publishes
    /// it. Returns the number of bytes written (0 when the ring is full).
    pub fn write_some(&self, data: &[u8]) -> Result<usize, XsError> {
        // Acquire: xenstored's reads of the bytes below `req_cons` complete
        // before we overwrite those slots.
        let cons = self.mem.load_u32_acquire(REQ_CONS);
        // Our own index, but it lives in memory the daemon can write, so it
        // is read once and checked like any other.
        let prod = self.mem.load_u32_acquire(REQ_PROD);
        let free = RING_SIZE - in_flight(prod, cons)?;
        let n = free.min(data.len());
        if n == 0 {
            return Ok(0);
        }
        // At most two chunks: up to the end of the array, then from its start.
        let start = mask(prod);
        let first = n.min(RING_SIZE - start);
        self.mem.write(REQ_OFF + start, &data[..first]);
        if first < n {
            self.mem.write(REQ_OFF, &data[first..n]);
        }
        // Release: the request bytes are visible before the new `req_prod`.
        // `n <= RING_SIZE`, so the cast is lossless.
        self.mem.store_u32_release(REQ_PROD, prod.wrapping_add(n as u32));
        Ok(n)
    }

    /// Copies up to `buf.len()` reply bytes out of the response ring and
    /// frees their slots. Returns the number of bytes copied (0 when empty).
    pub fn read_some(&self, buf: &mut [u8]) -> Result<usize, XsError> {
        // Acquire: the daemon's writes of the bytes below `rsp_prod` are
        // visible before we copy them.
        let prod = self.mem.load_u32_acquire(RSP_PROD);
        let cons = self.mem.load_u32_acquire(RSP_CONS);
        let n = in_flight(prod, cons)?.min(buf.len());
        if n == 0 {
            return Ok(0);
        }
        let start = mask(cons);
        let first = n.min(RING_SIZE - start);
        self.mem.read(RSP_OFF + start, &mut buf[..first]);
        if first < n {
            self.mem.read(RSP_OFF, &mut buf[first..n]);
        }
        // Release: our copies of those bytes complete before the daemon can
        // see the slots as free and overwrite them.
        self.mem.store_u32_release(RSP_CONS, cons.wrapping_add(n as u32));
        Ok(n)
    }

    /// Whether reply bytes are waiting (checks the indices too).
    pub fn rsp_pending(&self) -> Result<bool, XsError> {
        // Acquire pairs with the daemon's release of `rsp_prod`.
        let prod = self.mem.load_u32_acquire(RSP_PROD);
        let cons = self.mem.load_u32_acquire(RSP_CONS);
        Ok(in_flight(prod, cons)? > 0)
    }

    /// `RingBroken` if the daemon advertises the `error` field and has set it
    /// (it does so on a bad ring index or communication failure).
    pub fn check_server_error(&self) -> Result<(), XsError> {
        let features = self.mem.load_u32_acquire(SERVER_FEATURES);
        if features & FEATURE_ERROR != 0 && self.mem.load_u32_acquire(ERROR) != 0 {
            return Err(XsError::RingBroken);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shmem::VecShared;
    use alloc::vec;
    use alloc::vec::Vec;

    fn page() -> XsRing<VecShared> {
        XsRing::new(VecShared::new(4096))
    }

    #[test]
    fn write_respects_consumer_and_wraps() {
        let r = page();
        let m = r.mem();
        // Start near the end of the array and near the u32 wrap.
        let base = u32::MAX - 9;
        m.store_u32_release(REQ_CONS, base);
        m.store_u32_release(REQ_PROD, base);
        let data: Vec<u8> = (0..1500u32).map(|i| i as u8).collect();
        assert_eq!(r.write_some(&data).unwrap(), RING_SIZE);
        // Full: nothing more goes in, nothing unconsumed is overwritten.
        assert_eq!(r.write_some(&data[RING_SIZE..]).unwrap(), 0);
        assert_eq!(m.load_u32_acquire(REQ_PROD), base.wrapping_add(1024));
        let snap = m.snapshot();
        for (i, &b) in data[..RING_SIZE].iter().enumerate() {
            let idx = mask(base.wrapping_add(i as u32));
            assert_eq!(snap[REQ_OFF + idx], b);
        }
        // Consumer frees 100 bytes; exactly 100 more fit.
        m.store_u32_release(REQ_CONS, base.wrapping_add(100));
        assert_eq!(r.write_some(&data[RING_SIZE..]).unwrap(), 100);
    }

    #[test]
    fn read_wraps_and_frees() {
        let r = page();
        let m = r.mem();
        let base = 1000u32;
        m.store_u32_release(RSP_CONS, base);
        let msg: Vec<u8> = (0..50u8).collect();
        for (i, b) in msg.iter().enumerate() {
            m.write(RSP_OFF + mask(base + i as u32), &[*b]);
        }
        m.store_u32_release(RSP_PROD, base + 50);
        let mut buf = vec![0u8; 7];
        let mut got = Vec::new();
        loop {
            let n = r.read_some(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, msg);
        assert_eq!(m.load_u32_acquire(RSP_CONS), base + 50);
        assert!(!r.rsp_pending().unwrap());
    }

    #[test]
    fn impossible_indices_are_errors() {
        let r = page();
        let m = r.mem();
        m.store_u32_release(RSP_PROD, 1025);
        assert_eq!(r.read_some(&mut [0u8; 4]), Err(XsError::RingBroken));
        assert_eq!(r.rsp_pending(), Err(XsError::RingBroken));
        // Producer behind the consumer is just as broken.
        m.store_u32_release(RSP_PROD, 0);
        m.store_u32_release(RSP_CONS, 5);
        assert_eq!(r.read_some(&mut [0u8; 4]), Err(XsError::RingBroken));
        m.store_u32_release(REQ_CONS, 3000);
        assert_eq!(r.write_some(b"x"), Err(XsError::RingBroken));
        // Exactly one ring ahead is legal (full).
        m.store_u32_release(REQ_CONS, 0);
        m.store_u32_release(REQ_PROD, 1024);
        assert_eq!(r.write_some(b"x"), Ok(0));
    }

    #[test]
    fn server_error_field() {
        let r = page();
        r.mem().store_u32_release(ERROR, 2);
        // Ignored unless the feature bit says the field exists.
        assert_eq!(r.check_server_error(), Ok(()));
        r.mem().store_u32_release(SERVER_FEATURES, FEATURE_ERROR);
        assert_eq!(r.check_server_error(), Err(XsError::RingBroken));
    }
}
