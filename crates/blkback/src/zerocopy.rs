//! Zero-copy data: the disk reads and writes the guest's granted pages
//! directly. Used when the ring has persistent grants, the grants were
//! mapped with device access (each [`Mapping`] has a bus address) and the
//! disk takes scatter lists ([`BlockDevice::scatter_gather`]) of the
//! request's shape ([`BlockDevice::accepts_sg`]); anything else keeps the
//! copy path. No disk buffer, no zero-fill, no copy.
//!
//! Pinning: a grant that zero-copy work of the ring names, from the moment
//! the work is built until the disk completed it, is pinned: the
//! least-recently-used bound never releases it (the pinned set is found by
//! a scan of the ring's work, only when the bound has to release
//! something: nothing is counted per request). A disconnect releases only unpinned
//! mappings; the pinned ones are parked with their ring's serial and
//! unmapped when the last request naming them completes. A request the
//! disk never finishes (drain deadline passed), or one failed back by a
//! controller that could not be stopped, keeps its pages mapped forever:
//! the device may still reach them, so they are never handed back.

use crate::backend::PAGE;
use crate::datapath::{split_segments, DevRef, Part, RingCtx, Step, Turn};
use crate::engine::Core;
use crate::request::Segment;
use alloc::collections::BTreeSet;
use alloc::vec::Vec;
use drivers::block::{BlockDevice, SgEntry};
use drivers::hal::BusAddr;
use xen::evtchn::EventOps;
use xen::gnttab::{GrantOps, LocalFrames, Mapping};
use xen::shmem::SharedMem;
use xen::types::GrantRef;

/// Whether a disk's result leaves the guest's pages out of the device's
/// reach: everything but a controller that failed without stopping.
pub(crate) fn device_done(result: &Result<(), drivers::Error>) -> bool {
    !matches!(result, Err(drivers::Error::ControllerFailed))
}

impl<P: SharedMem, B: AsRef<[u8]> + AsMut<[u8]> + LocalFrames> RingCtx<P, B> {
    /// Builds the parts of a read or write whose data the disk moves
    /// straight to or from the guest's pages, pinning their grants.
    /// `Ok(false)`: not possible for this request (nothing changed; the
    /// copy path serves it). `Ok(true)`: the parts are built and `segs`
    /// handed to them (left empty).
    pub(crate) fn zero_copy_parts<D: BlockDevice<Buffer = B>, G: GrantOps<Page = P>, E: EventOps>(
        &mut self,
        t: &mut Turn<'_, D, G, E>,
        d: &mut DevRef<'_>,
        segs: &mut Vec<Segment>,
        step: &Step,
        built: &mut Vec<Part<B>>,
    ) -> Result<bool, ()> {
        if !self.persistent || !t.core.zerocopy || segs.is_empty() || !t.disk.scatter_gather() {
            return Ok(false);
        }
        let (lba, write, fua) = match *step {
            Step::Read { lba } => (lba, false, false),
            Step::Write { lba, fua } => (lba, true, fua),
            _ => return Ok(false),
        };
        let mut sg = self.sg_pool.pop().unwrap_or_default();
        sg.clear();
        // The usual case: every page already mapped (persistent hits) with
        // a bus address. The scatter list is built straight from the
        // cache, as `map_grants` and the general path below would build it
        // (same tick, same counters); anything else takes that path.
        let tick = self.tick + 1;
        for s in segs.iter() {
            match self.pgrants.get_mut(s.gref().0) {
                Some((Mapping { bus: Some(bus), .. }, last)) if *bus % PAGE as u64 == 0 && *bus != 0 => {
                    *last = tick;
                    sg.push(SgEntry { bus: BusAddr(*bus + s.offset() as u64), len: s.len() as u32 });
                }
                _ => break,
            }
        }
        let usable = if sg.len() == segs.len() {
            self.tick = tick;
            t.stats.persistent_hits += segs.len() as u64;
            true
        } else {
            sg.clear();
            self.zero_copy_list(t, d, segs, &mut sg)?
        };
        if !usable {
            crate::datapath::recycle(&mut self.sg_pool, sg);
            return Ok(false);
        }
        // The parts the disk's transfer limit asks for, each of whole
        // blocks and of a shape the disk can describe.
        let bs = u64::from(t.disk.block_size().max(512));
        let max = t.disk.max_transfer().max(PAGE);
        let total: usize = segs.iter().map(|s| s.len()).sum();
        if total <= max {
            // One part (the common case): the lists as they are.
            if !(total as u64).is_multiple_of(bs) || !t.disk.accepts_sg(&sg) {
                return Ok(false);
            }
            let step = if write { Step::Write { lba, fua } } else { Step::Read { lba } };
            built.push((core::mem::take(segs), step, total, None, Some(sg)));
            t.stats.zero_copy += 1;
            return Ok(true);
        }
        let parts = split_segments(core::mem::take(segs), max);
        let mut lists: Vec<Vec<SgEntry>> = Vec::with_capacity(parts.len());
        let mut at = 0;
        for part in &parts {
            let list = sg[at..at + part.len()].to_vec();
            at += part.len();
            let len: usize = part.iter().map(|s| s.len()).sum();
            if !(len as u64).is_multiple_of(bs) || !t.disk.accepts_sg(&list) {
                *segs = parts.into_iter().flatten().collect();
                return Ok(false);
            }
            lists.push(list);
        }
        let mut offset = 0u64;
        for (part, list) in parts.into_iter().zip(lists) {
            let len: usize = part.iter().map(|s| s.len()).sum();
            let lba = lba + offset / bs;
            offset += len as u64;
            let step = if write { Step::Write { lba, fua } } else { Step::Read { lba } };
            built.push((part, step, len, None, Some(list)));
        }
        t.stats.zero_copy += built.len() as u64;
        Ok(true)
    }

