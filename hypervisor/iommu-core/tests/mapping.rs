//! Map and unmap: argument and context checks, reserved ranges (MSI window,
//! RMRRs), partial progress, preemption, replay and granted pages.
//! Checked through the client and the software VT-d.

mod common;

use common::*;
use iommu_core::iommu::Rmrr;
use iommu_core::types::{CtxNo, Dfn, Gfn, Instant, Mfn, PciSbdf};
use iommu_core::vtd::{AddrWidth, Perm};
use iommu_core::{Error as HvError, Outcome};
use pv_iommu_abi::{subop, MapPages, UnmapPages};
use pv_iommu_client::client::MapFlags;
use pv_iommu_client::{Error, PartialError};

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
    assert_eq!(c.map_pages(ctx, Gfn(GUEST_PAGES), Dfn(1), 1, RW), e(Error::NotPermitted, 0), "not a page of the guest");
}

#[test]
fn map_over_mapping_is_addr_in_use_and_changes_nothing() {
    let mut hv = ready(AddrWidth::Aw48);
    let mut c = client(&mut hv, GUEST);
    let ctx = c.alloc_context(false).unwrap();
    c.map_pages(ctx, Gfn(0x100), Dfn(0x1005), 1, RW).unwrap();
    assert_eq!(
        c.map_pages(ctx, Gfn(0x200), Dfn(0x1000), 10, RW),
        Err(PartialError { error: Error::AddressInUse, done: 0 })
    );
    // A call's chunk is all or nothing: none of the ten is mapped; the old mapping is untouched.
    c.reattach_device(ctx, DEV_A).unwrap();
    assert!(dma(&mut hv, DEV_A, 0x0100_4000, false).is_err());
    assert_eq!(dma(&mut hv, DEV_A, 0x0100_5000, false), Ok(mfn_of(GUEST, 0x100).addr()));
    for g in 0x200..0x20a {
        assert_eq!(hv.platform().refs(mfn_of(GUEST, g)), 0, "no reference taken for a refused call");
    }
}

#[test]
fn reserved_range_checked_on_every_page() {
    let mut hv = ready(AddrWidth::Aw48);
    let mut c = client(&mut hv, GUEST);
    let ctx = c.alloc_context(false).unwrap();
    // Starts below the MSI window and runs into it: the defect checked only dfn[0].
    assert_eq!(
        c.map_pages(ctx, Gfn(0x10), Dfn(0xfee00 - 3), 8, RW),
        Err(PartialError { error: Error::AddressNotAvailable, done: 0 })
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
    hv.platform_mut().owners.insert(dev, GUEST);
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
