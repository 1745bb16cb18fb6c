//! A fake NVMe controller for host tests, modelled loosely on QEMU's
//! hw/nvme behaviour: registers, admin and I/O queues processed on doorbell
//! writes (or on `step()`), a sparse data store, and fault injection.
//! Driver contract violations (bad doorbell values, CQ head past posted
//! entries, malformed PRPs, DMA outside mapped memory) panic.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;

use super::dma::Memory;
use crate::hal::{RegisterIo, PAGE_SIZE};
use crate::nvme::prp;
use crate::nvme::regs::{offset, Aqa, Cap, Cc, Csts};
use crate::nvme::spec::{admin, cns, feature, nvm, rw, Cqe, DsmRange, Oncs, SglDescriptor, Sqe};

/// Controller shape.
#[derive(Clone, Copy, Debug)]
pub struct FakeNvmeConfig {
    /// CAP.MQES (0-based).
    pub mqes: u16,
    pub dstrd: u8,
    /// BAR0 size in bytes.
    pub bar_size: usize,
    /// CAP.TO in 500 ms units.
    pub to: u8,
    pub mdts: u8,
    pub oncs: u16,
    pub vwc: bool,
    /// log2 block size.
    pub lbads: u8,
    pub blocks: u64,
    /// I/O queue pairs the controller grants at most.
    pub max_io_queues: u16,
    /// CSTS reads before RDY follows CC.EN.
    pub ready_delay_reads: u32,
    /// Advertise SGL support (Identify Controller SGLS = 01b).
    pub sgl: bool,
    /// A second namespace (NSID 2): (log2 block size, blocks).
    pub ns2: Option<(u8, u64)>,
    /// Answer Identify CNS 02h (active namespace list); false plays an
    /// NVMe 1.0 controller, probed by NSID instead.
    pub active_list: bool,
}

impl Default for FakeNvmeConfig {
    fn default() -> Self {
        FakeNvmeConfig {
            mqes: 63,
            dstrd: 0,
            bar_size: 0x4000,
            to: 2,
            mdts: 5,
            oncs: Oncs::DATASET_MANAGEMENT | Oncs::WRITE_ZEROES,
            vwc: true,
            lbads: 9,
            blocks: 4096,
            max_io_queues: 4,
            ready_delay_reads: 3,
            sgl: false,
            ns2: None,
            active_list: true,
        }
    }
}

/// A fault applied to the next I/O command fetched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Injection {
    /// Complete with this status (no data transferred).
    Status { sct: u8, sc: u8, dnr: bool },
    /// Swallow the command: no completion until it is aborted or the
    /// controller is reset.
    Drop,
}

/// CSTS.RDY misbehaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stall {
    None,
    /// RDY never becomes 1 after CC.EN = 1.
    NeverReady,
    /// RDY never becomes 0 after CC.EN = 0.
    NeverDisable,
}

#[derive(Debug)]
struct Sq {
    base: u64,
    size: u16,
    head: u16,
    tail: u16,
    cqid: u16,
}

#[derive(Debug)]
struct Cq {
    base: u64,
    size: u16,
    head: u16,
    tail: u16,
    phase: bool,
    backlog: VecDeque<Cqe>,
}

#[derive(Debug)]
struct Inner {
    cfg: FakeNvmeConfig,
    /// Commands whose data was described by an SGL.
    sgl_commands: core::cell::Cell<u64>,
    mem: Memory,
    cc: Cc,
    csts: Csts,
    aqa: u32,
    asq: u64,
    acq: u64,
    countdown: u32,
    stall: Stall,
    sqs: BTreeMap<u16, Sq>,
    cqs: BTreeMap<u16, Cq>,
    /// Blocks by (NSID, LBA).
    store: BTreeMap<(u32, u64), Vec<u8>>,
    auto: bool,
    injections: VecDeque<Injection>,
    held: Vec<(u16, Sqe)>,
    abort_succeeds: bool,
    log: Vec<(u16, Sqe)>,
    resets: u32,
    admin_paused: bool,
    gone: bool,
}

/// Handle to the fake controller; clones share it. The driver gets one as
/// its [`RegisterIo`], the test keeps one to inject faults and inspect.
#[derive(Clone, Debug)]
pub struct FakeNvme(Rc<RefCell<Inner>>);

