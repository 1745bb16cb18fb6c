//! One polling context per ring (`blkback::testing`): a flooding ring
//! cannot starve another; progress is told apart from waiting on the disk.

use blkback::abi::{self, BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_RSP_OKAY};
use blkback::testing::*;
use blkback::xenbus::BackendConfig;
use drivers::block::Volumes;
use xen::evtchn::EventOps;

// ---------------------------------------------------------------------------
// 11. One polling context per ring: a flooding ring cannot starve another.

/// Frontend 0 keeps its ring full of 1 MiB indirect reads (more than the
/// buffer budget can hold); frontend 1 asks for one small write. It is
/// answered within a few polls, and the flood keeps being served too.
fn flood_does_not_starve<D: Volumes<Buffer = Buf> + DiskBytes + 'static>(disk: D, bound: u32) {
    let mut w = world(disk, BackendConfig::default(), &[5, 6]);
    w.attach(0);
    w.attach(1);
    w.connect(0, Opts { order: Some(1), ..Opts::default() });
    w.connect(1, Opts::default());
    // One set of 256 pages (and their indirect page) for every flood read.
    let f = &mut w.fronts[0];
    let pages: Vec<DPage> = (0..256).map(|_| f.grant_page(&[0u8; PAGE], false)).collect();
    let mut b = vec![0u8; PAGE];
    for (i, p) in pages.iter().enumerate() {
        abi::Segment { gref: p.gref.0, first_sect: 0, last_sect: 7 }.encode(&mut b[i * 8..]);
    }
    let ind = f.grant_page(&b, true).gref;
    let refill = |f: &mut Frontend| {
        let mut n = 0;
        while f.rings[0].prod().wrapping_sub(f.rings[0].cons()) < f.rings[0].size() {
            let id = f.id();
            let req = enc_indirect(f.abi, BLKIF_OP_READ, 256, id, 0, &[ind]);
            f.push(0, &req);
            n += 1;
        }
        f.publish(0);
        n
    };
    // The flooder consumes its answers and refills its ring; returns how
    // many answers it got.
    let flood_step = |w: &mut World<D>| {
        let f = &mut w.fronts[0];
        let mut got = 0;
        if f.e.take_pending(f.rings[0].port) {
            let rsp = f.take_responses(0);
            assert!(rsp.iter().all(|r| r.status == BLKIF_RSP_OKAY), "flood read failed: {rsp:?}");
            got = rsp.len();
        }
        refill(f);
        got
    };
    let mut flood_answers = flood_step(&mut w);
    // Saturate: the flood holds (nearly) the whole buffer budget.
    for _ in 0..4 {
        w.blk.poll(&mut w.g, &mut w.e);
        flood_answers += flood_step(&mut w);
    }
    assert!(w.blk.buffer_bytes() >= 3 << 20, "the flood holds the buffers ({} bytes)", w.blk.buffer_bytes());
    let (req, id, segs) = w.fronts[1].rw(BLKIF_OP_WRITE, 2048, &[(0, 7), (0, 7)], 42, true);
    w.fronts[1].push(0, &req);
    w.fronts[1].publish(0);
    let before = flood_answers;
    let mut answered = None;
    for poll in 1..=60u32 {
        w.blk.poll(&mut w.g, &mut w.e);
        flood_answers += flood_step(&mut w);
        let f = &mut w.fronts[1];
        if f.e.take_pending(f.rings[0].port) {
            assert_eq!(f.take_responses(0), [okay(id, BLKIF_OP_WRITE)]);
            answered = Some(poll);
            break;
        }
    }
    let at = answered.expect("the small write was starved by the flood");
    assert!(at <= bound, "answered after {at} polls (bound {bound})");
    assert_eq!(&w.disk().bytes()[2048 * SECT..2048 * SECT + 2 * PAGE], &seg_bytes(&segs)[..]);
    // The flood was not stopped to make room: it was answered meanwhile,
    // and each ring had its own turns.
    assert!(flood_answers > before || at <= 2, "flood answered meanwhile");
    let stats = w.blk.ring_stats();
    assert_eq!(stats.len(), 2);
    assert!(stats.iter().all(|(_, _, s)| s.turns >= u64::from(at)), "every context polled each time: {stats:?}");
    assert!(stats[0].2.buffer_waits > 0, "the flood ran into the buffer budget: {stats:?}");
    // Drain: stop flooding, everything is answered and given back.
    for _ in 0..200 {
        if !w.blk.poll(&mut w.g, &mut w.e) {
            break;
        }
        let f = &mut w.fronts[0];
        if f.e.take_pending(f.rings[0].port) {
            f.take_responses(0);
        }
    }
    assert_eq!(w.blk.buffer_bytes(), 0);
}

#[test]
fn flooding_ring_does_not_starve_another_fast_disk() {
    flood_does_not_starve(ram(1), 3);
}

#[test]
fn flooding_ring_does_not_starve_another_slow_disk() {
    // Completions lag 2 polls, one at a time: buffers come back slowly.
    flood_does_not_starve(SlowDisk::new(DISK_SECTORS, 1, 2, 64), 16);
}

#[test]
fn progress_is_told_apart_from_waiting_on_the_disk() {
    // Completions lag 3 polls: the backend must say "busy, but only the
    // disk is working" (the main loop's cue to nap) until the answer.
    let mut w = world(SlowDisk::new(DISK_SECTORS, 1, 3, 64), BackendConfig::default(), &[5]);
    w.attach(0);
    w.connect(0, Opts::default());
    assert_eq!(w.blk.in_flight(), 0);
    let (req, id, _segs) = w.fronts[0].rw(BLKIF_OP_WRITE, 64, &[(0, 7)], 7, true);
    w.fronts[0].push(0, &req);
    w.fronts[0].publish(0);
    assert!(w.blk.poll(&mut w.g, &mut w.e));
    assert!(w.blk.progressed(), "taking and submitting the request is progress");
    assert_eq!(w.blk.in_flight(), 1);
    let mut waiting_polls = 0;
    let mut answered = false;
    for _ in 0..10 {
        let busy = w.blk.poll(&mut w.g, &mut w.e);
        if w.blk.progressed() {
            answered = true;
            break;
        }
        assert!(busy, "a command in flight keeps the backend busy");
        assert_eq!(w.blk.in_flight(), 1);
        waiting_polls += 1;
    }
    assert!(answered, "the write was never completed");
    assert!(waiting_polls >= 1, "polls that only waited for the disk must not count as progress");
    assert_eq!(w.blk.in_flight(), 0);
    let f = &mut w.fronts[0];
    assert!(f.e.take_pending(f.rings[0].port));
    assert_eq!(f.take_responses(0), [okay(id, BLKIF_OP_WRITE)]);
    // Idle: nothing in flight, nothing to do.
    assert!(!w.blk.poll(&mut w.g, &mut w.e));
    assert!(!w.blk.progressed());
}
