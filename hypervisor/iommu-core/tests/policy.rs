//! The per-caller policy for domU driver domains: device ownership, own and
//! granted frames (with the grant's rights, referenced while mapped),
//! `remote_cmd` for the hardware domain only, per-domain limits, preempted
//! identity contexts, and teardown that returns every counter to zero.
//! Each refusal is checked to change nothing: no mapping, no reference, the
//! same counters.

mod common;

use common::*;
use iommu_core::hw::SoftVtd;
use iommu_core::mem::VecMemory;
use iommu_core::types::{CtxNo, Dfn, DomId, Gfn, Instant, Mfn, PciSbdf};
use iommu_core::vtd::{AddrWidth, Perm};
use iommu_core::{Config, Counters, Iommu, Limits};
use pv_iommu_abi::{self as abi, subop, Alloc};
use pv_iommu_client::client::MapFlags;
use pv_iommu_client::{Error, PartialError};

const A: DomId = DomId(1);
const B: DomId = DomId(2);
const C: DomId = DomId(3);
const DEV_OF_A: PciSbdf = PciSbdf::new(0, 3, 0, 0);
const DEV_OF_B: PciSbdf = PciSbdf::new(0, 4, 0, 0);
const UNASSIGNED: PciSbdf = PciSbdf::new(0, 5, 0, 0);

const LIMITS: Limits = Limits { contexts: 3, table_pages: 16 };

/// Hardware domain, driver domains A and B with a device each, guest C
/// without one, one unassigned device; A and B initialised.
fn two_domains() -> Hv {
    let cfg = Config { domu_limits: LIMITS, ..Config::default() };
    let mut hv = Iommu::new(cfg, VecMemory::new(Mfn(0x10_0000), 8192), SoftVtd::new(AddrWidth::Aw39), {
        FakePlatform::default()
    })
    .unwrap();
    for d in [HWDOM, A, B, C] {
        hv.add_domain(d, true).unwrap();
    }
    for (dev, owner) in [(DEV_OF_A, Some(A)), (DEV_OF_B, Some(B)), (UNASSIGNED, None)] {
        hv.add_device(dev, false, &[]).unwrap();
        if let Some(o) = owner {
            hv.platform_mut().owners.insert(dev, o);
            hv.assign_device(dev, o, Instant(0)).unwrap();
        }
    }
    for d in [A, B] {
        client(&mut hv, d).init(8, 10).unwrap();
    }
    hv
}

fn e(error: Error, done: u32) -> Result<(), PartialError> {
    Err(PartialError { error, done })
}

/// Everything a refused call must leave as it was.
fn snapshot(hv: &Hv, dom: DomId) -> (Counters, Counters, u64, usize, Vec<Vec<iommu_core::pagetable::MappedRange>>) {
    let maps = (0..=8).filter_map(|c| hv.replay(dom, CtxNo(c)).ok()).collect();
    (hv.counters(dom), hv.totals(), hv.platform().total_refs(), hv.mem().allocated(), maps)
}

/// `alloc_context(identity)` issued as Xen would: re-issued on -ERESTART.
/// Returns the result and how many issues it took.
fn alloc_identity(hv: &mut Hv, dom: DomId) -> (Result<CtxNo, i64>, u32) {
    let mut arg = Alloc { alloc_flags: abi::alloc_flags::IDENTITY, ..Default::default() }.to_bytes();
    for issues in 1..=1000 {
        match raw(hv, dom, subop::ALLOC_CONTEXT, &mut arg) {
            -85 => continue,
            0 => return (Ok(CtxNo(Alloc::from_bytes(&arg).ctx_no)), issues),
            r => return (Err(r), issues),
        }
    }
    (Err(-85), 1000)
}

// ------------------------------------------------------------- devices

