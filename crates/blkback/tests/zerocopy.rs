//! Zero-copy (issue 14): with persistent grants mapped for the device, the
//! NVMe driver (over the fake controller) reads and writes the guest's
//! granted pages directly. The fake controller's DMA reaches a granted page
//! only while its device mapping lives, so a page unmapped while the disk
//! may still use it fails the test.

use blkback::abi::{BLKIF_OP_READ, BLKIF_OP_WRITE};
use blkback::testing::*;
use blkback::xenbus::BackendConfig;
use blkback::MAX_MAPPINGS;
use drivers::fake::{FakeClock, FakeDma, FakeMemory, FakeNvme, FakeNvmeConfig, ForeignMemory};
use drivers::nvme::{Config, Nvme};
use std::rc::Rc;
use xen::gnttab::fake::DeviceView;
use xen::gnttab::{GrantError, GrantOps};
use xen::types::GrantRef;

type Disk = Nvme<FakeNvme, FakeDma<Buf>, FakeClock>;

/// The fake controller's view of granted pages mapped for the device.
struct Bus(DeviceView);

impl ForeignMemory for Bus {
    fn read(&self, addr: u64, out: &mut [u8]) -> bool {
        self.0.read(addr, out)
    }
    fn write(&self, addr: u64, data: &[u8]) -> bool {
        self.0.write(addr, data)
    }
}

const BLOCKS_512: u64 = 16384;

/// A world whose disk is `nvme0n1` of a fake controller (`lbads`: log2
/// block size; `sgl`: it offers SGLs), grants mapped for the device, and
/// `fronts` persistent frontends connected. Returns the controller too.
fn setup(lbads: u8, sgl: bool, fronts: u16) -> (World<Disk>, FakeNvme) {
    let mem = FakeMemory::new_shared();
    let blocks = BLOCKS_512 >> (lbads - 9);
    let ctrl = FakeNvme::new(mem.clone(), FakeNvmeConfig { blocks, lbads, sgl, ..Default::default() });
    let c = ctrl.clone();
    let m = mem.clone();
    let doms: Vec<u16> = (0..fronts).map(|d| 5 + d).collect();
    let mut w = world_with(
        move |_| Nvme::init(c, FakeDma::for_buffers(m), FakeClock::new(1000), Config::default()).expect("nvme init"),
        BackendConfig::default(),
        &doms,
    );
    w.g.set_device_map(true);
    mem.borrow_mut().set_foreign(Rc::new(Bus(w.g.device_view())));
    for fi in 0..usize::from(fronts) {
        if fi == 0 {
            w.attach_nodes_with(0, "nvme0n1", Some("w"));
        } else {
            w.attach_nodes_with(fi, SHARED, Some("w"));
        }
        assert!(w.pump());
        w.connect(fi, Opts { persistent: true, ..Opts::default() });
    }
    (w, ctrl)
}

/// Segment shapes `(first_sect, last_sect)` whose total is a multiple of
/// `bs` bytes.
fn shapes(bs: usize) -> Vec<Vec<(u8, u8)>> {
    let all: Vec<Vec<(u8, u8)>> = vec![
        vec![(0, 0)],
        vec![(3, 5)],
        vec![(7, 7), (0, 6)],
        vec![(0, 7)],
        vec![(1, 6), (0, 7), (3, 3)],
        vec![(0, 3), (4, 7)],
        vec![(1, 7), (0, 0)],
        vec![(0, 7); 11],
        vec![(2, 7), (0, 7), (0, 7), (0, 1)],
    ];
    // blkif.h: offsets and sizes in whole logical blocks (the parser
    // refuses anything else).
    let lbs = (bs / 512) as u8;
    let mut out: Vec<Vec<(u8, u8)>> =
        all.into_iter().filter(|s| s.iter().all(|(f, l)| f % lbs == 0 && (l - f + 1) % lbs == 0)).collect();
    out.push(vec![(0, 7); 3]);
    out
}

