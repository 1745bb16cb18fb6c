//! Scatter-list (zero-copy) requests: the NVMe driver puts the caller's bus
//! addresses into the command as SGL data blocks or PRP entries; the fake
//! controller reaches them through memory it did not allocate.

use alloc::collections::BTreeMap;
use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;

use crate::block::{BlockDevice, BlockRequest, RamDisk, SgEntry};
use crate::error::Error;
use crate::fake::{FakeClock, FakeDma, FakeMemory, FakeNvme, FakeNvmeConfig, ForeignMemory};
use crate::hal::BusAddr;
use crate::nvme::{Config, Nvme};

type Drv = Nvme<FakeNvme, FakeDma, FakeClock>;

/// Pages outside the fake's allocations (a guest's granted pages).
#[derive(Default)]
struct Pages(RefCell<BTreeMap<u64, Vec<u8>>>);

const BASE: u64 = 1 << 44;

impl ForeignMemory for Pages {
    fn read(&self, addr: u64, out: &mut [u8]) -> bool {
        let p = self.0.borrow();
        let Some(page) = p.get(&(addr / 4096)) else { return false };
        let off = (addr % 4096) as usize;
        out.copy_from_slice(&page[off..off + out.len()]);
        true
    }
    fn write(&self, addr: u64, data: &[u8]) -> bool {
        let mut p = self.0.borrow_mut();
        let Some(page) = p.get_mut(&(addr / 4096)) else { return false };
        let off = (addr % 4096) as usize;
        page[off..off + data.len()].copy_from_slice(data);
        true
    }
}

fn rig(sgl: bool, lbads: u8) -> (FakeNvme, Drv, Rc<Pages>) {
    let mem = FakeMemory::new_shared();
    let pages = Rc::new(Pages::default());
    mem.borrow_mut().set_foreign(pages.clone());
    let ctrl = FakeNvme::new(mem.clone(), FakeNvmeConfig { sgl, lbads, ..Default::default() });
    let nvme = Nvme::init(ctrl.clone(), FakeDma::new(mem), FakeClock::new(1000), Config::default()).expect("init");
    (ctrl, nvme, pages)
}

/// Foreign page `n`, filled with `fill`.
fn page(p: &Pages, n: u64, fill: u8) -> u64 {
    p.0.borrow_mut().insert(BASE / 4096 + n, vec![fill; 4096]);
    BASE + n * 4096
}

fn e(bus: u64, len: u32) -> SgEntry {
    SgEntry { bus: BusAddr(bus), len }
}

fn run(d: &mut Drv, r: BlockRequest<Vec<u8>>) -> Result<(), Error> {
    d.submit(0, r).map_err(|(e, _)| e)?;
    for t in 0..100 {
        if let Some(c) = d.poll(0, t) {
            return c.result;
        }
    }
    panic!("no completion");
}

#[test]
fn sgl_takes_any_dword_aligned_shape() {
    let (ctrl, mut d, p) = rig(true, 9);
    assert!(d.scatter_gather());
    let (a, b, c) = (page(&p, 0, 0x11), page(&p, 1, 0x22), page(&p, 2, 0x33));
    let sg = vec![e(a + 512, 1024), e(b + 3584, 512), e(c, 2560)];
    assert!(d.accepts_sg(&sg));
    run(&mut d, BlockRequest::WriteSg { lba: 4, sg: sg.clone(), fua: false }).unwrap();
    let disk: Vec<u8> = (4..12).flat_map(|l| ctrl.block(l)).collect();
    let want: Vec<u8> = [vec![0x11; 1024], vec![0x22; 512], vec![0x33; 2560]].concat();
    assert_eq!(disk, want);
    assert!(ctrl.sgl_commands() > 0);
    // Read back into other pages, at other offsets.
    let (x, y) = (page(&p, 7, 0), page(&p, 8, 0));
    run(&mut d, BlockRequest::ReadSg { lba: 4, sg: vec![e(x + 2048, 2048), e(y, 2048)] }).unwrap();
    let pp = p.0.borrow();
    assert_eq!(pp[&(x / 4096)][2048..], want[..2048]);
    assert!(pp[&(x / 4096)][..2048].iter().all(|&v| v == 0), "nothing before the entry");
    assert_eq!(pp[&(y / 4096)][..2048], want[2048..]);
    assert!(pp[&(y / 4096)][2048..].iter().all(|&v| v == 0), "nothing after the entry");
}

