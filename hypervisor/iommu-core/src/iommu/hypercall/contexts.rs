//! Context sub-ops: `alloc_context` (paged or identity), `free_context`
//! (optionally moving its devices back to context 0) and `reattach_device`.

use alloc::collections::BTreeSet;
use alloc::vec::Vec;

use pv_iommu_abi::{alloc_flags, free_flags, Alloc, Free, ReattachDevice};

use crate::hw::Hardware;
use crate::mem::{Memory, PageAlloc};
use crate::pagetable::{PtError, SlTable};
use crate::types::{Dfn, DomId, Gfn, Instant, Mfn, PciSbdf};
use crate::vtd::Perm;

use crate::iommu::invalidate::Flush;
use crate::iommu::tables::{Budgeted, Tables};
use crate::iommu::{in_msi, Building, Context, CtxKind, Error, Iommu, Outcome, Platform, Rmrr};

impl<M: Memory, H: Hardware, P: Platform> Iommu<M, H, P> {
    /// `alloc_context`. An identity context is built `Config::preempt_pages`
    /// pages per call: the state is kept here ([`Building`]) and the caller
    /// re-issues the same call (-ERESTART) until it is done; meanwhile
    /// other allocations of the domain are -EBUSY.
    pub(super) fn alloc_context(&mut self, dom: DomId, a: Alloc, arg: &mut [u8]) -> Result<Outcome, Error> {
        if a.alloc_flags & !alloc_flags::ALL != 0 {
            return Err(Error::Inval);
        }
        let identity = a.alloc_flags & alloc_flags::IDENTITY != 0;
        if identity && !self.cfg.identity_contexts {
            return Err(Error::OpNotSupp);
        }
        if self.domain(dom)?.building.is_some() {
            if !identity {
                return Err(Error::Busy);
            }
            return self.build_identity(dom, a, arg);
        }
        self.may_alloc_context(dom)?;
        self.context_room(dom)?;
        let d = self.domain(dom)?;
        let max = d.max_ctx_no.min(u16::MAX as u32) as u16;
        let ctx_no = (1..=max).find(|n| !d.contexts.contains_key(n)).ok_or(Error::NoSpc)?;
        let rmrr = self.owned_rmrr(dom);
        let left = self.table_room(dom);
        let did = self.alloc_did().ok_or(Error::NoSpc)?;
        let mut t = Tables { mem: &mut self.mem, hw: &mut self.hw };
        let mut b = Budgeted { mem: &mut t, left, used: 0 };
        let built = (|| -> Result<SlTable, (Option<SlTable>, Error)> {
            let table = SlTable::new(&mut b, self.aw).map_err(|_| (None, Error::NoMem))?;
            for r in &rmrr {
                for p in r.frames() {
                    match table.map(&mut b, Dfn(p), Mfn(p), Perm::RW, false) {
                        Ok(()) | Err(PtError::InUse) => {}
                        Err(_) => return Err((Some(table), Error::NoMem)),
                    }
                }
            }
            Ok(table)
        })();
        let table = match built {
            Ok(t) => t,
            Err((t, e)) => {
                // Never referenced by a context entry under a used domain id:
                // no cache can hold it, so it is freed at once.
                if let Some(t) = t {
                    if let Ok((frames, _)) = t.destroy(&*b.mem) {
                        for fr in frames {
                            b.mem.free_page(fr);
                        }
                    }
                }
                self.dids.remove(&did);
                return Err(e);
            }
        };
        let used_now = b.used;
        let d = self.domain_mut(dom)?;
        d.arena_used += used_now;
        if identity {
            d.building = Some(Building { ctx_no, did, table, next: Gfn(0) });
            return self.build_identity(dom, a, arg);
        }
        d.contexts.insert(ctx_no, Context { did, kind: CtxKind::Paged, table, devices: BTreeSet::new(), dying: false });
        Alloc { ctx_no, ..a }.write_to(arg)?;
        Ok(Outcome::Done)
    }

    /// The reserved ranges of the devices `dom` owns.
    fn owned_rmrr(&self, dom: DomId) -> Vec<Rmrr> {
        self.devices.values().filter(|x| x.owner == Some(dom)).flat_map(|x| x.rmrr.iter().copied()).collect()
    }

