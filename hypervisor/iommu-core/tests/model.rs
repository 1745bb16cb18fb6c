//! Property test: random alloc/map/unmap/reattach/free sequences against a
//! simple model. After every step, return codes must match the model, page
//! references must equal the model's mapping count, and every device's DMA
//! through the software VT-d must reach exactly what the model maps (with
//! the right rights) and fault everywhere else.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use iommu_core::types::{CtxNo, Dfn, Gfn, Instant, Mfn, PciSbdf, Sid};
use iommu_core::vtd::{AddrWidth, Perm};
use proptest::prelude::*;
use pv_iommu_client::client::MapFlags;
use pv_iommu_client::{Error, PartialError};

const DEVS: [PciSbdf; 2] = [DEV_A, DEV_B];
const MAX_CTX: u16 = 5;
const MSI: u64 = 0xfee00;

#[derive(Clone, Debug)]
enum Step {
    Alloc,
    Free { ctx: u8, reattach: bool },
    Map { ctx: u8, gfn: u64, dfn: u64, n: u32, perm: u8 },
    Unmap { ctx: u8, dfn: u64, n: u32 },
    Reattach { dev: usize, ctx: u8 },
}

fn dfn_strategy() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => 0u64..48,
        2 => (MSI - 6)..(MSI + 3),
        1 => (1u64 << 30)..((1u64 << 30) + 4),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => Just(Step::Alloc),
        1 => (any::<u8>(), any::<bool>()).prop_map(|(ctx, reattach)| Step::Free { ctx, reattach }),
        5 => (any::<u8>(), 0u64..64, dfn_strategy(), 1u32..10, 1u8..=3)
            .prop_map(|(ctx, gfn, dfn, n, perm)| Step::Map { ctx, gfn, dfn, n, perm }),
        3 => (any::<u8>(), dfn_strategy(), 1u32..10).prop_map(|(ctx, dfn, n)| Step::Unmap { ctx, dfn, n }),
        2 => (0usize..2, any::<u8>()).prop_map(|(dev, ctx)| Step::Reattach { dev, ctx }),
    ]
}

struct Model {
    ctxs: BTreeMap<u16, BTreeMap<u64, (Mfn, Perm)>>,
    dev_ctx: [u16; 2],
    dfn_limit: u64,
}

impl Model {
    fn new(aw: AddrWidth) -> Self {
        let mut default = BTreeMap::new();
        for g in 0..OWN_PAGES {
            let m = mfn_of(GUEST, g);
            default.insert(m.0, (m, Perm::RW));
        }
        let mut ctxs = BTreeMap::new();
        ctxs.insert(0, default);
        Model { ctxs, dev_ctx: [0, 0], dfn_limit: 1 << (9 * aw.levels() as u32) }
    }

    /// Picks a context number: an existing one, or one that does not exist.
    fn pick(&self, sel: u8) -> u16 {
        let live: Vec<u16> = self.ctxs.keys().copied().collect();
        let i = sel as usize % (live.len() + 1);
        live.get(i).copied().unwrap_or(MAX_CTX + 1)
    }

    fn alloc(&mut self) -> Result<CtxNo, Error> {
        let n = (1..=MAX_CTX).find(|n| !self.ctxs.contains_key(n)).ok_or(Error::NoSpace)?;
        self.ctxs.insert(n, BTreeMap::new());
        Ok(CtxNo(n))
    }

    fn free(&mut self, ctx: u16, reattach: bool) -> Result<(), Error> {
        if ctx == 0 {
            return Err(Error::Invalid);
        }
        if !self.ctxs.contains_key(&ctx) {
            return Err(Error::NotFound);
        }
        if self.dev_ctx.contains(&ctx) {
            if !reattach {
                return Err(Error::Busy);
            }
            for d in self.dev_ctx.iter_mut() {
                if *d == ctx {
                    *d = 0;
                }
            }
        }
        self.ctxs.remove(&ctx);
        Ok(())
    }

