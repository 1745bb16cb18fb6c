//! Handler semantics and error codes, checked through the client and the
//! software VT-d.

mod common;

use common::*;
use iommu_core::iommu::{MgmtError, Rmrr};
use iommu_core::types::{CtxNo, Dfn, DomId, Gfn, Instant, Mfn, PciSbdf, Sid};
use iommu_core::vtd::{AddrWidth, FaultReason, Perm};
use iommu_core::{Error as HvError, Outcome};
use pv_iommu_abi::{self as abi, subop, MapPages, UnmapPages};
use pv_iommu_client::client::MapFlags;
use pv_iommu_client::{Error, PartialError};

const RW: MapFlags = MapFlags::READ_WRITE;

fn ready(aw: AddrWidth) -> Hv {
    let mut hv = setup(aw);
    client(&mut hv, GUEST).init(8, 10).unwrap();
    hv
}

#[test]
fn interface_presence_and_unknown_subops() {
    let mut hv = setup(AddrWidth::Aw48);
    hv.add_domain(DomId(5), false).unwrap();
    assert_eq!(client(&mut hv, GUEST).noop(), Ok(()));
    assert_eq!(client(&mut hv, DomId(5)).noop(), Err(Error::NoDevice), "not enabled");
    assert_eq!(client(&mut hv, DomId(9)).query_capabilities(), Err(Error::NoDevice), "unknown domain");
    assert_eq!(raw(&mut hv, GUEST, 13, &mut [0; 64]), -95);
    for s in 9..=12 {
        assert_eq!(raw(&mut hv, GUEST, s, &mut []), -95);
    }
    assert_eq!(raw(&mut hv, GUEST, subop::MAP_PAGES, &mut [0; 20]), -14, "short argument");
}

#[test]
fn capabilities_follow_address_width() {
    for (aw, bits) in [(AddrWidth::Aw39, 39), (AddrWidth::Aw48, 48)] {
        let mut hv = setup(aw);
        let caps = client(&mut hv, GUEST).query_capabilities().unwrap();
        assert_eq!(caps.max_iova_addr, (1 << bits) - 1);
        assert_eq!(caps.pgsize_mask, 0x1000);
        assert_eq!(caps.max_ctx_no, 0);
        assert_ne!(caps.cap_flags & abi::cap::IDENTITY, 0);
    }
}

#[test]
fn init_rules_and_no_fallthrough_into_alloc() {
    let mut hv = setup(AddrWidth::Aw48);
    let mut c = client(&mut hv, GUEST);
    assert_eq!(c.alloc_context(false), Err(Error::NoSpace), "no contexts before init");
    assert_eq!(c.init(u32::MAX, 4), Err(Error::TooBig));
    assert_eq!(c.init(4, 63), Err(Error::TooBig));
    assert_eq!(c.init(4, 6), Ok(()));
    assert_eq!(c.init(4, 6), Err(Error::AccessDenied));
    // init did not allocate: context 1 does not exist yet.
    assert_eq!(c.free_context(CtxNo(1), false), Err(Error::NotFound));
    assert_eq!(c.query_capabilities().unwrap().max_ctx_no, 4);
    assert_eq!(c.alloc_context(false), Ok(CtxNo(1)));
    // The Linux sequence is a no-op once initialised.
    assert_eq!(c.ensure_initialised().map(|c| c.max_ctx_no), Ok(4));
}

#[test]
fn alloc_until_no_space_and_free_rules() {
    let mut hv = ready(AddrWidth::Aw48);
    let mut c = client(&mut hv, GUEST);
    for n in 1..=8 {
        assert_eq!(c.alloc_context(false), Ok(CtxNo(n)));
    }
    assert_eq!(c.alloc_context(false), Err(Error::NoSpace));
    assert_eq!(c.free_context(CtxNo(0), false), Err(Error::Invalid));
    assert_eq!(c.free_context(CtxNo(0), true), Err(Error::Invalid));
    assert_eq!(c.free_context(CtxNo(3), false), Ok(()));
    assert_eq!(c.free_context(CtxNo(3), false), Err(Error::NotFound));
    assert_eq!(c.alloc_context(false), Ok(CtxNo(3)), "freed number is reused");
    assert_eq!(
        raw(c.transport_mut().hv, GUEST, subop::ALLOC_CONTEXT, &mut [0, 0, 0, 0, 2, 0, 0, 0]),
        -22,
        "unknown flag"
    );
}

