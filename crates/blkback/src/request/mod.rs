//! Validation of a copied blkif request into a typed [`Request`].
//!
//! Input is a [`RawRequest`] the ring already copied out of shared memory,
//! so every field is read from a private buffer exactly once. Output is
//! either a [`Request`] whose every number has been checked against the disk,
//! or a [`Reject`] carrying the `id`, operation and status to answer with.
//!
//! Rules (after Linux blkback's `dispatch_rw_block_io`,
//! `xen_blkbk_parse_indirect`, `dispatch_discard_io`, `xen_vbd_translate`):
//!
//! * read/write carry 1..=11 segments; flush and barrier 0..=11 (data, if
//!   any, is written as part of the request);
//! * each segment has `first_sect <= last_sect <= 7`;
//! * `sector_number + total sectors` is computed with checked arithmetic and
//!   must not pass the end of the disk;
//! * with a logical block size above 512, start sector and segment bounds
//!   must be aligned to it;
//! * indirect requests carry `indirect_op` read or write and 1..=256
//!   segments (our advertised `feature-max-indirect-segments`), in
//!   `ceil(n / 512)` indirect pages;
//! * operations we do not know, or whose feature the disk does not offer,
//!   answer `BLKIF_RSP_EOPNOTSUPP`; anything else malformed answers
//!   `BLKIF_RSP_ERROR`.

use crate::abi::{
    self, RawRequest, Response, BLKIF_DISCARD_SECURE, BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT,
    BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY,
    MAX_INDIRECT_PAGES_PER_REQUEST, MAX_SEGMENTS_PER_REQUEST, SECTORS_PER_PAGE, SECTOR_SIZE,
    SEGMENTS_PER_INDIRECT_PAGE,
};
use crate::{DiskInfo, GrantRef};
use alloc::vec::Vec;
use core::fmt;

/// Largest indirect segment count we accept; published as
/// `feature-max-indirect-segments` (Linux's `MAX_INDIRECT_SEGMENTS`).
pub const MAX_INDIRECT_SEGMENTS: u16 = 256;

/// Indirect pages needed for `nr_segments` segments: `ceil(n / 512)`.
pub const fn indirect_pages(nr_segments: u16) -> usize {
    (nr_segments as usize).div_ceil(SEGMENTS_PER_INDIRECT_PAGE)
}

/// A blkif completion status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// `BLKIF_RSP_OKAY`.
    Okay,
    /// `BLKIF_RSP_ERROR`.
    Error,
    /// `BLKIF_RSP_EOPNOTSUPP`.
    NotSupported,
}

impl Status {
    /// The wire value.
    pub const fn to_wire(self) -> i16 {
        match self {
            Status::Okay => BLKIF_RSP_OKAY,
            Status::Error => BLKIF_RSP_ERROR,
            Status::NotSupported => BLKIF_RSP_EOPNOTSUPP,
        }
    }
}

/// One validated data segment: `first_sect <= last_sect < 8`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    gref: GrantRef,
    first_sect: u8,
    last_sect: u8,
}

impl Segment {
    /// Checks a wire segment.
    fn check(s: abi::Segment) -> Result<Segment, RejectReason> {
        if s.first_sect > s.last_sect {
            return Err(RejectReason::FirstAfterLast);
        }
        if usize::from(s.last_sect) >= SECTORS_PER_PAGE {
            return Err(RejectReason::LastSectBeyondPage);
        }
        Ok(Segment { gref: GrantRef(s.gref), first_sect: s.first_sect, last_sect: s.last_sect })
    }

    /// The data page's grant.
    pub fn gref(&self) -> GrantRef {
        self.gref
    }
    /// First sector within the page.
    pub fn first_sect(&self) -> u8 {
        self.first_sect
    }
    /// Last sector within the page (inclusive).
    pub fn last_sect(&self) -> u8 {
        self.last_sect
    }
    /// Sectors covered, 1..=8.
    pub fn sectors(&self) -> u64 {
        u64::from(self.last_sect - self.first_sect) + 1
    }
    /// Byte offset of the data within the page, `< 4096`.
    pub fn offset(&self) -> usize {
        usize::from(self.first_sect) * SECTOR_SIZE
    }
    /// Byte length of the data, `offset() + len() <= 4096`.
    pub fn len(&self) -> usize {
        self.sectors() as usize * SECTOR_SIZE
    }
    /// Always false: a segment covers at least one sector.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Up to 11 segments of a direct request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirectSegments {
    len: u8,
    segs: [Segment; MAX_SEGMENTS_PER_REQUEST],
}

