//! The data path: the guests' transmit rings polled into frames, frames
//! delivered into their receive rings, data moved by batched grant copy
//! through one staging buffer.

use crate::abi::*;
use crate::backend::{Drop, Queue, Serve, Vif, CTRL_BUDGET, STAGING_BYTES, TX_BUDGET};
use crate::backend::{RX_BACKLOG_BYTES, RX_BACKLOG_FRAMES, RX_RETRY_NS};
use crate::tx::{self, Scan, TxError};
use crate::VifId;
use alloc::borrow::Cow;
use alloc::vec::Vec;
use net::packet::{self, ETH_P_IPV4, ETH_P_IPV6};
use net::{Csum, Frame, GsoKind, MAX_FRAME};
use xen::evtchn::EventOps;
use xen::gnttab::{CopyEnd, CopyOp, GrantOps, LocalFrames, MapRequest};
use xen::shmem::SharedMem;
use xen::types::{DomId, GrantRef};

const PAGE: usize = 4096;

/// One piece of guest memory and where it goes in the staging buffer.
#[derive(Clone, Copy)]
struct Piece {
    gref: u32,
    page_off: u16,
    len: u16,
    at: usize,
}

/// Moves `pieces` between guest grants of `dom` and `buf` (`into_buf`:
/// guest -> buffer). One `GNTTABOP_copy` batch; a buffer that names no
/// frames makes it map, copy and unmap instead. `Err` if any piece failed.
fn move_data<G: GrantOps, B: AsRef<[u8]> + AsMut<[u8]> + LocalFrames>(
    g: &mut G,
    stats: &mut crate::Stats,
    dom: DomId,
    buf: &mut B,
    pieces: &[Piece],
    into_buf: bool,
) -> Result<(), ()> {
    if pieces.is_empty() {
        return Ok(());
    }
    let frames = buf.local_frame(0).is_some();
    if frames {
        if !into_buf {
            buf.sync_for_copy();
        }
        let mut ops = Vec::with_capacity(pieces.len() * 2);
        for p in pieces {
            // Each op stays within one of our frames (they need not be
            // contiguous) and within the guest's page (checked by callers).
            let mut done = 0usize;
            while done < usize::from(p.len) {
                let (pfn, foff) = buf.local_frame(p.at + done).ok_or(())?;
                let n = (usize::from(p.len) - done).min(PAGE - usize::from(foff));
                let guest = CopyEnd::Grant { dom, gref: GrantRef(p.gref), offset: p.page_off + done as u16 };
                let local = CopyEnd::Local { pfn, offset: foff };
                let (src, dst) = if into_buf { (guest, local) } else { (local, guest) };
                ops.push(CopyOp { src, dst, len: n as u16 });
                done += n;
            }
        }
        stats.grant_copies += 1;
        let ok = g.copy_batch(&ops).iter().all(|r| r.is_ok());
        if into_buf {
            buf.sync_for_cpu();
        }
        return if ok { Ok(()) } else { Err(()) };
    }
    let reqs: Vec<MapRequest> =
        pieces.iter().map(|p| MapRequest { dom, gref: GrantRef(p.gref), readonly: into_buf }).collect();
    stats.data_maps += 1;
    let mut maps = Vec::new();
    let mut ok = true;
    for (p, r) in pieces.iter().zip(g.map_batch(&reqs)) {
        match r {
            Ok(m) => {
                let page = g.page(&m);
                let range = p.at..p.at + usize::from(p.len);
                if into_buf {
                    page.read(usize::from(p.page_off), &mut buf.as_mut()[range]);
                } else {
                    page.write(usize::from(p.page_off), &buf.as_ref()[range]);
                }
                maps.push(m);
            }
            Err(_) => ok = false,
        }
    }
    let _ = g.unmap_batch(&maps);
    if ok {
        Ok(())
    } else {
        Err(())
    }
}

