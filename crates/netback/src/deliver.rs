//! Delivery to a guest: a frame copied into the guest's posted rx
//! requests (one batched grant copy), segmented or checksum-completed first
//! when its frontend cannot take the offload, or kept in the queue's
//! bounded backlog until the guest posts requests.

use crate::abi::*;
use crate::backend::{Drop, Serve, Vif};
use crate::backend::{RX_BACKLOG_BYTES, RX_BACKLOG_FRAMES, RX_RETRY_NS};
use crate::copy::{move_data, Piece};
use alloc::borrow::Cow;
use alloc::vec::Vec;
use net::packet::{self, ETH_P_IPV4, ETH_P_IPV6};
use net::{Csum, Frame, GsoKind, MAX_FRAME};
use xen::evtchn::EventOps;
use xen::gnttab::{GrantOps, LocalFrames};
use xen::shmem::SharedMem;

const PAGE: usize = 4096;

impl<P: SharedMem, B: AsRef<[u8]> + AsMut<[u8]> + LocalFrames, G: GrantOps<Page = P>, E: EventOps>
    Serve<'_, P, B, G, E>
{
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
    pub(crate) fn rx_flush(&mut self, id: u32, qi: usize) -> bool {
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
        let copied = move_data(g, stats, fe_dom, buf, &pieces, false).iter().all(|ok| *ok);
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
            let status = if copied { p.len as i16 } else { NETIF_RSP_ERROR };
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
        if !copied {
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
