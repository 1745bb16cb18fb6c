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

/// Logs at `$lvl` through a vbd's [`xen::ratelimit::LogLimit`] at time
/// `$now` (everything a guest can trigger goes through one), appending how
/// many lines were suppressed before this one.
macro_rules! limited {
    ($limit:expr, $now:expr, $lvl:ident, $($arg:tt)+) => {
        if let Some(n) = $limit.allow($now) {
            log::$lvl!("{}{}", format_args!($($arg)+), xen::ratelimit::suppressed_note(n));
        }
    };
}
#[cfg(feature = "test-utils")]
extern crate std;

pub mod abi;
mod backend;
mod budget;
mod datapath;
mod engine;
mod grants;
mod idmap;
mod inflight;
mod pgrants;
pub mod request;
pub mod ring;
#[cfg(feature = "test-utils")]
pub mod testing;
mod vbd;
pub mod xenbus;
mod zerocopy;

pub use backend::{
    Blkback, Stats, MAX_BUFFER_BYTES, MAX_MAPPINGS, MAX_PERSISTENT_PER_RING, RING_BUDGET, RM_DELAY_NS, WATCH_PREFIX,
};
pub use datapath::{Latency, RingStats, LATENCY_BOUNDS_NS};

/// Grant references and event-channel ports as the frontend wrote them to
/// xenstore: the workspace's one set of id types.
pub use xen_types::{EvtchnPort, GrantRef};

/// What a vbd asks of the disk opener of [`Blkback::new`] when it is
/// discovered: its backend directory's `params` and `mode` nodes, and who
/// holds the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenRequest<'a> {
    /// The `params` node (xl's `target=`), trimmed; empty if absent.
    pub params: &'a str,
    /// `mode` is not `w` (xl writes `r` for read-only, `w` for read-write;
    /// anything else, or no `mode` at all, is taken as read-only: fail
    /// closed).
    pub readonly: bool,
    /// `"<frontend domid>/<devid>"`, e.g. `"5/51712"`: who holds the disk.
    pub holder: &'a str,
}

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

    /// What a vbd's frontend is told about `disk`: its size, its real
    /// logical block size, `VDISK_READONLY` if `readonly`; flush and
    /// barrier offered only when the disk has a volatile write cache (like
    /// Linux blkback: without one there is nothing to flush), discard only
    /// when the disk supports it; none of those on a read-only vbd.
    pub fn of<D: drivers::block::BlockDevice>(disk: &D, readonly: bool) -> Self {
        let bs = disk.block_size().max(abi::SECTOR_SIZE as u32);
        let f = disk.features();
        let cache = f.volatile_cache && !readonly;
        DiskInfo {
            sectors: disk.capacity().saturating_mul(u64::from(bs)) / abi::SECTOR_SIZE as u64,
            sector_size: bs,
            physical_sector_size: bs,
            readonly,
            removable: false,
            cdrom: false,
            flush: cache,
            barrier: cache,
            discard: (f.discard && !readonly).then_some(DiscardInfo { granularity: bs, alignment: 0, secure: false }),
        }
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
