//! A simulated toolstack, blkfront and disks (feature `test-utils`), the
//! one harness of every blkback test and of the `blkback_ops` fuzz target.
//!
//! Everything runs on the `xen` crate's domain fakes: one
//! [`FakeXenstored`](xen::xenstore::fake::FakeXenstored) serving the
//! backend domain (the toolstack and the frontends write into it as dom0
//! would, with the permissions the toolstack sets), one
//! [`FakeGrants`](xen::gnttab::fake::FakeGrants) hub and one
//! [`FakeEvents`](xen::evtchn::fake::FakeEvents) hub shared by the backend
//! and the frontend domains. A [`Frontend`] grants its ring and data pages,
//! allocates unbound event channels, writes its keys and states, produces
//! blkif requests on its own view of the shared pages (a
//! [`xen_ring::mock::FrontRing`], which checks the backend never answers
//! more than was published) and consumes responses only when its event
//! channel fired (so a lost notification stalls the test).
//!
//! The backend is driven the way `ferrite`'s main loop drives it
//! ([`World::pump`]): watch events from the backend's own `XsClient` go to
//! `on_watch`, then `poll`, until nothing is busy.
//!
//! Helpers panic on harness misuse and on protocol violations by the
//! backend: they are test code.

mod disk;
mod frontend;
mod world;

pub use disk::{ram, Buf, DiskBytes, DiskEv, SlowDisk, TestDisk};
pub use frontend::{seg_bytes, DPage, FRing, Frontend, Opts};
pub use world::{world, world_with, World, SHARED};

use crate::abi::{self, Abi, IndirectX32, IndirectX64, RequestX32, RequestX64, Response, MAX_REQUEST_SIZE};
use crate::abi::{BLKIF_OP_INDIRECT, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY};
use std::collections::HashMap;
use std::format;
use std::string::String;
use std::vec::Vec;
use xen::types::{DomId, GrantRef};

/// Page size.
pub const PAGE: usize = 4096;
/// Sector size.
pub const SECT: usize = 512;
/// The driver domain running Ferrite.
pub const BE: DomId = DomId(1);
/// Virtual device number of `xvda` (blkif.h: 202 << 8).
pub const DEV: u32 = 51712;
/// Disk size in 512-byte sectors (2 MiB: room for a few 256-segment requests).
pub const DISK_SECTORS: u64 = 4096;

/// One request slot's bytes (either ABI; the tail past the ABI's size is
/// ignored).
pub type Req = [u8; MAX_REQUEST_SIZE];

// ---------------------------------------------------------------------------
// Logging: backend warnings show up in a failing test's output.

pub use xen::testlog::{capture_logs, init_log};

// ---------------------------------------------------------------------------
// Request encoding (both ABIs).

/// A read/write/flush/barrier request.
pub fn enc_rw(abi: Abi, op: u8, id: u64, sector: u64, segs: &[abi::Segment]) -> Req {
    let mut r = RequestX64 {
        operation: op,
        nr_segments: segs.len() as u8,
        handle: DEV as u16,
        id,
        sector_number: sector,
        ..Default::default()
    };
    for (d, s) in r.seg.iter_mut().zip(segs) {
        *d = *s;
    }
    let mut b = [0u8; MAX_REQUEST_SIZE];
    match abi {
        Abi::X86_64 => r.encode(&mut b),
        Abi::X86_32 => RequestX32::from(r).encode(&mut b),
    }
    b
}

/// An indirect request.
pub fn enc_indirect(abi: Abi, op: u8, nr: u16, id: u64, sector: u64, pages: &[GrantRef]) -> Req {
    let mut grefs = [0u32; 8];
    for (d, p) in grefs.iter_mut().zip(pages) {
        *d = p.0;
    }
    let r = IndirectX64 {
        operation: BLKIF_OP_INDIRECT,
        indirect_op: op,
        nr_segments: nr,
        id,
        sector_number: sector,
        handle: DEV as u16,
        indirect_grefs: grefs,
    };
    let mut b = [0u8; MAX_REQUEST_SIZE];
    match abi {
        Abi::X86_64 => r.encode(&mut b),
        Abi::X86_32 => IndirectX32::from(r).encode(&mut b),
    }
    b
}

/// Deterministic page contents, different for every (seed, byte).
pub fn pattern(seed: u32, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seed.wrapping_mul(2654435761).wrapping_add(i as u32 * 7 + (i as u32 >> 9))) as u8).collect()
}

/// The backend's home directory.
pub fn home() -> String {
    format!("/local/domain/{}", BE.0)
}

/// An OKAY answer.
pub fn okay(id: u64, op: u8) -> Response {
    Response { id, operation: op, status: BLKIF_RSP_OKAY }
}

/// An ERROR answer.
pub fn error(id: u64, op: u8) -> Response {
    Response { id, operation: op, status: BLKIF_RSP_ERROR }
}

/// Answers by id.
pub fn by_id(rsp: &[Response]) -> HashMap<u64, Response> {
    rsp.iter().map(|r| (r.id, *r)).collect()
}
