//! Property tests of the real [`blkback::Blkback`] driven by the simulated
//! blkfront (`blkback::testing`), checked against a model disk.
//!
//! Random request sequences, in batches several requests deep, over random
//! connections (either ABI, with or without the `protocol` key, ring
//! orders 0..=2, indices near the u32 wrap, persistent grants or grant copy
//! or map/unmap, a disk whose completions lag and whose queue fills):
//!
//! * every request is answered exactly once (no id twice, none missing),
//!   with its own operation;
//! * valid requests are OKAY and reads return what was last written
//!   (the model applies each batch in ring order);
//! * out-of-range requests and bad grants are answered `BLKIF_RSP_ERROR`,
//!   unknown operations `BLKIF_RSP_EOPNOTSUPP`, and change nothing;
//! * the disk ends equal to the model, no buffer is held, and closing the
//!   device releases every grant.
//!
//! The frontend's ring (`xen_ring::mock::FrontRing`) also checks that the
//! backend never publishes more responses than requests were published.

use std::collections::HashMap;

use proptest::prelude::*;

use blkback::abi::{
    self, Abi, DiscardX64, RequestX32, BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT, BLKIF_OP_READ,
    BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY, MAX_REQUEST_SIZE,
};
use blkback::testing::*;
use blkback::xenbus::BackendConfig;
use drivers::block::BlockDevice;
use xen::evtchn::EventOps;

/// One request of a batch.
#[derive(Clone, Debug)]
enum Op {
    Write {
        at: u16,
        spans: Vec<(u8, u8)>,
        seed: u32,
        indirect: bool,
    },
    Read {
        at: u16,
        spans: Vec<(u8, u8)>,
        indirect: bool,
    },
    Flush,
    /// A barrier carrying a write.
    Barrier {
        at: u16,
        seed: u32,
    },
    Discard {
        at: u16,
        sectors: u8,
    },
    /// A read or write ending past the disk.
    OutOfRange {
        write: bool,
        past: u8,
    },
    /// A read or write naming a grant that was never given.
    BadGrant {
        write: bool,
        at: u16,
    },
    /// An operation code blkif does not have.
    Unsupported(u8),
}

fn span() -> impl Strategy<Value = (u8, u8)> {
    (0u8..8, 0u8..8).prop_map(|(a, b)| (a.min(b), a.max(b)))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (any::<u16>(), prop::collection::vec(span(), 1..=11), any::<u32>())
            .prop_map(|(at, spans, seed)| Op::Write { at, spans, seed, indirect: false }),
        5 => (any::<u16>(), prop::collection::vec(span(), 1..=11)).prop_map(|(at, spans)| Op::Read { at, spans, indirect: false }),
        1 => (any::<u16>(), prop::collection::vec(span(), 1..=40), any::<u32>())
            .prop_map(|(at, spans, seed)| Op::Write { at, spans, seed, indirect: true }),
        1 => (any::<u16>(), prop::collection::vec(span(), 1..=40)).prop_map(|(at, spans)| Op::Read { at, spans, indirect: true }),
        1 => Just(Op::Flush),
        1 => (any::<u16>(), any::<u32>()).prop_map(|(at, seed)| Op::Barrier { at, seed }),
        1 => (any::<u16>(), 1u8..64).prop_map(|(at, sectors)| Op::Discard { at, sectors }),
        1 => (any::<bool>(), 0u8..16).prop_map(|(write, past)| Op::OutOfRange { write, past }),
        1 => (any::<bool>(), any::<u16>()).prop_map(|(write, at)| Op::BadGrant { write, at }),
        1 => prop_oneof![Just(4u8), 7u8..=255].prop_map(Op::Unsupported),
    ]
}

/// How the frontend connects and what the disk is like.
#[derive(Clone, Debug)]
struct Setup {
    protocol: Option<Abi>,
    order: Option<u8>,
    start: u32,
    persistent: bool,
    grant_copy: bool,
    delay: u32,
    depth: usize,
    limit: bool,
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        prop_oneof![Just(None), Just(Some(Abi::X86_32)), Just(Some(Abi::X86_64))],
        prop_oneof![Just(None), (0u8..=2).prop_map(Some)],
        prop_oneof![Just(0u32), u32::MAX - 40..=u32::MAX, any::<u32>()],
        any::<bool>(),
        any::<bool>(),
        0u32..3,
        1usize..8,
        any::<bool>(),
    )
        .prop_map(|(protocol, order, start, persistent, grant_copy, delay, depth, limit)| Setup {
            protocol,
            order,
            start,
            persistent,
            grant_copy,
            delay,
            depth,
            limit,
        })
}