#[test]
fn free_with_devices_is_busy_unless_reattaching_to_default() {
    let mut hv = ready(AddrWidth::Aw48);
    let mut c = client(&mut hv, GUEST);
    let ctx = c.alloc_context(false).unwrap();
    c.reattach_device(ctx, DEV_A).unwrap();
    assert_eq!(c.free_context(ctx, false), Err(Error::Busy));
    c.map_pages(ctx, Gfn(0x20), Dfn(0x500), 1, RW).unwrap();
    assert_eq!(dma(&mut hv, DEV_A, 0x500_000, true), Ok(mfn_of(GUEST, 0x20).addr()));
    assert_eq!(client(&mut hv, GUEST).free_context(ctx, true), Ok(()));
    assert_eq!(hv.device_context(DEV_A), Some((GUEST, CtxNo(0))));
    // Back in the default context: bus address = MFN.
    let own = mfn_of(GUEST, 2);
    assert_eq!(dma(&mut hv, DEV_A, own.addr() + 8, false), Ok(own.addr() + 8));
    assert_eq!(dma(&mut hv, DEV_A, 0x500_000, true), Err(FaultReason::Write));
    assert_eq!(hv.platform().refs(mfn_of(GUEST, 0x20)), 0, "page reference dropped");
    assert_eq!(hv.arena_used(GUEST), Some(0), "arena returned");
}

#[test]
fn map_and_unmap_context_checks() {
    let mut hv = ready(AddrWidth::Aw48);
    let mut c = client(&mut hv, GUEST);
    let e = |error, done| Err(PartialError { error, done });
    assert_eq!(c.map_pages(CtxNo(0), Gfn(1), Dfn(1), 1, RW), e(Error::Invalid, 0));
    assert_eq!(c.map_pages(CtxNo(7), Gfn(1), Dfn(1), 1, RW), e(Error::Invalid, 0));
    assert_eq!(c.unmap_pages(CtxNo(0), Dfn(1), 1), e(Error::Invalid, 0));
    assert_eq!(c.unmap_pages(CtxNo(7), Dfn(1), 1), e(Error::Invalid, 0));
    let ctx = c.alloc_context(false).unwrap();
    // Bad arguments.
    let mut m = MapPages::new(ctx, Gfn(1), Dfn(1), 0, 4096, 1);
    assert_eq!(raw(c.transport_mut().hv, GUEST, subop::MAP_PAGES, &mut m.to_bytes()), -22, "no rights");
    m.map_flags = 8 | 1;
    assert_eq!(raw(c.transport_mut().hv, GUEST, subop::MAP_PAGES, &mut m.to_bytes()), -22, "unknown flag");
    m.map_flags = 3;
    m.pgsize = 2 << 20;
    assert_eq!(raw(c.transport_mut().hv, GUEST, subop::MAP_PAGES, &mut m.to_bytes()), -22, "2M pages");
    m.pgsize = 4096;
    m.dfn = u64::MAX;
    m.nr_pages = 2;
    assert_eq!(raw(c.transport_mut().hv, GUEST, subop::MAP_PAGES, &mut m.to_bytes()), -22, "dfn beyond width");
    assert_eq!(c.map_pages(ctx, Gfn(GUEST_PAGES), Dfn(1), 1, RW), e(Error::Invalid, 0), "not a page of the guest");
}

#[test]
fn map_over_mapping_is_addr_in_use_with_progress() {
    let mut hv = ready(AddrWidth::Aw48);
    let mut c = client(&mut hv, GUEST);
    let ctx = c.alloc_context(false).unwrap();
    c.map_pages(ctx, Gfn(0x100), Dfn(0x1005), 1, RW).unwrap();
    assert_eq!(
        c.map_pages(ctx, Gfn(0x200), Dfn(0x1000), 10, RW),
        Err(PartialError { error: Error::AddressInUse, done: 5 })
    );
    // The five mapped pages stay mapped; the old mapping is untouched.
    c.reattach_device(ctx, DEV_A).unwrap();
    assert_eq!(dma(&mut hv, DEV_A, 0x0100_4000, false), Ok(mfn_of(GUEST, 0x204).addr()));
    assert_eq!(dma(&mut hv, DEV_A, 0x0100_5000, false), Ok(mfn_of(GUEST, 0x100).addr()));
    assert_eq!(hv.platform().refs(mfn_of(GUEST, 0x205)), 0, "no reference leaked for the refused page");
}

