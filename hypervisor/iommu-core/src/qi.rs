//! The queued-invalidation ring (§6.5.2) as the core drives it.
//!
//! One 4 KiB page holds 256 descriptors; the core writes descriptors at the
//! tail and publishes the tail through [`Hardware::set_queue_tail`]. Every
//! batch ends with a wait descriptor that writes an increasing sequence
//! number to a status dword; because waits complete in queue order, the
//! status value is the newest completed sequence number. Descriptors that do
//! not fit wait in a bounded software backlog and are pushed on later polls.

use alloc::collections::VecDeque;

use crate::hw::{Hardware, DESCS_PER_PAGE, DESC_SIZE};
use crate::mem::{Memory, PhysMem};
use crate::types::Mfn;
use crate::vtd::{Inv, InvDesc};

/// Most descriptors kept in the backlog; operations that would add to a
/// fuller backlog are refused (`-EBUSY`) before they change anything.
pub const MAX_BACKLOG: usize = 4096;

/// Sequence `seq` is complete when the status value has reached it (wrapping).
pub fn seq_done(status: u32, seq: u32) -> bool {
    (status.wrapping_sub(seq) as i32) >= 0
}

/// The ring, its status dword and the backlog.
pub struct InvQueue {
    base: Mfn,
    entries: u32,
    tail: u32,
    status: Mfn,
    next_seq: u32,
    backlog: VecDeque<InvDesc>,
}

impl InvQueue {
    /// Allocates the ring and status pages and enables the queue.
    pub fn new<M: Memory, H: Hardware>(mem: &mut M, hw: &mut H) -> Option<Self> {
        let base = mem.alloc_zeroed()?;
        let status = mem.alloc_zeroed()?;
        hw.enable_queue(mem, base, 0);
        Some(InvQueue { base, entries: DESCS_PER_PAGE, tail: 0, status, next_seq: 1, backlog: VecDeque::new() })
    }

    /// Room in the backlog for `n` more descriptors.
    pub fn has_room(&self, n: usize) -> bool {
        self.backlog.len().saturating_add(n) <= MAX_BACKLOG
    }

    /// A fresh wait descriptor and its sequence number.
    pub fn wait(&mut self) -> (Inv, u32) {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        (Inv::Wait { status_addr: self.status.addr(), data: seq, fence: false }, seq)
    }

    /// Appends descriptors to the backlog.
    pub fn push(&mut self, inv: Inv) {
        self.backlog.push_back(inv.encode());
    }

    /// Moves as much of the backlog into the ring as fits, then publishes
    /// the tail once. One slot stays empty (head == tail means empty).
    /// Returns the number of descriptors moved.
    pub fn pump<M: Memory, H: Hardware>(&mut self, mem: &mut M, hw: &mut H) -> usize {
        let head = hw.queue_head() % self.entries;
        let used = (self.tail + self.entries - head) % self.entries;
        let mut free = self.entries - 1 - used;
        let mut moved = 0;
        while free > 0 {
            let Some(d) = self.backlog.pop_front() else {
                break;
            };
            let at = self.base.addr() + self.tail as u64 * DESC_SIZE;
            mem.write_u64(at, d.lo);
            mem.write_u64(at + 8, d.hi);
            self.tail = (self.tail + 1) % self.entries;
            free -= 1;
            moved += 1;
        }
        if moved > 0 {
            // On hardware a write barrier orders the descriptor stores
            // before the IQT write (the HAL's MMIO write provides it).
            hw.set_queue_tail(mem, self.tail);
        }
        moved
    }

    /// The newest completed sequence number.
    pub fn completed<M: PhysMem>(&self, mem: &M) -> u32 {
        mem.read_u32(self.status.addr()).unwrap_or(0)
    }

    /// Descriptors not yet in the ring.
    pub fn backlog_len(&self) -> usize {
        self.backlog.len()
    }
}