impl<P: SharedMem, B: AsRef<[u8]> + AsMut<[u8]> + LocalFrames, G: GrantOps<Page = P>, E: EventOps>
    Serve<'_, P, B, G, E>
{
    fn staging(&mut self) -> Option<&mut B> {
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
                        if move_data(g, stats, fe_dom, buf, &[piece], true).is_ok() {
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
                    let fe_dom = v.fe_dom;
                    let res = self.tx_packet(fe_dom, &slots);
                    let Some(v) = self.vifs.get_mut(&id) else { return false };
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
                    let Some(q) = v.queues.get_mut(qi) else { return false };
                    answer(q, &slots, status);
                }
            }
        }
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

    /// Validates and copies one packet.
    fn tx_packet(&mut self, dom: DomId, slots: &[TxSlot]) -> Result<Frame, TxError> {
        let plan = tx::plan(slots)?;
        let mut pieces = Vec::with_capacity(plan.frags.len());
        let mut at = 0usize;
        for f in &plan.frags {
            pieces.push(Piece { gref: f.gref, page_off: f.offset, len: f.len, at });
            at += usize::from(f.len);
        }
        // plan() made the fragments add up to exactly `len` (< 64 KiB).
        if at != usize::from(plan.len) || at > STAGING_BYTES {
            return Err(TxError::SizeMismatch);
        }
        if self.staging().is_none() {
            return Err(TxError::CopyFailed);
        }
        let (g, stats) = (&mut *self.g, &mut *self.stats);
        let buf = self.staging.as_mut().ok_or(TxError::CopyFailed)?;
        move_data(g, stats, dom, buf, &pieces, true).map_err(|()| TxError::CopyFailed)?;
        // Exactly the bytes the guest sent, nothing left from earlier frames.
        tx::finish(&plan, buf.as_ref()[..at].to_vec())
    }

    /// Delivers `frame` to vif `id`.
    pub(crate) fn deliver(&mut self, id: u32, frame: &Frame) -> Result<(), Drop> {
        let Some(v) = self.vifs.get_mut(&id) else { return Err(Drop::NoSuchVif) };
        let r = deliver_prep(v, frame);
        let frames = match r {
            Ok(f) => f,
            Err(d) => {
                v.stats.rx_drops += 1;
                return Err(d);
            }
        };
        // All or nothing: every segment must fit and find its rx slots
        // (the segments of one flow go to one queue) before any is copied.
        let mut need = 0usize;
        for f in &frames {
            let len = f.data.len();
            let slots = len.div_ceil(PAGE).max(1);
            if len == 0 || len > MAX_FRAME || (slots > 1 && !v.rx.sg) {
                v.stats.rx_drops += 1;
                return Err(Drop::BadSize);
            }
            need += slots + usize::from(f.meta.gso.is_some());
        }
        let qi = pick_queue(v, &frames[0].data);
        let Some(q) = v.queues.get_mut(qi) else { return Err(Drop::NotConnected) };
        let room = match q.rx.pending() {
            Ok(n) => n as usize >= need,
            Err(_) => {
                v.stats.rx_drops += 1;
                return Err(Drop::RingBroken);
            }
        };
        if !room || !q.backlog.is_empty() {
            // Wait in the queue's backlog (in order, bounded) for the guest
            // to post rx requests; flushed by `poll`.
            let bytes: usize = frames.iter().map(|f| f.data.len()).sum();
            if q.backlog.len() + frames.len() > RX_BACKLOG_FRAMES || q.backlog_bytes + bytes > RX_BACKLOG_BYTES {
                v.stats.rx_drops += 1;
                return Err(Drop::NoRxRequests);
            }
            q.backlog_bytes += bytes;
            q.backlog.extend(frames.into_iter().map(Cow::into_owned));
            return Ok(());
        }
        let mut res = Ok(());
        for f in frames {
            if let Err(d) = self.deliver_one(id, qi, &f) {
                res = Err(d);
            }
        }
        res
    }

    /// Delivers what waits in queue `qi`'s backlog while the guest has rx
    /// requests for it. Returns whether to poll again at once.
    fn rx_flush(&mut self, id: u32, qi: usize) -> bool {
        let now = self.e.now();
        // Bounded by the backlog's length, itself bounded.
        for _ in 0..RX_BACKLOG_FRAMES {
            let Some(q) = self.vifs.get_mut(&id).and_then(|v| v.queues.get_mut(qi)) else { return false };
            let Some(f) = q.backlog.front() else { return false };
            let need = f.data.len().div_ceil(PAGE).max(1) + usize::from(f.meta.gso.is_some());
            match q.rx.pending() {
                Ok(n) if n as usize >= need => {}
                Ok(n) => {
                    if n == 0 {
                        // Ask for an event on the next rx request posted.
                        if let Ok(true) = q.rx.final_check_for_requests() {
                            return true;
                        }
                    } else {
                        // Some posted, not enough: look again shortly (the
                        // frontend's next post need not notify us).
                        q.rx_retry = Some(now.saturating_add(RX_RETRY_NS));
                    }
                    return false;
                }
                Err(_) => {
                    let Some(v) = self.vifs.get_mut(&id) else { return false };
                    drop_backlog(v, qi);
                    return false;
                }
            }
            q.rx_retry = None;
            let Some(f) = q.backlog.pop_front() else { return false };
            q.backlog_bytes = q.backlog_bytes.saturating_sub(f.data.len());
            let _ = self.deliver_one(id, qi, &f);
        }
        true
    }

    fn deliver_one(&mut self, id: u32, qi: usize, f: &Frame) -> Result<(), Drop> {
        let now = self.e.now();
        if self.staging().is_none() {
            return Err(Drop::CopyFailed);
        }
        let Some(v) = self.vifs.get_mut(&id) else { return Err(Drop::NoSuchVif) };
        let len = f.data.len();
        let data_slots = len.div_ceil(PAGE).max(1);
        if len == 0 || len > MAX_FRAME || (data_slots > 1 && !v.rx.sg) {
            v.stats.rx_drops += 1;
            return Err(Drop::BadSize);
        }
        let gso = f.meta.gso;
        let need = data_slots + usize::from(gso.is_some());
        let fe_dom = v.fe_dom;
        let Some(q) = v.queues.get_mut(qi) else { return Err(Drop::NotConnected) };
        match q.rx.pending() {
            Ok(n) if n as usize >= need => {}
            Ok(_) => {
                v.stats.rx_drops += 1;
                return Err(Drop::NoRxRequests);
            }
            Err(e) => {
                v.stats.rx_drops += 1;
                limited!(v.log, now, warn, "vif {} queue {qi}: rx {}", v.be, e.as_str());
                return Err(Drop::RingBroken);
            }
        }
        let mut reqs = Vec::with_capacity(need);
        if q.rx.poll_requests(need, |r| reqs.push(r)).is_err() || reqs.len() != need {
            v.stats.rx_drops += 1;
            return Err(Drop::RingBroken);
        }
        // Data slots: the first request, then (after the extra) the rest.
        let data_reqs: Vec<RxRequest> =
            reqs.iter().enumerate().filter(|(i, _)| gso.is_none() || *i != 1).map(|(_, r)| *r).collect();
        let pieces: Vec<Piece> = data_reqs
            .iter()
            .enumerate()
            .map(|(k, r)| Piece { gref: r.gref, page_off: 0, len: (len - k * PAGE).min(PAGE) as u16, at: k * PAGE })
            .collect();
        let (g, stats) = (&mut *self.g, &mut *self.stats);
        let buf = self.staging.as_mut().ok_or(Drop::CopyFailed)?;
        buf.as_mut()[..len].copy_from_slice(&f.data);
        let copied = move_data(g, stats, fe_dom, buf, &pieces, false);
        let mut flags = 0;
        match f.meta.csum {
            Csum::Partial { .. } => flags |= NETRXF_CSUM_BLANK | NETRXF_DATA_VALIDATED,
            Csum::Validated => flags |= NETRXF_DATA_VALIDATED,
            Csum::None => {}
        }
        let v = self.vifs.get_mut(&id).ok_or(Drop::NoSuchVif)?;
        let q = v.queues.get_mut(qi).ok_or(Drop::NotConnected)?;
        for (k, (r, p)) in data_reqs.iter().zip(&pieces).enumerate() {
            let mut fl = if k == 0 { flags } else { 0 };
            if k + 1 < data_reqs.len() {
                fl |= NETRXF_MORE_DATA;
            }
            if k == 0 && gso.is_some() {
                fl |= NETRXF_EXTRA_INFO;
            }
            let status = if copied.is_ok() { p.len as i16 } else { NETIF_RSP_ERROR };
            // push_response cannot fail: we consumed `need` requests.
            let _ = q.rx.push_response(&RxSlot::Rsp(RxResponse { id: r.id, offset: 0, flags: fl, status }));
            if k == 0 {
                if let Some(g) = gso {
                    let ty = match g.kind {
                        GsoKind::TcpV4 => XEN_NETIF_GSO_TYPE_TCPV4,
                        GsoKind::TcpV6 => XEN_NETIF_GSO_TYPE_TCPV6,
                    };
                    let _ = q.rx.push_response(&RxSlot::Extra(ExtraInfo::gso(g.mss, ty)));
                }
            }
        }
        if q.rx.publish_responses() {
            let _ = self.e.send(q.rx_port);
        }
        if copied.is_err() {
            v.stats.rx_errors += 1;
            limited!(v.log, now, warn, "vif {} queue {qi}: grant copy into the guest's rx pages failed", v.be);
            return Err(Drop::CopyFailed);
        }
        v.stats.rx_packets += 1;
        v.stats.rx_bytes += len as u64;
        Ok(())
    }
}