/// A read's pages (with their spans) and the bytes they must receive.
type ReadCheck = (Vec<(DPage, u8, u8)>, Vec<u8>);

/// What a request must be answered with, and for a read where its data
/// landed and what it must be.
struct Expect {
    op: u8,
    status: i16,
    read: Option<ReadCheck>,
}

/// Sectors covered by `spans`.
fn total(spans: &[(u8, u8)]) -> u64 {
    spans.iter().map(|(f, l)| u64::from(l - f) + 1).sum()
}

/// A transfer of `n` sectors placed somewhere on the disk.
fn place(at: u16, n: u64) -> u64 {
    u64::from(at) % (DISK_SECTORS - n + 1)
}

/// A request over `segs` encoded for `abi` with a free operation code.
fn enc_op(abi: Abi, op: u8, id: u64, sector: u64, segs: &[abi::Segment]) -> Req {
    let mut r = enc_rw(Abi::X86_64, BLKIF_OP_READ, id, sector, segs);
    r[0] = op;
    if abi == Abi::X86_32 {
        let x = RequestX32::from(abi::RequestX64::decode(&r));
        let mut b = [0u8; MAX_REQUEST_SIZE];
        x.encode(&mut b);
        return b;
    }
    r
}

/// Builds one request, applies it to the model, and says what its answer
/// must be.
fn build(f: &mut Frontend, model: &mut [u8], op: Op) -> (Req, u64, Expect) {
    let ok = |op| Expect { op, status: BLKIF_RSP_OKAY, read: None };
    match op {
        Op::Write { at, spans, seed, indirect } => {
            let sector = place(at, total(&spans));
            let (req, id, segs) = if indirect {
                f.indirect_spans(BLKIF_OP_WRITE, sector, &spans, seed)
            } else {
                f.rw(BLKIF_OP_WRITE, sector, &spans, seed, true)
            };
            let data = seg_bytes(&segs);
            let s = sector as usize * SECT;
            model[s..s + data.len()].copy_from_slice(&data);
            (req, id, ok(BLKIF_OP_WRITE))
        }
        Op::Read { at, spans, indirect } => {
            let sector = place(at, total(&spans));
            let (req, id, segs) = if indirect {
                f.indirect_spans(BLKIF_OP_READ, sector, &spans, 0)
            } else {
                f.rw(BLKIF_OP_READ, sector, &spans, 0, false)
            };
            let s = sector as usize * SECT;
            let want = model[s..s + total(&spans) as usize * SECT].to_vec();
            (req, id, Expect { op: BLKIF_OP_READ, status: BLKIF_RSP_OKAY, read: Some((segs, want)) })
        }
        Op::Flush => {
            let id = f.id();
            (enc_rw(f.abi, BLKIF_OP_FLUSH_DISKCACHE, id, 0, &[]), id, ok(BLKIF_OP_FLUSH_DISKCACHE))
        }
        Op::Barrier { at, seed } => {
            let sector = place(at, 8);
            let (mut req, id, segs) = f.rw(BLKIF_OP_WRITE, sector, &[(0, 7)], seed, true);
            req[0] = BLKIF_OP_WRITE_BARRIER;
            let data = seg_bytes(&segs);
            let s = sector as usize * SECT;
            model[s..s + data.len()].copy_from_slice(&data);
            (req, id, ok(BLKIF_OP_WRITE_BARRIER))
        }
        Op::Discard { at, sectors } => {
            let n = u64::from(sectors);
            let sector = place(at, n);
            let id = f.id();
            let mut b = [0u8; MAX_REQUEST_SIZE];
            let d = DiscardX64 {
                operation: BLKIF_OP_DISCARD,
                flag: 0,
                handle: 0,
                id,
                sector_number: sector,
                nr_sectors: n,
            };
            match f.abi {
                Abi::X86_64 => d.encode(&mut b),
                Abi::X86_32 => abi::DiscardX32::from(d).encode(&mut b),
            }
            model[sector as usize * SECT..(sector + n) as usize * SECT].fill(0);
            (b, id, ok(BLKIF_OP_DISCARD))
        }
        Op::OutOfRange { write, past } => {
            let op = if write { BLKIF_OP_WRITE } else { BLKIF_OP_READ };
            let (req, id, _) = f.rw(op, DISK_SECTORS - 7 + u64::from(past), &[(0, 7)], 9, write);
            (req, id, Expect { op, status: BLKIF_RSP_ERROR, read: None })
        }
        Op::BadGrant { write, at } => {
            let op = if write { BLKIF_OP_WRITE } else { BLKIF_OP_READ };
            let id = f.id();
            let seg = abi::Segment { gref: 0xdead_0000 | u32::from(at), first_sect: 0, last_sect: 7 };
            (enc_rw(f.abi, op, id, place(at, 8), &[seg]), id, Expect { op, status: BLKIF_RSP_ERROR, read: None })
        }
        Op::Unsupported(code) => {
            let id = f.id();
            let seg = abi::Segment { gref: 0xdead, first_sect: 0, last_sect: 7 };
            let req = enc_op(f.abi, code, id, 0, &[seg]);
            (req, id, Expect { op: code, status: BLKIF_RSP_EOPNOTSUPP, read: None })
        }
    }
}

