//! A unit shared with a host IOMMU driver (Xen's VT-d code in the lab
//! hypervisor): the core tells it when a device moves into one of its
//! contexts (`attach`, refusable) and back (`detach`), and when a domain id
//! is no longer used (`release_did`), in an order that never leaves a device
//! pointing at freed tables.

mod common;

use std::cell::RefCell;
use std::rc::Rc;

use common::*;
use iommu_core::hw::{AttachError, Hardware, SoftVtd};
use iommu_core::mem::{PhysMem, VecMemory};
use iommu_core::types::{CtxNo, Dfn, DomId, Gfn, Instant, Mfn, PciSbdf, Sid};
use iommu_core::vtd::{AddrWidth, FaultRecord};
use iommu_core::{hypercall_return, Config, Iommu};
use pv_iommu_abi::{errno, subop, Alloc, Free, Init, MapPages, ReattachDevice, UnmapPages};

#[derive(Clone, Debug, PartialEq, Eq)]
enum Ev {
    Attach {
        sid: Sid,
        root: Mfn,
        did: u16,
    },
    Detach(Sid),
    Release(u16),
    /// A table page the core freed (seen through the memory).
    Freed(Mfn),
}

/// SoftVtd plus the shared-unit calls, recorded in one log with the frees.
struct Shared {
    soft: SoftVtd,
    log: Rc<RefCell<Vec<Ev>>>,
    refuse: Option<AttachError>,
}

impl Hardware for Shared {
    fn addr_width(&self) -> AddrWidth {
        self.soft.addr_width()
    }
    fn caching_mode(&self) -> bool {
        self.soft.caching_mode()
    }
    fn domain_ids(&self) -> u32 {
        self.soft.domain_ids()
    }
    fn set_root_table(&mut self, mem: &mut dyn PhysMem, root: Mfn) {
        self.soft.set_root_table(mem, root)
    }
    fn enable_queue(&mut self, mem: &mut dyn PhysMem, base: Mfn, order: u8) {
        self.soft.enable_queue(mem, base, order)
    }
    fn set_queue_tail(&mut self, mem: &mut dyn PhysMem, tail: u32) {
        self.soft.set_queue_tail(mem, tail)
    }
    fn queue_head(&self) -> u32 {
        self.soft.queue_head()
    }
    fn abort_device_tlb(&mut self, mem: &mut dyn PhysMem, sid: Sid) {
        self.soft.abort_device_tlb(mem, sid)
    }
    fn take_fault(&mut self) -> Option<FaultRecord> {
        self.soft.take_fault()
    }
    fn coherent(&self) -> bool {
        self.soft.coherent()
    }
    fn flush_cache(&mut self, mem: &mut dyn PhysMem, pa: u64, len: u64) {
        self.soft.flush_cache(mem, pa, len)
    }
    fn attach(&mut self, _: &mut dyn PhysMem, sid: Sid, root: Mfn, did: u16, _: bool) -> Result<(), AttachError> {
        if let Some(e) = self.refuse {
            return Err(e);
        }
        self.log.borrow_mut().push(Ev::Attach { sid, root, did });
        Ok(())
    }
    fn detach(&mut self, _: &mut dyn PhysMem, sid: Sid) {
        self.log.borrow_mut().push(Ev::Detach(sid));
    }
    fn release_did(&mut self, did: u16) {
        self.log.borrow_mut().push(Ev::Release(did));
    }
}

/// Memory that logs the frees into the same log.
struct LoggedMem {
    mem: VecMemory,
    log: Rc<RefCell<Vec<Ev>>>,
}

impl PhysMem for LoggedMem {
    fn read_u64(&self, pa: u64) -> Option<u64> {
        self.mem.read_u64(pa)
    }
    fn write_u64(&mut self, pa: u64, v: u64) {
        self.mem.write_u64(pa, v)
    }
    fn write_back(&mut self, pa: u64, len: u64) {
        self.mem.write_back(pa, len)
    }
}

impl iommu_core::mem::PageAlloc for LoggedMem {
    fn alloc_zeroed(&mut self) -> Option<Mfn> {
        self.mem.alloc_zeroed()
    }
    fn free_page(&mut self, mfn: Mfn) {
        self.log.borrow_mut().push(Ev::Freed(mfn));
        self.mem.free_page(mfn)
    }
}

