//! [`FakeXenstored`]: an in-memory xenstore daemon for host tests.
//!
//! It plays the server side of the ring page the client uses and implements
//! [`Notifier`]: whenever the client notifies or waits, the fake consumes the
//! request bytes, executes complete requests and copies reply bytes into the
//! response ring as far as there is room. Time is simulated: a wait that
//! finds nothing to do jumps to its deadline.
//!
//! Semantics follow `docs/misc/xenstore.txt`: a tree of nodes with values and
//! permission lists, relative paths resolved against `/local/domain/<domid>`,
//! WRITE/MKDIR creating parents (inheriting the parent's permissions, owned
//! by the writer), RM removing subtrees, watches firing on the changed path
//! for every watch on it or an ancestor (plus once on registration, after
//! the acknowledgement), transactions working on a snapshot and failing
//! their commit with EAGAIN when the tree changed meanwhile.
//!
//! Faults can be injected ([`Fault`], [`FakeXenstored::set_silent`],
//! [`FakeXenstored::break_req_ring`]). The fake checks the client's side of
//! the contract and panics when the client breaks it (oversize request,
//! impossible request indices).
//!
//! Handles are cheap clones sharing one state: keep one for the test, move
//! another into the client as its notifier.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::rc::Rc;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;

use super::client::XsClient;
use super::ring::{self, in_flight, mask, RING_SIZE};
use super::wire::{self, Header, MsgType, Perm, PermKind, XsErrno, HEADER_LEN, PAYLOAD_MAX};
use crate::shmem::{SharedMem, VecShared};
use crate::types::DomId;
use crate::wait::{Nanos, Notifier};

/// The page type shared by the fake and the client.
pub type FakePage = Arc<VecShared>;

/// Simulated time that passes on a wait that found work.
const WAIT_STEP: Nanos = 1_000;

/// A one-shot corruption applied to the next reply (watch events are not
/// affected). Queued faults apply in order, one per reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Reply with a different `req_id`.
    WrongReqId,
    /// Reply with a different known type.
    WrongType,
    /// Reply with type number 999.
    UnknownType,
    /// Header `len` 5000 (above `XENSTORE_PAYLOAD_MAX`).
    OversizeLen,
    /// Remove the payload's final NUL.
    DropNul,
    /// Make the payload's first byte 0xff.
    NonUtf8,
    /// Answer with `XS_ERROR` and this name instead.
    Error(&'static str),
    /// Replace the payload with these bytes.
    Payload(Vec<u8>),
    /// Send a malformed `WATCH_EVENT` (no token) before the reply.
    BadWatchEvent,
    /// Do not reply at all.
    Swallow,
    /// Instead of replying, push `rsp_prod` 1500 bytes past `rsp_cons`.
    BreakRspRing,
}

#[derive(Clone, Debug)]
struct Node {
    value: Vec<u8>,
    perms: Vec<Perm>,
}

type Tree = BTreeMap<String, Node>;

#[derive(Clone, Debug)]
enum Change {
    Modified(String),
    Removed(String),
}

struct Watch {
    /// As the client wrote it (events use the same relative/absolute form).
    given: String,
    /// Absolute path, or the `@special` name.
    abs: String,
    token: String,
}

struct Txn {
    tree: Tree,
    base_gen: u64,
    changes: Vec<Change>,
}

struct Inner {
    page: FakePage,
    domid: DomId,
    tree: Tree,
    /// Bumped on every committed change; transactions compare it.
    generation: u64,
    txns: BTreeMap<u32, Txn>,
    next_tx: u32,
    watches: Vec<Watch>,
    inbox: Vec<u8>,
    outbox: VecDeque<u8>,
    /// Watch events to send after the current reply (WATCH's initial event).
    after_reply: Vec<(String, String)>,
    now: Nanos,
    faults: VecDeque<Fault>,
    silent: bool,
    chunk: usize,
    commit_conflicts: u32,
    req_ring_broken: bool,
    requests: u64,
    /// Our event to the client, pending until its next wait (like an event
    /// channel's pending bit): set whenever we consumed requests or
    /// produced replies.
    signalled: bool,
}

