//! The vbd lifecycle against the simulated toolstack and blkfront
//! (`blkback::testing`): the handshake, disconnect and reconnect,
//! directories vanishing, toolstack detach, rescans.

use blkback::abi::{Abi, BLKIF_OP_READ, BLKIF_OP_WRITE};
use blkback::testing::*;
use blkback::xenbus::BackendConfig;
use drivers::block::{RamDisk, Volumes};
use xen::evtchn::EventOps;
use xen::gnttab::{GrantError, GrantOps};
use xen::xenstore::fake::Fault;
use xen::xenstore::{Perm, PermKind};

// ---------------------------------------------------------------------------
// 1. Handshake.

#[test]
fn connect_handshake_publishes_features_and_connects() {
    let mut w = world(ram(1), BackendConfig::default(), &[5]);
    w.attach(0);
    // What the probe publishes before the frontend does anything.
    for (k, v) in [
        ("feature-max-indirect-segments", "256"),
        ("multi-queue-max-queues", "4"),
        ("max-ring-page-order", "4"),
        ("hotplug-status", "connected"),
        ("state", "2"),
    ] {
        assert_eq!(w.be(0, k).as_deref(), Some(v), "{k}");
    }
    assert_eq!(w.be(0, "sectors"), None, "disk details wait for the frontend");
    assert!(w.blk.ports().is_empty());

    w.connect_initialised(0, Opts { persistent: true, ..Opts::default() });
    for (k, v) in [
        ("feature-persistent", "1".to_string()),
        ("feature-flush-cache", "1".into()),
        ("feature-barrier", "1".into()),
        ("feature-discard", "1".into()),
        ("discard-granularity", "512".into()),
        ("sectors", DISK_SECTORS.to_string()),
        ("sector-size", "512".into()),
        ("physical-sector-size", "512".into()),
        ("info", "0".into()),
        ("hotplug-status", "connected".into()),
        ("state", "4".into()),
    ] {
        assert_eq!(w.be(0, k).as_deref(), Some(v.as_str()), "{k}");
    }
    assert_eq!(w.be(0, "error"), None);
    assert_eq!(w.blk.ports().len(), 1, "one ring bound");
    // The ring page is mapped: the frontend cannot take it back.
    let ring_ref = w.fronts[0].rings[0].grefs[0];
    assert_eq!(w.fronts[0].g.end_access(ring_ref), Err(GrantError::InUse));
    // Frontend Connected: nothing changes, nothing breaks.
    w.fe_state(0, 4);
    assert_eq!(w.be_state(0).as_deref(), Some("4"));
    assert_eq!(w.blk.vbd_count(), 1);
}

#[test]
fn bad_ring_ref_never_advertises_connected() {
    let mut w = world(ram(1), BackendConfig::default(), &[5]);
    w.attach(0);
    let o = Opts::default();
    let f = &mut w.fronts[0];
    f.make_rings(&o);
    let mut keys = f.keys(&o);
    for (k, v) in keys.iter_mut() {
        if k == "ring-ref" {
            *v = "4000".into(); // never granted
        }
    }
    for (k, v) in keys {
        w.fe_write(0, &k, &v);
    }
    w.fe_state(0, 3);
    assert_eq!(w.be_state(0).as_deref(), Some("5"), "fatal: Closing");
    assert!(w.be(0, "error").is_some(), "error node written");
    // Linux's connect() publishes disk details only once the rings work.
    assert_eq!(w.be(0, "sectors"), None, "advertised a disk over an unmapped ring");
    assert!(w.blk.ports().is_empty());
    assert_eq!(w.fronts[0].end_all(), []);
}

// ---------------------------------------------------------------------------
// ---------------------------------------------------------------------------
// 8. Disconnect and reconnect.

