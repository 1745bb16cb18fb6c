//! Internet checksums (RFC 1071) and software completion of a frame's
//! offloaded L4 checksum.

use crate::packet::{self, Headers, L3};
use crate::{Csum, Frame};

/// Why a checksum could not be completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CsumError {
    /// `start + offset + 2` lies outside the frame.
    BadOffsets,
    /// The headers do not parse (only for [`fill_l4_csum`]).
    Parse(packet::ParseError),
}

/// Adds `data` as big-endian 16-bit words to `acc` (an odd last byte is
/// padded with zero). The result is unfolded.
pub fn sum(data: &[u8], mut acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Folds an accumulated sum to 16 bits (one's complement addition).
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The pseudo-header sum of `l3` for protocol `proto` and an L4 length
/// of `len` bytes (unfolded).
pub fn pseudo(l3: &L3, proto: u8, len: usize) -> u64 {
    let acc = match l3 {
        L3::V4 { src, dst } => sum(dst, sum(src, 0)),
        L3::V6 { src, dst } => sum(dst, sum(src, 0)),
    };
    acc + u64::from(proto) + (len as u64 & 0xffff_ffff)
}

/// Completes a [`Csum::Partial`] frame in software: folds the sum of the
/// bytes from `start` to the end of the frame (the field already holds the
/// pseudo-header sum) into the field at `start + offset`, and leaves the
/// frame with [`Csum::None`] (the receiver checks the result as usual).
/// Any other frame is left alone.
pub fn complete_csum(f: &mut Frame) -> Result<(), CsumError> {
    let Csum::Partial { start, offset } = f.meta.csum else { return Ok(()) };
    let (start, at) = (usize::from(start), usize::from(start) + usize::from(offset));
    if at + 2 > f.data.len() || start > at {
        return Err(CsumError::BadOffsets);
    }
    let c = !fold(sum(&f.data[start..], 0));
    f.data[at..at + 2].copy_from_slice(&c.to_be_bytes());
    f.meta.csum = Csum::None;
    Ok(())
}

/// Computes a frame's TCP/UDP checksum from scratch (pseudo-header
/// included) and stores it; returns the parsed headers.
pub fn fill_l4_csum(data: &mut [u8]) -> Result<Headers, CsumError> {
    let h = packet::parse(data).map_err(CsumError::Parse)?;
    let at = h.l4_off + usize::from(h.csum_offset());
    data[at..at + 2].fill(0);
    let len = h.l3_end - h.l4_off;
    let mut c = !fold(sum(&data[h.l4_off..h.l3_end], pseudo(&h.l3, h.proto(), len)));
    if c == 0 && h.proto() == packet::IPPROTO_UDP {
        c = 0xffff; // UDP: zero means "no checksum"
    }
    data[at..at + 2].copy_from_slice(&c.to_be_bytes());
    Ok(h)
}

/// Whether a frame's TCP/UDP checksum is right (tests and diagnostics).
pub fn l4_csum_ok(data: &[u8]) -> bool {
    let Ok(h) = packet::parse(data) else { return false };
    let len = h.l3_end - h.l4_off;
    fold(sum(&data[h.l4_off..h.l3_end], pseudo(&h.l3, h.proto(), len))) == 0xffff
}

/// Recomputes an IPv4 header checksum in place (`hdr` is the whole IPv4
/// header, options included).
pub fn fill_ipv4_csum(hdr: &mut [u8]) {
    if hdr.len() < 20 {
        return;
    }
    hdr[10..12].fill(0);
    let c = !fold(sum(hdr, 0));
    hdr[10..12].copy_from_slice(&c.to_be_bytes());
}

/// Prepares a frame for [`Csum::Partial`] the way a sender offloading its
/// checksum does: the field gets the pseudo-header sum; returns the
/// `Partial` to put in its meta.
pub fn prepare_partial(data: &mut [u8]) -> Result<Csum, CsumError> {
    let h = packet::parse(data).map_err(CsumError::Parse)?;
    let at = h.l4_off + usize::from(h.csum_offset());
    let len = h.l3_end - h.l4_off;
    let p = fold(pseudo(&h.l3, h.proto(), len));
    data[at..at + 2].copy_from_slice(&p.to_be_bytes());
    let start = u16::try_from(h.l4_off).map_err(|_| CsumError::BadOffsets)?;
    Ok(Csum::Partial { start, offset: h.csum_offset() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::tests::{tcp4, tcp6, udp4_vlan};
    use alloc::vec::Vec;
    use proptest::prelude::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: 0001 f203 f4f5 f6f7 sums to ddf2.
        assert_eq!(fold(sum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7], 0)), 0xddf2);
        assert_eq!(fold(sum(&[0xff], 0)), 0xff00);
    }

    #[test]
    fn bad_offsets_refused() {
        let mut f = Frame::plain(tcp4(b"abc", 0));
        f.meta.csum = Csum::Partial { start: 60, offset: 16 };
        assert_eq!(complete_csum(&mut f), Err(CsumError::BadOffsets));
        let mut plain = Frame::plain(tcp4(b"abc", 0));
        let before = plain.clone();
        complete_csum(&mut plain).unwrap();
        assert_eq!(plain, before, "only Partial frames are touched");
    }

    fn build(kind: u8, payload: &[u8]) -> Vec<u8> {
        match kind % 3 {
            0 => tcp4(payload, usize::from(kind % 2) * 4),
            1 => tcp6(payload),
            _ => udp4_vlan(payload),
        }
    }

    proptest! {
        /// A partial checksum completed in software verifies, for TCP/UDP
        /// over v4 (with options) and v6 (with an extension header).
        #[test]
        fn completion_verifies(kind in 0u8..6, payload in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let mut data = build(kind, &payload);
            let csum = prepare_partial(&mut data).unwrap();
            let mut f = Frame { data, meta: crate::Meta { csum, gso: None } };
            complete_csum(&mut f).unwrap();
            prop_assert!(l4_csum_ok(&f.data));
            prop_assert_eq!(f.meta.csum, Csum::None);
        }

        /// A single flipped payload bit is caught.
        #[test]
        fn flip_detected(payload in proptest::collection::vec(any::<u8>(), 1..500), bit in 0usize..4000) {
            let mut data = tcp4(&payload, 0);
            fill_l4_csum(&mut data).unwrap();
            prop_assert!(l4_csum_ok(&data));
            let i = 54 + (bit / 8) % payload.len();
            data[i] ^= 1 << (bit % 8);
            prop_assert!(!l4_csum_ok(&data));
        }
    }
}