/// Writes then reads every shape (direct and indirect requests) and checks
/// the bytes: read back into the guest's pages, and on the disk.
fn every_shape(lbads: u8, sgl: bool) {
    let (mut w, ctrl) = setup(lbads, sgl, 1);
    let bs = 1usize << lbads;
    let mut sector = 8u64;
    let mut n = 0;
    for (k, sp) in shapes(bs).iter().enumerate() {
        for indirect in [false, true] {
            let seed = 7 + 31 * k as u32 + u32::from(indirect);
            let f = &mut w.fronts[0];
            let (wreq, wid, wsegs) = if indirect {
                f.indirect_spans(BLKIF_OP_WRITE, sector, sp, seed)
            } else {
                f.rw(BLKIF_OP_WRITE, sector, sp, seed, true)
            };
            assert_eq!(w.io(0, 0, &[wreq]), [okay(wid, BLKIF_OP_WRITE)], "write {sp:?}");
            let written = seg_bytes(&wsegs);
            // On the disk: exactly the guest's bytes, where they belong.
            let first = sector * 512 / bs as u64;
            let mut disk = Vec::new();
            for b in 0..(written.len() / bs) as u64 {
                disk.extend(ctrl.block(first + b));
            }
            assert_eq!(disk, written, "disk holds the written bytes ({sp:?}, indirect {indirect})");
            let f = &mut w.fronts[0];
            let (rreq, rid, rsegs) = if indirect {
                f.indirect_spans(BLKIF_OP_READ, sector, sp, 0)
            } else {
                f.rw(BLKIF_OP_READ, sector, sp, 0, false)
            };
            let before: Vec<Vec<u8>> = rsegs.iter().map(|(p, _, _)| p.page.snapshot()).collect();
            assert_eq!(w.io(0, 0, &[rreq]), [okay(rid, BLKIF_OP_READ)], "read {sp:?}");
            assert_eq!(seg_bytes(&rsegs), written, "read back ({sp:?}, indirect {indirect})");
            // Bytes of the pages outside the segments are untouched.
            for ((p, f, l), old) in rsegs.iter().zip(before) {
                let now = p.page.snapshot();
                let (a, b) = (usize::from(*f) * 512, (usize::from(*l) + 1) * 512);
                assert_eq!(now[..a], old[..a], "bytes before the segment");
                assert_eq!(now[b..], old[b..], "bytes after the segment");
            }
            sector += (written.len() / 512).div_ceil(8) as u64 * 8 + 8;
            n += 2;
        }
    }
    let s = w.blk.stats;
    if sgl {
        assert!(s.zero_copy >= n, "every request by zero-copy with SGLs: {} of {n}", s.zero_copy);
    } else {
        assert!(s.zero_copy > 0, "page-aligned shapes go by zero-copy with PRPs");
    }
    assert_eq!(s.errors, 0);
}

#[test]
fn every_shape_512_sgl() {
    every_shape(9, true);
}

#[test]
fn every_shape_512_prp() {
    every_shape(9, false);
}

#[test]
fn every_shape_4096_sgl() {
    every_shape(12, true);
}

#[test]
fn every_shape_4096_prp() {
    every_shape(12, false);
}

#[test]
fn zero_copy_reads_allocate_and_zero_no_buffer() {
    let (mut w, ctrl) = setup(9, true, 1);
    let f = &mut w.fronts[0];
    let (wreq, wid, wsegs) = f.rw(BLKIF_OP_WRITE, 64, &[(0, 7), (0, 7)], 3, true);
    assert_eq!(w.io(0, 0, &[wreq]), [okay(wid, BLKIF_OP_WRITE)]);
    for k in 0..20u64 {
        let (rreq, rid, rsegs) = w.fronts[0].rw(BLKIF_OP_READ, 64, &[(0, 7), (0, 7)], 0, false);
        assert_eq!(w.io(0, 0, &[rreq]), [okay(rid, BLKIF_OP_READ)], "read {k}");
        assert_eq!(seg_bytes(&rsegs), seg_bytes(&wsegs));
    }
    let s = w.blk.stats;
    assert_eq!(s.buffers_allocated, 0, "no disk buffer (so no zero-fill) on the zero-copy path");
    assert_eq!(s.buffers_reused, 0);
    assert_eq!(s.zero_copy, 21);
    assert_eq!(w.blk.buffer_bytes(), 0);
    assert!(ctrl.sgl_commands() >= 21, "SGL commands: {}", ctrl.sgl_commands());
}

#[test]
fn zero_copy_off_copies() {
    let (mut w, _) = setup(9, true, 1);
    w.blk.set_zerocopy(false);
    w.write_read_back(0, 0, 0, 5);
    assert_eq!(w.blk.stats.zero_copy, 0);
    assert!(w.blk.stats.buffers_allocated > 0);
}

