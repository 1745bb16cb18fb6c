//! The guest's transmit side as a pure parser: a sequence of copied tx
//! request slots becomes a [`Plan`] (what to copy from which grant, the
//! offload flags, one response per slot), and the copied bytes become a
//! [`net::Frame`].
//!
//! Wire format of one packet (netif.h): a first data slot whose `size` is
//! the whole packet's length; if it has `NETTXF_extra_info`, extra-info
//! segments follow (each may say `XEN_NETIF_EXTRA_FLAG_MORE`); then, while
//! the previous data slot has `NETTXF_more_data`, further data slots, each
//! `size` its own fragment's length. The first slot's own fragment is what
//! is left of its `size` after the others.
//!
//! Limits (Linux netback's): a packet may use [`MAX_DATA_SLOTS`] data slots;
//! up to [`FATAL_DATA_SLOTS`] it is answered `NETIF_RSP_ERROR` and the queue
//! goes on; a frontend that goes past that (or chains more than
//! [`MAX_EXTRAS`] extras) is broken and its queue stops taking requests.

use crate::abi::*;
use alloc::vec::Vec;
use net::packet::{self, L4};
use net::{Csum, Frame, Gso, GsoKind, Meta, ETH_HLEN, MAX_FRAME};

/// Data slots a packet may use (first + 17 fragments).
pub const MAX_DATA_SLOTS: usize = XEN_NETIF_NR_SLOTS_MIN;
/// Data slots past which the frontend is taken for broken (Linux's
/// `fatal_skb_slots` default).
pub const FATAL_DATA_SLOTS: usize = 20;
/// Extra-info segments one packet may chain (one of each known type).
pub const MAX_EXTRAS: usize = (XEN_NETIF_EXTRA_TYPE_MAX - 1) as usize;
/// Slots of the longest packet we ever hold while waiting for its end.
pub const MAX_PACKET_SLOTS: usize = FATAL_DATA_SLOTS + MAX_EXTRAS;
const PAGE: usize = 4096;

/// How far the slots gathered so far go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scan {
    /// The packet goes on past the last slot: wait for more.
    Incomplete,
    /// The first `n` slots make one packet.
    Complete(usize),
    /// The chain is longer than any packet may be: the frontend is broken.
    Fatal,
}

/// Walks the slot chain of the packet starting at `slots[0]`.
pub fn scan(slots: &[TxSlot]) -> Scan {
    let Some(first) = slots.first() else { return Scan::Incomplete };
    let first = TxRequest::decode(first);
    let mut i = 1;
    let mut extra = first.flags & NETTXF_EXTRA_INFO != 0;
    let mut extras = 0;
    while extra {
        if extras == MAX_EXTRAS {
            return Scan::Fatal;
        }
        let Some(s) = slots.get(i) else { return Scan::Incomplete };
        extra = ExtraInfo::decode(s).flags & XEN_NETIF_EXTRA_FLAG_MORE != 0;
        extras += 1;
        i += 1;
    }
    let mut more = first.flags & NETTXF_MORE_DATA != 0;
    let mut data = 1;
    while more {
        if data == FATAL_DATA_SLOTS {
            return Scan::Fatal;
        }
        let Some(s) = slots.get(i) else { return Scan::Incomplete };
        more = TxRequest::decode(s).flags & NETTXF_MORE_DATA != 0;
        data += 1;
        i += 1;
    }
    Scan::Complete(i)
}

/// Why a packet was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxError {
    /// More data slots than [`MAX_DATA_SLOTS`].
    TooManySlots(usize),
    /// The first slot's size is below an Ethernet header.
    TooShort(u16),
    /// The fragments add up to more than the first slot's size.
    SizeMismatch,
    /// A fragment crosses the end of its page.
    CrossesPage,
    /// An extra of unknown type.
    BadExtraType(u8),
    /// A GSO extra of unknown GSO type.
    BadGsoType(u8),
    /// A GSO extra with an MSS below [`net::gso::MIN_MSS`] (zero included).
    BadGsoSize(u16),
    /// GSO on a packet that is not TCP of the named IP version.
    GsoNotTcp,
    /// `csum_blank` on a packet whose TCP/UDP headers do not parse.
    CsumUnparsable,
    /// A grant copy failed.
    CopyFailed,
}

