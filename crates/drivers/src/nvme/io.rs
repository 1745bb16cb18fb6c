//! Split-phase I/O: building commands (PRP lists, SGLs, DSM ranges),
//! submission, completion reaping, and command timeouts (Abort, then a
//! controller reset that fails every in-flight command back).

use alloc::vec::Vec;

use super::spec::{DsmRange, SglDescriptor, Sqe};
use super::*;
use crate::hal::DmaSegment;

impl<R: RegisterIo, D: DmaMapper, C: Clock> Nvme<R, D, C> {
    pub(super) fn take_page(&mut self) -> Result<DmaRegion, Error> {
        match self.page_pool.pop() {
            Some(p) => Ok(p),
            None => Ok(self.dma.alloc_zeroed(1)?),
        }
    }

    /// Builds the command for `request` (mapping its buffer and writing PRP
    /// lists / DSM ranges into pool pages). On error everything is undone.
    pub(super) fn prepare(
        &mut self,
        ns: Namespace,
        request: &mut BlockRequest<D::Buffer>,
    ) -> Result<(Sqe, Option<Mapping>, Vec<DmaRegion>), Error> {
        let nsid = ns.nsid;
        let bs = u64::from(ns.block_size);
        let capacity = ns.blocks;
        let max_transfer = ns.max_transfer;
        match request {
            BlockRequest::Flush => Ok((Sqe::flush(nsid), None, Vec::new())),
            BlockRequest::Discard { lba, blocks } => {
                if !self.info.dsm {
                    return Err(Error::NotSupported);
                }
                if *blocks == 0 || *blocks > u64::from(u32::MAX) {
                    return Err(Error::BadBuffer);
                }
                check_range(*lba, *blocks, capacity)?;
                let page = self.take_page()?;
                let range = DsmRange { attributes: 0, blocks: *blocks as u32, slba: *lba };
                if let Err(e) = self.dma.write(&page, 0, &range.to_bytes()) {
                    self.page_pool.push(page);
                    return Err(e.into());
                }
                let sqe = Sqe::dsm_deallocate(nsid, 1, page.bus().0);
                Ok((sqe, None, alloc::vec![page]))
            }
            BlockRequest::WriteZeroes { lba, blocks } => {
                if !self.info.write_zeroes {
                    return Err(Error::NotSupported);
                }
                if *blocks == 0 || *blocks > 65536 {
                    return Err(Error::BadBuffer);
                }
                check_range(*lba, *blocks, capacity)?;
                Ok((Sqe::write_zeroes(nsid, *lba, *blocks as u32), None, Vec::new()))
            }
            BlockRequest::ReadSg { lba, sg } | BlockRequest::WriteSg { lba, sg, .. } => {
                let len = crate::block::sg_len(sg);
                if sg.is_empty() || len == 0 || !(len as u64).is_multiple_of(bs) || len > max_transfer {
                    return Err(Error::BadBuffer);
                }
                let blocks = len as u64 / bs;
                let lba = *lba;
                check_range(lba, blocks, capacity)?;
                // The caller's memory, already device-accessible: nothing
                // to map; one descriptor (or PRP entry run) per entry, from
                // a list kept for its capacity (nothing allocated).
                let mut segs = core::mem::take(&mut self.sg_segs);
                segs.clear();
                segs.extend(sg.iter().map(|e| DmaSegment { bus: e.bus, len: e.len as usize }));
                let sqe = match request {
                    BlockRequest::WriteSg { fua, .. } => Sqe::write(nsid, lba, blocks as u32, *fua),
                    _ => Sqe::read(nsid, lba, blocks as u32),
                };
                let built = if self.info.sgl && self.config.use_sgl {
                    self.build_sgl(&segs, sqe)
                } else {
                    self.build_prp(&segs, sqe)
                };
                self.sg_segs = segs;
                let (sqe, pages) = built?;
                Ok((sqe, None, pages))
            }
            BlockRequest::Read { lba, buffer } | BlockRequest::Write { lba, buffer, .. } => {
                let len = buffer.len();
                if len == 0 || !(len as u64).is_multiple_of(bs) || len > max_transfer {
                    return Err(Error::BadBuffer);
                }
                let blocks = len as u64 / bs;
                check_range(*lba, blocks, capacity)?;
                let lba = *lba;
                let (dir, sqe) = match request {
                    BlockRequest::Write { fua, .. } => {
                        (DmaDirection::ToDevice, Sqe::write(nsid, lba, blocks as u32, *fua))
                    }
                    _ => (DmaDirection::FromDevice, Sqe::read(nsid, lba, blocks as u32)),
                };
                let buffer = request.buffer_mut().ok_or(Error::BadBuffer)?;
                let mapping = self.dma.map(buffer, dir)?;
                let built = if self.info.sgl && self.config.use_sgl {
                    self.build_sgl(mapping.segments(), sqe)
                } else {
                    self.build_prp(mapping.segments(), sqe)
                };
                match built {
                    Ok((sqe, pages)) => Ok((sqe, Some(mapping), pages)),
                    Err(e) => {
                        let buffer = request.buffer_mut().ok_or(Error::BadBuffer)?;
                        let _ = self.dma.unmap(mapping, buffer);
                        Err(e)
                    }
                }
            }
        }
    }

