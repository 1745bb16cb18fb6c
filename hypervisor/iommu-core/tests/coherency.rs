//! Units without page-walk coherency (ECAP.C = 0): the software VT-d then
//! reads root, context and paging entries only as last written back by
//! `Hardware::flush_cache`. The core must flush every entry it writes and
//! every new table page before publishing them; with flushes dropped (the
//! model's hook), new mappings stay invisible and removed ones stay live.

mod common;

use common::*;
use iommu_core::types::{CtxNo, Dfn, Gfn, Instant};
use iommu_core::vtd::{AddrWidth, FaultReason};
use pv_iommu_client::client::MapFlags;

const PS: u64 = 4096;

/// A guest context with DEV_A attached, on a unit with the given coherency.
fn attached(coherent: bool) -> (Hv, CtxNo) {
    let mut hv = setup_unit(AddrWidth::Aw39, coherent);
    let mut c = client(&mut hv, GUEST);
    c.init(8, 10).unwrap();
    let ctx = c.alloc_context(false).unwrap();
    c.reattach_device(ctx, DEV_A).unwrap();
    (hv, ctx)
}

#[test]
fn non_coherent_unit_maps_unmaps_and_reattaches() {
    let mut hv = setup_unit(AddrWidth::Aw39, false);
    // Default context (bus address = MFN), set up by add_domain/assign.
    let own = mfn_of(GUEST, 3).addr();
    assert_eq!(dma(&mut hv, DEV_A, own + 8, true), Ok(own + 8));
    // A quarantined device reaches nothing.
    assert!(dma(&mut hv, DEV_Q, own, false).is_err());

    let mut c = client(&mut hv, GUEST);
    c.init(8, 10).unwrap();
    let ctx1 = c.alloc_context(false).unwrap();
    c.map_pages(ctx1, Gfn(0x20), Dfn(0x100), 4, MapFlags::READ_WRITE).unwrap();
    c.reattach_device(ctx1, DEV_A).unwrap();
    let before = hv.hw_mut().flushed_lines();
    for p in 0..4 {
        assert_eq!(dma(&mut hv, DEV_A, (0x100 + p) * PS + 0x10, true), Ok(mfn_of(GUEST, 0x20 + p).addr() + 0x10));
    }
    assert_eq!(dma(&mut hv, DEV_A, own, false), Err(FaultReason::Read), "the default context is gone for the device");

    // Unmap two pages: they fault, the others still translate.
    client(&mut hv, GUEST).unmap_pages(ctx1, Dfn(0x101), 2).unwrap();
    assert!(hv.hw_mut().flushed_lines() > before, "the unmap was written back");
    assert_eq!(dma(&mut hv, DEV_A, 0x101 * PS, true), Err(FaultReason::Write));
    assert_eq!(dma(&mut hv, DEV_A, 0x102 * PS, false), Err(FaultReason::Read));
    assert!(dma(&mut hv, DEV_A, 0x103 * PS, false).is_ok());

    // A second context far away (new intermediate tables), then reattach.
    let mut c = client(&mut hv, GUEST);
    let ctx2 = c.alloc_context(false).unwrap();
    c.map_pages(ctx2, Gfn(0x30), Dfn(0x4_0000), 1, MapFlags::READ).unwrap();
    c.reattach_device(ctx2, DEV_A).unwrap();
    assert_eq!(dma(&mut hv, DEV_A, 0x4_0000 * PS, false), Ok(mfn_of(GUEST, 0x30).addr()));
    assert_eq!(dma(&mut hv, DEV_A, 0x4_0000 * PS, true), Err(FaultReason::Write));
    assert!(dma(&mut hv, DEV_A, 0x100 * PS, false).is_err(), "ctx1 left");

    // Free ctx1 (tables released after invalidation), reuse its frames.
    client(&mut hv, GUEST).free_context(ctx1, false).unwrap();
    hv.poll(Instant(1));
    let mut c = client(&mut hv, GUEST);
    let ctx3 = c.alloc_context(false).unwrap();
    c.map_pages(ctx3, Gfn(0x40), Dfn(0x200), 1, MapFlags::WRITE).unwrap();
    c.reattach_device(ctx3, DEV_A).unwrap();
    assert_eq!(dma(&mut hv, DEV_A, 0x200 * PS, true), Ok(mfn_of(GUEST, 0x40).addr()));
    assert!(dma(&mut hv, DEV_A, 0x100 * PS, false).is_err());
    assert!(dma(&mut hv, DEV_A, 0x4_0000 * PS, false).is_err());
}

