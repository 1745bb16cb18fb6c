//! Page sub-ops: `map_pages` and `unmap_pages` on a guest-managed context,
//! with preemption every `Config::preempt_pages` pages and the IOTLB and
//! device-TLB invalidations they need.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use pv_iommu_abi::{map_flags, MapPages, UnmapPages};

use crate::hw::Hardware;
use crate::mem::Memory;
use crate::pagetable::{PtError, SlTable};
use crate::types::{Dfn, DomId, Gfn, Instant, PciSbdf, Sid};
use crate::vtd::Perm;

use crate::iommu::invalidate::Flush;
use crate::iommu::tables::{Budgeted, Tables};
use crate::iommu::{in_msi, CtxKind, Device, Error, Frame, Iommu, Outcome, Platform, MAX_RANGES};

/// Reserved frames of `dom`: the MSI window and its devices' RMRRs. Every
/// page of a map or unmap is checked, not just the first.
fn reserved(devices: &BTreeMap<PciSbdf, Device>, dom: DomId, dfn: u64) -> bool {
    in_msi(dfn) || devices.values().filter(|d| d.owner == Some(dom)).any(|d| d.rmrr.iter().any(|r| r.contains(dfn)))
}

impl<M: Memory, H: Hardware, P: Platform> Iommu<M, H, P> {
    /// Looks up a guest-managed context for map/unmap.
    fn paged_ctx(&self, dom: DomId, ctx_no: u16) -> Result<(SlTable, u16, Vec<Sid>), Error> {
        if ctx_no == 0 {
            return Err(Error::Inval);
        }
        let d = self.domain(dom)?;
        let ctx = d.contexts.get(&ctx_no).ok_or(Error::Inval)?;
        if ctx.dying || ctx.kind != CtxKind::Paged {
            return Err(Error::Inval);
        }
        let ats: Vec<Sid> = ctx
            .devices
            .iter()
            .filter(|dv| self.devices.get(dv).is_some_and(|x| x.ats && !x.broken))
            .map(|dv| Sid::from(*dv))
            .collect();
        Ok((ctx.table, ctx.did, ats))
    }