#[test]
fn contexts_only_for_a_domain_that_owns_a_device() {
    let mut hv = two_domains();
    client(&mut hv, C).init(8, 10).unwrap();
    let before = snapshot(&hv, C);
    assert_eq!(client(&mut hv, C).alloc_context(false), Err(Error::NotPermitted), "C owns no device");
    assert_eq!(alloc_identity(&mut hv, C).0, Err(-1));
    assert_eq!(snapshot(&hv, C), before, "nothing changed");
    assert_eq!(client(&mut hv, A).alloc_context(false), Ok(CtxNo(1)), "A owns DEV_OF_A");
    // The platform no longer agrees (Xen took the device away): refused.
    hv.platform_mut().owners.remove(&DEV_OF_A);
    assert_eq!(client(&mut hv, A).alloc_context(false), Err(Error::NotPermitted));
}

#[test]
fn reattach_only_devices_assigned_to_the_caller() {
    let mut hv = two_domains();
    let ca = client(&mut hv, A).alloc_context(false).unwrap();
    let before = snapshot(&hv, A);
    for dev in [DEV_OF_B, UNASSIGNED, PciSbdf::new(0, 0x44, 0, 0)] {
        assert_eq!(client(&mut hv, A).reattach_device(ca, dev), Err(Error::NotFound), "{dev:?}");
    }
    assert_eq!(snapshot(&hv, A), before);
    assert_eq!(hv.device_context(DEV_OF_B), Some((B, CtxNo(0))), "B's device untouched");
    // The core's record says A, the platform says otherwise: refused.
    hv.platform_mut().owners.insert(DEV_OF_A, B);
    assert_eq!(client(&mut hv, A).reattach_device(ca, DEV_OF_A), Err(Error::NotFound));
    assert_eq!(hv.device_context(DEV_OF_A), Some((A, CtxNo(0))));
    hv.platform_mut().owners.insert(DEV_OF_A, A);
    assert_eq!(client(&mut hv, A).reattach_device(ca, DEV_OF_A), Ok(()));
    assert_eq!(hv.device_context(DEV_OF_A), Some((A, ca)));
}

// ------------------------------------------------------------- frames

#[test]
fn own_frames_map_with_the_asked_rights() {
    let mut hv = two_domains();
    let ca = client(&mut hv, A).alloc_context(false).unwrap();
    client(&mut hv, A).map_pages(ca, Gfn(0x10), Dfn(0x100), 2, MapFlags::READ_WRITE).unwrap();
    client(&mut hv, A).map_pages(ca, Gfn(0x12), Dfn(0x102), 1, MapFlags::READ).unwrap();
    let r = hv.replay(A, ca).unwrap();
    assert_eq!((r[0].mfn, r[0].count, r[0].perm), (mfn_of(A, 0x10), 2, Perm::RW));
    assert_eq!((r[1].mfn, r[1].perm), (mfn_of(A, 0x12), Perm::RO));
    assert_eq!(hv.platform().wrefs.get(&mfn_of(A, 0x10)), Some(&1), "writable reference for a writable mapping");
    assert_eq!(hv.platform().wrefs.get(&mfn_of(A, 0x12)), None);
    assert_eq!(hv.counters(A).held_refs, 3);
}

#[test]
fn a_frame_neither_owned_nor_granted_is_refused_and_changes_nothing() {
    let mut hv = two_domains();
    // The core's rule alone: the platform would reference anything.
    hv.platform_mut().no_recheck = true;
    let ca = client(&mut hv, A).alloc_context(false).unwrap();
    client(&mut hv, A).map_pages(ca, Gfn(1), Dfn(1), 1, MapFlags::READ_WRITE).unwrap();
    let before = snapshot(&hv, A);
    // B's frame by machine number, with no grant; a frame of nobody; a run
    // that starts on A's own frames and ends on B's.
    let b_frame = mfn_of(B, 5).0;
    assert_eq!(client(&mut hv, A).map_pages(ca, Gfn(b_frame), Dfn(0x10), 1, MapFlags::READ), e(Error::NotPermitted, 0));
    assert_eq!(
        client(&mut hv, A).map_pages(ca, Gfn(GUEST_PAGES), Dfn(0x10), 1, MapFlags::READ),
        e(Error::NotPermitted, 0)
    );
    assert_eq!(
        client(&mut hv, A).map_pages(ca, Gfn(GUEST_PAGES - 2), Dfn(0x20), 4, MapFlags::READ),
        e(Error::NotPermitted, 0)
    );
    assert_eq!(snapshot(&hv, A), before, "no mapping, no reference, same counters");
    assert_eq!(hv.platform().refs(Mfn(b_frame)), 0);
}

