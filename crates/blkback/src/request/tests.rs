//! Validation tests: every refusal and its status, both ABIs, and a
//! property test that parsing never panics.

use super::*;
use crate::abi::{Abi, DiscardX64, IndirectX32, IndirectX64, RequestX32, RequestX64, MAX_REQUEST_SIZE};
use crate::DiscardInfo;

fn disk() -> DiskInfo {
    DiskInfo {
        sectors: 1000,
        sector_size: 512,
        physical_sector_size: 512,
        readonly: false,
        removable: false,
        cdrom: false,
        flush: true,
        barrier: true,
        discard: Some(DiscardInfo { granularity: 512, alignment: 0, secure: true }),
    }
}

fn raw64(r: RequestX64) -> RawRequest {
    let mut b = [0u8; MAX_REQUEST_SIZE];
    r.encode(&mut b);
    RawRequest { abi: Abi::X86_64, bytes: b }
}

fn seg(gref: u32, first: u8, last: u8) -> abi::Segment {
    abi::Segment { gref, first_sect: first, last_sect: last }
}

fn rw(op: u8, n: u8, sector: u64) -> RequestX64 {
    let mut r = RequestX64 { operation: op, nr_segments: n, id: 77, sector_number: sector, ..Default::default() };
    for (i, s) in r.seg.iter_mut().enumerate() {
        *s = seg(i as u32 + 1, 0, 7);
    }
    r
}

fn reason(r: Result<Request, Reject>) -> RejectReason {
    r.unwrap_err().reason
}

#[test]
fn good_read() {
    let req = parse(&raw64(rw(BLKIF_OP_READ, 2, 10)), &disk()).unwrap();
    let Request::Read { id, sector, segments, .. } = req else { panic!() };
    assert_eq!((id, sector, segments.as_slice().len()), (77, 10, 2));
    assert_eq!(segments.as_slice()[1].gref(), GrantRef(2));
    assert_eq!(req.response(Status::Okay), Response { id: 77, operation: 0, status: 0 });
}

#[test]
fn x86_32_read_parses_same() {
    let r = rw(BLKIF_OP_WRITE, 3, 20);
    let r32 = RequestX32::from(r);
    let mut b = [0u8; MAX_REQUEST_SIZE];
    r32.encode(&mut b);
    let a = parse(&RawRequest { abi: Abi::X86_32, bytes: b }, &disk()).unwrap();
    assert_eq!(a, parse(&raw64(r), &disk()).unwrap());
}

#[test]
fn segment_counts() {
    assert_eq!(reason(parse(&raw64(rw(BLKIF_OP_READ, 0, 0)), &disk())), RejectReason::BadSegmentCount);
    assert_eq!(reason(parse(&raw64(rw(BLKIF_OP_WRITE, 12, 0)), &disk())), RejectReason::BadSegmentCount);
    assert_eq!(reason(parse(&raw64(rw(BLKIF_OP_WRITE, 255, 0)), &disk())), RejectReason::BadSegmentCount);
    assert!(matches!(parse(&raw64(rw(BLKIF_OP_FLUSH_DISKCACHE, 0, 0)), &disk()), Ok(Request::Flush { .. })));
    assert!(matches!(
        parse(&raw64(rw(BLKIF_OP_WRITE_BARRIER, 0, u64::MAX)), &disk()),
        Ok(Request::WriteBarrier { .. })
    ));
    assert!(parse(&raw64(rw(BLKIF_OP_READ, 11, 0)), &disk()).is_ok());
}

#[test]
fn bad_segments() {
    let mut r = rw(BLKIF_OP_READ, 2, 0);
    r.seg[1] = seg(5, 4, 3);
    let e = parse(&raw64(r), &disk()).unwrap_err();
    assert_eq!(e.reason, RejectReason::FirstAfterLast);
    assert_eq!(e.response(), Response { id: 77, operation: 0, status: BLKIF_RSP_ERROR });
    r.seg[1] = seg(5, 0, 8);
    assert_eq!(reason(parse(&raw64(r), &disk())), RejectReason::LastSectBeyondPage);
    // Garbage in segments past nr_segments is ignored.
    r.seg[1] = seg(5, 0, 7);
    r.seg[5] = seg(5, 9, 200);
    assert!(parse(&raw64(r), &disk()).is_ok());
}

#[test]
fn ranges() {
    // 2 * 8 sectors from 984 ends exactly at 1000.
    assert!(parse(&raw64(rw(BLKIF_OP_READ, 2, 984)), &disk()).is_ok());
    assert_eq!(reason(parse(&raw64(rw(BLKIF_OP_READ, 2, 985)), &disk())), RejectReason::BeyondDiskEnd);
    assert_eq!(reason(parse(&raw64(rw(BLKIF_OP_READ, 2, u64::MAX - 3)), &disk())), RejectReason::SectorOverflow);
    assert_eq!(reason(parse(&raw64(rw(BLKIF_OP_READ, 1, 1000)), &disk())), RejectReason::BeyondDiskEnd);
}

