//! The xenstore wire format (`xen/include/public/io/xs_wire.h`,
//! `docs/misc/xenstore.txt`).
//!
//! Every message, in either direction, is a 16-byte [`Header`] followed by
//! `len` payload bytes, `len <= PAYLOAD_MAX`. Payloads are mostly
//! NUL-terminated strings; the value of READ/WRITE is raw bytes.
//!
//! Building requests can fail only on caller input ([`XsError::InvalidArg`],
//! [`XsError::TooBig`]). Parsing replies never panics: every malformed input
//! maps to a [`ProtocolError`].

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write as _;
use core::mem::{offset_of, size_of};

use super::{ProtocolError, XsError};
use crate::types::DomId;

/// Largest payload either side may send (`XENSTORE_PAYLOAD_MAX`).
pub const PAYLOAD_MAX: usize = 4096;
/// Size of [`Header`] on the wire.
pub const HEADER_LEN: usize = 16;
/// Largest message: header plus maximal payload.
pub const MSG_MAX: usize = HEADER_LEN + PAYLOAD_MAX;

/// Message types (`enum xsd_sockmsg_type`). Numbering is ABI: 20 was
/// `XS_RESTRICT`, since removed, and stays unused here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum MsgType {
    /// `XS_CONTROL`, formerly `XS_DEBUG`.
    Control = 0,
    Directory = 1,
    Read = 2,
    GetPerms = 3,
    Watch = 4,
    Unwatch = 5,
    TransactionStart = 6,
    TransactionEnd = 7,
    Introduce = 8,
    Release = 9,
    GetDomainPath = 10,
    Write = 11,
    Mkdir = 12,
    Rm = 13,
    SetPerms = 14,
    WatchEvent = 15,
    Error = 16,
    IsDomainIntroduced = 17,
    Resume = 18,
    SetTarget = 19,
    ResetWatches = 21,
    DirectoryPart = 22,
}

impl MsgType {
    /// The type with wire number `v`, if this client knows it.
    pub fn from_u32(v: u32) -> Option<Self> {
        use MsgType::*;
        Some(match v {
            0 => Control,
            1 => Directory,
            2 => Read,
            3 => GetPerms,
            4 => Watch,
            5 => Unwatch,
            6 => TransactionStart,
            7 => TransactionEnd,
            8 => Introduce,
            9 => Release,
            10 => GetDomainPath,
            11 => Write,
            12 => Mkdir,
            13 => Rm,
            14 => SetPerms,
            15 => WatchEvent,
            16 => Error,
            17 => IsDomainIntroduced,
            18 => Resume,
            19 => SetTarget,
            21 => ResetWatches,
            22 => DirectoryPart,
            _ => return None,
        })
    }
}

/// `struct xsd_sockmsg`: four native-endian (little-endian on x86) `u32`s.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// `XS_*` message type (raw: the daemon may send numbers we don't know).
    pub ty: u32,
    /// Request id, echoed in the reply; 0 in watch events.
    pub req_id: u32,
    /// Transaction id, 0 outside transactions.
    pub tx_id: u32,
    /// Payload length in bytes.
    pub len: u32,
}

// Layout of `struct xsd_sockmsg` in xs_wire.h.
const _: () = assert!(size_of::<Header>() == HEADER_LEN);
const _: () = assert!(offset_of!(Header, ty) == 0);
const _: () = assert!(offset_of!(Header, req_id) == 4);
const _: () = assert!(offset_of!(Header, tx_id) == 8);
const _: () = assert!(offset_of!(Header, len) == 12);

impl Header {
    /// Serialises to the 16 wire bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&self.ty.to_le_bytes());
        b[4..8].copy_from_slice(&self.req_id.to_le_bytes());
        b[8..12].copy_from_slice(&self.tx_id.to_le_bytes());
        b[12..16].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// Deserialises 16 wire bytes. Any bit pattern is a `Header`; use
    /// [`Header::payload_len`] before trusting `len`.
    pub fn from_bytes(b: &[u8; HEADER_LEN]) -> Self {
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Header { ty: word(0), req_id: word(4), tx_id: word(8), len: word(12) }
    }