/// The fake daemon; see the module docs.
#[derive(Clone)]
pub struct FakeXenstored {
    inner: Rc<RefCell<Inner>>,
}

impl FakeXenstored {
    /// A daemon serving domain `domid` on a fresh zeroed page. The tree holds
    /// `/`, `/local`, `/local/domain` (owned by dom0, no access for others)
    /// and the home `/local/domain/<domid>` (owned by `domid`).
    pub fn new(domid: DomId) -> Self {
        let dom0_only = vec![Perm::new(PermKind::None, 0)];
        let mut tree = Tree::new();
        for p in ["/", "/local", "/local/domain"] {
            tree.insert(p.to_string(), Node { value: Vec::new(), perms: dom0_only.clone() });
        }
        tree.insert(
            format!("/local/domain/{}", domid.0),
            Node { value: Vec::new(), perms: vec![Perm::new(PermKind::None, domid.0)] },
        );
        FakeXenstored {
            inner: Rc::new(RefCell::new(Inner {
                page: Arc::new(VecShared::new(4096)),
                domid,
                tree,
                generation: 0,
                txns: BTreeMap::new(),
                next_tx: 1,
                watches: Vec::new(),
                inbox: Vec::new(),
                outbox: VecDeque::new(),
                after_reply: Vec::new(),
                now: 0,
                faults: VecDeque::new(),
                silent: false,
                chunk: RING_SIZE,
                commit_conflicts: 0,
                req_ring_broken: false,
                requests: 0,
                signalled: false,
            })),
        }
    }

    /// Starts all four ring indices at `idx` (to exercise the 2^32 wrap).
    /// Call before any traffic.
    pub fn with_start_index(self, idx: u32) -> Self {
        {
            let i = self.inner.borrow();
            for off in [ring::REQ_CONS, ring::REQ_PROD, ring::RSP_CONS, ring::RSP_PROD] {
                i.page.store_u32_release(off, idx);
            }
        }
        self
    }

    /// The shared page (a second handle on the same memory).
    pub fn page(&self) -> FakePage {
        self.inner.borrow().page.clone()
    }

    /// A client on this daemon's page, with a clone of `self` as notifier.
    pub fn client(&self, timeout_ns: Nanos) -> XsClient<FakePage, FakeXenstored> {
        XsClient::new(self.page(), self.clone(), timeout_ns)
    }

    /// `/local/domain/<domid>`.
    pub fn home(&self) -> String {
        format!("/local/domain/{}", self.inner.borrow().domid.0)
    }

    /// A silent daemon reads nothing and answers nothing until unsilenced.
    pub fn set_silent(&self, silent: bool) {
        self.inner.borrow_mut().silent = silent;
    }

    /// Queues a fault for a coming reply.
    pub fn inject(&self, fault: Fault) {
        self.inner.borrow_mut().faults.push_back(fault);
    }

    /// Moves at most `n` (>= 1) bytes per step in each direction (request
    /// bytes consumed, reply bytes produced), to split messages.
    pub fn set_chunk(&self, n: usize) {
        self.inner.borrow_mut().chunk = n.clamp(1, RING_SIZE);
    }

    /// The next `n` commits fail with EAGAIN as if another writer raced them.
    pub fn conflict_next_commits(&self, n: u32) {
        self.inner.borrow_mut().commit_conflicts = n;
    }

    /// Moves `req_cons` more than a ring ahead of `req_prod`.
    pub fn break_req_ring(&self) {
        let mut i = self.inner.borrow_mut();
        i.req_ring_broken = true;
        let prod = i.page.load_u32_acquire(ring::REQ_PROD);
        i.page.store_u32_release(ring::REQ_CONS, prod.wrapping_add(2000));
    }

    /// Requests executed so far.
    pub fn requests(&self) -> u64 {
        self.inner.borrow().requests
    }

    /// Registered watches.
    pub fn watch_count(&self) -> usize {
        self.inner.borrow().watches.len()
    }

    /// Open transactions.
    pub fn open_transactions(&self) -> usize {
        self.inner.borrow().txns.len()
    }

