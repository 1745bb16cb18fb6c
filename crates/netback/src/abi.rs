//! The netif wire layouts (`xen/include/public/io/netif.h`), declared once
//! as `repr(C)` structs, size- and offset-checked at compile time, with
//! byte codecs (little-endian, x86) that never panic on any input.
//!
//! | struct              | bytes | fields (offset)                                  |
//! |---------------------|-------|--------------------------------------------------|
//! | `netif_tx_request`  | 12    | gref u32 (0), offset u16 (4), flags u16 (6), id u16 (8), size u16 (10) |
//! | `netif_extra_info`  | 8     | type u8 (0), flags u8 (1), union of 6 bytes (2)  |
//! | `netif_tx_response` | 4     | id u16 (0), status i16 (2)                       |
//! | `netif_rx_request`  | 8     | id u16 (0), pad u16 (2), gref u32 (4)            |
//! | `netif_rx_response` | 8     | id u16 (0), offset u16 (2), flags u16 (4), status i16 (6) |
//! | `netif_ctrl_request`  | 16  | id u16 (0), type u16 (2), data `[u32; 3]` (4)        |
//! | `netif_ctrl_response` | 12  | id u16 (0), type u16 (2), status u32 (4), data u32 (8) |
//!
//! The GSO member of the extra union: size u16 (2), type u8 (4), pad u8
//! (5), features u16 (6). A tx ring slot is 12 bytes (the request); an
//! extra-info segment rides in a tx request slot and, on the rx ring, in a
//! response slot (8 bytes).

use core::mem::{offset_of, size_of};
use xen_ring::RingEntry;

/// Checksum of the packet still to be filled in (`csum_blank`).
pub const NETTXF_CSUM_BLANK: u16 = 1 << 0;
/// The packet's checksum was already validated.
pub const NETTXF_DATA_VALIDATED: u16 = 1 << 1;
/// More fragments of this packet follow.
pub const NETTXF_MORE_DATA: u16 = 1 << 2;
/// An extra-info segment follows this first slot.
pub const NETTXF_EXTRA_INFO: u16 = 1 << 3;

/// rx: the packet's checksum was validated.
pub const NETRXF_DATA_VALIDATED: u16 = 1 << 0;
/// rx: the checksum field holds only the pseudo-header sum.
pub const NETRXF_CSUM_BLANK: u16 = 1 << 1;
/// rx: more slots of this packet follow.
pub const NETRXF_MORE_DATA: u16 = 1 << 2;
/// rx: an extra-info segment follows this first slot.
pub const NETRXF_EXTRA_INFO: u16 = 1 << 3;

/// Extra-info types.
pub const XEN_NETIF_EXTRA_TYPE_NONE: u8 = 0;
/// GSO parameters.
pub const XEN_NETIF_EXTRA_TYPE_GSO: u8 = 1;
/// Add a multicast filter address.
pub const XEN_NETIF_EXTRA_TYPE_MCAST_ADD: u8 = 2;
/// Remove a multicast filter address.
pub const XEN_NETIF_EXTRA_TYPE_MCAST_DEL: u8 = 3;
/// Packet hash.
pub const XEN_NETIF_EXTRA_TYPE_HASH: u8 = 4;
/// One past the last known type.
pub const XEN_NETIF_EXTRA_TYPE_MAX: u8 = 5;
/// Another extra-info segment follows.
pub const XEN_NETIF_EXTRA_FLAG_MORE: u8 = 1 << 0;

/// GSO types.
pub const XEN_NETIF_GSO_TYPE_NONE: u8 = 0;
/// TCP over IPv4.
pub const XEN_NETIF_GSO_TYPE_TCPV4: u8 = 1;
/// TCP over IPv6.
pub const XEN_NETIF_GSO_TYPE_TCPV6: u8 = 2;

/// Response status: this slot carried no response (an extra slot).
pub const NETIF_RSP_NULL: i16 = 1;
/// Response status: sent.
pub const NETIF_RSP_OKAY: i16 = 0;
/// Response status: malformed.
pub const NETIF_RSP_ERROR: i16 = -1;
/// Response status: dropped.
pub const NETIF_RSP_DROPPED: i16 = -2;

