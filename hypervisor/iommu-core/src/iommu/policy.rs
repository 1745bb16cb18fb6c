//! Who may do what: the per-caller rules every guest-reachable sub-op goes
//! through before it changes anything, and the counters that show what a
//! domain holds.
//!
//! Beyond the upstream series (dom0-only), a domU driver domain may use the
//! interface for itself, under these rules:
//!
//! * devices: it may allocate contexts only while it owns a device, and
//!   reattach only a device assigned to it — the core's own assignment
//!   record and the platform's ([`Platform::device_owner`]) must both say so;
//! * frames: it may map its own frames, and frames another domain granted
//!   to it, with the grant's rights (a read-only grant maps read-only); the
//!   reference the platform takes at map is held until the mapping is gone
//!   and its invalidation completed (unmap, context free, domain teardown);
//!   anything else is -EPERM (-EACCES for a write to a read-only grant);
//! * `remote_cmd` stays with the hardware domain (`hypercall`);
//! * limits ([`Limits`]): contexts and page-table pages per domain; `init`
//!   is clamped to them, and a call that would pass them fails before it
//!   changes anything;
//! * bounded work per call: map/unmap chunks and identity-context steps of
//!   `Config::preempt_pages` (-ERESTART, state in the core), and releases
//!   of `Config::release_budget` references and table pages per call (a
//!   domain's limits keep counting what is not released yet).

use core::fmt::{self, Write};

use crate::hw::Hardware;
use crate::mem::Memory;
use crate::types::{DomId, Gfn, PciSbdf};
use crate::vtd::Perm;

use super::{Error, Frame, Iommu, Limits, Platform, Source};

/// What a domain (or the whole core) holds. All zero for a domain once its
/// teardown's invalidations completed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Contexts, context 0 included, plus an identity context being built.
    pub contexts: u64,
    /// VT-d domain ids in use or awaiting an invalidation before reuse.
    pub domain_ids: u64,
    /// Page-table pages in use or awaiting an invalidation before release.
    pub table_pages: u64,
    /// Guest page references held for mappings (or awaiting an invalidation).
    pub held_refs: u64,
}

impl<M: Memory, H: Hardware, P: Platform> Iommu<M, H, P> {
    /// The limits a new domain gets.
    pub(super) fn limits_for(&self, dom: DomId) -> Limits {
        if dom == self.cfg.hardware_domain {
            self.cfg.hwdom_limits
        } else {
            self.cfg.domu_limits
        }
    }

    /// Sets a domain's limits (toolstack side). Lowering them below what the
    /// domain holds frees nothing; it only refuses further growth.
    pub fn set_limits(&mut self, dom: DomId, limits: Limits) -> Result<(), super::MgmtError> {
        let d = self.domains.get_mut(&dom).filter(|d| !d.dying).ok_or(super::MgmtError::Invalid)?;
        d.limits = limits;
        Ok(())
    }

    /// Whether the core knows `dom`: `Some(true)` once it is being torn
    /// down (until a new domain with that id is added), `None` if never added.
    pub fn domain_dying(&self, dom: DomId) -> Option<bool> {
        self.domains.get(&dom).map(|d| d.dying)
    }

    /// True when both the core's record and the platform say `dev` is `dom`'s.
    pub(super) fn owns_device(&self, dom: DomId, dev: PciSbdf) -> bool {
        self.devices.get(&dev).is_some_and(|d| d.owner == Some(dom)) && self.plat.device_owner(dev) == Some(dom)
    }

    /// Rule: contexts only for a domain that owns a device to put in them.
    pub(super) fn may_alloc_context(&self, dom: DomId) -> Result<(), Error> {
        if self.devices.keys().any(|dev| self.owns_device(dom, *dev)) {
            Ok(())
        } else {
            Err(Error::Perm)
        }
    }

    /// Rule: room for one more context under the domain's limit.
    pub(super) fn context_room(&self, dom: DomId) -> Result<(), Error> {
        let d = self.domain(dom)?;
        let allocated = (d.contexts.len() as u64).saturating_sub(1) + d.building.is_some() as u64;
        if allocated >= d.limits.contexts as u64 {
            return Err(Error::NoSpc);
        }
        Ok(())
    }

    /// Rule: `dom` may point `dev` at one of its contexts.
    pub(super) fn may_reattach(&self, dom: DomId, dev: PciSbdf) -> Result<(), Error> {
        if self.owns_device(dom, dev) {
            Ok(())
        } else {
            Err(Error::NoEnt)
        }
    }

