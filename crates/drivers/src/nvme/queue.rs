//! Queue pairs: ring arithmetic ([`Ring`], pure) and a submission/completion
//! queue pair in DMA memory with its command-id table ([`QueuePair`]).
//! NVMe Base 1.4 §4.1 (queue full/empty, head/tail, wrap), §4.6 (phase
//! tag), §3.1.24-25 (doorbells), §7.2.4 (command identifiers).

use alloc::vec::Vec;

use super::regs;
use super::spec::{Cqe, Sqe};
use crate::error::Error;
use crate::hal::{DmaMapper, DmaRegion, RegisterIo, PAGE_SIZE};

/// Head/tail/phase bookkeeping for one SQ and its CQ, both `depth` entries.
///
/// - The SQ is full when advancing the tail would make it equal to the head
///   the controller last reported (CQE.SQHD) — one slot always stays empty.
/// - The CQ starts zeroed; the first lap's new entries carry phase 1; the
///   expected phase flips each time our head wraps to 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ring {
    depth: u16,
    sq_tail: u16,
    sq_head: u16,
    cq_head: u16,
    phase: bool,
}

impl Ring {
    /// `depth` ≥ 2.
    pub fn new(depth: u16) -> Ring {
        assert!(depth >= 2, "queue depth below 2");
        Ring { depth, sq_tail: 0, sq_head: 0, cq_head: 0, phase: true }
    }
    pub fn depth(&self) -> u16 {
        self.depth
    }
    fn next(&self, i: u16) -> u16 {
        if i + 1 == self.depth {
            0
        } else {
            i + 1
        }
    }
    pub fn sq_full(&self) -> bool {
        self.next(self.sq_tail) == self.sq_head
    }
    /// Slot for the next SQ entry.
    pub fn sq_tail(&self) -> u16 {
        self.sq_tail
    }
    pub fn sq_head(&self) -> u16 {
        self.sq_head
    }
    /// Advances the SQ tail after an entry was written; returns the value to
    /// write to the SQ tail doorbell.
    pub fn advance_sq_tail(&mut self) -> u16 {
        debug_assert!(!self.sq_full());
        self.sq_tail = self.next(self.sq_tail);
        self.sq_tail
    }
    /// CQ slot to look at next.
    pub fn cq_head(&self) -> u16 {
        self.cq_head
    }
    /// The phase a new entry at `cq_head` carries.
    pub fn expected_phase(&self) -> bool {
        self.phase
    }
    /// Consumes the entry at `cq_head`, recording the controller's SQ head.
    /// Returns the new CQ head (the value for the CQ head doorbell). An SQ
    /// head outside the ring is ignored (hostile or broken device).
    pub fn consume_cq(&mut self, sq_head: u16) -> u16 {
        if sq_head < self.depth {
            self.sq_head = sq_head;
        }
        self.cq_head = self.next(self.cq_head);
        if self.cq_head == 0 {
            self.phase = !self.phase;
        }
        self.cq_head
    }
}

/// A SQ/CQ pair in DMA memory plus the table of commands in flight, indexed
/// by command id. At most `depth - 1` commands are in flight, so neither
/// ring can overflow whatever the controller reports.
pub struct QueuePair<T> {
    qid: u16,
    dstrd: u8,
    ring: Ring,
    sq: DmaRegion,
    cq: DmaRegion,
    slots: Vec<Option<T>>,
    free: Vec<u16>,
}

impl<T> QueuePair<T> {
    /// Allocates zeroed rings of `depth` entries for queue `qid`.
    pub fn new<D: DmaMapper>(qid: u16, depth: u16, dstrd: u8, dma: &mut D) -> Result<Self, Error> {
        let sq_pages = (usize::from(depth) * Sqe::SIZE).div_ceil(PAGE_SIZE);
        let cq_pages = (usize::from(depth) * Cqe::SIZE).div_ceil(PAGE_SIZE);
        let sq = dma.alloc_zeroed(sq_pages)?;
        let cq = match dma.alloc_zeroed(cq_pages) {
            Ok(cq) => cq,
            Err(e) => {
                dma.free(sq);
                return Err(e.into());
            }
        };
        let mut qp = QueuePair { qid, dstrd, ring: Ring::new(depth), sq, cq, slots: Vec::new(), free: Vec::new() };
        qp.reset_slots();
        Ok(qp)
    }

    fn reset_slots(&mut self) {
        let cids = self.ring.depth() - 1;
        self.slots = (0..cids).map(|_| None).collect();
        // Pop from the end: hand out low cids first.
        self.free = (0..cids).rev().collect();
    }