/// Slots a packet may use that every backend must accept
/// (`XEN_NETIF_NR_SLOTS_MIN`; Linux's `XEN_NETBK_LEGACY_SLOTS_MAX`).
pub const XEN_NETIF_NR_SLOTS_MIN: usize = 18;

/// `struct netif_tx_request`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxRequest {
    /// Grant of the page holding this fragment.
    pub gref: u32,
    /// Offset of the fragment in the page.
    pub offset: u16,
    /// `NETTXF_*`.
    pub flags: u16,
    /// Echoed in the response.
    pub id: u16,
    /// First slot: the whole packet's size; others: this fragment's.
    pub size: u16,
}

/// `struct netif_extra_info` (GSO view of the union; the raw six bytes are
/// kept for the other types).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExtraInfo {
    /// `XEN_NETIF_EXTRA_TYPE_*`.
    pub ty: u8,
    /// `XEN_NETIF_EXTRA_FLAG_*`.
    pub flags: u8,
    /// The union's six bytes.
    pub u: [u8; 6],
}

/// `struct netif_tx_response`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxResponse {
    /// The request's id.
    pub id: u16,
    /// `NETIF_RSP_*`.
    pub status: i16,
}

/// `struct netif_rx_request`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxRequest {
    /// Echoed in the response.
    pub id: u16,
    /// Padding.
    pub pad: u16,
    /// Grant of the page to fill.
    pub gref: u32,
}

/// `struct netif_rx_response`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxResponse {
    /// The request's id.
    pub id: u16,
    /// Offset of the data in the page.
    pub offset: u16,
    /// `NETRXF_*`.
    pub flags: u16,
    /// Bytes written (>= 0) or `NETIF_RSP_*` (< 0).
    pub status: i16,
}

const _: () = {
    assert!(size_of::<TxRequest>() == 12);
    assert!(offset_of!(TxRequest, offset) == 4);
    assert!(offset_of!(TxRequest, flags) == 6);
    assert!(offset_of!(TxRequest, id) == 8);
    assert!(offset_of!(TxRequest, size) == 10);
    assert!(size_of::<ExtraInfo>() == 8);
    assert!(offset_of!(ExtraInfo, u) == 2);
    assert!(size_of::<TxResponse>() == 4);
    assert!(offset_of!(TxResponse, status) == 2);
    assert!(size_of::<RxRequest>() == 8);
    assert!(offset_of!(RxRequest, gref) == 4);
    assert!(size_of::<RxResponse>() == 8);
    assert!(offset_of!(RxResponse, offset) == 2);
    assert!(offset_of!(RxResponse, flags) == 4);
    assert!(offset_of!(RxResponse, status) == 6);
};

fn u16_at(b: &[u8], off: usize) -> u16 {
    match b.get(off..off + 2) {
        Some(s) => u16::from_le_bytes([s[0], s[1]]),
        None => 0,
    }
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    match b.get(off..off + 4) {
        Some(s) => u32::from_le_bytes([s[0], s[1], s[2], s[3]]),
        None => 0,
    }
}

fn put(out: &mut [u8], off: usize, bytes: &[u8]) {
    if let Some(d) = out.get_mut(off..off + bytes.len()) {
        d.copy_from_slice(bytes);
    }
}

impl TxRequest {
    /// Decodes 12 bytes (missing bytes read as zero).
    pub fn decode(b: &[u8]) -> Self {
        TxRequest {
            gref: u32_at(b, 0),
            offset: u16_at(b, 4),
            flags: u16_at(b, 6),
            id: u16_at(b, 8),
            size: u16_at(b, 10),
        }
    }
    /// Encodes into 12 bytes.
    pub fn encode(&self, out: &mut [u8]) {
        put(out, 0, &self.gref.to_le_bytes());
        put(out, 4, &self.offset.to_le_bytes());
        put(out, 6, &self.flags.to_le_bytes());
        put(out, 8, &self.id.to_le_bytes());
        put(out, 10, &self.size.to_le_bytes());
    }
}