/// Runs `batches` on a fresh world set up as `s`, checking every answer;
/// returns the world (for final checks) and the model.
fn run(s: &Setup, batches: Vec<Vec<Op>>) -> Result<(World<SlowDisk>, Vec<u8>), TestCaseError> {
    let disk =
        SlowDisk::new(DISK_SECTORS, 1, s.delay, s.depth).with_limit(if s.limit { 16 * 1024 } else { usize::MAX });
    let cfg = BackendConfig { persistent: s.persistent, ..BackendConfig::default() };
    let mut w = world(disk, cfg, &[5]);
    w.blk.set_grant_copy(s.grant_copy);
    w.attach(0);
    w.connect(0, Opts { protocol: s.protocol, order: s.order, start: s.start, persistent: s.persistent, queues: 1 });
    let mut model = vec![0u8; DISK_SECTORS as usize * SECT];
    for (b, batch) in batches.into_iter().enumerate() {
        let mut want: HashMap<u64, Expect> = HashMap::new();
        let mut reqs = Vec::new();
        for op in batch {
            let (req, id, exp) = build(&mut w.fronts[0], &mut model, op);
            reqs.push(req);
            want.insert(id, exp);
        }
        let n = reqs.len();
        let rsp = w.io(0, 0, &reqs);
        prop_assert_eq!(rsp.len(), n, "batch {}", b);
        for r in rsp {
            let Some(exp) = want.remove(&r.id) else {
                return Err(TestCaseError::fail(format!("batch {b}: id {:#x} answered twice or never asked", r.id)));
            };
            prop_assert_eq!(r.operation, exp.op, "batch {}: id {:#x}", b, r.id);
            prop_assert_eq!(r.status, exp.status, "batch {}: id {:#x} op {}", b, r.id, exp.op);
            if let Some((segs, data)) = exp.read {
                prop_assert!(seg_bytes(&segs) == data, "batch {}: read {:#x} differs from the model", b, r.id);
            }
        }
        prop_assert!(want.is_empty(), "batch {}: unanswered", b);
    }
    // Nothing still in flight: one more round finds the ring idle.
    prop_assert!(w.pump());
    Ok((w, model))
}