    pub fn qid(&self) -> u16 {
        self.qid
    }
    pub fn depth(&self) -> u16 {
        self.ring.depth()
    }
    pub fn sq_bus(&self) -> u64 {
        self.sq.bus().0
    }
    pub fn cq_bus(&self) -> u64 {
        self.cq.bus().0
    }
    pub fn ring(&self) -> &Ring {
        &self.ring
    }
    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }
    /// No command id or SQ slot free.
    pub fn is_full(&self) -> bool {
        self.free.is_empty() || self.ring.sq_full()
    }

    /// Writes `sqe` with a fresh command id, rings the SQ tail doorbell and
    /// records `value` under that id. Hands `value` back on failure.
    pub fn submit<D: DmaMapper, R: RegisterIo>(
        &mut self,
        dma: &mut D,
        regs: &mut R,
        mut sqe: Sqe,
        value: T,
    ) -> Result<u16, (Error, T)> {
        if self.ring.sq_full() {
            return Err((Error::QueueFull, value));
        }
        let Some(cid) = self.free.pop() else {
            return Err((Error::QueueFull, value));
        };
        sqe.set_cid(cid);
        let off = usize::from(self.ring.sq_tail()) * Sqe::SIZE;
        if let Err(e) = dma.write(&self.sq, off, &sqe.to_bytes()) {
            self.free.push(cid);
            return Err((e.into(), value));
        }
        self.slots[usize::from(cid)] = Some(value);
        let tail = self.ring.advance_sq_tail();
        // RegisterIo orders this doorbell after the entry write above.
        regs.write32(regs::sq_tail_doorbell(self.qid, self.dstrd), u32::from(tail));
        Ok(cid)
    }

    /// The next completion if the controller has posted one (phase tag
    /// matches), without consuming it. Reads the phase word first, then the
    /// whole entry (each `read` is an acquire), so a half-written entry is
    /// never used.
    pub fn peek<D: DmaMapper>(&self, dma: &D) -> Option<Cqe> {
        let off = usize::from(self.ring.cq_head()) * Cqe::SIZE;
        let mut word = [0u8; 2];
        dma.read(&self.cq, off + Cqe::STATUS_OFFSET, &mut word).ok()?;
        if (word[0] & 1 != 0) != self.ring.expected_phase() {
            return None;
        }
        let mut b = [0u8; Cqe::SIZE];
        dma.read(&self.cq, off, &mut b).ok()?;
        Some(Cqe::from_bytes(&b))
    }

    /// Consumes the entry `peek` returned. Does not ring the doorbell.
    pub fn pop(&mut self, cqe: &Cqe) {
        self.ring.consume_cq(cqe.sq_head);
    }

    /// Tells the controller how far we consumed.
    pub fn ring_cq_doorbell<R: RegisterIo>(&self, regs: &mut R) {
        regs.write32(regs::cq_head_doorbell(self.qid, self.dstrd), u32::from(self.ring.cq_head()));
    }

    /// Removes and returns the command with id `cid`, if one is in flight.
    /// Unknown or stale ids (from a broken device) give `None`.
    pub fn take(&mut self, cid: u16) -> Option<T> {
        let v = self.slots.get_mut(usize::from(cid))?.take()?;
        self.free.push(cid);
        Some(v)
    }

    /// Like [`take`](Self::take) but keeps `cid` out of circulation until
    /// [`release`](Self::release): an Abort naming it may still be queued,
    /// and must not hit a newer command under the same id.
    pub fn take_and_hold(&mut self, cid: u16) -> Option<T> {
        self.slots.get_mut(usize::from(cid))?.take()
    }

    /// Returns a held `cid` to circulation.
    pub fn release(&mut self, cid: u16) {
        let empty = self.slots.get(usize::from(cid)).is_some_and(|s| s.is_none());
        if empty && !self.free.contains(&cid) {
            self.free.push(cid);
        }
    }

    /// The command in flight under `cid`.
    pub fn get_mut(&mut self, cid: u16) -> Option<&mut T> {
        self.slots.get_mut(usize::from(cid))?.as_mut()
    }

    /// Every command in flight, with its id.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (u16, &mut T)> {
        self.slots.iter_mut().enumerate().filter_map(|(i, s)| s.as_mut().map(|v| (i as u16, v)))
    }

    /// Takes every command out of the table (after the controller stopped).
    pub fn drain(&mut self) -> Vec<(u16, T)> {
        let mut out = Vec::new();
        for (i, s) in self.slots.iter_mut().enumerate() {
            if let Some(v) = s.take() {
                out.push((i as u16, v));
            }
        }
        self.reset_slots();
        out
    }

    /// Zeroes both rings and starts over from slot 0, phase 1, for a queue
    /// the controller is about to (re)create. The table must be empty.
    pub fn reset_rings<D: DmaMapper>(&mut self, dma: &mut D) -> Result<(), Error> {
        debug_assert_eq!(self.in_flight(), 0);
        let zero = [0u8; PAGE_SIZE];
        for p in 0..self.sq.pages() {
            dma.write(&self.sq, p * PAGE_SIZE, &zero)?;
        }
        for p in 0..self.cq.pages() {
            dma.write(&self.cq, p * PAGE_SIZE, &zero)?;
        }
        self.ring = Ring::new(self.ring.depth());
        self.reset_slots();
        Ok(())
    }

    /// Gives the ring memory back. Only once the controller can no longer
    /// touch it (queue deleted or controller disabled).
    pub fn free<D: DmaMapper>(self, dma: &mut D) {
        dma.free(self.sq);
        dma.free(self.cq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_full_and_wrap() {
        let mut r = Ring::new(4);
        assert!(!r.sq_full());
        assert_eq!(r.advance_sq_tail(), 1);
        assert_eq!(r.advance_sq_tail(), 2);
        assert_eq!(r.advance_sq_tail(), 3);
        assert!(r.sq_full(), "one slot stays empty");
        // Controller consumed two entries.
        assert_eq!(r.consume_cq(2), 1);
        assert!(!r.sq_full());
        assert_eq!(r.advance_sq_tail(), 0, "tail wraps");
        assert_eq!(r.advance_sq_tail(), 1);
        assert!(r.sq_full());
    }

    #[test]
    fn phase_flips_on_every_lap() {
        for depth in [2u16, 3, 7, 64] {
            let mut r = Ring::new(depth);
            let mut phase = true;
            for i in 0..(u32::from(depth) * 9 + 1) {
                assert_eq!(r.expected_phase(), phase, "depth {depth} entry {i}");
                let head = r.consume_cq(0);
                if head == 0 {
                    phase = !phase;
                }
            }
        }
    }

    #[test]
    fn bogus_sq_head_is_ignored() {
        let mut r = Ring::new(4);
        r.advance_sq_tail();
        r.consume_cq(9);
        assert_eq!(r.sq_head(), 0);
    }
}
