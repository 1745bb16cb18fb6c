//! Moving a request's data between the guest's granted pages and disk
//! buffers: batched grant copy into the buffer's own frames, or grant
//! mapping (kept mapped for persistent grants, least recently used
//! released past a bound; mapped and unmapped per batch otherwise).
//! Indirect segment pages are copied once into private memory before they
//! are parsed. A failed grant fails only its request (logged once per
//! device).

use crate::abi::MAX_INDIRECT_PAGES_PER_REQUEST;
use crate::backend::{MAX_PERSISTENT_PER_RING, PAGE};
use crate::datapath::{DevRef, Part, RingCtx, Turn, Work};
use crate::request::{self, Segment};
use alloc::vec::Vec;
use drivers::block::BlockDevice;
use xen::evtchn::EventOps;
use xen::gnttab::{CopyEnd, CopyOp, GrantOps, LocalFrames, MapRequest, Mapping};
use xen::shmem::SharedMem;
use xen::types::{DomId, GrantRef};

/// Copy elements moving the guest spans `(gref, offset in page, length)`,
/// in order, to or from consecutive bytes of `buf` from its start. Each
/// element stays within one page on both sides: a span is cut where the
/// buffer crosses a frame (a span never crosses a guest page: the core
/// checked `offset + len <= 4096`). `None` if the buffer names no frames.
pub(crate) fn copy_ops<B: LocalFrames>(
    buf: &B,
    dom: DomId,
    spans: impl Iterator<Item = (GrantRef, usize, usize)>,
    to_guest: bool,
) -> Option<Vec<CopyOp>> {
    let mut ops = Vec::new();
    let mut at = 0usize;
    for (gref, off, len) in spans {
        let mut done = 0;
        // Each round moves at least one byte (n > 0 below), so this ends
        // after at most `len` rounds; in practice one or two.
        while done < len {
            let (pfn, in_frame) = buf.local_frame(at + done)?;
            let n = (len - done).min(PAGE.saturating_sub(usize::from(in_frame))).min(PAGE.saturating_sub(off + done));
            if n == 0 {
                return None;
            }
            let guest = CopyEnd::Grant { dom, gref, offset: (off + done) as u16 };
            let local = CopyEnd::Local { pfn, offset: in_frame };
            let (src, dst) = if to_guest { (local, guest) } else { (guest, local) };
            ops.push(CopyOp { src, dst, len: n as u16 });
            done += n;
        }
        at += len;
    }
    Some(ops)
}

/// The guest spans of data segments.
pub(crate) fn spans(segs: &[Segment]) -> impl Iterator<Item = (GrantRef, usize, usize)> + '_ {
    segs.iter().map(|s| (GrantRef(s.gref().0), s.offset(), s.len()))
}

impl<P: SharedMem, B: AsRef<[u8]> + AsMut<[u8]> + LocalFrames> RingCtx<P, B> {
    /// Reads the indirect pages once into private memory and parses their
    /// segments.
    pub(crate) fn indirect_segments<D: BlockDevice<Buffer = B>, G: GrantOps<Page = P>, E: EventOps>(
        &mut self,
        t: &mut Turn<'_, D, G, E>,
        d: &mut DevRef<'_>,
        ind: &request::IndirectRequest,
    ) -> Result<Vec<Segment>, ()> {
        let mut grefs = [GrantRef(0); MAX_INDIRECT_PAGES_PER_REQUEST];
        let n = ind.pages().len().min(MAX_INDIRECT_PAGES_PER_REQUEST);
        for (g, r) in grefs.iter_mut().zip(ind.pages()) {
            *g = GrantRef(r.0);
        }
        let grefs = &grefs[..n];
        // By copy into a buffer of our own frames (at most 8 pages, freed
        // at once), when this ring copies and the buffer names frames.
        let by_copy = if self.copies(t) { (t.core.alloc)(n * PAGE) } else { None };
        let ops = by_copy.as_ref().and_then(|b| copy_ops(b, d.fe_dom, grefs.iter().map(|g| (*g, 0, PAGE)), false));
        let parsed = match (by_copy, ops) {
            (Some(mut buf), Some(ops)) => {
                self.grant_copy(t, d, &ops)?;
                buf.sync_for_cpu();
                parse_pages(ind, buf.as_ref(), n, t.info)
            }
            _ => {
                // Copied into this ring's page list (allocated once; every
                // byte parsed is overwritten by the copy first).
                let mut maps = self.map_grants(t, d, grefs, true)?;
                let mut pages = core::mem::take(&mut self.indirect_pages);
                if pages.len() < n * PAGE {
                    pages.resize(n * PAGE, 0);
                }
                for (k, (m, _)) in maps.iter().flatten().enumerate() {
                    t.g.page(m).read(0, &mut pages[k * PAGE..(k + 1) * PAGE]);
                }
                self.release_transient(t, &maps);
                maps.clear();
                self.maps = maps;
                let parsed = parse_pages(ind, &pages, n, t.info);
                self.indirect_pages = pages;
                parsed
            }
        };
        parsed.map_err(|rej| {
            limited!(d.log, t.e.now(), warn, "vbd {}: refused an indirect request: {}", d.be, rej.reason.as_str());
        })
    }

