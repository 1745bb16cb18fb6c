//! Data through the real backend's rings with the simulated blkfront
//! (`blkback::testing`): both ABIs, persistent grants, indirect requests,
//! multi-queue and multi-page rings, flush and barrier ordering.

use std::collections::BTreeSet;

use xen::shmem::SharedMem;

use blkback::abi::MAX_REQUEST_SIZE;
use blkback::abi::{
    self, Abi, BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER,
};
use blkback::testing::*;
use blkback::xenbus::BackendConfig;
use blkback::MAX_PERSISTENT_PER_RING;
use xen::gnttab::{GrantError, GrantOps};
use xen::types::GrantRef;

// ---------------------------------------------------------------------------
// 2. Data through the ring, both ABIs.

fn write_read_abi(protocol: Option<Abi>, start: u32) {
    let mut w = world(ram(1), BackendConfig::default(), &[5]);
    w.attach(0);
    w.connect(0, Opts { protocol, start, ..Opts::default() });
    // Enough round trips to wrap the 32-slot ring (and the u32 indices
    // when `start` is near the top).
    for round in 0..12u32 {
        w.write_read_back(0, 0, 100 + u64::from(round) * 200, round * 1000);
    }
    // The disk holds what the frontend wrote.
    let (req, id, segs) = w.fronts[0].rw(BLKIF_OP_WRITE, 8, &[(0, 7), (0, 7)], 77, true);
    assert_eq!(w.io(0, 0, &[req]), [okay(id, BLKIF_OP_WRITE)]);
    assert_eq!(&w.disk().contents()[8 * SECT..24 * SECT], &seg_bytes(&segs)[..]);
    assert_eq!(w.blk.stats.rejected, 0);
}

#[test]
fn write_read_back_x86_64() {
    write_read_abi(Some(Abi::X86_64), 0);
}

#[test]
fn write_read_back_x86_32_without_protocol_key() {
    write_read_abi(None, u32::MAX - 40);
}

#[test]
fn write_read_back_x86_32_explicit() {
    write_read_abi(Some(Abi::X86_32), 7);
}

#[test]
fn batch_of_requests_with_discard_and_small_disk_queue() {
    // Disk queue depth 2 and slow completions: requests wait in the shell.
    let mut w = world(SlowDisk::new(DISK_SECTORS, 1, 2, 2), BackendConfig::default(), &[5]);
    w.attach(0);
    w.connect(0, Opts::default());
    let mut reqs = Vec::new();
    let mut writes = Vec::new();
    for i in 0..20u64 {
        let (r, id, segs) = w.fronts[0].rw(BLKIF_OP_WRITE, i * 16, &[(0, 7), (0, 7)], i as u32, true);
        reqs.push(r);
        writes.push((id, i * 16, segs));
    }
    // Discard the second half of request 3's range.
    let did = w.fronts[0].id();
    let mut b = [0u8; MAX_REQUEST_SIZE];
    abi::DiscardX64 {
        operation: BLKIF_OP_DISCARD,
        flag: 0,
        handle: 0,
        id: did,
        sector_number: 3 * 16 + 8,
        nr_sectors: 8,
    }
    .encode(&mut b);
    reqs.push(b);
    let rsp = by_id(&w.io(0, 0, &reqs));
    assert_eq!(rsp.len(), 21);
    for (id, _, _) in &writes {
        assert_eq!(rsp[id], okay(*id, BLKIF_OP_WRITE));
    }
    assert_eq!(rsp[&did], okay(did, BLKIF_OP_DISCARD));
    let disk = w.disk().inner.contents().to_vec();
    for (i, (_, sector, segs)) in writes.iter().enumerate() {
        let mut want = seg_bytes(segs);
        if i == 3 {
            want[8 * SECT..].fill(0);
        }
        let s = *sector as usize * SECT;
        assert_eq!(&disk[s..s + want.len()], &want[..], "request {i}");
    }
}

// ---------------------------------------------------------------------------
// ---------------------------------------------------------------------------
// 3. Persistent grants.

