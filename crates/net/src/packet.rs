//! Header parsing for the frames netback, the switch and the NIC carry:
//! Ethernet (with up to two VLAN tags), IPv4 (options allowed), IPv6 (a
//! bounded walk over extension headers), TCP and UDP.
//!
//! Every offset is checked against the frame before it is used; a frame
//! that does not parse is an [`Err`], never a panic. Lengths come from the
//! IP header (not the frame length), so Ethernet padding after a short
//! packet is not taken for payload.

use crate::ETH_HLEN;

/// Ethertype of IPv4.
pub const ETH_P_IPV4: u16 = 0x0800;
/// Ethertype of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// Ethertype of an 802.1Q VLAN tag.
pub const ETH_P_8021Q: u16 = 0x8100;
/// Ethertype of an 802.1ad (QinQ) service tag.
pub const ETH_P_8021AD: u16 = 0x88a8;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// Offset of the checksum field in a TCP header.
pub const TCP_CSUM_OFF: u16 = 16;
/// Offset of the checksum field in a UDP header.
pub const UDP_CSUM_OFF: u16 = 6;
/// VLAN tags we look through.
const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers we walk before giving up.
const MAX_IPV6_EXT: usize = 8;

/// Why a frame's headers could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Shorter than a header it claims to have.
    Truncated,
    /// Not IPv4 or IPv6 (after VLAN tags).
    NotIp,
    /// A malformed IP header (version, header length, total length).
    BadIp,
    /// An IP fragment other than one whose L4 header is complete: no L4.
    Fragment,
    /// Neither TCP nor UDP (or too many IPv6 extension headers).
    NotTcpUdp,
    /// A malformed TCP header (data offset).
    BadTcp,
}

/// The network layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L3 {
    /// IPv4 with its addresses.
    V4 {
        /// Source address.
        src: [u8; 4],
        /// Destination address.
        dst: [u8; 4],
    },
    /// IPv6 with its addresses.
    V6 {
        /// Source address.
        src: [u8; 16],
        /// Destination address.
        dst: [u8; 16],
    },
}

/// The transport layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    /// TCP with its header length in bytes (20..=60).
    Tcp {
        /// Header length (data offset * 4).
        hlen: usize,
    },
    /// UDP (8-byte header).
    Udp,
}

/// Where a frame's headers are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Headers {
    /// Offset of the IP header (after Ethernet and VLAN tags).
    pub l3_off: usize,
    /// The IP header.
    pub l3: L3,
    /// Offset of the TCP/UDP header.
    pub l4_off: usize,
    /// The TCP/UDP header.
    pub l4: L4,
    /// End of the IP packet in the frame (anything after is link padding).
    pub l3_end: usize,
}

impl Headers {
    /// Length of all headers up to the end of the L4 header.
    pub fn header_len(&self) -> usize {
        self.l4_off
            + match self.l4 {
                L4::Tcp { hlen } => hlen,
                L4::Udp => 8,
            }
    }

    /// The L4 protocol number.
    pub fn proto(&self) -> u8 {
        match self.l4 {
            L4::Tcp { .. } => IPPROTO_TCP,
            L4::Udp => IPPROTO_UDP,
        }
    }

    /// Offset of the L4 checksum field within the L4 header.
    pub fn csum_offset(&self) -> u16 {
        match self.l4 {
            L4::Tcp { .. } => TCP_CSUM_OFF,
            L4::Udp => UDP_CSUM_OFF,
        }
    }

    /// Whether the network layer is IPv6.
    pub fn is_v6(&self) -> bool {
        matches!(self.l3, L3::V6 { .. })
    }
}

fn be16(d: &[u8], off: usize) -> Result<u16, ParseError> {
    let b = d.get(off..off.checked_add(2).ok_or(ParseError::Truncated)?).ok_or(ParseError::Truncated)?;
    Ok(u16::from_be_bytes([b[0], b[1]]))
}

fn byte(d: &[u8], off: usize) -> Result<u8, ParseError> {
    d.get(off).copied().ok_or(ParseError::Truncated)
}

/// The ethertype after up to two VLAN tags and the offset of what follows.
pub fn ethertype(d: &[u8]) -> Result<(u16, usize), ParseError> {
    let mut off = 12;
    let mut ty = be16(d, off)?;
    for _ in 0..MAX_VLAN_TAGS {
        if ty != ETH_P_8021Q && ty != ETH_P_8021AD {
            break;
        }
        off += 4;
        ty = be16(d, off)?;
    }
    if ty == ETH_P_8021Q || ty == ETH_P_8021AD {
        return Err(ParseError::NotIp);
    }
    let l3 = off + 2;
    debug_assert!(l3 >= ETH_HLEN);
    Ok((ty, l3))
}