#[test]
fn features_and_readonly() {
    let mut d = disk();
    d.flush = false;
    d.barrier = false;
    d.discard = None;
    let e = parse(&raw64(rw(BLKIF_OP_FLUSH_DISKCACHE, 0, 0)), &d).unwrap_err();
    assert_eq!(e.status(), Status::NotSupported);
    assert_eq!(e.response().status, BLKIF_RSP_EOPNOTSUPP);
    assert_eq!(reason(parse(&raw64(rw(BLKIF_OP_WRITE_BARRIER, 0, 0)), &d)), RejectReason::FeatureNotOffered);
    let mut dis = [0u8; MAX_REQUEST_SIZE];
    DiscardX64 { operation: BLKIF_OP_DISCARD, id: 3, sector_number: 0, nr_sectors: 8, ..Default::default() }
        .encode(&mut dis);
    let raw = RawRequest { abi: Abi::X86_64, bytes: dis };
    assert_eq!(parse(&raw, &d).unwrap_err().status(), Status::NotSupported);
    let mut ro = disk();
    ro.readonly = true;
    assert!(parse(&raw64(rw(BLKIF_OP_READ, 1, 0)), &ro).is_ok());
    assert_eq!(reason(parse(&raw64(rw(BLKIF_OP_WRITE, 1, 0)), &ro)), RejectReason::ReadOnly);
    assert_eq!(reason(parse(&raw64(rw(BLKIF_OP_FLUSH_DISKCACHE, 0, 0)), &ro)), RejectReason::ReadOnly);
    assert_eq!(reason(parse(&raw, &ro)), RejectReason::ReadOnly);
}

#[test]
fn unknown_ops_get_eopnotsupp() {
    for op in [abi::BLKIF_OP_RESERVED_1, 7, 0x80, 0xff] {
        let mut r = rw(0, 1, 0);
        r.operation = op;
        let e = parse(&raw64(r), &disk()).unwrap_err();
        assert_eq!(e.response(), Response { id: 77, operation: op, status: BLKIF_RSP_EOPNOTSUPP });
    }
}

#[test]
fn discard() {
    let mk = |flag, sector, n| {
        let mut b = [0u8; MAX_REQUEST_SIZE];
        DiscardX64 { operation: BLKIF_OP_DISCARD, flag, handle: 0, id: 9, sector_number: sector, nr_sectors: n }
            .encode(&mut b);
        RawRequest { abi: Abi::X86_64, bytes: b }
    };
    assert_eq!(
        parse(&mk(1, 10, 990), &disk()).unwrap(),
        Request::Discard { id: 9, sector: 10, nr_sectors: 990, secure: true }
    );
    assert_eq!(reason(parse(&mk(0, 10, 991), &disk())), RejectReason::BeyondDiskEnd);
    assert_eq!(reason(parse(&mk(0, 10, u64::MAX), &disk())), RejectReason::SectorOverflow);
    let mut d = disk();
    d.discard = Some(DiscardInfo { granularity: 512, alignment: 0, secure: false });
    assert!(matches!(parse(&mk(1, 0, 1), &d), Ok(Request::Discard { secure: false, .. })));
}

fn indirect(op: u8, n: u16, sector: u64) -> RawRequest {
    let mut b = [0u8; MAX_REQUEST_SIZE];
    IndirectX64 {
        operation: BLKIF_OP_INDIRECT,
        indirect_op: op,
        nr_segments: n,
        id: 5,
        sector_number: sector,
        handle: 1,
        indirect_grefs: [100, 101, 102, 103, 104, 105, 106, 107],
    }
    .encode(&mut b);
    RawRequest { abi: Abi::X86_64, bytes: b }
}

fn page_of(segs: &[abi::Segment]) -> Vec<u8> {
    let mut p = vec![0u8; 4096];
    for (i, s) in segs.iter().enumerate() {
        s.encode(&mut p[i * 8..]);
    }
    p
}

#[test]
fn indirect_ok() {
    let Request::Indirect(r) = parse(&indirect(BLKIF_OP_WRITE, 256, 0), &disk()).unwrap() else { panic!() };
    assert_eq!(r.pages(), &[GrantRef(100)]);
    let segs: Vec<_> = (0..256).map(|i| seg(i, (i % 4) as u8, 3 + (i % 5) as u8)).collect();
    let p = page_of(&segs);
    let mut big = disk();
    big.sectors = 1 << 20;
    let out = parse_indirect_segments(&r, &[&p], &big).unwrap();
    assert_eq!(out.len(), 256);
    assert_eq!(out[7].gref(), GrantRef(7));
    assert_eq!(Request::Indirect(r).response(Status::Okay).operation, BLKIF_OP_WRITE);
}