impl ExtraInfo {
    /// Decodes 8 bytes.
    pub fn decode(b: &[u8]) -> Self {
        let mut u = [0; 6];
        if let Some(s) = b.get(2..8) {
            u.copy_from_slice(s);
        }
        ExtraInfo { ty: b.first().copied().unwrap_or(0), flags: b.get(1).copied().unwrap_or(0), u }
    }
    /// Encodes into 8 bytes.
    pub fn encode(&self, out: &mut [u8]) {
        put(out, 0, &[self.ty, self.flags]);
        put(out, 2, &self.u);
    }
    /// A GSO extra: `size` (the MSS), `gso_type`.
    pub fn gso(size: u16, gso_type: u8) -> Self {
        let mut u = [0; 6];
        u[..2].copy_from_slice(&size.to_le_bytes());
        u[2] = gso_type;
        ExtraInfo { ty: XEN_NETIF_EXTRA_TYPE_GSO, flags: 0, u }
    }
    /// The GSO view: (size, type, features).
    pub fn gso_fields(&self) -> (u16, u8, u16) {
        (u16::from_le_bytes([self.u[0], self.u[1]]), self.u[2], u16::from_le_bytes([self.u[4], self.u[5]]))
    }
}

impl RxRequest {
    /// Decodes 8 bytes.
    pub fn decode(b: &[u8]) -> Self {
        RxRequest { id: u16_at(b, 0), pad: u16_at(b, 2), gref: u32_at(b, 4) }
    }
    /// Encodes into 8 bytes.
    pub fn encode(&self, out: &mut [u8]) {
        put(out, 0, &self.id.to_le_bytes());
        put(out, 2, &self.pad.to_le_bytes());
        put(out, 4, &self.gref.to_le_bytes());
    }
}

impl RxResponse {
    /// Decodes 8 bytes.
    pub fn decode(b: &[u8]) -> Self {
        RxResponse { id: u16_at(b, 0), offset: u16_at(b, 2), flags: u16_at(b, 4), status: u16_at(b, 6) as i16 }
    }
    /// Encodes into 8 bytes.
    pub fn encode(&self, out: &mut [u8]) {
        put(out, 0, &self.id.to_le_bytes());
        put(out, 2, &self.offset.to_le_bytes());
        put(out, 4, &self.flags.to_le_bytes());
        put(out, 6, &self.status.to_le_bytes());
    }
}

/// The tx ring's entry layout: a request slot is kept as its raw 12 bytes
/// (a data slot or an extra-info segment, told apart by the slot before
/// it), a response is a [`TxResponse`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxEntry;

/// The raw bytes of one tx request slot.
pub type TxSlot = [u8; 12];

impl RingEntry for TxEntry {
    type Request = TxSlot;
    type Response = TxResponse;
    fn request_size(&self) -> usize {
        12
    }
    fn response_size(&self) -> usize {
        4
    }
    fn decode_request(&self, bytes: &[u8]) -> TxSlot {
        let mut s = [0; 12];
        let n = bytes.len().min(12);
        s[..n].copy_from_slice(&bytes[..n]);
        s
    }
    fn encode_response(&self, rsp: &TxResponse, out: &mut [u8]) {
        put(out, 0, &rsp.id.to_le_bytes());
        put(out, 2, &rsp.status.to_le_bytes());
    }
    fn encode_request(&self, req: &TxSlot, out: &mut [u8]) {
        let n = out.len().min(12);
        out[..n].copy_from_slice(&req[..n]);
    }
    fn decode_response(&self, b: &[u8]) -> TxResponse {
        TxResponse { id: u16_at(b, 0), status: u16_at(b, 2) as i16 }
    }
}

/// What the backend writes into an rx response slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxSlot {
    /// A data response.
    Rsp(RxResponse),
    /// An extra-info segment (after a first response with
    /// `NETRXF_EXTRA_INFO`).
    Extra(ExtraInfo),
}

/// The rx ring's entry layout (8-byte requests and responses).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxEntry;