/// What a frame becomes for this frontend: segmented when it cannot take
/// the GSO, checksum completed when it cannot take a partial one.
fn deliver_prep<'f, P: SharedMem>(v: &Vif<P>, frame: &'f Frame) -> Result<Vec<Cow<'f, Frame>>, Drop> {
    if !v.fsm.connected() || v.queues.is_empty() {
        return Err(Drop::NotConnected);
    }
    let rx = v.rx;
    let ver = packet::ethertype(&frame.data).map(|(t, _)| t).unwrap_or(0);
    let csum_ok = (ver == ETH_P_IPV4 && rx.csum_v4) || (ver == ETH_P_IPV6 && rx.csum_v6);
    let frames: Vec<Cow<'f, Frame>> = match frame.meta.gso {
        Some(g) => {
            let gso_ok = match g.kind {
                GsoKind::TcpV4 => rx.gso_v4,
                GsoKind::TcpV6 => rx.gso_v6,
            };
            if gso_ok && rx.sg && csum_ok {
                alloc::vec![Cow::Borrowed(frame)]
            } else {
                net::segment(frame).map_err(|_| Drop::Offload)?.into_iter().map(Cow::Owned).collect()
            }
        }
        None => alloc::vec![Cow::Borrowed(frame)],
    };
    let mut out = Vec::with_capacity(frames.len());
    for f in frames {
        if matches!(f.meta.csum, Csum::Partial { .. }) && !csum_ok {
            let mut owned = f.into_owned();
            net::complete_csum(&mut owned).map_err(|_| Drop::Offload)?;
            out.push(Cow::Owned(owned));
        } else {
            out.push(f);
        }
    }
    Ok(out)
}

