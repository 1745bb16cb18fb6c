//! Power cuts (issue 11): what blkif.h promises a guest about durability
//! and ordering holds at every point, on a disk with a volatile write cache
//! that executes requests in its own order (`block::model::CacheDisk`,
//! reordering on).
//!
//! Random sequences of writes, flushes and barriers (with and without
//! data) and discards go through the simulated blkfront. The disk executes
//! one request per step; after every step the media is cut with several
//! keep sets (nothing, everything, random halves of the cached blocks) and
//! checked:
//!
//! * durability: a write acknowledged before a flush or barrier that then
//!   completed, or written by a completed flush/barrier with data, is on
//!   the media, unless a write issued after it (or concurrent with it)
//!   is there instead;
//! * barrier ordering: if anything a barrier carried, or anything issued
//!   after it, is on the media, every write acknowledged before the
//!   barrier is too (same exception).

use std::cell::Cell;
use std::collections::BTreeSet;

use proptest::prelude::*;

use blkback::abi::{
    Abi, DiscardX64, BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER,
    BLKIF_RSP_OKAY, MAX_REQUEST_SIZE,
};
use blkback::testing::*;
use blkback::xenbus::BackendConfig;
use block::model::CacheDisk;
use drivers::block::{BlockCompletion, BlockDevice, BlockRequest, Features, Token, Volumes};
use xen::evtchn::EventOps;

/// Blocks of the model disk (512 bytes each): 8 pages.
const BLOCKS: u64 = 64;
/// Pages the requests address.
const PAGES: u8 = 8;

/// A [`CacheDisk`] that executes only as many requests as the test allows,
/// so that a cut can fall between any two executions.
struct Stepper {
    disk: CacheDisk<Buf>,
    budget: Cell<usize>,
}

impl BlockDevice for Stepper {
    type Buffer = Buf;
    fn block_size(&self) -> u32 {
        self.disk.block_size()
    }
    fn capacity(&self) -> u64 {
        self.disk.capacity()
    }
    fn queue_count(&self) -> u16 {
        self.disk.queue_count()
    }
    fn max_transfer(&self) -> usize {
        self.disk.max_transfer()
    }
    fn features(&self) -> Features {
        self.disk.features()
    }
    fn submit(&mut self, q: u16, r: BlockRequest<Buf>) -> Result<Token, (drivers::Error, BlockRequest<Buf>)> {
        self.disk.submit(q, r)
    }
    fn poll(&mut self, q: u16, now: u64) -> Option<BlockCompletion<Buf>> {
        if self.budget.get() == 0 {
            return None;
        }
        self.budget.set(self.budget.get() - 1);
        self.disk.poll(q, now)
    }
}
impl Volumes for Stepper {}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Write,
    Flush,
    Barrier,
    Discard,
}

#[derive(Clone, Debug)]
enum Action {
    /// Push one request: kind, page, with data (flush/barrier).
    Push(Kind, u8, bool),
    /// Let the disk execute one request and the backend run.
    Step,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => (0..PAGES).prop_map(|p| Action::Push(Kind::Write, p, true)),
        1 => (0..PAGES, any::<bool>()).prop_map(|(p, d)| Action::Push(Kind::Flush, p, d)),
        1 => (0..PAGES, any::<bool>()).prop_map(|(p, d)| Action::Push(Kind::Barrier, p, d)),
        1 => (0..PAGES).prop_map(|p| Action::Push(Kind::Discard, p, false)),
        5 => Just(Action::Step),
    ]
}

/// One request as the frontend knows it.
struct Sent {
    kind: Kind,
    id: u64,
    /// First 512-byte block and the data per block (zeros for a discard),
    /// if it writes.
    data: Option<(u64, Vec<Vec<u8>>)>,
    issued: usize,
    acked: Option<usize>,
    ok: bool,
}

