//! The virtio-net device: bring-up (virtio 1.x §3.1.1), receive and
//! transmit queue pairs (§5.1.6), the control queue for MQ (§5.1.6.5.5).
//!
//! Device data is hostile: used-ring ids are checked against the chains in
//! flight ([`virtio_hal::BufQueue`]), used lengths against the buffers,
//! headers against the frame and the negotiated features
//! ([`crate::hdr::rx_meta`]). A device that reports a chain we did not give
//! it is marked broken and no longer used. Every loop is bounded by a
//! budget or the queue size; every wait by a deadline.

use alloc::vec;
use alloc::vec::Vec;
use core::mem::ManuallyDrop;

use drivers::hal::Clock;
use drivers::nic::{LinkStatus, Nic, NicError, NicStats, Offloads};
use net::{Frame, MacAddr};
use virtio_drivers::transport::{DeviceStatus, Transport};
use virtio_drivers::Hal;
use virtio_hal::{BufQueue, QueueError};

use crate::features::{self as feat, FeatureError};
use crate::hdr::{self, HdrRules, NetHdr, HDR_LEN, MAX_PLAIN_FRAME};

/// Descriptors per virtqueue. 128 keeps each ring part within one page
/// (descriptors 2 KiB + available ring 262 bytes; used ring 1030 bytes), so
/// rings need no bus-contiguous pages.
pub const QUEUE_SIZE: usize = 128;
/// Bytes of one receive buffer: header + largest plain frame, rounded up.
pub const RX_BUF: usize = 2048;
/// Largest piece of a transmitted frame per descriptor (one page).
const TX_CHUNK: usize = 4096;

/// `virtio_net_config` offsets (§5.1.4).
const CFG_MAC: usize = 0;
const CFG_STATUS: usize = 6;
const CFG_MAX_PAIRS: usize = 8;
/// `status` bit: link up.
const S_LINK_UP: u16 = 1;

/// Control queue command (§5.1.6.5.5): class VIRTIO_NET_CTRL_MQ,
/// command VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, ack VIRTIO_NET_OK.
const CTRL_MQ: u8 = 4;
const CTRL_MQ_VQ_PAIRS_SET: u8 = 0;
const CTRL_OK: u8 = 0;

/// What to ask of the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// Most queue pairs to use (the device may offer fewer; 1 leaves MQ off).
    pub max_pairs: u16,
    /// Receive buffers posted per receive queue (at most [`QUEUE_SIZE`]).
    pub rx_buffers: usize,
    /// How long bring-up waits for the device (reset, control commands).
    pub timeout_ns: u64,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig { max_pairs: 4, rx_buffers: QUEUE_SIZE, timeout_ns: 1_000_000_000 }
    }
}

/// Why bring-up failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetError {
    /// Not a network device.
    NotNet,
    /// The device did not reset within the deadline.
    ResetTimeout,
    /// A feature we need is missing.
    Features(FeatureError),
    /// The device cleared FEATURES_OK: it refused our feature set.
    FeaturesRefused,
    /// The device set DEVICE_NEEDS_RESET or FAILED.
    DeviceFailed,
    /// Config space missing or too small.
    Config,
    /// A virtqueue could not be set up or filled.
    Queue(QueueError),
    /// The MQ control command failed or timed out.
    Control,
}

const CTRL_SIZE: usize = 16;

struct Pair<H: Hal> {
    rx: BufQueue<H, QUEUE_SIZE>,
    tx: BufQueue<H, QUEUE_SIZE>,
}

/// A polled virtio-net device over transport `T`, DMA through `H`.
pub struct VirtioNet<H: Hal, T: Transport> {
    /// Never dropped: virtio-drivers' PCI transport resets the device on
    /// drop and waits for it without a bound; our `Drop` resets it with one.
    transport: ManuallyDrop<T>,
    pairs: Vec<Pair<H>>,
    ctrl: Option<BufQueue<H, CTRL_SIZE>>,
    features: u64,
    rules: HdrRules,
    mac: MacAddr,
    stats: NicStats,
    /// Next receive queue to look at (round robin across pairs).
    next_rx: usize,
    /// The device broke its contract; nothing is given to it any more.
    broken: bool,
}

fn fail_status(s: DeviceStatus) -> bool {
    s.intersects(DeviceStatus::FAILED | DeviceStatus::DEVICE_NEEDS_RESET)
}

