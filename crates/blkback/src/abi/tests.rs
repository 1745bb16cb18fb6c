//! Golden-bytes and layout tests of the blkif wire structs (both ABIs).

use super::*;

fn put(b: &mut [u8], off: usize, v: &[u8]) {
    b[off..off + v.len()].copy_from_slice(v);
}

fn sample_segs() -> [Segment; MAX_SEGMENTS_PER_REQUEST] {
    let mut s = [Segment::default(); MAX_SEGMENTS_PER_REQUEST];
    for (i, x) in s.iter_mut().enumerate() {
        *x = Segment { gref: 0x1000 + i as u32, first_sect: i as u8 % 8, last_sect: 7 };
    }
    s
}

/// Hand-built bytes from blkif.h's offsets for the x86_64 layout.
#[test]
fn golden_request_x64() {
    let mut want = [0u8; 112];
    want[0] = BLKIF_OP_WRITE;
    want[1] = 11;
    put(&mut want, 2, &[0x34, 0x12]);
    // 4..8 is the alignment hole.
    put(&mut want, 8, &[0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01]);
    put(&mut want, 16, &[0xef, 0xcd, 0xab, 0x89, 0x67, 0x45, 0x23, 0x01]);
    for i in 0..11 {
        let o = 24 + i * 8;
        put(&mut want, o, &[i as u8, 0x10, 0, 0]);
        want[o + 4] = i as u8 % 8;
        want[o + 5] = 7;
    }
    let r = RequestX64 {
        operation: BLKIF_OP_WRITE,
        nr_segments: 11,
        handle: 0x1234,
        id: 0x0102030405060708,
        sector_number: 0x0123456789abcdef,
        seg: sample_segs(),
    };
    let mut got = [0xffu8; 112];
    r.encode(&mut got);
    assert_eq!(got, want);
    assert_eq!(RequestX64::decode(&want), r);
    let raw = RawRequest { abi: Abi::X86_64, bytes: want };
    assert_eq!(raw.id(), 0x0102030405060708);
    assert_eq!(raw.as_rw(), r);
    assert_eq!(raw.rw_header(), RequestX64 { seg: Default::default(), ..r });
    assert!((0..11).all(|k| raw.rw_segment(k) == r.seg[k]));
}

/// Hand-built bytes for the x86_32 layout: id at 4, sector at 12, seg at 20.
#[test]
fn golden_request_x32() {
    let mut want = [0u8; 112];
    want[0] = BLKIF_OP_READ;
    want[1] = 11;
    put(&mut want, 2, &[0x34, 0x12]);
    put(&mut want, 4, &[0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01]);
    put(&mut want, 12, &[0xef, 0xcd, 0xab, 0x89, 0x67, 0x45, 0x23, 0x01]);
    for i in 0..11 {
        let o = 20 + i * 8;
        put(&mut want, o, &[i as u8, 0x10, 0, 0]);
        want[o + 4] = i as u8 % 8;
        want[o + 5] = 7;
    }
    let r = RequestX32 {
        operation: BLKIF_OP_READ,
        nr_segments: 11,
        handle: 0x1234,
        id: 0x0102030405060708,
        sector_number: 0x0123456789abcdef,
        seg: sample_segs(),
    };
    let mut got = [0u8; 112];
    r.encode(&mut got);
    assert_eq!(got, want);
    assert_eq!(&want[108..], &[0, 0, 0, 0]);
    assert_eq!(RequestX32::decode(&want), r);
    let raw = RawRequest { abi: Abi::X86_32, bytes: want };
    assert_eq!(raw.id(), 0x0102030405060708);
    let n: RequestX64 = r.into();
    assert_eq!(raw.as_rw(), n);
    assert_eq!(raw.rw_header(), RequestX64 { seg: Default::default(), ..n });
    assert!((0..11).all(|k| raw.rw_segment(k) == n.seg[k]));
}

#[test]
fn golden_discard_both() {
    let mut w64 = [0u8; 32];
    w64[0] = BLKIF_OP_DISCARD;
    w64[1] = BLKIF_DISCARD_SECURE;
    put(&mut w64, 2, &[0xcd, 0xab]);
    put(&mut w64, 8, &42u64.to_le_bytes());
    put(&mut w64, 16, &1000u64.to_le_bytes());
    put(&mut w64, 24, &[0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]);
    let d = DiscardX64 {
        operation: BLKIF_OP_DISCARD,
        flag: 1,
        handle: 0xabcd,
        id: 42,
        sector_number: 1000,
        nr_sectors: 0x8877665544332211,
    };
    let mut got = [0u8; 32];
    d.encode(&mut got);
    assert_eq!(got, w64);
    assert_eq!(DiscardX64::decode(&w64), d);

    let mut w32 = [0u8; 28];
    w32[0] = BLKIF_OP_DISCARD;
    w32[1] = BLKIF_DISCARD_SECURE;
    put(&mut w32, 2, &[0xcd, 0xab]);
    put(&mut w32, 4, &42u64.to_le_bytes());
    put(&mut w32, 12, &1000u64.to_le_bytes());
    put(&mut w32, 20, &[0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]);
    let d32 = DiscardX32 {
        operation: BLKIF_OP_DISCARD,
        flag: 1,
        handle: 0xabcd,
        id: 42,
        sector_number: 1000,
        nr_sectors: 0x8877665544332211,
    };
    let mut got = [0u8; 28];
    d32.encode(&mut got);
    assert_eq!(got, w32);
    assert_eq!(DiscardX64::from(DiscardX32::decode(&w32)), d);
}