impl Sent {
    fn writes(&self, b: u64) -> Option<&[u8]> {
        let (first, blocks) = self.data.as_ref()?;
        let i = b.checked_sub(*first)? as usize;
        blocks.get(i).map(|v| v.as_slice())
    }
    fn is_write(&self) -> bool {
        matches!(self.kind, Kind::Write) || matches!(self.kind, Kind::Flush | Kind::Barrier) && self.data.is_some()
    }
}

/// Checks one cut image against what the frontend was promised.
fn check(sent: &[Sent], image: &[u8]) -> Result<(), String> {
    let block = |b: u64| &image[b as usize * SECT..(b as usize + 1) * SECT];
    let acked_before = |x: &Sent, t: usize| x.ok && x.acked.is_some_and(|a| a < t);
    // Writes that must be on the media (or overwritten), by index.
    let mut durable: BTreeSet<usize> = BTreeSet::new();
    for (fi, f) in sent.iter().enumerate() {
        if !matches!(f.kind, Kind::Flush | Kind::Barrier) {
            continue;
        }
        let completed = f.ok && f.acked.is_some();
        // Barrier ordering: anything it carried, or anything issued after
        // it, on the media means what came before it must be too.
        let later_visible = matches!(f.kind, Kind::Barrier)
            && sent[fi..].iter().filter(|z| z.is_write() && !matches!(z.kind, Kind::Discard)).any(|z| {
                let (first, blocks) = z.data.as_ref().expect("writes");
                (0..blocks.len() as u64).any(|i| block(first + i) == z.writes(first + i).expect("in range"))
            });
        if completed || later_visible {
            for (xi, x) in sent[..fi].iter().enumerate() {
                if x.is_write() && !matches!(x.kind, Kind::Discard) && acked_before(x, f.issued) {
                    durable.insert(xi);
                }
            }
        }
        if completed && f.data.is_some() {
            durable.insert(fi);
        }
    }
    for b in 0..BLOCKS {
        // The newest durable writes at b: those not ordered before
        // another durable write at b.
        let at_b: Vec<usize> = durable.iter().copied().filter(|&i| sent[i].writes(b).is_some()).collect();
        if at_b.is_empty() {
            continue;
        }
        // Allowed: a write to b not known to be older than some durable
        // write to b (acknowledged before that one was issued).
        let older_than_durable = |x: &Sent| at_b.iter().any(|&d| acked_before(x, sent[d].issued));
        let ok = sent.iter().any(|x| x.writes(b).is_some_and(|d| d == block(b)) && !older_than_durable(x));
        if !ok {
            let want: Vec<u64> = at_b.iter().map(|&i| sent[i].id).collect();
            return Err(format!("block {b}: lost the write(s) {want:?} that must have survived"));
        }
    }
    Ok(())
}

