//! Grant copy, the data path of rings without persistent grants, with the
//! simulated blkfront (`blkback::testing`), checked against a model disk.

use std::collections::BTreeSet;

use proptest::prelude::*;

use blkback::abi::MAX_REQUEST_SIZE;
use blkback::abi::{self, BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_READ, BLKIF_OP_WRITE};
use blkback::testing::*;
use blkback::xenbus::BackendConfig;
use drivers::block::BlockDevice;
use xen::gnttab::GrantOps;
use xen::types::GrantRef;

// ---------------------------------------------------------------------------
// 10. Grant copy: the data path of rings without persistent grants.

/// Reads and writes of every shape round-trip by grant copy, one copy call
/// per request (two for an indirect one: its segment page, then the data),
/// and nothing is ever mapped but the ring. With grant copy switched off
/// the same traffic maps instead.
#[test]
fn copy_path_round_trips_without_mapping() {
    for copy in [true, false] {
        let mut w = world(ram(1), BackendConfig::default(), &[5]);
        w.blk.set_grant_copy(copy);
        w.attach(0);
        w.connect(0, Opts::default());
        let ring: BTreeSet<u32> = w.fronts[0].rings[0].grefs.iter().map(|g| g.0).collect();
        let (maps, copies) = (w.g.map_calls(), w.g.copy_calls());
        // 3 writes and 3 reads of 1, 3 and 11 segments.
        w.write_read_back(0, 0, 64, 1);
        let (wreq, wid, wsegs) = w.fronts[0].indirect_spans(BLKIF_OP_WRITE, 1000, &[(0, 7); 40], 9);
        assert_eq!(w.io(0, 0, &[wreq]), [okay(wid, BLKIF_OP_WRITE)]);
        let (rreq, rid, rsegs) = w.fronts[0].indirect_spans(BLKIF_OP_READ, 1000, &[(0, 7); 40], 0);
        assert_eq!(w.io(0, 0, &[rreq]), [okay(rid, BLKIF_OP_READ)]);
        assert!(seg_bytes(&rsegs) == seg_bytes(&wsegs), "copy {copy}: indirect read returns the indirect write");
        assert_eq!(&w.disk().contents()[1000 * SECT..1000 * SECT + 40 * PAGE], &seg_bytes(&wsegs)[..]);
        if copy {
            assert_eq!(w.g.map_calls(), maps, "no grant mapped on a copy ring");
            assert_eq!(
                w.g.copy_calls() - copies,
                6 + 2 * 2,
                "one copy call per request, plus one per indirect page set"
            );
            assert_eq!(w.blk.stats.grant_copies, 10);
            assert_eq!(w.blk.stats.grant_maps, 0);
        } else {
            assert_eq!(w.g.copy_calls(), copies, "copy switched off");
            assert_eq!(w.blk.stats.grant_maps, 6 + 2 * 2);
        }
        // Either way nothing stays mapped: every data grant ends at once.
        let f = &mut w.fronts[0];
        for g in f.granted.clone() {
            if !ring.contains(&g) {
                assert_eq!(f.g.end_access(GrantRef(g)), Ok(()), "grant {g} still in use");
            }
        }
        assert_eq!(w.blk.buffer_bytes(), 0);
    }
}

/// Segments that start and end inside their pages land at buffer offsets
/// that are not page aligned: each copy element is cut where the disk
/// buffer crosses a frame (the fake refuses elements crossing a page), and
/// a read with other sector offsets returns exactly the bytes written.
#[test]
fn copy_segments_split_at_frame_boundaries() {
    let mut w = world(ram(1), BackendConfig::default(), &[5]);
    w.attach(0);
    w.connect(0, Opts::default());
    // 6 + 8 sectors: the second segment covers buffer bytes 3072..7168.
    let ops = w.g.copy_ops();
    let (wreq, wid, wsegs) = w.fronts[0].rw(BLKIF_OP_WRITE, 200, &[(1, 6), (0, 7)], 3, true);
    assert_eq!(w.io(0, 0, &[wreq]), [okay(wid, BLKIF_OP_WRITE)]);
    assert_eq!(w.g.copy_ops() - ops, 3, "3072 bytes, then 1024 + 3072 across the frame boundary");
    let written = seg_bytes(&wsegs);
    assert_eq!(&w.disk().contents()[200 * SECT..214 * SECT], &written[..]);
    // The same 14 sectors as 5 + 8 + 1 at other offsets in their pages.
    let ops = w.g.copy_ops();
    let (rreq, rid, rsegs) = w.fronts[0].rw(BLKIF_OP_READ, 200, &[(3, 7), (0, 7), (7, 7)], 0, false);
    assert_eq!(w.io(0, 0, &[rreq]), [okay(rid, BLKIF_OP_READ)]);
    assert_eq!(w.g.copy_ops() - ops, 4, "2560, then 1536 + 2560, then 512");
    assert_eq!(seg_bytes(&rsegs), written);
    // Bytes of the read pages outside the segments are untouched.
    let first = rsegs[0].0.page.snapshot();
    assert!(first[..3 * SECT].iter().all(|&b| b == 0xa5), "bytes before first_sect kept");
}