#[test]
fn pinned_grants_survive_mapping_pressure() {
    // Five rings share the mapping budget: each may keep about 765
    // persistent grants. Four 256-page reads in flight at once pin 1024.
    let (mut w, ctrl) = setup(9, true, 5);
    let cap = (MAX_MAPPINGS - 5 - 264) / 5;
    // Data to read: four 1 MiB regions written first (by zero-copy too).
    let mut written = Vec::new();
    for k in 0..4u64 {
        let (req, id, pages) = w.fronts[0].indirect(BLKIF_OP_WRITE, k * 2048, 256, 100 + k as u32 * 1000);
        assert_eq!(w.io(0, 0, &[req]), [okay(id, BLKIF_OP_WRITE)]);
        written.push(pages.iter().flat_map(|p| p.page.snapshot()).collect::<Vec<u8>>());
    }
    // The disk holds every command until told.
    ctrl.set_auto(false);
    let mut reads = Vec::new();
    for k in 0..4u64 {
        let (req, id, pages) = w.fronts[0].indirect(BLKIF_OP_READ, k * 2048, 256, 0);
        w.fronts[0].push(0, &req);
        reads.push((id, pages));
    }
    w.fronts[0].publish(0);
    for _ in 0..20 {
        w.blk.poll(&mut w.g, &mut w.e);
    }
    assert!(w.blk.in_flight() >= 4, "reads on the disk: {}", w.blk.in_flight());
    assert!(w.blk.mappings() > cap + 5, "pinned grants kept past the cache bound: {}", w.blk.mappings());
    // The device writes every page of every read now: each is still mapped
    // (the fake controller panics on a page no longer mapped).
    ctrl.set_auto(true);
    ctrl.step();
    let rsp = w.collect(0, 0, 4);
    for (id, _) in &reads {
        assert!(rsp.contains(&okay(*id, BLKIF_OP_READ)), "{rsp:?}");
    }
    for ((_, pages), data) in reads.iter().zip(&written) {
        let got: Vec<u8> = pages.iter().flat_map(|p| p.page.snapshot()).collect();
        assert!(got == *data, "read data landed in the guest's pages");
    }
    // Unpinned, the caches shrink back to their bound at the next request.
    w.write_read_back(0, 0, 12000, 11);
    assert!(w.blk.mappings() <= MAX_MAPPINGS, "{}", w.blk.mappings());
    assert_eq!(w.blk.stats.errors, 0);
}

#[test]
fn disconnect_waits_for_zero_copy_dma_before_unmapping() {
    let (mut w, ctrl) = setup(9, true, 1);
    let (wreq, wid, wsegs) = w.fronts[0].rw(BLKIF_OP_WRITE, 256, &[(0, 7), (2, 5)], 21, true);
    assert_eq!(w.io(0, 0, &[wreq]), [okay(wid, BLKIF_OP_WRITE)]);
    ctrl.set_auto(false);
    let (rreq, _, rsegs) = w.fronts[0].rw(BLKIF_OP_READ, 256, &[(0, 7), (2, 5)], 0, false);
    w.fronts[0].push(0, &rreq);
    w.fronts[0].publish(0);
    for _ in 0..5 {
        w.blk.poll(&mut w.g, &mut w.e);
    }
    assert_eq!(w.blk.in_flight(), 1);
    // The frontend closes while the read is on the disk.
    w.fe_write(0, "state", "6");
    assert!(!w.pump(), "the disk still holds the read");
    assert_eq!(w.be_state(0).as_deref(), Some("6"), "Closed without waiting for the disk");
    // The read's pages stay mapped for the device; everything else went.
    let in_flight: Vec<u32> = rsegs.iter().map(|(p, _, _)| p.gref.0).collect();
    assert_eq!(w.blk.mappings(), 2, "only the in-flight read's pages");
    for g in &in_flight {
        assert_eq!(w.fronts[0].g.end_access(GrantRef(*g)), Err(GrantError::InUse), "grant {g} still mapped");
    }
    // The disk finishes: the data lands in the still-mapped pages, then
    // they are unmapped.
    ctrl.set_auto(true);
    ctrl.step();
    w.pump();
    assert_eq!(w.blk.mappings(), 0);
    assert_eq!(seg_bytes(&rsegs), seg_bytes(&wsegs), "the DMA reached the pages while mapped");
    for g in &in_flight {
        assert_eq!(w.fronts[0].g.end_access(GrantRef(*g)), Ok(()), "grant {g} released");
        w.fronts[0].granted.remove(g);
    }
    assert_eq!(w.fronts[0].end_all(), [], "every grant revocable once the disk is done");
}

#[test]
fn pages_a_failed_controller_may_reach_stay_mapped() {
    let (mut w, ctrl) = setup(9, true, 1);
    ctrl.set_auto(false);
    let (rreq, rid, rsegs) = w.fronts[0].rw(BLKIF_OP_READ, 0, &[(0, 7)], 0, false);
    w.fronts[0].push(0, &rreq);
    w.fronts[0].publish(0);
    for _ in 0..5 {
        w.blk.poll(&mut w.g, &mut w.e);
    }
    assert_eq!(w.blk.in_flight(), 1);
    // The controller vanishes and cannot be stopped: the read is failed
    // back, but the device may still write the page.
    ctrl.set_gone(true);
    w.disk_mut().reset();
    assert_eq!(w.collect(0, 0, 1), [error(rid, BLKIF_OP_READ)]);
    w.fe_write(0, "state", "6");
    w.pump();
    assert_eq!(w.be_state(0).as_deref(), Some("6"));
    let g = rsegs[0].0.gref;
    assert_eq!(w.blk.mappings(), 1, "the page stays mapped for the device");
    assert_eq!(w.fronts[0].g.end_access(g), Err(GrantError::InUse));
    for _ in 0..10 {
        w.pump();
    }
    assert_eq!(w.fronts[0].g.end_access(g), Err(GrantError::InUse), "never handed back");
}