impl TxError {
    /// A fixed phrase for a log line.
    pub fn as_str(&self) -> &'static str {
        match self {
            TxError::TooManySlots(_) => "too many slots",
            TxError::TooShort(_) => "packet shorter than an Ethernet header",
            TxError::SizeMismatch => "fragment sizes exceed the packet size",
            TxError::CrossesPage => "fragment crosses its page",
            TxError::BadExtraType(_) => "unknown extra-info type",
            TxError::BadGsoType(_) => "unknown GSO type",
            TxError::BadGsoSize(_) => "bogus GSO size",
            TxError::GsoNotTcp => "GSO on a packet that is not TCP",
            TxError::CsumUnparsable => "csum_blank on an unparsable packet",
            TxError::CopyFailed => "grant copy failed",
        }
    }
}

/// One fragment to copy: `len` bytes at `offset` of grant `gref`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frag {
    /// The grant.
    pub gref: u32,
    /// Offset in its page.
    pub offset: u16,
    /// Bytes (non-zero).
    pub len: u16,
}

/// One answer per consumed slot: `Some(id)` for a data slot (gets the
/// packet's status), `None` for an extra slot (`NETIF_RSP_NULL`).
pub type Answers = Vec<Option<u16>>;

/// A validated packet: what to copy and how to describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Total length (the first slot's size).
    pub len: u16,
    /// Fragments in order, zero-length ones left out.
    pub frags: Vec<Frag>,
    /// `NETTXF_csum_blank`.
    pub csum_blank: bool,
    /// `NETTXF_data_validated`.
    pub data_validated: bool,
    /// A GSO extra: (kind, mss).
    pub gso: Option<Gso>,
}

/// The answers for the slots of one packet (any packet `scan` found
/// complete, valid or not).
pub fn answers(slots: &[TxSlot]) -> Answers {
    let mut out = Vec::with_capacity(slots.len());
    let Some(first) = slots.first() else { return out };
    let first = TxRequest::decode(first);
    out.push(Some(first.id));
    let mut extra = first.flags & NETTXF_EXTRA_INFO != 0;
    let mut i = 1;
    while extra && i < slots.len() {
        extra = ExtraInfo::decode(&slots[i]).flags & XEN_NETIF_EXTRA_FLAG_MORE != 0;
        out.push(None);
        i += 1;
    }
    for s in &slots[i..] {
        out.push(Some(TxRequest::decode(s).id));
    }
    out
}