#[test]
fn disconnect_releases_everything_and_reconnect_works() {
    let mut w = world(SlowDisk::new(DISK_SECTORS, 1, 2, 8), BackendConfig::default(), &[5]);
    w.attach(0);
    w.connect(0, Opts { persistent: true, order: Some(1), ..Opts::default() });
    w.write_read_back(0, 0, 0, 1);
    let (ireq, iid, ipages) = w.fronts[0].indirect(BLKIF_OP_WRITE, 400, 30, 7);
    assert_eq!(w.io(0, 0, &[ireq]), [okay(iid, BLKIF_OP_WRITE)]);
    // Leave requests in flight on the slow disk while the frontend closes.
    let (late, _, _) = w.fronts[0].rw(BLKIF_OP_WRITE, 700, &[(0, 7)], 9, true);
    w.fronts[0].push(0, &late);
    w.fronts[0].publish(0);
    w.blk.poll(&mut w.g, &mut w.e);
    w.fe_state(0, 5);
    assert_eq!(w.be_state(0).as_deref(), Some("5"));
    w.fe_state(0, 6);
    assert_eq!(w.be_state(0).as_deref(), Some("6"));
    assert!(w.blk.ports().is_empty());
    assert_eq!(w.fronts[0].end_all(), [], "every grant can be revoked after Closed");
    assert_eq!(w.blk.vbd_count(), 1, "still online: the device stays for a reconnect");
    // The frontend comes back with a fresh ring (blkfront resume).
    w.fe_state(0, 1);
    assert_eq!(w.be_state(0).as_deref(), Some("2"));
    w.connect(0, Opts { persistent: true, start: 1000, ..Opts::default() });
    // Data written before the disconnect is still there.
    let (rreq, rid, rpages) = w.fronts[0].indirect(BLKIF_OP_READ, 400, 30, 0);
    assert_eq!(w.io(0, 0, &[rreq]), [okay(rid, BLKIF_OP_READ)]);
    let got: Vec<u8> = rpages.iter().flat_map(|p| p.page.snapshot()).collect();
    let want: Vec<u8> = ipages.iter().flat_map(|p| p.page.snapshot()).collect();
    assert!(got == want, "data survives a reconnect");
    w.write_read_back(0, 0, 1200, 2);
    // And a second cycle, without persistent grants this time.
    w.fe_state(0, 5);
    w.fe_state(0, 6);
    assert_eq!(w.fronts[0].end_all(), []);
    w.fe_state(0, 1);
    w.connect(0, Opts { protocol: None, ..Opts::default() });
    w.write_read_back(0, 0, 1400, 3);
}

#[test]
fn frontend_closes_with_io_in_flight() {
    // Completions lag 6 polls behind: the frontend closes while its reads
    // and writes are still on the disk.
    let mut w = world(SlowDisk::new(DISK_SECTORS, 1, 6, 8), BackendConfig::default(), &[5]);
    w.attach(0);
    w.connect(0, Opts { persistent: true, ..Opts::default() });
    w.write_read_back(0, 0, 0, 1);
    for i in 0..6u64 {
        let op = if i % 2 == 0 { BLKIF_OP_READ } else { BLKIF_OP_WRITE };
        let (r, _, _) = w.fronts[0].rw(op, i * 8, &[(0, 7), (0, 7)], i as u32, true);
        w.fronts[0].push(0, &r);
    }
    w.fronts[0].publish(0);
    w.blk.poll(&mut w.g, &mut w.e);
    assert!(w.disk().held[0].len() >= 2, "requests in flight");
    // Straight to Closed (blkfront on a crash), no Closing first.
    w.fe_state(0, 6);
    assert_eq!(w.be_state(0).as_deref(), Some("6"));
    assert_eq!(w.fronts[0].end_all(), [], "every grant can be revoked once Closed");
    // Late completions must not land on the next connection's ring.
    w.fe_state(0, 1);
    w.connect(0, Opts { start: 50, ..Opts::default() });
    for _ in 0..20 {
        w.blk.poll(&mut w.g, &mut w.e);
    }
    assert!(w.fronts[0].take_responses(0).is_empty(), "stale responses on the new ring");
    w.write_read_back(0, 0, 100, 2);
}

