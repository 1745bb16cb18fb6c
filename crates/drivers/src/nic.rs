//! The NIC contract: what Ferrite's switch needs from any network device
//! (virtio-net today, a second NIC type later), split-phase and polled
//! (STYLE.md §6).
//!
//! - [`Nic::transmit`] queues one frame; [`NicError::Full`] means "no room
//!   now, reclaim and try later" and the caller keeps the frame.
//! - [`Nic::reclaim`] takes back what the device finished sending.
//! - [`Nic::receive`] hands over at most `budget` received frames, their
//!   [`net::Meta`] telling what the device checked.
//!
//! A frame given to `transmit` may carry [`net::Csum::Partial`] or
//! [`net::Gso`] only if [`Nic::offloads`] says the device does it; the
//! driver refuses ([`NicError::Unsupported`]) rather than send a frame with
//! a blank checksum.

use alloc::vec::Vec;

pub use net::{Frame, MacAddr};

/// What the device does for us.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offloads {
    /// Completes [`net::Csum::Partial`] checksums of frames we send.
    pub tx_csum: bool,
    /// Segments TCP/IPv4 [`net::Gso`] frames we send.
    pub tso4: bool,
    /// Segments TCP/IPv6 [`net::Gso`] frames we send.
    pub tso6: bool,
    /// Checks received checksums ([`net::Csum::Validated`]) and may hand us
    /// [`net::Csum::Partial`] frames.
    pub rx_csum: bool,
}

/// Link state as the device reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkStatus {
    /// Carrier.
    Up,
    /// No carrier.
    Down,
    /// The device does not report it.
    Unknown,
}

/// Why a NIC operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NicError {
    /// No room in the transmit queue now: reclaim and try later.
    Full,
    /// The frame is empty, too large, or asks for an offload the device
    /// does not do.
    Unsupported,
    /// The device broke its contract (bad used-ring entry, length past the
    /// buffer) or failed; the driver stopped using it.
    Device,
    /// DMA memory or mapping failed.
    Dma,
}

/// Counters every NIC keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NicStats {
    /// Frames queued for sending.
    pub tx_frames: u64,
    /// Bytes queued for sending.
    pub tx_bytes: u64,
    /// Transmissions the device completed.
    pub tx_completed: u64,
    /// Frames received.
    pub rx_frames: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Received frames dropped (bad header, bad length, no memory).
    pub rx_dropped: u64,
    /// Contract violations seen from the device.
    pub device_errors: u64,
}

/// A polled network device.
pub trait Nic {
    /// The device's MAC address.
    fn mac(&self) -> MacAddr;
    /// Offloads negotiated with the device.
    fn offloads(&self) -> Offloads;
    /// Transmit/receive queue pairs in use.
    fn queue_pairs(&self) -> usize;
    /// Link state.
    fn link(&mut self) -> LinkStatus;
    /// Queues `frame` for sending (it is copied; the caller keeps it).
    fn transmit(&mut self, frame: &Frame) -> Result<(), NicError>;
    /// Takes back buffers of completed transmissions; returns how many.
    fn reclaim(&mut self) -> usize;
    /// Appends at most `budget` received frames to `out`; returns how many.
    fn receive(&mut self, out: &mut Vec<Frame>, budget: usize) -> usize;
    /// Counters.
    fn stats(&self) -> NicStats;
}