impl FakeNvme {
    pub fn new(mem: Memory, cfg: FakeNvmeConfig) -> Self {
        FakeNvme(Rc::new(RefCell::new(Inner {
            cfg,
            sgl_commands: core::cell::Cell::new(0),
            mem,
            cc: Cc(0),
            csts: Csts(0),
            aqa: 0,
            asq: 0,
            acq: 0,
            countdown: 0,
            stall: Stall::None,
            sqs: BTreeMap::new(),
            cqs: BTreeMap::new(),
            store: BTreeMap::new(),
            auto: true,
            injections: VecDeque::new(),
            held: Vec::new(),
            abort_succeeds: true,
            log: Vec::new(),
            resets: 0,
            admin_paused: false,
            gone: false,
        })))
    }
    /// Process queues on doorbell writes (default) or only in `step()`.
    pub fn set_auto(&self, auto: bool) {
        self.0.borrow_mut().auto = auto;
    }
    /// Processes every submission queue now.
    pub fn step(&self) {
        self.0.borrow_mut().process();
    }
    pub fn inject(&self, i: Injection) {
        self.0.borrow_mut().injections.push_back(i);
    }
    /// Surprise removal: every register reads all-ones, writes vanish.
    pub fn set_gone(&self, gone: bool) {
        self.0.borrow_mut().gone = gone;
    }
    /// Leave the admin SQ unprocessed (slow admin path).
    pub fn set_admin_paused(&self, paused: bool) {
        self.0.borrow_mut().admin_paused = paused;
    }
    pub fn set_abort_succeeds(&self, ok: bool) {
        self.0.borrow_mut().abort_succeeds = ok;
    }
    pub fn set_stall(&self, s: Stall) {
        self.0.borrow_mut().stall = s;
    }
    /// Sets CSTS.CFS (controller fatal status).
    pub fn set_fatal(&self, fatal: bool) {
        let mut i = self.0.borrow_mut();
        i.csts = if fatal { Csts(i.csts.0 | Csts::CFS) } else { Csts(i.csts.0 & !Csts::CFS) };
    }
    /// Commands swallowed by [`Injection::Drop`] and not yet answered.
    pub fn held(&self) -> usize {
        self.0.borrow().held.len()
    }
    /// Every command fetched, with its queue id.
    pub fn commands(&self) -> Vec<(u16, Sqe)> {
        self.0.borrow().log.clone()
    }
    /// CC.EN 1 → 0 transitions.
    /// Data commands that used an SGL instead of PRPs.
    pub fn sgl_commands(&self) -> u64 {
        self.0.borrow().sgl_commands.get()
    }
    pub fn resets(&self) -> u32 {
        self.0.borrow().resets
    }
    /// Live I/O submission queues.
    pub fn io_queues(&self) -> usize {
        self.0.borrow().sqs.keys().filter(|&&q| q != 0).count()
    }
    /// Contents of block `lba` (zeroes if never written).
    pub fn block(&self, lba: u64) -> Vec<u8> {
        let i = self.0.borrow();
        let bs = 1usize << i.cfg.lbads;
        i.store.get(&(1, lba)).cloned().unwrap_or_else(|| vec![0; bs])
    }
    /// Contents of block `lba` of namespace `nsid`.
    pub fn ns_block(&self, nsid: u32, lba: u64) -> Vec<u8> {
        let i = self.0.borrow();
        let bs = i.geometry(nsid).map_or(512, |(l, _)| 1usize << l);
        i.store.get(&(nsid, lba)).cloned().unwrap_or_else(|| vec![0; bs])
    }
    /// Posts a completion naming `cid` on queue `qid` that no one asked for.
    pub fn post_spurious(&self, qid: u16, cid: u16) {
        let mut i = self.0.borrow_mut();
        let cqe = Cqe { sq_id: qid, cid, ..Cqe::default() };
        i.post(qid, cqe);
    }
}

impl Inner {
    fn cap(&self) -> Cap {
        Cap::build(self.cfg.mqes, true, self.cfg.to, self.cfg.dstrd, 0, 4)
    }

