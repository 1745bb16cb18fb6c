//! [`XsClient`]: xenstore requests over the shared ring, one at a time.
//!
//! Each request gets a deadline `now + timeout`; every wait on the daemon
//! (ring space for the request, bytes of the reply) ends by then. Watch
//! events that arrive while a reply is awaited are parsed and queued
//! (bounded; overflow is counted and logged) for [`XsClient::poll_watch`].
//!
//! Failure handling:
//! - A timed-out request is remembered (a few slots): if its reply shows up
//!   later it is dropped instead of being taken for the next request's.
//! - A request only partly written when its deadline passed stays queued and
//!   is finished before the next one, so the daemon never sees a torn message.
//! - A broken ring or an oversize header (after which the byte stream cannot
//!   be re-framed) is fatal: every later call returns the same error.
//!
//! Paths are sent as given; relative paths (`data/ferrite/state`) are
//! resolved by xenstored against the domain's home `/local/domain/<domid>`.

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::ring::XsRing;
use super::wire::{self, Field, Header, MsgType, Perm, TxId, XsErrno, HEADER_LEN, MSG_MAX};
use super::{ProtocolError, XsError};
use crate::shmem::SharedMem;
use crate::wait::{Nanos, Notifier};

/// Default capacity of the watch-event queue.
pub const DEFAULT_EVENT_QUEUE: usize = 32;
/// Timed-out request ids remembered so their late replies can be dropped.
const STALE_SLOTS: usize = 8;
/// Messages handled per [`XsClient::poll_watch`] call, so a flood of events
/// cannot hold the caller.
const POLL_BUDGET: usize = 64;

/// A `WATCH_EVENT`: `path` changed (or is the watched path itself, for the
/// initial event sent when the watch is registered); `token` is the one given
/// to [`XsClient::watch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    pub path: String,
    pub token: String,
}

/// One complete message taken off the response ring.
struct Msg {
    hdr: Header,
    payload: Vec<u8>,
}

/// Xenstore client over a shared page `M`, signalling through `N`.
pub struct XsClient<M: SharedMem, N: Notifier> {
    ring: XsRing<M>,
    notifier: N,
    timeout: Nanos,
    next_req_id: u32,
    /// Encoded request; `tx[tx_off..]` is not yet in the ring.
    tx: Vec<u8>,
    tx_off: usize,
    /// Incoming message being assembled: header, then payload.
    rx: Vec<u8>,
    rx_len: usize,
    events: VecDeque<WatchEvent>,
    event_cap: usize,
    dropped_events: u64,
    bad_events: u64,
    /// Ids of requests given up on; 0 marks a free slot (ids are never 0).
    stale: [u32; STALE_SLOTS],
    stale_next: usize,
    fatal: Option<XsError>,
}

impl<M: SharedMem, N: Notifier> XsClient<M, N> {
    /// A client on the xenstore page `mem`, notifying through `notifier`.
    /// Every request must complete within `timeout_ns` nanoseconds.
    ///
    /// # Panics
    /// If `mem` is smaller than the xenstore interface (a wiring bug).
    pub fn new(mem: M, notifier: N, timeout_ns: Nanos) -> Self {
        XsClient {
            ring: XsRing::new(mem),
            notifier,
            timeout: timeout_ns,
            next_req_id: 1,
            tx: Vec::with_capacity(MSG_MAX),
            tx_off: 0,
            rx: vec![0; MSG_MAX],
            rx_len: 0,
            events: VecDeque::with_capacity(DEFAULT_EVENT_QUEUE),
            event_cap: DEFAULT_EVENT_QUEUE,
            dropped_events: 0,
            bad_events: 0,
            stale: [0; STALE_SLOTS],
            stale_next: 0,
            fatal: None,
        }
    }

    /// Sets the watch-event queue capacity (at least 1).
    pub fn with_event_capacity(mut self, cap: usize) -> Self {
        self.event_cap = cap.max(1);
        self
    }

    /// The notifier (e.g. to hand it event-channel upcalls).
    pub fn notifier(&self) -> &N {
        &self.notifier
    }

    /// The notifier, mutably.
    pub fn notifier_mut(&mut self) -> &mut N {
        &mut self.notifier
    }

    /// The shared page.
    pub fn mem(&self) -> &M {
        self.ring.mem()
    }

    /// Watch events dropped because the queue was full.
    pub fn dropped_events(&self) -> u64 {
        self.dropped_events
    }

    /// Malformed watch events discarded.
    pub fn bad_events(&self) -> u64 {
        self.bad_events
    }

