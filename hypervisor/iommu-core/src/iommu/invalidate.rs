//! Invalidation commit and completion: a `Flush` collects what a change
//! made stale (context-cache, IOTLB and device-TLB entries) and what may be
//! freed once that is invalidated (guest page references, table frames,
//! domain ids, arena budget). `Iommu::commit` queues it, [`Iommu::poll`]
//! releases what completed waits cover, and a device-TLB invalidation past
//! its deadline breaks the device and keeps its resources held for good.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use crate::hw::Hardware;
use crate::mem::Memory;
use crate::qi::seq_done;
use crate::types::{DomId, Instant, Mfn, PciSbdf, Sid};
use crate::vtd::{ContextGranularity, Inv, IotlbGranularity};

use super::{Iommu, Platform, MAX_RANGES};

/// Resources freed once one wait descriptor completes.
#[derive(Default)]
pub(super) struct Release {
    /// The domain whose resources these are (for its counters).
    pub(super) owner: Option<DomId>,
    /// Guest page references: the frame and whether a writable one was taken.
    pub(super) guest: Vec<(Mfn, bool)>,
    pub(super) tables: Vec<Mfn>,
    pub(super) dids: Vec<u16>,
    pub(super) budget: Option<(DomId, u64)>,
}

impl Release {
    fn is_empty(&self) -> bool {
        self.guest.is_empty() && self.tables.is_empty() && self.dids.is_empty() && self.budget.is_none()
    }
}

/// A queued wait descriptor and what its completion releases.
pub(super) struct Held {
    seq: u32,
    group: u64,
    /// The ATS device whose device-TLB invalidation this wait covers.
    sid: Option<Sid>,
    deadline: Instant,
    pub(super) release: Release,
}

/// One batch of invalidations and what waits on them.
#[derive(Default)]
pub(super) struct Flush {
    pub(super) context: Vec<(u16, Sid)>,
    pub(super) iotlb_domain: Vec<u16>,
    /// (did, first dfn, pages), merged when contiguous.
    iotlb_pages: Vec<(u16, u64, u64)>,
    /// Device TLBs to invalidate: the listed page runs, or everything.
    devtlb: BTreeMap<Sid, Option<Vec<(u64, u64)>>>,
    pub(super) release: Release,
}

impl Flush {
    pub(super) fn page(&mut self, did: u16, dfn: u64) {
        if let Some(last) = self.iotlb_pages.last_mut() {
            if last.0 == did && last.1 + last.2 == dfn {
                last.2 += 1;
                return;
            }
        }
        self.iotlb_pages.push((did, dfn, 1));
    }

    pub(super) fn devtlb_page(&mut self, sid: Sid, dfn: u64) {
        let e = self.devtlb.entry(sid).or_insert_with(|| Some(Vec::new()));
        if let Some(runs) = e {
            if let Some(last) = runs.last_mut() {
                if last.0 + last.1 == dfn {
                    last.1 += 1;
                    return;
                }
            }
            runs.push((dfn, 1));
        }
    }

    pub(super) fn devtlb_all(&mut self, sid: Sid) {
        self.devtlb.insert(sid, None);
    }

    fn is_empty(&self) -> bool {
        self.context.is_empty()
            && self.iotlb_domain.is_empty()
            && self.iotlb_pages.is_empty()
            && self.devtlb.is_empty()
            && self.release.is_empty()
    }
}

/// Splits `[first, first+count)` into naturally aligned power-of-two chunks.
fn aligned_chunks(mut first: u64, count: u64, out: &mut Vec<(u64, u8)>) {
    let end = first.saturating_add(count);
    while first < end {
        let align = if first == 0 { 63 } else { first.trailing_zeros().min(63) };
        let fit = 63 - (end - first).leading_zeros();
        let order = align.min(fit);
        out.push((first, order as u8));
        first += 1u64 << order;
    }
}