    /// `len` as a `usize`, or an error when it exceeds [`PAYLOAD_MAX`].
    pub fn payload_len(&self) -> Result<usize, ProtocolError> {
        let len = self.len as usize;
        if len > PAYLOAD_MAX {
            Err(ProtocolError::Oversize(self.len))
        } else {
            Ok(len)
        }
    }
}

/// Transaction id (`tx_id` header field). `TxId::NONE` (0) means "outside any
/// transaction".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxId(pub u32);

impl TxId {
    /// No transaction.
    pub const NONE: TxId = TxId(0);
}

/// The errno names xenstored may send in an `XS_ERROR` reply (the
/// `xsd_errors[]` table in xs_wire.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XsErrno {
    Inval,
    Acces,
    Exist,
    IsDir,
    NoEnt,
    NoMem,
    NoSpc,
    Io,
    NotEmpty,
    NoSys,
    RoFs,
    Busy,
    Again,
    IsConn,
    TooBig,
    Perm,
}

/// Name table, in xs_wire.h order.
const ERRNO_NAMES: [(XsErrno, &str); 16] = [
    (XsErrno::Inval, "EINVAL"),
    (XsErrno::Acces, "EACCES"),
    (XsErrno::Exist, "EEXIST"),
    (XsErrno::IsDir, "EISDIR"),
    (XsErrno::NoEnt, "ENOENT"),
    (XsErrno::NoMem, "ENOMEM"),
    (XsErrno::NoSpc, "ENOSPC"),
    (XsErrno::Io, "EIO"),
    (XsErrno::NotEmpty, "ENOTEMPTY"),
    (XsErrno::NoSys, "ENOSYS"),
    (XsErrno::RoFs, "EROFS"),
    (XsErrno::Busy, "EBUSY"),
    (XsErrno::Again, "EAGAIN"),
    (XsErrno::IsConn, "EISCONN"),
    (XsErrno::TooBig, "E2BIG"),
    (XsErrno::Perm, "EPERM"),
];

impl XsErrno {
    /// The errno for a name such as `b"ENOENT"` (without the NUL).
    pub fn from_name(name: &[u8]) -> Option<Self> {
        ERRNO_NAMES.iter().find(|(_, n)| n.as_bytes() == name).map(|(e, _)| *e)
    }

    /// The wire name, e.g. `"ENOENT"`.
    pub fn name(self) -> &'static str {
        // Every variant is in the table (checked by a unit test).
        ERRNO_NAMES.iter().find(|(e, _)| *e == self).map_or("EINVAL", |(_, n)| n)
    }
}

/// Access granted by one permission entry (`docs/misc/xenstore.txt`,
/// GET_PERMS/SET_PERMS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PermKind {
    /// `n`: no access.
    None,
    /// `r`: read only.
    Read,
    /// `w`: write only.
    Write,
    /// `b`: read and write.
    Both,
}

impl PermKind {
    fn letter(self) -> u8 {
        match self {
            PermKind::None => b'n',
            PermKind::Read => b'r',
            PermKind::Write => b'w',
            PermKind::Both => b'b',
        }
    }
    /// Whether this entry allows reading.
    pub fn can_read(self) -> bool {
        matches!(self, PermKind::Read | PermKind::Both)
    }
    /// Whether this entry allows writing.
    pub fn can_write(self) -> bool {
        matches!(self, PermKind::Write | PermKind::Both)
    }
}

/// One entry of a node's permission list. The first entry names the owner
/// (who always has full access) and gives the access of every domain not
/// listed; later entries grant `kind` to `domid`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Perm {
    pub kind: PermKind,
    pub domid: DomId,
}

impl Perm {
    /// Shorthand constructor.
    pub const fn new(kind: PermKind, domid: u16) -> Self {
        Perm { kind, domid: DomId(domid) }
    }