    /// Watch events waiting in the queue.
    pub fn queued_events(&self) -> usize {
        self.events.len()
    }

    /// The error that made the connection unusable, if any.
    pub fn fatal_error(&self) -> Option<XsError> {
        self.fatal
    }

    // ---- Operations (outside any transaction) ----

    /// `READ`: the value at `path` (raw bytes).
    pub fn read(&mut self, path: &str) -> Result<Vec<u8>, XsError> {
        self.op_read(TxId::NONE, path)
    }

    /// `READ`, value decoded as UTF-8.
    pub fn read_string(&mut self, path: &str) -> Result<String, XsError> {
        Ok(wire::value_to_string(self.read(path)?)?)
    }

    /// `WRITE`: stores `value` at `path`, creating missing parents.
    pub fn write(&mut self, path: &str, value: impl AsRef<[u8]>) -> Result<(), XsError> {
        self.op_write(TxId::NONE, path, value.as_ref())
    }

    /// `MKDIR`: makes sure `path` exists.
    pub fn mkdir(&mut self, path: &str) -> Result<(), XsError> {
        self.op_simple(TxId::NONE, MsgType::Mkdir, path)
    }

    /// `RM`: removes `path` and its children (not an error if absent).
    pub fn rm(&mut self, path: &str) -> Result<(), XsError> {
        self.op_simple(TxId::NONE, MsgType::Rm, path)
    }

    /// `DIRECTORY`: leaf names of the children of `path`.
    pub fn directory(&mut self, path: &str) -> Result<Vec<String>, XsError> {
        self.op_directory(TxId::NONE, path)
    }

    /// `GET_PERMS`: the permission list of `path` (owner first).
    pub fn get_perms(&mut self, path: &str) -> Result<Vec<Perm>, XsError> {
        self.op_get_perms(TxId::NONE, path)
    }

    /// `SET_PERMS`: replaces the permission list of `path` (owner first).
    pub fn set_perms(&mut self, path: &str, perms: &[Perm]) -> Result<(), XsError> {
        self.op_set_perms(TxId::NONE, path, perms)
    }

