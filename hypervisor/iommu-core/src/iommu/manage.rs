//! Toolstack management (host side, not guest-reachable): registering
//! devices and domains, assigning devices to domains and taking them back,
//! and destroying a domain.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use crate::hw::Hardware;
use crate::mem::Memory;
use crate::pagetable::{PtError, SlTable};
use crate::types::{Dfn, DomId, Gfn, Instant, Mfn, PciSbdf, Sid};
use crate::vtd::Perm;

use super::invalidate::Flush;
use super::tables::{Budgeted, Tables};
use super::{in_msi, Context, CtxKind, Device, Domain, Iommu, MgmtError, Platform, Rmrr, QUARANTINE_DID};

/// Pages asked of the platform at a time while building the default context.
const PAGES_PER_BATCH: usize = 512;

impl<M: Memory, H: Hardware, P: Platform> Iommu<M, H, P> {
    /// Registers a PCI function behind this unit; it starts in quarantine.
    pub fn add_device(&mut self, dev: PciSbdf, ats: bool, rmrr: &[Rmrr]) -> Result<(), MgmtError> {
        if dev.seg != 0 || self.devices.contains_key(&dev) {
            return Err(MgmtError::Invalid);
        }
        let sid = Sid::from(dev);
        self.ensure_context_table(sid.bus())?;
        self.point_at_quarantine(sid);
        // The entry was not present before: nothing cached (with CM=0).
        let mut f = Flush::default();
        if self.hw.caching_mode() {
            f.context.push((QUARANTINE_DID, sid));
        }
        self.devices.insert(dev, Device { owner: None, ctx: 0, ats, broken: false, rmrr: rmrr.to_vec() });
        self.commit(f, Instant(0));
        Ok(())
    }