fn run(seed: u64, persistent: bool, actions: Vec<Action>, keep_seeds: [u64; 3]) -> Result<(), TestCaseError> {
    let disk = Stepper { disk: CacheDisk::new(512, BLOCKS, 1, seed, true), budget: Cell::new(usize::MAX) };
    let mut w = world(disk, BackendConfig::default(), &[5]);
    w.attach(0);
    w.connect(0, Opts { protocol: Some(Abi::X86_64), persistent, ..Opts::default() });
    assert_eq!(w.be(0, "feature-barrier").as_deref(), Some("1"));
    assert_eq!(w.be(0, "feature-flush-cache").as_deref(), Some("1"));
    w.disk().budget.set(0);
    let mut sent: Vec<Sent> = Vec::new();
    let mut now = 0usize;
    let mut pending = 0usize;
    let cuts = |w: &World<Stepper>, sent: &[Sent]| -> Result<(), String> {
        let d = w.disk();
        check(sent, d.disk.media()).map_err(|e| format!("cut keeping nothing: {e}"))?;
        check(sent, &d.disk.power_cut(|_| true)).map_err(|e| format!("cut keeping everything: {e}"))?;
        for k in keep_seeds {
            let img = d.disk.power_cut(|lba| (lba.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ k).count_ones() % 2 == 0);
            check(sent, &img).map_err(|e| format!("cut keeping set {k:#x}: {e}"))?;
        }
        Ok(())
    };
    let step = |w: &mut World<Stepper>, sent: &mut Vec<Sent>, now: &mut usize, pending: &mut usize| {
        *now += 1;
        w.disk().budget.set(1);
        w.blk.poll(&mut w.g, &mut w.e);
        w.disk().budget.set(0);
        // Also a turn with the disk held, so the backend submits what the
        // completion allowed.
        w.blk.poll(&mut w.g, &mut w.e);
        let f = &mut w.fronts[0];
        let _ = f.e.take_pending(f.rings[0].port);
        for r in f.take_responses(0) {
            let s = sent.iter_mut().find(|s| s.id == r.id).expect("answer to a request");
            assert!(s.acked.is_none(), "answered twice");
            s.acked = Some(*now);
            s.ok = r.status == BLKIF_RSP_OKAY;
            *pending -= 1;
        }
    };
    for a in actions {
        match a {
            Action::Push(kind, page, with_data) => {
                // Distinct data per request (the test pattern has 256 kinds).
                let seed = sent.len() as u32 + 1;
                if pending >= 24 {
                    continue;
                }
                let sector = u64::from(page) * 8;
                let f = &mut w.fronts[0];
                let (req, id, data) = match kind {
                    Kind::Write | Kind::Flush | Kind::Barrier if with_data || matches!(kind, Kind::Write) => {
                        let op = match kind {
                            Kind::Write => BLKIF_OP_WRITE,
                            Kind::Flush => BLKIF_OP_FLUSH_DISKCACHE,
                            _ => BLKIF_OP_WRITE_BARRIER,
                        };
                        let (mut r, id, segs) = f.rw(BLKIF_OP_WRITE, sector, &[(0, 7)], seed, true);
                        r[0] = op;
                        let bytes = seg_bytes(&segs);
                        (r, id, Some((sector, bytes.chunks(SECT).map(|c| c.to_vec()).collect())))
                    }
                    Kind::Write | Kind::Flush | Kind::Barrier => {
                        let id = f.id();
                        let op =
                            if matches!(kind, Kind::Flush) { BLKIF_OP_FLUSH_DISKCACHE } else { BLKIF_OP_WRITE_BARRIER };
                        (enc_rw(f.abi, op, id, 0, &[]), id, None)
                    }
                    Kind::Discard => {
                        let id = f.id();
                        let mut b = [0u8; MAX_REQUEST_SIZE];
                        DiscardX64 {
                            operation: BLKIF_OP_DISCARD,
                            flag: 0,
                            handle: 0,
                            id,
                            sector_number: sector,
                            nr_sectors: 8,
                        }
                        .encode(&mut b);
                        (b, id, Some((sector, vec![vec![0u8; SECT]; 8])))
                    }
                };
                f.push(0, &req);
                f.publish(0);
                sent.push(Sent { kind, id, data, issued: now, acked: None, ok: false });
                pending += 1;
                now += 1;
            }
            Action::Step => step(&mut w, &mut sent, &mut now, &mut pending),
        }
        cuts(&w, &sent).map_err(TestCaseError::fail)?;
    }
    for _ in 0..2000 {
        if pending == 0 {
            break;
        }
        step(&mut w, &mut sent, &mut now, &mut pending);
        cuts(&w, &sent).map_err(TestCaseError::fail)?;
    }
    prop_assert_eq!(pending, 0, "every request answered");
    prop_assert!(sent.iter().all(|s| s.ok), "every request succeeded");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn acknowledged_writes_survive_power_cuts_and_barriers_order(
        seed in any::<u64>(),
        persistent in any::<bool>(),
        actions in prop::collection::vec(action(), 1..60),
        keep_seeds in any::<[u64; 3]>(),
    ) {
        run(seed, persistent, actions, keep_seeds)?;
    }
}