#[test]
fn granted_frames_map_with_the_grant_rights_and_stay_referenced() {
    let mut hv = two_domains();
    hv.platform_mut().no_recheck = true;
    let ca = client(&mut hv, A).alloc_context(false).unwrap();
    let rw = hv.platform_mut().grant(C, 7, A, true);
    let ro = hv.platform_mut().grant(C, 8, A, false);
    let to_b = hv.platform_mut().grant(C, 9, B, true);
    // A writable grant maps read-write, with a writable reference.
    client(&mut hv, A).map_pages(ca, Gfn(rw), Dfn(0x40), 1, MapFlags::READ_WRITE).unwrap();
    assert_eq!(hv.platform().wrefs.get(&Mfn(rw)), Some(&1));
    // A read-only grant: a writable mapping is refused and changes nothing ...
    let before = snapshot(&hv, A);
    assert_eq!(
        client(&mut hv, A).map_pages(ca, Gfn(ro), Dfn(0x41), 1, MapFlags::READ_WRITE),
        e(Error::AccessDenied, 0)
    );
    assert_eq!(client(&mut hv, A).map_pages(ca, Gfn(ro), Dfn(0x41), 1, MapFlags::WRITE), e(Error::AccessDenied, 0));
    assert_eq!(snapshot(&hv, A), before);
    // ... a read-only one is fine, with a plain reference.
    client(&mut hv, A).map_pages(ca, Gfn(ro), Dfn(0x41), 1, MapFlags::READ).unwrap();
    assert_eq!((hv.platform().refs(Mfn(ro)), hv.platform().wrefs.get(&Mfn(ro))), (1, None));
    // A grant to B is not A's.
    assert_eq!(client(&mut hv, A).map_pages(ca, Gfn(to_b), Dfn(0x42), 1, MapFlags::READ), e(Error::NotPermitted, 0));
    assert_eq!(hv.platform().refs(Mfn(to_b)), 0);
    // The granter ends the grant: the mapping keeps its reference (the frame
    // cannot be freed under the device) until A unmaps it.
    hv.platform_mut().grants.clear();
    assert_eq!(hv.platform().refs(Mfn(rw)), 1);
    client(&mut hv, A).unmap_pages(ca, Dfn(0x40), 2).unwrap();
    hv.poll(Instant(1));
    assert_eq!(hv.platform().total_refs(), 0, "dropped at unmap");
    assert_eq!(hv.platform().wrefs.len(), 0);
    assert_eq!(hv.counters(A).held_refs, 0);
    // Once ended, the grant cannot be mapped again.
    assert_eq!(client(&mut hv, A).map_pages(ca, Gfn(rw), Dfn(0x40), 1, MapFlags::READ), e(Error::NotPermitted, 0));
}

#[test]
fn a_grant_that_ends_between_check_and_reference_is_refused() {
    let mut hv = two_domains();
    let ca = client(&mut hv, A).alloc_context(false).unwrap();
    let g = hv.platform_mut().grant(C, 7, A, true);
    hv.platform_mut().grant(C, 8, A, true);
    hv.platform_mut().grant(C, 9, A, true);
    // The second frame's grant ends after the check: the platform refuses its
    // reference, the first one's is dropped again, nothing is mapped.
    hv.platform_mut().ends_before_get.insert(Mfn(g + 1));
    let before = snapshot(&hv, A);
    assert_eq!(client(&mut hv, A).map_pages(ca, Gfn(g), Dfn(0x40), 3, MapFlags::READ), e(Error::NotPermitted, 0));
    assert_eq!(snapshot(&hv, A), before);
}