    /// Simulated time.
    pub fn time(&self) -> Nanos {
        self.inner.borrow().now
    }

    /// The committed value at `path` (absolute or relative to the home).
    pub fn value(&self, path: &str) -> Option<Vec<u8>> {
        let i = self.inner.borrow();
        let abs = i.resolve(path.as_bytes()).ok()?;
        i.tree.get(&abs).map(|n| n.value.clone())
    }

    /// The committed permissions of `path`.
    pub fn perms(&self, path: &str) -> Option<Vec<Perm>> {
        let i = self.inner.borrow();
        let abs = i.resolve(path.as_bytes()).ok()?;
        i.tree.get(&abs).map(|n| n.perms.clone())
    }

    /// A write by another domain (dom0, no permission checks): changes the
    /// tree, makes open transactions conflict and fires watches.
    pub fn external_write(&self, path: &str, value: &[u8]) {
        let mut i = self.inner.borrow_mut();
        let abs = i.resolve(path.as_bytes()).expect("bad path in test");
        let mut changes = Vec::new();
        do_write(&mut i.tree, DomId::DOM0, &abs, value, &mut changes).expect("external write");
        i.commit_changes(changes);
        // The daemon runs on its own: events reach the ring without the
        // client having to poke it.
        i.step();
    }

    /// Sets the permissions of an existing node as dom0 would (the toolstack
    /// opening a backend directory to the frontend domain, for example).
    pub fn external_set_perms(&self, path: &str, perms: &[Perm]) {
        let mut i = self.inner.borrow_mut();
        let abs = i.resolve(path.as_bytes()).expect("bad path in test");
        let node = i.tree.get_mut(&abs).expect("external_set_perms on a missing node");
        node.perms = perms.to_vec();
    }

    /// A removal by dom0, like [`external_write`](Self::external_write).
    pub fn external_rm(&self, path: &str) {
        let mut i = self.inner.borrow_mut();
        let abs = i.resolve(path.as_bytes()).expect("bad path in test");
        let mut changes = Vec::new();
        do_rm(&mut i.tree, DomId::DOM0, &abs, &mut changes).expect("external rm");
        i.commit_changes(changes);
        i.step();
    }
}

impl Notifier for FakeXenstored {
    fn notify(&mut self) {
        self.inner.borrow_mut().step();
    }

    fn wait(&mut self, deadline: Nanos) -> bool {
        let mut i = self.inner.borrow_mut();
        let progress = i.step();
        if progress || core::mem::take(&mut i.signalled) {
            i.signalled = false;
            i.now = i.now.saturating_add(WAIT_STEP);
            true
        } else {
            i.now = i.now.max(deadline);
            false
        }
    }

    fn now(&self) -> Nanos {
        self.inner.borrow().now
    }
}

impl Inner {
    /// One server step: take request bytes, run complete requests, send
    /// what fits of the replies. Returns whether anything moved.
    fn step(&mut self) -> bool {
        if self.silent {
            return false;
        }
        let mut progress = self.take_requests();
        while let Some((hdr, payload)) = self.next_request() {
            self.requests += 1;
            self.handle(hdr, &payload);
            progress = true;
        }
        progress |= self.send_replies();
        self.signalled |= progress;
        progress
    }

    fn take_requests(&mut self) -> bool {
        let m = &self.page;
        let cons = m.load_u32_acquire(ring::REQ_CONS);
        let prod = m.load_u32_acquire(ring::REQ_PROD);
        let n = match in_flight(prod, cons) {
            Ok(n) => n.min(self.chunk),
            Err(_) if self.req_ring_broken => return false,
            Err(_) => panic!("client broke the request ring: prod {prod} cons {cons}"),
        };
        let mut buf = vec![0u8; n];
        for (k, b) in buf.iter_mut().enumerate() {
            let mut one = [0u8];
            m.read(ring::REQ_OFF + mask(cons.wrapping_add(k as u32)), &mut one);
            *b = one[0];
        }
        m.store_u32_release(ring::REQ_CONS, cons.wrapping_add(n as u32));
        self.inbox.extend_from_slice(&buf);
        n > 0
    }