    /// One step of building an identity context: maps up to
    /// `Config::preempt_pages` of the domain's pages (bus address = GFN).
    /// Past the domain's table-page limit the partial context is dropped
    /// and nothing is left of it.
    fn build_identity(&mut self, dom: DomId, a: Alloc, arg: &mut [u8]) -> Result<Outcome, Error> {
        let budget = self.cfg.preempt_pages.max(1) as usize;
        let (table, next) = match &self.domain(dom)?.building {
            Some(b) => (b.table, b.next),
            None => return Err(Error::Inval),
        };
        let rmrr = self.owned_rmrr(dom);
        let pages = self.plat.domain_pages(dom, next, budget);
        let left = self.table_room(dom);
        let mut t = Tables { mem: &mut self.mem, hw: &mut self.hw };
        let mut b = Budgeted { mem: &mut t, left, used: 0 };
        let mut failed = false;
        let mut last = None;
        for (gfn, mfn) in pages.iter().take(budget) {
            // Pages come in gfn order from `next`; anything else ends the walk.
            if gfn.0 < next.0 || last.is_some_and(|l: u64| gfn.0 <= l) {
                break;
            }
            last = Some(gfn.0);
            if in_msi(gfn.0) || rmrr.iter().any(|r| r.contains(gfn.0)) {
                continue;
            }
            match table.map(&mut b, Dfn(gfn.0), *mfn, Perm::RW, false) {
                Ok(()) | Err(PtError::InUse) | Err(PtError::OutOfRange) => {}
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        let used = b.used;
        if let Some(d) = self.domains.get_mut(&dom) {
            d.arena_used += used;
        }
        if failed {
            self.drop_building(dom);
            return Err(Error::NoMem);
        }
        let more = pages.len() >= budget;
        match last.and_then(|l| l.checked_add(1)) {
            Some(n) if more => {
                if let Some(b) = self.domains.get_mut(&dom).and_then(|d| d.building.as_mut()) {
                    b.next = Gfn(n);
                }
                return Ok(Outcome::Restart);
            }
            _ => {}
        }
        let d = self.domain_mut(dom)?;
        let Some(b) = d.building.take() else {
            return Err(Error::Inval);
        };
        d.contexts.insert(
            b.ctx_no,
            Context { did: b.did, kind: CtxKind::Identity, table: b.table, devices: BTreeSet::new(), dying: false },
        );
        Alloc { ctx_no: b.ctx_no, ..a }.write_to(arg)?;
        Ok(Outcome::Done)
    }

    pub(super) fn free_context(&mut self, dom: DomId, fr: Free, now: Instant) -> Result<Outcome, Error> {
        if fr.free_flags & !free_flags::ALL != 0 || fr.ctx_no == 0 {
            return Err(Error::Inval);
        }
        let d = self.domain(dom)?;
        let ctx = d.contexts.get(&fr.ctx_no).ok_or(Error::NoEnt)?;
        if ctx.dying {
            return Err(Error::Inval);
        }
        let devs: Vec<PciSbdf> = ctx.devices.iter().copied().collect();
        if !devs.is_empty() && fr.free_flags & free_flags::REATTACH_DEFAULT == 0 {
            return Err(Error::Busy);
        }
        if !self.queue.has_room(8 + 4 * devs.len()) {
            return Err(Error::Busy);
        }
        let mut f = Flush::default();
        for dev in devs {
            // Into context 0: a detach, which cannot be refused.
            self.move_device(dom, dev, 0, &mut f)?;
        }
        self.teardown_context(dom, fr.ctx_no, &mut f);
        self.commit(f, now);
        Ok(Outcome::Done)
    }

    pub(super) fn reattach(&mut self, dom: DomId, r: ReattachDevice, now: Instant) -> Result<Outcome, Error> {
        if r.pasid != 0 {
            return Err(Error::OpNotSupp);
        }
        let dev = PciSbdf::from(r.dev);
        let d = self.domain(dom)?;
        let ctx = d.contexts.get(&r.ctx_no).ok_or(Error::Inval)?;
        if ctx.dying {
            return Err(Error::Inval);
        }
        self.may_reattach(dom, dev)?;
        let device = self.devices.get(&dev).ok_or(Error::NoEnt)?;
        if device.broken {
            return Err(Error::NoDev);
        }
        if device.ctx == r.ctx_no {
            return Ok(Outcome::Done);
        }
        if !self.queue.has_room(8) {
            return Err(Error::Busy);
        }
        let mut f = Flush::default();
        self.move_device(dom, dev, r.ctx_no, &mut f)?;
        self.commit(f, now);
        Ok(Outcome::Done)
    }
}