    /// Whether `sg` can be described as this driver would: SGL data
    /// blocks (dword aligned, at most one page of descriptors) or PRP
    /// entries (NVMe Base §4.3: only the first may start inside a page and
    /// only the last may end inside one). Nothing is allocated.
    pub(super) fn sg_fits(&self, sg: &[crate::block::SgEntry]) -> bool {
        let len = crate::block::sg_len(sg);
        if sg.is_empty() || len == 0 || len > self.info.max_transfer {
            return false;
        }
        if self.info.sgl && self.config.use_sgl {
            return sg.len() <= PAGE_SIZE / SglDescriptor::SIZE
                && sg.iter().all(|e| e.bus.0.is_multiple_of(4) && e.len > 0 && e.len.is_multiple_of(4));
        }
        let ps = PAGE_SIZE as u64;
        let last = sg.len() - 1;
        let mut entries = 0usize;
        for (i, e) in sg.iter().enumerate() {
            let (start, Some(end)) = (e.bus.0, e.bus.0.checked_add(u64::from(e.len))) else { return false };
            if e.len == 0
                || (i == 0 && !start.is_multiple_of(4))
                || (i > 0 && !start.is_multiple_of(ps))
                || (i < last && !end.is_multiple_of(ps))
            {
                return false;
            }
            entries += (end.div_ceil(ps) - start / ps) as usize;
        }
        entries <= self.max_prp_entries
    }

    /// One Data Block descriptor for a contiguous buffer; otherwise a Last
    /// Segment descriptor pointing to a pool page of Data Block descriptors
    /// (up to 256, one page: more than any transfer we allow).
    pub(super) fn build_sgl(&mut self, segs: &[DmaSegment], mut sqe: Sqe) -> Result<(Sqe, Vec<DmaRegion>), Error> {
        let block = |bus: u64, len: usize| -> Result<SglDescriptor, Error> {
            // SGLS 10b asks dword alignment; our buffers are block-aligned.
            if !bus.is_multiple_of(4) || len == 0 || !len.is_multiple_of(4) {
                return Err(Error::BadBuffer);
            }
            Ok(SglDescriptor::data_block(bus, u32::try_from(len).map_err(|_| Error::BadBuffer)?))
        };
        match segs {
            [] => Err(Error::BadBuffer),
            [one] => {
                sqe.set_sgl(block(one.bus.0, one.len)?);
                Ok((sqe, Vec::new()))
            }
            many if many.len() > PAGE_SIZE / SglDescriptor::SIZE => Err(Error::BadBuffer),
            many => {
                let mut bytes = core::mem::take(&mut self.list_bytes);
                bytes.clear();
                let described: Result<(), Error> = many.iter().try_for_each(|s| {
                    bytes.extend_from_slice(&block(s.bus.0, s.len)?.to_bytes());
                    Ok(())
                });
                let written = described.and_then(|()| {
                    let page = self.take_page()?;
                    match self.dma.write(&page, 0, &bytes) {
                        Ok(()) => Ok(page),
                        Err(e) => {
                            self.page_pool.push(page);
                            Err(e.into())
                        }
                    }
                });
                self.list_bytes = bytes;
                let page = written?;
                sqe.set_sgl(SglDescriptor::last_segment(page.bus().0, many.len()));
                Ok((sqe, alloc::vec![page]))
            }
        }
    }