    fn csts_read(&mut self) -> u32 {
        let want = self.cc.enabled();
        if self.csts.ready() != want {
            let stalled = match self.stall {
                Stall::NeverReady => want,
                Stall::NeverDisable => !want,
                Stall::None => false,
            };
            if !stalled {
                if self.countdown > 0 {
                    self.countdown -= 1;
                } else if want {
                    self.csts = Csts(self.csts.0 | Csts::RDY);
                } else {
                    self.csts = Csts(self.csts.0 & !Csts::RDY);
                }
            }
        }
        self.csts.0
    }

    fn cc_write(&mut self, v: u32) {
        let new = Cc(v);
        let old = self.cc;
        self.cc = new;
        if new.shn() != 0 {
            self.csts = Csts(self.csts.0 | Csts::SHST_COMPLETE);
        }
        if old.enabled() && !new.enabled() {
            // Controller reset: all queues and outstanding commands vanish.
            self.resets += 1;
            self.sqs.clear();
            self.cqs.clear();
            self.held.clear();
            self.countdown = self.cfg.ready_delay_reads;
        } else if !old.enabled() && new.enabled() {
            self.countdown = self.cfg.ready_delay_reads;
            let aqa = Aqa(self.aqa);
            let bad = self.asq == 0
                || self.acq == 0
                || !self.asq.is_multiple_of(PAGE_SIZE as u64)
                || !self.acq.is_multiple_of(PAGE_SIZE as u64)
                || new.iosqes() != 6
                || new.iocqes() != 4
                || new.mps() != 0
                || new.css() != 0;
            if bad {
                self.csts = Csts(self.csts.0 | Csts::CFS);
                return;
            }
            self.check_mapped(self.asq, usize::from(aqa.sq_entries()) * Sqe::SIZE, "admin SQ");
            self.check_mapped(self.acq, usize::from(aqa.cq_entries()) * Cqe::SIZE, "admin CQ");
            self.sqs.insert(0, Sq { base: self.asq, size: aqa.sq_entries(), head: 0, tail: 0, cqid: 0 });
            self.cqs.insert(
                0,
                Cq { base: self.acq, size: aqa.cq_entries(), head: 0, tail: 0, phase: true, backlog: VecDeque::new() },
            );
        }
    }

    fn check_mapped(&self, addr: u64, len: usize, what: &str) {
        assert!(self.mem.borrow().is_mapped(addr, len), "{what} at {addr:#x} is not mapped DMA memory");
    }

    fn doorbell(&mut self, off: usize, v: u32) {
        let stride = 4usize << self.cfg.dstrd;
        let rel = off - offset::DOORBELL_BASE;
        assert!(rel.is_multiple_of(stride), "doorbell write at {off:#x} off the stride");
        let idx = rel / stride;
        let qid = (idx / 2) as u16;
        assert!(self.csts.ready() && self.cc.enabled(), "doorbell {off:#x} while controller disabled");
        if idx.is_multiple_of(2) {
            let sq = self.sqs.get_mut(&qid).unwrap_or_else(|| panic!("SQ {qid} tail doorbell: no such queue"));
            assert!(v < u32::from(sq.size), "SQ {qid} tail {v} beyond size {}", sq.size);
            sq.tail = v as u16;
            if self.auto {
                self.process();
            }
        } else {
            let cq = self.cqs.get_mut(&qid).unwrap_or_else(|| panic!("CQ {qid} head doorbell: no such queue"));
            assert!(v < u32::from(cq.size), "CQ {qid} head {v} beyond size {}", cq.size);
            let size = u32::from(cq.size);
            let posted = (u32::from(cq.tail) + size - u32::from(cq.head)) % size;
            let consumed = (v + size - u32::from(cq.head)) % size;
            assert!(consumed <= posted, "CQ {qid} head moved past posted entries ({consumed} > {posted})");
            cq.head = v as u16;
            // Room again: post what waited.
            while let Some(cqe) = {
                let cq = self.cqs.get_mut(&qid).expect("cq");
                if (cq.tail + 1) % cq.size != cq.head {
                    cq.backlog.pop_front()
                } else {
                    None
                }
            } {
                self.write_cqe(qid, cqe);
            }
        }
    }