#[test]
fn persistent_grants_are_mapped_once() {
    let mut w = world(ram(1), BackendConfig::default(), &[5]);
    w.attach(0);
    w.connect(0, Opts { persistent: true, ..Opts::default() });
    let f = &mut w.fronts[0];
    // blkfront's persistent pages: granted read-write, reused for every I/O.
    let pages: Vec<DPage> = (0..4).map(|i| f.grant_page(&pattern(i, PAGE), false)).collect();
    let wire: Vec<abi::Segment> =
        pages.iter().map(|p| abi::Segment { gref: p.gref.0, first_sect: 0, last_sect: 7 }).collect();
    let id = f.id();
    let req = enc_rw(f.abi, BLKIF_OP_WRITE, id, 64, &wire);
    assert_eq!(w.io(0, 0, &[req]), [okay(id, BLKIF_OP_WRITE)]);
    let maps = w.g.map_calls();
    let hits = w.blk.stats.persistent_hits;
    for round in 0..10u32 {
        let f = &mut w.fronts[0];
        let op = if round % 2 == 0 { BLKIF_OP_READ } else { BLKIF_OP_WRITE };
        if op == BLKIF_OP_READ {
            for p in &pages {
                p.page.write(0, &[0u8; PAGE]);
            }
        } else {
            for (i, p) in pages.iter().enumerate() {
                p.page.write(0, &pattern(round * 10 + i as u32, PAGE));
            }
        }
        let expect: Vec<u8> =
            (0..4).flat_map(|i| pattern(if round == 0 { i } else { (round - 1) * 10 + i }, PAGE)).collect();
        let id = f.id();
        let req = enc_rw(f.abi, op, id, 64, &wire);
        assert_eq!(w.io(0, 0, &[req]), [okay(id, op)]);
        if op == BLKIF_OP_READ {
            let got: Vec<u8> = pages.iter().flat_map(|p| p.page.snapshot()).collect();
            assert!(got == expect, "round {round}: read back the last write");
        }
    }
    assert_eq!(w.g.map_calls(), maps, "reused persistent grants must not be mapped again");
    assert_eq!(w.blk.stats.persistent_hits, hits + 40);
    // Still mapped while connected.
    for p in &pages {
        assert_eq!(w.fronts[0].g.end_access(p.gref), Err(GrantError::InUse));
    }
    // Disconnect releases them all.
    w.fe_state(0, 5);
    w.fe_state(0, 6);
    assert_eq!(w.be_state(0).as_deref(), Some("6"));
    assert_eq!(w.fronts[0].end_all(), []);
}

#[test]
fn without_persistent_every_mapping_is_released_per_request() {
    let mut w = world(ram(1), BackendConfig::default(), &[5]);
    w.attach(0);
    w.connect(0, Opts { persistent: false, ..Opts::default() });
    let ring: BTreeSet<u32> = w.fronts[0].rings[0].grefs.iter().map(|g| g.0).collect();
    for round in 0..3u32 {
        let f = &mut w.fronts[0];
        let (wreq, wid, _) = f.rw(BLKIF_OP_WRITE, 32, &[(0, 7), (2, 5)], round, true);
        let (rreq, rid, _) = f.rw(BLKIF_OP_READ, 32, &[(0, 7), (2, 5)], 0, false);
        let (ireq, iid, _) = f.indirect(BLKIF_OP_WRITE, 256, 20, round);
        let rsp = by_id(&w.io(0, 0, &[wreq, rreq, ireq]));
        assert_eq!(rsp[&wid], okay(wid, BLKIF_OP_WRITE));
        assert_eq!(rsp[&rid], okay(rid, BLKIF_OP_READ));
        assert_eq!(rsp[&iid], okay(iid, BLKIF_OP_WRITE));
        // Every data and indirect grant can be revoked right away.
        let f = &mut w.fronts[0];
        let data: Vec<u32> = f.granted.iter().copied().filter(|g| !ring.contains(g)).collect();
        for g in data {
            assert_eq!(f.g.end_access(GrantRef(g)), Ok(()), "round {round}: grant {g} still mapped");
            f.granted.remove(&g);
        }
    }
    assert_eq!(w.blk.stats.persistent_hits, 0);
}