impl DirectSegments {
    /// The segments, in request order.
    pub fn as_slice(&self) -> &[Segment] {
        &self.segs[..usize::from(self.len)]
    }
}

/// Direction of an indirect request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataOp {
    /// `BLKIF_OP_READ`.
    Read,
    /// `BLKIF_OP_WRITE`.
    Write,
}

/// A validated indirect request, segments still to be fetched.
///
/// The shell copies the [`pages`](Self::pages) once and hands them to
/// [`parse_indirect_segments`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndirectRequest {
    /// Guest cookie.
    pub id: u64,
    /// Virtual device handle (not interpreted).
    pub handle: u16,
    /// Read or write.
    pub op: DataOp,
    /// Start sector.
    pub sector: u64,
    /// Segments in the indirect pages, 1..=256.
    pub nr_segments: u16,
    grefs: [GrantRef; MAX_INDIRECT_PAGES_PER_REQUEST],
    nr_pages: u8,
}

impl IndirectRequest {
    /// Grants of the indirect pages actually in use: `ceil(nr_segments/512)`.
    pub fn pages(&self) -> &[GrantRef] {
        &self.grefs[..usize::from(self.nr_pages)]
    }
}

/// A validated request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Read `segments` from `sector` on.
    Read {
        /// Guest cookie.
        id: u64,
        /// Virtual device handle (not interpreted).
        handle: u16,
        /// Start sector; the whole range is on the disk.
        sector: u64,
        /// 1..=11 segments.
        segments: DirectSegments,
    },
    /// Write `segments` from `sector` on.
    Write {
        /// Guest cookie.
        id: u64,
        /// Virtual device handle (not interpreted).
        handle: u16,
        /// Start sector; the whole range is on the disk.
        sector: u64,
        /// 1..=11 segments.
        segments: DirectSegments,
    },
    /// Barrier: earlier writes complete first, then this one (0..=11
    /// segments of data), then later ones start.
    WriteBarrier {
        /// Guest cookie.
        id: u64,
        /// Virtual device handle (not interpreted).
        handle: u16,
        /// Start sector (meaningful only with segments).
        sector: u64,
        /// 0..=11 segments.
        segments: DirectSegments,
    },
    /// Flush the disk cache; with segments, write them too. The shell
    /// should write first and flush after: that covers both Linux's
    /// pre-flush meaning and FUA.
    Flush {
        /// Guest cookie.
        id: u64,
        /// Virtual device handle (not interpreted).
        handle: u16,
        /// Start sector (meaningful only with segments).
        sector: u64,
        /// 0..=11 segments.
        segments: DirectSegments,
    },
    /// Discard `nr_sectors` from `sector` (may be 0; the range, even when
    /// empty, lies on the disk).
    Discard {
        /// Guest cookie.
        id: u64,
        /// Start sector.
        sector: u64,
        /// Sectors to discard.
        nr_sectors: u64,
        /// Secure erase: asked for and offered by the disk.
        secure: bool,
    },
    /// Read or write with segments in indirect pages.
    Indirect(IndirectRequest),
}

impl Request {
    /// The guest cookie.
    pub fn id(&self) -> u64 {
        match *self {
            Request::Read { id, .. }
            | Request::Write { id, .. }
            | Request::WriteBarrier { id, .. }
            | Request::Flush { id, .. }
            | Request::Discard { id, .. } => id,
            Request::Indirect(r) => r.id,
        }
    }

    /// The operation the response must carry: the request's, except
    /// `indirect_op` for indirect requests (what blkfront checks).
    pub fn response_operation(&self) -> u8 {
        match self {
            Request::Read { .. } => BLKIF_OP_READ,
            Request::Write { .. } => BLKIF_OP_WRITE,
            Request::WriteBarrier { .. } => BLKIF_OP_WRITE_BARRIER,
            Request::Flush { .. } => BLKIF_OP_FLUSH_DISKCACHE,
            Request::Discard { .. } => BLKIF_OP_DISCARD,
            Request::Indirect(r) => match r.op {
                DataOp::Read => BLKIF_OP_READ,
                DataOp::Write => BLKIF_OP_WRITE,
            },
        }
    }