/// The queue for a frame: the frontend's hash mapping if it set one up
/// (control ring), else our own flow hash.
fn pick_queue<P: SharedMem>(v: &Vif<P>, data: &[u8]) -> usize {
    let n = v.queues.len();
    v.hash.queue_for(data, n).filter(|&q| q < n).unwrap_or_else(|| flow_queue(data, n))
}

/// The queue a frame's flow maps to (same flow, same queue).
fn flow_queue(data: &[u8], n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    let Ok(h) = packet::parse(data) else { return 0 };
    let mut acc: u32 = 0x811c_9dc5;
    let ports = data.get(h.l4_off..h.l4_off + 4).unwrap_or(&[]);
    let addrs: &[u8] = match &h.l3 {
        packet::L3::V4 { .. } => data.get(h.l3_off + 12..h.l3_off + 20).unwrap_or(&[]),
        packet::L3::V6 { .. } => data.get(h.l3_off + 8..h.l3_off + 40).unwrap_or(&[]),
    };
    for b in addrs.iter().chain(ports) {
        acc = (acc ^ u32::from(*b)).wrapping_mul(0x0100_0193);
    }
    acc as usize % n
}

/// Drops what waits in queue `qi`'s backlog (counted).
pub(crate) fn drop_backlog<P: SharedMem>(v: &mut Vif<P>, qi: usize) {
    if let Some(q) = v.queues.get_mut(qi) {
        v.stats.rx_drops += q.backlog.len() as u64;
        q.backlog.clear();
        q.backlog_bytes = 0;
        q.rx_retry = None;
    }
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