#[test]
fn reserved_range_checked_on_every_page() {
    let mut hv = ready(AddrWidth::Aw48);
    let mut c = client(&mut hv, GUEST);
    let ctx = c.alloc_context(false).unwrap();
    // Starts below the MSI window and runs into it: the defect checked only dfn[0].
    assert_eq!(
        c.map_pages(ctx, Gfn(0x10), Dfn(0xfee00 - 3), 8, RW),
        Err(PartialError { error: Error::AddressNotAvailable, done: 3 })
    );
    assert_eq!(
        c.map_pages(ctx, Gfn(0x10), Dfn(0xfeeff), 1, RW),
        Err(PartialError { error: Error::AddressNotAvailable, done: 0 })
    );
    assert_eq!(c.unmap_pages(ctx, Dfn(0xfee10), 1), Err(PartialError { error: Error::AddressNotAvailable, done: 0 }));
    assert_eq!(c.map_pages(ctx, Gfn(0x10), Dfn(0xfef00), 1, RW), Ok(()), "just past the window");
}

#[test]
fn rmrr_is_reserved_and_present_in_every_context() {
    let mut hv = ready(AddrWidth::Aw39);
    let dev = PciSbdf::new(0, 5, 0, 0);
    let rmrr = Rmrr { first: 0x7000, count: 4 };
    hv.add_device(dev, false, &[rmrr]).unwrap();
    let mut c = client(&mut hv, GUEST);
    let before = c.alloc_context(false).unwrap();
    hv.assign_device(dev, GUEST, Instant(0)).unwrap();
    let mut c = client(&mut hv, GUEST);
    let after = c.alloc_context(false).unwrap();
    assert_eq!(
        c.map_pages(after, Gfn(1), Dfn(0x7002), 1, RW),
        Err(PartialError { error: Error::AddressNotAvailable, done: 0 })
    );
    for ctx in [CtxNo(0), before, after] {
        client(&mut hv, GUEST).reattach_device(ctx, dev).unwrap();
        assert_eq!(dma(&mut hv, dev, 0x0700_3010, true), Ok(0x0700_3010), "unity map in {ctx:?}");
        assert!(dma(&mut hv, dev, 0x0700_4000, true).is_err());
    }
    // Cannot unmap it either.
    assert_eq!(
        client(&mut hv, GUEST).unmap_pages(after, Dfn(0x7000), 1),
        Err(PartialError { error: Error::AddressNotAvailable, done: 0 })
    );
}

#[test]
fn unmap_of_unmapped_is_enoent_with_progress() {
    let mut hv = ready(AddrWidth::Aw48);
    let mut c = client(&mut hv, GUEST);
    let ctx = c.alloc_context(false).unwrap();
    c.map_pages(ctx, Gfn(0x30), Dfn(0x40), 3, RW).unwrap();
    assert_eq!(c.unmap_pages(ctx, Dfn(0x40), 5), Err(PartialError { error: Error::NotFound, done: 3 }));
    assert_eq!(c.unmap_pages(ctx, Dfn(0x40), 1), Err(PartialError { error: Error::NotFound, done: 0 }));
    for g in 0x30..0x33 {
        assert_eq!(hv.platform().refs(mfn_of(GUEST, g)), 0);
    }
}

#[test]
fn preemption_every_256_pages_is_restartable() {
    let mut hv = ready(AddrWidth::Aw48);
    let ctx = client(&mut hv, GUEST).alloc_context(false).unwrap();
    let mut m = MapPages::new(ctx, Gfn(0x1000), Dfn(0x8000), 3, 4096, 600);
    let mut b = m.to_bytes();
    assert_eq!(hv.handle(GUEST, subop::MAP_PAGES, &mut b, Instant(0)), Ok(Outcome::Restart));
    assert_eq!(MapPages::from_bytes(&b).mapped, 256);
    assert_eq!(hv.handle(GUEST, subop::MAP_PAGES, &mut b, Instant(0)), Ok(Outcome::Restart));
    assert_eq!(MapPages::from_bytes(&b).mapped, 512);
    assert_eq!(hv.handle(GUEST, subop::MAP_PAGES, &mut b, Instant(0)), Ok(Outcome::Done));
    m = MapPages::from_bytes(&b);
    assert_eq!(m.mapped, 600);
    m.mapped = 601;
    assert_eq!(hv.handle(GUEST, subop::MAP_PAGES, &mut m.to_bytes(), Instant(0)), Err(HvError::Inval));
    let mut u = UnmapPages::new(ctx, Dfn(0x8000), 4096, 600).to_bytes();
    assert_eq!(hv.handle(GUEST, subop::UNMAP_PAGES, &mut u, Instant(0)), Ok(Outcome::Restart));
    // Through the client the restarts are transparent.
    assert_eq!(client(&mut hv, GUEST).unmap_pages(ctx, Dfn(0x8000 + 256), 344), Ok(()));
    assert_eq!(hv.replay(GUEST, ctx).unwrap(), []);
}