    /// The response to send when the request completes with `status`.
    pub fn response(&self, status: Status) -> Response {
        Response { id: self.id(), operation: self.response_operation(), status: status.to_wire() }
    }
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    /// Operation code we do not implement.
    UnknownOperation,
    /// Operation whose feature this disk does not offer.
    FeatureNotOffered,
    /// Direct request with a bad `nr_segments`.
    BadSegmentCount,
    /// Indirect request with `nr_segments` outside 1..=256.
    BadIndirectSegmentCount,
    /// Indirect request whose `indirect_op` is not read or write.
    BadIndirectOperation,
    /// Segment with `first_sect > last_sect`.
    FirstAfterLast,
    /// Segment with `last_sect > 7`.
    LastSectBeyondPage,
    /// `sector_number + sectors` overflows 64 bits.
    SectorOverflow,
    /// The range passes the end of the disk.
    BeyondDiskEnd,
    /// Not aligned to the logical block size.
    Misaligned,
    /// A modifying request on a read-only disk.
    ReadOnly,
    /// The shell passed the wrong number or size of indirect pages.
    IndirectPagesMismatch,
}

impl RejectReason {
    /// A fixed phrase for a once-per-device log line.
    pub fn as_str(&self) -> &'static str {
        match self {
            RejectReason::UnknownOperation => "unknown operation",
            RejectReason::FeatureNotOffered => "operation not offered for this disk",
            RejectReason::BadSegmentCount => "bad nr_segments",
            RejectReason::BadIndirectSegmentCount => "bad indirect nr_segments",
            RejectReason::BadIndirectOperation => "indirect_op not read/write",
            RejectReason::FirstAfterLast => "segment first_sect > last_sect",
            RejectReason::LastSectBeyondPage => "segment last_sect > 7",
            RejectReason::SectorOverflow => "sector arithmetic overflows",
            RejectReason::BeyondDiskEnd => "access beyond end of disk",
            RejectReason::Misaligned => "not aligned to the logical block size",
            RejectReason::ReadOnly => "write to a read-only disk",
            RejectReason::IndirectPagesMismatch => "indirect pages missing or short",
        }
    }

    /// The status a request refused for this reason gets.
    pub fn status(&self) -> Status {
        match self {
            RejectReason::UnknownOperation | RejectReason::FeatureNotOffered => Status::NotSupported,
            _ => Status::Error,
        }
    }
}

/// A refused request: what to answer, and why (for the log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reject {
    /// The request's `id`.
    pub id: u64,
    /// The operation to echo (`indirect_op` for indirect requests).
    pub operation: u8,
    /// Why.
    pub reason: RejectReason,
}

impl Reject {
    /// Status to answer with.
    pub fn status(&self) -> Status {
        self.reason.status()
    }
    /// The response to push.
    pub fn response(&self) -> Response {
        Response { id: self.id, operation: self.operation, status: self.status().to_wire() }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "blkif request id {:#x} op {} refused: {}", self.id, self.operation, self.reason.as_str())
    }
}

/// Remembers whether a device has logged a refused request yet, so a
/// hostile frontend cannot flood the console.
#[derive(Clone, Copy, Debug, Default)]
pub struct RejectLog {
    logged: bool,
    count: u64,
}

impl RejectLog {
    /// Counts a reject; true the first time (log it then).
    pub fn note(&mut self) -> bool {
        self.count = self.count.saturating_add(1);
        !core::mem::replace(&mut self.logged, true)
    }
    /// Rejects seen so far.
    pub fn count(&self) -> u64 {
        self.count
    }
}

/// Checks that `[sector, sector + sectors)` lies on the disk and is aligned.
fn check_range(disk: &DiskInfo, sector: u64, sectors: u64) -> Result<(), RejectReason> {
    let end = sector.checked_add(sectors).ok_or(RejectReason::SectorOverflow)?;
    if end > disk.sectors {
        return Err(RejectReason::BeyondDiskEnd);
    }
    Ok(())
}