    /// `WATCH`: events for `path` and its descendants will carry `token`.
    /// xenstored fires one event for `path` right away.
    pub fn watch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        check_path(path)?;
        let p = self.request(MsgType::Watch, TxId::NONE, &[Field::Str(path), Field::Str(token)])?;
        Ok(wire::parse_ack(&p)?)
    }

    /// `UNWATCH`: removes the watch registered with the same path and token.
    pub fn unwatch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        check_path(path)?;
        let p = self.request(MsgType::Unwatch, TxId::NONE, &[Field::Str(path), Field::Str(token)])?;
        Ok(wire::parse_ack(&p)?)
    }

    /// `TRANSACTION_START`: a new transaction id.
    pub fn transaction_start(&mut self) -> Result<TxId, XsError> {
        let p = self.request(MsgType::TransactionStart, TxId::NONE, &[Field::Str("")])?;
        Ok(wire::parse_tx_id(&p)?)
    }

    /// `TRANSACTION_END`: commits (`commit == true`) or discards `tx`.
    /// A commit that lost a race returns `Err(XsError::Xs(XsErrno::Again))`.
    pub fn transaction_end(&mut self, tx: TxId, commit: bool) -> Result<(), XsError> {
        if tx == TxId::NONE {
            return Err(XsError::InvalidArg);
        }
        let flag = if commit { "T" } else { "F" };
        let p = self.request(MsgType::TransactionEnd, tx, &[Field::Str(flag)])?;
        Ok(wire::parse_ack(&p)?)
    }

    /// Operations inside transaction `id` (from [`transaction_start`](Self::transaction_start);
    /// end it with [`transaction_end`](Self::transaction_end)).
    pub fn tx(&mut self, id: TxId) -> Tx<'_, M, N> {
        Tx { client: self, id }
    }

    /// Runs `f` inside a transaction and commits, retrying the whole thing
    /// when xenstored answers `EAGAIN` (at commit or to any operation inside),
    /// at most `max_tries` times in all. Any other error from `f` aborts the
    /// transaction and is returned. `f` may run several times: keep it free of
    /// side effects outside xenstore.
    pub fn transaction<T, F>(&mut self, max_tries: u32, mut f: F) -> Result<T, XsError>
    where
        F: FnMut(&mut Tx<'_, M, N>) -> Result<T, XsError>,
    {
        if max_tries == 0 {
            return Err(XsError::InvalidArg);
        }
        for attempt in 1..=max_tries {
            let id = self.transaction_start()?;
            let result = f(&mut Tx { client: self, id });
            match result {
                Ok(v) => match self.transaction_end(id, true) {
                    Ok(()) => return Ok(v),
                    Err(XsError::Xs(XsErrno::Again)) => {
                        log::debug!("xenstore: transaction conflict, attempt {attempt}/{max_tries}");
                    }
                    Err(e) => return Err(e),
                },
                Err(e) => {
                    // Abort, unless the daemon is not answering: that would
                    // only cost another timeout (xenstored drops the
                    // transaction when the connection is reset).
                    if e != XsError::Timeout {
                        if let Err(abort) = self.transaction_end(id, false) {
                            log::warn!("xenstore: aborting transaction {}: {abort}", id.0);
                        }
                    }
                    if e != XsError::Xs(XsErrno::Again) {
                        return Err(e);
                    }
                }
            }
        }
        Err(XsError::Xs(XsErrno::Again))
    }

    /// Next queued watch event, first taking whatever has arrived on the
    /// ring. Never waits.
    pub fn poll_watch(&mut self) -> Result<Option<WatchEvent>, XsError> {
        if let Some(ev) = self.events.pop_front() {
            return Ok(Some(ev));
        }
        self.check_usable()?;
        // Push on with a request left half-written by a timeout, if any.
        self.try_flush()?;
        for _ in 0..POLL_BUDGET {
            let Some(msg) = self.next_msg()? else { break };
            self.dispatch_unsolicited(msg)?;
            if let Some(ev) = self.events.pop_front() {
                return Ok(Some(ev));
            }
        }
        Ok(None)
    }

    /// Like [`poll_watch`](Self::poll_watch) but waits up to `deadline` for
    /// an event.
    pub fn wait_watch(&mut self, deadline: Nanos) -> Result<Option<WatchEvent>, XsError> {
        loop {
            if let Some(ev) = self.poll_watch()? {
                return Ok(Some(ev));
            }
            if self.notifier.now() >= deadline || !self.notifier.wait(deadline) {
                return Ok(None);
            }
        }
    }

    // ---- Operation bodies shared with `Tx` ----

    fn op_read(&mut self, tx: TxId, path: &str) -> Result<Vec<u8>, XsError> {
        check_path(path)?;
        self.request(MsgType::Read, tx, &[Field::Str(path)])
    }

    fn op_write(&mut self, tx: TxId, path: &str, value: &[u8]) -> Result<(), XsError> {
        check_path(path)?;
        let p = self.request(MsgType::Write, tx, &[Field::Str(path), Field::Raw(value)])?;
        Ok(wire::parse_ack(&p)?)
    }

    fn op_simple(&mut self, tx: TxId, ty: MsgType, path: &str) -> Result<(), XsError> {
        check_path(path)?;
        let p = self.request(ty, tx, &[Field::Str(path)])?;
        Ok(wire::parse_ack(&p)?)
    }

    fn op_directory(&mut self, tx: TxId, path: &str) -> Result<Vec<String>, XsError> {
        check_path(path)?;
        let p = self.request(MsgType::Directory, tx, &[Field::Str(path)])?;
        Ok(wire::parse_directory(&p)?)
    }

    fn op_get_perms(&mut self, tx: TxId, path: &str) -> Result<Vec<Perm>, XsError> {
        check_path(path)?;
        let p = self.request(MsgType::GetPerms, tx, &[Field::Str(path)])?;
        Ok(wire::parse_perms(&p)?)
    }

    fn op_set_perms(&mut self, tx: TxId, path: &str, perms: &[Perm]) -> Result<(), XsError> {
        check_path(path)?;
        let enc = wire::encode_perms(perms)?;
        let p = self.request(MsgType::SetPerms, tx, &[Field::Str(path), Field::Raw(&enc)])?;
        Ok(wire::parse_ack(&p)?)
    }

    // ---- Transport ----

    fn check_usable(&self) -> Result<(), XsError> {
        match self.fatal {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Records `e` as fatal when it leaves the connection unusable.
    fn note(&mut self, e: XsError) -> XsError {
        if matches!(e, XsError::RingBroken | XsError::Protocol(ProtocolError::Oversize(_))) && self.fatal.is_none() {
            log::error!("xenstore: connection unusable: {e}");
            self.fatal = Some(e);
        }
        e
    }

    fn alloc_req_id(&mut self) -> u32 {
        let id = self.next_req_id;
        self.next_req_id = match id.wrapping_add(1) {
            0 => 1,
            n => n,
        };
        id
    }

    /// Sends one request and returns the payload of its (non-error) reply.
    fn request(&mut self, ty: MsgType, tx: TxId, fields: &[Field<'_>]) -> Result<Vec<u8>, XsError> {
        self.check_usable()?;
        self.ring.check_server_error().map_err(|e| self.note(e))?;
        let deadline = self.notifier.now().saturating_add(self.timeout);
        // Finish a request cut short by an earlier timeout first.
        self.flush(deadline)?;
        let req_id = self.alloc_req_id();
        wire::encode_request(&mut self.tx, ty, req_id, tx, fields)?;
        self.tx_off = 0;
        let result = match self.flush(deadline) {
            Ok(()) => self.await_reply(ty, req_id, deadline),
            Err(e) => Err(e),
        };
        if matches!(result, Err(XsError::Timeout | XsError::Protocol(ProtocolError::ReqIdMismatch { .. }))) {
            // Its real reply may still come; make sure it is not mistaken
            // for a later request's.
            self.remember_stale(req_id);
        }
        result
    }

    /// Writes the rest of `tx` into the ring, waiting for space until
    /// `deadline`. Bounded: every pass writes bytes, or waits, and waits end
    /// at the deadline.
    fn flush(&mut self, deadline: Nanos) -> Result<(), XsError> {
        while self.tx_off < self.tx.len() {
            if self.try_flush()? {
                continue;
            }
            // The daemon may be stalled on a full response ring: take what it
            // sent (events, stale replies) so it can go on reading ours.
            self.drain_unsolicited()?;
            if self.notifier.now() >= deadline || !self.notifier.wait(deadline) {
                return Err(XsError::Timeout);
            }
        }
        self.tx.clear();
        self.tx_off = 0;
        Ok(())
    }

    /// One non-blocking write of pending request bytes; `true` if any went in.
    fn try_flush(&mut self) -> Result<bool, XsError> {
        if self.tx_off >= self.tx.len() {
            return Ok(false);
        }
        let n = self.ring.write_some(&self.tx[self.tx_off..]).map_err(|e| self.note(e))?;
        if n == 0 {
            return Ok(false);
        }
        self.tx_off += n;
        if self.tx_off >= self.tx.len() {
            self.tx.clear();
            self.tx_off = 0;
        }
        self.notifier.notify();
        Ok(true)
    }

    fn drain_unsolicited(&mut self) -> Result<(), XsError> {
        for _ in 0..POLL_BUDGET {
            let Some(msg) = self.next_msg()? else { break };
            self.dispatch_unsolicited(msg)?;
        }
        Ok(())
    }

    fn await_reply(&mut self, ty: MsgType, req_id: u32, deadline: Nanos) -> Result<Vec<u8>, XsError> {
        loop {
            while let Some(msg) = self.next_msg()? {
                if let Some(msg) = self.filter(msg) {
                    wire::check_reply(&msg.hdr, &msg.payload, ty, req_id)?;
                    return Ok(msg.payload);
                }
                // A flood of events must not keep us past the deadline.
                if self.notifier.now() >= deadline {
                    return Err(XsError::Timeout);
                }
            }
            if self.notifier.now() >= deadline || !self.notifier.wait(deadline) {
                return Err(XsError::Timeout);
            }
        }
    }

    /// Handles a message that cannot be the reply we wait for.
    fn dispatch_unsolicited(&mut self, msg: Msg) -> Result<(), XsError> {
        match self.filter(msg) {
            None => Ok(()),
            Some(msg) => {
                log::warn!("xenstore: unsolicited reply type {} req_id {}", msg.hdr.ty, msg.hdr.req_id);
                Err(ProtocolError::UnexpectedReply(msg.hdr.req_id).into())
            }
        }
    }

    /// Queues watch events and drops late replies to abandoned requests;
    /// hands back anything else.
    fn filter(&mut self, msg: Msg) -> Option<Msg> {
        if msg.hdr.ty == MsgType::WatchEvent as u32 {
            self.queue_event(&msg.payload);
            return None;
        }
        if let Some(slot) = self.stale.iter_mut().find(|s| **s != 0 && **s == msg.hdr.req_id) {
            log::debug!("xenstore: dropping late reply to request {}", msg.hdr.req_id);
            *slot = 0;
            return None;
        }
        Some(msg)
    }

    fn queue_event(&mut self, payload: &[u8]) {
        match wire::parse_watch_event(payload) {
            Ok((path, token)) => {
                if self.events.len() >= self.event_cap {
                    self.dropped_events = self.dropped_events.saturating_add(1);
                    log::warn!(
                        "xenstore: watch queue full, dropped event for {path} ({} dropped so far)",
                        self.dropped_events
                    );
                } else {
                    self.events.push_back(WatchEvent { path, token });
                }
            }
            Err(e) => {
                self.bad_events = self.bad_events.saturating_add(1);
                log::warn!("xenstore: discarding malformed watch event: {e:?}");
            }
        }
    }

    fn remember_stale(&mut self, req_id: u32) {
        self.stale[self.stale_next] = req_id;
        self.stale_next = (self.stale_next + 1) % STALE_SLOTS;
    }

    /// Reads available bytes; returns a message once one is complete.
    /// Bounded: every pass consumes bytes or returns.
    fn next_msg(&mut self) -> Result<Option<Msg>, XsError> {
        self.check_usable()?;
        let mut consumed = false;
        let result = loop {
            let want = if self.rx_len < HEADER_LEN {
                HEADER_LEN
            } else {
                // Validated before any payload byte is read, so `rx` (sized
                // for the largest legal message) is never overrun.
                let len = match self.rx_header().payload_len() {
                    Ok(len) => len,
                    Err(e) => break Err(self.note(e.into())),
                };
                if self.rx_len == HEADER_LEN + len {
                    let hdr = self.rx_header();
                    let payload = self.rx[HEADER_LEN..self.rx_len].to_vec();
                    self.rx_len = 0;
                    break Ok(Some(Msg { hdr, payload }));
                }
                HEADER_LEN + len
            };
            let n = match self.ring.read_some(&mut self.rx[self.rx_len..want]) {
                Ok(n) => n,
                Err(e) => break Err(self.note(e)),
            };
            if n == 0 {
                break Ok(None);
            }
            consumed = true;
            self.rx_len += n;
        };
        if consumed {
            // Tell the daemon there is room again in the response ring.
            self.notifier.notify();
        }
        result
    }

    fn rx_header(&self) -> Header {
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&self.rx[..HEADER_LEN]);
        Header::from_bytes(&h)
    }
}

/// Rejects paths the wire cannot carry; xenstored validates the rest.
fn check_path(path: &str) -> Result<(), XsError> {
    if path.is_empty() || path.as_bytes().contains(&0) {
        return Err(XsError::InvalidArg);
    }
    Ok(())
}

/// Operations inside a transaction started by [`XsClient::transaction`].
pub struct Tx<'a, M: SharedMem, N: Notifier> {
    client: &'a mut XsClient<M, N>,
    id: TxId,
}

impl<M: SharedMem, N: Notifier> Tx<'_, M, N> {
    /// The transaction id.
    pub fn id(&self) -> TxId {
        self.id
    }

    /// `READ` within the transaction.
    pub fn read(&mut self, path: &str) -> Result<Vec<u8>, XsError> {
        self.client.op_read(self.id, path)
    }

    /// `READ` within the transaction, as UTF-8.
    pub fn read_string(&mut self, path: &str) -> Result<String, XsError> {
        Ok(wire::value_to_string(self.read(path)?)?)
    }

    /// `WRITE` within the transaction.
    pub fn write(&mut self, path: &str, value: impl AsRef<[u8]>) -> Result<(), XsError> {
        self.client.op_write(self.id, path, value.as_ref())
    }

    /// `MKDIR` within the transaction.
    pub fn mkdir(&mut self, path: &str) -> Result<(), XsError> {
        self.client.op_simple(self.id, MsgType::Mkdir, path)
    }

    /// `RM` within the transaction.
    pub fn rm(&mut self, path: &str) -> Result<(), XsError> {
        self.client.op_simple(self.id, MsgType::Rm, path)
    }

    /// `DIRECTORY` within the transaction.
    pub fn directory(&mut self, path: &str) -> Result<Vec<String>, XsError> {
        self.client.op_directory(self.id, path)
    }

    /// `GET_PERMS` within the transaction.
    pub fn get_perms(&mut self, path: &str) -> Result<Vec<Perm>, XsError> {
        self.client.op_get_perms(self.id, path)
    }

    /// `SET_PERMS` within the transaction.
    pub fn set_perms(&mut self, path: &str, perms: &[Perm]) -> Result<(), XsError> {
        self.client.op_set_perms(self.id, path, perms)
    }

    /// The client's notifier (tests use it to reach a fake daemon).
    pub fn notifier_mut(&mut self) -> &mut N {
        self.client.notifier_mut()
    }
}
