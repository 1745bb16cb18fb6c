//! `struct virtio_net_hdr` (virtio 1.x §5.1.6, "Device Operation") and its
//! mapping to and from [`net::Meta`].
//!
//! With VIRTIO_F_VERSION_1 the header is always 12 bytes, little endian:
//!
//! | offset | field |
//! |---|---|
//! | 0 | `flags` (u8): NEEDS_CSUM 1, DATA_VALID 2, RSC_INFO 4 |
//! | 1 | `gso_type` (u8): NONE 0, TCPV4 1, UDP 3, TCPV6 4, ECN 0x80 |
//! | 2 | `hdr_len` (le16) |
//! | 4 | `gso_size` (le16) |
//! | 6 | `csum_start` (le16) |
//! | 8 | `csum_offset` (le16) |
//! | 10 | `num_buffers` (le16) |
//!
//! Received headers are device data: [`rx_meta`] checks every field
//! against the frame and the negotiated features and refuses the frame
//! otherwise.

use net::{Csum, Frame, Gso, GsoKind, Meta};

/// Bytes of the header (VERSION_1 layout, with `num_buffers`).
pub const HDR_LEN: usize = 12;

/// `flags`: the checksum from `csum_start` on must be completed.
pub const F_NEEDS_CSUM: u8 = 1;
/// `flags`: the device checked the checksum (receive only).
pub const F_DATA_VALID: u8 = 2;
/// `flags`: coalescing info (receive only, never negotiated here).
pub const F_RSC_INFO: u8 = 4;

/// `gso_type` values.
pub const GSO_NONE: u8 = 0;
/// TCP over IPv4.
pub const GSO_TCPV4: u8 = 1;
/// UDP (UFO, never negotiated here).
pub const GSO_UDP: u8 = 3;
/// TCP over IPv6.
pub const GSO_TCPV6: u8 = 4;
/// ECN bit of `gso_type`.
pub const GSO_ECN: u8 = 0x80;

/// The header, decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetHdr {
    /// `flags`.
    pub flags: u8,
    /// `gso_type`.
    pub gso_type: u8,
    /// `hdr_len`.
    pub hdr_len: u16,
    /// `gso_size`.
    pub gso_size: u16,
    /// `csum_start`.
    pub csum_start: u16,
    /// `csum_offset`.
    pub csum_offset: u16,
    /// `num_buffers`.
    pub num_buffers: u16,
}

impl NetHdr {
    /// The wire bytes.
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        b
    }

    /// Decodes the first [`HDR_LEN`] bytes; `None` if there are fewer.
    pub fn parse(b: &[u8]) -> Option<NetHdr> {
        let b = b.get(..HDR_LEN)?;
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(NetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
            num_buffers: u(10),
        })
    }
}

/// Why a header was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HdrError {
    /// A flag or GSO type that was not negotiated or is unknown.
    Unexpected,
    /// `csum_start + csum_offset + 2` past the frame.
    CsumOutOfFrame,
    /// GSO without a partial checksum, a zero `gso_size`, or headers past
    /// the frame.
    BadGso,
    /// A frame over the non-GSO limit without GSO.
    TooLong,
    /// An empty frame.
    Empty,
}

/// What the driver negotiated that decides which headers are valid.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HdrRules {
    /// VIRTIO_NET_F_GUEST_CSUM: the device may hand us NEEDS_CSUM and DATA_VALID.
    pub guest_csum: bool,
    /// VIRTIO_NET_F_CSUM: we may send NEEDS_CSUM.
    pub host_csum: bool,
    /// VIRTIO_NET_F_HOST_TSO4.
    pub host_tso4: bool,
    /// VIRTIO_NET_F_HOST_TSO6.
    pub host_tso6: bool,
}

/// Largest frame without GSO: 1500 bytes of payload, Ethernet header and a
/// VLAN tag.
pub const MAX_PLAIN_FRAME: usize = 1518;

