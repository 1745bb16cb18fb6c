#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! Ferrite's Xen block backend (blkback).
//!
//! The protocol core does no I/O:
//!
//! * [`abi`]: the blkif wire layouts for the two x86 ABIs, declared once as
//!   `repr(C)` structs, size- and offset-checked at compile time, with
//!   byte-level encode/decode.
//! * [`ring`]: blkif's instance of the generic [`xen_ring::BackRing`] (the
//!   [`abi::Abi`] is the ring's entry layout), treating the shared pages as
//!   hostile.
//! * [`request`]: validation of one copied request into a typed
//!   [`request::Request`], or a [`request::Reject`] carrying the blkif
//!   status to answer with.
//! * [`xenbus`]: the vbd backend's xenbus handshake as a state machine,
//!   `BackendFsm::step(Event) -> Effects`.
//!
//! [`Blkback`] drives them against xenstore, grants, event channels and a
//! [`drivers::block::BlockDevice`], split by concern:
//!
//! * `backend`: the public [`Blkback`] and its limits.
//! * `vbd`: the vbd lifecycle glue: blkback as a [`xen_backend::DeviceKind`]
//!   (discovery, watches, hotplug nodes, retire and directory removal are
//!   [`xen_backend::Lifecycle`]'s); the handshake's effects carried out.
//! * `engine`: the disk and the work on it shared by every ring; one poll
//!   pass over all ring contexts, round-robin.
//! * `datapath`: one ring's polling context: requests validated, turned
//!   into disk work, split for the disk, submitted in order, answered.
//! * `grants`: moving data between granted pages and disk buffers (grant
//!   copy, persistent and transient mappings).
//! * `budget`: disk buffer bytes, bounded for all rings and shared fairly.
//! * `testing` (feature `test-utils`): a simulated blkfront, toolstack and
//!   disks over the `xen` crate's fakes, used by every blkback test and the
//!   fuzz targets.
//!
//! A ring that reports [`ring::RingError::Broken`] is dead: it is not
//! polled again, logged once, and left to the handshake to tear down.

extern crate alloc;
#[cfg(feature = "test-utils")]
extern crate std;

pub mod abi;
mod backend;
mod budget;
mod datapath;
mod engine;
mod grants;
pub mod request;
pub mod ring;
#[cfg(feature = "test-utils")]
pub mod testing;
mod vbd;
pub mod xenbus;

pub use backend::{Blkback, Stats, MAX_BUFFER_BYTES, MAX_PERSISTENT_PER_RING, RING_BUDGET, RM_DELAY_NS, WATCH_PREFIX};
pub use datapath::RingStats;

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