    pub(super) fn map_pages(
        &mut self,
        dom: DomId,
        mut m: MapPages,
        arg: &mut [u8],
        now: Instant,
    ) -> Result<Outcome, Error> {
        let (table, did, _) = self.paged_ctx(dom, m.ctx_no)?;
        if m.map_flags & !map_flags::ALL != 0 || m.pgsize != 1 << 12 || m.mapped > m.nr_pages {
            return Err(Error::Inval);
        }
        let perm =
            Perm { read: m.map_flags & map_flags::READABLE != 0, write: m.map_flags & map_flags::WRITEABLE != 0 };
        if !perm.read && !perm.write {
            return Err(Error::Inval);
        }
        if !self.queue.has_room(MAX_RANGES + 2) {
            return Err(Error::Busy);
        }
        let caching_mode = self.hw.caching_mode();
        let start = m.mapped;
        let stop = m.nr_pages.min(start.saturating_add(self.cfg.preempt_pages.max(1)));
        // Each call's chunk is all or nothing: every page is checked (range,
        // reserved ranges, free dfn, the policy's frame rules) and the table
        // pages it needs are counted against the domain's limit before
        // anything is referenced or written.
        let mut frames: Vec<(u64, Frame)> = Vec::new();
        for i in start..stop {
            let (Some(dfn), Some(gfn)) = (m.dfn.checked_add(i as u64), m.gfn.checked_add(i as u64)) else {
                return Err(Error::Inval);
            };
            if dfn >= table.dfn_limit() {
                return Err(Error::Inval);
            }
            // Every page, not just the first, is checked against reserved ranges.
            if reserved(&self.devices, dom, dfn) {
                return Err(Error::AddrNotAvail);
            }
            if table.lookup(&self.mem, Dfn(dfn)).is_some() {
                return Err(Error::AddrInUse);
            }
            frames.push((dfn, self.mappable_frame(dom, Gfn(gfn), perm)?));
        }
        let first = m.dfn.saturating_add(start as u64);
        let need = table.tables_needed(&self.mem, first..first.saturating_add(frames.len() as u64));
        if need.map_err(|_| Error::Inval)? > self.table_room(dom) {
            return Err(Error::NoMem);
        }
        let mut taken = 0;
        for (_, fr) in &frames {
            if !self.plat.get_frame(dom, *fr, perm.write) {
                break;
            }
            taken += 1;
        }
        if taken < frames.len() {
            for (_, fr) in frames.iter().take(taken) {
                self.plat.put_frame(fr.mfn, perm.write);
            }
            return Err(Error::Perm);
        }
        self.refs_held += taken as u64;
        let left = self.table_room(dom);
        let mut t = Tables { mem: &mut self.mem, hw: &mut self.hw };
        let mut b = Budgeted { mem: &mut t, left, used: 0 };
        let mut f = Flush::default();
        f.release.owner = Some(dom);
        let mut failed = None;
        for (k, (dfn, fr)) in frames.iter().enumerate() {
            if let Err(e) = table.map(&mut b, Dfn(*dfn), fr.mfn, perm, true) {
                failed = Some((k, e));
                break;
            }
        }
        if let Some((k, e)) = failed {
            // Only a host allocation failure gets here: undo this chunk's
            // mappings (nothing cached them: not yet invalidated, never
            // reported) and drop every reference it took.
            for (dfn, _) in frames.iter().take(k) {
                let _ = table.unmap(&mut b, Dfn(*dfn));
            }
            let used = b.used;
            for (_, fr) in &frames {
                self.plat.put_frame(fr.mfn, perm.write);
            }
            self.refs_held = self.refs_held.saturating_sub(frames.len() as u64);
            if let Some(d) = self.domains.get_mut(&dom) {
                d.arena_used += used;
            }
            return Err(match e {
                PtError::NoMemory => Error::NoMem,
                PtError::InUse => Error::AddrInUse,
                _ => Error::Inval,
            });
        }
        if caching_mode {
            for (dfn, _) in &frames {
                f.page(did, *dfn);
            }
        }
        m.mapped = stop;
        let used = b.used;
        if let Some(d) = self.domains.get_mut(&dom) {
            d.arena_used += used;
        }
        self.commit(f, now);
        m.write_to(arg)?;
        Ok(if m.mapped < m.nr_pages { Outcome::Restart } else { Outcome::Done })
    }

    pub(super) fn unmap_pages(
        &mut self,
        dom: DomId,
        mut u: UnmapPages,
        arg: &mut [u8],
        now: Instant,
    ) -> Result<Outcome, Error> {
        let (table, did, ats) = self.paged_ctx(dom, u.ctx_no)?;
        if u.pgsize != 1 << 12 || u.unmapped > u.nr_pages {
            return Err(Error::Inval);
        }
        if !self.queue.has_room(MAX_RANGES * (1 + ats.len()) + 2 + ats.len()) {
            return Err(Error::Busy);
        }
        let start = u.unmapped;
        let stop = u.nr_pages.min(start.saturating_add(self.cfg.preempt_pages.max(1)));
        let mut f = Flush::default();
        f.release.owner = Some(dom);
        let mut result = Ok(());
        for i in start..stop {
            let Some(dfn) = u.dfn.checked_add(i as u64) else {
                result = Err(Error::Inval);
                break;
            };
            if reserved(&self.devices, dom, dfn) {
                result = Err(Error::AddrNotAvail);
                break;
            }
            match table.unmap(&mut self.tables(), Dfn(dfn)) {
                Ok(leaf) => {
                    if leaf.holds_ref {
                        f.release.guest.push((leaf.mfn, leaf.perm.write));
                    }
                }
                Err(PtError::NotMapped) => {
                    result = Err(Error::NoEnt);
                    break;
                }
                Err(PtError::OutOfRange) => {
                    result = Err(Error::Inval);
                    break;
                }
                Err(_) => {
                    result = Err(Error::Inval);
                    break;
                }
            }
            f.page(did, dfn);
            for s in &ats {
                f.devtlb_page(*s, dfn);
            }
            u.unmapped = i + 1;
        }
        // Flush what was unmapped, also on error (partial progress).
        self.commit(f, now);
        u.write_to(arg)?;
        result?;
        Ok(if u.unmapped < u.nr_pages { Outcome::Restart } else { Outcome::Done })
    }
}