impl RingEntry for RxEntry {
    type Request = RxRequest;
    type Response = RxSlot;
    fn request_size(&self) -> usize {
        8
    }
    fn response_size(&self) -> usize {
        8
    }
    fn decode_request(&self, bytes: &[u8]) -> RxRequest {
        RxRequest::decode(bytes)
    }
    fn encode_response(&self, rsp: &RxSlot, out: &mut [u8]) {
        match rsp {
            RxSlot::Rsp(r) => r.encode(out),
            RxSlot::Extra(x) => x.encode(out),
        }
    }
    fn encode_request(&self, req: &RxRequest, out: &mut [u8]) {
        req.encode(out)
    }
    /// Frontend side: always decoded as a response (the frontend knows from
    /// the previous slot's flags when it is an extra instead; see
    /// [`ExtraInfo::decode`]).
    fn decode_response(&self, b: &[u8]) -> RxSlot {
        RxSlot::Rsp(RxResponse::decode(b))
    }
}

/// Control ring (`struct xen_netif_ctrl_request`, 16 bytes: id u16 (0),
/// type u16 (2), data `[u32; 3]` (4)).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtrlRequest {
    /// Echoed in the response.
    pub id: u16,
    /// `XEN_NETIF_CTRL_TYPE_*`.
    pub ty: u16,
    /// Arguments.
    pub data: [u32; 3],
}

/// `struct xen_netif_ctrl_response`, 12 bytes: id u16 (0), type u16 (2),
/// status u32 (4), data u32 (8).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtrlResponse {
    /// The request's id.
    pub id: u16,
    /// The request's type.
    pub ty: u16,
    /// `XEN_NETIF_CTRL_STATUS_*`.
    pub status: u32,
    /// Result.
    pub data: u32,
}

const _: () = {
    assert!(size_of::<CtrlRequest>() == 16);
    assert!(offset_of!(CtrlRequest, data) == 4);
    assert!(size_of::<CtrlResponse>() == 12);
    assert!(offset_of!(CtrlResponse, status) == 4);
    assert!(offset_of!(CtrlResponse, data) == 8);
};

/// Control message types.
pub const XEN_NETIF_CTRL_TYPE_INVALID: u16 = 0;
/// Which hash types the backend can compute.
pub const XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS: u16 = 1;
/// Which hash types to compute.
pub const XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS: u16 = 2;
/// The hash key (grant of its page, length).
pub const XEN_NETIF_CTRL_TYPE_SET_HASH_KEY: u16 = 3;
/// Largest mapping table the backend takes.
pub const XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE: u16 = 4;
/// Size of the mapping table.
pub const XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE: u16 = 5;
/// Part of the mapping table (grant, entries, offset).
pub const XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING: u16 = 6;
/// The hash algorithm.
pub const XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM: u16 = 7;

/// Control status: done.
pub const XEN_NETIF_CTRL_STATUS_SUCCESS: u32 = 0;
/// Control status: not supported.
pub const XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED: u32 = 1;
/// Control status: a bad argument.
pub const XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER: u32 = 2;
/// Control status: larger than we take.
pub const XEN_NETIF_CTRL_STATUS_BUFFER_OVERFLOW: u32 = 3;

/// No hash: the backend steers as it likes.
pub const XEN_NETIF_CTRL_HASH_ALGORITHM_NONE: u32 = 0;
/// Toeplitz hash.
pub const XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ: u32 = 1;
/// Hash over IPv4 addresses.
pub const XEN_NETIF_CTRL_HASH_TYPE_IPV4: u32 = 1 << 0;
/// Hash over IPv4 addresses and TCP ports.
pub const XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP: u32 = 1 << 1;
/// Hash over IPv6 addresses.
pub const XEN_NETIF_CTRL_HASH_TYPE_IPV6: u32 = 1 << 2;
/// Hash over IPv6 addresses and TCP ports.
pub const XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP: u32 = 1 << 3;

/// The control ring's entry layout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtrlEntry;