    /// The general path of [`zero_copy_parts`](Self::zero_copy_parts):
    /// maps what is not mapped yet, then fills `sg` if every page is kept
    /// mapped (not transient) with a page-aligned bus address (its span
    /// inside the page was checked by the parser). Returns whether it did.
    fn zero_copy_list<D: BlockDevice<Buffer = B>, G: GrantOps<Page = P>, E: EventOps>(
        &mut self,
        t: &mut Turn<'_, D, G, E>,
        d: &mut DevRef<'_>,
        segs: &[Segment],
        sg: &mut Vec<SgEntry>,
    ) -> Result<bool, ()> {
        let mut grefs = core::mem::take(&mut self.grefs);
        grefs.clear();
        grefs.extend(segs.iter().map(|s| GrantRef(s.gref().0)));
        let maps = self.map_grants(t, d, &grefs, false);
        self.grefs = grefs;
        let mut maps = maps?;
        for (s, m) in segs.iter().zip(maps.iter()) {
            match m {
                Some((Mapping { bus: Some(bus), .. }, false)) if bus % PAGE as u64 == 0 && *bus != 0 => {
                    sg.push(SgEntry { bus: BusAddr(bus + s.offset() as u64), len: s.len() as u32 });
                }
                _ => sg.clear(),
            }
            if sg.is_empty() {
                break;
            }
        }
        let usable = sg.len() == segs.len();
        self.release_transient(t, &maps);
        maps.clear();
        self.maps = maps;
        Ok(usable)
    }

    /// Grants the device has or will get by zero-copy: named by this
    /// ring's work on the disk (`tokens`) or waiting to go down, or
    /// reachable by a controller that failed without stopping.
    pub(crate) fn pinned(&self, tokens: &crate::inflight::Tokens<B>) -> BTreeSet<u32> {
        let mut out = self.poisoned.clone();
        let on_disk = tokens.iter().map(|(_, (s, w))| (*s, w)).filter(|(s, _)| *s == self.serial);
        for w in on_disk.map(|(_, w)| w).chain(self.deferred.iter()).filter(|w| w.zc) {
            out.extend(w.segs.iter().map(|s| s.gref().0));
        }
        out
    }

    /// The ring goes away: its mappings still pinned by requests on the
    /// disk (`on_disk`: their grants, once per request naming them) are
    /// parked under its serial; every other mapping is returned, to unmap.
    pub(crate) fn park_pinned<D: BlockDevice>(&mut self, core: &mut Core<D>, on_disk: &[u32]) -> Vec<Mapping> {
        let mut out = Vec::new();
        for (gref, (m, _)) in self.pgrants.take_all() {
            let pins = if self.poisoned.contains(&gref) {
                u32::MAX // never unmapped: the device may still reach it
            } else {
                on_disk.iter().filter(|g| **g == gref).count() as u32
            };
            if pins > 0 {
                core.parked.insert((self.serial, gref), (m, pins));
            } else {
                out.push(m);
            }
        }
        out
    }
}

impl<D: BlockDevice> Core<D> {
    /// Grants named by work of ring `serial` that is on the disk of vbd
    /// `vid` by zero-copy (once per piece of work naming them).
    pub(crate) fn pinned_on_disk(&self, vid: u32, serial: u64) -> Vec<u32> {
        let mut out = Vec::new();
        for (_, (s, w)) in self.tokens.iter().filter(|(k, _)| k.0 == vid) {
            if *s == serial && w.zc {
                out.extend(w.segs.iter().map(|s| s.gref().0));
            }
        }
        out
    }
}