/// A copy element that fails (a grant never given, a read into a read-only
/// grant, an indirect page not granted) answers ERROR for its request only;
/// the requests around it complete, and a failed write reaches no disk.
#[test]
fn failing_copy_fails_only_its_request() {
    let mut w = world(ram(1), BackendConfig::default(), &[5]);
    w.attach(0);
    w.connect(0, Opts::default());
    let maps = w.g.map_calls();
    let f = &mut w.fronts[0];
    let abi = f.abi;
    let (a, aid, asegs) = f.rw(BLKIF_OP_WRITE, 0, &[(0, 7)], 1, true);
    // Three segments, the middle one never granted.
    let (good1, good2) = (f.grant_page(&pattern(2, PAGE), true), f.grant_page(&pattern(3, PAGE), true));
    let bid = f.id();
    let b = enc_rw(
        abi,
        BLKIF_OP_WRITE,
        bid,
        64,
        &[
            abi::Segment { gref: good1.gref.0, first_sect: 0, last_sect: 7 },
            abi::Segment { gref: 0xdead, first_sect: 0, last_sect: 7 },
            abi::Segment { gref: good2.gref.0, first_sect: 0, last_sect: 7 },
        ],
    );
    let (c, cid, csegs) = f.rw(BLKIF_OP_READ, 0, &[(0, 7)], 0, false);
    // A read whose target page is granted read-only: the copy into it fails.
    let ro = f.grant_page(&[0x11; PAGE], true);
    let did = f.id();
    let d = enc_rw(abi, BLKIF_OP_READ, did, 0, &[abi::Segment { gref: ro.gref.0, first_sect: 0, last_sect: 7 }]);
    let eid = f.id();
    let e = enc_indirect(abi, BLKIF_OP_WRITE, 2, eid, 128, &[GrantRef(0xbeef)]);
    let (g, gid, gsegs) = f.rw(BLKIF_OP_WRITE, 256, &[(0, 7), (2, 5)], 4, true);
    let rsp = by_id(&w.io(0, 0, &[a, b, c, d, e, g]));
    assert_eq!(rsp[&aid], okay(aid, BLKIF_OP_WRITE));
    assert_eq!(rsp[&bid], error(bid, BLKIF_OP_WRITE));
    assert_eq!(rsp[&cid], okay(cid, BLKIF_OP_READ));
    assert_eq!(rsp[&did], error(did, BLKIF_OP_READ));
    assert_eq!(rsp[&eid], error(eid, BLKIF_OP_WRITE));
    assert_eq!(rsp[&gid], okay(gid, BLKIF_OP_WRITE));
    assert_eq!(seg_bytes(&csegs), seg_bytes(&asegs), "the read behind the failures got its data");
    assert_eq!(ro.page.snapshot(), vec![0x11; PAGE], "read-only page untouched");
    let disk = w.disk().contents().to_vec();
    assert_eq!(&disk[..PAGE], &seg_bytes(&asegs)[..]);
    assert!(disk[64 * SECT..64 * SECT + 3 * PAGE].iter().all(|&x| x == 0), "the failed write wrote nothing");
    assert!(disk[128 * SECT..136 * SECT].iter().all(|&x| x == 0));
    assert_eq!(&disk[256 * SECT..256 * SECT + 12 * SECT], &seg_bytes(&gsegs)[..]);
    assert_eq!(w.g.map_calls(), maps, "failures do not fall back to mapping");
    assert_eq!(w.blk.stats.errors, 0, "grant failures are not disk errors");
    assert_eq!(w.blk.buffer_bytes(), 0);
    // The ring keeps serving.
    w.write_read_back(0, 0, 500, 7);
}

#[derive(Clone, Debug)]
enum CopyOpK {
    Write { at: u16, spans: Vec<(u8, u8)>, seed: u32, indirect: bool },
    Read { at: u16, spans: Vec<(u8, u8)>, indirect: bool },
    Flush,
    Discard { at: u16, sectors: u8 },
}

fn span_strategy() -> impl Strategy<Value = (u8, u8)> {
    (0u8..8, 0u8..8).prop_map(|(a, b)| (a.min(b), a.max(b)))
}