#[test]
fn disconnect_gives_up_on_a_stuck_disk() {
    let mut w = world_with(
        |clock| {
            let mut d = SlowDisk::new(DISK_SECTORS, 1, 0, 8);
            d.clock = Some(clock);
            d
        },
        BackendConfig::default(),
        &[5],
    );
    w.attach(0);
    w.connect(0, Opts { persistent: true, ..Opts::default() });
    w.write_read_back(0, 0, 0, 1);
    w.disk_mut().stuck = true;
    let (r, _, _) = w.fronts[0].rw(BLKIF_OP_READ, 0, &[(0, 7), (0, 7)], 0, true);
    let (wr, _, _) = w.fronts[0].rw(BLKIF_OP_WRITE, 64, &[(0, 7)], 3, true);
    w.fronts[0].push(0, &r);
    w.fronts[0].push(0, &wr);
    w.fronts[0].publish(0);
    w.blk.poll(&mut w.g, &mut w.e);
    assert_eq!(w.disk().held[0].len(), 2, "both requests on the hung disk");
    let t0 = w.e.now();
    w.fe_state(0, 6);
    assert!(w.e.now() - t0 >= 30_000_000_000, "gave up before the 30 s drain deadline");
    assert!(w.e.now() - t0 < 40_000_000_000, "waited well past the drain deadline");
    assert_eq!(w.be_state(0).as_deref(), Some("6"));
    assert_eq!(w.fronts[0].end_all(), [], "mappings released despite the hung disk");
    // The device recovers and completes the old requests after the
    // frontend reconnected with a new ring: they must be dropped.
    w.fe_state(0, 1);
    w.connect(0, Opts { start: 9, ..Opts::default() });
    w.disk_mut().stuck = false;
    for _ in 0..10 {
        w.blk.poll(&mut w.g, &mut w.e);
    }
    assert!(w.disk().held[0].is_empty());
    assert!(w.fronts[0].take_responses(0).is_empty(), "stale answers on the new ring");
    w.write_read_back(0, 0, 100, 2);
}

// ---------------------------------------------------------------------------

fn connected_with_io() -> World<RamDisk<Buf>> {
    let mut w = world(ram(1), BackendConfig::default(), &[5, 6]);
    w.attach(0);
    w.attach(1);
    w.connect(0, Opts { persistent: true, queues: 2, ..Opts::default() });
    w.connect(1, Opts::default());
    w.write_read_back(0, 0, 0, 1);
    w.write_read_back(0, 1, 200, 2);
    w.write_read_back(1, 0, 400, 3);
    w
}

#[test]
fn frontend_directory_removed() {
    let mut w = connected_with_io();
    let fe = w.fronts[0].fe_dir();
    w.xsd.external_rm(&fe);
    assert!(w.pump(), "backend settles after the frontend vanished");
    assert_eq!(w.fronts[0].end_all(), [], "all mappings released");
    assert_eq!(w.blk.ports().len(), 1, "only the other vbd's ring is left");
    assert_eq!(w.be_state(0).as_deref(), Some("6"));
    assert_eq!(w.blk.vbd_count(), 1, "the dead vbd is not probed again");
    // Nothing happens on further activity elsewhere in the backend tree.
    w.write_read_back(1, 0, 600, 4);
    w.xsd.external_write(&format!("{}/backend/vbd/6/{DEV}/removable", home()), b"0");
    assert!(w.pump());
    assert_eq!(w.blk.vbd_count(), 1);
    assert_eq!(w.be_state(0).as_deref(), Some("6"));
    // We remove our own (closed) directory after the delay; and once the
    // toolstack also cleans up, nothing comes back.
    let be = w.fronts[0].be_dir();
    remove_after_delay(&mut w, &be);
    assert!(w.pump());
    assert_eq!(w.value(&format!("{be}/state")), None);
    w.write_read_back(1, 0, 800, 5);
}