#[test]
fn a_domain_cannot_name_its_own_frame_as_a_grant() {
    let mut hv = two_domains();
    let ca = client(&mut hv, A).alloc_context(false).unwrap();
    // A platform bug or a self-grant: granter == caller is not a grant.
    let m = mfn_of(A, GUEST_PAGES - 1).0 + 1;
    hv.platform_mut().grants.insert((A, m), (A, true));
    assert_eq!(client(&mut hv, A).map_pages(ca, Gfn(m), Dfn(0x40), 1, MapFlags::READ), e(Error::NotPermitted, 0));
}

// ------------------------------------------------------------- remote_cmd

#[test]
fn remote_cmd_stays_with_the_hardware_domain() {
    let mut hv = two_domains();
    let before = snapshot(&hv, B);
    let mut inner = Alloc::default().to_bytes();
    assert_eq!(client(&mut hv, A).remote_cmd(B, subop::ALLOC_CONTEXT, &mut inner), Err(Error::NotPermitted));
    assert_eq!(client(&mut hv, A).remote_cmd(A, subop::ALLOC_CONTEXT, &mut inner), Err(Error::NotPermitted));
    assert_eq!(snapshot(&hv, B), before);
    // The hardware domain acts for B, under B's rules: B's frames, B's devices.
    assert_eq!(client(&mut hv, HWDOM).remote_cmd(B, subop::ALLOC_CONTEXT, &mut inner), Ok(0));
    let cb = Alloc::from_bytes(&inner).ctx_no;
    let mut m = abi::MapPages::new(CtxNo(cb), Gfn(mfn_of(A, 1).0), Dfn(0x10), 1, 4096, 1).to_bytes();
    assert_eq!(client(&mut hv, HWDOM).remote_cmd(B, subop::MAP_PAGES, &mut m), Err(Error::NotPermitted));
}

// ------------------------------------------------------------- limits

#[test]
fn init_is_clamped_to_the_limits() {
    let mut hv = two_domains();
    client(&mut hv, C).init(128, 12).unwrap();
    assert_eq!(client(&mut hv, C).query_capabilities().unwrap().max_ctx_no, LIMITS.contexts as u16);
    // The hardware domain's limits are its own.
    client(&mut hv, HWDOM).init(128, 12).unwrap();
    assert_eq!(client(&mut hv, HWDOM).query_capabilities().unwrap().max_ctx_no, 128);
}

#[test]
fn context_limit_keeps_domain_ids_for_others() {
    let mut hv = two_domains();
    for n in 1..=LIMITS.contexts as u16 {
        assert_eq!(client(&mut hv, A).alloc_context(false), Ok(CtxNo(n)));
    }
    let dids = hv.domain_ids_in_use();
    let before = snapshot(&hv, A);
    assert_eq!(client(&mut hv, A).alloc_context(false), Err(Error::NoSpace));
    assert_eq!(alloc_identity(&mut hv, A).0, Err(-28));
    assert_eq!(snapshot(&hv, A), before);
    assert_eq!(hv.domain_ids_in_use(), dids);
    // A lower limit set by the toolstack bites as well (B: one context).
    hv.set_limits(B, Limits { contexts: 1, ..LIMITS }).unwrap();
    assert_eq!(client(&mut hv, B).alloc_context(false), Ok(CtxNo(1)));
    assert_eq!(client(&mut hv, B).alloc_context(false), Err(Error::NoSpace));
    // Freeing one makes room again.
    client(&mut hv, A).free_context(CtxNo(2), false).unwrap();
    assert_eq!(client(&mut hv, A).alloc_context(false), Ok(CtxNo(2)));
}

