//! A disk per vbd, looked up by its `params` and `mode` (issue 11): each
//! vbd reaches only its own disk, with that disk's real block size; a
//! target that cannot be opened fails the attach the way libxl sees it.

use blkback::abi::{BLKIF_OP_READ, BLKIF_OP_WRITE};
use blkback::testing::*;
use blkback::xenbus::BackendConfig;
use drivers::block::RamDisk;

/// A second device in the world's registry, namespace `name`.
fn add_disk(w: &mut World<RamDisk<Buf>>, name: &str, disk: RamDisk<Buf>) {
    let mut reg = w.reg.borrow_mut();
    let i = reg.add_device(disk);
    assert!(reg.add_namespace(name, i, 0, "second", "1"));
}

fn device_bytes(w: &World<RamDisk<Buf>>, i: usize) -> Vec<u8> {
    w.reg.borrow().device(i).expect("device").borrow().device().contents().to_vec()
}

#[test]
fn each_vbd_gets_its_own_disk_from_the_opener() {
    let mut w = world(ram(1), BackendConfig::default(), &[5, 6]);
    add_disk(&mut w, "nvme1n1", ram(1));
    w.attach_nodes_with(0, "nvme0n1", Some("w"));
    w.attach_nodes_with(1, "nvme1n1", Some("w"));
    assert!(w.pump());
    assert_eq!(w.be_state(0).as_deref(), Some("2"));
    assert_eq!(w.be_state(1).as_deref(), Some("2"));
    assert_eq!(
        *w.opens.borrow(),
        [("nvme0n1".to_string(), false, format!("5/{DEV}")), ("nvme1n1".to_string(), false, format!("6/{DEV}"))],
        "one open per vbd, with its params, mode and holder"
    );
    w.connect(0, Opts::default());
    w.connect(1, Opts::default());
    // The same sectors on each vbd: each lands on its own disk.
    let (a, aid, asegs) = w.fronts[0].rw(BLKIF_OP_WRITE, 16, &[(0, 7)], 1, true);
    let (b, bid, bsegs) = w.fronts[1].rw(BLKIF_OP_WRITE, 16, &[(0, 7)], 2, true);
    assert_eq!(w.io(0, 0, &[a]), [okay(aid, BLKIF_OP_WRITE)]);
    assert_eq!(w.io(1, 0, &[b]), [okay(bid, BLKIF_OP_WRITE)]);
    let (d0, d1) = (device_bytes(&w, 0), device_bytes(&w, 1));
    assert_eq!(&d0[16 * SECT..24 * SECT], &seg_bytes(&asegs)[..]);
    assert_eq!(&d1[16 * SECT..24 * SECT], &seg_bytes(&bsegs)[..]);
    let written: usize = [&d0, &d1].iter().map(|d| d.iter().filter(|&&x| x != 0).count()).sum();
    assert!(written <= 2 * PAGE, "nothing else written anywhere");
}

/// Disks whose tokens collide (both start at 0) and whose completions lag:
/// each completion reaches the vbd that submitted it.
#[test]
fn colliding_tokens_of_two_disks_reach_their_own_vbd() {
    let mut w = world(SlowDisk::new(DISK_SECTORS, 1, 3, 8), BackendConfig::default(), &[5, 6]);
    {
        let mut reg = w.reg.borrow_mut();
        let i = reg.add_device(SlowDisk::new(DISK_SECTORS, 1, 1, 8));
        assert!(reg.add_namespace("nvme1n1", i, 0, "second", "1"));
    }
    w.attach_nodes_with(0, "nvme0n1", Some("w"));
    w.attach_nodes_with(1, "nvme1n1", Some("w"));
    assert!(w.pump());
    w.connect(0, Opts::default());
    w.connect(1, Opts::default());
    for round in 0..4u32 {
        let mut expect = Vec::new();
        for fi in 0..2 {
            let mut ids = Vec::new();
            for k in 0..3u64 {
                let sector = u64::from(round) * 64 + k * 8;
                let (r, id, segs) =
                    w.fronts[fi].rw(BLKIF_OP_WRITE, sector, &[(0, 7)], round * 10 + k as u32 + fi as u32 * 100, true);
                w.fronts[fi].push(0, &r);
                ids.push(id);
                expect.push((fi, sector, seg_bytes(&segs)));
            }
            w.fronts[fi].publish(0);
            let _ = ids;
        }
        for fi in 0..2 {
            let rsp = w.collect(fi, 0, 3);
            assert!(rsp.iter().all(|r| r.status == 0 && r.operation == BLKIF_OP_WRITE), "{rsp:?}");
        }
        for (fi, sector, data) in expect {
            let (r, id, segs) = w.fronts[fi].rw(BLKIF_OP_READ, sector, &[(0, 7)], 0, false);
            assert_eq!(w.io(fi, 0, &[r]), [okay(id, BLKIF_OP_READ)]);
            assert_eq!(seg_bytes(&segs), data, "vbd {fi} reads its own data back");
        }
    }
}

