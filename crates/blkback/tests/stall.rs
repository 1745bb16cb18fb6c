//! No stalls (issue 11): a vbd whose disk hangs is torn down at once and
//! drains in the background while the other vbds are served; its new
//! connection takes no requests until the old ones left the disk.

use blkback::abi::{BLKIF_OP_READ, BLKIF_OP_WRITE};
use blkback::testing::*;
use blkback::xenbus::BackendConfig;
use xen::evtchn::EventOps;

const S: u64 = 1_000_000_000;

/// Device 0 (`nvme0n1`) can hang; device 1 (`nvme1n1`) is healthy.
fn two_disks() -> World<SlowDisk> {
    let mut w = world_with(
        |clock| {
            let mut d = SlowDisk::new(DISK_SECTORS, 1, 0, 8);
            d.clock = Some(clock);
            d
        },
        BackendConfig::default(),
        &[5, 6],
    );
    {
        let mut reg = w.reg.borrow_mut();
        let i = reg.add_device(SlowDisk::new(DISK_SECTORS, 1, 1, 8));
        assert!(reg.add_namespace("nvme1n1", i, 0, "healthy", "1"));
    }
    w.attach_nodes_with(0, "nvme0n1", Some("w"));
    w.attach_nodes_with(1, "nvme1n1", Some("w"));
    assert!(w.pump());
    w.connect(0, Opts { persistent: true, ..Opts::default() });
    w.connect(1, Opts::default());
    w.write_read_back(0, 0, 0, 1);
    w.write_read_back(1, 0, 0, 2);
    w
}

/// Hands the pending watch events to the backend once (no polling).
fn watches(w: &mut World<SlowDisk>) {
    while let Some(ev) = w.xs.poll_watch().expect("client") {
        if ev.token.starts_with(blkback::WATCH_PREFIX) {
            w.blk.on_watch(&mut w.xs, &mut w.g, &mut w.e, &ev.token);
        }
    }
}

#[test]
fn hung_disk_does_not_stall_teardown_nor_other_vbds() {
    let mut w = two_disks();
    w.disk_mut().stuck = true;
    let (r, _, _) = w.fronts[0].rw(BLKIF_OP_READ, 0, &[(0, 7), (0, 7)], 0, true);
    let (wr, _, _) = w.fronts[0].rw(BLKIF_OP_WRITE, 64, &[(0, 7)], 3, true);
    w.fronts[0].push(0, &r);
    w.fronts[0].push(0, &wr);
    w.fronts[0].publish(0);
    w.blk.poll(&mut w.g, &mut w.e);
    assert_eq!(w.disk().held[0].len(), 2, "both requests on the hung disk");
    // The frontend closes: the backend answers Closed within the watch
    // event, without waiting for the disk.
    let t0 = w.e.now();
    w.fe_write(0, "state", "6");
    watches(&mut w);
    assert_eq!(w.be_state(0).as_deref(), Some("6"), "Closed at once");
    assert!(w.e.now() - t0 < S, "teardown waited {} ns for the disk", w.e.now() - t0);
    assert_eq!(w.fronts[0].end_all(), [], "every grant revocable at once");
    // Waiting for the hung disk is not progress: the main loop may nap.
    assert!(w.blk.poll(&mut w.g, &mut w.e), "requests still on the disk");
    assert!(!w.blk.progressed(), "draining is not busy work");
    // The other vbd is served meanwhile (each poll lets the hung disk
    // spend a second).
    let (r, id, _) = w.fronts[1].rw(BLKIF_OP_WRITE, 8, &[(0, 7)], 4, true);
    w.fronts[1].push(0, &r);
    w.fronts[1].publish(0);
    let mut answered = Vec::new();
    for _ in 0..5 {
        w.blk.poll(&mut w.g, &mut w.e);
        let f = &mut w.fronts[1];
        let _ = f.e.take_pending(f.rings[0].port);
        answered.extend(f.take_responses(0));
    }
    assert_eq!(answered, [okay(id, BLKIF_OP_WRITE)]);
    assert!(w.e.now() - t0 < 10 * S, "served before the drain deadline");
}

#[test]
fn reconnect_waits_for_the_old_requests_to_leave_the_disk() {
    let mut w = two_disks();
    w.disk_mut().stuck = true;
    let (wr, _, _) = w.fronts[0].rw(BLKIF_OP_WRITE, 64, &[(0, 7)], 3, true);
    w.fronts[0].push(0, &wr);
    w.fronts[0].publish(0);
    w.blk.poll(&mut w.g, &mut w.e);
    assert_eq!(w.disk().held[0].len(), 1);
    w.fe_write(0, "state", "6");
    watches(&mut w);
    assert_eq!(w.be_state(0).as_deref(), Some("6"));
    // The frontend reconnects at once; its first write must not overtake
    // the old one still on the disk.
    w.fe_write(0, "state", "1");
    watches(&mut w);
    w.fronts[0].make_rings(&Opts::default());
    let keys = w.fronts[0].keys(&Opts::default());
    for (k, v) in &keys {
        w.fe_write(0, k, v);
    }
    w.fe_write(0, "state", "3");
    watches(&mut w);
    assert_eq!(w.be_state(0).as_deref(), Some("4"), "connected while draining");
    w.fe_write(0, "state", "4");
    watches(&mut w);
    w.disk_mut().log.clear();
    let (nw, nid, _) = w.fronts[0].rw(BLKIF_OP_WRITE, 64, &[(0, 7)], 9, true);
    w.fronts[0].push(0, &nw);
    w.fronts[0].publish(0);
    for _ in 0..5 {
        w.blk.poll(&mut w.g, &mut w.e);
    }
    assert!(w.disk().log.is_empty(), "new request submitted while the old one is on the disk: {:?}", w.disk().log);
    // The disk recovers: the old write completes (unanswered), then the
    // new one goes down and is answered.
    w.disk_mut().stuck = false;
    let rsp = w.collect(0, 0, 1);
    assert_eq!(rsp, [okay(nid, BLKIF_OP_WRITE)]);
    let log = w.disk().log.clone();
    assert_eq!(log.iter().filter(|e| matches!(e, DiskEv::Submit('W', 64))).count(), 1, "{log:?}");
}

#[test]
fn removed_vbd_keeps_its_disk_until_its_requests_left_it() {
    let mut w = two_disks();
    let users = |w: &World<SlowDisk>| {
        let reg = w.reg.borrow();
        reg.users(&reg.disks()[0].clone()).len()
    };
    assert_eq!(users(&w), 1);
    w.disk_mut().stuck = true;
    let (wr, _, _) = w.fronts[0].rw(BLKIF_OP_WRITE, 64, &[(0, 7)], 3, true);
    w.fronts[0].push(0, &wr);
    w.fronts[0].publish(0);
    w.blk.poll(&mut w.g, &mut w.e);
    // The toolstack removes the directory (domain destroyed).
    let t0 = w.e.now();
    w.xsd.external_rm(&w.fronts[0].be_dir());
    watches(&mut w);
    assert_eq!(w.blk.vbd_count(), 1, "vbd gone at once");
    assert!(w.e.now() - t0 < S);
    assert_eq!(users(&w), 1, "its disk (and claim) kept while a write is on it");
    w.write_read_back(1, 0, 200, 5);
    w.disk_mut().stuck = false;
    assert!(w.pump());
    assert_eq!(users(&w), 0, "released once drained");
    assert_eq!(w.blk.in_flight(), 0);
}