    fn next_request(&mut self) -> Option<(Header, Vec<u8>)> {
        if self.inbox.len() < HEADER_LEN {
            return None;
        }
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&self.inbox[..HEADER_LEN]);
        let hdr = Header::from_bytes(&h);
        let len = hdr.len as usize;
        assert!(len <= PAYLOAD_MAX, "client sent a {len}-byte payload");
        if self.inbox.len() < HEADER_LEN + len {
            return None;
        }
        let payload = self.inbox[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.inbox.drain(..HEADER_LEN + len);
        Some((hdr, payload))
    }

    fn send_replies(&mut self) -> bool {
        if self.outbox.is_empty() {
            return false;
        }
        let m = &self.page;
        let cons = m.load_u32_acquire(ring::RSP_CONS);
        let prod = m.load_u32_acquire(ring::RSP_PROD);
        let Ok(used) = in_flight(prod, cons) else { return false };
        let n = (RING_SIZE - used).min(self.chunk).min(self.outbox.len());
        for k in 0..n {
            let b = self.outbox.pop_front().unwrap_or(0);
            m.write(ring::RSP_OFF + mask(prod.wrapping_add(k as u32)), &[b]);
        }
        m.store_u32_release(ring::RSP_PROD, prod.wrapping_add(n as u32));
        n > 0
    }

    fn emit(&mut self, hdr: Header, payload: &[u8]) {
        self.outbox.extend(hdr.to_bytes());
        self.outbox.extend(payload.iter().copied());
    }

    fn emit_event(&mut self, path: &str, token: &str) {
        let mut p = Vec::new();
        p.extend_from_slice(path.as_bytes());
        p.push(0);
        p.extend_from_slice(token.as_bytes());
        p.push(0);
        let hdr = Header { ty: MsgType::WatchEvent as u32, req_id: 0, tx_id: 0, len: p.len() as u32 };
        self.emit(hdr, &p);
    }

    fn handle(&mut self, req: Header, payload: &[u8]) {
        let result = self.execute(req, payload);
        let (mut ty, mut body) = match result {
            Ok(body) => (req.ty, body),
            Err(e) => {
                let mut b = e.name().as_bytes().to_vec();
                b.push(0);
                (MsgType::Error as u32, b)
            }
        };
        let mut req_id = req.req_id;
        let mut len = None;
        match self.faults.pop_front() {
            None => {}
            Some(Fault::WrongReqId) => req_id = req_id.wrapping_add(1000),
            Some(Fault::WrongType) => {
                ty = if ty == MsgType::Read as u32 { MsgType::Write as u32 } else { MsgType::Read as u32 }
            }
            Some(Fault::UnknownType) => ty = 999,
            Some(Fault::OversizeLen) => len = Some(5000),
            Some(Fault::DropNul) if body.last() == Some(&0) => {
                body.pop();
            }
            Some(Fault::DropNul) => {}
            Some(Fault::NonUtf8) => {
                if let Some(b) = body.first_mut() {
                    *b = 0xff;
                }
            }
            Some(Fault::Error(name)) => {
                ty = MsgType::Error as u32;
                body = name.as_bytes().to_vec();
                body.push(0);
            }
            Some(Fault::Payload(p)) => body = p,
            Some(Fault::BadWatchEvent) => {
                let hdr = Header { ty: MsgType::WatchEvent as u32, req_id: 0, tx_id: 0, len: 4 };
                self.emit(hdr, b"bad\0");
            }
            Some(Fault::Swallow) => {
                self.after_reply.clear();
                return;
            }
            Some(Fault::BreakRspRing) => {
                let cons = self.page.load_u32_acquire(ring::RSP_CONS);
                self.page.store_u32_release(ring::RSP_PROD, cons.wrapping_add(1500));
                self.after_reply.clear();
                return;
            }
        }
        let hdr = Header { ty, req_id, tx_id: req.tx_id, len: len.unwrap_or(body.len() as u32) };
        self.emit(hdr, &body);
        for (path, token) in core::mem::take(&mut self.after_reply) {
            self.emit_event(&path, &token);
        }
    }