    /// Rule: what `gfn` of `dom` is, and whether it may be mapped with
    /// `perm`. Nothing is held yet.
    pub(super) fn mappable_frame(&mut self, dom: DomId, gfn: Gfn, perm: Perm) -> Result<Frame, Error> {
        let f = self.plat.frame_of(dom, gfn).ok_or(Error::Perm)?;
        match f.source {
            Source::Own => Ok(f),
            Source::Granted { granter, .. } if granter == dom => Err(Error::Perm),
            Source::Granted { writable: false, .. } if perm.write => Err(Error::Access),
            Source::Granted { .. } => Ok(f),
        }
    }

    /// Page-table pages the domain may still allocate.
    pub(super) fn table_room(&self, dom: DomId) -> u64 {
        self.domains.get(&dom).map_or(0, |d| d.arena_limit.min(d.limits.table_pages).saturating_sub(d.arena_used))
    }

    /// What `dom` holds: its contexts' domain ids, table pages and page
    /// references, and what still awaits an invalidation on its behalf
    /// (a walk of its tables; for tests and the debug dump).
    pub fn counters(&self, dom: DomId) -> Counters {
        let mut c = Counters::default();
        if let Some(d) = self.domains.get(&dom) {
            for ctx in d.contexts.values() {
                c.contexts += 1;
                c.domain_ids += 1;
                c.table_pages += ctx.table.table_pages(&self.mem).unwrap_or(0);
                if let Ok(leaves) = ctx.table.leaves(&self.mem) {
                    c.held_refs += leaves.iter().filter(|l| l.holds_ref).count() as u64;
                }
            }
            if let Some(b) = &d.building {
                c.contexts += 1;
                c.domain_ids += 1;
                c.table_pages += b.table.table_pages(&self.mem).unwrap_or(0);
            }
        }
        let pending = self.held.iter().map(|h| &h.release).chain(self.ready.iter()).chain(self.leaked.iter());
        for r in pending.filter(|r| r.owner == Some(dom)) {
            c.domain_ids += r.dids.len() as u64;
            c.table_pages += r.tables.len() as u64;
            c.held_refs += r.guest.len() as u64;
        }
        c
    }

    /// The whole core: every domain's counters summed, plus the references
    /// the core counted as it took and dropped them (`held_refs` here is
    /// that running count, which a walk cannot miss-count).
    pub fn totals(&self) -> Counters {
        let mut t = Counters::default();
        for dom in self.domains.keys() {
            let c = self.counters(*dom);
            t.contexts += c.contexts;
            t.domain_ids += c.domain_ids;
            t.table_pages += c.table_pages;
        }
        t.held_refs = self.refs_held;
        t
    }

    /// VT-d domain ids allocated (the two reserved ones not counted).
    pub fn domain_ids_in_use(&self) -> usize {
        self.dids.len().saturating_sub(2)
    }

    /// A debug dump: one line per domain (limits, counters), one per
    /// context (`d<dom> ctx<n>`: kind, domain id, pages mapped with a
    /// reference, devices as seg:bus:dev.fn), then the totals.
    pub fn dump(&self, out: &mut dyn Write) -> fmt::Result {
        for (dom, d) in &self.domains {
            let c = self.counters(*dom);
            write!(
                out,
                "d{}{}{}: limits ctx={} pages={}; contexts={} dids={} table-pages={} refs={}",
                dom.0,
                if d.enabled { "" } else { " (off)" },
                if d.dying { " (dying)" } else { "" },
                d.limits.contexts,
                d.limits.table_pages,
                c.contexts,
                c.domain_ids,
                c.table_pages,
                c.held_refs
            )?;
            if let Some(b) = &d.building {
                write!(out, "; ctx{} building at gfn {:#x}", b.ctx_no, b.next.0)?;
            }
            writeln!(out)?;
            // One line per context (a domain's devices do not fit one console line).
            for (n, ctx) in &d.contexts {
                let mapped = ctx.table.leaves(&self.mem).map_or(0, |l| l.iter().filter(|l| l.holds_ref).count());
                write!(out, "d{} ctx{} {:?} did={} mapped={} devs=[", dom.0, n, ctx.kind, ctx.did, mapped)?;
                for (i, dev) in ctx.devices.iter().enumerate() {
                    let sep = if i == 0 { "" } else { " " };
                    write!(out, "{sep}{:04x}:{:02x}:{:02x}.{}", dev.seg, dev.bus, dev.devfn >> 3, dev.devfn & 7)?;
                }
                writeln!(out, "]")?;
            }
        }
        let t = self.totals();
        writeln!(
            out,
            "total: contexts={} dids={} table-pages={} refs={} held-for-invalidation={} to-release={} leaked-behind-broken={}",
            t.contexts,
            self.domain_ids_in_use(),
            t.table_pages,
            t.held_refs,
            self.held.len(),
            self.ready.len(),
            self.leaked.len()
        )
    }
}