/// Picks a transmit queue for `frame` from its addresses (IPv4/IPv6
/// addresses and ports when present), so one flow stays on one queue and
/// in order.
fn flow_hash(frame: &Frame) -> usize {
    let d = &frame.data;
    let end = d.len().min(58);
    let mut h: u32 = 0x811c_9dc5;
    for &b in d.get(26..end).unwrap_or(&[]) {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    h as usize
}

impl<H: Hal, T: Transport> VirtioNet<H, T> {
    /// Resets the device, negotiates features, sets up the queue pairs (and
    /// the control queue for MQ), posts receive buffers, sets DRIVER_OK
    /// and, with MQ, asks the device to use the pairs set up.
    ///
    /// On failure the transport is not dropped (virtio-drivers' PCI
    /// transport would wait for a reset without a bound): the device is
    /// left with FAILED set, or as it was if it never reset.
    pub fn new(transport: T, cfg: NetConfig, clock: &impl Clock) -> Result<Self, NetError> {
        let mut transport = ManuallyDrop::new(transport);
        if transport.device_type() != virtio_drivers::transport::DeviceType::Network {
            return Err(NetError::NotNet);
        }
        // §3.1.1: reset (wait for status 0), ACKNOWLEDGE, DRIVER.
        transport.set_status(DeviceStatus::empty());
        let deadline = clock.now().saturating_add(cfg.timeout_ns);
        while transport.get_status() != DeviceStatus::empty() {
            if clock.now() > deadline {
                return Err(NetError::ResetTimeout);
            }
            core::hint::spin_loop();
        }
        let mut status = DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER;
        transport.set_status(status);
        let offered = transport.read_device_features();
        let features = feat::negotiate(offered, cfg.max_pairs > 1).map_err(NetError::Features)?;
        transport.write_driver_features(features);
        status |= DeviceStatus::FEATURES_OK;
        transport.set_status(status);
        // §3.1.1 step 6: re-read; the device clears FEATURES_OK to refuse.
        if !transport.get_status().contains(DeviceStatus::FEATURES_OK) {
            transport.set_status(status | DeviceStatus::FAILED);
            return Err(NetError::FeaturesRefused);
        }
        let mut this = match Self::setup(transport, features, cfg) {
            Ok(t) => t,
            Err((mut t, e)) => {
                t.set_status(status | DeviceStatus::FAILED);
                return Err(e);
            }
        };
        this.transport.set_status(status | DeviceStatus::DRIVER_OK);
        if fail_status(this.transport.get_status()) {
            return Err(NetError::DeviceFailed);
        }
        for i in 0..this.pairs.len() {
            let q = this.pairs[i].rx.index();
            this.transport.notify(q);
        }
        if this.ctrl.is_some() {
            if let Err(e) = this.set_pairs(clock, cfg.timeout_ns) {
                this.transport.set_status(status | DeviceStatus::FAILED);
                return Err(e);
            }
        }
        Ok(this)
    }

    #[allow(clippy::result_large_err)]
    fn setup(
        mut transport: ManuallyDrop<T>,
        features: u64,
        cfg: NetConfig,
    ) -> Result<Self, (ManuallyDrop<T>, NetError)> {
        let mac = if features & feat::MAC != 0 {
            match transport.read_config_space::<[u8; 6]>(CFG_MAC) {
                Ok(b) => MacAddr(b),
                Err(_) => return Err((transport, NetError::Config)),
            }
        } else {
            // No MAC from the device: a locally administered one.
            MacAddr([0x02, 0x46, 0x45, 0x52, 0x52, 0x01])
        };
        let max_pairs = if features & feat::MQ != 0 {
            match transport.read_config_space::<u16>(CFG_MAX_PAIRS) {
                // §5.1.4: 1..=0x8000 when MQ is negotiated.
                Ok(n) if (1..=0x8000).contains(&n) => n,
                _ => return Err((transport, NetError::Config)),
            }
        } else {
            1
        };
        let wanted = max_pairs.min(cfg.max_pairs).max(1);
        let mut pairs = Vec::with_capacity(usize::from(wanted));
        for i in 0..wanted {
            let pair = (|| {
                let mut rx = BufQueue::new(&mut *transport, 2 * i)?;
                let mut tx = BufQueue::new(&mut *transport, 2 * i + 1)?;
                rx.suppress_interrupts();
                tx.suppress_interrupts();
                for _ in 0..cfg.rx_buffers.clamp(1, QUEUE_SIZE) {
                    rx.add(Vec::new(), vec![vec![0u8; RX_BUF]]).map_err(|(e, _, _)| e)?;
                }
                Ok(Pair { rx, tx })
            })();
            match pair {
                Ok(p) => pairs.push(p),
                Err(e) => return Err((transport, NetError::Queue(e))),
            }
        }
        // The control queue follows the device's last pair: index 2N.
        let ctrl = if features & feat::MQ != 0 && wanted > 1 {
            match BufQueue::new(&mut *transport, 2 * max_pairs) {
                Ok(mut q) => {
                    q.suppress_interrupts();
                    Some(q)
                }
                Err(e) => return Err((transport, NetError::Queue(e))),
            }
        } else {
            None
        };
        let rules = HdrRules {
            guest_csum: features & feat::GUEST_CSUM != 0,
            host_csum: features & feat::CSUM != 0,
            host_tso4: features & feat::HOST_TSO4 != 0,
            host_tso6: features & feat::HOST_TSO6 != 0,
        };
        Ok(VirtioNet {
            transport,
            pairs,
            ctrl,
            features,
            rules,
            mac,
            stats: NicStats::default(),
            next_rx: 0,
            broken: false,
        })
    }

    /// VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET for the pairs set up; waits for the
    /// ack until `timeout_ns` has passed.
    fn set_pairs(&mut self, clock: &impl Clock, timeout_ns: u64) -> Result<(), NetError> {
        let n = self.pairs.len() as u16;
        let Some(ctrl) = self.ctrl.as_mut() else { return Ok(()) };
        let cmd = vec![vec![CTRL_MQ, CTRL_MQ_VQ_PAIRS_SET], n.to_le_bytes().to_vec()];
        let token = ctrl.add(cmd, vec![vec![0xffu8]]).map_err(|(e, _, _)| NetError::Queue(e))?;
        if ctrl.should_notify() {
            self.transport.notify(ctrl.index());
        }
        let deadline = clock.now().saturating_add(timeout_ns);
        loop {
            match ctrl.pop() {
                Some(Ok(u)) if u.token == token => {
                    let ack = u.writable.first().and_then(|b| b.first().copied());
                    return if ack == Some(CTRL_OK) && u.len >= 1 { Ok(()) } else { Err(NetError::Control) };
                }
                Some(_) => return Err(NetError::Control),
                None if clock.now() > deadline => return Err(NetError::Control),
                None => core::hint::spin_loop(),
            }
        }
    }

    /// The negotiated feature bits.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The header rules in force (what the device may send, what we may ask).
    pub fn header_rules(&self) -> HdrRules {
        self.rules
    }

    /// Whether the device broke its contract and was given up.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Frames queued and not yet reclaimed, over all transmit queues.
    pub fn tx_in_flight(&self) -> usize {
        self.pairs.iter().map(|p| p.tx.in_flight()).sum()
    }

    fn device_error(&mut self) {
        self.stats.device_errors += 1;
        self.broken = true;
    }

    /// Takes one used receive buffer from pair `i`: the frame if it is
    /// good, and the buffer back on the queue either way.
    fn rx_one(&mut self, i: usize) -> Option<Option<Frame>> {
        let used = match self.pairs[i].rx.pop()? {
            Ok(u) => u,
            Err(_) => {
                self.device_error();
                return None;
            }
        };
        let mut bufs = used.writable;
        let frame = match bufs.first() {
            Some(buf) if !used.overrun && used.len >= HDR_LEN => {
                let h = NetHdr::parse(buf);
                let n = used.len - HDR_LEN;
                match h.map(|h| hdr::rx_meta(&h, n, &self.rules)) {
                    Some(Ok(meta)) => Some(Frame { data: buf[HDR_LEN..used.len].to_vec(), meta }),
                    _ => None,
                }
            }
            _ => None,
        };
        if used.overrun {
            self.stats.device_errors += 1;
        }
        match &frame {
            Some(f) => {
                self.stats.rx_frames += 1;
                self.stats.rx_bytes += f.data.len() as u64;
            }
            None => self.stats.rx_dropped += 1,
        }
        // Re-post the buffer, wiped: no bytes of one frame linger for the next.
        if let Some(b) = bufs.first_mut() {
            b.fill(0);
        }
        if bufs.len() != 1 || bufs[0].len() != RX_BUF {
            bufs = vec![vec![0u8; RX_BUF]];
        }
        let rx = &mut self.pairs[i].rx;
        if rx.add(Vec::new(), bufs).is_err() {
            self.stats.rx_dropped += 1;
        } else if rx.should_notify() {
            let q = rx.index();
            self.transport.notify(q);
        }
        Some(frame)
    }
}

/// Status reads a dropped device gets to show it reset (each is one MMIO
/// read; there is no clock in `drop`).
const RESET_POLLS: usize = 1_000_000;

impl<H: Hal, T: Transport> Drop for VirtioNet<H, T> {
    /// Resets the device (§3.1.1: writing 0) and frees the rings only once
    /// it reads back 0; a device that does not reset keeps its rings and
    /// buffers for ever (leaked), so it can never write freed memory.
    fn drop(&mut self) {
        self.transport.set_status(DeviceStatus::empty());
        let reset = (0..RESET_POLLS).any(|_| self.transport.get_status() == DeviceStatus::empty());
        if !reset {
            core::mem::forget(core::mem::take(&mut self.pairs));
            core::mem::forget(self.ctrl.take());
        }
    }
}

impl<H: Hal, T: Transport> Nic for VirtioNet<H, T> {
    fn mac(&self) -> MacAddr {
        self.mac
    }

    fn offloads(&self) -> Offloads {
        Offloads {
            tx_csum: self.rules.host_csum,
            tso4: self.rules.host_tso4,
            tso6: self.rules.host_tso6,
            rx_csum: self.rules.guest_csum,
        }
    }

    fn queue_pairs(&self) -> usize {
        self.pairs.len()
    }

    fn link(&mut self) -> LinkStatus {
        if self.features & feat::STATUS == 0 {
            return LinkStatus::Unknown;
        }
        match self.transport.read_config_space::<u16>(CFG_STATUS) {
            Ok(s) if s & S_LINK_UP != 0 => LinkStatus::Up,
            Ok(_) => LinkStatus::Down,
            Err(_) => LinkStatus::Unknown,
        }
    }

    fn transmit(&mut self, frame: &Frame) -> Result<(), NicError> {
        if self.broken {
            return Err(NicError::Device);
        }
        let h = hdr::tx_hdr(frame, &self.rules).map_err(|_| NicError::Unsupported)?;
        if frame.data.len() > net::MAX_FRAME || (frame.meta.gso.is_none() && frame.data.len() > MAX_PLAIN_FRAME) {
            return Err(NicError::Unsupported);
        }
        // With VERSION_1 the framing does not depend on the descriptors
        // (§2.6.4): a frame that fits a page goes with its header in one
        // descriptor; a larger one as the header, then page-sized pieces.
        let mut chain = Vec::with_capacity(1 + frame.data.len().div_ceil(TX_CHUNK));
        if HDR_LEN + frame.data.len() <= TX_CHUNK {
            let mut one = Vec::with_capacity(HDR_LEN + frame.data.len());
            one.extend_from_slice(&h.to_bytes());
            one.extend_from_slice(&frame.data);
            chain.push(one);
        } else {
            chain.push(h.to_bytes().to_vec());
            chain.extend(frame.data.chunks(TX_CHUNK).map(|c| c.to_vec()));
        }
        let i = flow_hash(frame) % self.pairs.len().max(1);
        let Some(pair) = self.pairs.get_mut(i) else { return Err(NicError::Device) };
        if chain.len() > pair.tx.free_descriptors() {
            // Make room from what the device finished, then retry once.
            self.reclaim();
        }
        let Some(pair) = self.pairs.get_mut(i) else { return Err(NicError::Device) };
        match pair.tx.add(chain, Vec::new()) {
            Ok(_) => {
                if pair.tx.should_notify() {
                    let q = pair.tx.index();
                    self.transport.notify(q);
                }
                self.stats.tx_frames += 1;
                self.stats.tx_bytes += frame.data.len() as u64;
                Ok(())
            }
            Err((QueueError::Full, _, _)) => Err(NicError::Full),
            Err((QueueError::Empty, _, _)) => Err(NicError::Unsupported),
            Err(_) => {
                self.device_error();
                Err(NicError::Device)
            }
        }
    }

    fn reclaim(&mut self) -> usize {
        let mut n = 0;
        let mut bad = false;
        for p in self.pairs.iter_mut() {
            // At most what is in flight: the device cannot make us spin.
            for _ in 0..QUEUE_SIZE {
                match p.tx.pop() {
                    Some(Ok(_)) => n += 1,
                    Some(Err(_)) => {
                        bad = true;
                        break;
                    }
                    None => break,
                }
            }
        }
        if bad {
            self.device_error();
        }
        self.stats.tx_completed += n as u64;
        n
    }

    fn receive(&mut self, out: &mut Vec<Frame>, budget: usize) -> usize {
        let mut got = 0;
        let pairs = self.pairs.len();
        if self.broken || pairs == 0 {
            return 0;
        }
        // Each pass looks at every queue once; a pass that finds nothing ends it.
        let mut idle = 0;
        let mut steps = 0usize;
        while got < budget && idle < pairs && steps < budget.saturating_add(pairs).saturating_mul(2) {
            steps += 1;
            let i = self.next_rx % pairs;
            self.next_rx = (i + 1) % pairs;
            match self.rx_one(i) {
                None => idle += 1,
                Some(f) => {
                    idle = 0;
                    if let Some(f) = f {
                        out.push(f);
                        got += 1;
                    }
                }
            }
            if self.broken {
                break;
            }
        }
        got
    }

    fn stats(&self) -> NicStats {
        self.stats
    }
}
