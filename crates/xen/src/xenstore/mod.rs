//! Xenstore: wire codec, shared-page ring and a blocking-with-deadline client.
//!
//! Layers, from the bottom:
//! - [`wire`]: the `xsd_sockmsg` header, message types, request payload
//!   builders and reply parsers. Pure code over byte slices; never panics on
//!   what the daemon sends.
//! - [`ring`]: the two byte rings of `struct xenstore_domain_interface` over a
//!   [`SharedMem`](crate::shmem::SharedMem) page. Indices are read once per
//!   step and checked, so a daemon that corrupts them gets an error, not a
//!   hang.
//! - [`client`]: [`XsClient`], one request in flight at a time, every wait
//!   bounded by a deadline taken from the [`Notifier`](crate::wait::Notifier)'s
//!   clock; watch events that arrive meanwhile go to a bounded queue.
//!
//! Host tests drive the client against [`fake::FakeXenstored`], an in-memory
//! daemon that plays the server side of the same ring page (always compiled,
//! like `evtchn::fake`, so other crates' tests can use it).
//!
//! No `unsafe` anywhere under this module (forbidden below): raw page access
//! is the `hal`'s job.
//!
//! Sources for the constants: Xen `xen/include/public/io/xs_wire.h` and
//! `docs/misc/xenstore.txt`.
#![forbid(unsafe_code)]

pub mod client;
pub mod ring;
pub mod wire;

pub mod fake;

#[cfg(test)]
mod tests;

pub use client::{Tx, WatchEvent, XsClient};
pub use wire::{MsgType, Perm, PermKind, TxId, XsErrno};

/// Everything a xenstore operation can fail with. `Copy`, no heap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XsError {
    /// The daemon answered with an `XS_ERROR` reply carrying this errno name.
    Xs(XsErrno),
    /// The reply did not arrive before the per-request deadline.
    Timeout,
    /// The daemon sent something that breaks the protocol.
    Protocol(ProtocolError),
    /// The request would not fit in `XENSTORE_PAYLOAD_MAX` bytes of payload.
    TooBig,
    /// A caller-supplied path, token or value cannot be encoded (embedded NUL,
    /// empty path, zero retries).
    InvalidArg,
    /// The ring indices are impossible (`prod - cons > 1024`) or the daemon
    /// flagged an error in the page. The connection is unusable.
    RingBroken,
}

/// What exactly the daemon got wrong. Kept small and `Copy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// Header `len` above `XENSTORE_PAYLOAD_MAX`; the byte stream cannot be
    /// resynchronised after this.
    Oversize(u32),
    /// A reply with a message type this client does not know.
    UnknownType(u32),
    /// Reply type is neither the request's type nor `XS_ERROR`.
    TypeMismatch { expected: u32, got: u32 },
    /// Reply `req_id` is not the one of the outstanding request.
    ReqIdMismatch { expected: u32, got: u32 },
    /// A string field is not terminated by NUL.
    MissingNul,
    /// A string field is not UTF-8.
    NotUtf8,
    /// An acknowledgement payload other than `OK\0`.
    BadAck,
    /// A transaction id that is not a decimal `u32`.
    BadTxId,
    /// A permission string other than `[nrwb]<domid>`.
    BadPerm,
    /// The wrong number of strings in a reply (e.g. a watch event).
    BadFieldCount,
    /// A reply arrived while no request was outstanding.
    UnexpectedReply(u32),
}

impl From<ProtocolError> for XsError {
    fn from(e: ProtocolError) -> Self {
        XsError::Protocol(e)
    }
}

impl core::fmt::Display for XsError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            XsError::Xs(e) => write!(f, "xenstore error {}", e.name()),
            XsError::Timeout => f.write_str("xenstore request timed out"),
            XsError::Protocol(p) => write!(f, "xenstore protocol violation: {p:?}"),
            XsError::TooBig => f.write_str("xenstore request larger than payload limit"),
            XsError::InvalidArg => f.write_str("invalid xenstore argument"),
            XsError::RingBroken => f.write_str("xenstore ring broken"),
        }
    }
}