/// Checks segments, returning the total sector count.
///
/// With a logical block size of `lbs` 512-byte sectors, the start sector
/// and every segment's first sector and length must be multiples of `lbs`
/// (blkif.h: offsets and sizes aligned to `sector-size`).
fn check_segments(
    disk: &DiskInfo,
    sector: u64,
    wire: impl Iterator<Item = abi::Segment>,
    mut out: impl FnMut(Segment),
) -> Result<u64, RejectReason> {
    let lbs = disk.lbs_sectors();
    let mut total: u64 = 0;
    for w in wire {
        let s = Segment::check(w)?;
        if !u64::from(s.first_sect).is_multiple_of(lbs) || !s.sectors().is_multiple_of(lbs) {
            return Err(RejectReason::Misaligned);
        }
        // At most 256 segments of at most 8 sectors: cannot overflow, but
        // checked anyway.
        total = total.checked_add(s.sectors()).ok_or(RejectReason::SectorOverflow)?;
        out(s);
    }
    if total > 0 {
        if !sector.is_multiple_of(lbs) {
            return Err(RejectReason::Misaligned);
        }
        check_range(disk, sector, total)?;
    }
    Ok(total)
}

/// Validates one copied request against `disk`.
///
/// Never panics, whatever the bytes.
pub fn parse(raw: &RawRequest, disk: &DiskInfo) -> Result<Request, Reject> {
    let op = raw.operation();
    let id = raw.id();
    let reject = |operation: u8, reason: RejectReason| Reject { id, operation, reason };
    match op {
        BLKIF_OP_READ | BLKIF_OP_WRITE | BLKIF_OP_WRITE_BARRIER | BLKIF_OP_FLUSH_DISKCACHE => {
            // The header, then only the segments used (read once each
            // from the private copy).
            let r = raw.rw_header();
            let err = |reason| reject(op, reason);
            match op {
                BLKIF_OP_WRITE_BARRIER if !disk.barrier => return Err(err(RejectReason::FeatureNotOffered)),
                BLKIF_OP_FLUSH_DISKCACHE if !disk.flush => return Err(err(RejectReason::FeatureNotOffered)),
                _ => {}
            }
            let n = usize::from(r.nr_segments);
            let min = if op == BLKIF_OP_READ || op == BLKIF_OP_WRITE { 1 } else { 0 };
            if n < min || n > MAX_SEGMENTS_PER_REQUEST {
                return Err(err(RejectReason::BadSegmentCount));
            }
            // Like xen_vbd_translate: anything but a read is refused on a
            // read-only disk, flushes included.
            if op != BLKIF_OP_READ && disk.readonly {
                return Err(err(RejectReason::ReadOnly));
            }
            let mut segs = DirectSegments {
                len: 0,
                segs: [Segment { gref: GrantRef(0), first_sect: 0, last_sect: 0 }; MAX_SEGMENTS_PER_REQUEST],
            };
            check_segments(disk, r.sector_number, (0..n).map(|k| raw.rw_segment(k)), |s| {
                segs.segs[usize::from(segs.len)] = s;
                segs.len += 1;
            })
            .map_err(err)?;
            let (handle, sector, segments) = (r.handle, r.sector_number, segs);
            Ok(match op {
                BLKIF_OP_READ => Request::Read { id, handle, sector, segments },
                BLKIF_OP_WRITE => Request::Write { id, handle, sector, segments },
                BLKIF_OP_WRITE_BARRIER => Request::WriteBarrier { id, handle, sector, segments },
                _ => Request::Flush { id, handle, sector, segments },
            })
        }
        BLKIF_OP_DISCARD => {
            let d = raw.as_discard();
            let err = |reason| reject(op, reason);
            let Some(info) = disk.discard else {
                return Err(err(RejectReason::FeatureNotOffered));
            };
            if disk.readonly {
                return Err(err(RejectReason::ReadOnly));
            }
            // Checked even for zero sectors (Linux skips that case), so a
            // `Discard` always names a range on the disk.
            check_range(disk, d.sector_number, d.nr_sectors).map_err(err)?;
            Ok(Request::Discard {
                id,
                sector: d.sector_number,
                nr_sectors: d.nr_sectors,
                secure: info.secure && d.flag & BLKIF_DISCARD_SECURE != 0,
            })
        }
        BLKIF_OP_INDIRECT => {
            let r = raw.as_indirect();
            // Answers echo the inner operation, even for a bad one.
            let err = |reason| reject(r.indirect_op, reason);
            let dop = match r.indirect_op {
                BLKIF_OP_READ => DataOp::Read,
                BLKIF_OP_WRITE => DataOp::Write,
                _ => return Err(err(RejectReason::BadIndirectOperation)),
            };
            if r.nr_segments == 0 || r.nr_segments > MAX_INDIRECT_SEGMENTS {
                return Err(err(RejectReason::BadIndirectSegmentCount));
            }
            if dop == DataOp::Write && disk.readonly {
                return Err(err(RejectReason::ReadOnly));
            }
            let nr_pages = indirect_pages(r.nr_segments);
            // nr_segments <= 256 gives one page; the bound keeps the copy in
            // range even if MAX_INDIRECT_SEGMENTS grows.
            if nr_pages > MAX_INDIRECT_PAGES_PER_REQUEST {
                return Err(err(RejectReason::BadIndirectSegmentCount));
            }
            if !r.sector_number.is_multiple_of(disk.lbs_sectors()) {
                return Err(err(RejectReason::Misaligned));
            }
            let mut grefs = [GrantRef(0); MAX_INDIRECT_PAGES_PER_REQUEST];
            for (g, w) in grefs.iter_mut().zip(&r.indirect_grefs[..nr_pages]) {
                *g = GrantRef(*w);
            }
            Ok(Request::Indirect(IndirectRequest {
                id,
                handle: r.handle,
                op: dop,
                sector: r.sector_number,
                nr_segments: r.nr_segments,
                grefs,
                nr_pages: nr_pages as u8,
            }))
        }
        _ => Err(reject(op, RejectReason::UnknownOperation)),
    }
}