#[test]
fn persistent_grants_bounded_lru() {
    let mut w = world(ram(1), BackendConfig::default(), &[5]);
    w.attach(0);
    w.connect(0, Opts { persistent: true, ..Opts::default() });
    let ring: BTreeSet<u32> = w.fronts[0].rings[0].grefs.iter().map(|g| g.0).collect();
    // 5 indirect requests of 256 segments: 1285 distinct grants, above
    // the per-ring bound; the oldest ones must be let go.
    let mut order = Vec::new();
    for k in 0..5u32 {
        let f = &mut w.fronts[0];
        let (req, id, pages) = f.indirect(BLKIF_OP_WRITE, u64::from(k) * 256 * 8 % DISK_SECTORS, 256, k * 1000);
        assert_eq!(w.io(0, 0, &[req]), [okay(id, BLKIF_OP_WRITE)]);
        order.extend(pages.iter().map(|p| p.gref.0));
    }
    let f = &mut w.fronts[0];
    let mut still = 0;
    for g in f.granted.clone() {
        if ring.contains(&g) {
            continue;
        }
        match f.g.end_access(GrantRef(g)) {
            Ok(()) => {
                f.granted.remove(&g);
            }
            Err(GrantError::InUse) => still += 1,
            Err(e) => panic!("grant {g}: {e:?}"),
        }
    }
    // Exactly the bound is kept: of 1285 mapped (indirect pages are
    // persistent too), the 229 least recently used were unmapped: the first
    // request's indirect page and its 228 oldest data pages.
    assert_eq!(still, MAX_PERSISTENT_PER_RING, "persistent mappings kept");
    let released: Vec<u32> = order.iter().copied().filter(|g| !f.granted.contains(g)).collect();
    assert_eq!(released.len(), 1285 - 1 - MAX_PERSISTENT_PER_RING, "data grants released");
    assert!(released.iter().all(|g| order[..256].contains(g)), "only the oldest request's grants released");
    assert!(order[256..].iter().all(|g| f.granted.contains(g)), "newer grants kept");
}

// ---------------------------------------------------------------------------
// ---------------------------------------------------------------------------
// 4. Indirect requests.

fn indirect_abi(abi: Abi) {
    let mut w = world(ram(1), BackendConfig::default(), &[5]);
    w.attach(0);
    w.connect(0, Opts { protocol: Some(abi), ..Opts::default() });
    let (wreq, wid, wpages) = w.fronts[0].indirect(BLKIF_OP_WRITE, 1000, 40, 5);
    assert_eq!(w.io(0, 0, &[wreq]), [okay(wid, BLKIF_OP_WRITE)]);
    let written: Vec<u8> = wpages.iter().flat_map(|p| p.page.snapshot()).collect();
    assert_eq!(&w.disk().contents()[1000 * SECT..1000 * SECT + 40 * PAGE], &written[..]);
    let (rreq, rid, rpages) = w.fronts[0].indirect(BLKIF_OP_READ, 1000, 40, 0);
    assert_eq!(w.io(0, 0, &[rreq]), [okay(rid, BLKIF_OP_READ)]);
    let read: Vec<u8> = rpages.iter().flat_map(|p| p.page.snapshot()).collect();
    assert!(read == written, "indirect read returns the indirect write");
    // A 256-segment read over the same range, one page earlier.
    let (req, id, pages) = w.fronts[0].indirect(BLKIF_OP_READ, 1000 - 8, 256, 0);
    assert_eq!(w.io(0, 0, &[req]), [okay(id, BLKIF_OP_READ)]);
    assert_eq!(pages[1].page.snapshot(), wpages[0].page.snapshot());
    assert_eq!(pages[40].page.snapshot(), wpages[39].page.snapshot());
    // 257 segments is over what we advertised.
    let (req, id, _) = w.fronts[0].indirect(BLKIF_OP_READ, 0, 257, 0);
    assert_eq!(w.io(0, 0, &[req]), [error(id, BLKIF_OP_READ)]);
}

#[test]
fn indirect_40_segments_x86_64() {
    indirect_abi(Abi::X86_64);
}

#[test]
fn indirect_40_segments_x86_32() {
    indirect_abi(Abi::X86_32);
}

// ---------------------------------------------------------------------------
// ---------------------------------------------------------------------------
// 5. Multi-queue and multi-page rings.

