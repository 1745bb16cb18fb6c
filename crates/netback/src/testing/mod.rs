//! A simulated toolstack and Linux netfront (feature `test-utils`), the
//! one harness of every netback test and of the netback fuzz targets.
//!
//! Everything runs on the `xen` crate's domain fakes: one
//! [`FakeXenstored`](xen::xenstore::fake::FakeXenstored) (the toolstack and
//! the frontends write into it as dom0 would), one grant hub and one event
//! hub shared by the backend and the frontend domains. A [`Netfront`]
//! grants its ring and packet pages, allocates event channels, writes the
//! keys Linux netfront writes, produces tx slots and rx requests on its own
//! view of the shared pages ([`xen_ring::mock::FrontRing`], which checks the
//! backend never answers more than was published) and takes responses only
//! when its event channel fired (a lost notification stalls the test).
//!
//! Helpers panic on harness misuse and on protocol violations by the
//! backend: they are test code.

mod front;
mod pkt;
mod world;

pub use front::{FQueue, FrontOpts, Netfront, RxPacket, TxPkt};
pub use pkt::{tcp4, tcp6, udp4, udp6};
pub use world::{world, world_with, TestBuf, World};

use std::format;
use std::string::String;
use xen::types::DomId;

/// The driver domain running Ferrite.
pub const BE: DomId = DomId(1);
/// The vif's device id.
pub const DEVID: u32 = 0;
/// Page size.
pub const PAGE: usize = 4096;

/// The backend's home directory.
pub fn home() -> String {
    format!("/local/domain/{}", BE.0)
}

pub use xen::testlog::{capture_logs, init_log};