    /// Parses `n0`, `r5`, `w12`, `b65535`.
    pub fn parse(s: &[u8]) -> Result<Self, ProtocolError> {
        let (&letter, digits) = s.split_first().ok_or(ProtocolError::BadPerm)?;
        let kind = match letter {
            b'n' => PermKind::None,
            b'r' => PermKind::Read,
            b'w' => PermKind::Write,
            b'b' => PermKind::Both,
            _ => return Err(ProtocolError::BadPerm),
        };
        let domid = parse_decimal(digits).ok_or(ProtocolError::BadPerm)?;
        let domid = u16::try_from(domid).map_err(|_| ProtocolError::BadPerm)?;
        Ok(Perm { kind, domid: DomId(domid) })
    }
}

/// The wire form, e.g. `r5`.
impl core::fmt::Display for Perm {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}{}", char::from(self.kind.letter()), self.domid.0)
    }
}

/// Parses a non-empty unsigned decimal `u32` with no sign or spaces.
fn parse_decimal(s: &[u8]) -> Option<u32> {
    if s.is_empty() || s.len() > 10 {
        return None;
    }
    let mut v: u32 = 0;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u32::from(c - b'0'))?;
    }
    Some(v)
}

/// One field of a request payload.
#[derive(Clone, Copy, Debug)]
pub enum Field<'a> {
    /// A string followed by NUL; must not contain NUL itself.
    Str(&'a str),
    /// Raw bytes with no terminator (the value of WRITE); must come last.
    Raw(&'a [u8]),
}

/// Encodes a complete request (header and payload) into `out`, which is
/// cleared first. Fails with `InvalidArg` on an embedded NUL and `TooBig`
/// before `out` grows past [`MSG_MAX`].
pub fn encode_request(
    out: &mut Vec<u8>,
    ty: MsgType,
    req_id: u32,
    tx: TxId,
    fields: &[Field<'_>],
) -> Result<(), XsError> {
    let mut len = 0usize;
    for f in fields {
        len = len.saturating_add(match f {
            Field::Str(s) => {
                if s.as_bytes().contains(&0) {
                    return Err(XsError::InvalidArg);
                }
                s.len().saturating_add(1)
            }
            Field::Raw(b) => b.len(),
        });
    }
    if len > PAYLOAD_MAX {
        return Err(XsError::TooBig);
    }
    let hdr = Header { ty: ty as u32, req_id, tx_id: tx.0, len: len as u32 };
    out.clear();
    out.reserve(HEADER_LEN + len);
    out.extend_from_slice(&hdr.to_bytes());
    for f in fields {
        match f {
            Field::Str(s) => {
                out.extend_from_slice(s.as_bytes());
                out.push(0);
            }
            Field::Raw(b) => out.extend_from_slice(b),
        }
    }
    Ok(())
}

/// Encodes a permission list as SET_PERMS fields: `path\0perm\0perm\0...`.
/// Returns the payload bytes after the path, to be sent as one `Raw` field.
pub fn encode_perms(perms: &[Perm]) -> Result<Vec<u8>, XsError> {
    if perms.is_empty() {
        return Err(XsError::InvalidArg);
    }
    // Each entry is at most 1 letter + 5 digits + NUL.
    if perms.len().saturating_mul(7) > PAYLOAD_MAX {
        return Err(XsError::TooBig);
    }
    let mut out = String::with_capacity(perms.len() * 7);
    for p in perms {
        // Writing to a String cannot fail.
        let _ = write!(out, "{p}\0");
    }
    Ok(out.into_bytes())
}

/// Checks that `hdr` answers the request (`expected`, `req_id`), turning an
/// `XS_ERROR` reply into `XsError::Xs`.
pub fn check_reply(hdr: &Header, payload: &[u8], expected: MsgType, req_id: u32) -> Result<(), XsError> {
    if hdr.req_id != req_id {
        return Err(ProtocolError::ReqIdMismatch { expected: req_id, got: hdr.req_id }.into());
    }
    if hdr.ty == MsgType::Error as u32 {
        return Err(XsError::Xs(parse_error(payload)?));
    }
    if hdr.ty != expected as u32 {
        if MsgType::from_u32(hdr.ty).is_none() {
            return Err(ProtocolError::UnknownType(hdr.ty).into());
        }
        return Err(ProtocolError::TypeMismatch { expected: expected as u32, got: hdr.ty }.into());
    }
    Ok(())
}

/// Parses an `XS_ERROR` payload `E<name>\0`. An unknown but well-formed name
/// maps to `Inval`, as Linux and libxenstore do (xs_wire.h grows new names
/// from time to time, EPERM being the latest).
pub fn parse_error(payload: &[u8]) -> Result<XsErrno, ProtocolError> {
    let name = single_string(payload)?;
    Ok(XsErrno::from_name(name).unwrap_or_else(|| {
        log::warn!("xenstore: unknown error name {:?}, treating as EINVAL", core::str::from_utf8(name));
        XsErrno::Inval
    }))
}

/// Payload that is exactly one NUL-terminated string; returns it without NUL.
fn single_string(payload: &[u8]) -> Result<&[u8], ProtocolError> {
    match payload.split_last() {
        Some((0, body)) if !body.contains(&0) => Ok(body),
        Some((0, _)) => Err(ProtocolError::BadFieldCount),
        _ => Err(ProtocolError::MissingNul),
    }
}

/// Parses the `OK\0` acknowledgement of WRITE, MKDIR, RM, SET_PERMS, WATCH,
/// UNWATCH and TRANSACTION_END.
pub fn parse_ack(payload: &[u8]) -> Result<(), ProtocolError> {
    if single_string(payload)? == b"OK" {
        Ok(())
    } else {
        Err(ProtocolError::BadAck)
    }
}

/// Parses the `<transid>\0` reply of TRANSACTION_START.
pub fn parse_tx_id(payload: &[u8]) -> Result<TxId, ProtocolError> {
    let s = single_string(payload)?;
    match parse_decimal(s) {
        Some(0) | None => Err(ProtocolError::BadTxId),
        Some(v) => Ok(TxId(v)),
    }
}

/// Iterates over the NUL-terminated strings of `payload`. An empty payload
/// yields nothing; a payload whose last byte is not NUL is an error.
pub fn split_strings(payload: &[u8]) -> Result<impl Iterator<Item = &[u8]>, ProtocolError> {
    // `split` of an empty slice still yields one (empty) item: take none.
    let (body, count) = match payload.split_last() {
        None => (payload, 0),
        Some((0, body)) => (body, usize::MAX),
        Some(_) => return Err(ProtocolError::MissingNul),
    };
    Ok(body.split(|&b| b == 0).take(count))
}

fn to_string(b: &[u8]) -> Result<String, ProtocolError> {
    core::str::from_utf8(b).map(String::from).map_err(|_| ProtocolError::NotUtf8)
}

/// Parses a DIRECTORY reply: child leaf names, each NUL-terminated.
pub fn parse_directory(payload: &[u8]) -> Result<Vec<String>, ProtocolError> {
    split_strings(payload)?.map(to_string).collect()
}

/// Parses a GET_PERMS reply: one or more permission strings.
pub fn parse_perms(payload: &[u8]) -> Result<Vec<Perm>, ProtocolError> {
    let perms = split_strings(payload)?.map(Perm::parse).collect::<Result<Vec<_>, _>>()?;
    if perms.is_empty() {
        return Err(ProtocolError::BadFieldCount);
    }
    Ok(perms)
}

/// Parses a WATCH_EVENT payload `path\0token\0` into (path, token).
pub fn parse_watch_event(payload: &[u8]) -> Result<(String, String), ProtocolError> {
    let mut it = split_strings(payload)?;
    let (Some(path), Some(token), None) = (it.next(), it.next(), it.next()) else {
        return Err(ProtocolError::BadFieldCount);
    };
    Ok((to_string(path)?, to_string(token)?))
}

/// A READ value as UTF-8 text (values are usually ASCII; xenstored sends
/// them without a trailing NUL).
pub fn value_to_string(value: Vec<u8>) -> Result<String, ProtocolError> {
    String::from_utf8(value).map_err(|_| ProtocolError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn header_golden_bytes() {
        let h = Header { ty: MsgType::Write as u32, req_id: 0x0102_0304, tx_id: 7, len: 4096 };
        let b = h.to_bytes();
        assert_eq!(b, [11, 0, 0, 0, 0x04, 0x03, 0x02, 0x01, 7, 0, 0, 0, 0x00, 0x10, 0, 0]);
        assert_eq!(Header::from_bytes(&b), h);
        assert_eq!(h.payload_len(), Ok(4096));
        let big = Header { len: 4097, ..h };
        assert_eq!(big.payload_len(), Err(ProtocolError::Oversize(4097)));
    }

    #[test]
    fn type_numbers_match_xs_wire_h() {
        assert_eq!(MsgType::Control as u32, 0);
        assert_eq!(MsgType::Directory as u32, 1);
        assert_eq!(MsgType::Read as u32, 2);
        assert_eq!(MsgType::GetPerms as u32, 3);
        assert_eq!(MsgType::Watch as u32, 4);
        assert_eq!(MsgType::Unwatch as u32, 5);
        assert_eq!(MsgType::TransactionStart as u32, 6);
        assert_eq!(MsgType::TransactionEnd as u32, 7);
        assert_eq!(MsgType::GetDomainPath as u32, 10);
        assert_eq!(MsgType::Write as u32, 11);
        assert_eq!(MsgType::Mkdir as u32, 12);
        assert_eq!(MsgType::Rm as u32, 13);
        assert_eq!(MsgType::SetPerms as u32, 14);
        assert_eq!(MsgType::WatchEvent as u32, 15);
        assert_eq!(MsgType::Error as u32, 16);
        assert_eq!(MsgType::ResetWatches as u32, 21);
        assert_eq!(MsgType::DirectoryPart as u32, 22);
        for v in 0..64 {
            if let Some(t) = MsgType::from_u32(v) {
                assert_eq!(t as u32, v);
            }
        }
        assert_eq!(MsgType::from_u32(20), None);
        assert_eq!(MsgType::from_u32(0xffff), None);
    }

    #[test]
    fn errno_names_round_trip() {
        for (e, n) in ERRNO_NAMES {
            assert_eq!(XsErrno::from_name(n.as_bytes()), Some(e));
            assert_eq!(e.name(), n);
        }
        assert_eq!(XsErrno::from_name(b"ENOENT\0"), None);
        assert_eq!(parse_error(b"ENOENT\0"), Ok(XsErrno::NoEnt));
        assert_eq!(parse_error(b"E2BIG\0"), Ok(XsErrno::TooBig));
        assert_eq!(parse_error(b"EPERM\0"), Ok(XsErrno::Perm));
        assert_eq!(parse_error(b"EWHATEVER\0"), Ok(XsErrno::Inval));
        assert_eq!(parse_error(b"ENOENT"), Err(ProtocolError::MissingNul));
        assert_eq!(parse_error(b""), Err(ProtocolError::MissingNul));
        assert_eq!(parse_error(b"ENOENT\0X\0"), Err(ProtocolError::BadFieldCount));
    }

    #[test]
    fn write_request_golden_bytes() {
        let mut out = Vec::new();
        encode_request(&mut out, MsgType::Write, 5, TxId(9), &[Field::Str("data/x"), Field::Raw(b"on")]).unwrap();
        let mut want = vec![11, 0, 0, 0, 5, 0, 0, 0, 9, 0, 0, 0, 9, 0, 0, 0];
        want.extend_from_slice(b"data/x\0on");
        assert_eq!(out, want);
    }

    #[test]
    fn encode_rejects_bad_input() {
        let mut out = Vec::new();
        assert_eq!(
            encode_request(&mut out, MsgType::Read, 1, TxId::NONE, &[Field::Str("a\0b")]),
            Err(XsError::InvalidArg)
        );
        let big = vec![b'x'; PAYLOAD_MAX];
        assert_eq!(
            encode_request(&mut out, MsgType::Write, 1, TxId::NONE, &[Field::Str("p"), Field::Raw(&big)]),
            Err(XsError::TooBig)
        );
        let fits = vec![b'x'; PAYLOAD_MAX - 2];
        encode_request(&mut out, MsgType::Write, 1, TxId::NONE, &[Field::Str("p"), Field::Raw(&fits)]).unwrap();
        assert_eq!(out.len(), MSG_MAX);
        assert_eq!(encode_perms(&[]), Err(XsError::InvalidArg));
    }

    #[test]
    fn perms_round_trip() {
        let perms = [
            Perm::new(PermKind::None, 0),
            Perm::new(PermKind::Read, 5),
            Perm::new(PermKind::Write, 12),
            Perm::new(PermKind::Both, 65535),
        ];
        let enc = encode_perms(&perms).unwrap();
        assert_eq!(enc, b"n0\0r5\0w12\0b65535\0");
        assert_eq!(parse_perms(&enc).unwrap(), perms);
        for bad in [&b"x1\0"[..], b"r\0", b"r-1\0", b"r65536\0", b"r1 \0", b"\0", b"", b"r1"] {
            assert!(parse_perms(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn reply_parsers_reject_hostile_payloads() {
        assert_eq!(parse_ack(b"OK\0"), Ok(()));
        assert_eq!(parse_ack(b"OK"), Err(ProtocolError::MissingNul));
        assert_eq!(parse_ack(b"NO\0"), Err(ProtocolError::BadAck));
        assert_eq!(parse_tx_id(b"42\0"), Ok(TxId(42)));
        assert_eq!(parse_tx_id(b"0\0"), Err(ProtocolError::BadTxId));
        assert_eq!(parse_tx_id(b"4294967296\0"), Err(ProtocolError::BadTxId));
        assert_eq!(parse_tx_id(b"42"), Err(ProtocolError::MissingNul));
        assert_eq!(parse_directory(b""), Ok(vec![]));
        assert_eq!(parse_directory(b"a\0bc\0").unwrap(), ["a", "bc"]);
        assert_eq!(parse_directory(b"a\0bc"), Err(ProtocolError::MissingNul));
        assert_eq!(parse_directory(b"a\0\xff\0"), Err(ProtocolError::NotUtf8));
        assert_eq!(parse_watch_event(b"p\0t\0").unwrap(), ("p".into(), "t".into()));
        assert_eq!(parse_watch_event(b"p\0"), Err(ProtocolError::BadFieldCount));
        assert_eq!(parse_watch_event(b"p\0t\0x\0"), Err(ProtocolError::BadFieldCount));
        assert_eq!(parse_watch_event(b"p\0t"), Err(ProtocolError::MissingNul));
    }

    #[test]
    fn check_reply_matches_request() {
        let ok = Header { ty: MsgType::Read as u32, req_id: 3, tx_id: 0, len: 0 };
        assert_eq!(check_reply(&ok, b"", MsgType::Read, 3), Ok(()));
        assert_eq!(
            check_reply(&ok, b"", MsgType::Read, 4),
            Err(XsError::Protocol(ProtocolError::ReqIdMismatch { expected: 4, got: 3 }))
        );
        assert_eq!(
            check_reply(&ok, b"", MsgType::Write, 3),
            Err(XsError::Protocol(ProtocolError::TypeMismatch { expected: 11, got: 2 }))
        );
        let unk = Header { ty: 999, ..ok };
        assert_eq!(check_reply(&unk, b"", MsgType::Read, 3), Err(XsError::Protocol(ProtocolError::UnknownType(999))));
        let err = Header { ty: MsgType::Error as u32, ..ok };
        assert_eq!(check_reply(&err, b"EACCES\0", MsgType::Read, 3), Err(XsError::Xs(XsErrno::Acces)));
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let _ = parse_error(&payload);
            let _ = parse_ack(&payload);
            let _ = parse_tx_id(&payload);
            let _ = parse_directory(&payload);
            let _ = parse_perms(&payload);
            let _ = parse_watch_event(&payload);
        }

        #[test]
        fn header_round_trips(ty: u32, req_id: u32, tx_id: u32, len: u32) {
            let h = Header { ty, req_id, tx_id, len };
            proptest::prop_assert_eq!(Header::from_bytes(&h.to_bytes()), h);
        }
    }
}