/// Validates a complete packet's slots (as [`scan`] delimited them).
pub fn plan(slots: &[TxSlot]) -> Result<Plan, TxError> {
    let Some(first) = slots.first() else { return Err(TxError::TooShort(0)) };
    let first = TxRequest::decode(first);
    let mut i = 1;
    let mut gso = None;
    let mut extra = first.flags & NETTXF_EXTRA_INFO != 0;
    while extra && i < slots.len() {
        let x = ExtraInfo::decode(&slots[i]);
        extra = x.flags & XEN_NETIF_EXTRA_FLAG_MORE != 0;
        i += 1;
        match x.ty {
            XEN_NETIF_EXTRA_TYPE_GSO => {
                let (size, ty, _features) = x.gso_fields();
                let kind = match ty {
                    XEN_NETIF_GSO_TYPE_TCPV4 => GsoKind::TcpV4,
                    XEN_NETIF_GSO_TYPE_TCPV6 => GsoKind::TcpV6,
                    other => return Err(TxError::BadGsoType(other)),
                };
                if size < net::gso::MIN_MSS {
                    return Err(TxError::BadGsoSize(size));
                }
                gso = Some(Gso { kind, mss: size });
            }
            // Multicast filters and hashes change nothing about the packet
            // (we deliver multicast to every vif; no hash is used).
            XEN_NETIF_EXTRA_TYPE_MCAST_ADD | XEN_NETIF_EXTRA_TYPE_MCAST_DEL | XEN_NETIF_EXTRA_TYPE_HASH => {}
            other => return Err(TxError::BadExtraType(other)),
        }
    }
    let data: Vec<TxRequest> = slots[i..].iter().map(|s| TxRequest::decode(s)).collect();
    let nslots = data.len() + 1;
    if nslots > MAX_DATA_SLOTS {
        return Err(TxError::TooManySlots(nslots));
    }
    if usize::from(first.size) < ETH_HLEN {
        return Err(TxError::TooShort(first.size));
    }
    // The first slot's fragment: what the others leave of the total.
    let rest: usize = data.iter().map(|r| usize::from(r.size)).sum();
    let first_len = usize::from(first.size).checked_sub(rest).ok_or(TxError::SizeMismatch)?;
    let mut frags = Vec::with_capacity(nslots);
    for (r, len) in core::iter::once((first, first_len)).chain(data.iter().map(|r| (*r, usize::from(r.size)))) {
        if usize::from(r.offset) + len > PAGE {
            return Err(TxError::CrossesPage);
        }
        if len > 0 {
            // len <= PAGE: fits u16.
            frags.push(Frag { gref: r.gref, offset: r.offset, len: len as u16 });
        }
    }
    debug_assert!(usize::from(first.size) <= MAX_FRAME);
    Ok(Plan {
        len: first.size,
        frags,
        csum_blank: first.flags & NETTXF_CSUM_BLANK != 0,
        data_validated: first.flags & NETTXF_DATA_VALIDATED != 0,
        gso,
    })
}

