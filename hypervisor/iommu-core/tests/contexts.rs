//! Context sub-ops: allocation limits, free rules, identity contexts and the
//! page-table arena.
//! Checked through the client and the software VT-d.

mod common;

use common::*;
use iommu_core::types::{CtxNo, Dfn, Gfn};
use iommu_core::vtd::{AddrWidth, FaultReason, Perm};
use pv_iommu_abi::subop;
use pv_iommu_client::{Error, PartialError};

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