    fn execute(&mut self, req: Header, payload: &[u8]) -> Result<Vec<u8>, XsErrno> {
        const OK: &[u8] = b"OK\0";
        let ty = MsgType::from_u32(req.ty).ok_or(XsErrno::Inval)?;
        let tx = req.tx_id;
        let dom = self.domid;
        match ty {
            MsgType::Read => {
                let path = self.resolve(one_string(payload)?)?;
                self.in_tree(tx, |t, _| {
                    let node = t.get(&path).ok_or(XsErrno::NoEnt)?;
                    check_access(t, &path, dom, false)?;
                    Ok(node.value.clone())
                })
            }
            MsgType::Write => {
                let nul = payload.iter().position(|&b| b == 0).ok_or(XsErrno::Inval)?;
                let path = self.resolve(&payload[..nul])?;
                let value = &payload[nul + 1..];
                self.in_tree(tx, |t, ch| do_write(t, dom, &path, value, ch))?;
                Ok(OK.to_vec())
            }
            MsgType::Mkdir => {
                let path = self.resolve(one_string(payload)?)?;
                self.in_tree(tx, |t, ch| {
                    if !t.contains_key(&path) {
                        create(t, dom, &path)?;
                        ch.push(Change::Modified(path.clone()));
                    }
                    Ok(())
                })?;
                Ok(OK.to_vec())
            }
            MsgType::Rm => {
                let path = self.resolve(one_string(payload)?)?;
                self.in_tree(tx, |t, ch| do_rm(t, dom, &path, ch))?;
                Ok(OK.to_vec())
            }
            MsgType::Directory => {
                let path = self.resolve(one_string(payload)?)?;
                self.in_tree(tx, |t, _| {
                    if !t.contains_key(&path) {
                        return Err(XsErrno::NoEnt);
                    }
                    check_access(t, &path, dom, false)?;
                    let mut out = Vec::new();
                    for child in children(t, &path) {
                        out.extend_from_slice(child.as_bytes());
                        out.push(0);
                    }
                    Ok(out)
                })
            }
            MsgType::GetPerms => {
                let path = self.resolve(one_string(payload)?)?;
                self.in_tree(tx, |t, _| {
                    let node = t.get(&path).ok_or(XsErrno::NoEnt)?;
                    check_access(t, &path, dom, false)?;
                    let mut out = Vec::new();
                    for p in &node.perms {
                        out.extend_from_slice(format!("{p}").as_bytes());
                        out.push(0);
                    }
                    Ok(out)
                })
            }
            MsgType::SetPerms => {
                let fields = strings(payload)?;
                let (path, perms) = fields.split_first().ok_or(XsErrno::Inval)?;
                let path = self.resolve(path)?;
                let perms =
                    perms.iter().map(|p| Perm::parse(p).map_err(|_| XsErrno::Inval)).collect::<Result<Vec<_>, _>>()?;
                if perms.is_empty() {
                    return Err(XsErrno::Inval);
                }
                self.in_tree(tx, |t, ch| {
                    if !t.contains_key(&path) {
                        return Err(XsErrno::NoEnt);
                    }
                    check_access(t, &path, dom, true)?;
                    if let Some(n) = t.get_mut(&path) {
                        n.perms = perms;
                    }
                    ch.push(Change::Modified(path.clone()));
                    Ok(())
                })?;
                Ok(OK.to_vec())
            }
            MsgType::Watch | MsgType::Unwatch => {
                let fields = strings(payload)?;
                let (path, token) = match fields.as_slice() {
                    [p, t] | [p, t, _] => (*p, *t),
                    _ => return Err(XsErrno::Inval),
                };
                let given = core::str::from_utf8(path).map_err(|_| XsErrno::Inval)?.to_string();
                let token = core::str::from_utf8(token).map_err(|_| XsErrno::Inval)?.to_string();
                let abs = if given.starts_with('@') { given.clone() } else { self.resolve(path)? };
                let pos = self.watches.iter().position(|w| w.given == given && w.token == token);
                if ty == MsgType::Watch {
                    if pos.is_some() {
                        return Err(XsErrno::Exist);
                    }
                    self.watches.push(Watch { given: given.clone(), abs, token: token.clone() });
                    // Fired once straight away, after the acknowledgement.
                    self.after_reply.push((given, token));
                } else {
                    let i = pos.ok_or(XsErrno::NoEnt)?;
                    self.watches.remove(i);
                }
                Ok(OK.to_vec())
            }
            MsgType::TransactionStart => {
                if tx != 0 {
                    return Err(XsErrno::Inval);
                }
                let id = self.next_tx;
                self.next_tx = self.next_tx.wrapping_add(1).max(1);
                self.txns.insert(id, Txn { tree: self.tree.clone(), base_gen: self.generation, changes: Vec::new() });
                Ok(format!("{id}\0").into_bytes())
            }
            MsgType::TransactionEnd => {
                let commit = match one_string(payload)? {
                    b"T" => true,
                    b"F" => false,
                    _ => return Err(XsErrno::Inval),
                };
                let txn = self.txns.remove(&tx).ok_or(XsErrno::NoEnt)?;
                if commit {
                    if self.commit_conflicts > 0 {
                        self.commit_conflicts -= 1;
                        return Err(XsErrno::Again);
                    }
                    if txn.base_gen != self.generation {
                        return Err(XsErrno::Again);
                    }
                    self.tree = txn.tree;
                    self.commit_changes(txn.changes);
                }
                Ok(OK.to_vec())
            }
            _ => Err(XsErrno::Inval),
        }
    }