    fn map(&mut self, ctx: u16, gfn: u64, dfn: u64, n: u32, perm: Perm) -> Result<(), PartialError> {
        let limit = self.dfn_limit;
        let Some(t) = self.ctxs.get_mut(&ctx).filter(|_| ctx != 0) else {
            return Err(PartialError { error: Error::Invalid, done: 0 });
        };
        // Each preemption chunk (Config::preempt_pages, 256) is all or
        // nothing: an error reports the chunks before it as done.
        for i in 0..n {
            let d = dfn + i as u64;
            let err = if d >= limit {
                Some(Error::Invalid)
            } else if (MSI..MSI + 0x100).contains(&d) {
                Some(Error::AddressNotAvailable)
            } else if t.contains_key(&d) {
                Some(Error::AddressInUse)
            } else {
                None
            };
            if let Some(error) = err {
                let done = i / 256 * 256;
                for j in done..i {
                    t.remove(&(dfn + j as u64));
                }
                return Err(PartialError { error, done });
            }
            t.insert(d, (mfn_of(GUEST, gfn + i as u64), perm));
        }
        Ok(())
    }

    fn unmap(&mut self, ctx: u16, dfn: u64, n: u32) -> Result<(), PartialError> {
        let limit = self.dfn_limit;
        let Some(t) = self.ctxs.get_mut(&ctx).filter(|_| ctx != 0) else {
            return Err(PartialError { error: Error::Invalid, done: 0 });
        };
        for i in 0..n {
            let d = dfn + i as u64;
            let err = if (MSI..MSI + 0x100).contains(&d) {
                Some(Error::AddressNotAvailable)
            } else if d >= limit {
                Some(Error::Invalid)
            } else if t.remove(&d).is_none() {
                Some(Error::NotFound)
            } else {
                None
            };
            if let Some(error) = err {
                return Err(PartialError { error, done: i });
            }
        }
        Ok(())
    }

    fn reattach(&mut self, dev: usize, ctx: u16) -> Result<(), Error> {
        if !self.ctxs.contains_key(&ctx) {
            return Err(Error::Invalid);
        }
        self.dev_ctx[dev] = ctx;
        Ok(())
    }
}

fn check(hv: &mut Hv, model: &Model) -> Result<(), TestCaseError> {
    // References: one per (non-default context, dfn) mapping a page.
    let mut want: BTreeMap<Mfn, u32> = BTreeMap::new();
    for (n, t) in &model.ctxs {
        if *n != 0 {
            for (m, _) in t.values() {
                *want.entry(*m).or_default() += 1;
            }
        }
    }
    prop_assert_eq!(&hv.platform().refs, &want);
    prop_assert!(hv.held_guest_pages().is_empty());

    let mut probes: BTreeSet<u64> = (0..50).collect();
    probes.extend(MSI - 6..MSI + 3);
    probes.extend((1 << 30)..(1 << 30) + 4);
    for (i, dev) in DEVS.iter().enumerate() {
        let ctx = model.dev_ctx[i];
        prop_assert_eq!(hv.device_context(*dev), Some((GUEST, CtxNo(ctx))));
        let table = &model.ctxs[&ctx];
        let mut all = probes.clone();
        all.extend(table.keys().copied());
        for dfn in all {
            let iova = (dfn << 12) | 0x18;
            for write in [false, true] {
                let got = dma(hv, *dev, iova, write);
                match table.get(&dfn) {
                    // Interrupt requests bypass remapping in every context.
                    _ if write && (MSI..MSI + 0x100).contains(&dfn) => {
                        prop_assert_eq!(got, Ok(iova))
                    }
                    Some((m, p)) if (write && p.write) || (!write && p.read) => {
                        prop_assert_eq!(got, Ok(m.addr() | 0x18), "dev {:?} dfn {:#x} write {}", dev, dfn, write)
                    }
                    _ => prop_assert!(got.is_err(), "dev {:?} dfn {:#x} write {} reached {:?}", dev, dfn, write, got),
                }
            }
        }
    }
    // Replay agrees with the model for every allocated context.
    for (n, t) in &model.ctxs {
        if *n == 0 {
            continue;
        }
        let mut flat = BTreeMap::new();
        for r in hv.replay(GUEST, CtxNo(*n)).map_err(|e| TestCaseError::fail(format!("{e:?}")))? {
            for k in 0..r.count {
                flat.insert(r.dfn.0 + k, (Mfn(r.mfn.0 + k), r.perm));
            }
        }
        prop_assert_eq!(&flat, t);
    }
    Ok(())
}