/// The world after `run`: disk equals the model, nothing held, closing
/// gives every grant back.
fn finish(mut w: World<SlowDisk>, model: &[u8]) -> Result<(), TestCaseError> {
    prop_assert!(w.disk().inner.contents() == model, "disk differs from the model");
    prop_assert_eq!(w.blk.buffer_bytes(), 0);
    prop_assert!(w.disk().largest <= w.disk().max_transfer());
    w.fe_state(0, 5);
    w.fe_state(0, 6);
    prop_assert_eq!(w.fronts[0].end_all(), vec![]);
    prop_assert!(w.blk.ports().is_empty());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    /// Random batches against the model (see the module doc).
    #[test]
    fn random_sequences_match_model(
        s in setup(),
        batches in prop::collection::vec(prop::collection::vec(op(), 1..10), 1..12),
    ) {
        let (w, model) = run(&s, batches)?;
        finish(w, &model)?;
    }

    /// A hostile frontend scribbling over its ring slots and publishing
    /// arbitrary producers never makes the backend panic or answer more
    /// than was published (the frontend ring checks); once broken, the ring
    /// stays broken; closing still gives every grant back.
    #[test]
    fn hostile_ring_contents(
        x32 in any::<bool>(),
        slots in prop::collection::vec(prop::collection::vec(any::<u8>(), MAX_REQUEST_SIZE), 1..24),
        prods in prop::collection::vec(any::<u32>(), 1..6),
    ) {
        let abi = if x32 { Abi::X86_32 } else { Abi::X86_64 };
        let mut w = world(ram(1), BackendConfig::default(), &[5]);
        w.attach(0);
        w.connect(0, Opts { protocol: Some(abi), ..Opts::default() });
        let model = w.disk().contents().to_vec();
        for (k, p) in prods.iter().enumerate() {
            let f = &mut w.fronts[0];
            for raw in slots.iter().skip(k * 4).take(4) {
                let mut req = [0u8; MAX_REQUEST_SIZE];
                req.copy_from_slice(raw);
                // Reads, indirect reads and unknown operations: nothing
                // that could write the disk through a grant it happens to
                // name.
                req[0] = match req[0] % 4 { 0 => BLKIF_OP_READ, 1 => 4, 2 => BLKIF_OP_INDIRECT, _ => req[0] | 8 };
                if req[0] == BLKIF_OP_INDIRECT {
                    req[1] = BLKIF_OP_READ;
                }
                if f.rings[0].ring.free_slots() > 0 {
                    f.push(0, &req);
                }
            }
            f.publish(0);
            if k % 2 == 1 {
                let r = &mut f.rings[0];
                let v = r.cons().wrapping_add(*p % 64);
                r.poke_req_prod(v);
            }
            let port = f.rings[0].port;
            f.e.send(port).unwrap();
            let before = w.blk.ports().len();
            prop_assert!(w.pump());
            prop_assert!(w.blk.ports().len() <= before, "a broken ring came back");
            let f = &mut w.fronts[0];
            if f.e.take_pending(port) {
                let _ = f.take_responses(0);
            }
        }
        prop_assert!(w.disk().contents() == &model[..], "a read-only sequence changed the disk");
        w.fe_state(0, 5);
        w.fe_state(0, 6);
        prop_assert_eq!(w.fronts[0].end_all(), vec![]);
        prop_assert_eq!(w.blk.buffer_bytes(), 0);
    }
}

/// Far more requests than slots, in odd batch sizes, from indices just
/// below the u32 wrap: ring slots and indices wrap several times, both
/// ABIs, one- two- and sixteen-page rings.
#[test]
fn wraparound_with_odd_batches_both_abis() {
    for protocol in [Some(Abi::X86_32), Some(Abi::X86_64)] {
        for order in [0u8, 1, 4] {
            let s = Setup {
                protocol,
                order: Some(order),
                start: u32::MAX - 7,
                persistent: order == 1,
                grant_copy: true,
                delay: 1,
                depth: 4,
                limit: false,
            };
            let slots = blkback::ring::ring_size(protocol.unwrap(), order) as usize;
            let mut batches = Vec::new();
            let mut left = 3 * slots + 5;
            let mut i = 0usize;
            while left > 0 {
                let n = [1, 3, 7, 13, 5][i % 5].min(left);
                let batch = (0..n)
                    .map(|k| {
                        let at = ((i * 31 + k * 3) % 200) as u16;
                        if (i + k).is_multiple_of(3) {
                            Op::Read { at, spans: vec![(1, 6), (0, 7)], indirect: false }
                        } else {
                            Op::Write { at, spans: vec![(1, 6), (0, 7)], seed: (i * 16 + k) as u32, indirect: false }
                        }
                    })
                    .collect();
                batches.push(batch);
                left -= n;
                i += 1;
            }
            let (w, model) = run(&s, batches).unwrap();
            finish(w, &model).unwrap();
        }
    }
}

/// Requests naming grants that were never given, alone and beside good
/// ones, are errors and nothing else: no panic, the ring keeps serving.
#[test]
fn missing_grant_is_an_error_not_a_panic() {
    let s = Setup {
        protocol: Some(Abi::X86_64),
        order: None,
        start: 0,
        persistent: false,
        grant_copy: false,
        delay: 0,
        depth: 8,
        limit: false,
    };
    let batches = vec![
        vec![Op::BadGrant { write: false, at: 0 }],
        vec![
            Op::Write { at: 8, spans: vec![(0, 7)], seed: 1, indirect: false },
            Op::BadGrant { write: true, at: 8 },
            Op::Read { at: 8, spans: vec![(0, 7)], indirect: false },
        ],
    ];
    let (w, model) = run(&s, batches).unwrap();
    finish(w, &model).unwrap();
}