/// The metadata of a received frame of `frame_len` bytes (after the
/// header). GSO is never negotiated for receive, so any GSO type is
/// refused.
pub fn rx_meta(h: &NetHdr, frame_len: usize, rules: &HdrRules) -> Result<Meta, HdrError> {
    if frame_len == 0 {
        return Err(HdrError::Empty);
    }
    if h.gso_type != GSO_NONE || h.flags & !(F_NEEDS_CSUM | F_DATA_VALID) != 0 {
        return Err(HdrError::Unexpected);
    }
    if frame_len > MAX_PLAIN_FRAME {
        return Err(HdrError::TooLong);
    }
    let csum = if h.flags & F_NEEDS_CSUM != 0 {
        if !rules.guest_csum {
            return Err(HdrError::Unexpected);
        }
        let end = usize::from(h.csum_start) + usize::from(h.csum_offset) + 2;
        if end > frame_len {
            return Err(HdrError::CsumOutOfFrame);
        }
        Csum::Partial { start: h.csum_start, offset: h.csum_offset }
    } else if h.flags & F_DATA_VALID != 0 {
        if !rules.guest_csum {
            return Err(HdrError::Unexpected);
        }
        Csum::Validated
    } else {
        Csum::None
    };
    Ok(Meta { csum, gso: None })
}