type SharedHv = Iommu<LoggedMem, Shared, FakePlatform>;

const DEV: PciSbdf = PciSbdf::new(0, 0, 5, 0);
const OTHER: PciSbdf = PciSbdf::new(0, 0, 6, 0);

fn setup() -> (SharedHv, Rc<RefCell<Vec<Ev>>>) {
    let log = Rc::new(RefCell::new(Vec::new()));
    let mut soft = SoftVtd::new(AddrWidth::Aw39);
    soft.set_caching_mode(true);
    let hw = Shared { soft, log: log.clone(), refuse: None };
    let mem = LoggedMem { mem: VecMemory::new(Mfn(0x10_0000), 4096), log: log.clone() };
    let mut hv = Iommu::new(Config::default(), mem, hw, FakePlatform::default()).unwrap();
    hv.add_domain(HWDOM, true).unwrap();
    hv.add_domain(GUEST, true).unwrap();
    for (dev, owner) in [(DEV, HWDOM), (OTHER, GUEST)] {
        hv.add_device(dev, false, &[]).unwrap();
        hv.platform_mut().owners.insert(dev, owner);
        hv.assign_device(dev, owner, Instant(0)).unwrap();
    }
    let mut i = Init { max_ctx_no: 8, arena_order: 8 }.to_bytes();
    assert_eq!(call(&mut hv, HWDOM, subop::INIT, &mut i), 0);
    log.borrow_mut().clear();
    (hv, log)
}

fn call(hv: &mut SharedHv, dom: DomId, op: u32, arg: &mut [u8]) -> i64 {
    hypercall_return(hv.handle(dom, op, arg, Instant(0)))
}

fn alloc(hv: &mut SharedHv) -> CtxNo {
    let mut a = Alloc::default().to_bytes();
    assert_eq!(call(hv, HWDOM, subop::ALLOC_CONTEXT, &mut a), 0);
    CtxNo(Alloc::from_bytes(&a).ctx_no)
}

fn reattach(hv: &mut SharedHv, dom: DomId, ctx: CtxNo, dev: PciSbdf) -> i64 {
    let mut r = ReattachDevice { ctx_no: ctx.0, dev: dev.into(), pad0: 0, pasid: 0 }.to_bytes();
    call(hv, dom, subop::REATTACH_DEVICE, &mut r)
}

fn map(hv: &mut SharedHv, ctx: CtxNo, gfn: u64, dfn: u64, n: u32) -> i64 {
    let mut m = MapPages::new(ctx, Gfn(gfn), Dfn(dfn), 3, 4096, n).to_bytes();
    call(hv, HWDOM, subop::MAP_PAGES, &mut m)
}

#[test]
fn reattach_attaches_the_context_tables_and_back_detaches() {
    let (mut hv, log) = setup();
    let ctx = alloc(&mut hv);
    assert_eq!(map(&mut hv, ctx, 0x10, 0x100, 4), 0);
    assert!(log.borrow().is_empty(), "allocating and mapping move no device");
    assert_eq!(reattach(&mut hv, HWDOM, ctx, DEV), 0);
    let (root, did) = match log.borrow().as_slice() {
        [Ev::Attach { sid, root, did }] if *sid == Sid::from(DEV) => (*root, *did),
        other => panic!("expected one attach of DEV, got {other:?}"),
    };
    assert_eq!(hv.device_context(DEV), Some((HWDOM, ctx)));
    let mut dump = String::new();
    hv.dump(&mut dump).unwrap();
    assert!(dump.contains(&format!("d0 ctx{} Paged did={did} mapped=4 devs=[0000:00:05.0]", ctx.0)), "{dump}");
    // Reattaching where it already is changes nothing.
    assert_eq!(reattach(&mut hv, HWDOM, ctx, DEV), 0);
    assert_eq!(log.borrow().len(), 1);
    // Back to the default context: the host's own mapping; the context's tables stay.
    assert_eq!(reattach(&mut hv, HWDOM, CtxNo(0), DEV), 0);
    assert_eq!(log.borrow()[1], Ev::Detach(Sid::from(DEV)));
    assert_eq!(log.borrow().len(), 2, "no table freed, no domain id released: {:?}", log.borrow());
    // Free the context: its tables and domain id go only after the detach.
    let mut f = Free { ctx_no: ctx.0, pad0: 0, free_flags: 0 }.to_bytes();
    assert_eq!(call(&mut hv, HWDOM, subop::FREE_CONTEXT, &mut f), 0);
    let l = log.borrow();
    assert!(l[2..].contains(&Ev::Freed(root)), "{l:?}");
    assert_eq!(l.last(), Some(&Ev::Release(did)), "the domain id is released after its tables: {l:?}");
}