/// Parses Ethernet, VLAN, IP and TCP/UDP headers.
pub fn parse(d: &[u8]) -> Result<Headers, ParseError> {
    let (ty, l3_off) = ethertype(d)?;
    let (l3, proto, l4_off, l3_end) = match ty {
        ETH_P_IPV4 => parse_v4(d, l3_off)?,
        ETH_P_IPV6 => parse_v6(d, l3_off)?,
        _ => return Err(ParseError::NotIp),
    };
    let l4 = match proto {
        IPPROTO_TCP => {
            let hlen = usize::from(byte(d, l4_off + 12)? >> 4) * 4;
            if hlen < 20 || l4_off + hlen > l3_end {
                return Err(ParseError::BadTcp);
            }
            L4::Tcp { hlen }
        }
        IPPROTO_UDP => {
            if l4_off + 8 > l3_end {
                return Err(ParseError::Truncated);
            }
            L4::Udp
        }
        _ => return Err(ParseError::NotTcpUdp),
    };
    Ok(Headers { l3_off, l3, l4_off, l4, l3_end })
}

fn parse_v4(d: &[u8], off: usize) -> Result<(L3, u8, usize, usize), ParseError> {
    let vihl = byte(d, off)?;
    let ihl = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return Err(ParseError::BadIp);
    }
    let total = usize::from(be16(d, off + 2)?);
    if total < ihl || off + total > d.len() {
        return Err(ParseError::BadIp);
    }
    let frag = be16(d, off + 6)?;
    // More fragments, or a non-zero fragment offset: no whole L4 segment.
    if frag & 0x3fff != 0 {
        return Err(ParseError::Fragment);
    }
    let mut src = [0; 4];
    let mut dst = [0; 4];
    src.copy_from_slice(d.get(off + 12..off + 16).ok_or(ParseError::Truncated)?);
    dst.copy_from_slice(d.get(off + 16..off + 20).ok_or(ParseError::Truncated)?);
    Ok((L3::V4 { src, dst }, byte(d, off + 9)?, off + ihl, off + total))
}

