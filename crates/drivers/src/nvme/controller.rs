//! Bring-up, reset and shutdown: the blocking sequences of the controller,
//! every wait bounded (CAP.TO for RDY transitions, the admin timeout for
//! admin commands).

use super::regs::{Cc, Csts};
use super::spec::{cns, Cqe, IdentifyController, IdentifyNamespace, Sqe};
use super::*;

impl<R: RegisterIo, D: DmaMapper, C: Clock> Nvme<R, D, C> {
    pub(super) fn csts(&mut self) -> Result<Csts, Error> {
        let csts = Csts(self.regs.read32(offset::CSTS));
        if csts.is_all_ones() {
            return Err(Error::DeviceGone);
        }
        Ok(csts)
    }

    /// Spins until `done(CSTS)` or the deadline; every read checks for a
    /// vanished device.
    pub(super) fn wait_csts(&mut self, timeout: u64, what: Wait, done: impl Fn(Csts) -> bool) -> Result<(), Error> {
        let deadline = self.clock.now().saturating_add(timeout);
        loop {
            let csts = self.csts()?;
            if done(csts) {
                return Ok(());
            }
            if self.clock.now() >= deadline {
                return Err(Error::Timeout(what));
            }
        }
    }

    /// CC.EN = 0 and wait for CSTS.RDY = 0 within CAP.TO (§3.1.5, §7.6.1).
    /// Once this returns `Ok` the controller has stopped all queue
    /// processing and DMA.
    pub(super) fn disable(&mut self) -> Result<(), Error> {
        let cc = Cc(self.regs.read32(offset::CC));
        if cc.enabled() {
            self.regs.write32(offset::CC, cc.with_enable(false).0);
        }
        self.wait_csts(self.cap.timeout_ns(), Wait::Disable, |c| !c.ready())
    }

    /// Programs the admin queues and CC, sets CC.EN = 1 and waits for
    /// CSTS.RDY = 1 within CAP.TO (§7.6.1 steps 2-5).
    pub(super) fn enable(&mut self) -> Result<(), Error> {
        self.admin.reset_rings(&mut self.dma)?;
        self.admin_done = None;
        let depth = self.admin.depth();
        self.regs.write32(offset::AQA, Aqa::new(depth, depth).0);
        self.regs.write64(offset::ASQ, self.admin.sq_bus());
        self.regs.write64(offset::ACQ, self.admin.cq_bus());
        self.regs.write32(offset::CC, Cc::ours().0);
        self.regs.write32(offset::CC, Cc::ours().with_enable(true).0);
        self.wait_csts(self.cap.timeout_ns(), Wait::Enable, |c| c.ready() || c.fatal())?;
        if self.csts()?.fatal() {
            return Err(Error::ControllerFatal);
        }
        Ok(())
    }

    /// Submits an admin command and spins for its completion.
    pub(super) fn admin_sync(&mut self, sqe: Sqe) -> Result<Cqe, Error> {
        let cid = self.admin.submit(&mut self.dma, &mut self.regs, sqe, AdminSlot::Sync).map_err(|(e, _)| e)?;
        let deadline = self.clock.now().saturating_add(self.config.admin_timeout_ns);
        loop {
            self.reap_admin();
            if let Some((done, cqe)) = self.admin_done {
                if done == cid {
                    self.admin_done = None;
                    return match cqe.result() {
                        Ok(()) => Ok(cqe),
                        Err(s) => Err(s.into_error()),
                    };
                }
            }
            if self.csts()?.fatal() {
                return Err(Error::ControllerFatal);
            }
            if self.clock.now() >= deadline {
                // The slot stays taken: the id must not be reused while the
                // controller may still answer it. Reset clears it.
                return Err(Error::Timeout(Wait::AdminCommand));
            }
        }
    }

