//! Read-only is read-only: a vbd whose `mode` is not `w` advertises
//! `VDISK_READONLY`, offers no flush, barrier or discard, and answers every
//! kind of write with an error without reaching the disk, even when the
//! disk layer under it would accept the write.

use blkback::abi::{
    self, BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER,
    BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, MAX_REQUEST_SIZE, VDISK_READONLY,
};
use blkback::testing::*;
use blkback::xenbus::BackendConfig;

/// Every write kind a hostile frontend can send, with both grant paths.
fn hostile_writes(w: &mut World<SlowDisk>, fi: usize) {
    let before = w.disk().inner.contents().to_vec();
    w.disk_mut().log.clear();
    let f = &mut w.fronts[fi];
    let mut reqs: Vec<(Req, u64, u8, &[i16])> = Vec::new();
    let err: &[i16] = &[BLKIF_RSP_ERROR];
    let err_or_unsupported: &[i16] = &[BLKIF_RSP_ERROR, BLKIF_RSP_EOPNOTSUPP];
    let (r, id, _) = f.rw(BLKIF_OP_WRITE, 8, &[(0, 7), (0, 7)], 1, true);
    reqs.push((r, id, BLKIF_OP_WRITE, err));
    let (r, id, _) = f.indirect(BLKIF_OP_WRITE, 64, 20, 2);
    reqs.push((r, id, BLKIF_OP_WRITE, err));
    let (r, id, _) = f.rw(BLKIF_OP_FLUSH_DISKCACHE, 16, &[(0, 7)], 3, true);
    reqs.push((r, id, BLKIF_OP_FLUSH_DISKCACHE, err_or_unsupported));
    let fid = f.id();
    reqs.push((
        enc_rw(f.abi, BLKIF_OP_FLUSH_DISKCACHE, fid, 0, &[]),
        fid,
        BLKIF_OP_FLUSH_DISKCACHE,
        err_or_unsupported,
    ));
    let (mut r, id, _) = f.rw(BLKIF_OP_WRITE, 24, &[(0, 7)], 4, true);
    r[0] = BLKIF_OP_WRITE_BARRIER;
    reqs.push((r, id, BLKIF_OP_WRITE_BARRIER, err_or_unsupported));
    let bid = f.id();
    reqs.push((enc_rw(f.abi, BLKIF_OP_WRITE_BARRIER, bid, 0, &[]), bid, BLKIF_OP_WRITE_BARRIER, err_or_unsupported));
    for secure in [0u8, 1] {
        let did = f.id();
        let mut b = [0u8; MAX_REQUEST_SIZE];
        abi::DiscardX64 {
            operation: BLKIF_OP_DISCARD,
            flag: secure,
            handle: 0,
            id: did,
            sector_number: 0,
            nr_sectors: 64,
        }
        .encode(&mut b); // the frontends of these tests speak x86_64
        reqs.push((b, did, BLKIF_OP_DISCARD, err_or_unsupported));
    }
    let n = reqs.len();
    let raw: Vec<Req> = reqs.iter().map(|r| r.0).collect();
    let rsp = by_id(&w.io(fi, 0, &raw));
    assert_eq!(rsp.len(), n);
    for (_, id, op, allowed) in &reqs {
        let r = rsp[id];
        assert_eq!(r.operation, *op);
        assert!(allowed.contains(&r.status), "op {op} answered {}", r.status);
    }
    assert!(
        w.disk().log.iter().all(|e| matches!(e, DiskEv::Submit('R', _) | DiskEv::Done('R', _))),
        "only reads reached the disk: {:?}",
        w.disk().log
    );
    assert!(w.disk().inner.contents() == &before[..], "the disk is byte-identical");
    // Reads still work.
    let (r, id, segs) = w.fronts[fi].rw(BLKIF_OP_READ, 0, &[(0, 7)], 0, false);
    assert_eq!(w.io(fi, 0, &[r]), [okay(id, BLKIF_OP_READ)]);
    assert_eq!(seg_bytes(&segs), before[..PAGE]);
}

fn readonly_world(mode: Option<&str>, persistent: bool) -> World<SlowDisk> {
    let mut w = world(SlowDisk::new(DISK_SECTORS, 1, 1, 16), BackendConfig::default(), &[5]);
    // A disk layer that would write anyway: blkback must refuse by itself.
    w.view_enforces_readonly.set(false);
    w.attach_nodes_with(0, SHARED, mode);
    assert!(w.pump());
    assert_eq!(w.be_state(0).as_deref(), Some("2"));
    assert!(w.opens.borrow()[0].1, "opened read-only");
    w.connect(0, Opts { protocol: Some(abi::Abi::X86_64), persistent, ..Opts::default() });
    let info: u32 = w.be(0, "info").expect("info").parse().expect("number");
    assert_ne!(info & VDISK_READONLY, 0, "VDISK_READONLY advertised");
    for key in ["feature-flush-cache", "feature-barrier", "feature-discard"] {
        assert_eq!(w.be(0, key), None, "{key} not advertised on a read-only vbd");
    }
    w
}

#[test]
fn readonly_mode_r_refuses_every_write_kind() {
    let mut w = readonly_world(Some("r"), false);
    hostile_writes(&mut w, 0);
}

#[test]
fn readonly_with_persistent_grants_refuses_every_write_kind() {
    let mut w = readonly_world(Some("r"), true);
    hostile_writes(&mut w, 0);
}

#[test]
fn missing_or_odd_mode_is_read_only() {
    for mode in [None, Some(""), Some("rw"), Some("W")] {
        let mut w = readonly_world(mode, false);
        hostile_writes(&mut w, 0);
    }
}

#[test]
fn mode_w_is_writable_and_offers_flush_where_the_disk_caches() {
    let mut w = world(ram(1), BackendConfig::default(), &[5]);
    w.attach(0);
    w.connect(0, Opts::default());
    assert_eq!(w.be(0, "info").as_deref(), Some("0"));
    assert_eq!(w.be(0, "feature-flush-cache").as_deref(), Some("1"));
    assert_eq!(w.be(0, "feature-barrier").as_deref(), Some("1"));
    assert_eq!(w.be(0, "feature-discard").as_deref(), Some("1"));
    w.write_read_back(0, 0, 0, 1);
}

#[test]
fn no_volatile_cache_no_flush_offered() {
    let mut w = world(ram(1), BackendConfig::default(), &[5]);
    w.volatile_cache.set(false);
    w.attach(0);
    w.connect(0, Opts::default());
    assert_eq!(w.be(0, "feature-flush-cache"), None, "nothing to flush");
    assert_eq!(w.be(0, "feature-barrier"), None);
    let f = &mut w.fronts[0];
    let fid = f.id();
    let flush = enc_rw(f.abi, BLKIF_OP_FLUSH_DISKCACHE, fid, 0, &[]);
    let rsp = w.io(0, 0, &[flush]);
    assert_eq!(rsp[0].status, BLKIF_RSP_EOPNOTSUPP, "not offered: EOPNOTSUPP");
}