fn run(aw: AddrWidth, steps: Vec<Step>) -> Result<(), TestCaseError> {
    run_on(aw, true, steps)
}

fn run_on(aw: AddrWidth, coherent: bool, steps: Vec<Step>) -> Result<(), TestCaseError> {
    let mut hv = setup_unit(aw, coherent);
    client(&mut hv, GUEST).init(MAX_CTX as u32, 16).unwrap();
    let mut model = Model::new(aw);
    check(&mut hv, &model)?;
    for s in steps {
        match s {
            Step::Alloc => {
                let want = model.alloc();
                prop_assert_eq!(client(&mut hv, GUEST).alloc_context(false), want);
            }
            Step::Free { ctx, reattach } => {
                let n = model.pick(ctx);
                let want = model.free(n, reattach);
                prop_assert_eq!(client(&mut hv, GUEST).free_context(CtxNo(n), reattach), want);
            }
            Step::Map { ctx, gfn, dfn, n, perm } => {
                let c = model.pick(ctx);
                let (p, flags) = match perm {
                    1 => (Perm::RO, MapFlags::READ),
                    2 => (Perm::WO, MapFlags::WRITE),
                    _ => (Perm::RW, MapFlags::READ_WRITE),
                };
                let want = model.map(c, gfn, dfn, n, p);
                prop_assert_eq!(client(&mut hv, GUEST).map_pages(CtxNo(c), Gfn(gfn), Dfn(dfn), n, flags), want);
            }
            Step::Unmap { ctx, dfn, n } => {
                let c = model.pick(ctx);
                let want = model.unmap(c, dfn, n);
                prop_assert_eq!(client(&mut hv, GUEST).unmap_pages(CtxNo(c), Dfn(dfn), n), want);
            }
            Step::Reattach { dev, ctx } => {
                let c = model.pick(ctx);
                let want = model.reattach(dev, c);
                prop_assert_eq!(client(&mut hv, GUEST).reattach_device(CtxNo(c), DEVS[dev]), want);
            }
        }
        hv.poll(Instant(0));
        check(&mut hv, &model)?;
    }
    // Freeing everything returns every reference and arena page.
    for n in 1..=MAX_CTX {
        let _ = client(&mut hv, GUEST).free_context(CtxNo(n), true);
    }
    prop_assert!(hv.platform().refs.is_empty());
    prop_assert_eq!(hv.arena_used(GUEST), Some(0));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn handler_matches_model_3level(steps in proptest::collection::vec(step(), 1..40)) {
        run(AddrWidth::Aw39, steps)?;
    }

    #[test]
    fn handler_matches_model_4level(steps in proptest::collection::vec(step(), 1..40)) {
        run(AddrWidth::Aw48, steps)?;
    }

    /// ECAP.C = 0: the unit sees only flushed table lines, so every DMA
    /// check also proves the core wrote back what it changed.
    #[test]
    fn handler_matches_model_non_coherent(steps in proptest::collection::vec(step(), 1..40)) {
        run_on(AddrWidth::Aw39, false, steps)?;
    }
}

#[derive(Clone, Debug)]
enum SlowStep {
    Map { gfn: u64, dfn: u64, n: u32 },
    Unmap { dfn: u64, n: u32 },
    Dma { dfn: u64 },
    Complete,
    Advance { secs: u64 },
}