#[test]
fn table_page_limit_refuses_a_map_before_it_changes_anything() {
    let mut hv = two_domains();
    let ca = client(&mut hv, A).alloc_context(false).unwrap();
    assert_eq!(hv.counters(A).table_pages, 3 + 1, "context 0's path to A's 16 frames + ctx 1's root");
    // A 39-bit table: each leaf table covers 512 dfns, each level-2 table 2^18.
    // Spread maps so each needs its own two tables: 1 + 2*7 = 15 of 16 pages.
    for i in 0..7u64 {
        client(&mut hv, A).map_pages(ca, Gfn(i), Dfn(i << 18), 1, MapFlags::READ).unwrap();
    }
    assert_eq!(hv.arena_used(A), Some(15));
    let before = snapshot(&hv, A);
    // Two more pages, 511 apart in one new region, need 2 tables: only 1 left.
    assert_eq!(client(&mut hv, A).map_pages(ca, Gfn(0x20), Dfn(7 << 18), 1, MapFlags::READ), e(Error::NoMemory, 0));
    assert_eq!(snapshot(&hv, A), before, "refused before any reference or table page");
    // A map into an existing leaf table needs none: fine.
    assert_eq!(client(&mut hv, A).map_pages(ca, Gfn(0x20), Dfn(1), 4, MapFlags::READ), Ok(()));
    // B's room is its own.
    let cb = client(&mut hv, B).alloc_context(false).unwrap();
    assert_eq!(client(&mut hv, B).map_pages(cb, Gfn(0), Dfn(7 << 18), 1, MapFlags::READ), Ok(()));
}

// ------------------------------------------------------------- preemption

#[test]
fn identity_context_is_built_in_preempted_steps() {
    let cfg = Config { domu_limits: Limits { contexts: 4, table_pages: 64 }, preempt_pages: 100, ..Config::default() };
    let mut hv = Iommu::new(cfg, VecMemory::new(Mfn(0x10_0000), 8192), SoftVtd::new(AddrWidth::Aw39), {
        let mut p = FakePlatform::default();
        p.own_pages.insert(A, 1000);
        p.owners.insert(DEV_OF_A, A);
        p
    })
    .unwrap();
    hv.add_domain(A, true).unwrap();
    hv.add_device(DEV_OF_A, false, &[]).unwrap();
    hv.assign_device(DEV_OF_A, A, Instant(0)).unwrap();
    client(&mut hv, A).init(4, 6).unwrap();
    let mut arg = Alloc { alloc_flags: abi::alloc_flags::IDENTITY, ..Default::default() }.to_bytes();
    assert_eq!(raw(&mut hv, A, subop::ALLOC_CONTEXT, &mut arg), -85, "first step, then a continuation");
    assert_eq!(hv.counters(A).contexts, 2, "the context being built is counted");
    // While it is built, other allocations of A wait.
    assert_eq!(client(&mut hv, A).alloc_context(false), Err(Error::Busy));
    let mut issues = 1;
    loop {
        issues += 1;
        match raw(&mut hv, A, subop::ALLOC_CONTEXT, &mut arg) {
            -85 => continue,
            0 => break,
            r => panic!("identity build failed: {r}"),
        }
    }
    assert_eq!(issues, 11, "1000 pages, 100 per issue, and one that finds the end");
    let ctx = CtxNo(Alloc::from_bytes(&arg).ctx_no);
    assert_eq!(ctx, CtxNo(1));
    let r = hv.replay(A, ctx).unwrap();
    assert_eq!((r.len(), r[0].dfn, r[0].count), (1, Dfn(0), 1000), "bus address = gfn for all 1000 pages");
    assert_eq!(client(&mut hv, A).alloc_context(false), Ok(CtxNo(2)), "free again");
}