    pub(super) fn build_prp(&mut self, segs: &[DmaSegment], mut sqe: Sqe) -> Result<(Sqe, Vec<DmaRegion>), Error> {
        // One or two pages (4 KiB requests): no list, nothing allocated.
        if let Some((prp1, prp2)) = prp::direct(segs, PAGE_SIZE, self.max_prp_entries) {
            sqe.prp1 = prp1;
            sqe.prp2 = prp2;
            return Ok((sqe, Vec::new()));
        }
        // The entries and list bytes go through lists kept for their
        // capacity; only the list pages' own Vec is allocated.
        let mut entries = core::mem::take(&mut self.prp_entries);
        let built = prp::entries_into(segs, PAGE_SIZE, self.max_prp_entries, &mut entries)
            .and_then(|()| self.prp_lists(&entries, sqe));
        self.prp_entries = entries;
        built
    }

    /// PRP1/PRP2 for `entries` and the list pages they need (from the
    /// pool), written as [`prp::build`] lays them out.
    fn prp_lists(&mut self, entries: &[u64], mut sqe: Sqe) -> Result<(Sqe, Vec<DmaRegion>), Error> {
        let (first, need) = match entries {
            [] => return Err(Error::BadBuffer),
            [one] => (*one, 0),
            [one, two] => {
                sqe.prp1 = *one;
                sqe.prp2 = *two;
                return Ok((sqe, Vec::new()));
            }
            [one, ..] => (*one, prp::list_pages_needed(entries.len(), PAGE_SIZE)),
        };
        if need == 0 {
            sqe.prp1 = first;
            sqe.prp2 = 0;
            return Ok((sqe, Vec::new()));
        }
        let mut pages = Vec::with_capacity(need);
        for _ in 0..need {
            match self.take_page() {
                Ok(p) => pages.push(p),
                Err(e) => {
                    self.page_pool.append(&mut pages);
                    return Err(e);
                }
            }
        }
        let mut bytes = core::mem::take(&mut self.list_bytes);
        let mut written = Ok(());
        for (i, page) in pages.iter().enumerate() {
            let next = pages.get(i + 1).map(DmaRegion::bus);
            if page.bus().page_offset(PAGE_SIZE) != 0 || !prp::list_page_into(entries, i, next, PAGE_SIZE, &mut bytes) {
                written = Err(Error::BadBuffer);
                break;
            }
            if let Err(e) = self.dma.write(page, 0, &bytes) {
                written = Err(e.into());
                break;
            }
        }
        self.list_bytes = bytes;
        match written {
            Ok(()) => {
                sqe.prp1 = first;
                sqe.prp2 = pages[0].bus().0;
                Ok((sqe, pages))
            }
            Err(e) => {
                self.page_pool.append(&mut pages);
                Err(e)
            }
        }
    }

    /// Queues `request` on I/O queue `queue` (0-based). `Ok` promises one
    /// completion from [`Nvme::poll`] on that queue; `Err` hands the
    /// request back untouched.
    pub fn submit(
        &mut self,
        queue: u16,
        request: BlockRequest<D::Buffer>,
    ) -> Result<Token, (Error, BlockRequest<D::Buffer>)> {
        self.submit_to(self.primary, queue, request)
    }

    /// Like [`Nvme::submit`], on namespace `ns` (an index into
    /// [`Info::namespaces`]), its LBAs in that namespace's block size.
    pub fn submit_to(
        &mut self,
        ns: usize,
        queue: u16,
        mut request: BlockRequest<D::Buffer>,
    ) -> Result<Token, (Error, BlockRequest<D::Buffer>)> {
        let Some(&ns) = self.info.namespaces.get(ns) else {
            return Err((Error::OutOfRange, request));
        };
        if self.state == State::Failed {
            return Err((Error::ControllerFailed, request));
        }
        let qi = usize::from(queue);
        match self.io.get(qi) {
            None => return Err((Error::NoSuchQueue, request)),
            Some(q) if q.is_full() => return Err((Error::QueueFull, request)),
            Some(_) => {}
        }
        let (sqe, mapping, pages) = match self.prepare(ns, &mut request) {
            Ok(v) => v,
            Err(e) => return Err((e, request)),
        };
        let token = Token(self.next_token);
        let slot = IoSlot { token, request, mapping, pages, deadline: None, abort: AbortState::NotSent };
        match self.io[qi].submit(&mut self.dma, &mut self.regs, sqe, slot) {
            Ok(cid) => {
                self.next_token += 1;
                // Its deadline is set at the next poll.
                self.unstamped[qi].push(cid);
                Ok(token)
            }
            Err((e, slot)) => {
                let c = self.finish(qi, slot, Err(e));
                Err((e, c.request))
            }
        }
    }