fn slow_step() -> impl Strategy<Value = SlowStep> {
    prop_oneof![
        3 => (0u64..8, 0u64..16, 1u32..4).prop_map(|(gfn, dfn, n)| SlowStep::Map { gfn, dfn, n }),
        3 => (0u64..16, 1u32..4).prop_map(|(dfn, n)| SlowStep::Unmap { dfn, n }),
        3 => (0u64..16).prop_map(|dfn| SlowStep::Dma { dfn }),
        1 => Just(SlowStep::Complete),
        1 => (0u64..40).prop_map(|secs| SlowStep::Advance { secs }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// With a device that completes device-TLB invalidations late (or never),
    /// every DMA that still succeeds reaches a page whose reference is held:
    /// a page is never released while a device can still reach it.
    #[test]
    fn delayed_device_tlb_never_frees_a_reachable_page(steps in proptest::collection::vec(slow_step(), 1..60)) {
        let mut hv = setup(AddrWidth::Aw48);
        client(&mut hv, GUEST).init(2, 10).unwrap();
        let ctx = client(&mut hv, GUEST).alloc_context(false).unwrap();
        client(&mut hv, GUEST).reattach_device(ctx, DEV_C).unwrap();
        let mut now = 0u64;
        let mut mapped: BTreeMap<u64, Mfn> = BTreeMap::new();
        for s in steps {
            match s {
                SlowStep::Map { gfn, dfn, n } => {
                    let mut g = client(&mut hv, GUEST);
                    g.transport_mut().now = Instant(now);
                    let r = g.map_pages(ctx, Gfn(gfn), Dfn(dfn), n, MapFlags::READ_WRITE);
                    let done = match r { Ok(()) => n, Err(e) => e.done };
                    for i in 0..done as u64 {
                        mapped.insert(dfn + i, mfn_of(GUEST, gfn + i));
                    }
                }
                SlowStep::Unmap { dfn, n } => {
                    let mut g = client(&mut hv, GUEST);
                    g.transport_mut().now = Instant(now);
                    let r = g.unmap_pages(ctx, Dfn(dfn), n);
                    let done = match r { Ok(()) => n, Err(e) => e.done };
                    for i in 0..done as u64 {
                        mapped.remove(&(dfn + i));
                    }
                }
                SlowStep::Dma { dfn } => {
                    let _ = dma(&mut hv, DEV_C, dfn << 12, true);
                }
                SlowStep::Complete => {
                    answer(&mut hv, DEV_C, Instant(now));
                }
                SlowStep::Advance { secs } => {
                    now += secs * 1_000_000_000;
                    hv.poll(Instant(now));
                }
            }
            // Safety: whatever DEV_C can still reach is referenced.
            for dfn in 0..20u64 {
                if let Ok(addr) = dma(&mut hv, DEV_C, dfn << 12, false) {
                    let page = Mfn::from_addr(addr);
                    prop_assert!(hv.platform().refs(page) > 0, "dfn {:#x} reaches released {:?}", dfn, page);
                }
            }
            // Never fewer references than live mappings.
            for m in mapped.values() {
                let live = mapped.values().filter(|x| *x == m).count() as u32;
                prop_assert!(hv.platform().refs(*m) >= live);
            }
        }
        // Once the device answers (or was declared broken), exactly the live
        // mappings hold references, plus what a broken device keeps held.
        // Each answer lets the queue run up to the next device-TLB wait.
        for _ in 0..200 {
            answer(&mut hv, DEV_C, Instant(now));
            if hv.hw_mut().pending_device_tlb(Sid::from(DEV_C)) == 0 {
                break;
            }
        }
        let held = hv.held_guest_pages();
        if !hv.device_broken(DEV_C) {
            prop_assert!(held.is_empty());
        }
        let mut want: BTreeMap<Mfn, u32> = BTreeMap::new();
        for m in mapped.values().chain(held.iter()) {
            *want.entry(*m).or_default() += 1;
        }
        prop_assert_eq!(&hv.platform().refs, &want);
    }
}
