//! The poll: the guests' transmit rings taken into frames (the data of a
//! turn's packets moved by one batched grant copy through the staging
//! buffer), rx backlogs flushed, control rings answered.

use crate::abi::*;
use crate::backend::{Queue, Serve, CTRL_BUDGET, STAGING_BYTES, TX_BUDGET};
use crate::copy::{move_data, Piece};
use crate::tx::{self, Scan, TxError};
use crate::VifId;
use alloc::vec::Vec;
use net::Frame;
use xen::evtchn::EventOps;
use xen::gnttab::{GrantOps, LocalFrames};
use xen::shmem::SharedMem;

impl<P: SharedMem, B: AsRef<[u8]> + AsMut<[u8]> + LocalFrames, G: GrantOps<Page = P>, E: EventOps>
    Serve<'_, P, B, G, E>
{
    pub(crate) fn staging(&mut self) -> Option<&mut B> {
        if self.staging.is_none() {
            *self.staging = (self.alloc)(STAGING_BYTES).filter(|b| b.as_ref().len() >= STAGING_BYTES);
        }
        self.staging.as_mut()
    }

    /// One turn for every connected queue, round-robin from `*next`.
    pub(crate) fn poll(&mut self, next: &mut usize, out: &mut Vec<(VifId, Frame)>) -> bool {
        let ctxs: Vec<(u32, usize)> =
            self.vifs.iter().flat_map(|(&id, v)| (0..v.queues.len()).map(move |q| (id, q))).collect();
        if ctxs.is_empty() {
            return false;
        }
        let start = *next % ctxs.len();
        *next = start.wrapping_add(1);
        let mut busy = false;
        let with_ctrl: Vec<u32> = self.vifs.iter().filter(|(_, v)| v.ctrl.is_some()).map(|(&id, _)| id).collect();
        for id in with_ctrl {
            busy |= self.ctrl_turn(id);
        }
        let now = self.e.now();
        for k in 0..ctxs.len() {
            let (id, qi) = ctxs[(start + k) % ctxs.len()];
            busy |= self.tx_turn(id, qi, out);
            let flush = self
                .vifs
                .get(&id)
                .and_then(|v| v.queues.get(qi))
                .is_some_and(|q| !q.backlog.is_empty() && q.rx_retry.is_none_or(|t| t <= now));
            if flush {
                busy |= self.rx_flush(id, qi);
            }
        }
        busy
    }

    /// Answers up to [`CTRL_BUDGET`] control requests of vif `id`.
    fn ctrl_turn(&mut self, id: u32) -> bool {
        let now = self.e.now();
        let mut left = false;
        for _ in 0..CTRL_BUDGET {
            let Some(v) = self.vifs.get_mut(&id) else { return false };
            let Some(c) = v.ctrl.as_mut() else { return false };
            let _ = self.e.take_pending(c.port);
            if c.dead {
                return false;
            }
            let mut req = None;
            match c.ring.poll_requests(1, |r| req = Some(r)) {
                Ok(_) => {}
                Err(e) => {
                    c.dead = true;
                    limited!(v.log, now, warn, "vif {} control ring: {}", v.be, e.as_str());
                    return false;
                }
            }
            let Some(req) = req else { break };
            let fe_dom = v.fe_dom;
            let fetch = v.hash.fetch_for(&req);
            let mut bytes = None;
            if let Some(f) = fetch {
                if self.staging().is_some() {
                    let (g, stats) = (&mut *self.g, &mut *self.stats);
                    if let Some(buf) = self.staging.as_mut() {
                        let piece = Piece { gref: f.gref, page_off: 0, len: f.len as u16, at: 0 };
                        if move_data(g, stats, fe_dom, buf, &[piece], true).iter().all(|ok| *ok) {
                            bytes = Some(buf.as_ref()[..f.len].to_vec());
                        }
                    }
                }
            }
            let Some(v) = self.vifs.get_mut(&id) else { return false };
            let nq = v.queues.len();
            let rsp = v.hash.handle(&req, bytes.as_deref(), nq);
            let Some(c) = v.ctrl.as_mut() else { return false };
            // Cannot fail: the request was just consumed.
            let _ = c.ring.push_response(&rsp);
            if c.ring.publish_responses() {
                let _ = self.e.send(c.port);
            }
            left = true;
        }
        let Some(c) = self.vifs.get_mut(&id).and_then(|v| v.ctrl.as_mut()) else { return false };
        if c.dead {
            return false;
        }
        if left {
            // Work done this turn; look again next poll.
            return c.ring.pending().map(|n| n > 0).unwrap_or(false);
        }
        c.ring.final_check_for_requests().unwrap_or(false)
    }

    /// Takes up to [`TX_BUDGET`] slots from one queue. Returns whether work
    /// is left.
    fn tx_turn(&mut self, id: u32, qi: usize, out: &mut Vec<(VifId, Frame)>) -> bool {
        let now = self.e.now();
        let Some(q) = self.vifs.get_mut(&id).and_then(|v| v.queues.get_mut(qi)) else { return false };
        // Events only wake us; the ring says what to do.
        let (tx_port, rx_port) = (q.tx_port, q.rx_port);
        let _ = self.e.take_pending(tx_port);
        if rx_port != tx_port {
            let _ = self.e.take_pending(rx_port);
        }
        if q.dead {
            return false;
        }
        if let Some(t) = q.throttled {
            if now < t {
                return false;
            }
            q.throttled = None;
        }
        let mut taken = 0;
        let mut left = false;
        // Packets whose data is copied together (one GNTTABOP_copy) once
        // the staging buffer is full or the turn ends.
        let mut batch: Vec<Pending> = Vec::new();
        let mut used = 0usize;
        // Bounded: each round consumes one slot (at most TX_BUDGET), or
        // answers a complete packet (taking at least one slot off `carry`,
        // which only grows by consumed slots), or leaves.
        loop {
            let Some(v) = self.vifs.get_mut(&id) else { return false };
            let Some(q) = v.queues.get_mut(qi) else { return false };
            match tx::scan(&q.carry) {
                Scan::Incomplete => {
                    if taken == TX_BUDGET {
                        left = true;
                        break;
                    }
                    let carry = &mut q.carry;
                    match q.tx.poll_requests(1, |s| carry.push(s)) {
                        Ok(0) => break,
                        Ok(_) => taken += 1,
                        Err(e) => {
                            q.dead = true;
                            self.stats.fatal_queues += 1;
                            limited!(v.log, now, warn, "vif {} queue {qi}: {}", v.be, e.as_str());
                            break;
                        }
                    }
                }
                Scan::Fatal => {
                    self.flush_tx(id, qi, &mut batch, out);
                    let Some(v) = self.vifs.get_mut(&id) else { return false };
                    let Some(q) = v.queues.get_mut(qi) else { return false };
                    let slots = core::mem::take(&mut q.carry);
                    answer(q, &slots, NETIF_RSP_ERROR);
                    q.dead = true;
                    v.stats.tx_errors += 1;
                    self.stats.fatal_queues += 1;
                    limited!(v.log, now, warn, "vif {} queue {qi}: packet chains too many slots; tx stopped", v.be);
                    break;
                }
                Scan::Complete(n) => {
                    let size = u64::from(TxRequest::decode(&q.carry[0]).size);
                    if !q.credit.take(now, size) {
                        q.throttled = Some(q.credit.next_refill());
                        break;
                    }
                    let slots: Vec<TxSlot> = q.carry.drain(..n).collect();
                    let plan = tx::plan(&slots);
                    let len = plan.as_ref().map_or(0, |p| usize::from(p.len));
                    if used + len > STAGING_BYTES {
                        self.flush_tx(id, qi, &mut batch, out);
                        used = 0;
                    }
                    batch.push(Pending { slots, plan, at: used });
                    used += len;
                }
            }
        }
        self.flush_tx(id, qi, &mut batch, out);
        let Some(q) = self.vifs.get_mut(&id).and_then(|v| v.queues.get_mut(qi)) else { return false };
        if q.tx.publish_responses() {
            let _ = self.e.send(q.tx_port);
        }
        if !left && !q.dead && q.throttled.is_none() && q.carry.is_empty() {
            // Going idle: ask for an event on the next request, and look
            // once more (a request may have come in between).
            left = q.tx.final_check_for_requests().unwrap_or(false);
        }
        left
    }

    /// Copies the batch's packets in one go, turns them into frames and
    /// answers their slots, in ring order.
    fn flush_tx(&mut self, id: u32, qi: usize, batch: &mut Vec<Pending>, out: &mut Vec<(VifId, Frame)>) {
        if batch.is_empty() {
            return;
        }
        let now = self.e.now();
        let Some(fe_dom) = self.vifs.get(&id).map(|v| v.fe_dom) else { return };
        let mut pieces = Vec::new();
        let mut owner = Vec::new();
        for (k, p) in batch.iter().enumerate() {
            if let Ok(plan) = &p.plan {
                let mut at = p.at;
                for f in &plan.frags {
                    pieces.push(Piece { gref: f.gref, page_off: f.offset, len: f.len, at });
                    owner.push(k);
                    at += usize::from(f.len);
                }
            }
        }
        let mut copied = alloc::vec![true; batch.len()];
        if !pieces.is_empty() {
            let moved = if self.staging().is_some() {
                let (g, stats) = (&mut *self.g, &mut *self.stats);
                match self.staging.as_mut() {
                    Some(buf) => move_data(g, stats, fe_dom, buf, &pieces, true),
                    None => alloc::vec![false; pieces.len()],
                }
            } else {
                alloc::vec![false; pieces.len()]
            };
            for (ok, &k) in moved.iter().zip(&owner) {
                copied[k] &= *ok;
            }
        }
        for (k, p) in batch.drain(..).enumerate() {
            let res = match p.plan {
                Err(e) => Err(e),
                Ok(_) if !copied[k] => Err(TxError::CopyFailed),
                Ok(plan) => {
                    // Exactly the bytes the guest sent for this packet.
                    let range = p.at..p.at + usize::from(plan.len);
                    match self.staging.as_ref().and_then(|b| b.as_ref().get(range)) {
                        Some(bytes) => tx::finish(&plan, bytes.to_vec()),
                        None => Err(TxError::CopyFailed),
                    }
                }
            };
            let Some(v) = self.vifs.get_mut(&id) else { return };
            let status = match res {
                Ok(frame) => {
                    v.stats.tx_packets += 1;
                    v.stats.tx_bytes += frame.data.len() as u64;
                    out.push((VifId(id), frame));
                    NETIF_RSP_OKAY
                }
                Err(e) => {
                    v.stats.tx_errors += 1;
                    limited!(v.log, now, warn, "vif {} queue {qi}: bad packet: {}", v.be, e.as_str());
                    NETIF_RSP_ERROR
                }
            };
            if let Some(q) = v.queues.get_mut(qi) {
                answer(q, &p.slots, status);
            }
        }
    }
}

/// A packet taken from the ring, waiting for its batch's copy.
pub(crate) struct Pending {
    slots: Vec<TxSlot>,
    plan: Result<tx::Plan, TxError>,
    /// Where its bytes go in the staging buffer.
    at: usize,
}

/// One response per slot of a packet: `status` for data slots,
/// `NETIF_RSP_NULL` for extras.
fn answer<P: SharedMem>(q: &mut Queue<P>, slots: &[TxSlot], status: i16) {
    for a in tx::answers(slots) {
        let rsp = match a {
            Some(id) => TxResponse { id, status },
            None => TxResponse { id: 0, status: NETIF_RSP_NULL },
        };
        // Cannot fail: every slot was consumed and not yet answered.
        let _ = q.tx.push_response(&rsp);
    }
}