    /// Runs `f` on the committed tree (`tx == 0`, changes fire at once) or
    /// on transaction `tx`'s snapshot (changes fire at commit).
    fn in_tree<R>(
        &mut self,
        tx: u32,
        f: impl FnOnce(&mut Tree, &mut Vec<Change>) -> Result<R, XsErrno>,
    ) -> Result<R, XsErrno> {
        let mut changes = Vec::new();
        if tx == 0 {
            let r = f(&mut self.tree, &mut changes)?;
            self.commit_changes(changes);
            Ok(r)
        } else {
            let txn = self.txns.get_mut(&tx).ok_or(XsErrno::NoEnt)?;
            let r = f(&mut txn.tree, &mut changes)?;
            txn.changes.extend(changes);
            Ok(r)
        }
    }

    fn commit_changes(&mut self, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        self.generation += 1;
        let home = format!("/local/domain/{}/", self.domid.0);
        let mut events = Vec::new();
        for ch in &changes {
            for w in &self.watches {
                if w.abs.starts_with('@') {
                    continue;
                }
                let hit = match ch {
                    Change::Modified(p) => is_child(p, &w.abs).then_some(p.as_str()),
                    Change::Removed(p) if is_child(p, &w.abs) => Some(p.as_str()),
                    // A removed ancestor reports the watched path itself.
                    Change::Removed(p) => is_child(&w.abs, p).then_some(w.abs.as_str()),
                };
                if let Some(abs) = hit {
                    let path = if w.given.starts_with('/') {
                        abs.to_string()
                    } else {
                        abs.strip_prefix(home.as_str()).unwrap_or(abs).to_string()
                    };
                    events.push((path, w.token.clone()));
                }
            }
        }
        for (p, t) in events {
            self.emit_event(&p, &t);
        }
    }

    /// Absolute form of a request path; EINVAL on syntax the daemon rejects.
    fn resolve(&self, p: &[u8]) -> Result<String, XsErrno> {
        let s = core::str::from_utf8(p).map_err(|_| XsErrno::Inval)?;
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_alphanumeric() || b"-/_@".contains(&c)) {
            return Err(XsErrno::Inval);
        }
        let abs = if s.starts_with('/') { s.to_string() } else { format!("/local/domain/{}/{s}", self.domid.0) };
        if abs != "/" && (abs.ends_with('/') || abs.contains("//")) {
            return Err(XsErrno::Inval);
        }
        Ok(abs)
    }
}

/// Whether `p` is `parent` or below it.
fn is_child(p: &str, parent: &str) -> bool {
    parent == "/" || p == parent || (p.starts_with(parent) && p.as_bytes().get(parent.len()) == Some(&b'/'))
}