#[test]
fn prp_takes_only_what_prps_describe() {
    let (ctrl, mut d, p) = rig(false, 9);
    let (a, b, c) = (page(&p, 0, 0x44), page(&p, 1, 0x55), page(&p, 2, 0x66));
    // First entry ends at its page's end, the middle is whole, the last
    // starts at a page start: one PRP list.
    let ok = vec![e(a + 3072, 1024), e(b, 4096), e(c, 512)];
    assert!(d.accepts_sg(&ok));
    run(&mut d, BlockRequest::WriteSg { lba: 0, sg: ok, fua: true }).unwrap();
    let disk: Vec<u8> = (0..11).flat_map(|l| ctrl.block(l)).collect();
    assert_eq!(disk, [vec![0x44; 1024], vec![0x55; 4096], vec![0x66; 512]].concat());
    // A hole (an entry ending inside its page, then another): refused up
    // front, and by submit without touching the device.
    let hole = vec![e(a, 1024), e(b, 1024)];
    assert!(!d.accepts_sg(&hole));
    let before = ctrl.commands().len();
    assert_eq!(d.submit(0, BlockRequest::ReadSg { lba: 0, sg: hole }).map_err(|(e, _)| e), Err(Error::BadBuffer));
    assert_eq!(ctrl.commands().len(), before);
    assert_eq!(ctrl.sgl_commands(), 0);
}

#[test]
fn scatter_lists_are_checked_like_buffers() {
    let (_, mut d, p) = rig(true, 12);
    let a = page(&p, 0, 1);
    // Not whole blocks of a 4 KiB namespace.
    assert_eq!(run(&mut d, BlockRequest::ReadSg { lba: 0, sg: vec![e(a, 512)] }), Err(Error::BadBuffer));
    // Past the end.
    let cap = d.capacity();
    assert_eq!(run(&mut d, BlockRequest::ReadSg { lba: cap, sg: vec![e(a, 4096)] }), Err(Error::OutOfRange));
    assert_eq!(run(&mut d, BlockRequest::ReadSg { lba: 0, sg: vec![] }), Err(Error::BadBuffer));
    assert!(!d.accepts_sg(&[]));
}

#[test]
fn other_disks_refuse_scatter_lists() {
    let mut r: RamDisk<Vec<u8>> = RamDisk::new(512, 64, 1, 4);
    assert!(!r.scatter_gather());
    assert!(!r.accepts_sg(&[e(BASE, 512)]));
    let err = r.submit(0, BlockRequest::ReadSg { lba: 0, sg: vec![e(BASE, 512)] }).map_err(|(e, _)| e);
    assert_eq!(err, Err(Error::NotSupported));
}

#[test]
fn a_controller_that_does_not_stop_says_so_for_scatter_lists() {
    let (ctrl, mut d, p) = rig(true, 9);
    let a = page(&p, 0, 0);
    ctrl.set_auto(false);
    d.submit(0, BlockRequest::ReadSg { lba: 0, sg: vec![e(a, 4096)] }).map_err(|(e, _)| e).unwrap();
    // Surprise removal: the controller cannot be disabled, so the caller's
    // pages may still be reached: the completion must not say "reset".
    ctrl.set_gone(true);
    d.reset();
    let c = d.poll(0, 0).expect("failed back");
    assert_eq!(c.result, Err(Error::ControllerFailed));
    assert!(matches!(c.request, BlockRequest::ReadSg { .. }));
}