#[test]
fn backend_directory_removed_by_toolstack() {
    for fe_first in [false, true] {
        let mut w = connected_with_io();
        let (be, fe) = (w.fronts[0].be_dir(), w.fronts[0].fe_dir());
        // Domain destruction: libxl removes both directories.
        if fe_first {
            w.xsd.external_rm(&fe);
            w.xsd.external_rm(&be);
        } else {
            w.xsd.external_rm(&be);
            w.xsd.external_rm(&fe);
        }
        assert!(w.pump());
        assert_eq!(w.value(&be), None, "backend dir re-created (fe_first {fe_first})");
        for k in ["state", "physical-device", "hotplug-status", "error"] {
            assert_eq!(w.value(&format!("{be}/{k}")), None, "{k} re-created (fe_first {fe_first})");
        }
        assert_eq!(w.fronts[0].end_all(), [], "all mappings released (fe_first {fe_first})");
        assert_eq!(w.blk.vbd_count(), 1);
        assert_eq!(w.blk.ports().len(), 1);
        w.write_read_back(1, 0, 800, 5);
    }
}

#[test]
fn backend_directory_removed_alone() {
    // The toolstack removes only our directory; the frontend lives on.
    let mut w = connected_with_io();
    let be = w.fronts[0].be_dir();
    w.xsd.external_rm(&be);
    assert!(w.pump());
    assert_eq!(w.value(&be), None);
    assert_eq!(w.fronts[0].end_all(), []);
    assert_eq!(w.blk.vbd_count(), 1);
    // The frontend noticing and closing changes nothing either.
    w.fe_state(0, 5);
    w.fe_state(0, 6);
    assert_eq!(w.value(&be), None, "a gone directory is not re-created");
}

/// A closed device's backend directory stays until `RM_DELAY_NS` has passed
/// (libxl must read state 6 first), then `maintenance` removes it.
fn remove_after_delay<D: Volumes<Buffer = Buf>>(w: &mut World<D>, be: &str) {
    w.blk.maintenance(&mut w.xs, &mut w.g, &mut w.e);
    assert_eq!(w.value(&format!("{be}/state")).as_deref(), Some("6"), "kept, Closed, until libxl has seen it");
    let later = w.e.now() + blkback::RM_DELAY_NS + 1;
    let _ = w.e.wait_any(&[], later);
    w.blk.maintenance(&mut w.xs, &mut w.g, &mut w.e);
    assert!(w.pump());
    assert_eq!(w.value(be), None, "backend directory removed by the backend");
}

#[test]
fn toolstack_detach_online_zero() {
    let mut w = connected_with_io();
    let be = w.fronts[0].be_dir();
    w.xsd.external_write(&format!("{be}/online"), b"0");
    assert!(w.pump());
    assert_eq!(w.be_state(0).as_deref(), Some("5"), "asks the frontend to close");
    // Still serving until the frontend closes.
    w.write_read_back(0, 0, 1000, 6);
    w.fe_state(0, 5);
    w.fe_state(0, 6);
    assert_eq!(w.be_state(0).as_deref(), Some("6"), "Closed, not probed again");
    assert_eq!(w.fronts[0].end_all(), []);
    assert_eq!(w.blk.vbd_count(), 1, "the detached vbd is gone");
    // libxl saw Closed; the driver domain removes its backend directory
    // (libxl waits for that), then libxl removes the frontend's.
    remove_after_delay(&mut w, &be);
    let fe = w.fronts[0].fe_dir();
    w.xsd.external_rm(&fe);
    assert!(w.pump());
    // A new device on the same path later is served again.
    w.attach(0);
    w.connect(0, Opts::default());
    w.write_read_back(0, 0, 1000, 7);
}

