//! Contexts at the hardware: root and context entries (VT-d 9.1, 9.3),
//! moving a device between the contexts of its domain or into quarantine,
//! and tearing a context down. Every context entry the core writes is built
//! by [`context_entry`].

use crate::hw::{AttachError, Hardware};
use crate::mem::{Memory, PageAlloc, PhysMem};
use crate::types::{DomId, Mfn, PciSbdf, Sid};
use crate::vtd::{AddrWidth, ContextEntry, RootEntry, TranslationType};

use super::invalidate::Flush;
use super::{CtxKind, Iommu, MgmtError, Platform, QUARANTINE_DID};

/// The context entry that points a device at the second-level table rooted
/// at `root`, tagged with domain id `did`. An ATS device (`ats`) may send
/// translated requests and cache translations (device-TLB); any other
/// device, and every device in quarantine, is untranslated only.
fn context_entry(aw: AddrWidth, root: Mfn, did: u16, ats: bool) -> ContextEntry {
    let tt = if ats { TranslationType::DeviceTlb } else { TranslationType::Untranslated };
    ContextEntry::new(root, aw, did, tt)
}

impl<M: Memory, H: Hardware, P: Platform> Iommu<M, H, P> {
    fn context_slot(&self, sid: Sid) -> Option<u64> {
        self.ctx_tables.get(&sid.bus()).map(|t| t.addr() + sid.devfn() as u64 * 16)
    }

    /// Gives `bus` a context table, published by its root entry, if it has
    /// none yet.
    pub(super) fn ensure_context_table(&mut self, bus: u8) -> Result<(), MgmtError> {
        if !self.ctx_tables.contains_key(&bus) {
            let ct = self.tables().alloc_zeroed().ok_or(MgmtError::NoMemory)?;
            self.ctx_tables.insert(bus, ct);
            let r = RootEntry::new(ct);
            let at = self.root.addr() + bus as u64 * 16;
            let mut t = self.tables();
            t.write_u64(at + 8, r.hi);
            t.write_u64(at, r.lo);
        }
        Ok(())
    }

    /// Rewrites a device's context entry: clear P, write the high half,
    /// then the low half with P. A DMA in between faults (fail closed).
    /// Each write is flushed on a non-coherent unit (the entry's 16 bytes
    /// share one cache line, so the unit never sees the new high half with
    /// a stale present low half).
    fn write_context_entry(&mut self, sid: Sid, e: ContextEntry) {
        if let Some(at) = self.context_slot(sid) {
            let mut t = self.tables();
            t.write_u64(at, 0);
            t.write_u64(at + 8, e.hi);
            t.write_u64(at, e.lo);
        }
    }

    /// Points `sid` at the table rooted at `root` under domain id `did`.
    pub(super) fn point_at(&mut self, sid: Sid, root: Mfn, did: u16, ats: bool) {
        let e = context_entry(self.aw, root, did, ats);
        self.write_context_entry(sid, e);
    }

    /// Points `sid` at the quarantine context (untranslated only).
    pub(super) fn point_at_quarantine(&mut self, sid: Sid) {
        self.point_at(sid, self.quarantine.root(), QUARANTINE_DID, false);
    }

    /// Makes `sid`'s context entry not present: untranslated and translated
    /// requests fault.
    pub(super) fn clear_context_entry(&mut self, sid: Sid) {
        if let Some(at) = self.context_slot(sid) {
            let mut t = self.tables();
            t.write_u64(at, 0);
            t.write_u64(at + 8, 0);
        }
    }

    /// Moves `dev` from its context of `owner` into quarantine and queues
    /// the invalidations for the context it leaves. A broken device's entry
    /// stays not present.
    pub(super) fn detach_to_quarantine(&mut self, dev: PciSbdf, owner: DomId, f: &mut Flush) {
        let Some(d) = self.devices.get(&dev) else {
            return;
        };
        let (ctx_no, ats, broken) = (d.ctx, d.ats, d.broken);
        let sid = Sid::from(dev);
        let mut old_did = None;
        if let Some(ctx) = self.domains.get_mut(&owner).and_then(|dm| dm.contexts.get_mut(&ctx_no)) {
            if ctx.devices.remove(&dev) {
                old_did = Some(ctx.did);
            }
        }
        if broken {
            return; // its entry stays not-present (and detached from a shared unit)
        }
        self.point_at_quarantine(sid);
        self.hw.detach(&mut self.mem, sid);
        if let Some(did) = old_did {
            f.context.push((did, sid));
            f.iotlb_domain.push(did);
        }
        if ats {
            f.devtlb_all(sid);
        }
    }