#[test]
fn remote_cmd_only_from_the_hardware_domain() {
    let mut hv = ready(AddrWidth::Aw48);
    let mut inner = abi::Alloc::default().to_bytes();
    assert_eq!(client(&mut hv, GUEST).remote_cmd(GUEST, subop::ALLOC_CONTEXT, &mut inner), Err(Error::NotPermitted));
    assert_eq!(client(&mut hv, DomId(1)).remote_cmd(DomId(0), subop::NOOP, &mut []), Err(Error::NotPermitted));
    // The hardware domain allocates and maps on behalf of the guest.
    let mut hw = client(&mut hv, HWDOM);
    assert_eq!(hw.remote_cmd(GUEST, subop::ALLOC_CONTEXT, &mut inner), Ok(0));
    let ctx = abi::Alloc::from_bytes(&inner).ctx_no;
    assert_eq!(ctx, 1);
    let mut m = MapPages::new(CtxNo(ctx), Gfn(0x44), Dfn(0x10), 3, 4096, 2).to_bytes();
    assert_eq!(hw.remote_cmd(GUEST, subop::MAP_PAGES, &mut m), Ok(0));
    assert_eq!(MapPages::from_bytes(&m).mapped, 2);
    assert_eq!(hw.remote_cmd(GUEST, subop::REMOTE_CMD, &mut [0; 16]), Err(Error::Invalid), "no nesting");
    assert_eq!(hw.remote_cmd(DomId(77), subop::NOOP, &mut []), Err(Error::NoDevice));
    assert_eq!(hv.replay(GUEST, CtxNo(1)).unwrap().len(), 1);
}

#[test]
fn dying_domain_refuses_every_op_and_releases_everything() {
    let mut hv = ready(AddrWidth::Aw48);
    let mut c = client(&mut hv, GUEST);
    let ctx = c.alloc_context(false).unwrap();
    c.map_pages(ctx, Gfn(0x50), Dfn(0x50), 4, RW).unwrap();
    c.reattach_device(ctx, DEV_A).unwrap();
    let frames_before = hv.mem().allocated();
    hv.destroy_domain(GUEST, Instant(1)).unwrap();
    answer(&mut hv, DEV_C, Instant(2)); // detaching the ATS device flushed its TLB
    let mut c = client(&mut hv, GUEST);
    assert_eq!(c.noop(), Err(Error::Invalid));
    assert_eq!(c.map_pages(ctx, Gfn(0x60), Dfn(0x60), 1, RW), Err(PartialError { error: Error::Invalid, done: 0 }));
    assert_eq!(c.alloc_context(false), Err(Error::Invalid));
    assert_eq!(client(&mut hv, HWDOM).remote_cmd(GUEST, subop::NOOP, &mut []), Err(Error::Invalid));
    // Devices are back in quarantine: everything faults.
    assert!(dma(&mut hv, DEV_A, 0x50_000, false).is_err());
    assert_eq!(hv.device_context(DEV_A), None);
    assert!(hv.mem().allocated() < frames_before);
    assert_eq!(hv.platform().refs.len(), 0, "all page references dropped");
}

#[test]
fn quarantine_blocks_unowned_devices() {
    let mut hv = ready(AddrWidth::Aw48);
    assert_eq!(dma(&mut hv, DEV_Q, 0x1000, false), Err(FaultReason::Read));
    assert_eq!(dma(&mut hv, DEV_Q, mfn_of(GUEST, 1).addr(), true), Err(FaultReason::Write));
    // Unknown requester: no context entry.
    assert_eq!(dma(&mut hv, PciSbdf::new(0, 0, 9, 0), 0, false), Err(FaultReason::ContextNotPresent));
    assert_eq!(dma(&mut hv, PciSbdf::new(0, 0x80, 0, 0), 0, false), Err(FaultReason::RootNotPresent));
    // Reattach of a device the guest does not own.
    assert_eq!(client(&mut hv, GUEST).reattach_device(CtxNo(0), DEV_Q), Err(Error::NotFound));
    assert_eq!(client(&mut hv, GUEST).reattach_device(CtxNo(0), PciSbdf::new(0, 9, 9, 0)), Err(Error::NotFound));
    assert_eq!(client(&mut hv, GUEST).reattach_device(CtxNo(5), DEV_A), Err(Error::Invalid));
    // Deassign puts an owned device back.
    assert_eq!(dma(&mut hv, DEV_A, mfn_of(GUEST, 1).addr(), true), Ok(mfn_of(GUEST, 1).addr()));
    hv.deassign_device(DEV_A, Instant(0)).unwrap();
    assert_eq!(dma(&mut hv, DEV_A, mfn_of(GUEST, 1).addr(), true), Err(FaultReason::Write));
    assert_eq!(hv.deassign_device(DEV_A, Instant(0)), Err(MgmtError::Invalid));
    // MSI writes are interrupt requests, present in every context, even quarantine.
    assert_eq!(dma(&mut hv, DEV_Q, 0xfee0_1004, true), Ok(0xfee0_1004));
    assert!(dma(&mut hv, DEV_Q, 0xfee0_1004, false).is_err());
    let faults: Vec<_> = std::iter::from_fn(|| hv.next_fault()).collect();
    assert!(faults.len() >= 6);
    let (rec, dev, owner) = faults[0];
    assert_eq!((rec.sid(), dev, owner, rec.is_write()), (Sid::from(DEV_Q).0, Some(DEV_Q), None, false));
    let (rec, _, owner) = faults.iter().find(|f| f.1 == Some(DEV_A)).copied().unwrap();
    assert_eq!((rec.reason(), owner, rec.is_write()), (FaultReason::Write as u8, None, true));
}