    pub(super) fn identify(&mut self) -> Result<(), Error> {
        let page = self.scratch.bus().0;
        self.admin_sync(Sqe::identify(cns::CONTROLLER, 0, page))?;
        let mut buf = [0u8; 4096];
        self.dma.read(&self.scratch, 0, &mut buf)?;
        let ctrl = IdentifyController::parse(&buf);
        // SQES/CQES: required (3:0) ≤ our size ≤ maximum (7:4); 0 means a
        // pre-1.2 controller that leaves them unset.
        let fits = |v: u8, ours: u32| v == 0 || (u32::from(v & 0xF) <= ours && ours <= u32::from(v >> 4));
        if !fits(ctrl.sqes, Cc::SQES_LOG2) || !fits(ctrl.cqes, Cc::CQES_LOG2) {
            return Err(Error::UnsupportedController);
        }
        let mdts = ctrl.max_transfer(self.cap.min_page_size()).unwrap_or(u64::MAX);
        let mut namespaces = Vec::new();
        let mut skipped = 0u32;
        for nsid in self.active_namespaces(ctrl.nn)? {
            match self.identify_namespace(nsid, mdts)? {
                Some(ns) if namespaces.len() < MAX_NAMESPACES => namespaces.push(ns),
                _ => skipped += 1,
            }
        }
        let primary = namespaces.iter().position(|n| n.nsid == self.config.nsid).ok_or(Error::UnsupportedController)?;
        let ns = namespaces[primary];
        self.primary = primary;
        self.info.namespaces = namespaces;
        self.info.skipped_namespaces = skipped;
        let max = ns.max_transfer;
        self.info.vid = ctrl.vid;
        self.info.serial = ctrl.serial;
        self.info.model = ctrl.model;
        self.info.firmware = ctrl.firmware;
        self.info.nsid = ns.nsid;
        self.info.block_size = ns.block_size;
        self.info.blocks = ns.blocks;
        self.info.max_transfer = max;
        self.info.volatile_write_cache = ctrl.volatile_write_cache();
        self.info.dsm = ctrl.oncs.dsm();
        self.info.write_zeroes = ctrl.oncs.write_zeroes();
        self.info.sgl = ctrl.sgl_supported();
        // PRP lists sized for the largest transfer of any namespace.
        let largest = self.info.namespaces.iter().map(|n| n.max_transfer).max().unwrap_or(max);
        self.max_prp_entries = largest / PAGE_SIZE + 2;
        Ok(())
    }

    /// Active NSIDs (Identify CNS 02h), ascending, at most
    /// [`MAX_NAMESPACES`] + 1 (one more tells "there were more"). A
    /// controller without the list (NVMe 1.0) is probed as 1..=NN.
    pub(super) fn active_namespaces(&mut self, nn: u32) -> Result<Vec<u32>, Error> {
        let page = self.scratch.bus().0;
        let mut buf = [0u8; 4096];
        self.dma.write(&self.scratch, 0, &buf)?;
        match self.admin_sync(Sqe::identify(cns::ACTIVE_NAMESPACES, 0, page)) {
            Ok(_) => {
                self.dma.read(&self.scratch, 0, &mut buf)?;
                let mut ids: Vec<u32> = Vec::new();
                for c in buf.chunks_exact(4).take(MAX_NAMESPACES + 1) {
                    let id = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                    // The list ends at the first 0 and must ascend; NSIDs
                    // 0xFFFFFFFF (broadcast) and beyond NN are not namespaces.
                    if id == 0 || id == u32::MAX || ids.last().is_some_and(|&l| id <= l) || (nn != 0 && id > nn) {
                        break;
                    }
                    ids.push(id);
                }
                Ok(ids)
            }
            Err(Error::Status(_)) => Ok((1..=nn.clamp(1, MAX_NAMESPACES as u32 + 1)).collect()),
            Err(e) => Err(e),
        }
    }

    /// Identify Namespace `nsid`: `None` if it cannot be served (inactive,
    /// metadata, blocks outside 512 B..4 KiB, zero size).
    pub(super) fn identify_namespace(&mut self, nsid: u32, mdts: u64) -> Result<Option<Namespace>, Error> {
        let page = self.scratch.bus().0;
        let mut buf = [0u8; 4096];
        self.dma.write(&self.scratch, 0, &buf)?;
        match self.admin_sync(Sqe::identify(cns::NAMESPACE, nsid, page)) {
            Ok(_) => {}
            Err(Error::Status(_)) => return Ok(None),
            Err(e) => return Err(e),
        }
        self.dma.read(&self.scratch, 0, &mut buf)?;
        let ns = IdentifyNamespace::parse(&buf);
        let lbads = ns.lbaf.lbads();
        // Blocks from 512 B to one page; no metadata (we have no MPTR use).
        if !(9..=12).contains(&lbads) || ns.lbaf.metadata_size() != 0 || ns.nsze == 0 {
            return Ok(None);
        }
        let block_size = 1u32 << lbads;
        let max = (self.config.max_transfer as u64).min(mdts);
        let max = (max / u64::from(block_size)) * u64::from(block_size);
        if max == 0 {
            return Ok(None);
        }
        // NLB is 16 bits: at most 65536 blocks per command.
        let max_transfer = max.min(65536 * u64::from(block_size)) as usize;
        Ok(Some(Namespace { nsid, block_size, blocks: ns.nsze, max_transfer }))
    }