/// A 4 KiB-native disk is advertised as such; requests not aligned to
/// 4 KiB are answered with an error and never reach the disk.
#[test]
fn four_k_native_disk_advertises_4096_and_refuses_misaligned_requests() {
    let mut w = world(RamDisk::<Buf>::new(4096, 256, 1, 64), BackendConfig::default(), &[5]);
    w.attach_nodes_with(0, "nvme0n1", Some("w"));
    assert!(w.pump());
    w.connect(0, Opts::default());
    assert_eq!(w.be(0, "sector-size").as_deref(), Some("4096"));
    assert_eq!(w.be(0, "physical-sector-size").as_deref(), Some("4096"));
    assert_eq!(w.be(0, "sectors").as_deref(), Some("2048"), "size in 512-byte units");
    let before = w.disk().contents().to_vec();
    for (sector, span) in [(1u64, (0u8, 7u8)), (8, (1, 7)), (8, (0, 3))] {
        let (r, id, _) = w.fronts[0].rw(BLKIF_OP_WRITE, sector, &[span], 9, true);
        assert_eq!(w.io(0, 0, &[r]), [error(id, BLKIF_OP_WRITE)], "sector {sector} span {span:?}");
    }
    assert!(w.disk().contents() == &before[..], "no misaligned request reached the disk");
    let (r, id, segs) = w.fronts[0].rw(BLKIF_OP_WRITE, 8, &[(0, 7)], 3, true);
    assert_eq!(w.io(0, 0, &[r]), [okay(id, BLKIF_OP_WRITE)]);
    assert_eq!(&w.disk().contents()[4096..8192], &seg_bytes(&segs)[..]);
}

/// What libxl sees of a vbd whose target cannot be opened: `hotplug-error`
/// and `hotplug-status` = error, the `state` node gone (never 2); the
/// reason is kept for operators; another vbd is unaffected.
fn assert_open_failed(w: &World<RamDisk<Buf>>, fi: usize, why: &str) {
    assert_eq!(w.be_state(fi), None, "state removed: libxl fails at once");
    assert_eq!(w.be(fi, "hotplug-status").as_deref(), Some("error"));
    let err = w.be(fi, "hotplug-error").expect("hotplug-error written");
    assert!(err.contains(why), "hotplug-error {err:?} says {why:?}");
    let last = w.blk.last_error().expect("last error recorded");
    let be = format!("backend/vbd/{}/{DEV}: ", w.fronts[fi].dom.0);
    assert!(last.starts_with(&be) && last.contains(why), "{last:?}");
    assert_eq!(w.be(fi, "sectors"), None);
}

#[test]
fn unknown_target_fails_the_attach_at_once() {
    let mut w = world(ram(1), BackendConfig::default(), &[5, 6]);
    w.attach(1);
    w.attach_nodes_with(0, "nvme3n1", Some("w"));
    assert!(w.pump());
    assert_open_failed(&w, 0, "no disk 'nvme3n1'");
    assert_eq!(w.blk.vbd_count(), 1);
    w.connect(1, Opts::default());
    w.write_read_back(1, 0, 0, 1);
}

#[test]
fn malformed_target_fails_the_attach_at_once() {
    let mut w = world(ram(1), BackendConfig::default(), &[5, 6]);
    w.attach(1);
    w.attach_nodes_with(0, "/dev/sda\u{1b}[2J", Some("w"));
    assert!(w.pump());
    assert_open_failed(&w, 0, "");
    assert_eq!(w.blk.vbd_count(), 1);
    // Neither another scan nor the removal delay brings it back.
    w.blk.request_rescan();
    w.blk.maintenance(&mut w.xs, &mut w.g, &mut w.e);
    assert!(w.pump());
    assert_eq!(w.be_state(0), None);
    assert_eq!(w.opens.borrow().len(), 2, "opened once per vbd, not retried");
    w.connect(1, Opts::default());
    w.write_read_back(1, 0, 0, 1);
}

#[test]
fn target_in_use_fails_the_second_writer_and_is_released_on_teardown() {
    let mut w = world(ram(1), BackendConfig::default(), &[5, 6]);
    w.attach_nodes_with(0, "nvme0n1", Some("w"));
    assert!(w.pump());
    assert_eq!(w.be_state(0).as_deref(), Some("2"));
    w.attach_nodes_with(1, "nvme0n1", Some("w"));
    assert!(w.pump());
    assert_open_failed(&w, 1, "in use by 5/51712");
    // The first keeps working.
    w.connect(0, Opts::default());
    w.write_read_back(0, 0, 0, 1);
    // Readers cannot share a disk opened writable either.
    w.xsd.external_rm(&w.fronts[1].be_dir());
    assert!(w.pump());
    // Torn down (the toolstack removes the directory): the claim goes with the disk.
    let be0 = w.fronts[0].be_dir();
    w.xsd.external_rm(&be0);
    assert!(w.pump());
    assert_eq!(w.blk.vbd_count(), 0);
    w.attach_nodes_with(1, "nvme0n1", Some("r"));
    assert!(w.pump());
    assert_eq!(w.be_state(1).as_deref(), Some("2"), "the disk is free again");
    assert_eq!(w.be(1, "hotplug-error"), None);
}

#[test]
fn hotplug_error_is_printable_whatever_the_target_says() {
    let mut w = world(ram(1), BackendConfig::default(), &[5]);
    w.attach_nodes_with(0, "partlabel=\u{1b}[2Jevil\u{7}", Some("w"));
    assert!(w.pump());
    assert_open_failed(&w, 0, "evil");
    for text in [w.be(0, "hotplug-error").expect("written"), w.blk.last_error().expect("kept").to_string()] {
        assert!(text.chars().all(|c| (' '..='~').contains(&c)), "{text:?}");
        assert!(text.contains("\\u{1b}"), "{text:?}");
    }
}