    /// Releases what a finished command held and builds its completion.
    pub(super) fn finish(
        &mut self,
        qi: usize,
        mut slot: IoSlot<D::Buffer>,
        result: Result<(), Error>,
    ) -> BlockCompletion<D::Buffer> {
        let mut result = result;
        if let Some(mapping) = slot.mapping.take() {
            if let Some(buffer) = slot.request.buffer_mut() {
                if self.state == State::Failed {
                    // The controller may still be running this command: the
                    // buffer it targets must never be reused.
                    self.dma.abandon(mapping, buffer);
                } else if let Err(e) = self.dma.unmap(mapping, buffer) {
                    if result.is_ok() {
                        result = Err(e.into());
                    }
                }
            }
        }
        if self.state == State::Failed
            && matches!(slot.request, BlockRequest::ReadSg { .. } | BlockRequest::WriteSg { .. })
        {
            // The controller may still reach the caller's memory: say so
            // (the caller must keep it device-accessible, never reuse it).
            result = Err(Error::ControllerFailed);
        }
        if self.state == State::Failed {
            self.quarantine.append(&mut slot.pages);
        } else {
            self.page_pool.append(&mut slot.pages);
        }
        BlockCompletion { token: slot.token, queue: qi as u16, result, request: slot.request }
    }

    /// Next completion on I/O queue `queue`, if any. Also reaps the admin
    /// queue, and checks the queue's commands against their deadlines:
    /// a command past `io_timeout_ns` gets an Abort; one still missing
    /// `abort_timeout_ns` after that triggers a controller reset (as does
    /// CSTS.CFS or a full admin queue when an Abort is due).
    pub fn poll(&mut self, queue: u16, now: Nanos) -> Option<BlockCompletion<D::Buffer>> {
        let qi = usize::from(queue);
        self.stamp_deadlines(qi, now);
        if let Some(c) = self.pending.get_mut(qi)?.pop_front() {
            return Some(c);
        }
        if self.state == State::Failed {
            return None;
        }
        // I/O first, so a command that finished is seen before an Abort
        // answer about it.
        self.reap_io(qi);
        // Only Aborts are answered here (blocking sequences reap their own
        // commands); with none out, there is nothing to reap. A stray entry
        // is seen (and counted spurious) with the next admin command.
        if self.admin.in_flight() > 0 {
            self.reap_admin();
        }
        if self.pending[qi].is_empty() && now >= self.next_check[qi] && self.check_timeouts(qi, now) {
            self.reset();
        }
        self.pending[qi].pop_front()
    }

    /// Moves every posted completion of queue `qi` to `pending`.
    pub(super) fn reap_io(&mut self, qi: usize) {
        let mut consumed = false;
        // Bounded: at most one lap of the ring per call.
        for _ in 0..self.io[qi].depth() {
            let Some(cqe) = self.io[qi].peek(&self.dma) else {
                break;
            };
            self.io[qi].pop(&cqe);
            consumed = true;
            let aborting = cqe.sq_id == self.io[qi].qid()
                && self.io[qi].get_mut(cqe.cid).is_some_and(|s| s.abort == AbortState::Sent);
            let slot = if cqe.sq_id != self.io[qi].qid() {
                None
            } else if aborting {
                // Our Abort for this id is still out: park the id until its
                // answer is reaped.
                self.io[qi].take_and_hold(cqe.cid)
            } else {
                self.io[qi].take(cqe.cid)
            };
            match slot {
                Some(slot) => {
                    let result = cqe.result().map_err(|s| s.into_error());
                    let c = self.finish(qi, slot, result);
                    self.pending[qi].push_back(c);
                }
                None => self.stats.spurious_completions += 1,
            }
        }
        if consumed {
            self.io[qi].ring_cq_doorbell(&mut self.regs);
        }
    }

