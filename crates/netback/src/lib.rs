#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! Ferrite's Xen network backend (netback).
//!
//! The protocol core does no I/O:
//!
//! * [`abi`]: the netif wire layouts (`io/netif.h`), `repr(C)`, size- and
//!   offset-checked, byte codecs, and the tx/rx ring entry layouts for the
//!   generic [`xen_ring::BackRing`].
//! * [`tx`]: a guest's transmit slots (first slot, extras, fragments)
//!   delimited, validated into a copy plan and turned into a
//!   [`net::Frame`] with checked offload state.
//! * [`xenbus`]: the vif handshake as a state machine, and the frontend's
//!   keys parsed.
//! * [`credit`]: transmit rate limiting (the `rate` node).
//! * [`ctrl`]: the control ring's messages (Toeplitz hash, key, mapping
//!   table) that steer received frames to the frontend's queues.
//!
//! [`Netback`] drives them against xenstore, grants and event channels:
//!
//! * `backend`: the public [`Netback`], its limits and counters.
//! * `vif`: netback as a [`xen_backend::DeviceKind`] (discovery, watches,
//!   hotplug nodes, retire and directory removal are
//!   [`xen_backend::Lifecycle`]'s); connect and disconnect.
//! * `datapath`: the poll: tx rings taken into frames (data of a turn's
//!   packets moved by one batched grant copy into a staging buffer), the
//!   control rings answered.
//! * `deliver`: frames copied into rx rings, with the per-queue backlog.
//! * `copy`: grant copy (or map fallback) between guest pages and the
//!   staging buffer.
//! * `testing` (feature `test-utils`): a simulated Linux netfront and
//!   toolstack over the `xen` crate's fakes.
//!
//! Everything the frontend writes is hostile: slots are copied out of the
//! ring once and validated from the copy; every loop is bounded; bad
//! packets are answered `NETIF_RSP_ERROR` on every slot they used; a
//! frontend that breaks the ring or chains more slots than any packet may
//! have loses its queue's transmit side; guest-triggered log lines go
//! through each vif's [`xen::ratelimit::LogLimit`].

extern crate alloc;
#[cfg(feature = "test-utils")]
extern crate std;

/// Logs at `$lvl` through a vif's [`xen::ratelimit::LogLimit`] at time
/// `$now`, appending how many lines were suppressed before this one.
macro_rules! limited {
    ($limit:expr, $now:expr, $lvl:ident, $($arg:tt)+) => {
        if let Some(n) = $limit.allow($now) {
            log::$lvl!("{}{}", format_args!($($arg)+), xen::ratelimit::suppressed_note(n));
        }
    };
}

pub mod abi;
mod backend;
mod copy;
pub mod credit;
pub mod ctrl;
mod datapath;
mod deliver;
#[cfg(feature = "test-utils")]
pub mod testing;
pub mod tx;
mod vif;
pub mod xenbus;

pub use backend::{
    Drop, NetConfig, Netback, Stats, VifInfo, VifStats, CTRL_BUDGET, RX_BACKLOG_BYTES, RX_BACKLOG_FRAMES, RX_RETRY_NS,
    STAGING_BYTES, TX_BUDGET, WATCH_PREFIX,
};

/// Event-channel ports, the workspace's one id type.
pub use xen_types::EvtchnPort;

/// A vif, by the lifecycle's device id (unique for the life of the
/// [`Netback`], never reused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VifId(pub u32);