#[test]
fn golden_indirect_both() {
    let grefs = [11, 22, 33, 44, 55, 66, 77, 88u32];
    let mut w64 = [0u8; 64];
    w64[0] = BLKIF_OP_INDIRECT;
    w64[1] = BLKIF_OP_WRITE;
    put(&mut w64, 2, &[0x00, 0x01]); // 256 segments
    put(&mut w64, 8, &7u64.to_le_bytes());
    put(&mut w64, 16, &0x1_0000_0000u64.to_le_bytes());
    put(&mut w64, 24, &[0x02, 0x03]);
    for (i, g) in grefs.iter().enumerate() {
        put(&mut w64, 28 + 4 * i, &g.to_le_bytes());
    }
    let i64r = IndirectX64 {
        operation: BLKIF_OP_INDIRECT,
        indirect_op: BLKIF_OP_WRITE,
        nr_segments: 256,
        id: 7,
        sector_number: 0x1_0000_0000,
        handle: 0x0302,
        indirect_grefs: grefs,
    };
    let mut got = [0u8; 64];
    i64r.encode(&mut got);
    assert_eq!(got, w64);
    assert_eq!(IndirectX64::decode(&w64), i64r);

    let mut w32 = [0u8; 64];
    w32[0] = BLKIF_OP_INDIRECT;
    w32[1] = BLKIF_OP_WRITE;
    put(&mut w32, 2, &[0x00, 0x01]);
    put(&mut w32, 4, &7u64.to_le_bytes());
    put(&mut w32, 12, &0x1_0000_0000u64.to_le_bytes());
    put(&mut w32, 20, &[0x02, 0x03]);
    for (i, g) in grefs.iter().enumerate() {
        put(&mut w32, 24 + 4 * i, &g.to_le_bytes());
    }
    let i32r = IndirectX32 {
        operation: BLKIF_OP_INDIRECT,
        indirect_op: BLKIF_OP_WRITE,
        nr_segments: 256,
        id: 7,
        sector_number: 0x1_0000_0000,
        handle: 0x0302,
        indirect_grefs: grefs,
        pad: 0,
    };
    let mut got = [0u8; 64];
    i32r.encode(&mut got);
    assert_eq!(got, w32);
    let mut raw = RawRequest { abi: Abi::X86_32, bytes: [0; MAX_REQUEST_SIZE] };
    raw.bytes[..64].copy_from_slice(&w32);
    assert_eq!(raw.as_indirect(), i64r);
    assert_eq!(raw.id(), 7);
}

#[test]
fn golden_response_both() {
    let r = Response { id: 0xdead_beef_0000_0001, operation: BLKIF_OP_WRITE, status: BLKIF_RSP_EOPNOTSUPP };
    let mut want = [0u8; 16];
    put(&mut want, 0, &[0x01, 0, 0, 0, 0xef, 0xbe, 0xad, 0xde]);
    want[8] = 1;
    put(&mut want, 10, &[0xfe, 0xff]);
    assert_eq!(r.encode(Abi::X86_64), want);
    // x86_32: same bytes, only 12 of them are the struct.
    let got32 = r.encode(Abi::X86_32);
    assert_eq!(&got32[..12], &want[..12]);
    assert_eq!(Response::decode(Abi::X86_64, &want), r);
    assert_eq!(Response::decode(Abi::X86_32, &want[..12]), r);
}

#[test]
fn golden_segment() {
    let s = Segment { gref: 0xaabbccdd, first_sect: 2, last_sect: 6 };
    let mut b = [0xffu8; 8];
    s.encode(&mut b);
    assert_eq!(b, [0xdd, 0xcc, 0xbb, 0xaa, 2, 6, 0, 0]);
    assert_eq!(Segment::decode(&b), s);
}

#[test]
fn sizes() {
    assert_eq!(Abi::X86_64.entry_size(), 112);
    assert_eq!(Abi::X86_32.entry_size(), 108);
    assert_eq!(Abi::X86_64.response_size(), 16);
    assert_eq!(Abi::X86_32.response_size(), 12);
    assert_eq!(SEGMENTS_PER_INDIRECT_PAGE, 512);
    assert_eq!(Abi::from_protocol("x86_32-abi"), Some(Abi::X86_32));
    assert_eq!(Abi::from_protocol("x86_64-abi"), Some(Abi::X86_64));
    assert_eq!(Abi::from_protocol("arm-abi"), None);
}