#[test]
fn identity_context_maps_gfn_to_mfn_and_is_fixed() {
    let mut hv = ready(AddrWidth::Aw48);
    let mut c = client(&mut hv, GUEST);
    let ctx = c.alloc_context(true).unwrap();
    c.reattach_device(ctx, DEV_A).unwrap();
    assert_eq!(c.map_pages(ctx, Gfn(0x40), Dfn(0x40), 1, RW), Err(PartialError { error: Error::Invalid, done: 0 }));
    assert_eq!(dma(&mut hv, DEV_A, 0x3_123, true), Ok(mfn_of(GUEST, 3).addr() + 0x123));
    assert!(dma(&mut hv, DEV_A, OWN_PAGES << 12, true).is_err());
    let r = hv.replay(GUEST, ctx).unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].dfn, r[0].mfn, r[0].count, r[0].perm), (Dfn(0), mfn_of(GUEST, 0), OWN_PAGES, Perm::RW));
}

#[test]
fn arena_bounds_page_tables() {
    for (aw, extra) in [(AddrWidth::Aw39, 2u64), (AddrWidth::Aw48, 3)] {
        let mut hv = setup(aw);
        let mut c = client(&mut hv, GUEST);
        c.init(4, 2).unwrap(); // 4 table pages in total
        let ctx = c.alloc_context(false).unwrap();
        c.map_pages(ctx, Gfn(1), Dfn(0), 1, RW).unwrap();
        assert_eq!(hv.arena_used(GUEST), Some(1 + extra));
        let far = Dfn(1 << 26); // another third-level slot: needs new tables
        let r = client(&mut hv, GUEST).map_pages(ctx, Gfn(2), far, 1, RW);
        assert_eq!(r, Err(PartialError { error: Error::NoMemory, done: 0 }), "{aw:?}");
        assert_eq!(hv.platform().refs(mfn_of(GUEST, 2)), 0);
        assert!(hv.arena_used(GUEST).unwrap() <= 4);
    }
}

#[test]
fn replay_reports_coalesced_ranges() {
    let mut hv = ready(AddrWidth::Aw39);
    let mut c = client(&mut hv, GUEST);
    let ctx = c.alloc_context(false).unwrap();
    c.map_pages(ctx, Gfn(0x100), Dfn(0x1000), 700, RW).unwrap();
    c.map_pages(ctx, Gfn(0x900), Dfn(0x1000 + 700), 2, MapFlags::READ).unwrap();
    let r = hv.replay(GUEST, ctx).unwrap();
    let got: Vec<_> = r.iter().map(|x| (x.dfn.0, x.mfn, x.count, x.perm)).collect();
    assert_eq!(got, [(0x1000, mfn_of(GUEST, 0x100), 700, Perm::RW), (0x1000 + 700, mfn_of(GUEST, 0x900), 2, Perm::RO)]);
}

