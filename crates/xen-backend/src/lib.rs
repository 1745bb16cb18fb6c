#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! The lifecycle every Xen backend device kind shares (blkback's vbds now,
//! netback's vifs next).
//!
//! The toolstack creates `backend/<kind>/<frontend-domid>/<devid>` under our
//! home and the frontend's directory; a backend adopts the device, publishes
//! its side of the xenbus handshake, follows the frontend's `state`, and when
//! the device is finished retires it and (as a driver domain must) removes
//! its backend directory a little later.
//!
//! * [`state`]: `XenbusState` and the strict xenstore integer parser.
//! * [`node`]: writes that never re-create a directory the toolstack
//!   removed, and a device's view of xenstore ([`DeviceXs`]).
//! * [`lifecycle`]: [`Lifecycle`], the device table: discovery from watch
//!   events and rescans, watch tokens, frontend-gone detection, hotplug
//!   nodes, retire and delayed directory removal, the maintenance tick;
//!   generic over a [`DeviceKind`], which decides what happens on each
//!   [`DeviceEvent`] (its handshake, connect, disconnect).

extern crate alloc;

pub mod lifecycle;
pub mod node;
pub mod state;

pub use lifecycle::{Device, DeviceEvent, DeviceKind, Lifecycle, Outcome, RM_DELAY_NS};
pub use node::{write_existing, DeviceXs};
pub use state::{parse_u32, XenbusState};