impl<M: Memory, H: Hardware, P: Platform> Iommu<M, H, P> {
    /// Queues a batch: context-cache, IOTLB and a wait; then per ATS device
    /// its device-TLB invalidations and a wait of its own, so a late device
    /// is identified by its wait. Resources are released after the last wait.
    pub(super) fn commit(&mut self, mut f: Flush, now: Instant) {
        if f.is_empty() {
            return;
        }
        let group = self.next_group;
        self.next_group += 1;
        for (did, sid) in core::mem::take(&mut f.context) {
            self.queue.push(Inv::Context(ContextGranularity::Device { did, sid: sid.0 }));
        }
        let mut domains: BTreeSet<u16> = f.iotlb_domain.iter().copied().collect();
        let mut chunks = Vec::new();
        let mut by_did: BTreeMap<u16, Vec<(u64, u8)>> = BTreeMap::new();
        for &(did, first, count) in &f.iotlb_pages {
            if domains.contains(&did) {
                continue;
            }
            chunks.clear();
            aligned_chunks(first, count, &mut chunks);
            by_did.entry(did).or_default().extend_from_slice(&chunks);
        }
        for (did, ch) in &by_did {
            if ch.len() > MAX_RANGES {
                domains.insert(*did);
            }
        }
        for did in &domains {
            self.queue.push(Inv::Iotlb(IotlbGranularity::Domain { did: *did }));
        }
        for (did, ch) in by_did {
            if domains.contains(&did) {
                continue;
            }
            for (first, order) in ch {
                self.queue.push(Inv::Iotlb(IotlbGranularity::Page { did, addr: first << 12, am: order }));
            }
        }
        let mut waits: Vec<(u32, Option<Sid>)> = Vec::new();
        let (w, seq) = self.queue.wait();
        self.queue.push(w);
        waits.push((seq, None));
        for (sid, runs) in core::mem::take(&mut f.devtlb) {
            if self.sid_broken(sid) {
                continue;
            }
            let mut descs = Vec::new();
            if let Some(runs) = runs {
                for (first, count) in runs {
                    aligned_chunks(first, count, &mut descs);
                }
            }
            if descs.is_empty() || descs.len() > MAX_RANGES {
                // S=1 with every address bit below 63 set: all of the device TLB.
                self.queue.push(Inv::DevTlb { sid: sid.0, addr: 0x7fff_ffff_ffff_f000, size: true });
            } else {
                for (first, order) in descs {
                    let (addr, size) = crate::vtd::devtlb_range(first, order);
                    self.queue.push(Inv::DevTlb { sid: sid.0, addr, size });
                }
            }
            let (w, seq) = self.queue.wait();
            self.queue.push(w);
            waits.push((seq, Some(sid)));
        }
        let last = waits.len() - 1;
        let deadline = now.after_ns(self.cfg.devtlb_timeout_ns);
        let mut release = Some(core::mem::take(&mut f.release));
        for (i, (seq, sid)) in waits.into_iter().enumerate() {
            let r = if i == last { release.take().unwrap_or_default() } else { Release::default() };
            self.held.push_back(Held { seq, group, sid, deadline, release: r });
        }
        self.poll(now);
    }

    fn sid_broken(&self, sid: Sid) -> bool {
        self.devices.iter().any(|(k, d)| Sid::from(*k) == sid && d.broken)
    }

    /// Releases invalidated resources, at most `Config::release_budget`
    /// page references and table pages per call, oldest first. A release's
    /// domain ids and arena charge go with its last page, so a domain's
    /// limits count what is still held.
    fn drain_ready(&mut self) {
        let mut budget = self.cfg.release_budget.max(1) as usize;
        while budget > 0 {
            let Some(r) = self.ready.front_mut() else {
                return;
            };
            while budget > 0 {
                let Some((m, writable)) = r.guest.pop() else {
                    break;
                };
                self.plat.put_frame(m, writable);
                self.refs_held = self.refs_held.saturating_sub(1);
                budget -= 1;
            }
            while budget > 0 {
                let Some(t) = r.tables.pop() else {
                    break;
                };
                self.mem.free_page(t);
                budget -= 1;
            }
            if !r.guest.is_empty() || !r.tables.is_empty() {
                return;
            }
            let Some(r) = self.ready.pop_front() else {
                return;
            };
            for did in r.dids {
                self.dids.remove(&did);
                self.hw.release_did(did);
            }
            if let Some((dom, n)) = r.budget {
                if let Some(d) = self.domains.get_mut(&dom) {
                    d.arena_used = d.arena_used.saturating_sub(n);
                }
            }
        }
    }