#[test]
fn transient_xenstore_errors_do_not_tear_down_devices() {
    // A scan whose directory listing fails (EIO, a timeout, or the listing
    // of one domain's devices failing) cannot tell "absent" from
    // "unknown": it must not treat every vbd as removed.
    let cases: [&[Fault]; 3] =
        [&[Fault::Error("EIO")], &[Fault::Swallow], &[Fault::Payload(b"5\x006\x00".to_vec()), Fault::Error("EIO")]];
    for faults in cases {
        let mut w = connected_with_io();
        for f in faults {
            w.xsd.inject(f.clone());
        }
        // Any change under backend/vbd makes the backend rescan.
        w.xsd.external_write(&format!("{}/backend/vbd/6/{DEV}/removable", home()), b"0");
        assert!(w.pump());
        assert_eq!(w.be_state(0).as_deref(), Some("4"), "{faults:?}");
        assert_eq!(w.be_state(1).as_deref(), Some("4"), "{faults:?}");
        assert_eq!(w.blk.ports().len(), 3, "{faults:?}");
        w.write_read_back(0, 1, 1000, 8);
        w.write_read_back(1, 0, 1200, 9);
    }
}

/// Watch events can be lost (queue overflow) or arrive while the toolstack
/// is still writing the directory: `maintenance` finds the vbd anyway.
#[test]
fn vbd_found_by_maintenance_after_lost_or_early_events() {
    let mut w = world(ram(1), BackendConfig::default(), &[5]);
    let (be, fe, dom) = (w.fronts[0].be_dir(), w.fronts[0].fe_dir(), w.fronts[0].dom.0);
    w.xsd.external_write(&be, b"");
    w.xsd.external_set_perms(&be, &[Perm::new(PermKind::None, BE.0), Perm::new(PermKind::Read, dom)]);
    w.xsd.external_write(&fe, b"");
    w.xsd.external_set_perms(&fe, &[Perm::new(PermKind::None, dom), Perm::new(PermKind::Read, BE.0)]);
    for (k, v) in [("backend", be.clone()), ("backend-id", BE.0.to_string()), ("state", "1".into())] {
        w.xsd.external_write(&format!("{fe}/{k}"), v.as_bytes());
    }
    // The backend sees the events while `frontend` is not written yet.
    w.xsd.external_write(&format!("{be}/frontend-id"), dom.to_string().as_bytes());
    assert!(w.pump());
    assert_eq!(w.be_state(0), None, "incomplete directory: nothing written yet");
    // The rest arrives, but its watch events are lost.
    for (k, v) in [
        ("frontend", fe.clone()),
        ("params", SHARED.into()),
        ("mode", "w".into()),
        ("online", "1".into()),
        ("state", "1".into()),
    ] {
        w.xsd.external_write(&format!("{be}/{k}"), v.as_bytes());
    }
    while w.xs.poll_watch().expect("client").is_some() {}
    assert!(w.pump());
    assert_eq!(w.be_state(0).as_deref(), Some("1"), "events were lost: not handled yet");
    assert!(w.blk.maintenance(&mut w.xs, &mut w.g, &mut w.e), "the early look asked for a rescan");
    assert!(w.pump());
    assert_eq!(w.be_state(0).as_deref(), Some("2"), "found by the rescan, InitWait");
    assert!(!w.blk.maintenance(&mut w.xs, &mut w.g, &mut w.e), "no rescan needed any more");
    // A later loss reported by the main loop (dropped events) also rescans.
    w.blk.request_rescan();
    assert!(w.blk.maintenance(&mut w.xs, &mut w.g, &mut w.e));
    assert!(w.pump());
    w.connect(0, Opts::default());
    w.write_read_back(0, 0, 64, 7);
}