#[test]
fn indirect_rejects() {
    for n in [0u16, 257, 512, u16::MAX] {
        let e = parse(&indirect(BLKIF_OP_READ, n, 0), &disk()).unwrap_err();
        assert_eq!(e.reason, RejectReason::BadIndirectSegmentCount);
        assert_eq!(e.operation, BLKIF_OP_READ);
    }
    for op in [BLKIF_OP_INDIRECT, BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, 0xff] {
        let e = parse(&indirect(op, 1, 0), &disk()).unwrap_err();
        assert_eq!((e.reason, e.operation, e.status()), (RejectReason::BadIndirectOperation, op, Status::Error));
    }
    let Request::Indirect(r) = parse(&indirect(BLKIF_OP_READ, 3, 990), &disk()).unwrap() else { panic!() };
    // 3 * 8 sectors from 990 pass the end.
    let p = page_of(&[seg(1, 0, 7), seg(2, 0, 7), seg(3, 0, 7)]);
    assert_eq!(parse_indirect_segments(&r, &[&p], &disk()).unwrap_err().reason, RejectReason::BeyondDiskEnd);
    let p = page_of(&[seg(1, 0, 7), seg(2, 5, 4), seg(3, 0, 7)]);
    assert_eq!(parse_indirect_segments(&r, &[&p], &disk()).unwrap_err().reason, RejectReason::FirstAfterLast);
    assert_eq!(parse_indirect_segments(&r, &[], &disk()).unwrap_err().reason, RejectReason::IndirectPagesMismatch);
    assert_eq!(
        parse_indirect_segments(&r, &[&p[..16]], &disk()).unwrap_err().reason,
        RejectReason::IndirectPagesMismatch
    );
    let Request::Indirect(r) = parse(&indirect(BLKIF_OP_READ, 1, u64::MAX), &disk()).unwrap() else { panic!() };
    let p = page_of(&[seg(1, 0, 0)]);
    assert_eq!(parse_indirect_segments(&r, &[&p], &disk()).unwrap_err().reason, RejectReason::SectorOverflow);
}

#[test]
fn indirect_x86_32() {
    let mut b = [0u8; MAX_REQUEST_SIZE];
    IndirectX32 {
        operation: BLKIF_OP_INDIRECT,
        indirect_op: BLKIF_OP_READ,
        nr_segments: 12,
        id: 0xabc,
        sector_number: 8,
        handle: 2,
        indirect_grefs: [9; 8],
        pad: 0,
    }
    .encode(&mut b);
    let Request::Indirect(r) = parse(&RawRequest { abi: Abi::X86_32, bytes: b }, &disk()).unwrap() else { panic!() };
    assert_eq!((r.id, r.sector, r.nr_segments, r.pages().len()), (0xabc, 8, 12, 1));
}

#[test]
fn alignment_4k_disk() {
    let mut d = disk();
    d.sector_size = 4096;
    assert!(parse(&raw64(rw(BLKIF_OP_READ, 1, 8)), &d).is_ok());
    assert_eq!(reason(parse(&raw64(rw(BLKIF_OP_READ, 1, 4)), &d)), RejectReason::Misaligned);
    let mut r = rw(BLKIF_OP_READ, 1, 8);
    r.seg[0] = seg(1, 0, 3);
    assert_eq!(reason(parse(&raw64(r), &d)), RejectReason::Misaligned);
}

#[test]
fn reject_log_once() {
    let mut l = RejectLog::default();
    assert!(l.note());
    assert!(!l.note());
    assert_eq!(l.count(), 2);
}

#[test]
fn indirect_pages_count() {
    assert_eq!(indirect_pages(1), 1);
    assert_eq!(indirect_pages(512), 1);
    assert_eq!(indirect_pages(513), 2);
    assert_eq!(indirect_pages(4096), 8);
}

proptest::proptest! {
    #[test]
    fn parse_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, MAX_REQUEST_SIZE),
                          x32 in proptest::bool::ANY, sectors in proptest::num::u64::ANY) {
        let mut b = [0u8; MAX_REQUEST_SIZE];
        b.copy_from_slice(&bytes);
        let abi = if x32 { Abi::X86_32 } else { Abi::X86_64 };
        let mut d = disk();
        d.sectors = sectors;
        let raw = RawRequest { abi, bytes: b };
        match parse(&raw, &d) {
            Ok(Request::Indirect(r)) => {
                let _ = parse_indirect_segments(&r, &[&bytes], &d);
            }
            Ok(req) => proptest::prop_assert_eq!(req.id(), raw.id()),
            Err(e) => proptest::prop_assert_eq!(e.id, raw.id()),
        }
    }
}
