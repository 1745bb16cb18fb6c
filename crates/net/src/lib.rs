#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! Ethernet frames as they travel between Ferrite's netback (the guests'
//! vifs), its L2 switch and its NIC, with the offload state each hop must
//! honour.
//!
//! A [`Frame`] is the whole Ethernet frame (destination MAC first, no FCS)
//! plus [`Meta`]: whether its L4 checksum still has to be completed
//! ([`Csum::Partial`]) or was already checked ([`Csum::Validated`]), and
//! whether it is one large TCP segment to be cut at `mss` ([`Gso`]). Every
//! producer (netback tx, the NIC's receive path) validates what it puts in
//! `Meta` against the bytes; every consumer that cannot take an offload
//! (a netfront that did not negotiate it, a NIC without it) completes it in
//! software first.

extern crate alloc;

pub mod csum;
pub mod gso;
pub mod packet;
pub mod switch;

pub use csum::complete_csum;
pub use gso::segment;

use alloc::vec::Vec;
use core::fmt;

/// Largest frame the path carries: 64 KiB of GSO payload plus headers is
/// refused above this (netif's 16-bit sizes make 65535 the hard limit).
pub const MAX_FRAME: usize = 65_535;
/// Ethernet header: destination, source, ethertype.
pub const ETH_HLEN: usize = 14;

/// A 48-bit Ethernet address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// Group (multicast or broadcast) address: the I/G bit of the first octet.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }

    /// Parses `aa:bb:cc:dd:ee:ff` (as xl writes a vif's `mac` node); `None`
    /// for anything else.
    pub fn parse(s: &str) -> Option<MacAddr> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in out.iter_mut() {
            let p = parts.next()?;
            if p.len() != 2 {
                return None;
            }
            *b = u8::from_str_radix(p, 16).ok()?;
        }
        if parts.next().is_some() {
            return None;
        }
        Some(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The state of a frame's L4 (TCP/UDP) checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Csum {
    /// Nothing known: the checksum in the bytes is what the sender wrote.
    #[default]
    None,
    /// The checksum field holds only the pseudo-header sum: the sum over
    /// the bytes from `start` (the L4 header, from the frame's first byte)
    /// to the end must be folded into the field at `start + offset`
    /// (virtio's NEEDS_CSUM, netif's `csum_blank`).
    Partial {
        /// Offset of the L4 header in the frame.
        start: u16,
        /// Offset of the checksum field within the L4 header (16 for TCP,
        /// 6 for UDP).
        offset: u16,
    },
    /// The checksum was verified (or the frame never left trusted memory):
    /// receivers need not check it (netif's `data_validated`, virtio's
    /// DATA_VALID).
    Validated,
}

/// Which segmentation a large frame asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GsoKind {
    /// TCP over IPv4.
    TcpV4,
    /// TCP over IPv6.
    TcpV6,
}

/// Segmentation offload: the frame is one TCP segment larger than the
/// wire allows, to be cut into segments of at most `mss` payload bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gso {
    /// The protocol.
    pub kind: GsoKind,
    /// Largest TCP payload per segment (non-zero).
    pub mss: u16,
}

/// Offload state carried with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Meta {
    /// L4 checksum state.
    pub csum: Csum,
    /// Segmentation still to do, if any (implies `csum` is `Partial`).
    pub gso: Option<Gso>,
}

/// One Ethernet frame and its offload state.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Frame {
    /// The frame from the destination MAC on (no FCS), at most
    /// [`MAX_FRAME`] bytes.
    pub data: Vec<u8>,
    /// What is still to be done to it.
    pub meta: Meta,
}

impl Frame {
    /// A frame with nothing left to do.
    pub fn plain(data: Vec<u8>) -> Frame {
        Frame { data, meta: Meta::default() }
    }

    /// Destination MAC, if the frame is long enough to have one.
    pub fn dst(&self) -> Option<MacAddr> {
        let b = self.data.get(0..6)?;
        Some(MacAddr([b[0], b[1], b[2], b[3], b[4], b[5]]))
    }

    /// Source MAC, if the frame is long enough to have one.
    pub fn src(&self) -> Option<MacAddr> {
        let b = self.data.get(6..12)?;
        Some(MacAddr([b[0], b[1], b[2], b[3], b[4], b[5]]))
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame").field("len", &self.data.len()).field("meta", &self.meta).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parse_and_show() {
        let m = MacAddr::parse("00:16:3e:0a:0B:ff").unwrap();
        assert_eq!(m.0, [0x00, 0x16, 0x3e, 0x0a, 0x0b, 0xff]);
        assert_eq!(alloc::format!("{m}"), "00:16:3e:0a:0b:ff");
        for bad in
            ["", "00:16:3e:0a:0b", "00:16:3e:0a:0b:ff:00", "0:16:3e:0a:0b:ff", "zz:16:3e:0a:0b:ff", "00-16-3e-0a-0b-ff"]
        {
            assert_eq!(MacAddr::parse(bad), None, "{bad}");
        }
        assert!(MacAddr::BROADCAST.is_multicast());
        assert!(!m.is_multicast());
    }

    #[test]
    fn frame_addresses() {
        let mut d = alloc::vec![0u8; 14];
        d[..6].copy_from_slice(&[1, 2, 3, 4, 5, 6]);
        d[6..12].copy_from_slice(&[7, 8, 9, 10, 11, 12]);
        let f = Frame::plain(d);
        assert_eq!(f.dst(), Some(MacAddr([1, 2, 3, 4, 5, 6])));
        assert_eq!(f.src(), Some(MacAddr([7, 8, 9, 10, 11, 12])));
        assert_eq!(Frame::plain(alloc::vec![0; 11]).src(), None);
    }
}