/// A frontend filling its ring with the largest requests cannot make the
/// backend hold more disk buffers than `MAX_BUFFER_BYTES`: the rest waits in
/// the ring and is served as buffers come back; nothing is refused.
#[test]
fn buffer_memory_is_bounded_whatever_the_frontend_asks() {
    use blkback::MAX_BUFFER_BYTES;
    let mut w = world(ram(1), BackendConfig::default(), &[5]);
    w.attach(0);
    w.connect(0, Opts::default());
    let n = 12; // 12 MiB of reads, three times the budget
    let mut ids = Vec::new();
    for _ in 0..n {
        let (req, id, _) = w.fronts[0].indirect(BLKIF_OP_READ, 0, 256, 0);
        w.fronts[0].push(0, &req);
        ids.push(id);
    }
    w.fronts[0].publish(0);
    assert!(w.blk.poll(&mut w.g, &mut w.e), "work to do");
    let held = w.blk.buffer_bytes();
    assert!(held > 0 && held <= MAX_BUFFER_BYTES, "one poll took {held} bytes of buffers (budget {MAX_BUFFER_BYTES})");
    let rsp = w.collect(0, 0, n);
    for id in ids {
        assert!(rsp.contains(&okay(id, BLKIF_OP_READ)), "request {id:#x} answered OKAY: {rsp:?}");
    }
    assert_eq!(w.blk.buffer_bytes(), 0, "every buffer returned");
}

/// libxl's `block-detach` of a device served by a driver domain: it writes
/// `online = 0` and `state = 5` into our directory, waits for state 6, then
/// waits for the driver domain to remove the directory, then removes the
/// frontend's. The device must not be probed again at any point.
#[test]
fn libxl_block_detach_sequence() {
    let mut w = connected_with_io();
    let (be, fe) = (w.fronts[0].be_dir(), w.fronts[0].fe_dir());
    w.xsd.external_write(&format!("{be}/online"), b"0");
    w.xsd.external_write(&format!("{be}/state"), b"5");
    assert!(w.pump());
    assert_eq!(w.be_state(0).as_deref(), Some("5"));
    w.fe_state(0, 5);
    w.fe_state(0, 6);
    assert_eq!(w.be_state(0).as_deref(), Some("6"), "Closed for libxl");
    assert_eq!(w.fronts[0].end_all(), [], "everything unmapped");
    for _ in 0..3 {
        w.blk.maintenance(&mut w.xs, &mut w.g, &mut w.e);
        assert!(w.pump());
    }
    assert_eq!(w.blk.vbd_count(), 1, "not probed again while Closed");
    remove_after_delay(&mut w, &be);
    assert_eq!(w.blk.vbd_count(), 1);
    w.xsd.external_rm(&fe);
    assert!(w.pump());
    w.blk.request_rescan();
    w.blk.maintenance(&mut w.xs, &mut w.g, &mut w.e);
    assert!(w.pump());
    assert_eq!(w.blk.vbd_count(), 1, "nothing comes back");
    assert_eq!(w.value(&be), None);
    // block-attach of the same vdev again works.
    w.attach(0);
    w.connect(0, Opts::default());
    w.write_read_back(0, 0, 100, 9);
}

/// The toolstack may write our directory before the frontend's: the device
/// waits (it is neither served nor treated as gone), then connects.
#[test]
fn backend_written_before_frontend() {
    let mut w = world(ram(1), BackendConfig::default(), &[5]);
    let (be, fe, dom) = (w.fronts[0].be_dir(), w.fronts[0].fe_dir(), w.fronts[0].dom.0);
    w.xsd.external_write(&be, b"");
    w.xsd.external_set_perms(&be, &[Perm::new(PermKind::None, BE.0), Perm::new(PermKind::Read, dom)]);
    for (k, v) in [
        ("frontend", fe.clone()),
        ("frontend-id", dom.to_string()),
        ("params", SHARED.into()),
        ("mode", "w".into()),
        ("online", "1".into()),
        ("state", "1".into()),
    ] {
        w.xsd.external_write(&format!("{be}/{k}"), v.as_bytes());
    }
    assert!(w.pump());
    for _ in 0..3 {
        w.blk.maintenance(&mut w.xs, &mut w.g, &mut w.e);
        let later = w.e.now() + blkback::RM_DELAY_NS + 1;
        let _ = w.e.wait_any(&[], later);
        assert!(w.pump());
    }
    assert_eq!(w.be_state(0).as_deref(), Some("1"), "waiting for the frontend, directory intact");
    w.xsd.external_write(&fe, b"");
    w.xsd.external_set_perms(&fe, &[Perm::new(PermKind::None, dom), Perm::new(PermKind::Read, BE.0)]);
    for (k, v) in [("backend", be.clone()), ("backend-id", BE.0.to_string()), ("state", "1".into())] {
        w.xsd.external_write(&format!("{fe}/{k}"), v.as_bytes());
    }
    assert!(w.pump());
    w.blk.maintenance(&mut w.xs, &mut w.g, &mut w.e);
    assert!(w.pump());
    assert_eq!(w.be_state(0).as_deref(), Some("2"), "probed once the frontend exists");
    w.connect(0, Opts::default());
    w.write_read_back(0, 0, 100, 11);
}