#[test]
fn unmap_invalidates_the_iotlb_in_one_batch() {
    let mut hv = ready(AddrWidth::Aw48);
    let mut c = client(&mut hv, GUEST);
    let ctx = c.alloc_context(false).unwrap();
    c.reattach_device(ctx, DEV_A).unwrap();
    c.map_pages(ctx, Gfn(0x20), Dfn(0x100), 8, RW).unwrap();
    for p in 0..8u64 {
        // Fill the IOTLB.
        assert_eq!(dma(&mut hv, DEV_A, (0x100 + p) << 12, true), Ok(mfn_of(GUEST, 0x20 + p).addr()));
    }
    let before = hv.hw_mut().stats;
    client(&mut hv, GUEST).unmap_pages(ctx, Dfn(0x100), 8).unwrap();
    let after = hv.hw_mut().stats;
    assert_eq!(after.iotlb_page - before.iotlb_page, 1, "8 aligned pages: one descriptor with AM=3");
    assert_eq!(after.waits - before.waits, 1);
    for p in 0..8u64 {
        assert_eq!(dma(&mut hv, DEV_A, (0x100 + p) << 12, false), Err(FaultReason::Read), "stale IOTLB entry");
        assert_eq!(hv.platform().refs(mfn_of(GUEST, 0x20 + p)), 0);
    }
}

#[test]
fn reattach_invalidates_context_cache() {
    let mut hv = ready(AddrWidth::Aw48);
    let mut c = client(&mut hv, GUEST);
    let a = c.alloc_context(false).unwrap();
    let b = c.alloc_context(false).unwrap();
    c.map_pages(a, Gfn(1), Dfn(0x10), 1, RW).unwrap();
    c.map_pages(b, Gfn(2), Dfn(0x10), 1, RW).unwrap();
    c.reattach_device(a, DEV_B).unwrap();
    assert_eq!(dma(&mut hv, DEV_B, 0x10_000, false), Ok(mfn_of(GUEST, 1).addr()));
    client(&mut hv, GUEST).reattach_device(b, DEV_B).unwrap();
    // DEV_B is an ATS device: its ATC entry must be gone too.
    assert_eq!(dma(&mut hv, DEV_B, 0x10_000, false), Ok(mfn_of(GUEST, 2).addr()));
    assert!(hv.hw_mut().stats.devtlb >= 1);
    assert_eq!(client(&mut hv, GUEST).reattach_device(b, DEV_B), Ok(()), "same context: no-op");
    let mut r = abi::ReattachDevice { ctx_no: 0, dev: DEV_B.into(), pad0: 0, pasid: 1 }.to_bytes();
    assert_eq!(raw(&mut hv, GUEST, subop::REATTACH_DEVICE, &mut r), -95, "PASID");
}

#[test]
fn delayed_device_tlb_completion_holds_pages() {
    let mut hv = ready(AddrWidth::Aw48);
    let mut c = client(&mut hv, GUEST);
    let ctx = c.alloc_context(false).unwrap();
    c.reattach_device(ctx, DEV_C).unwrap();
    c.map_pages(ctx, Gfn(0x70), Dfn(0x200), 2, RW).unwrap();
    answer(&mut hv, DEV_C, Instant(0)); // the reattach's invalidation
    let page = mfn_of(GUEST, 0x70);
    assert_eq!(dma(&mut hv, DEV_C, 0x200_000, true), Ok(page.addr()), "fills DEV_C's ATC");
    assert_eq!(hv.platform().refs(page), 1);
    client(&mut hv, GUEST).unmap_pages(ctx, Dfn(0x200), 2).unwrap();
    // The device has not answered: the page stays referenced (not reusable),
    // and the stale ATC entry indeed still reaches it.
    assert_eq!(hv.platform().refs(page), 1);
    assert!(hv.held_guest_pages().contains(&page));
    assert_eq!(dma(&mut hv, DEV_C, 0x200_000, true), Ok(page.addr()));
    // Time passes, short of the limit; other work goes on.
    hv.poll(Instant(59_000_000_000));
    assert_eq!(hv.platform().refs(page), 1);
    assert!(!hv.device_broken(DEV_C));
    // The device answers: only now is the page released.
    {
        let (hw, mem) = hv.hw_and_mem();
        hw.complete_device_tlb(mem, Sid::from(DEV_C));
    }
    assert_eq!(hv.platform().refs(page), 1, "released on the next poll, not before the wait is seen");
    hv.poll(Instant(59_000_000_001));
    assert_eq!(hv.platform().refs(page), 0);
    assert!(hv.held_guest_pages().is_empty());
    assert_eq!(dma(&mut hv, DEV_C, 0x200_000, true), Err(FaultReason::Write));
}