    fn process(&mut self) {
        if !self.csts.ready() {
            return;
        }
        // Bounded: each pass consumes entries; rings are finite.
        loop {
            let mut progressed = false;
            let qids: Vec<u16> = self.sqs.keys().copied().collect();
            for qid in qids {
                if qid == 0 && self.admin_paused {
                    continue;
                }
                let Some(sq) = self.sqs.get_mut(&qid) else {
                    continue;
                };
                if sq.head == sq.tail {
                    continue;
                }
                let addr = sq.base + u64::from(sq.head) * Sqe::SIZE as u64;
                sq.head = (sq.head + 1) % sq.size;
                let (sqhd, cqid) = (sq.head, sq.cqid);
                let mut b = [0u8; 64];
                self.mem.borrow().read(addr, &mut b);
                let sqe = Sqe::from_bytes(&b);
                self.log.push((qid, sqe));
                progressed = true;
                let result = if qid == 0 { Some(self.admin(&sqe)) } else { self.io(qid, &sqe) };
                if let Some((dw0, sct, sc)) = result {
                    let cqe = Cqe {
                        dw0,
                        dw1: 0,
                        sq_head: sqhd,
                        sq_id: qid,
                        cid: sqe.cid(),
                        status: Cqe::status_word(false, sct, sc, sct != 0 || sc != 0),
                    };
                    self.post(cqid, cqe);
                }
            }
            if !progressed {
                break;
            }
        }
    }

    fn post(&mut self, cqid: u16, cqe: Cqe) {
        let Some(cq) = self.cqs.get_mut(&cqid) else {
            return;
        };
        if (cq.tail + 1) % cq.size == cq.head || !cq.backlog.is_empty() {
            cq.backlog.push_back(cqe);
            return;
        }
        self.write_cqe(cqid, cqe);
    }

    fn write_cqe(&mut self, cqid: u16, mut cqe: Cqe) {
        let cq = self.cqs.get_mut(&cqid).expect("cq");
        cqe.status = (cqe.status & !1) | u16::from(cq.phase);
        let addr = cq.base + u64::from(cq.tail) * Cqe::SIZE as u64;
        cq.tail = (cq.tail + 1) % cq.size;
        if cq.tail == 0 {
            cq.phase = !cq.phase;
        }
        self.mem.borrow_mut().write(addr, &cqe.to_bytes());
    }