/// The header to send `frame` with. The driver never sets DATA_VALID or
/// RSC_INFO on transmit; a [`Csum::Validated`] frame goes out as is.
pub fn tx_hdr(frame: &Frame, rules: &HdrRules) -> Result<NetHdr, HdrError> {
    let len = frame.data.len();
    if len == 0 {
        return Err(HdrError::Empty);
    }
    let mut h = NetHdr::default();
    if let Csum::Partial { start, offset } = frame.meta.csum {
        if !rules.host_csum {
            return Err(HdrError::Unexpected);
        }
        if usize::from(start) + usize::from(offset) + 2 > len {
            return Err(HdrError::CsumOutOfFrame);
        }
        h.flags = F_NEEDS_CSUM;
        h.csum_start = start;
        h.csum_offset = offset;
    }
    match frame.meta.gso {
        None if len > MAX_PLAIN_FRAME => return Err(HdrError::TooLong),
        None => {}
        Some(Gso { kind, mss }) => {
            let (ok, ty) = match kind {
                GsoKind::TcpV4 => (rules.host_tso4, GSO_TCPV4),
                GsoKind::TcpV6 => (rules.host_tso6, GSO_TCPV6),
            };
            if !ok {
                return Err(HdrError::Unexpected);
            }
            let Csum::Partial { start, .. } = frame.meta.csum else { return Err(HdrError::BadGso) };
            // hdr_len: up to the end of the TCP header (data offset in
            // the high nibble of byte 12 of the TCP header).
            let doff = frame.data.get(usize::from(start) + 12).ok_or(HdrError::BadGso)? >> 4;
            let tcp_len = usize::from(doff) * 4;
            let hdr_len = usize::from(start) + tcp_len;
            if mss == 0 || tcp_len < 20 || hdr_len > len {
                return Err(HdrError::BadGso);
            }
            h.gso_type = ty;
            h.gso_size = mss;
            h.hdr_len = hdr_len as u16;
        }
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn golden_bytes() {
        let h = NetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV6,
            hdr_len: 0x0102,
            gso_size: 0x0304,
            csum_start: 0x0506,
            csum_offset: 0x0708,
            num_buffers: 0x090a,
        };
        let b = h.to_bytes();
        assert_eq!(b, [1, 4, 2, 1, 4, 3, 6, 5, 8, 7, 0x0a, 9]);
        assert_eq!(NetHdr::parse(&b), Some(h));
        assert_eq!(NetHdr::parse(&b[..11]), None);
    }

    const ALL: HdrRules = HdrRules { guest_csum: true, host_csum: true, host_tso4: true, host_tso6: true };

    fn hdr(flags: u8, start: u16, offset: u16) -> NetHdr {
        NetHdr { flags, csum_start: start, csum_offset: offset, num_buffers: 1, ..NetHdr::default() }
    }

    #[test]
    fn rx_mapping() {
        assert_eq!(rx_meta(&hdr(0, 0, 0), 60, &ALL), Ok(Meta::default()));
        assert_eq!(rx_meta(&hdr(F_DATA_VALID, 0, 0), 60, &ALL).unwrap().csum, Csum::Validated);
        assert_eq!(rx_meta(&hdr(F_NEEDS_CSUM, 34, 6), 60, &ALL).unwrap().csum, Csum::Partial { start: 34, offset: 6 });
        // The checksum field must lie inside the frame.
        assert_eq!(rx_meta(&hdr(F_NEEDS_CSUM, 34, 6), 41, &ALL), Err(HdrError::CsumOutOfFrame));
        assert_eq!(rx_meta(&hdr(F_NEEDS_CSUM, 0xffff, 0xffff), 60, &ALL), Err(HdrError::CsumOutOfFrame));
        // Not negotiated: refused.
        let none = HdrRules::default();
        assert_eq!(rx_meta(&hdr(F_DATA_VALID, 0, 0), 60, &none), Err(HdrError::Unexpected));
        assert_eq!(rx_meta(&hdr(F_NEEDS_CSUM, 34, 6), 60, &none), Err(HdrError::Unexpected));
        assert_eq!(rx_meta(&hdr(F_RSC_INFO, 0, 0), 60, &ALL), Err(HdrError::Unexpected));
        let gso = NetHdr { gso_type: GSO_TCPV4, gso_size: 1448, ..hdr(F_NEEDS_CSUM, 34, 16) };
        assert_eq!(rx_meta(&gso, 9000, &ALL), Err(HdrError::Unexpected));
        assert_eq!(rx_meta(&hdr(0, 0, 0), 0, &ALL), Err(HdrError::Empty));
        assert_eq!(rx_meta(&hdr(0, 0, 0), MAX_PLAIN_FRAME + 1, &ALL), Err(HdrError::TooLong));
    }

    fn tcp4(len: usize) -> Frame {
        let mut d = vec![0u8; len];
        d[12..14].copy_from_slice(&[0x08, 0x00]);
        d[14] = 0x45;
        d[14 + 20 + 12] = 8 << 4; // 32-byte TCP header
        Frame::plain(d)
    }

    #[test]
    fn tx_mapping() {
        let mut f = tcp4(60);
        assert_eq!(tx_hdr(&f, &HdrRules::default()), Ok(NetHdr::default()));
        f.meta.csum = Csum::Validated;
        assert_eq!(tx_hdr(&f, &HdrRules::default()), Ok(NetHdr::default()));
        f.meta.csum = Csum::Partial { start: 34, offset: 16 };
        assert_eq!(tx_hdr(&f, &HdrRules::default()), Err(HdrError::Unexpected));
        let h = tx_hdr(&f, &ALL).unwrap();
        assert_eq!((h.flags, h.csum_start, h.csum_offset, h.gso_type), (F_NEEDS_CSUM, 34, 16, GSO_NONE));
        f.meta.csum = Csum::Partial { start: 34, offset: 25 };
        assert_eq!(tx_hdr(&f, &ALL), Err(HdrError::CsumOutOfFrame));

        let mut big = tcp4(20_000);
        assert_eq!(tx_hdr(&big, &ALL), Err(HdrError::TooLong));
        big.meta =
            Meta { csum: Csum::Partial { start: 34, offset: 16 }, gso: Some(Gso { kind: GsoKind::TcpV4, mss: 1448 }) };
        let h = tx_hdr(&big, &ALL).unwrap();
        assert_eq!((h.gso_type, h.gso_size, h.hdr_len), (GSO_TCPV4, 1448, 34 + 32));
        assert_eq!(tx_hdr(&big, &HdrRules { host_tso4: false, ..ALL }), Err(HdrError::Unexpected));
        big.meta.gso = Some(Gso { kind: GsoKind::TcpV6, mss: 1448 });
        assert_eq!(tx_hdr(&big, &HdrRules { host_tso6: false, ..ALL }), Err(HdrError::Unexpected));
        big.meta.gso = Some(Gso { kind: GsoKind::TcpV4, mss: 0 });
        assert_eq!(tx_hdr(&big, &ALL), Err(HdrError::BadGso));
        big.meta = Meta { csum: Csum::None, gso: Some(Gso { kind: GsoKind::TcpV4, mss: 1448 }) };
        assert_eq!(tx_hdr(&big, &ALL), Err(HdrError::BadGso));
        assert_eq!(tx_hdr(&Frame::plain(vec![]), &ALL), Err(HdrError::Empty));
    }
}