#[test]
fn device_tlb_timeout_breaks_device_and_keeps_pages_held() {
    let mut hv = ready(AddrWidth::Aw48);
    let mut c = client(&mut hv, GUEST);
    let ctx = c.alloc_context(false).unwrap();
    let other = c.alloc_context(false).unwrap();
    c.reattach_device(ctx, DEV_C).unwrap();
    c.reattach_device(other, DEV_A).unwrap();
    c.map_pages(ctx, Gfn(0x70), Dfn(0x200), 1, RW).unwrap();
    c.map_pages(other, Gfn(0x80), Dfn(0x300), 1, RW).unwrap();
    answer(&mut hv, DEV_C, Instant(0));
    let page = mfn_of(GUEST, 0x70);
    assert_eq!(dma(&mut hv, DEV_C, 0x200_000, false), Ok(page.addr()));
    {
        let mut g = client(&mut hv, GUEST);
        g.transport_mut().now = Instant(1_000);
        g.unmap_pages(ctx, Dfn(0x200), 1).unwrap();
    }
    // A later unmap elsewhere queues behind the stuck wait.
    client(&mut hv, GUEST).unmap_pages(other, Dfn(0x300), 1).unwrap();
    assert_eq!(hv.platform().refs(mfn_of(GUEST, 0x80)), 1);
    hv.poll(Instant(60_000_000_999));
    assert!(!hv.device_broken(DEV_C), "not yet 60 s");
    hv.poll(Instant(60_000_001_000));
    assert!(hv.device_broken(DEV_C));
    // Its context entry is blocked: even the stale ATC translation is refused.
    assert_eq!(dma(&mut hv, DEV_C, 0x200_000, false), Err(FaultReason::ContextNotPresent));
    // The pages its invalidation covered stay held for good...
    hv.poll(Instant(u64::MAX));
    assert_eq!(hv.platform().refs(page), 1);
    assert!(hv.held_guest_pages().contains(&page));
    // ...while the unrelated unmap completes.
    assert_eq!(hv.platform().refs(mfn_of(GUEST, 0x80)), 0);
    assert_eq!(client(&mut hv, GUEST).reattach_device(CtxNo(0), DEV_C), Err(Error::NoDevice));
    // The context itself still works for its other devices and can be freed.
    assert_eq!(client(&mut hv, GUEST).free_context(ctx, false), Ok(()));
    assert_eq!(hv.platform().refs(page), 1);
}

#[test]
fn freed_context_tables_wait_for_device_tlb() {
    let mut hv = ready(AddrWidth::Aw48);
    let mut c = client(&mut hv, GUEST);
    let ctx = c.alloc_context(false).unwrap();
    c.reattach_device(ctx, DEV_C).unwrap();
    c.map_pages(ctx, Gfn(0x70), Dfn(0x200), 1, RW).unwrap();
    answer(&mut hv, DEV_C, Instant(0));
    let used = hv.arena_used(GUEST).unwrap();
    client(&mut hv, GUEST).free_context(ctx, true).unwrap();
    let held = hv.held_table_pages();
    assert_eq!(held.len() as u64, used);
    assert!(held.iter().all(|m| hv.mem().is_allocated(*m)), "not returned to the allocator");
    assert_eq!(hv.arena_used(GUEST), Some(used), "arena still charged");
    {
        let (hw, mem) = hv.hw_and_mem();
        hw.complete_device_tlb(mem, Sid::from(DEV_C));
    }
    hv.poll(Instant(1));
    assert!(hv.held_table_pages().is_empty());
    assert!(held.iter().all(|m| !hv.mem().is_allocated(*m)));
    assert_eq!(hv.arena_used(GUEST), Some(0));
    assert_eq!(hv.platform().refs(mfn_of(GUEST, 0x70)), 0);
}

#[test]
fn granted_pages_map_into_non_default_contexts() {
    // v7 refused these with -EPERM for non-hardware domains; a driver
    // domain must map the frontend's grants. The platform decides what a
    // gfn names (own page or grant); the core does not second-guess it.
    let mut hv = ready(AddrWidth::Aw48);
    let mut c = client(&mut hv, GUEST);
    let ctx = c.alloc_context(false).unwrap();
    assert_eq!(c.map_pages(ctx, Gfn(0xfff0), Dfn(0x10), 1, RW), Ok(()));
    let _ = Mfn(0);
}

mod hostile {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Any sub-op with any bytes, from any domain: no panic, a valid
        /// errno or success, and the hardware keeps failing closed.
        #[test]
        fn handle_never_panics(
            dom in 0u16..3,
            subop in prop_oneof![0u32..14, any::<u32>()],
            mut bytes in proptest::collection::vec(any::<u8>(), 0..48),
        ) {
            let mut hv = setup(AddrWidth::Aw39);
            let _ = client(&mut hv, GUEST).init(4, 8);
            let _ = client(&mut hv, GUEST).alloc_context(false);
            let r = raw(&mut hv, DomId(dom), subop, &mut bytes);
            prop_assert!(r == 0 || r == -85 || (-99..0).contains(&r));
            prop_assert!(dma(&mut hv, DEV_Q, 0, false).is_err());
        }
    }
}