fn parent_of(p: &str) -> Option<&str> {
    if p == "/" {
        return None;
    }
    match p.rfind('/') {
        Some(0) => Some("/"),
        Some(i) => Some(&p[..i]),
        None => None,
    }
}

fn children(t: &Tree, p: &str) -> Vec<String> {
    let prefix = if p == "/" { "/".to_string() } else { format!("{p}/") };
    t.range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .filter_map(|(k, _)| {
            let rest = &k[prefix.len()..];
            (!rest.is_empty() && !rest.contains('/')).then(|| rest.to_string())
        })
        .collect()
}

/// The owner (first entry) may do anything; others get their own entry's
/// access or, failing that, the first entry's. Dom0 may do anything.
fn allowed(perms: &[Perm], dom: DomId, write: bool) -> bool {
    let Some(first) = perms.first() else { return dom == DomId::DOM0 };
    if dom == DomId::DOM0 || first.domid == dom {
        return true;
    }
    let kind = perms[1..].iter().find(|p| p.domid == dom).map_or(first.kind, |p| p.kind);
    if write {
        kind.can_write()
    } else {
        kind.can_read()
    }
}

fn check_access(t: &Tree, path: &str, dom: DomId, write: bool) -> Result<(), XsErrno> {
    let node = t.get(path).ok_or(XsErrno::NoEnt)?;
    if allowed(&node.perms, dom, write) {
        Ok(())
    } else {
        Err(XsErrno::Acces)
    }
}

/// Creates `path` and missing ancestors, each inheriting its parent's
/// permissions with `dom` as owner. Needs write access to the nearest
/// existing ancestor.
fn create(t: &mut Tree, dom: DomId, path: &str) -> Result<(), XsErrno> {
    let mut missing = Vec::new();
    let mut cur = path;
    while !t.contains_key(cur) {
        missing.push(cur.to_string());
        cur = parent_of(cur).ok_or(XsErrno::NoEnt)?;
    }
    check_access(t, cur, dom, true)?;
    for p in missing.into_iter().rev() {
        let parent = parent_of(&p).and_then(|q| t.get(q)).map(|n| n.perms.clone()).unwrap_or_default();
        let mut perms = parent;
        // Unprivileged domains own what they create; dom0 keeps the
        // inherited owner (as xenstored does).
        match perms.first_mut() {
            Some(first) if dom != DomId::DOM0 => first.domid = dom,
            Some(_) => {}
            None => perms.push(Perm { kind: PermKind::None, domid: dom }),
        }
        t.insert(p, Node { value: Vec::new(), perms });
    }
    Ok(())
}

fn do_write(t: &mut Tree, dom: DomId, path: &str, value: &[u8], ch: &mut Vec<Change>) -> Result<(), XsErrno> {
    if t.contains_key(path) {
        check_access(t, path, dom, true)?;
    } else {
        create(t, dom, path)?;
    }
    if let Some(n) = t.get_mut(path) {
        n.value = value.to_vec();
    }
    ch.push(Change::Modified(path.to_string()));
    Ok(())
}

fn do_rm(t: &mut Tree, dom: DomId, path: &str, ch: &mut Vec<Change>) -> Result<(), XsErrno> {
    if path == "/" {
        return Err(XsErrno::Inval);
    }
    if !t.contains_key(path) {
        // Absent is fine, unless the parent is absent too.
        let parent = parent_of(path).ok_or(XsErrno::Inval)?;
        return if t.contains_key(parent) { Ok(()) } else { Err(XsErrno::NoEnt) };
    }
    check_access(t, path, dom, true)?;
    t.retain(|k, _| !is_child(k, path));
    ch.push(Change::Removed(path.to_string()));
    Ok(())
}

/// The NUL-terminated strings of a request payload.
fn strings(payload: &[u8]) -> Result<Vec<&[u8]>, XsErrno> {
    Ok(wire::split_strings(payload).map_err(|_| XsErrno::Inval)?.collect())
}

fn one_string(payload: &[u8]) -> Result<&[u8], XsErrno> {
    match strings(payload)?.as_slice() {
        [s] => Ok(*s),
        _ => Err(XsErrno::Inval),
    }
}