    /// One batch of grant copies; any failed element fails the request
    /// (logged once per device).
    fn grant_copy<D: BlockDevice, G: GrantOps<Page = P>, E: EventOps>(
        &mut self,
        t: &mut Turn<'_, D, G, E>,
        d: &mut DevRef<'_>,
        ops: &[CopyOp],
    ) -> Result<(), ()> {
        if ops.is_empty() {
            return Ok(());
        }
        let res = t.g.copy_batch(ops);
        t.stats.grant_copies += 1;
        let failed = ops.iter().zip(res.iter().map(Some).chain(core::iter::repeat(None))).find_map(|(op, r)| match r {
            Some(Ok(())) => None,
            Some(Err(err)) => Some((op, Some(*err))),
            None => Some((op, None)), // no answer for this element
        });
        let Some((op, err)) = failed else { return Ok(()) };
        let gref = match (op.src, op.dst) {
            (CopyEnd::Grant { gref, .. }, _) | (_, CopyEnd::Grant { gref, .. }) => gref.0,
            _ => 0,
        };
        limited!(
            d.log,
            t.e.now(),
            warn,
            "vbd {}: grant copy with grant {gref} of domain {} failed: {err:?}",
            d.be,
            d.fe_dom
        );
        Err(())
    }

    /// Fills the buffers of a write's parts from the guest's pages: by one
    /// grant copy batch for the whole request, or by mapping.
    pub(crate) fn fill_from_guest<D: BlockDevice<Buffer = B>, G: GrantOps<Page = P>, E: EventOps>(
        &mut self,
        t: &mut Turn<'_, D, G, E>,
        d: &mut DevRef<'_>,
        parts: &mut [Part<B>],
    ) -> Result<(), ()> {
        if self.copies(t) {
            let mut ops = Vec::new();
            let mut framed = true;
            for (segs, _, _, buf, _) in parts.iter() {
                match buf.as_ref().map(|b| copy_ops(b, d.fe_dom, spans(segs), false)) {
                    Some(Some(o)) => ops.extend(o),
                    Some(None) => framed = false,
                    None => {}
                }
            }
            if framed {
                self.grant_copy(t, d, &ops)?;
                for (_, _, _, buf, _) in parts.iter_mut() {
                    if let Some(b) = buf {
                        b.sync_for_cpu();
                    }
                }
                return Ok(());
            }
        }
        for (segs, _, _, buf, _) in parts.iter_mut() {
            if let Some(b) = buf {
                self.map_from_guest(t, d, segs, b.as_mut())?;
            }
        }
        Ok(())
    }

    /// Releases the least recently used persistent mappings until at most
    /// `cap` (and [`MAX_PERSISTENT_PER_RING`]) are left, sparing those
    /// used at `spare` (the request being served) and those pinned by
    /// zero-copy work on the disk. Returns how many went.
    pub(crate) fn shrink_persistent<G: GrantOps<Page = P>>(
        &mut self,
        g: &mut G,
        tokens: &crate::inflight::Tokens<B>,
        cap: usize,
        spare: Option<u64>,
    ) -> usize {
        let cap = cap.min(MAX_PERSISTENT_PER_RING);
        if self.pgrants.len() <= cap {
            return 0;
        }
        // Found only here, off the hot path: no bookkeeping per request.
        let pinned = self.pinned(tokens);
        let mut ages: Vec<(u64, u32)> = self
            .pgrants
            .iter()
            .filter(|(k, (_, t))| Some(*t) != spare && !pinned.contains(k))
            .map(|(k, (_, t))| (*t, k))
            .collect();
        ages.sort_unstable();
        let excess = self.pgrants.len() - cap;
        let oldest: Vec<u32> = ages.iter().take(excess).map(|(_, k)| *k).collect();
        let victims = self.pgrants.remove_all(&oldest);
        let _ = g.unmap_batch(&victims);
        victims.len()
    }

    /// Moves a finished read's data to the guest's pages.
    pub(crate) fn deliver_read<D: BlockDevice<Buffer = B>, G: GrantOps<Page = P>, E: EventOps>(
        &mut self,
        t: &mut Turn<'_, D, G, E>,
        d: &mut DevRef<'_>,
        work: &mut Work<B>,
    ) -> Result<(), ()> {
        let Some(buf) = work.buf.as_mut() else { return Ok(()) };
        if self.copies(t) {
            if let Some(ops) = copy_ops(buf, d.fe_dom, spans(&work.segs), true) {
                buf.sync_for_copy();
                return self.grant_copy(t, d, &ops);
            }
        }
        let mut grefs = core::mem::take(&mut self.grefs);
        grefs.clear();
        grefs.extend(work.segs.iter().map(|s| GrantRef(s.gref().0)));
        let maps = self.map_grants(t, d, &grefs, false);
        self.grefs = grefs;
        let mut maps = maps?;
        let data = buf.as_ref();
        let mut off = 0;
        for (s, (m, _)) in work.segs.iter().zip(maps.iter().flatten()) {
            t.g.page(m).write(s.offset(), &data[off..off + s.len()]);
            off += s.len();
        }
        self.release_transient(t, &maps);
        maps.clear();
        self.maps = maps;
        Ok(())
    }