fn copy_op_strategy() -> impl Strategy<Value = CopyOpK> {
    prop_oneof![
        4 => (any::<u16>(), prop::collection::vec(span_strategy(), 1..=11), any::<u32>())
            .prop_map(|(at, spans, seed)| CopyOpK::Write { at, spans, seed, indirect: false }),
        4 => (any::<u16>(), prop::collection::vec(span_strategy(), 1..=11)).prop_map(|(at, spans)| CopyOpK::Read { at, spans, indirect: false }),
        2 => (any::<u16>(), prop::collection::vec(span_strategy(), 1..=48), any::<u32>())
            .prop_map(|(at, spans, seed)| CopyOpK::Write { at, spans, seed, indirect: true }),
        2 => (any::<u16>(), prop::collection::vec(span_strategy(), 1..=48)).prop_map(|(at, spans)| CopyOpK::Read { at, spans, indirect: true }),
        1 => Just(CopyOpK::Flush),
        1 => (any::<u16>(), 1u8..64).prop_map(|(at, sectors)| CopyOpK::Discard { at, sectors }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// Random request sequences on a ring without persistent grants, some
    /// split for a disk with a 16 KiB transfer limit, checked against a
    /// model disk: every answer OKAY, every read returns the model's bytes,
    /// the disk ends equal to the model, and no data grant was ever mapped.
    #[test]
    fn random_requests_by_copy_match_a_model(ops in prop::collection::vec(copy_op_strategy(), 1..24), limit in any::<bool>()) {
        let disk = SlowDisk::new(DISK_SECTORS, 1, 0, 64).with_limit(if limit { 16 * 1024 } else { usize::MAX });
        let mut w = world(disk, BackendConfig::default(), &[5]);
        w.attach(0);
        w.connect(0, Opts::default());
        let maps = w.g.map_calls();
        let mut model = vec![0u8; DISK_SECTORS as usize * SECT];
        for (k, op) in ops.into_iter().enumerate() {
            // Place a transfer of `n` sectors somewhere on the disk.
            let place = |at: u16, n: u64| u64::from(at) % (DISK_SECTORS - n + 1);
            let total = |spans: &[(u8, u8)]| spans.iter().map(|(f, l)| u64::from(l - f) + 1).sum::<u64>();
            let f = &mut w.fronts[0];
            match op {
                CopyOpK::Write { at, spans, seed, indirect } => {
                    let sector = place(at, total(&spans));
                    let (req, id, segs) = if indirect {
                        f.indirect_spans(BLKIF_OP_WRITE, sector, &spans, seed)
                    } else {
                        f.rw(BLKIF_OP_WRITE, sector, &spans, seed, true)
                    };
                    prop_assert_eq!(w.io(0, 0, &[req]), vec![okay(id, BLKIF_OP_WRITE)], "op {}", k);
                    let data = seg_bytes(&segs);
                    let s = sector as usize * SECT;
                    model[s..s + data.len()].copy_from_slice(&data);
                }
                CopyOpK::Read { at, spans, indirect } => {
                    let sector = place(at, total(&spans));
                    let (req, id, segs) = if indirect {
                        f.indirect_spans(BLKIF_OP_READ, sector, &spans, 0)
                    } else {
                        f.rw(BLKIF_OP_READ, sector, &spans, 0, false)
                    };
                    prop_assert_eq!(w.io(0, 0, &[req]), vec![okay(id, BLKIF_OP_READ)], "op {}", k);
                    let s = sector as usize * SECT;
                    let got = seg_bytes(&segs);
                    prop_assert!(got[..] == model[s..s + got.len()], "op {}: read at sector {} differs from the model", k, sector);
                }
                CopyOpK::Flush => {
                    let id = f.id();
                    let req = enc_rw(f.abi, BLKIF_OP_FLUSH_DISKCACHE, id, 0, &[]);
                    prop_assert_eq!(w.io(0, 0, &[req]), vec![okay(id, BLKIF_OP_FLUSH_DISKCACHE)]);
                }
                CopyOpK::Discard { at, sectors } => {
                    let n = u64::from(sectors);
                    let sector = place(at, n);
                    let id = f.id();
                    let mut b = [0u8; MAX_REQUEST_SIZE];
                    abi::DiscardX64 { operation: BLKIF_OP_DISCARD, flag: 0, handle: 0, id, sector_number: sector, nr_sectors: n }.encode(&mut b);
                    prop_assert_eq!(w.io(0, 0, &[b]), vec![okay(id, BLKIF_OP_DISCARD)]);
                    model[sector as usize * SECT..(sector + n) as usize * SECT].fill(0);
                }
            }
        }
        prop_assert!(w.disk().inner.contents() == &model[..], "disk differs from the model");
        prop_assert_eq!(w.g.map_calls(), maps, "nothing but the ring was mapped");
        prop_assert!(w.disk().largest <= w.disk().max_transfer());
        prop_assert_eq!(w.blk.buffer_bytes(), 0);
    }
}

// ---------------------------------------------------------------------------