    /// Reaps the admin queue: records `Sync` answers, and Abort answers on
    /// the commands they name.
    pub(super) fn reap_admin(&mut self) {
        let mut consumed = false;
        for _ in 0..self.admin.depth() {
            let Some(cqe) = self.admin.peek(&self.dma) else {
                break;
            };
            self.admin.pop(&cqe);
            consumed = true;
            match self.admin.take(cqe.cid) {
                Some(AdminSlot::Sync) => self.admin_done = Some((cqe.cid, cqe)),
                Some(AdminSlot::Abort { queue, cid }) => {
                    // §5.1: DW0 bit 0 set = command not aborted.
                    let aborted = cqe.result().is_ok() && cqe.dw0 & 1 == 0;
                    // The id was not reused while the Abort was out (see
                    // `take_and_hold`), so a live slot is the same command.
                    // Either way the command keeps its abort deadline: a
                    // command "not aborted" may still complete (or may
                    // already have, its completion not yet reaped); if it
                    // has not come back by then, the controller is reset.
                    if !aborted {
                        self.stats.aborts_refused += 1;
                    }
                    if let Some(q) = self.io.get_mut(queue) {
                        match q.get_mut(cid) {
                            Some(slot) => slot.abort = AbortState::Answered,
                            None => q.release(cid),
                        }
                    }
                }
                None => self.stats.spurious_completions += 1,
            }
        }
        if consumed {
            self.admin.ring_cq_doorbell(&mut self.regs);
        }
    }

    /// Sets the deadlines of the commands submitted on queue `qi` since the
    /// last poll (the first poll that sees a command starts its clock).
    fn stamp_deadlines(&mut self, qi: usize, now: Nanos) {
        let Some(cids) = self.unstamped.get_mut(qi) else { return };
        if cids.is_empty() {
            return;
        }
        let deadline = now.saturating_add(self.config.io_timeout_ns);
        for cid in cids.drain(..) {
            if let Some(slot) = self.io[qi].get_mut(cid) {
                if slot.deadline.is_none() {
                    slot.deadline = Some(deadline);
                    self.next_check[qi] = self.next_check[qi].min(deadline);
                }
            }
        }
    }

    /// Stamps and checks deadlines on queue `qi`; sends Aborts; records
    /// the earliest deadline left (until then, polls skip this scan: a
    /// completion only makes it later; `stamp_deadlines` lowers it). Returns
    /// true if the controller must be reset.
    pub(super) fn check_timeouts(&mut self, qi: usize, now: Nanos) -> bool {
        let io_timeout = self.config.io_timeout_ns;
        let mut overdue = Vec::new();
        let mut need_reset = false;
        let mut next = Nanos::MAX;
        for (cid, slot) in self.io[qi].iter_mut() {
            match slot.deadline {
                None => slot.deadline = Some(now.saturating_add(io_timeout)),
                Some(d) if now >= d => match slot.abort {
                    AbortState::NotSent => overdue.push(cid),
                    AbortState::Sent | AbortState::Answered => need_reset = true,
                },
                Some(_) => {}
            }
            next = next.min(slot.deadline.unwrap_or(0));
        }
        // Overdue commands get an Abort and a new deadline below; if that
        // fails the controller is reset (which asks for a scan again).
        self.next_check[qi] = if overdue.is_empty() { next } else { now };
        if need_reset || overdue.is_empty() {
            return need_reset;
        }
        self.stats.timeouts += overdue.len() as u32;
        match self.csts() {
            Ok(c) if !c.fatal() => {}
            _ => return true,
        }
        let qid = self.io[qi].qid();
        for cid in overdue {
            let sent = self
                .admin
                .submit(&mut self.dma, &mut self.regs, Sqe::abort(qid, cid), AdminSlot::Abort { queue: qi, cid })
                .is_ok();
            if !sent {
                return true; // admin queue full or broken: escalate
            }
            self.stats.aborts_sent += 1;
            if let Some(slot) = self.io[qi].get_mut(cid) {
                slot.abort = AbortState::Sent;
                slot.deadline = Some(now.saturating_add(self.config.abort_timeout_ns));
            }
        }
        false
    }
}