    /// Set Features / Number of Queues; returns the number of I/O queue
    /// pairs granted (§5.21.1.7: DW0 NCQA 31:16, NSQA 15:0, 0-based).
    pub(super) fn set_queue_count(&mut self, wanted: u16) -> Result<u16, Error> {
        let cqe = self.admin_sync(Sqe::set_number_of_queues(wanted))?;
        let nsqa = (cqe.dw0 & 0xFFFF) as u16;
        let ncqa = (cqe.dw0 >> 16) as u16;
        Ok(wanted.min(nsqa.saturating_add(1)).min(ncqa.saturating_add(1)))
    }

    /// Creates every I/O CQ, then its SQ (§7.6.1 step 7-8).
    pub(super) fn create_io_queues(&mut self) -> Result<(), Error> {
        for i in 0..self.io.len() {
            let (qid, depth, cq, sq) = {
                let q = &self.io[i];
                (q.qid(), q.depth(), q.cq_bus(), q.sq_bus())
            };
            self.admin_sync(Sqe::create_io_cq(qid, depth, cq))?;
            self.admin_sync(Sqe::create_io_sq(qid, depth, qid, sq))?;
        }
        Ok(())
    }

    /// Orderly shutdown (§7.6.2): delete every I/O SQ, then every I/O CQ,
    /// then CC.SHN = 01b and wait for CSTS.SHST = 10b within CAP.TO. Call
    /// once I/O has drained (every token completed); commands still in
    /// flight are failed back with [`Error::Reset`]. Afterwards the driver
    /// accepts no more commands.
    pub fn shutdown(&mut self) -> Result<(), Error> {
        let mut first_err = None;
        if self.state == State::Running {
            for i in 0..self.io.len() {
                let qid = self.io[i].qid();
                if let Err(e) = self.admin_sync(Sqe::delete_io_sq(qid)) {
                    first_err.get_or_insert(e);
                }
            }
            for i in 0..self.io.len() {
                let qid = self.io[i].qid();
                if let Err(e) = self.admin_sync(Sqe::delete_io_cq(qid)) {
                    first_err.get_or_insert(e);
                }
            }
        }
        self.state = State::Failed;
        for qi in 0..self.io.len() {
            for (_, slot) in self.io[qi].drain() {
                let c = self.finish(qi, slot, Err(Error::Reset));
                self.pending[qi].push_back(c);
            }
        }
        let cc = Cc(self.regs.read32(offset::CC));
        self.regs.write32(offset::CC, cc.with_normal_shutdown().0);
        self.wait_csts(self.cap.timeout_ns(), Wait::Shutdown, |c| c.shutdown_complete())?;
        first_err.map_or(Ok(()), Err)
    }

    /// Resets the controller after a failure: disable, fail every in-flight
    /// command back with [`Error::Reset`], then bring the same queues up
    /// again. If the controller does not stop or come back, the driver is
    /// marked failed (every later submit is refused) — but in-flight
    /// commands are still returned through `poll`.
    pub fn reset(&mut self) {
        self.stats.resets += 1;
        let stopped = self.disable();
        if stopped.is_err() {
            // Not stopped: its queue and PRP pages stay out of reuse.
            self.state = State::Failed;
        }
        // The controller has stopped (or is beyond help): hand every
        // command back. Buffers are unmapped, which under an IOMMU also
        // revokes a runaway device's access; if it did not stop they are
        // abandoned (`DmaMapper::abandon`): their memory is never reused.
        for qi in 0..self.io.len() {
            for (_, slot) in self.io[qi].drain() {
                let c = self.finish(qi, slot, Err(Error::Reset));
                self.pending[qi].push_back(c);
            }
        }
        let _ = self.admin.drain();
        self.admin_done = None;
        self.next_check.iter_mut().for_each(|n| *n = 0);
        self.unstamped.iter_mut().for_each(Vec::clear);
        if stopped.is_err() {
            return;
        }
        self.state = match self.restart() {
            Ok(()) => State::Running,
            Err(_) => State::Failed,
        };
    }

    pub(super) fn restart(&mut self) -> Result<(), Error> {
        self.enable()?;
        let want = self.io.len() as u16;
        if self.set_queue_count(want)? < want {
            return Err(Error::ControllerFailed);
        }
        for q in 0..self.io.len() {
            self.io[q].reset_rings(&mut self.dma)?;
        }
        self.create_io_queues()
    }
}
