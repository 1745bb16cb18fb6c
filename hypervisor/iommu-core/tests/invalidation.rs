//! Invalidation and its completion: IOTLB, context-cache and device-TLB
//! invalidations, resources held until they complete, device-TLB time-outs,
//! ring wrap-around, backpressure, and caching mode.
//! Checked through the client and the software VT-d.

mod common;

use common::*;
use iommu_core::types::{CtxNo, Dfn, Gfn, Instant, Mfn, Sid};
use iommu_core::vtd::{AddrWidth, FaultReason};
use pv_iommu_abi::{self as abi, subop};
use pv_iommu_client::{Error, PartialError};

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
    hv.platform_mut().owners.insert(DEV_A, GUEST);
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