impl RingEntry for CtrlEntry {
    type Request = CtrlRequest;
    type Response = CtrlResponse;
    fn request_size(&self) -> usize {
        16
    }
    fn response_size(&self) -> usize {
        12
    }
    fn decode_request(&self, b: &[u8]) -> CtrlRequest {
        CtrlRequest { id: u16_at(b, 0), ty: u16_at(b, 2), data: [u32_at(b, 4), u32_at(b, 8), u32_at(b, 12)] }
    }
    fn encode_response(&self, r: &CtrlResponse, out: &mut [u8]) {
        put(out, 0, &r.id.to_le_bytes());
        put(out, 2, &r.ty.to_le_bytes());
        put(out, 4, &r.status.to_le_bytes());
        put(out, 8, &r.data.to_le_bytes());
    }
    fn encode_request(&self, r: &CtrlRequest, out: &mut [u8]) {
        put(out, 0, &r.id.to_le_bytes());
        put(out, 2, &r.ty.to_le_bytes());
        for (i, d) in r.data.iter().enumerate() {
            put(out, 4 + 4 * i, &d.to_le_bytes());
        }
    }
    fn decode_response(&self, b: &[u8]) -> CtrlResponse {
        CtrlResponse { id: u16_at(b, 0), ty: u16_at(b, 2), status: u32_at(b, 4), data: u32_at(b, 8) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden bytes against netif.h's layout (little-endian x86).
    #[test]
    fn golden_bytes() {
        let mut b = [0u8; 12];
        TxRequest { gref: 0x0403_0201, offset: 0x0605, flags: 0x0807, id: 0x0a09, size: 0x0c0b }.encode(&mut b);
        assert_eq!(b, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        assert_eq!(TxRequest::decode(&b).size, 0x0c0b);
        let mut b = [0u8; 8];
        ExtraInfo::gso(1448, XEN_NETIF_GSO_TYPE_TCPV6).encode(&mut b);
        assert_eq!(b, [1, 0, 0xa8, 0x05, 2, 0, 0, 0]);
        assert_eq!(ExtraInfo::decode(&b).gso_fields(), (1448, 2, 0));
        let mut b = [0u8; 4];
        TxEntry.encode_response(&TxResponse { id: 0x0201, status: NETIF_RSP_DROPPED }, &mut b);
        assert_eq!(b, [1, 2, 0xfe, 0xff]);
        let mut b = [0u8; 8];
        RxRequest { id: 0x0201, pad: 0, gref: 0x0807_0605 }.encode(&mut b);
        assert_eq!(b, [1, 2, 0, 0, 5, 6, 7, 8]);
        let mut b = [0u8; 8];
        RxResponse { id: 0x0201, offset: 0x0403, flags: NETRXF_MORE_DATA, status: 1514 }.encode(&mut b);
        assert_eq!(b, [1, 2, 3, 4, 4, 0, 0xea, 0x05]);
        assert_eq!(RxResponse::decode(&b).status, 1514);
        let mut b = [0u8; 16];
        CtrlEntry.encode_request(&CtrlRequest { id: 0x0201, ty: 7, data: [1, 0x0807_0605, 9] }, &mut b);
        assert_eq!(b, [1, 2, 7, 0, 1, 0, 0, 0, 5, 6, 7, 8, 9, 0, 0, 0]);
        assert_eq!(CtrlEntry.decode_request(&b).data[1], 0x0807_0605);
        let mut b = [0u8; 12];
        CtrlEntry.encode_response(&CtrlResponse { id: 3, ty: 4, status: 2, data: 128 }, &mut b);
        assert_eq!(b, [3, 0, 4, 0, 2, 0, 0, 0, 128, 0, 0, 0]);
        assert_eq!(xen_ring::ring_size(CtrlEntry.entry_size(), 0), 128);
        // Ring geometry: 256 slots on one page for both rings.
        assert_eq!(xen_ring::ring_size(TxEntry.entry_size(), 0), 256);
        assert_eq!(xen_ring::ring_size(RxEntry.entry_size(), 0), 256);
    }

    #[test]
    fn short_input_never_panics() {
        assert_eq!(TxRequest::decode(&[1, 2]), TxRequest::default());
        assert_eq!(ExtraInfo::decode(&[]), ExtraInfo::default());
        assert_eq!(RxRequest::decode(&[9]).id, 0);
    }
}
