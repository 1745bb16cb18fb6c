#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! Pure protocol core of Ferrite's Xen block backend (blkback).
//!
//! Nothing here performs I/O. The crate is split the way the protocol is:
//!
//! * [`abi`]: the blkif wire layouts for the two x86 ABIs, declared once as
//!   `repr(C)` structs, size- and offset-checked at compile time, with
//!   byte-level encode/decode.
//! * [`ring`]: a back-end view of a Xen shared ring (`io/ring.h`) over a
//!   small [`ring::RingMem`] trait, treating the shared page as hostile.
//! * [`request`]: validation of one copied request into a typed
//!   [`request::Request`], or a [`request::Reject`] carrying the blkif
//!   status to answer with.
//! * [`xenbus`]: the vbd backend's xenbus handshake as a state machine,
//!   `BackendFsm::step(Event) -> Effects`.
//!
//! The I/O shell (grant mapping, event channels, xenstore, the disk) lives
//! elsewhere and drives these pieces:
//!
//! * xenstore watches and reads become [`xenbus::Event`]s; the shell carries
//!   out the returned [`xenbus::Effect`]s in order (`MapRings` maps each
//!   queue's `ring_refs` as one contiguous window of `1 << order` pages and
//!   wraps it in a [`ring::BackRing`]).
//! * Per ring, on an event: `poll_requests(budget, ..)`, then for each copy
//!   [`request::parse`]; a `Reject` is answered at once with
//!   `push_response(&reject.response())` (log the first per device via
//!   [`request::RejectLog`]); a `Request` goes to the disk, and on completion
//!   `push_response(&req.response(status))`. After a batch,
//!   `publish_responses()` says whether to notify the frontend. When the
//!   budget was not used up, `final_check_for_requests()` decides between
//!   polling again and sleeping until the next event.
//! * Indirect requests: copy the pages in `IndirectRequest::pages()` once
//!   into private buffers, then [`request::parse_indirect_segments`].
//! * A ring that reports [`ring::RingError::Broken`] is dead: stop polling it,
//!   log once, and leave it to the handshake to tear down.

extern crate alloc;

pub mod abi;
pub mod request;
pub mod ring;
pub mod shell;
pub mod xenbus;

/// Grant references and event-channel ports as the frontend wrote them to
/// xenstore: the workspace's one set of id types.
pub use xen_types::{EvtchnPort, GrantRef};

/// What the backend knows about the disk it exports.
///
/// This comes from our own configuration / the backing device, never from
/// the guest, so it is trusted; still, the code using it avoids panicking on
/// odd values (e.g. a zero sector size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskInfo {
    /// Size in 512-byte units (the xenstore `sectors` node).
    pub sectors: u64,
    /// Logical block size in bytes: a power of two, at least 512.
    pub sector_size: u32,
    /// Physical block size in bytes: a multiple of `sector_size`.
    pub physical_sector_size: u32,
    /// Refuse writes, discards, flushes and barriers (`VDISK_READONLY`).
    pub readonly: bool,
    /// The device is removable media (`VDISK_REMOVABLE`).
    pub removable: bool,
    /// The device is a CD-ROM (`VDISK_CDROM`).
    pub cdrom: bool,
    /// Offer `BLKIF_OP_FLUSH_DISKCACHE` (`feature-flush-cache`).
    pub flush: bool,
    /// Offer `BLKIF_OP_WRITE_BARRIER` (`feature-barrier`).
    pub barrier: bool,
    /// Offer `BLKIF_OP_DISCARD` (`feature-discard`), with these parameters.
    pub discard: Option<DiscardInfo>,
}

impl DiskInfo {
    /// The xenstore `info` bitmap (`VDISK_*`).
    pub fn vdisk_info(&self) -> u32 {
        let mut info = 0;
        if self.cdrom {
            info |= abi::VDISK_CDROM;
        }
        if self.removable {
            info |= abi::VDISK_REMOVABLE;
        }
        if self.readonly {
            info |= abi::VDISK_READONLY;
        }
        info
    }

    /// Logical block size in 512-byte units, at least 1.
    pub(crate) fn lbs_sectors(&self) -> u64 {
        u64::from(self.sector_size / abi::SECTOR_SIZE as u32).max(1)
    }
}

/// Discard parameters published to the frontend (blkif.h notes 4, 5, 10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiscardInfo {
    /// Size in bytes of one discardable extent (`discard-granularity`).
    pub granularity: u32,
    /// Offset in bytes of the first extent (`discard-alignment`).
    pub alignment: u32,
    /// Secure discard supported (`discard-secure`).
    pub secure: bool,
}