#[test]
fn two_queues_with_two_page_rings() {
    let mut w = world(ram(2), BackendConfig::default(), &[5]);
    w.attach(0);
    w.connect(0, Opts { queues: 2, order: Some(1), persistent: true, ..Opts::default() });
    assert_eq!(w.blk.ports().len(), 2);
    assert_eq!(w.fronts[0].rings[0].size(), 64);
    for q in 0..2 {
        // Fill the 64-slot ring: entries past slot 35 live on the second page.
        let mut reqs = Vec::new();
        let mut exp = Vec::new();
        for i in 0..64u64 {
            let sector = 2048 * q as u64 + i * 8;
            let (r, id, segs) = w.fronts[0].rw(BLKIF_OP_WRITE, sector, &[(0, 7)], (q as u32) << 16 | i as u32, false);
            reqs.push(r);
            exp.push((id, sector, seg_bytes(&segs)));
        }
        let rsp = by_id(&w.io(0, q, &reqs));
        for (id, sector, data) in &exp {
            assert_eq!(rsp[id], okay(*id, BLKIF_OP_WRITE), "queue {q}");
            let s = *sector as usize * SECT;
            assert_eq!(&w.disk().contents()[s..s + PAGE], &data[..], "queue {q} sector {sector}");
        }
        w.write_read_back(0, q, 2048 * q as u64 + 600, 9 + q as u32);
    }
    // Interleaved on both queues at once.
    let (a, ida, _) = w.fronts[0].rw(BLKIF_OP_READ, 0, &[(0, 7)], 0, false);
    let (b, idb, _) = w.fronts[0].rw(BLKIF_OP_READ, 2048, &[(0, 7)], 0, false);
    w.fronts[0].push(0, &a);
    w.fronts[0].push(1, &b);
    w.fronts[0].publish(0);
    w.fronts[0].publish(1);
    assert_eq!(w.collect(0, 0, 1), [okay(ida, BLKIF_OP_READ)]);
    assert_eq!(w.collect(0, 1, 1), [okay(idb, BLKIF_OP_READ)]);
}

#[test]
fn more_queues_than_the_disk_has() {
    // 3 frontend queues on a one-queue disk share the disk queue.
    let mut w = world(ram(1), BackendConfig::default(), &[5]);
    w.attach(0);
    w.connect(0, Opts { queues: 3, ..Opts::default() });
    for q in 0..3 {
        w.write_read_back(0, q, 300 * q as u64, q as u32);
    }
}

// ---------------------------------------------------------------------------
// ---------------------------------------------------------------------------
// 7. Flush and barrier ordering.

