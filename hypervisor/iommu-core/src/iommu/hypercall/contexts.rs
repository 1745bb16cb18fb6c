//! Context sub-ops: `alloc_context` (paged or identity), `free_context`
//! (optionally moving its devices back to context 0) and `reattach_device`.

use alloc::collections::BTreeSet;
use alloc::vec::Vec;

use pv_iommu_abi::{alloc_flags, free_flags, Alloc, Free, ReattachDevice};

use crate::hw::Hardware;
use crate::mem::{Memory, PageAlloc};
use crate::pagetable::{PtError, SlTable};
use crate::types::{Dfn, DomId, Instant, Mfn, PciSbdf};
use crate::vtd::Perm;

use crate::iommu::invalidate::Flush;
use crate::iommu::tables::{Budgeted, Tables};
use crate::iommu::{in_msi, Context, CtxKind, Error, Iommu, Outcome, Platform, Rmrr};

impl<M: Memory, H: Hardware, P: Platform> Iommu<M, H, P> {
    pub(super) fn alloc_context(&mut self, dom: DomId, a: Alloc, arg: &mut [u8]) -> Result<Outcome, Error> {
        if a.alloc_flags & !alloc_flags::ALL != 0 {
            return Err(Error::Inval);
        }
        let identity = a.alloc_flags & alloc_flags::IDENTITY != 0;
        let d = self.domain(dom)?;
        let max = d.max_ctx_no.min(u16::MAX as u32) as u16;
        let ctx_no = (1..=max).find(|n| !d.contexts.contains_key(n)).ok_or(Error::NoSpc)?;
        let (limit, used) = (d.arena_limit, d.arena_used);
        let rmrr: Vec<Rmrr> =
            self.devices.values().filter(|x| x.owner == Some(dom)).flat_map(|x| x.rmrr.iter().copied()).collect();
        let pages = if identity { self.plat.domain_pages(dom) } else { Vec::new() };
        let did = self.alloc_did().ok_or(Error::NoSpc)?;
        let mut t = Tables { mem: &mut self.mem, hw: &mut self.hw };
        let mut b = Budgeted { mem: &mut t, left: limit.saturating_sub(used), used: 0 };
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
            for (gfn, mfn) in &pages {
                if in_msi(gfn.0) || rmrr.iter().any(|r| r.contains(gfn.0)) {
                    continue;
                }
                match table.map(&mut b, Dfn(gfn.0), *mfn, Perm::RW, false) {
                    Ok(()) | Err(PtError::InUse) | Err(PtError::OutOfRange) => {}
                    Err(_) => return Err((Some(table), Error::NoMem)),
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
        let kind = if identity { CtxKind::Identity } else { CtxKind::Paged };
        d.contexts.insert(ctx_no, Context { did, kind, table, devices: BTreeSet::new(), dying: false });
        Alloc { ctx_no, ..a }.write_to(arg)?;
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
            self.move_device(dom, dev, 0, &mut f);
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
        let device = self.devices.get(&dev).filter(|x| x.owner == Some(dom)).ok_or(Error::NoEnt)?;
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
        self.move_device(dom, dev, r.ctx_no, &mut f);
        self.commit(f, now);
        Ok(Outcome::Done)
    }
}