fn parse_v6(d: &[u8], off: usize) -> Result<(L3, u8, usize, usize), ParseError> {
    if byte(d, off)? >> 4 != 6 {
        return Err(ParseError::BadIp);
    }
    let payload = usize::from(be16(d, off + 4)?);
    let end = off + 40 + payload;
    if end > d.len() {
        return Err(ParseError::BadIp);
    }
    let mut src = [0; 16];
    let mut dst = [0; 16];
    src.copy_from_slice(d.get(off + 8..off + 24).ok_or(ParseError::Truncated)?);
    dst.copy_from_slice(d.get(off + 24..off + 40).ok_or(ParseError::Truncated)?);
    let mut next = byte(d, off + 6)?;
    let mut at = off + 40;
    for _ in 0..MAX_IPV6_EXT {
        let len = match next {
            // Hop-by-hop, routing, destination options: (len + 1) * 8.
            0 | 43 | 60 => (usize::from(byte(d, at + 1)?) + 1) * 8,
            // Authentication header: (len + 2) * 4.
            51 => (usize::from(byte(d, at + 1)?) + 2) * 4,
            44 => return Err(ParseError::Fragment),
            _ => {
                if at > end {
                    return Err(ParseError::BadIp);
                }
                return Ok((L3::V6 { src, dst }, next, at, end));
            }
        };
        next = byte(d, at)?;
        at += len;
        if at > end {
            return Err(ParseError::BadIp);
        }
    }
    Err(ParseError::NotTcpUdp)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use alloc::vec::Vec;

    /// An Ethernet + IPv4 + TCP frame with `payload` (checksums not set).
    pub fn tcp4(payload: &[u8], opts: usize) -> Vec<u8> {
        let mut d = alloc::vec![0u8; 14];
        d[12..14].copy_from_slice(&ETH_P_IPV4.to_be_bytes());
        let ihl = 20 + opts;
        let total = ihl + 20 + payload.len();
        let mut ip = alloc::vec![0u8; ihl];
        ip[0] = 0x40 | (ihl / 4) as u8;
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        ip[8] = 64;
        ip[9] = IPPROTO_TCP;
        ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
        ip[16..20].copy_from_slice(&[10, 0, 0, 2]);
        d.extend_from_slice(&ip);
        let mut tcp = [0u8; 20];
        tcp[0..2].copy_from_slice(&1000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
        tcp[4..8].copy_from_slice(&0xffff_ff00u32.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = 0x18; // PSH ACK
        d.extend_from_slice(&tcp);
        d.extend_from_slice(payload);
        d
    }

    /// An Ethernet + IPv6 (one destination-options header) + TCP frame.
    pub fn tcp6(payload: &[u8]) -> Vec<u8> {
        let mut d = alloc::vec![0u8; 14];
        d[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
        let mut ip = [0u8; 40];
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&((8 + 20 + payload.len()) as u16).to_be_bytes());
        ip[6] = 60;
        ip[7] = 64;
        ip[8] = 0xfe;
        ip[23] = 1;
        ip[24] = 0xfe;
        ip[39] = 2;
        d.extend_from_slice(&ip);
        d.extend_from_slice(&[IPPROTO_TCP, 0, 1, 4, 0, 0, 0, 0]);
        let mut tcp = [0u8; 20];
        tcp[4..8].copy_from_slice(&7u32.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = 0x11; // FIN ACK
        d.extend_from_slice(&tcp);
        d.extend_from_slice(payload);
        d
    }

    /// An Ethernet + VLAN + IPv4 + UDP frame.
    pub fn udp4_vlan(payload: &[u8]) -> Vec<u8> {
        let mut d = alloc::vec![0u8; 12];
        d.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
        d.extend_from_slice(&[0, 5]);
        d.extend_from_slice(&ETH_P_IPV4.to_be_bytes());
        let total = 20 + 8 + payload.len();
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        ip[9] = IPPROTO_UDP;
        ip[12..16].copy_from_slice(&[192, 168, 0, 1]);
        ip[16..20].copy_from_slice(&[192, 168, 0, 2]);
        d.extend_from_slice(&ip);
        let mut udp = [0u8; 8];
        udp[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        d.extend_from_slice(&udp);
        d.extend_from_slice(payload);
        d
    }

    #[test]
    fn parses_v4_options_v6_ext_vlan() {
        let h = parse(&tcp4(b"hello", 8)).unwrap();
        assert_eq!((h.l3_off, h.l4_off, h.header_len(), h.l3_end), (14, 42, 62, 67));
        assert_eq!(h.l4, L4::Tcp { hlen: 20 });
        let h = parse(&tcp6(b"x")).unwrap();
        assert_eq!((h.l4_off, h.l3_end), (14 + 48, 14 + 48 + 21));
        assert!(h.is_v6());
        let h = parse(&udp4_vlan(b"abc")).unwrap();
        assert_eq!((h.l3_off, h.l4_off, h.l4), (18, 38, L4::Udp));
    }

    #[test]
    fn refuses_bad_headers() {
        let mut f = tcp4(b"hello", 0);
        f[14] = 0x44;
        assert_eq!(parse(&f), Err(ParseError::BadIp));
        let mut f = tcp4(b"hello", 0);
        f[16..18].copy_from_slice(&900u16.to_be_bytes());
        assert_eq!(parse(&f), Err(ParseError::BadIp));
        let mut f = tcp4(b"hello", 0);
        f[20] = 0x20; // MF
        assert_eq!(parse(&f), Err(ParseError::Fragment));
        let mut f = tcp4(b"hello", 0);
        f[34 + 12] = 0xf0; // data offset 60 > packet
        assert_eq!(parse(&f), Err(ParseError::BadTcp));
        let mut f = tcp4(b"", 0);
        f[23] = 1; // ICMP
        assert_eq!(parse(&f), Err(ParseError::NotTcpUdp));
        assert_eq!(parse(&[0u8; 5]), Err(ParseError::Truncated));
        let mut f = tcp6(b"x");
        f[14 + 40 + 1] = 200; // ext header past the packet
        assert_eq!(parse(&f), Err(ParseError::BadIp));
        // Three VLAN tags: not looked through.
        let mut f = alloc::vec![0u8; 12];
        for _ in 0..3 {
            f.extend_from_slice(&[0x81, 0, 0, 1]);
        }
        f.extend_from_slice(&[0x08, 0]);
        assert_eq!(parse(&f), Err(ParseError::NotIp));
    }

    #[test]
    fn never_panics_on_prefixes() {
        for f in [tcp4(b"hello", 4), tcp6(b"abc"), udp4_vlan(b"z")] {
            for n in 0..f.len() {
                let _ = parse(&f[..n]);
            }
        }
    }
}