#[test]
fn coherent_unit_gets_no_flushes() {
    let (mut hv, ctx) = attached(true);
    client(&mut hv, GUEST).map_pages(ctx, Gfn(1), Dfn(0x10), 3, MapFlags::READ_WRITE).unwrap();
    client(&mut hv, GUEST).unmap_pages(ctx, Dfn(0x10), 1).unwrap();
    assert!(dma(&mut hv, DEV_A, 0x11 * PS, true).is_ok());
    assert_eq!(hv.hw_mut().flushed_lines(), 0, "ECAP.C = 1: nothing written back");
}

#[test]
fn skipped_flush_hides_a_new_mapping() {
    let (mut hv, ctx) = attached(false);
    hv.hw_mut().lose_flushes(true);
    client(&mut hv, GUEST).map_pages(ctx, Gfn(5), Dfn(0x300), 1, MapFlags::READ_WRITE).unwrap();
    // In memory the page is mapped; the unit walks into lines it never got.
    assert!(hv.replay(GUEST, ctx).unwrap().iter().any(|r| r.dfn == Dfn(0x300)));
    let r = dma(&mut hv, DEV_A, 0x300 * PS, false);
    assert!(
        matches!(r, Err(FaultReason::PagingAccess) | Err(FaultReason::Read)),
        "unflushed mapping must not translate: {r:?}"
    );
    // Flushes back: a neighbour in the same (never written back) leaf
    // table is still unreachable, since the entry linking that table never
    // reached the unit; a page under fresh tables works.
    hv.hw_mut().lose_flushes(false);
    let mut c = client(&mut hv, GUEST);
    c.map_pages(ctx, Gfn(6), Dfn(0x301), 1, MapFlags::READ_WRITE).unwrap();
    c.map_pages(ctx, Gfn(6), Dfn(0x4_0000), 1, MapFlags::READ_WRITE).unwrap();
    assert!(dma(&mut hv, DEV_A, 0x301 * PS, false).is_err());
    assert_eq!(dma(&mut hv, DEV_A, 0x4_0000 * PS, false), Ok(mfn_of(GUEST, 6).addr()));
}

#[test]
fn skipped_flush_leaves_an_unmapped_page_reachable() {
    let (mut hv, ctx) = attached(false);
    client(&mut hv, GUEST).map_pages(ctx, Gfn(7), Dfn(0x400), 2, MapFlags::READ_WRITE).unwrap();
    assert!(dma(&mut hv, DEV_A, 0x400 * PS, true).is_ok());
    hv.hw_mut().lose_flushes(true);
    client(&mut hv, GUEST).unmap_pages(ctx, Dfn(0x400), 1).unwrap();
    // The IOTLB was invalidated, but the unit re-walks a stale entry: the
    // page the guest unmapped is still writable by the device.
    assert_eq!(
        dma(&mut hv, DEV_A, 0x400 * PS, true),
        Ok(mfn_of(GUEST, 7).addr()),
        "model must expose the missing flush"
    );
    hv.hw_mut().lose_flushes(false);
    client(&mut hv, GUEST).unmap_pages(ctx, Dfn(0x401), 1).unwrap();
    assert_eq!(dma(&mut hv, DEV_A, 0x401 * PS, true), Err(FaultReason::Write));
}

#[test]
fn skipped_flush_on_reattach_keeps_the_old_context() {
    let (mut hv, ctx1) = attached(false);
    let mut c = client(&mut hv, GUEST);
    c.map_pages(ctx1, Gfn(8), Dfn(0x500), 1, MapFlags::READ).unwrap();
    let ctx2 = c.alloc_context(false).unwrap();
    hv.hw_mut().lose_flushes(true);
    client(&mut hv, GUEST).reattach_device(ctx2, DEV_A).unwrap();
    // The context cache was invalidated, yet the unit reads the old entry.
    assert_eq!(dma(&mut hv, DEV_A, 0x500 * PS, false), Ok(mfn_of(GUEST, 8).addr()));
    hv.hw_mut().lose_flushes(false);
    client(&mut hv, GUEST).reattach_device(ctx1, DEV_A).unwrap();
    client(&mut hv, GUEST).reattach_device(ctx2, DEV_A).unwrap();
    assert_eq!(dma(&mut hv, DEV_A, 0x500 * PS, false), Err(FaultReason::Read));
}