    /// Chunks of guest memory a command's PRPs describe for `len` bytes.
    fn prp_chunks(&self, sqe: &Sqe, len: usize) -> Vec<(u64, usize)> {
        if sqe.psdt() == 1 {
            return self.sgl_chunks(sqe, len);
        }
        assert_eq!(sqe.psdt(), 0, "fake supports PRPs and SGLs (PSDT 01b) only");
        let mem = self.mem.borrow();
        prp::walk(sqe.prp1, sqe.prp2, len, PAGE_SIZE, |addr, n| {
            let mut raw = vec![0u8; n * 8];
            mem.read(addr, &mut raw);
            Some(raw.chunks(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect())
        })
        .unwrap_or_else(|| panic!("malformed PRP in {sqe:?}"))
    }

    /// Chunks an SGL describes: one Data Block, or a Last Segment of Data
    /// Blocks. Anything else, or a length mismatch, is a driver bug.
    fn sgl_chunks(&self, sqe: &Sqe, len: usize) -> Vec<(u64, usize)> {
        assert!(self.cfg.sgl, "SGL used but not advertised");
        self.sgl_commands.set(self.sgl_commands.get() + 1);
        let d = sqe.sgl1();
        let blocks = match d.kind {
            SglDescriptor::DATA_BLOCK => vec![d],
            SglDescriptor::LAST_SEGMENT => {
                assert!(
                    (d.length as usize).is_multiple_of(SglDescriptor::SIZE) && d.length > 0,
                    "bad segment length in {d:?}"
                );
                let mut raw = vec![0u8; d.length as usize];
                self.mem.borrow().read(d.address, &mut raw);
                raw.chunks(SglDescriptor::SIZE)
                    .map(|c| SglDescriptor::from_bytes(c.try_into().expect("16 bytes")))
                    .inspect(|b| assert_eq!(b.kind, SglDescriptor::DATA_BLOCK, "nested segments are not used"))
                    .collect()
            }
            other => panic!("unexpected SGL descriptor type {other:#x}"),
        };
        let total: usize = blocks.iter().map(|b| b.length as usize).sum();
        assert_eq!(total, len, "SGL describes {total} bytes for a {len}-byte transfer");
        blocks.iter().map(|b| (b.address, b.length as usize)).collect()
    }

    fn dma_out(&self, sqe: &Sqe, data: &[u8]) {
        let mut done = 0;
        for (addr, n) in self.prp_chunks(sqe, data.len()) {
            self.mem.borrow_mut().write(addr, &data[done..done + n]);
            done += n;
        }
    }

    fn dma_in(&self, sqe: &Sqe, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        let mut done = 0;
        for (addr, n) in self.prp_chunks(sqe, len) {
            self.mem.borrow().read(addr, &mut out[done..done + n]);
            done += n;
        }
        out
    }

    /// Executes an admin command: (DW0, SCT, SC).
    /// (log2 block size, blocks) of namespace `nsid`, if it exists.
    fn geometry(&self, nsid: u32) -> Option<(u8, u64)> {
        match nsid {
            1 => Some((self.cfg.lbads, self.cfg.blocks)),
            2 => self.cfg.ns2,
            _ => None,
        }
    }

    fn admin(&mut self, sqe: &Sqe) -> (u32, u8, u8) {
        const OK: (u32, u8, u8) = (0, 0, 0);
        const INVALID_FIELD: (u32, u8, u8) = (0, 0, 0x02);
        match sqe.opcode() {
            admin::IDENTIFY => {
                let mut page = vec![0u8; 4096];
                match (sqe.cdw10 & 0xFF) as u8 {
                    cns::CONTROLLER => {
                        page[0..2].copy_from_slice(&0x1B36u16.to_le_bytes());
                        page[4..16].copy_from_slice(b"FERRITE-FAKE");
                        page[24..33].copy_from_slice(b"Fake NVMe");
                        page[64..67].copy_from_slice(b"1.0");
                        page[77] = self.cfg.mdts;
                        page[80..84].copy_from_slice(&0x0001_0400u32.to_le_bytes());
                        page[512] = 0x66;
                        page[513] = 0x44;
                        let nn: u32 = if self.cfg.ns2.is_some() { 2 } else { 1 };
                        page[516..520].copy_from_slice(&nn.to_le_bytes());
                        page[520..522].copy_from_slice(&self.cfg.oncs.to_le_bytes());
                        page[525] = u8::from(self.cfg.vwc);
                        page[536..540].copy_from_slice(&u32::from(self.cfg.sgl).to_le_bytes());
                    }
                    cns::NAMESPACE => {
                        let Some((lbads, blocks)) = self.geometry(sqe.nsid) else {
                            return (0, 0, 0x0B);
                        };
                        page[0..8].copy_from_slice(&blocks.to_le_bytes());
                        page[8..16].copy_from_slice(&blocks.to_le_bytes());
                        page[33] = 0x01; // DLFEAT: deallocated blocks read zero
                        page[128..132].copy_from_slice(&(u32::from(lbads) << 16).to_le_bytes());
                    }
                    cns::ACTIVE_NAMESPACES if self.cfg.active_list => {
                        let ids: &[u32] = if self.cfg.ns2.is_some() { &[1, 2] } else { &[1] };
                        for (k, id) in ids.iter().filter(|&&id| id > sqe.nsid).enumerate() {
                            page[4 * k..4 * k + 4].copy_from_slice(&id.to_le_bytes());
                        }
                    }
                    _ => return INVALID_FIELD,
                }
                self.dma_out(sqe, &page);
                OK
            }
            admin::SET_FEATURES => {
                if (sqe.cdw10 & 0xFF) as u8 != feature::NUMBER_OF_QUEUES {
                    return INVALID_FIELD;
                }
                let max = self.cfg.max_io_queues - 1;
                let nsq = ((sqe.cdw11 & 0xFFFF) as u16).min(max);
                let ncq = ((sqe.cdw11 >> 16) as u16).min(max);
                ((u32::from(ncq) << 16) | u32::from(nsq), 0, 0)
            }
            admin::CREATE_IO_CQ => {
                let qid = sqe.cdw10 as u16;
                let size = (sqe.cdw10 >> 16) as u16 + 1;
                if qid == 0 || qid > self.cfg.max_io_queues || self.cqs.contains_key(&qid) {
                    return (0, 1, 0x01);
                }
                if size < 2 || u32::from(size) > u32::from(self.cfg.mqes) + 1 {
                    return (0, 1, 0x02);
                }
                if sqe.cdw11 & 1 == 0 || !sqe.prp1.is_multiple_of(PAGE_SIZE as u64) {
                    return INVALID_FIELD;
                }
                self.check_mapped(sqe.prp1, usize::from(size) * Cqe::SIZE, "I/O CQ");
                self.cqs
                    .insert(qid, Cq { base: sqe.prp1, size, head: 0, tail: 0, phase: true, backlog: VecDeque::new() });
                OK
            }
            admin::CREATE_IO_SQ => {
                let qid = sqe.cdw10 as u16;
                let size = (sqe.cdw10 >> 16) as u16 + 1;
                let cqid = (sqe.cdw11 >> 16) as u16;
                if qid == 0 || qid > self.cfg.max_io_queues || self.sqs.contains_key(&qid) {
                    return (0, 1, 0x01);
                }
                if cqid == 0 || !self.cqs.contains_key(&cqid) {
                    return (0, 1, 0x00);
                }
                if size < 2 || u32::from(size) > u32::from(self.cfg.mqes) + 1 {
                    return (0, 1, 0x02);
                }
                if sqe.cdw11 & 1 == 0 || !sqe.prp1.is_multiple_of(PAGE_SIZE as u64) {
                    return INVALID_FIELD;
                }
                self.check_mapped(sqe.prp1, usize::from(size) * Sqe::SIZE, "I/O SQ");
                self.sqs.insert(qid, Sq { base: sqe.prp1, size, head: 0, tail: 0, cqid });
                OK
            }
            admin::DELETE_IO_SQ => match self.sqs.remove(&(sqe.cdw10 as u16)) {
                Some(_) if sqe.cdw10 as u16 != 0 => OK,
                _ => (0, 1, 0x01),
            },
            admin::DELETE_IO_CQ => match self.cqs.remove(&(sqe.cdw10 as u16)) {
                Some(_) if sqe.cdw10 as u16 != 0 => OK,
                _ => (0, 1, 0x01),
            },
            admin::ABORT => {
                let sqid = sqe.cdw10 as u16;
                let cid = (sqe.cdw10 >> 16) as u16;
                let pos = self.held.iter().position(|(q, s)| *q == sqid && s.cid() == cid);
                match pos {
                    Some(p) if self.abort_succeeds => {
                        let (q, victim) = self.held.remove(p);
                        let (sqhd, cqid) = self.sqs.get(&q).map(|s| (s.head, s.cqid)).unwrap_or((0, q));
                        let cqe = Cqe {
                            sq_head: sqhd,
                            sq_id: q,
                            cid: victim.cid(),
                            status: Cqe::status_word(false, 0, 0x07, false),
                            ..Cqe::default()
                        };
                        self.post(cqid, cqe);
                        OK
                    }
                    _ => (1, 0, 0), // DW0 bit 0: not aborted
                }
            }
            _ => (0, 0, 0x01),
        }
    }

    /// Executes an I/O command; `None` if it was swallowed.
    fn io(&mut self, qid: u16, sqe: &Sqe) -> Option<(u32, u8, u8)> {
        if let Some(inj) = self.injections.pop_front() {
            match inj {
                Injection::Status { sct, sc, .. } => return Some((0, sct, sc)),
                Injection::Drop => {
                    self.held.push((qid, *sqe));
                    return None;
                }
            }
        }
        const LBA_RANGE: (u32, u8, u8) = (0, 0, 0x80);
        let nsid = sqe.nsid;
        let Some((lbads, blocks)) = self.geometry(nsid) else {
            return Some((0, 0, 0x0B));
        };
        let bs = 1usize << lbads;
        let slba = u64::from(sqe.cdw10) | (u64::from(sqe.cdw11) << 32);
        let nlb = u64::from(sqe.cdw12 & 0xFFFF) + 1;
        let in_range = |s: u64, n: u64, blocks: u64| s.checked_add(n).is_some_and(|e| e <= blocks);
        Some(match sqe.opcode() {
            nvm::READ | nvm::WRITE => {
                if !in_range(slba, nlb, blocks) {
                    return Some(LBA_RANGE);
                }
                let len = nlb as usize * bs;
                if self.cfg.mdts != 0 && len > PAGE_SIZE << self.cfg.mdts {
                    return Some((0, 0, 0x02));
                }
                if sqe.opcode() == nvm::READ {
                    let mut data = Vec::with_capacity(len);
                    for b in 0..nlb {
                        match self.store.get(&(nsid, slba + b)) {
                            Some(d) => data.extend_from_slice(d),
                            None => data.extend(core::iter::repeat_n(0, bs)),
                        }
                    }
                    self.dma_out(sqe, &data);
                } else {
                    let data = self.dma_in(sqe, len);
                    for (b, chunk) in data.chunks(bs).enumerate() {
                        self.store.insert((nsid, slba + b as u64), chunk.to_vec());
                    }
                }
                (0, 0, 0)
            }
            nvm::FLUSH => (0, 0, 0),
            nvm::WRITE_ZEROES => {
                if !Oncs(self.cfg.oncs).write_zeroes() {
                    return Some((0, 0, 0x01));
                }
                if !in_range(slba, nlb, blocks) {
                    return Some(LBA_RANGE);
                }
                let _ = sqe.cdw12 & rw::DEAC;
                for b in slba..slba + nlb {
                    self.store.remove(&(nsid, b));
                }
                (0, 0, 0)
            }
            nvm::DATASET_MANAGEMENT => {
                if !Oncs(self.cfg.oncs).dsm() {
                    return Some((0, 0, 0x01));
                }
                let nr = (sqe.cdw10 & 0xFF) as usize + 1;
                let raw = self.dma_in(sqe, nr * DsmRange::SIZE);
                let ranges: Vec<DsmRange> =
                    raw.chunks(16).map(|c| DsmRange::from_bytes(c.try_into().unwrap_or(&[0; 16]))).collect();
                if ranges.iter().any(|r| !in_range(r.slba, u64::from(r.blocks), blocks)) {
                    return Some(LBA_RANGE);
                }
                if sqe.cdw11 & crate::nvme::spec::dsm::DEALLOCATE != 0 {
                    for r in ranges {
                        for b in r.slba..r.slba + u64::from(r.blocks) {
                            self.store.remove(&(nsid, b));
                        }
                    }
                }
                (0, 0, 0)
            }
            _ => (0, 0, 0x01),
        })
    }
}

impl RegisterIo for FakeNvme {
    #[inline(never)]
    fn size(&self) -> usize {
        self.0.borrow().cfg.bar_size
    }
    #[inline(never)]
    fn read32(&mut self, off: usize) -> u32 {
        let mut i = self.0.borrow_mut();
        if i.gone {
            return u32::MAX;
        }
        match off {
            offset::VS => 0x0001_0400,
            offset::CC => i.cc.0,
            offset::CSTS => i.csts_read(),
            offset::AQA => i.aqa,
            offset::CAP => i.cap().0 as u32,
            0x04 => (i.cap().0 >> 32) as u32,
            _ => 0,
        }
    }
    #[inline(never)]
    fn write32(&mut self, off: usize, v: u32) {
        let mut i = self.0.borrow_mut();
        if i.gone {
            return;
        }
        match off {
            offset::CC => i.cc_write(v),
            offset::AQA => i.aqa = v,
            offset::INTMS | offset::INTMC => {}
            o if o >= offset::DOORBELL_BASE => i.doorbell(o, v),
            o => panic!("write32 to read-only or unknown register {o:#x}"),
        }
    }
    #[inline(never)]
    fn read64(&mut self, off: usize) -> u64 {
        let i = self.0.borrow();
        if i.gone {
            return u64::MAX;
        }
        match off {
            offset::CAP => i.cap().0,
            offset::ASQ => i.asq,
            offset::ACQ => i.acq,
            o => panic!("read64 of {o:#x}"),
        }
    }
    #[inline(never)]
    fn write64(&mut self, off: usize, v: u64) {
        let mut i = self.0.borrow_mut();
        if i.gone {
            return;
        }
        assert!(!i.cc.enabled(), "ASQ/ACQ written while enabled");
        match off {
            offset::ASQ => i.asq = v,
            offset::ACQ => i.acq = v,
            o => panic!("write64 to {o:#x}"),
        }
    }
}