#[test]
fn identity_context_over_the_table_limit_leaves_nothing() {
    let cfg = Config { domu_limits: Limits { contexts: 4, table_pages: 3 }, preempt_pages: 64, ..Config::default() };
    let mut hv = Iommu::new(cfg, VecMemory::new(Mfn(0x10_0000), 8192), SoftVtd::new(AddrWidth::Aw39), {
        let mut p = FakePlatform::default();
        p.own_pages.insert(A, 600); // needs a second leaf table: 1 + 1 + 2 = 4 pages
        p.owners.insert(DEV_OF_A, A);
        p
    })
    .unwrap();
    hv.add_domain(A, true).unwrap();
    hv.add_device(DEV_OF_A, false, &[]).unwrap();
    hv.assign_device(DEV_OF_A, A, Instant(0)).unwrap();
    client(&mut hv, A).init(4, 6).unwrap();
    let before = snapshot(&hv, A);
    let dids = hv.domain_ids_in_use();
    let (r, issues) = alloc_identity(&mut hv, A);
    assert_eq!(r, Err(-12));
    assert!(issues > 1, "failed in a later step");
    assert_eq!(snapshot(&hv, A), before, "the partial context is gone");
    assert_eq!(hv.domain_ids_in_use(), dids);
    assert_eq!(hv.arena_used(A), Some(0));
}

#[test]
fn teardown_during_an_identity_build_releases_it() {
    let cfg = Config { preempt_pages: 8, ..Config::default() };
    let mut hv = Iommu::new(cfg, VecMemory::new(Mfn(0x10_0000), 8192), SoftVtd::new(AddrWidth::Aw39), {
        let mut p = FakePlatform::default();
        p.owners.insert(DEV_OF_A, A);
        p
    })
    .unwrap();
    let base = hv.mem().allocated();
    hv.add_domain(A, true).unwrap();
    hv.add_device(DEV_OF_A, false, &[]).unwrap();
    hv.assign_device(DEV_OF_A, A, Instant(0)).unwrap();
    client(&mut hv, A).init(4, 6).unwrap();
    let mut arg = Alloc { alloc_flags: abi::alloc_flags::IDENTITY, ..Default::default() }.to_bytes();
    assert_eq!(raw(&mut hv, A, subop::ALLOC_CONTEXT, &mut arg), -85);
    hv.destroy_domain(A, Instant(1)).unwrap();
    hv.poll(Instant(2));
    assert_eq!(hv.counters(A), Counters::default());
    assert_eq!(hv.domain_ids_in_use(), 0);
    assert_eq!(hv.mem().allocated(), base + 1, "only the device's bus context table is left");
}

// ------------------------------------------------------------- teardown

#[test]
fn teardown_releases_everything_and_leaves_the_other_domain_alone() {
    let mut hv = two_domains();
    let base_mem = hv.mem().allocated();
    let g = hv.platform_mut().grant(C, 3, A, true);
    let mut a = client(&mut hv, A);
    let c1 = a.alloc_context(false).unwrap();
    let c2 = a.alloc_context(true).unwrap();
    a.map_pages(c1, Gfn(0), Dfn(0x100), 8, MapFlags::READ_WRITE).unwrap();
    a.map_pages(c1, Gfn(g), Dfn(0x200), 1, MapFlags::READ_WRITE).unwrap();
    a.reattach_device(c1, DEV_OF_A).unwrap();
    let cb = client(&mut hv, B).alloc_context(false).unwrap();
    client(&mut hv, B).map_pages(cb, Gfn(4), Dfn(0x10), 2, MapFlags::READ).unwrap();
    let b_before = snapshot(&hv, B);
    let ca = hv.counters(A);
    assert_eq!((ca.contexts, ca.domain_ids, ca.held_refs), (3, 3, 9));
    let mut dump = String::new();
    hv.dump(&mut dump).unwrap();
    assert!(dump.contains("d1: limits ctx=3 pages=16; contexts=3 dids=3"), "{dump}");
    assert!(dump.contains(&format!("ctx{} Identity", c2.0)), "{dump}");
    hv.destroy_domain(A, Instant(1)).unwrap();
    hv.poll(Instant(2));
    assert_eq!(hv.counters(A), Counters::default(), "every context, id, table page and reference of A released");
    assert_eq!(hv.device_context(DEV_OF_A), None, "its device is back in quarantine");
    assert!(dma(&mut hv, DEV_OF_A, 0x100_000, false).is_err());
    assert_eq!(hv.platform().refs(Mfn(g)), 0, "the grant's page is no longer held");
    assert_eq!(snapshot(&hv, B).0, b_before.0, "B keeps what it had");
    assert_eq!(hv.platform().total_refs(), 2, "only B's two references");
    assert_eq!(hv.totals().held_refs, 2);
    assert!(hv.mem().allocated() < base_mem + 3);
}