/// Validates the segments of an indirect request, given private copies of
/// its indirect pages (one slice per [`IndirectRequest::pages`] entry, in
/// order). Checks each segment and the whole range against the disk.
///
/// Never panics: missing or short pages are a [`Reject`].
pub fn parse_indirect_segments(
    req: &IndirectRequest,
    pages: &[&[u8]],
    disk: &DiskInfo,
) -> Result<Vec<Segment>, Reject> {
    let op = match req.op {
        DataOp::Read => BLKIF_OP_READ,
        DataOp::Write => BLKIF_OP_WRITE,
    };
    let err = |reason| Reject { id: req.id, operation: op, reason };
    if pages.len() != req.pages().len() {
        return Err(err(RejectReason::IndirectPagesMismatch));
    }
    let n = usize::from(req.nr_segments);
    // Every segment's bytes must be there (checked before any segment is,
    // so a short page is reported as such): page `p` holds segments
    // `p * SEGMENTS_PER_INDIRECT_PAGE..` up to the page's worth or `n`.
    for k in (0..n).step_by(SEGMENTS_PER_INDIRECT_PAGE) {
        let in_page = (n - k).min(SEGMENTS_PER_INDIRECT_PAGE);
        let page = pages.get(k / SEGMENTS_PER_INDIRECT_PAGE).ok_or(err(RejectReason::IndirectPagesMismatch))?;
        if page.len() < in_page * abi::Segment::SIZE {
            return Err(err(RejectReason::IndirectPagesMismatch));
        }
    }
    // Decoded one by one straight into the check (no list of wire
    // segments); the lookups below cannot fail after the check above.
    let wire = pages
        .iter()
        .flat_map(|page| page.chunks_exact(abi::Segment::SIZE).take(SEGMENTS_PER_INDIRECT_PAGE))
        .take(n)
        .map(abi::Segment::decode);
    // Bounded by MAX_INDIRECT_SEGMENTS, not by anything the guest chose.
    let mut out = Vec::with_capacity(n);
    check_segments(disk, req.sector, wire, |s| out.push(s)).map_err(err)?;
    Ok(out)
}

#[cfg(test)]
mod tests;