#[test]
fn free_with_reattach_default_detaches_before_anything_is_freed() {
    let (mut hv, log) = setup();
    let ctx = alloc(&mut hv);
    assert_eq!(map(&mut hv, ctx, 0x10, 0x100, 2), 0);
    assert_eq!(reattach(&mut hv, HWDOM, ctx, DEV), 0);
    let mut f = Free { ctx_no: ctx.0, pad0: 0, free_flags: pv_iommu_abi::free_flags::REATTACH_DEFAULT }.to_bytes();
    assert_eq!(call(&mut hv, HWDOM, subop::FREE_CONTEXT, &mut f), 0);
    let l = log.borrow();
    let detach = l.iter().position(|e| *e == Ev::Detach(Sid::from(DEV))).expect("detached");
    let first_free = l.iter().position(|e| matches!(e, Ev::Freed(_))).expect("tables freed");
    assert!(detach < first_free, "{l:?}");
    assert!(matches!(l.last(), Some(Ev::Release(_))), "{l:?}");
    assert_eq!(hv.device_context(DEV), Some((HWDOM, CtxNo(0))));
    assert_eq!(hv.platform().total_refs(), 0);
}

#[test]
fn a_refused_attach_changes_nothing() {
    for (e, want) in [
        (AttachError::NotSupported, errno::EOPNOTSUPP),
        (AttachError::NoSpace, errno::ENOSPC),
        (AttachError::NoDevice, errno::ENODEV),
        (AttachError::Failed, errno::ENOMEM),
    ] {
        let (mut hv, log) = setup();
        let ctx = alloc(&mut hv);
        let before = hv.counters(HWDOM);
        hv.hw_mut().refuse = Some(e);
        assert_eq!(reattach(&mut hv, HWDOM, ctx, DEV), -want, "{e:?}");
        assert_eq!(hv.device_context(DEV), Some((HWDOM, CtxNo(0))), "still in the default context");
        assert_eq!(hv.counters(HWDOM), before);
        assert!(log.borrow().is_empty());
        // The core's own context entry was not changed either: its next move works.
        hv.hw_mut().refuse = None;
        assert_eq!(reattach(&mut hv, HWDOM, ctx, DEV), 0);
    }
}

#[test]
fn policy_runs_before_the_unit_is_asked() {
    let (mut hv, log) = setup();
    let ctx = alloc(&mut hv);
    assert_eq!(reattach(&mut hv, HWDOM, ctx, OTHER), -errno::ENOENT, "not dom0's device");
    assert_eq!(reattach(&mut hv, HWDOM, CtxNo(7), DEV), -errno::EINVAL, "no such context");
    assert!(log.borrow().is_empty());
}

#[test]
fn teardown_detaches_then_frees_then_releases() {
    let (mut hv, log) = setup();
    let ctx = alloc(&mut hv);
    assert_eq!(map(&mut hv, ctx, 0x10, 0x100, 3), 0);
    assert_eq!(reattach(&mut hv, HWDOM, ctx, DEV), 0);
    let mut u = UnmapPages::new(ctx, Dfn(0x100), 4096, 1).to_bytes();
    assert_eq!(call(&mut hv, HWDOM, subop::UNMAP_PAGES, &mut u), 0);
    log.borrow_mut().clear();
    hv.destroy_domain(HWDOM, Instant(1)).unwrap();
    for _ in 0..16 {
        hv.poll(Instant(2));
    }
    let l = log.borrow();
    let detach = l.iter().position(|e| *e == Ev::Detach(Sid::from(DEV))).expect("detached");
    let first_free = l.iter().position(|e| matches!(e, Ev::Freed(_))).expect("tables freed");
    assert!(detach < first_free, "{l:?}");
    assert_eq!(l.iter().filter(|e| matches!(e, Ev::Release(_))).count(), 2, "default and paged context ids: {l:?}");
    assert_eq!(hv.counters(HWDOM), iommu_core::Counters::default());
    assert_eq!(hv.platform().total_refs(), 0);
}
