//! Hostile frontends against the real backend (`blkback::testing`): bad
//! requests and grants, bogus ring producers, bad handshake keys.

use blkback::abi::{self, BLKIF_OP_READ, BLKIF_OP_WRITE};
use blkback::testing::*;
use blkback::xenbus::BackendConfig;
use xen::evtchn::EventOps;
use xen::gnttab::GrantOps;
use xen::types::{DomId, GrantRef, Pfn};

// ---------------------------------------------------------------------------
// 6. Hostile frontends.

#[test]
fn hostile_requests_get_errors_and_the_ring_keeps_working() {
    let mut w = world(ram(1), BackendConfig::default(), &[5, 6]);
    w.attach(0);
    w.connect(0, Opts::default());
    let f = &mut w.fronts[0];
    let other = f.g.grant_access(DomId(6), Pfn(0x999), false).unwrap(); // granted to someone else
    let good = f.grant_page(&pattern(1, PAGE), false);
    let ro = f.grant_page(&pattern(2, PAGE), true);
    let seg = |g: u32| [abi::Segment { gref: g, first_sect: 0, last_sect: 7 }];
    let mut cases = Vec::new();
    let abi = f.abi;
    // Out of range: last sector past the end, and a sector number that overflows.
    for (op, sector) in
        [(BLKIF_OP_WRITE, DISK_SECTORS - 7), (BLKIF_OP_READ, DISK_SECTORS), (BLKIF_OP_WRITE, u64::MAX - 3)]
    {
        let id = f.id();
        cases.push((enc_rw(abi, op, id, sector, &seg(good.gref.0)), error(id, op)));
    }
    // Grants that are not ours to map: never granted, granted to another
    // domain, read-only used as a read target.
    for (op, g) in
        [(BLKIF_OP_WRITE, 0xdead), (BLKIF_OP_READ, 0xdead), (BLKIF_OP_READ, other.0), (BLKIF_OP_READ, ro.gref.0)]
    {
        let id = f.id();
        cases.push((enc_rw(abi, op, id, 0, &seg(g)), error(id, op)));
    }
    // Indirect request whose indirect page is not granted.
    let id = f.id();
    cases.push((enc_indirect(abi, BLKIF_OP_WRITE, 4, id, 0, &[GrantRef(0xbeef)]), error(id, BLKIF_OP_WRITE)));
    // Indirect request whose segments name a bad grant.
    let id = f.id();
    let mut b = vec![0u8; PAGE];
    abi::Segment { gref: good.gref.0, first_sect: 0, last_sect: 7 }.encode(&mut b);
    abi::Segment { gref: 0xdead, first_sect: 0, last_sect: 7 }.encode(&mut b[8..]);
    let ind_page = f.grant_page(&b, true);
    let req = enc_indirect(abi, BLKIF_OP_WRITE, 2, id, 0, &[ind_page.gref]);
    cases.push((req, error(id, BLKIF_OP_WRITE)));
    // And one honest request in the middle of it all.
    let (okreq, okid, oksegs) = f.rw(BLKIF_OP_WRITE, 40, &[(0, 7)], 3, true);
    cases.insert(4, (okreq, okay(okid, BLKIF_OP_WRITE)));
    let reqs: Vec<Req> = cases.iter().map(|c| c.0).collect();
    let rsp = by_id(&w.io(0, 0, &reqs));
    for (_, want) in &cases {
        assert_eq!(rsp.get(&want.id), Some(want));
    }
    assert_eq!(&w.disk().contents()[40 * SECT..40 * SECT + PAGE], &seg_bytes(&oksegs)[..]);
    assert_eq!(&w.disk().contents()[..PAGE], &[0u8; PAGE][..], "nothing written by a failed request");
    // The ring still serves.
    w.write_read_back(0, 0, 500, 4);
    // Nothing of the failed requests stays mapped.
    let f = &mut w.fronts[0];
    for g in [good.gref, ro.gref, ind_page.gref] {
        assert_eq!(f.g.end_access(g), Ok(()));
        f.granted.remove(&g.0);
    }
}