    /// Maps `grefs` (persistent cache first, the rest in one batch).
    /// Returns each mapping and whether it is transient (unmap after use),
    /// in this ring's list of mappings (all `Some`; hand it back to
    /// `self.maps` after use to keep its capacity).
    pub(crate) fn map_grants<D: BlockDevice<Buffer = B>, G: GrantOps<Page = P>, E: EventOps>(
        &mut self,
        t: &mut Turn<'_, D, G, E>,
        d: &mut DevRef<'_>,
        grefs: &[GrantRef],
        readonly: bool,
    ) -> Result<Vec<Option<(Mapping, bool)>>, ()> {
        self.tick += 1;
        let tick = self.tick;
        let mut out = core::mem::take(&mut self.maps);
        out.clear();
        let mut missing = Vec::new();
        for (k, gr) in grefs.iter().enumerate() {
            if self.persistent {
                if let Some((m, last)) = self.pgrants.get_mut(gr.0) {
                    *last = tick;
                    out.push(Some((*m, false)));
                    t.stats.persistent_hits += 1;
                    continue;
                }
            }
            out.push(None);
            missing.push(k);
        }
        if !missing.is_empty() {
            // Persistent grants are granted read-write by blkfront.
            let ro = readonly && !self.persistent;
            let reqs: Vec<MapRequest> =
                missing.iter().map(|&k| MapRequest { dom: d.fe_dom, gref: grefs[k], readonly: ro }).collect();
            let res = t.g.map_batch(&reqs);
            t.stats.grant_maps += 1;
            let mut failed = false;
            for (&k, res) in missing.iter().zip(res) {
                match res {
                    Ok(m) => {
                        let keep = self.persistent && !self.pgrants.contains_key(grefs[k].0);
                        if keep {
                            self.pgrants.insert(grefs[k].0, (m, tick));
                        }
                        out[k] = Some((m, !keep));
                    }
                    Err(err) => {
                        failed = true;
                        limited!(
                            d.log,
                            t.e.now(),
                            warn,
                            "vbd {}: cannot map grant {} of domain {}: {err:?}",
                            d.be,
                            grefs[k].0,
                            d.fe_dom
                        );
                    }
                }
            }
            // An element without an answer failed too.
            failed |= out.iter().any(Option::is_none);
            // Past the bound (this ring's share of the global mapping
            // budget): release the least recently used mappings.
            self.shrink_persistent(t.g, &t.core.tokens, t.core.persistent_cap, Some(tick));
            if failed {
                self.release_transient(t, &out);
                out.clear();
                self.maps = out;
                return Err(());
            }
        }
        Ok(out)
    }

    pub(crate) fn release_transient<D: BlockDevice, G: GrantOps<Page = P>, E: EventOps>(
        &mut self,
        t: &mut Turn<'_, D, G, E>,
        maps: &[Option<(Mapping, bool)>],
    ) {
        if !maps.iter().flatten().any(|(_, tr)| *tr) {
            return;
        }
        let tr: Vec<Mapping> = maps.iter().flatten().filter(|(_, tr)| *tr).map(|(m, _)| *m).collect();
        let _ = t.g.unmap_batch(&tr);
    }

    fn map_from_guest<D: BlockDevice<Buffer = B>, G: GrantOps<Page = P>, E: EventOps>(
        &mut self,
        t: &mut Turn<'_, D, G, E>,
        d: &mut DevRef<'_>,
        segs: &[Segment],
        buf: &mut [u8],
    ) -> Result<(), ()> {
        let mut grefs = core::mem::take(&mut self.grefs);
        grefs.clear();
        grefs.extend(segs.iter().map(|s| GrantRef(s.gref().0)));
        let maps = self.map_grants(t, d, &grefs, true);
        self.grefs = grefs;
        let mut maps = maps?;
        let mut off = 0;
        for (s, (m, _)) in segs.iter().zip(maps.iter().flatten()) {
            t.g.page(m).read(s.offset(), &mut buf[off..off + s.len()]);
            off += s.len();
        }
        self.release_transient(t, &maps);
        maps.clear();
        self.maps = maps;
        Ok(())
    }
}

/// Parses the segments of an indirect request from its `n` pages, copied
/// one after another into `bytes`.
fn parse_pages(
    ind: &request::IndirectRequest,
    bytes: &[u8],
    n: usize,
    info: &crate::DiskInfo,
) -> Result<Vec<Segment>, request::Reject> {
    let mut refs: [&[u8]; MAX_INDIRECT_PAGES_PER_REQUEST] = [&[]; MAX_INDIRECT_PAGES_PER_REQUEST];
    for (r, page) in refs.iter_mut().zip(bytes.chunks(PAGE).take(n)) {
        *r = page;
    }
    request::parse_indirect_segments(ind, &refs[..n], info)
}
