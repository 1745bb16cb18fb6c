//! Software TCP segmentation (GSO) for receivers that cannot take a large
//! segment: the frame is cut into segments of at most `mss` payload bytes,
//! each with its own IP length (and IPv4 id and header checksum), TCP
//! sequence number, flags and a complete TCP checksum.

use crate::csum::{fill_ipv4_csum, fill_l4_csum};
use crate::packet::{self, L4};
use crate::{Frame, GsoKind, Meta};
use alloc::vec::Vec;

/// Smallest MSS we segment at (Linux's `TCP_MIN_MSS`): bounds the number
/// of segments (and the memory) one frame can ask for.
pub const MIN_MSS: u16 = 88;

/// Why a frame could not be segmented.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GsoError {
    /// The headers do not parse.
    Parse(packet::ParseError),
    /// Not TCP, or not the IP version the GSO kind names.
    WrongProtocol,
    /// An MSS below [`MIN_MSS`].
    BadMss,
}

/// TCP flags only the last segment keeps (FIN, PSH).
const LAST_ONLY: u8 = 0x01 | 0x08;
/// TCP flags only the first segment keeps (CWR).
const FIRST_ONLY: u8 = 0x80;

/// Cuts a GSO frame into plain segments (checksums complete, no offload
/// left). A frame without GSO comes back as itself.
pub fn segment(f: &Frame) -> Result<Vec<Frame>, GsoError> {
    let Some(gso) = f.meta.gso else { return Ok(alloc::vec![f.clone()]) };
    if gso.mss < MIN_MSS {
        return Err(GsoError::BadMss);
    }
    let h = packet::parse(&f.data).map_err(GsoError::Parse)?;
    let L4::Tcp { .. } = h.l4 else { return Err(GsoError::WrongProtocol) };
    if h.is_v6() != (gso.kind == GsoKind::TcpV6) {
        return Err(GsoError::WrongProtocol);
    }
    let hlen = h.header_len();
    let payload = &f.data[hlen..h.l3_end];
    let seq0 =
        u32::from_be_bytes([f.data[h.l4_off + 4], f.data[h.l4_off + 5], f.data[h.l4_off + 6], f.data[h.l4_off + 7]]);
    let flags0 = f.data[h.l4_off + 13];
    let id0 = u16::from_be_bytes([f.data[h.l3_off + 4], f.data[h.l3_off + 5]]);
    let mss = usize::from(gso.mss);
    let n = payload.len().div_ceil(mss).max(1);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let chunk = &payload[(i * mss).min(payload.len())..((i + 1) * mss).min(payload.len())];
        let mut d = Vec::with_capacity(hlen + chunk.len());
        d.extend_from_slice(&f.data[..hlen]);
        d.extend_from_slice(chunk);
        let l3 = h.l3_off;
        if h.is_v6() {
            // Payload length: extension headers + TCP header + data.
            let plen = (hlen - l3 - 40 + chunk.len()) as u16;
            d[l3 + 4..l3 + 6].copy_from_slice(&plen.to_be_bytes());
        } else {
            let total = (hlen - l3 + chunk.len()) as u16;
            d[l3 + 2..l3 + 4].copy_from_slice(&total.to_be_bytes());
            d[l3 + 4..l3 + 6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
            fill_ipv4_csum(&mut d[l3..h.l4_off]);
        }
        let seq = seq0.wrapping_add((i * mss) as u32);
        d[h.l4_off + 4..h.l4_off + 8].copy_from_slice(&seq.to_be_bytes());
        let mut flags = flags0;
        if i + 1 != n {
            flags &= !LAST_ONLY;
        }
        if i != 0 {
            flags &= !FIRST_ONLY;
        }
        d[h.l4_off + 13] = flags;
        fill_l4_csum(&mut d).map_err(|_| GsoError::WrongProtocol)?;
        out.push(Frame { data: d, meta: Meta::default() });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csum::{l4_csum_ok, prepare_partial, sum};
    use crate::packet::tests::{tcp4, tcp6, udp4_vlan};
    use crate::Gso;
    use proptest::prelude::*;

    fn gso_frame(v6: bool, payload: &[u8], mss: u16) -> Frame {
        let mut data = if v6 { tcp6(payload) } else { tcp4(payload, 4) };
        let csum = prepare_partial(&mut data).unwrap();
        let kind = if v6 { GsoKind::TcpV6 } else { GsoKind::TcpV4 };
        Frame { data, meta: Meta { csum, gso: Some(Gso { kind, mss }) } }
    }

    #[test]
    fn refuses_what_it_cannot_cut() {
        let mut f = gso_frame(false, &[1; 500], 87);
        assert_eq!(segment(&f), Err(GsoError::BadMss));
        f.meta.gso = Some(Gso { kind: GsoKind::TcpV6, mss: 100 });
        assert_eq!(segment(&f), Err(GsoError::WrongProtocol));
        let mut u = Frame::plain(udp4_vlan(&[0; 300]));
        u.meta.gso = Some(Gso { kind: GsoKind::TcpV4, mss: 100 });
        assert_eq!(segment(&u), Err(GsoError::WrongProtocol));
        let plain = Frame::plain(tcp4(b"x", 0));
        assert_eq!(segment(&plain).unwrap(), alloc::vec![plain.clone()]);
    }

    #[test]
    fn flags_ids_and_lengths() {
        let mut f = gso_frame(false, &[7; 250], 100);
        f.data[14 + 24 + 13] = 0x80 | 0x18 | 0x01; // CWR PSH ACK FIN
        let segs = segment(&f).unwrap();
        assert_eq!(segs.len(), 3);
        let flags: Vec<u8> = segs.iter().map(|s| s.data[14 + 24 + 13]).collect();
        assert_eq!(flags, [0x80 | 0x10, 0x10, 0x18 | 0x01]);
        let ids: Vec<u16> = segs.iter().map(|s| u16::from_be_bytes([s.data[18], s.data[19]])).collect();
        assert_eq!(ids, [0x1234, 0x1235, 0x1236]);
        let lens: Vec<u16> = segs.iter().map(|s| u16::from_be_bytes([s.data[16], s.data[17]])).collect();
        assert_eq!(lens, [144, 144, 94]);
        for s in &segs {
            assert_eq!(crate::csum::fold(sum(&s.data[14..38], 0)), 0xffff, "IPv4 header checksum");
        }
    }

    proptest! {
        /// Segments carry the payload in order with consecutive sequence
        /// numbers, never more than mss each, and all checksums verify.
        #[test]
        fn segments_reassemble(v6 in any::<bool>(), payload in proptest::collection::vec(any::<u8>(), 1..9000), mss in 88u16..3000) {
            let f = gso_frame(v6, &payload, mss);
            let h = packet::parse(&f.data).unwrap();
            let segs = segment(&f).unwrap();
            prop_assert_eq!(segs.len(), payload.len().div_ceil(usize::from(mss)));
            let mut back = Vec::new();
            let mut expect_seq = 0xffff_ff00u32;
            if v6 { expect_seq = 7; }
            for s in &segs {
                prop_assert!(l4_csum_ok(&s.data));
                prop_assert_eq!(s.meta, Meta::default());
                let sh = packet::parse(&s.data).unwrap();
                prop_assert_eq!(sh.header_len(), h.header_len());
                prop_assert_eq!(sh.l3_end, s.data.len());
                let body = &s.data[sh.header_len()..];
                prop_assert!(body.len() <= usize::from(mss));
                let seq = u32::from_be_bytes(s.data[sh.l4_off + 4..sh.l4_off + 8].try_into().unwrap());
                prop_assert_eq!(seq, expect_seq);
                expect_seq = expect_seq.wrapping_add(body.len() as u32);
                back.extend_from_slice(body);
            }
            prop_assert_eq!(back, payload);
        }
    }
}