    /// Points `dev` at context `to` of `dom` and queues the invalidations
    /// for the context it leaves. On a shared unit the device is attached to
    /// the context's tables first ([`Hardware::attach`]; context 0 is the
    /// host's own mapping: [`Hardware::detach`]); if the unit refuses,
    /// nothing changes.
    pub(super) fn move_device(&mut self, dom: DomId, dev: PciSbdf, to: u16, f: &mut Flush) -> Result<(), AttachError> {
        let Some(d) = self.devices.get(&dev) else {
            return Err(AttachError::NoDevice);
        };
        let (from, ats) = (d.ctx, d.ats);
        let sid = Sid::from(dev);
        let Some(target) = self.domains.get(&dom).and_then(|d| d.contexts.get(&to)) else {
            return Err(AttachError::NoDevice);
        };
        if target.kind == CtxKind::Default {
            self.hw.detach(&mut self.mem, sid);
        } else {
            let (root, did) = (target.table.root(), target.did);
            self.hw.attach(&mut self.mem, sid, root, did, ats)?;
        }
        let Some(domain) = self.domains.get_mut(&dom) else {
            return Err(AttachError::NoDevice);
        };
        let old_did = domain.contexts.get_mut(&from).map(|c| {
            c.devices.remove(&dev);
            c.did
        });
        let Some(target) = domain.contexts.get_mut(&to) else {
            return Err(AttachError::NoDevice);
        };
        target.devices.insert(dev);
        let (root, did) = (target.table.root(), target.did);
        if let Some(d) = self.devices.get_mut(&dev) {
            d.ctx = to;
        }
        self.point_at(sid, root, did, ats);
        if let Some(did) = old_did {
            f.context.push((did, sid));
            f.iotlb_domain.push(did);
        }
        if ats {
            f.devtlb_all(sid);
        }
        Ok(())
    }

    /// Removes context `ctx_no` of `dom` and hands its tables, page
    /// references, domain id and arena charge to `f`, to be released once
    /// the invalidation of its domain id completes.
    pub(super) fn teardown_context(&mut self, dom: DomId, ctx_no: u16, f: &mut Flush) {
        let Some(domain) = self.domains.get_mut(&dom) else {
            return;
        };
        let Some(ctx) = domain.contexts.remove(&ctx_no) else {
            return;
        };
        // A corrupt table is leaked rather than half freed.
        let (frames, leaves) = ctx.table.destroy(&self.mem).unwrap_or_default();
        for l in leaves {
            if l.holds_ref {
                f.release.guest.push((l.mfn, l.perm.write));
            }
        }
        f.release.owner = Some(dom);
        if ctx.kind != CtxKind::Default {
            let n = frames.len() as u64;
            let (d, total) = f.release.budget.get_or_insert((dom, 0));
            debug_assert_eq!(*d, dom);
            *total += n;
        }
        f.release.tables.extend(frames);
        f.iotlb_domain.push(ctx.did);
        f.release.dids.push(ctx.did);
    }

    /// Drops an identity context still being built: it was never in a
    /// context entry, so no cache can refer to its tables or domain id, and
    /// both are freed at once (with its arena charge).
    pub(super) fn drop_building(&mut self, dom: DomId) {
        let Some(b) = self.domains.get_mut(&dom).and_then(|d| d.building.take()) else {
            return;
        };
        // A corrupt table is leaked rather than half freed.
        let (frames, _) = b.table.destroy(&self.mem).unwrap_or_default();
        let n = frames.len() as u64;
        for fr in frames {
            self.mem.free_page(fr);
        }
        if let Some(d) = self.domains.get_mut(&dom) {
            d.arena_used = d.arena_used.saturating_sub(n);
        }
        self.dids.remove(&b.did);
        self.hw.release_did(b.did);
    }
}