#[test]
fn flush_and_barrier_wait_for_earlier_writes() {
    let mut w = world(SlowDisk::new(DISK_SECTORS, 1, 3, 16), BackendConfig::default(), &[5]);
    w.attach(0);
    w.connect(0, Opts::default());
    w.disk_mut().log.clear();
    let f = &mut w.fronts[0];
    let (w1, id1, s1) = f.rw(BLKIF_OP_WRITE, 0, &[(0, 7)], 1, true);
    let (w2, id2, s2) = f.rw(BLKIF_OP_WRITE, 8, &[(0, 7)], 2, true);
    let fid = f.id();
    let flush = enc_rw(f.abi, BLKIF_OP_FLUSH_DISKCACHE, fid, 0, &[]);
    let (w3, id3, _) = f.rw(BLKIF_OP_WRITE, 16, &[(0, 7)], 3, true);
    let (mut barrier, bid, bsegs) = f.rw(BLKIF_OP_WRITE, 24, &[(0, 7)], 4, true);
    barrier[0] = BLKIF_OP_WRITE_BARRIER;
    let (w4, id4, _) = f.rw(BLKIF_OP_WRITE, 32, &[(0, 7)], 5, true);
    let rsp = w.io(0, 0, &[w1, w2, flush, w3, barrier, w4]);
    let pos = |id: u64| rsp.iter().position(|r| r.id == id).expect("answered");
    for (id, op) in [
        (id1, BLKIF_OP_WRITE),
        (id2, BLKIF_OP_WRITE),
        (fid, BLKIF_OP_FLUSH_DISKCACHE),
        (id3, BLKIF_OP_WRITE),
        (bid, BLKIF_OP_WRITE_BARRIER),
        (id4, BLKIF_OP_WRITE),
    ] {
        assert_eq!(rsp[pos(id)], okay(id, op));
    }
    assert!(pos(fid) > pos(id1) && pos(fid) > pos(id2), "flush answered before earlier writes: {rsp:?}");
    assert!(pos(bid) > pos(id3) && pos(bid) > pos(fid), "barrier answered before earlier requests: {rsp:?}");
    let log = w.disk().log.clone();
    let at = |e: DiskEv| log.iter().position(|x| *x == e).unwrap_or_else(|| panic!("{e:?} not in {log:?}"));
    let flushes: Vec<usize> =
        log.iter().enumerate().filter(|(_, e)| matches!(e, DiskEv::Submit('F', _))).map(|(i, _)| i).collect();
    assert_eq!(flushes.len(), 2, "one flush for FLUSH, one for the barrier: {log:?}");
    // FLUSH reaches the disk only after both earlier writes completed.
    assert!(flushes[0] > at(DiskEv::Done('W', 0)) && flushes[0] > at(DiskEv::Done('W', 8)), "{log:?}");
    // Nothing after the flush goes down before the flush completed.
    let done_f: Vec<usize> =
        log.iter().enumerate().filter(|(_, e)| matches!(e, DiskEv::Done('F', _))).map(|(i, _)| i).collect();
    assert_eq!(done_f.len(), 2, "{log:?}");
    assert!(at(DiskEv::Submit('W', 16)) > done_f[0], "{log:?}");
    // The barrier's preflush goes down after everything before it
    // completed, its data (with FUA) after the preflush completed (never
    // write-then-flush), and the write after the barrier only once the
    // barrier's data is written.
    let bw = at(DiskEv::Submit('W', 24));
    assert!(flushes[1] > at(DiskEv::Done('W', 16)) && flushes[1] > done_f[0], "{log:?}");
    assert!(bw > done_f[1], "barrier data after its preflush: {log:?}");
    assert!(at(DiskEv::Submit('W', 32)) > at(DiskEv::Done('W', 24)), "later write held behind the barrier: {log:?}");
    let contents = w.disk().inner.contents().to_vec();
    assert_eq!(&contents[..PAGE], &seg_bytes(&s1)[..]);
    assert_eq!(&contents[8 * SECT..8 * SECT + PAGE], &seg_bytes(&s2)[..]);
    assert_eq!(&contents[24 * SECT..24 * SECT + PAGE], &seg_bytes(&bsegs)[..]);
}

#[test]
fn flush_alone_and_in_batches_on_idle_ring() {
    let mut w = world(ram(1), BackendConfig::default(), &[5]);
    w.attach(0);
    w.connect(0, Opts::default());
    for _ in 0..3 {
        let f = &mut w.fronts[0];
        let fid = f.id();
        let flush = enc_rw(f.abi, BLKIF_OP_FLUSH_DISKCACHE, fid, 0, &[]);
        assert_eq!(w.io(0, 0, &[flush]), [okay(fid, BLKIF_OP_FLUSH_DISKCACHE)]);
    }
}

// ---------------------------------------------------------------------------

/// Per-ring counters for the metrics endpoint: bytes each way, the
/// latency histogram (one entry per disk operation), no errors.
#[test]
fn ring_stats_count_bytes_and_latency() {
    let mut w = world(ram(1), BackendConfig::default(), &[5]);
    w.attach(0);
    w.connect(0, Opts::default());
    let (req, id, _) = w.fronts[0].rw(BLKIF_OP_WRITE, 8, &[(0, 7), (0, 3)], 1, true);
    assert_eq!(w.io(0, 0, &[req]), [okay(id, BLKIF_OP_WRITE)]);
    let (req, id, _) = w.fronts[0].rw(BLKIF_OP_READ, 8, &[(0, 7)], 2, false);
    assert_eq!(w.io(0, 0, &[req]), [okay(id, BLKIF_OP_READ)]);
    let stats = w.blk.ring_stats();
    assert_eq!(stats.len(), 1);
    let st = stats[0].2;
    assert_eq!((st.write_bytes, st.read_bytes, st.errors), (12 * SECT as u64, 8 * SECT as u64, 0));
    assert_eq!(st.latency.counts.iter().sum::<u64>(), 2);
    assert_eq!((st.in_flight, st.queued), (0, 0));
    let mut l = blkback::Latency::default();
    l.record(0);
    l.record(50_001);
    l.record(u64::MAX);
    assert_eq!((l.counts[0], l.counts[1], l.counts[blkback::LATENCY_BOUNDS_NS.len()]), (1, 1, 1));
    assert_eq!(l.sum_ns, u64::MAX);
}
