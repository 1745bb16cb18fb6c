#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! The back end of a Xen shared ring (`xen/include/public/io/ring.h`), for
//! any device kind.
//!
//! Shared ring layout (`struct <name>_sring`), offsets in bytes:
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
//! 64-byte header (`__CONST_RING_SIZE`). A ring may span `1 << order`
//! separately mapped pages ([`PagesMem`]).
//!
//! What one slot holds is the device kind's business: a [`RingEntry`] gives
//! the request and response sizes and their byte codecs (blkif implements it
//! for its two x86 ABIs, a netif would for its tx and rx rings).
//!
//! * [`BackRing`]: the backend's side, hardened against a hostile frontend.
//! * [`PagesMem`]: ring memory made of separately mapped pages.
//! * `mock` (feature `test-utils`): a heap-backed ring window and the
//!   frontend's side of a ring, for host tests of ring users.

extern crate alloc;

mod back;
mod entry;
#[cfg(any(test, feature = "test-utils"))]
pub mod mock;
mod pages;

pub use back::{BackRing, RingError};
pub use entry::RingEntry;
pub use pages::PagesMem;

/// A window of memory shared with the frontend, addressed by byte offset:
/// the runtime's [`SharedMem`](xen::shmem::SharedMem) (mapped grant pages
/// on Xen, a buffer in tests). Out-of-range offsets are a caller bug
/// (implementations may panic); every offset this crate passes is derived
/// from the ring geometry checked at [`BackRing::attach`].
pub use xen::shmem::SharedMem as RingMem;

/// Size of one ring page.
pub const PAGE_SIZE: usize = 4096;
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

/// Ring entries of `entry_size` bytes in `1 << order` pages: the largest
/// power of two with `64 + n * entry_size <= pages * 4096`
/// (`__CONST_RING_SIZE`). Zero when not even one entry fits (or for a zero
/// entry size or an order above [`MAX_RING_PAGE_ORDER`]): such a ring is
/// refused by [`BackRing::attach`].
pub const fn ring_size(entry_size: usize, order: u8) -> u32 {
    if entry_size == 0 || order > MAX_RING_PAGE_ORDER {
        return 0;
    }
    // order <= 4: at most 64 KiB, no overflow.
    let n = ((PAGE_SIZE << order) - RING_HEADER) / entry_size;
    if n == 0 {
        return 0;
    }
    1 << (usize::BITS - 1 - n.leading_zeros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn const_ring_size() {
        // (4096 - 64) / 112 = 36 -> 32; (4096 - 64) / 108 = 37 -> 32.
        assert_eq!(ring_size(112, 0), 32);
        assert_eq!(ring_size(108, 0), 32);
        assert_eq!(ring_size(112, 1), 64);
        assert_eq!(ring_size(112, 4), 512);
        // netif tx: 12-byte entries -> 336 -> 256.
        assert_eq!(ring_size(12, 0), 256);
        assert_eq!(ring_size(4032, 0), 1);
        assert_eq!(ring_size(4033, 0), 0);
        assert_eq!(ring_size(0, 0), 0);
        assert_eq!(ring_size(112, 5), 0);
    }
}