    /// Advances invalidation: pushes queued descriptors, releases what
    /// completed waits cover (within the release budget), and declares broken any ATS device whose
    /// device-TLB invalidation is older than the time-out (its context entry
    /// is blocked; everything its invalidation covered stays held for good).
    pub fn poll(&mut self, now: Instant) {
        self.hw.service(&mut self.mem);
        // Each round moves descriptors, releases or breaks at least one
        // entry, or stops; the bound covers all of them.
        let rounds = self.held.len() + self.queue.backlog_len() + 1;
        for _ in 0..rounds {
            let moved = self.queue.pump(&mut self.mem, &mut self.hw);
            let done = self.queue.completed(&self.mem);
            while let Some(h) = self.held.front() {
                if !seq_done(done, h.seq) {
                    break;
                }
                if let Some(h) = self.held.pop_front() {
                    if !h.release.is_empty() {
                        self.ready.push_back(h.release);
                    }
                }
            }
            match self.held.front() {
                Some(h) if now >= h.deadline && h.sid.is_some() => {
                    let sid = h.sid.unwrap_or_default();
                    self.break_device(sid, now);
                }
                _ if moved > 0 && self.queue.backlog_len() > 0 => {}
                _ => break,
            }
        }
        self.drain_ready();
    }

    /// Declares the devices behind `sid` broken: everything its late
    /// device-TLB invalidation covered is held for good, their context
    /// entries are made not present, the unit's device-TLB invalidation is
    /// aborted, and the context-cache/IOTLB invalidations are queued behind.
    fn break_device(&mut self, sid: Sid, now: Instant) {
        let groups: BTreeSet<u64> = self.held.iter().filter(|h| h.sid == Some(sid)).map(|h| h.group).collect();
        for h in self.held.iter_mut() {
            if groups.contains(&h.group) && !h.release.is_empty() {
                self.leaked.push(core::mem::take(&mut h.release));
            }
        }
        let devs: Vec<PciSbdf> = self.devices.keys().copied().filter(|k| Sid::from(*k) == sid).collect();
        let mut f = Flush::default();
        for dev in devs {
            let Some(d) = self.devices.get_mut(&dev) else {
                continue;
            };
            if d.broken {
                continue;
            }
            d.broken = true;
            let (owner, ctx_no) = (d.owner, d.ctx);
            if let Some(ctx) = owner.and_then(|o| self.domains.get_mut(&o)).and_then(|dm| dm.contexts.get_mut(&ctx_no))
            {
                ctx.devices.remove(&dev);
                f.context.push((ctx.did, sid));
                f.iotlb_domain.push(ctx.did);
            }
            self.clear_context_entry(sid);
            self.hw.detach(&mut self.mem, sid);
        }
        self.hw.abort_device_tlb(&mut self.mem, sid);
        // Queued behind the aborted wait; processed now that it completes.
        if !f.is_empty() {
            let group = self.next_group;
            self.next_group += 1;
            for (did, s) in core::mem::take(&mut f.context) {
                self.queue.push(Inv::Context(ContextGranularity::Device { did, sid: s.0 }));
            }
            for did in core::mem::take(&mut f.iotlb_domain) {
                self.queue.push(Inv::Iotlb(IotlbGranularity::Domain { did }));
            }
            let (w, seq) = self.queue.wait();
            self.queue.push(w);
            self.held.push_back(Held {
                seq,
                group,
                sid: None,
                deadline: now.after_ns(self.cfg.devtlb_timeout_ns),
                release: Release::default(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_aligned_and_cover() {
        let mut v = Vec::new();
        aligned_chunks(3, 13, &mut v);
        assert_eq!(v, [(3, 0), (4, 2), (8, 3)]);
        let mut v = Vec::new();
        aligned_chunks(0, 1, &mut v);
        assert_eq!(v, [(0, 0)]);
        let mut v = Vec::new();
        aligned_chunks(0, 512, &mut v);
        assert_eq!(v, [(0, 9)]);
    }
}
