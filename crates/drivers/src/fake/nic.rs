//! A fake NIC for host tests: a bounded transmit queue the test drains
//! with [`FakeNic::sent`], frames the test injects with
//! [`FakeNic::inject`], and the offload rule of the [`Nic`] contract
//! enforced (a partial checksum or GSO frame without the offload is
//! refused).

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use net::{Csum, Frame, MacAddr, MAX_FRAME};

use crate::nic::{LinkStatus, Nic, NicError, NicStats, Offloads};

/// See the module documentation.
pub struct FakeNic {
    mac: MacAddr,
    offloads: Offloads,
    tx_depth: usize,
    /// Queued, not yet completed by the "device".
    in_flight: VecDeque<Frame>,
    /// Completed, reclaimed, not yet taken by the test.
    wire: Vec<Frame>,
    rx: VecDeque<Frame>,
    link: LinkStatus,
    stats: NicStats,
}

impl FakeNic {
    /// A NIC with `mac`, `offloads` and room for `tx_depth` frames in flight.
    pub fn new(mac: MacAddr, offloads: Offloads, tx_depth: usize) -> Self {
        FakeNic {
            mac,
            offloads,
            tx_depth,
            in_flight: VecDeque::new(),
            wire: Vec::new(),
            rx: VecDeque::new(),
            link: LinkStatus::Up,
            stats: NicStats::default(),
        }
    }
    /// A frame "arrives from the wire".
    pub fn inject(&mut self, frame: Frame) {
        self.rx.push_back(frame);
    }
    /// Frames sent and reclaimed since the last call.
    pub fn sent(&mut self) -> Vec<Frame> {
        core::mem::take(&mut self.wire)
    }
    /// Frames queued and not yet reclaimed.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
    /// Sets the link state.
    pub fn set_link(&mut self, link: LinkStatus) {
        self.link = link;
    }
}

impl Nic for FakeNic {
    fn mac(&self) -> MacAddr {
        self.mac
    }
    fn offloads(&self) -> Offloads {
        self.offloads
    }
    fn queue_pairs(&self) -> usize {
        1
    }
    fn link(&mut self) -> LinkStatus {
        self.link
    }
    fn transmit(&mut self, frame: &Frame) -> Result<(), NicError> {
        let o = self.offloads;
        let gso_ok = match frame.meta.gso {
            None => frame.data.len() <= 1514,
            Some(g) => match g.kind {
                net::GsoKind::TcpV4 => o.tso4,
                net::GsoKind::TcpV6 => o.tso6,
            },
        };
        let csum_ok = !matches!(frame.meta.csum, Csum::Partial { .. }) || o.tx_csum;
        if frame.data.is_empty() || frame.data.len() > MAX_FRAME || !gso_ok || !csum_ok {
            return Err(NicError::Unsupported);
        }
        if self.in_flight.len() >= self.tx_depth {
            return Err(NicError::Full);
        }
        self.stats.tx_frames += 1;
        self.stats.tx_bytes += frame.data.len() as u64;
        self.in_flight.push_back(frame.clone());
        Ok(())
    }
    fn reclaim(&mut self) -> usize {
        let n = self.in_flight.len();
        self.wire.extend(self.in_flight.drain(..));
        self.stats.tx_completed += n as u64;
        n
    }
    fn receive(&mut self, out: &mut Vec<Frame>, budget: usize) -> usize {
        let mut n = 0;
        while n < budget {
            let Some(f) = self.rx.pop_front() else { break };
            self.stats.rx_frames += 1;
            self.stats.rx_bytes += f.data.len() as u64;
            out.push(f);
            n += 1;
        }
        n
    }
    fn stats(&self) -> NicStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use net::{Gso, GsoKind, Meta};

    #[test]
    fn fake_nic_queues_bounds_and_enforces_offloads() {
        let mut n = FakeNic::new(MacAddr([2, 0, 0, 0, 0, 1]), Offloads { tx_csum: true, ..Offloads::default() }, 2);
        let f = Frame::plain(vec![0xab; 60]);
        n.transmit(&f).unwrap();
        n.transmit(&f).unwrap();
        assert_eq!(n.transmit(&f), Err(NicError::Full));
        assert_eq!(n.reclaim(), 2);
        assert_eq!(n.sent().len(), 2);
        let gso = Frame {
            data: vec![0; 9000],
            meta: Meta {
                csum: Csum::Partial { start: 34, offset: 16 },
                gso: Some(Gso { kind: GsoKind::TcpV4, mss: 1448 }),
            },
        };
        assert_eq!(n.transmit(&gso), Err(NicError::Unsupported));
        assert_eq!(n.transmit(&Frame::plain(Vec::new())), Err(NicError::Unsupported));
        n.inject(f.clone());
        n.inject(f.clone());
        let mut out = Vec::new();
        assert_eq!(n.receive(&mut out, 1), 1);
        assert_eq!(n.receive(&mut out, 5), 1);
        assert_eq!(n.stats().rx_frames, 2);
    }
}