    /// Creates a domain's PV-IOMMU state with its default context (bus
    /// address = MFN of each of its pages). `enabled` false: every call
    /// returns -ENODEV.
    pub fn add_domain(&mut self, dom: DomId, enabled: bool) -> Result<(), MgmtError> {
        if self.domains.get(&dom).is_some_and(|d| !d.dying) {
            return Err(MgmtError::Invalid);
        }
        // A dying predecessor's arena pages still await release.
        let pending = self
            .held
            .iter()
            .map(|h| &h.release)
            .chain(self.ready.iter())
            .any(|r| r.budget.is_some_and(|(d, _)| d == dom));
        if pending {
            return Err(MgmtError::Busy);
        }
        let did = self.alloc_did().ok_or(MgmtError::NoMemory)?;
        let aw = self.aw;
        let table = match SlTable::new(&mut self.tables(), aw) {
            Ok(t) => t,
            Err(_) => {
                self.dids.remove(&did);
                return Err(MgmtError::NoMemory);
            }
        };
        let mut from = Gfn(0);
        loop {
            let batch = self.plat.domain_pages(dom, from, PAGES_PER_BATCH);
            let mut failed = false;
            for (_, mfn) in &batch {
                if in_msi(mfn.0) {
                    continue;
                }
                match table.map(&mut self.tables(), Dfn(mfn.0), *mfn, Perm::RW, false) {
                    Ok(()) | Err(PtError::InUse) | Err(PtError::OutOfRange) => {}
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
            if failed {
                // No device was ever attached: nothing cached, free at once.
                let (frames, _) = table.destroy(&self.mem).unwrap_or_default();
                for f in frames {
                    self.mem.free_page(f);
                }
                self.dids.remove(&did);
                return Err(MgmtError::NoMemory);
            }
            // A platform that returns pages out of order or past `from` ends the walk.
            match batch.last().and_then(|(g, _)| g.0.checked_add(1)) {
                Some(next) if batch.len() == PAGES_PER_BATCH && next > from.0 => from = Gfn(next),
                _ => break,
            }
        }
        let limits = self.limits_for(dom);
        let mut contexts = BTreeMap::new();
        contexts.insert(0, Context { did, kind: CtxKind::Default, table, devices: BTreeSet::new(), dying: false });
        self.domains.insert(
            dom,
            Domain {
                enabled,
                dying: false,
                initialised: false,
                max_ctx_no: 0,
                arena_limit: 0,
                arena_used: 0,
                contexts,
                limits,
                building: None,
            },
        );
        Ok(())
    }

    /// Gives a quarantined device to `dom`: its RMRRs are mapped 1:1 in every
    /// context of the domain and it is attached to context 0.
    pub fn assign_device(&mut self, dev: PciSbdf, dom: DomId, now: Instant) -> Result<(), MgmtError> {
        let d = self.devices.get(&dev).ok_or(MgmtError::Invalid)?;
        if d.owner.is_some() || d.broken {
            return Err(MgmtError::Invalid);
        }
        let rmrr = d.rmrr.clone();
        let ats = d.ats;
        let domain = self.domains.get(&dom).ok_or(MgmtError::Invalid)?;
        if domain.dying {
            return Err(MgmtError::Invalid);
        }
        if !self.queue.has_room(8) {
            return Err(MgmtError::Busy);
        }
        // Check first, then change: a reserved frame mapped to anything but
        // itself is a conflict.
        for ctx in domain.contexts.values() {
            for r in &rmrr {
                for p in r.frames() {
                    if let Some(l) = ctx.table.lookup(&self.mem, Dfn(p)) {
                        if l.mfn != Mfn(p) || l.holds_ref {
                            return Err(MgmtError::Conflict);
                        }
                    }
                }
            }
        }
        let domain = self.domains.get_mut(&dom).ok_or(MgmtError::Invalid)?;
        for ctx in domain.contexts.values() {
            let mut t = Tables { mem: &mut self.mem, hw: &mut self.hw };
            let mut b = Budgeted {
                mem: &mut t,
                left: if ctx.kind == CtxKind::Default {
                    u64::MAX
                } else {
                    domain.arena_limit.saturating_sub(domain.arena_used)
                },
                used: 0,
            };
            let mut res = Ok(());
            'outer: for r in &rmrr {
                for p in r.frames() {
                    match ctx.table.map(&mut b, Dfn(p), Mfn(p), Perm::RW, false) {
                        Ok(()) | Err(PtError::InUse) => {}
                        Err(_) => {
                            res = Err(MgmtError::NoMemory);
                            break 'outer;
                        }
                    }
                }
            }
            if ctx.kind != CtxKind::Default {
                domain.arena_used += b.used;
            }
            res?;
        }
        let ctx0 = domain.contexts.get_mut(&0).ok_or(MgmtError::Invalid)?;
        ctx0.devices.insert(dev);
        let (root, did) = (ctx0.table.root(), ctx0.did);
        if let Some(d) = self.devices.get_mut(&dev) {
            d.owner = Some(dom);
            d.ctx = 0;
        }
        let sid = Sid::from(dev);
        self.point_at(sid, root, did, ats);
        let mut f = Flush::default();
        f.context.push((QUARANTINE_DID, sid));
        f.iotlb_domain.push(QUARANTINE_DID);
        self.commit(f, now);
        Ok(())
    }

    /// Takes a device back from its domain into quarantine.
    pub fn deassign_device(&mut self, dev: PciSbdf, now: Instant) -> Result<(), MgmtError> {
        let d = self.devices.get(&dev).ok_or(MgmtError::Invalid)?;
        let owner = d.owner.ok_or(MgmtError::Invalid)?;
        if !self.queue.has_room(8) {
            return Err(MgmtError::Busy);
        }
        let mut f = Flush::default();
        self.detach_to_quarantine(dev, owner, &mut f);
        if let Some(d) = self.devices.get_mut(&dev) {
            d.owner = None;
            d.ctx = 0;
        }
        self.commit(f, now);
        Ok(())
    }

    /// Tears a domain down (Xen's domain destruction path calls this): no
    /// call is served for it any more, its devices go to quarantine, an
    /// identity context still being built is dropped, and its contexts are
    /// freed — tables, domain ids and every mapping's page reference are
    /// released once the invalidation completes; [`Iommu::counters`] of the
    /// domain then reads zero.
    pub fn destroy_domain(&mut self, dom: DomId, now: Instant) -> Result<(), MgmtError> {
        let domain = self.domains.get_mut(&dom).ok_or(MgmtError::Invalid)?;
        if domain.dying {
            return Err(MgmtError::Invalid);
        }
        domain.dying = true;
        for c in domain.contexts.values_mut() {
            c.dying = true;
        }
        let owned: Vec<PciSbdf> = self.devices.iter().filter(|(_, d)| d.owner == Some(dom)).map(|(k, _)| *k).collect();
        let mut f = Flush::default();
        for dev in owned {
            self.detach_to_quarantine(dev, dom, &mut f);
            if let Some(d) = self.devices.get_mut(&dev) {
                d.owner = None;
                d.ctx = 0;
            }
        }
        f.release.owner = Some(dom);
        self.drop_building(dom);
        let ctx_nos: Vec<u16> =
            self.domains.get(&dom).map(|d| d.contexts.keys().copied().collect()).unwrap_or_default();
        for n in ctx_nos {
            self.teardown_context(dom, n, &mut f);
        }
        self.commit(f, now);
        // The entry stays, marked dying, so late calls get -EINVAL; a new
        // domain with the same id replaces it.
        Ok(())
    }
}