/// Turns a packet's copied bytes into a frame with its offload state
/// checked against the headers.
///
/// `csum_blank` (and every GSO packet) becomes [`Csum::Partial`] at the
/// parsed TCP/UDP header, and the checksum field is rewritten with the
/// pseudo-header sum computed from the IP header (as Linux netback does
/// when it recalculates partial checksums), so that whoever completes it
/// gets a right checksum whatever the guest left there. A `csum_blank`
/// packet whose headers do not parse is dropped ([`TxError::CsumUnparsable`]):
/// we could not tell where its checksum goes. GSO must be TCP of the IP
/// version it names.
pub fn finish(plan: &Plan, mut data: Vec<u8>) -> Result<Frame, TxError> {
    let mut meta = Meta::default();
    if plan.csum_blank || plan.gso.is_some() {
        let h = packet::parse(&data).map_err(|_| {
            if plan.gso.is_some() {
                TxError::GsoNotTcp
            } else {
                TxError::CsumUnparsable
            }
        })?;
        if let Some(g) = plan.gso {
            if !matches!(h.l4, L4::Tcp { .. }) || h.is_v6() != (g.kind == GsoKind::TcpV6) {
                return Err(TxError::GsoNotTcp);
            }
        }
        let start = u16::try_from(h.l4_off).map_err(|_| TxError::CsumUnparsable)?;
        let at = h.l4_off + usize::from(h.csum_offset());
        let len = h.l3_end - h.l4_off;
        let p = net::csum::fold(net::csum::pseudo(&h.l3, h.proto(), len));
        data[at..at + 2].copy_from_slice(&p.to_be_bytes());
        meta.csum = Csum::Partial { start, offset: h.csum_offset() };
        meta.gso = plan.gso;
    } else if plan.data_validated {
        meta.csum = Csum::Validated;
    }
    Ok(Frame { data, meta })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(r: TxRequest) -> TxSlot {
        let mut s = [0; 12];
        r.encode(&mut s);
        s
    }
    fn xslot(x: ExtraInfo) -> TxSlot {
        let mut s = [0; 12];
        x.encode(&mut s);
        s
    }
    fn req(gref: u32, offset: u16, flags: u16, id: u16, size: u16) -> TxSlot {
        slot(TxRequest { gref, offset, flags, id, size })
    }

    #[test]
    fn scan_and_answers() {
        let s = [
            req(1, 0, NETTXF_EXTRA_INFO | NETTXF_MORE_DATA, 10, 3000),
            xslot(ExtraInfo { flags: XEN_NETIF_EXTRA_FLAG_MORE, ..ExtraInfo::gso(1448, 1) }),
            xslot(ExtraInfo { ty: XEN_NETIF_EXTRA_TYPE_MCAST_ADD, ..Default::default() }),
            req(2, 0, NETTXF_MORE_DATA, 11, 1000),
            req(3, 0, 0, 12, 1000),
            req(9, 0, 0, 13, 60),
        ];
        for n in 0..5 {
            assert_eq!(scan(&s[..n]), Scan::Incomplete, "{n}");
        }
        assert_eq!(scan(&s), Scan::Complete(5));
        assert_eq!(answers(&s[..5]), [Some(10), None, None, Some(11), Some(12)]);
        let p = plan(&s[..5]).unwrap();
        assert_eq!(p.frags.iter().map(|f| f.len).collect::<Vec<_>>(), [1000, 1000, 1000]);
        assert_eq!(p.gso, Some(Gso { kind: GsoKind::TcpV4, mss: 1448 }));
    }

    #[test]
    fn overlong_chains_are_fatal() {
        let mut s = alloc::vec![req(0, 0, NETTXF_MORE_DATA, 0, 100)];
        for _ in 0..FATAL_DATA_SLOTS - 1 {
            s.push(req(0, 0, NETTXF_MORE_DATA, 0, 1));
        }
        assert_eq!(scan(&s), Scan::Fatal);
        s.truncate(MAX_DATA_SLOTS + 1);
        s.last_mut().unwrap()[6] = 0;
        assert_eq!(scan(&s), Scan::Complete(MAX_DATA_SLOTS + 1));
        assert_eq!(plan(&s), Err(TxError::TooManySlots(MAX_DATA_SLOTS + 1)));
        let mut x = alloc::vec![req(0, 0, NETTXF_EXTRA_INFO, 0, 100)];
        for _ in 0..=MAX_EXTRAS {
            x.push(xslot(ExtraInfo { ty: 2, flags: XEN_NETIF_EXTRA_FLAG_MORE, u: [0; 6] }));
        }
        assert_eq!(scan(&x), Scan::Fatal);
    }

    #[test]
    fn hostile_sizes_and_extras() {
        let more = NETTXF_MORE_DATA;
        assert_eq!(plan(&[req(0, 0, 0, 0, 13)]), Err(TxError::TooShort(13)));
        assert_eq!(plan(&[req(0, 0, more, 0, 100), req(0, 0, 0, 0, 101)]), Err(TxError::SizeMismatch));
        assert_eq!(plan(&[req(0, 4000, 0, 0, 100)]), Err(TxError::CrossesPage));
        assert_eq!(plan(&[req(0, 0, more, 0, 5000), req(0, 100, 0, 0, 4000)]), Err(TxError::CrossesPage));
        let ex = |x: ExtraInfo| plan(&[req(0, 0, NETTXF_EXTRA_INFO, 0, 100), xslot(x)]);
        assert_eq!(ex(ExtraInfo { ty: 0, ..Default::default() }), Err(TxError::BadExtraType(0)));
        assert_eq!(ex(ExtraInfo { ty: 9, ..Default::default() }), Err(TxError::BadExtraType(9)));
        assert_eq!(ex(ExtraInfo::gso(0, 1)), Err(TxError::BadGsoSize(0)));
        assert_eq!(ex(ExtraInfo::gso(1448, 3)), Err(TxError::BadGsoType(3)));
        // Zero-length fragments are skipped, not copied.
        let p = plan(&[req(1, 0, more, 0, 100), req(2, 0, more, 0, 0), req(3, 0, 0, 0, 40)]).unwrap();
        assert_eq!(p.frags, [Frag { gref: 1, offset: 0, len: 60 }, Frag { gref: 3, offset: 0, len: 40 }]);
    }
}