/// Requests above the disk's transfer limit are split into parts and
/// answered once, OKAY, with the data where it belongs.
#[test]
fn large_requests_are_split_for_the_disk() {
    let mut w = world(SlowDisk::new(DISK_SECTORS, 1, 0, 64).with_limit(16 * 1024), BackendConfig::default(), &[5]);
    w.attach(0);
    w.connect(0, Opts { protocol: Some(Abi::X86_64), ..Opts::default() });
    let (wreq, wid, wpages) = w.fronts[0].indirect(BLKIF_OP_WRITE, 64, 40, 21);
    assert_eq!(w.io(0, 0, &[wreq]), [okay(wid, BLKIF_OP_WRITE)], "one answer for the split write");
    let written: Vec<u8> = wpages.iter().flat_map(|p| p.page.snapshot()).collect();
    assert_eq!(&w.disk().inner.contents()[64 * SECT..64 * SECT + 40 * PAGE], &written[..]);
    let (rreq, rid, rpages) = w.fronts[0].indirect(BLKIF_OP_READ, 64, 40, 0);
    assert_eq!(w.io(0, 0, &[rreq]), [okay(rid, BLKIF_OP_READ)]);
    let read: Vec<u8> = rpages.iter().flat_map(|p| p.page.snapshot()).collect();
    assert!(read == written, "the split read returns the split write");
    assert_eq!(w.disk().largest, 16 * 1024, "no command above the limit");
    assert_eq!(w.blk.buffer_bytes(), 0);
}

/// A directory found with online = 0 or in Closing/Closed (a device being
/// torn down, e.g. left over by a crashed backend) is not adopted.
#[test]
fn devices_being_torn_down_are_not_adopted() {
    for (online, state) in [("0", "1"), ("1", "5"), ("1", "6")] {
        let mut w = world(ram(1), BackendConfig::default(), &[5]);
        let (be, fe, dom) = (w.fronts[0].be_dir(), w.fronts[0].fe_dir(), w.fronts[0].dom.0);
        w.xsd.external_write(&fe, b"");
        w.xsd.external_set_perms(&fe, &[Perm::new(PermKind::None, dom), Perm::new(PermKind::Read, BE.0)]);
        w.xsd.external_write(&format!("{fe}/state"), b"1");
        w.xsd.external_write(&be, b"");
        w.xsd.external_set_perms(&be, &[Perm::new(PermKind::None, BE.0), Perm::new(PermKind::Read, dom)]);
        for (k, v) in [
            ("frontend", fe.clone()),
            ("frontend-id", dom.to_string()),
            ("online", online.into()),
            ("state", state.into()),
        ] {
            w.xsd.external_write(&format!("{be}/{k}"), v.as_bytes());
        }
        assert!(w.pump());
        w.blk.request_rescan();
        w.blk.maintenance(&mut w.xs, &mut w.g, &mut w.e);
        assert!(w.pump());
        assert_eq!(w.blk.vbd_count(), 0, "online {online}, state {state}: not adopted");
        assert_eq!(w.be_state(0).as_deref(), Some(state), "nothing written");
    }
}