#[test]
fn invalidation_ring_wraps_around() {
    let mut hv = ready(AddrWidth::Aw48);
    let ctx = client(&mut hv, GUEST).alloc_context(false).unwrap();
    client(&mut hv, GUEST).reattach_device(ctx, DEV_B).unwrap();
    let waits0 = hv.hw_mut().stats.waits;
    // Each unmap queues IOTLB + wait + device-TLB + wait: 4 descriptors,
    // so 300 rounds go around the 256-entry ring several times.
    for i in 0..300u64 {
        let mut c = client(&mut hv, GUEST);
        c.map_pages(ctx, Gfn(i % 50), Dfn(0x40), 1, RW).unwrap();
        assert_eq!(dma(&mut hv, DEV_B, 0x40_000, true), Ok(mfn_of(GUEST, i % 50).addr()));
        client(&mut hv, GUEST).unmap_pages(ctx, Dfn(0x40), 1).unwrap();
        assert!(dma(&mut hv, DEV_B, 0x40_000, true).is_err(), "round {i}");
    }
    assert_eq!(hv.hw_mut().stats.waits - waits0, 600);
    assert!(!hv.hw_mut().queue_error());
    assert!(hv.platform().refs.is_empty());
}

#[test]
fn stalled_device_backpressure_then_recovery() {
    let mut hv = ready(AddrWidth::Aw48);
    let ctx = client(&mut hv, GUEST).alloc_context(false).unwrap();
    client(&mut hv, GUEST).reattach_device(ctx, DEV_C).unwrap();
    // DEV_C never answers. Unmaps keep queueing until the backlog is full.
    let mut busy_at = None;
    for i in 0..5000u64 {
        let mut c = client(&mut hv, GUEST);
        c.map_pages(ctx, Gfn(1), Dfn(0x40), 1, RW).unwrap();
        match c.unmap_pages(ctx, Dfn(0x40), 1) {
            Ok(()) => {}
            Err(PartialError { error: Error::Busy, done: 0 }) => {
                busy_at = Some(i);
                break;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    let busy_at = busy_at.expect("backpressure");
    assert!(busy_at > 1000, "{busy_at}");
    // Every unmapped page reference is still held.
    assert_eq!(hv.platform().refs(mfn_of(GUEST, 1)), busy_at as u32 + 1);
    hv.poll(Instant(61_000_000_000));
    assert!(hv.device_broken(DEV_C));
    // Everything DEV_C's invalidations covered stays held; the mapping
    // still present is the one reference that is not.
    assert_eq!(hv.platform().refs(mfn_of(GUEST, 1)), busy_at as u32 + 1);
    assert_eq!(client(&mut hv, GUEST).unmap_pages(ctx, Dfn(0x40), 1), Ok(()));
    assert_eq!(hv.platform().refs(mfn_of(GUEST, 1)), busy_at as u32, "no device left: released at once");
    assert!(!hv.hw_mut().queue_error());
}

#[test]
fn caching_mode_flushes_after_map() {
    let mut hw = iommu_core::hw::SoftVtd::new(AddrWidth::Aw39);
    hw.set_caching_mode(true);
    let mut hv = iommu_core::Iommu::new(
        iommu_core::Config::default(),
        iommu_core::mem::VecMemory::new(Mfn(0x10_0000), 1024),
        hw,
        FakePlatform::default(),
    )
    .unwrap();
    hv.add_domain(GUEST, true).unwrap();
    hv.add_device(DEV_A, false, &[]).unwrap();
    hv.assign_device(DEV_A, GUEST, Instant(0)).unwrap();
    let mut c = client(&mut hv, GUEST);
    c.init(2, 6).unwrap();
    let ctx = c.alloc_context(false).unwrap();
    c.reattach_device(ctx, DEV_A).unwrap();
    // A miss is remembered under CM...
    assert_eq!(dma(&mut hv, DEV_A, 0x9000, true), Err(FaultReason::Write));
    let psi = hv.hw_mut().stats.iotlb_page;
    client(&mut hv, GUEST).map_pages(ctx, Gfn(3), Dfn(9), 1, RW).unwrap();
    // ...so the map must be followed by a page-selective invalidation.
    assert_eq!(hv.hw_mut().stats.iotlb_page, psi + 1);
    assert_eq!(dma(&mut hv, DEV_A, 0x9000, true), Ok(mfn_of(GUEST, 3).addr()));
}