#[test]
fn ten_create_destroy_cycles_leak_nothing() {
    let mut hv = two_domains();
    let mem0 = hv.mem().allocated();
    let dids0 = hv.domain_ids_in_use();
    let g = hv.platform_mut().grant(C, 3, A, false);
    for cycle in 0..10u64 {
        let now = Instant(10 * cycle + 1);
        hv.destroy_domain(A, now).unwrap();
        hv.poll(now);
        assert_eq!(hv.counters(A), Counters::default(), "cycle {cycle}");
        hv.add_domain(A, true).unwrap();
        hv.assign_device(DEV_OF_A, A, now).unwrap();
        let mut a = client(&mut hv, A);
        a.init(8, 10).unwrap();
        let c = a.alloc_context(false).unwrap();
        a.alloc_context(true).unwrap();
        a.map_pages(c, Gfn(0), Dfn(cycle << 9), 16, MapFlags::READ_WRITE).unwrap();
        a.map_pages(c, Gfn(g), Dfn(0x7_0000), 1, MapFlags::READ).unwrap();
        a.reattach_device(c, DEV_OF_A).unwrap();
    }
    hv.destroy_domain(A, Instant(1000)).unwrap();
    hv.poll(Instant(1000));
    hv.add_domain(A, true).unwrap();
    hv.assign_device(DEV_OF_A, A, Instant(1000)).unwrap();
    client(&mut hv, A).init(8, 10).unwrap();
    assert_eq!(hv.mem().allocated(), mem0, "no table page leaked");
    assert_eq!(hv.domain_ids_in_use(), dids0, "no domain id leaked");
    assert_eq!(hv.platform().total_refs(), 0, "no page reference leaked");
    assert_eq!(hv.totals().held_refs, 0);
}

#[test]
fn freeing_a_large_context_releases_within_a_budget_per_call() {
    let cfg =
        Config { domu_limits: Limits { contexts: 4, table_pages: 64 }, release_budget: 1000, ..Config::default() };
    let mut hv = Iommu::new(cfg, VecMemory::new(Mfn(0x10_0000), 8192), SoftVtd::new(AddrWidth::Aw39), {
        let mut p = FakePlatform::default();
        p.owners.insert(DEV_OF_A, A);
        p
    })
    .unwrap();
    hv.add_domain(A, true).unwrap();
    hv.add_device(DEV_OF_A, false, &[]).unwrap();
    hv.assign_device(DEV_OF_A, A, Instant(0)).unwrap();
    client(&mut hv, A).init(4, 6).unwrap();
    let ctx = client(&mut hv, A).alloc_context(false).unwrap();
    client(&mut hv, A).map_pages(ctx, Gfn(0), Dfn(0), 3000, MapFlags::READ_WRITE).unwrap();
    assert_eq!(hv.platform().total_refs(), 3000);
    let tables = hv.arena_used(A).unwrap();
    client(&mut hv, A).free_context(ctx, false).unwrap();
    // That call released at most its budget; each later call (poll) the next share.
    assert_eq!(hv.platform().total_refs(), 2000);
    assert_eq!(hv.arena_used(A), Some(tables), "the arena stays charged until its pages are back");
    assert!(hv.releases_pending());
    hv.poll(Instant(1));
    assert_eq!(hv.platform().total_refs(), 1000);
    hv.poll(Instant(2));
    assert_eq!(hv.platform().total_refs(), 0);
    hv.poll(Instant(3));
    assert!(!hv.releases_pending());
    assert_eq!(hv.arena_used(A), Some(0));
    assert_eq!(hv.counters(A).table_pages, hv.counters(A).table_pages.min(3), "context 0 only");
    assert_eq!(hv.totals().held_refs, 0);
}