#[test]
fn req_prod_beyond_ring_kills_only_that_ring() {
    let mut w = world(ram(2), BackendConfig::default(), &[5, 6]);
    w.attach(0);
    w.attach(1);
    w.connect(0, Opts { queues: 2, persistent: true, ..Opts::default() });
    w.connect(1, Opts::default());
    w.write_read_back(0, 0, 0, 1);
    let bad_port = w.fronts[0].rings[0].port;
    // Frontend 5 pushes req_prod a ring and more past its consumer.
    {
        let f = &mut w.fronts[0];
        let (req, _, _) = f.rw(BLKIF_OP_READ, 0, &[(0, 7)], 0, false);
        f.push(0, &req);
        let r = &mut f.rings[0];
        let v = r.cons().wrapping_add(r.size() + 5);
        r.poke_req_prod(v);
        f.e.send(r.port).unwrap();
    }
    let before = w.blk.stats.requests;
    assert!(w.pump());
    assert_eq!(w.blk.stats.requests, before, "nothing consumed from a broken ring");
    assert_eq!(w.blk.ports().len(), 2, "the broken ring is no longer waited on");
    {
        let f = &mut w.fronts[0];
        assert!(!f.e.take_pending(bad_port));
        assert!(f.take_responses(0).is_empty());
    }
    // Not revived by a sane req_prod either.
    {
        let r = &mut w.fronts[0].rings[0];
        let v = r.cons().wrapping_add(1);
        r.poke_req_prod(v);
        w.fronts[0].e.send(bad_port).unwrap();
    }
    assert!(w.pump());
    assert_eq!(w.blk.stats.requests, before);
    // The same frontend's other queue and the other frontend still work.
    w.write_read_back(0, 1, 800, 2);
    w.write_read_back(1, 0, 1600, 3);
    // Closing tears down the broken ring too.
    w.fe_state(0, 5);
    w.fe_state(0, 6);
    assert_eq!(w.fronts[0].end_all(), []);
    assert_eq!(w.blk.ports().len(), 1);
    w.write_read_back(1, 0, 2000, 4);
}

#[test]
fn req_prod_behind_consumer_is_broken_too() {
    let mut w = world(ram(1), BackendConfig::default(), &[5]);
    w.attach(0);
    w.connect(0, Opts { start: 100, ..Opts::default() });
    w.write_read_back(0, 0, 0, 1);
    let r = &mut w.fronts[0].rings[0];
    let v = r.cons().wrapping_sub(3);
    r.poke_req_prod(v);
    let port = r.port;
    w.fronts[0].e.send(port).unwrap();
    assert!(w.pump());
    assert!(w.blk.ports().is_empty());
    w.fe_state(0, 5);
    w.fe_state(0, 6);
    assert_eq!(w.fronts[0].end_all(), []);
}

#[test]
fn bad_handshake_keys_are_refused() {
    for (key, val) in
        [("protocol", "arm-abi"), ("multi-queue-num-queues", "17"), ("ring-page-order", "9"), ("event-channel", "x")]
    {
        let mut w = world(ram(1), BackendConfig::default(), &[5]);
        w.attach(0);
        let o = Opts::default();
        w.fronts[0].make_rings(&o);
        let keys = w.fronts[0].keys(&o);
        for (k, v) in keys {
            w.fe_write(0, &k, &v);
        }
        w.fe_write(0, key, val);
        w.fe_state(0, 3);
        assert_eq!(w.be_state(0).as_deref(), Some("5"), "{key}={val}");
        assert!(w.be(0, "error").is_some());
        assert!(w.blk.ports().is_empty());
        assert_eq!(w.fronts[0].end_all(), [], "{key}={val}");
    }
    // A missing ring-ref, and a state node that is not a number.
    for bad_state in [false, true] {
        let mut w = world(ram(1), BackendConfig::default(), &[5]);
        w.attach(0);
        let o = Opts::default();
        w.fronts[0].make_rings(&o);
        for (k, v) in w.fronts[0].keys(&o) {
            w.fe_write(0, &k, &v);
        }
        if bad_state {
            w.fe_write(0, "state", "Initialised");
            assert!(w.pump());
        } else {
            let p = format!("{}/ring-ref", w.fronts[0].fe_dir());
            w.xsd.external_rm(&p);
            w.fe_state(0, 3);
        }
        assert_eq!(w.be_state(0).as_deref(), Some("5"), "bad_state {bad_state}");
        assert!(w.be(0, "error").is_some());
        assert_eq!(w.be(0, "sectors"), None);
        assert!(w.blk.ports().is_empty());
        assert_eq!(w.fronts[0].end_all(), []);
    }
    // An event channel not offered to us.
    let mut w = world(ram(1), BackendConfig::default(), &[5]);
    w.attach(0);
    let o = Opts::default();
    w.fronts[0].make_rings(&o);
    for (k, v) in w.fronts[0].keys(&o) {
        w.fe_write(0, &k, &v);
    }
    w.fe_write(0, "event-channel", "77");
    w.fe_state(0, 3);
    assert_eq!(w.be_state(0).as_deref(), Some("5"));
    assert_eq!(w.be(0, "sectors"), None);
    assert_eq!(w.fronts[0].end_all(), []);
}

// ---------------------------------------------------------------------------
