//! Client against [`FakeXenstored`]: round trips, errors, hostile daemons,
//! ring wrap-around, transactions, watches, and a model-based property test.

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use super::fake::{FakePage, FakeXenstored, Fault};
use super::ring::{self, RING_SIZE};
use super::wire::{MsgType, PAYLOAD_MAX};
use super::*;
use crate::shmem::SharedMem;
use crate::types::DomId;

const TIMEOUT: u64 = 1_000_000_000;
type Client = XsClient<FakePage, FakeXenstored>;

fn setup() -> (Client, FakeXenstored) {
    let fake = FakeXenstored::new(DomId(7));
    (fake.client(TIMEOUT), fake)
}

fn le(v: u32) -> [u8; 4] {
    v.to_le_bytes()
}

// ---- Golden bytes: requests as they land in the ring page ----

#[test]
fn write_request_golden_bytes_in_page() {
    let (mut c, fake) = setup();
    fake.set_silent(true);
    assert_eq!(c.write("data/ferrite/state", "4"), Err(XsError::Timeout));
    let page = fake.page().snapshot();
    let mut want = Vec::new();
    want.extend_from_slice(&[11, 0, 0, 0]); // XS_WRITE
    want.extend_from_slice(&[1, 0, 0, 0]); // req_id 1
    want.extend_from_slice(&[0, 0, 0, 0]); // no transaction
    want.extend_from_slice(&[20, 0, 0, 0]); // "data/ferrite/state\0" + "4"
    want.extend_from_slice(b"data/ferrite/state\x004");
    assert_eq!(&page[..want.len()], &want[..]);
    assert_eq!(page[ring::REQ_PROD..ring::REQ_PROD + 4], le(want.len() as u32));
    assert_eq!(page[ring::REQ_CONS..ring::REQ_CONS + 4], le(0));
    // Nothing else in the request ring was touched.
    assert!(page[want.len()..RING_SIZE].iter().all(|&b| b == 0));
}

#[test]
fn watch_request_golden_bytes_in_page_across_wrap() {
    // Start 10 bytes before the end of the array: the request wraps.
    let start = 1014u32;
    let fake = FakeXenstored::new(DomId(7)).with_start_index(start);
    let mut c = fake.client(TIMEOUT);
    fake.set_silent(true);
    assert_eq!(c.watch("backend/vbd", "be"), Err(XsError::Timeout));
    let mut want = Vec::new();
    want.extend_from_slice(&[4, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 15, 0, 0, 0]);
    want.extend_from_slice(b"backend/vbd\0be\0");
    let page = fake.page().snapshot();
    let got: Vec<u8> = (0..want.len()).map(|k| page[ring::mask(start + k as u32)]).collect();
    assert_eq!(got, want);
    assert_eq!(&page[1014..1024], &want[..10]);
    assert_eq!(&page[..want.len() - 10], &want[10..]);
    assert_eq!(page[ring::REQ_PROD..ring::REQ_PROD + 4], le(start + want.len() as u32));
}

// ---- Round trips ----

#[test]
fn read_write_mkdir_rm_directory() {
    let (mut c, fake) = setup();
    c.write("data/ferrite/state", "1").unwrap();
    assert_eq!(c.read("data/ferrite/state").unwrap(), b"1");
    assert_eq!(c.read_string("data/ferrite/state").unwrap(), "1");
    assert_eq!(fake.value("/local/domain/7/data/ferrite/state").unwrap(), b"1");
    // Parents were created with empty values.
    assert_eq!(c.read("data").unwrap(), b"");
    // Binary values pass through untouched, NULs included.
    c.write("data/bin", [0u8, 1, 0, 255]).unwrap();
    assert_eq!(c.read("data/bin").unwrap(), [0, 1, 0, 255]);
    c.mkdir("data/dir/sub").unwrap();
    c.mkdir("data/dir/sub").unwrap(); // idempotent
    let mut names = c.directory("data").unwrap();
    names.sort();
    assert_eq!(names, ["bin", "dir", "ferrite"]);
    assert_eq!(c.directory("data/dir/sub").unwrap(), Vec::<String>::new());
    c.rm("data/dir").unwrap();
    assert_eq!(c.read("data/dir/sub"), Err(XsError::Xs(XsErrno::NoEnt)));
    c.rm("data/dir").unwrap(); // absent, parent present: fine
    assert_eq!(c.rm("data/nope/x"), Err(XsError::Xs(XsErrno::NoEnt)));
    // Absolute paths work the same.
    assert_eq!(c.read("/local/domain/7/data/ferrite/state").unwrap(), b"1");
}

#[test]
fn perms_round_trip() {
    let (mut c, _fake) = setup();
    c.write("data/shared", "x").unwrap();
    assert_eq!(c.get_perms("data/shared").unwrap(), [Perm::new(PermKind::None, 7)]);
    let perms = [Perm::new(PermKind::None, 7), Perm::new(PermKind::Read, 0), Perm::new(PermKind::Both, 3)];
    c.set_perms("data/shared", &perms).unwrap();
    assert_eq!(c.get_perms("data/shared").unwrap(), perms);
    assert_eq!(c.set_perms("data/shared", &[]), Err(XsError::InvalidArg));
    assert_eq!(c.set_perms("data/none", &perms), Err(XsError::Xs(XsErrno::NoEnt)));
    // Giving the node away (owner 0, others none) locks us out.
    c.set_perms("data/shared", &[Perm::new(PermKind::None, 0)]).unwrap();
    assert_eq!(c.read("data/shared"), Err(XsError::Xs(XsErrno::Acces)));
    assert_eq!(c.write("data/shared", "y"), Err(XsError::Xs(XsErrno::Acces)));
}

#[test]
fn permission_errors_from_the_daemon() {
    let (mut c, _fake) = setup();
    assert_eq!(c.read("/local/domain"), Err(XsError::Xs(XsErrno::Acces)));
    assert_eq!(c.write("/local/domain/8/x", "1"), Err(XsError::Xs(XsErrno::Acces)));
    assert_eq!(c.read("bad//path"), Err(XsError::Xs(XsErrno::Inval)));
}

#[test]
fn watch_unwatch_and_events() {
    let (mut c, fake) = setup();
    c.watch("backend", "be").unwrap();
    c.watch("/local/domain/7/device", "fe").unwrap();
    assert_eq!(fake.watch_count(), 2);
    // Initial events, one per watch, in the form the watch was given.
    assert_eq!(c.poll_watch().unwrap(), Some(WatchEvent { path: "backend".into(), token: "be".into() }));
    assert_eq!(c.poll_watch().unwrap(), Some(WatchEvent { path: "/local/domain/7/device".into(), token: "fe".into() }));
    assert_eq!(c.poll_watch().unwrap(), None);
    // Changes below the watched path fire; others do not.
    fake.external_write("backend/vbd/7/51712/state", b"4");
    fake.external_write("other/x", b"1");
    assert_eq!(
        c.poll_watch().unwrap(),
        Some(WatchEvent { path: "backend/vbd/7/51712/state".into(), token: "be".into() })
    );
    assert_eq!(c.poll_watch().unwrap(), None);
    // Removing an absent node changes nothing and fires nothing; removing
    // an ancestor of a watched path reports the watched path itself.
    fake.external_rm("/local/domain/7/device");
    fake.external_write("device/x", b"1");
    fake.external_rm("/local/domain/7");
    let evs: Vec<(String, String)> =
        core::iter::from_fn(|| c.poll_watch().unwrap()).map(|e| (e.path, e.token)).collect();
    let want = [("/local/domain/7/device/x", "fe"), ("backend", "be"), ("/local/domain/7/device", "fe")];
    assert_eq!(evs, want.map(|(p, t)| (p.to_string(), t.to_string())));
    c.unwatch("backend", "be").unwrap();
    assert_eq!(c.unwatch("backend", "be"), Err(XsError::Xs(XsErrno::NoEnt)));
    assert_eq!(c.watch("/local/domain/7/device", "fe"), Err(XsError::Xs(XsErrno::Exist)));
    assert_eq!(fake.watch_count(), 1);
}

#[test]
fn events_arriving_during_a_read_are_queued() {
    let (mut c, fake) = setup();
    c.watch("data", "tok").unwrap();
    // Changes queued on the daemon side reach the ring ahead of the reply.
    fake.external_write("data/a", b"1");
    fake.external_write("data/b", b"2");
    assert_eq!(c.read("data/a").unwrap(), b"1");
    assert_eq!(c.queued_events(), 3);
    // Our own write fires our watch too; the event precedes the ack.
    c.write("data/c", "3").unwrap();
    let paths: Vec<String> = core::iter::from_fn(|| c.poll_watch().unwrap()).map(|e| e.path).collect();
    assert_eq!(paths, ["data", "data/a", "data/b", "data/c"]);
}

#[test]
fn event_queue_overflow_is_counted() {
    let fake = FakeXenstored::new(DomId(7));
    let mut c = fake.client(TIMEOUT).with_event_capacity(2);
    c.watch("data", "t").unwrap(); // initial event: 1 queued
    for k in 0..5 {
        fake.external_write(&alloc::format!("data/{k}"), b"x");
    }
    c.read("data").unwrap();
    assert_eq!(c.queued_events(), 2);
    assert_eq!(c.dropped_events(), 4);
    assert_eq!(c.poll_watch().unwrap().unwrap().path, "data");
    assert_eq!(c.poll_watch().unwrap().unwrap().path, "data/0");
    assert_eq!(c.poll_watch().unwrap(), None);
}

#[test]
fn malformed_watch_event_is_dropped() {
    let (mut c, fake) = setup();
    fake.inject(Fault::BadWatchEvent);
    c.write("data/x", "1").unwrap();
    assert_eq!(c.bad_events(), 1);
    assert_eq!(c.poll_watch().unwrap(), None);
    assert_eq!(c.read("data/x").unwrap(), b"1");
}

#[test]
fn wait_watch_times_out_and_delivers() {
    let (mut c, fake) = setup();
    let t0 = fake.time();
    assert_eq!(c.wait_watch(t0 + 5_000).unwrap(), None);
    assert!(fake.time() >= t0 + 5_000);
    c.watch("data", "t").unwrap();
    let now = fake.time();
    assert_eq!(c.wait_watch(now + 5_000).unwrap().unwrap().path, "data");
}

// ---- Transactions ----

#[test]
fn transaction_start_end() {
    let (mut c, fake) = setup();
    let tx = c.transaction_start().unwrap();
    assert_ne!(tx, TxId::NONE);
    let mut t = c.tx(tx);
    t.write("data/a", "1").unwrap();
    assert_eq!(t.read("data/a").unwrap(), b"1");
    // Not visible outside before commit.
    assert_eq!(fake.value("data/a"), None);
    c.transaction_end(tx, true).unwrap();
    assert_eq!(fake.value("data/a").unwrap(), b"1");
    // Abort discards.
    let tx = c.transaction_start().unwrap();
    c.tx(tx).write("data/b", "1").unwrap();
    c.transaction_end(tx, false).unwrap();
    assert_eq!(fake.value("data/b"), None);
    assert_eq!(c.transaction_end(tx, true), Err(XsError::Xs(XsErrno::NoEnt)));
    assert_eq!(c.transaction_end(TxId::NONE, true), Err(XsError::InvalidArg));
    assert_eq!(fake.open_transactions(), 0);
}

#[test]
fn transaction_retries_on_eagain() {
    let (mut c, fake) = setup();
    fake.conflict_next_commits(2);
    let mut runs = 0;
    let v = c
        .transaction(3, |tx| {
            runs += 1;
            tx.write("data/n", alloc::format!("{runs}"))?;
            Ok(runs)
        })
        .unwrap();
    assert_eq!((v, runs), (3, 3));
    assert_eq!(fake.value("data/n").unwrap(), b"3");
    // Out of tries.
    fake.conflict_next_commits(5);
    assert_eq!(c.transaction(2, |tx| tx.write("data/n", "x")), Err(XsError::Xs(XsErrno::Again)));
    assert_eq!(fake.value("data/n").unwrap(), b"3");
    assert_eq!(c.transaction(0, |_| Ok(())), Err(XsError::InvalidArg));
    assert_eq!(fake.open_transactions(), 0);
}

#[test]
fn transaction_real_conflict_then_success() {
    let (mut c, fake) = setup();
    c.write("data/counter", "10").unwrap();
    let mut runs = 0;
    c.transaction(5, |tx| {
        runs += 1;
        let n: u32 = tx.read_string("data/counter")?.parse().map_err(|_| XsError::InvalidArg)?;
        if runs == 1 {
            // Another domain bumps the counter behind our back.
            tx.notifier_mut().external_write("data/counter", b"20");
        }
        tx.write("data/counter", alloc::format!("{}", n + 1))
    })
    .unwrap();
    assert_eq!(runs, 2);
    assert_eq!(fake.value("data/counter").unwrap(), b"21");
}

#[test]
fn transaction_error_aborts() {
    let (mut c, fake) = setup();
    let r = c.transaction(3, |tx| {
        tx.write("data/a", "1")?;
        tx.read("data/missing")
    });
    assert_eq!(r, Err(XsError::Xs(XsErrno::NoEnt)));
    assert_eq!(fake.open_transactions(), 0);
    assert_eq!(fake.value("data/a"), None);
}

// ---- Errors and hostile daemons ----

#[test]
fn every_error_string_maps() {
    let (mut c, fake) = setup();
    let table = [
        ("EINVAL", XsErrno::Inval),
        ("EACCES", XsErrno::Acces),
        ("EEXIST", XsErrno::Exist),
        ("EISDIR", XsErrno::IsDir),
        ("ENOENT", XsErrno::NoEnt),
        ("ENOMEM", XsErrno::NoMem),
        ("ENOSPC", XsErrno::NoSpc),
        ("EIO", XsErrno::Io),
        ("ENOTEMPTY", XsErrno::NotEmpty),
        ("ENOSYS", XsErrno::NoSys),
        ("EROFS", XsErrno::RoFs),
        ("EBUSY", XsErrno::Busy),
        ("EAGAIN", XsErrno::Again),
        ("EISCONN", XsErrno::IsConn),
        ("E2BIG", XsErrno::TooBig),
        ("EPERM", XsErrno::Perm),
        ("ENEWFANGLED", XsErrno::Inval),
    ];
    for (name, errno) in table {
        fake.inject(Fault::Error(name));
        assert_eq!(c.mkdir("data"), Err(XsError::Xs(errno)), "{name}");
    }
    // Still in sync afterwards.
    c.write("data/x", "ok").unwrap();
    assert_eq!(c.read("data/x").unwrap(), b"ok");
}

#[test]
fn malformed_replies_are_protocol_errors() {
    let (mut c, fake) = setup();
    c.write("data/x", "v").unwrap();
    c.write("data/y", "w").unwrap();
    let cases: Vec<(Fault, XsError)> = vec![
        (Fault::WrongReqId, XsError::Protocol(ProtocolError::ReqIdMismatch { expected: 0, got: 0 })),
        (Fault::WrongType, XsError::Protocol(ProtocolError::TypeMismatch { expected: 0, got: 0 })),
        (Fault::UnknownType, XsError::Protocol(ProtocolError::UnknownType(999))),
        (Fault::DropNul, XsError::Protocol(ProtocolError::MissingNul)),
        (Fault::NonUtf8, XsError::Protocol(ProtocolError::NotUtf8)),
        (Fault::Payload(b"x\0y".to_vec()), XsError::Protocol(ProtocolError::MissingNul)),
        (Fault::Error("ENOENT"), XsError::Xs(XsErrno::NoEnt)),
    ];
    for (fault, want) in cases {
        fake.inject(fault.clone());
        let got = c.directory("data");
        match (got, want) {
            (
                Err(XsError::Protocol(ProtocolError::ReqIdMismatch { .. })),
                XsError::Protocol(ProtocolError::ReqIdMismatch { .. }),
            ) => {}
            (
                Err(XsError::Protocol(ProtocolError::TypeMismatch { .. })),
                XsError::Protocol(ProtocolError::TypeMismatch { .. }),
            ) => {}
            (got, want) => assert_eq!(got, Err(want), "{fault:?}"),
        }
        // The connection is still good for the next request.
        assert_eq!(c.read("data/x").unwrap(), b"v", "after {fault:?}");
    }
    // Per-operation reply syntax.
    type OpFn = fn(&mut Client) -> Result<(), XsError>;
    let per_op: Vec<(Fault, OpFn, ProtocolError)> = vec![
        (Fault::Payload(b"NOPE\0".to_vec()), |c| c.write("data/x", "1"), ProtocolError::BadAck),
        (Fault::Payload(b"OK".to_vec()), |c| c.mkdir("data"), ProtocolError::MissingNul),
        (Fault::Payload(b"zz\0".to_vec()), |c| c.transaction_start().map(drop), ProtocolError::BadTxId),
        (Fault::Payload(b"q7\0".to_vec()), |c| c.get_perms("data").map(drop), ProtocolError::BadPerm),
        (Fault::Payload(b"".to_vec()), |c| c.get_perms("data").map(drop), ProtocolError::BadFieldCount),
        (Fault::Payload(b"\xff".to_vec()), |c| c.read_string("data/x").map(drop), ProtocolError::NotUtf8),
    ];
    for (fault, op, want) in per_op {
        fake.inject(fault);
        assert_eq!(op(&mut c), Err(XsError::Protocol(want)));
        assert_eq!(c.read("data/y").unwrap(), b"w");
    }
}

#[test]
fn oversize_reply_is_fatal_not_a_panic() {
    let (mut c, fake) = setup();
    fake.inject(Fault::OversizeLen);
    assert_eq!(c.read("data"), Err(XsError::Protocol(ProtocolError::Oversize(5000))));
    // The stream cannot be re-framed: every later call fails the same way.
    assert_eq!(c.read("data"), Err(XsError::Protocol(ProtocolError::Oversize(5000))));
    assert_eq!(c.poll_watch(), Err(XsError::Protocol(ProtocolError::Oversize(5000))));
    assert!(c.fatal_error().is_some());
}

#[test]
fn broken_response_ring_is_an_error_not_a_hang() {
    let (mut c, fake) = setup();
    c.write("data/x", "1").unwrap();
    fake.inject(Fault::BreakRspRing);
    assert_eq!(c.read("data/x"), Err(XsError::RingBroken));
    assert_eq!(c.read("data/x"), Err(XsError::RingBroken));
    assert!(fake.time() < TIMEOUT, "failed fast, did not wait for the deadline");
}

#[test]
fn broken_request_ring_is_an_error() {
    let (mut c, fake) = setup();
    c.write("data/x", "1").unwrap();
    fake.break_req_ring();
    assert_eq!(c.write("data/x", "2"), Err(XsError::RingBroken));
    assert_eq!(c.fatal_error(), Some(XsError::RingBroken));
}

#[test]
fn server_error_field_is_honoured() {
    let (mut c, fake) = setup();
    let page = fake.page();
    page.store_u32_release(ring::SERVER_FEATURES, ring::FEATURE_ERROR);
    c.write("data/x", "1").unwrap();
    page.store_u32_release(ring::ERROR, 2);
    assert_eq!(c.read("data/x"), Err(XsError::RingBroken));
}

#[test]
fn silent_daemon_times_out_then_late_reply_is_dropped() {
    let (mut c, fake) = setup();
    c.write("data/x", "1").unwrap();
    fake.set_silent(true);
    let t0 = fake.time();
    assert_eq!(c.read("data/x"), Err(XsError::Timeout));
    assert!(fake.time() >= t0 + TIMEOUT);
    fake.set_silent(false);
    // The daemon now answers both the abandoned read and this one; the
    // stale reply must not be taken for the new request's.
    c.write("data/x", "2").unwrap();
    assert_eq!(c.read("data/x").unwrap(), b"2");
}

#[test]
fn swallowed_reply_times_out() {
    let (mut c, fake) = setup();
    fake.inject(Fault::Swallow);
    assert_eq!(c.mkdir("data"), Err(XsError::Timeout));
    c.write("data/x", "1").unwrap();
}

#[test]
fn partly_written_request_is_finished_before_the_next() {
    let (mut c, fake) = setup();
    fake.set_silent(true);
    let big = vec![b'z'; 3000];
    // Only 1024 bytes fit; the rest waits in the client.
    assert_eq!(c.write("data/big", &big), Err(XsError::Timeout));
    fake.set_silent(false);
    assert_eq!(c.read("data/big").unwrap(), big);
}

#[test]
fn wrong_req_id_reply_then_recovery() {
    let (mut c, fake) = setup();
    c.write("data/x", "1").unwrap();
    fake.inject(Fault::WrongReqId);
    assert!(matches!(c.read("data/x"), Err(XsError::Protocol(ProtocolError::ReqIdMismatch { .. }))));
    assert_eq!(c.read("data/x").unwrap(), b"1");
}

#[test]
fn unsolicited_reply_seen_by_poll_watch() {
    let (mut c, fake) = setup();
    // A reply nobody asked for, pushed straight into the response ring.
    let page = fake.page();
    let hdr = wire::Header { ty: MsgType::Read as u32, req_id: 77, tx_id: 0, len: 0 };
    page.write(ring::RSP_OFF, &hdr.to_bytes());
    page.store_u32_release(ring::RSP_PROD, 16);
    assert_eq!(c.poll_watch(), Err(XsError::Protocol(ProtocolError::UnexpectedReply(77))));
    c.write("data/x", "1").unwrap();
}

#[test]
fn caller_errors_never_reach_the_ring() {
    let (mut c, fake) = setup();
    assert_eq!(c.read(""), Err(XsError::InvalidArg));
    assert_eq!(c.read("a\0b"), Err(XsError::InvalidArg));
    assert_eq!(c.watch("data", "t\0"), Err(XsError::InvalidArg));
    let too_big = vec![b'v'; PAYLOAD_MAX];
    assert_eq!(c.write("data/x", &too_big), Err(XsError::TooBig));
    assert_eq!(fake.requests(), 0);
    assert_eq!(fake.page().load_u32_acquire(ring::REQ_PROD), 0);
    // The largest legal payload goes through.
    let max = vec![b'v'; PAYLOAD_MAX - "data/x\0".len()];
    c.write("data/x", &max).unwrap();
    assert_eq!(c.read("data/x").unwrap(), max);
}

// ---- Ring wrap-around ----

#[test]
fn wrap_around_with_odd_sizes_and_chunks() {
    let fake = FakeXenstored::new(DomId(7)).with_start_index(u32::MAX - 700);
    let mut c = fake.client(TIMEOUT);
    let mut seed = 12345u32;
    for round in 0..300u32 {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
        fake.set_chunk(1 + (seed >> 8) as usize % 97);
        let len = (seed >> 16) as usize % 2900;
        let value: Vec<u8> = (0..len).map(|k| (k as u32 ^ round) as u8).collect();
        let path = alloc::format!("data/r{}", round % 7);
        c.write(&path, &value).unwrap();
        assert_eq!(c.read(&path).unwrap(), value, "round {round}");
    }
    // The indices went past 2^32 and everything is consumed.
    let page = fake.page();
    let rsp_prod = page.load_u32_acquire(ring::RSP_PROD);
    assert!(rsp_prod < u32::MAX - 700, "wrapped");
    assert_eq!(rsp_prod, page.load_u32_acquire(ring::RSP_CONS));
    assert_eq!(page.load_u32_acquire(ring::REQ_PROD), page.load_u32_acquire(ring::REQ_CONS));
}

// ---- Model-based property test ----

#[derive(Clone, Debug)]
enum Op {
    Write(usize, Vec<u8>),
    Read(usize),
    Mkdir(usize),
    Rm(usize),
    Dir(usize),
    TxWrite(usize, usize, Vec<u8>),
}

const PATHS: [&str; 8] = ["a", "a/b", "a/b/c", "a/d", "e", "e/f", "g/h/i", "g"];

/// A map from relative path to value, with xenstore's implicit parents.
#[derive(Default)]
struct Model {
    nodes: BTreeMap<String, Vec<u8>>,
}

impl Model {
    fn parent(p: &str) -> Option<&str> {
        p.rfind('/').map(|i| &p[..i])
    }
    fn create(&mut self, p: &str) {
        let mut cur = Some(p);
        while let Some(q) = cur {
            self.nodes.entry(q.to_string()).or_default();
            cur = Self::parent(q);
        }
    }
    fn write(&mut self, p: &str, v: &[u8]) {
        self.create(p);
        self.nodes.insert(p.to_string(), v.to_vec());
    }
    fn rm(&mut self, p: &str) -> Result<(), XsErrno> {
        if !self.nodes.contains_key(p) {
            return match Self::parent(p) {
                Some(q) if !self.nodes.contains_key(q) => Err(XsErrno::NoEnt),
                _ => Ok(()),
            };
        }
        let prefix = alloc::format!("{p}/");
        self.nodes.retain(|k, _| k != p && !k.starts_with(&prefix));
        Ok(())
    }
    fn dir(&self, p: &str) -> Result<Vec<String>, XsErrno> {
        if !self.nodes.contains_key(p) {
            return Err(XsErrno::NoEnt);
        }
        let prefix = alloc::format!("{p}/");
        Ok(self
            .nodes
            .keys()
            .filter_map(|k| k.strip_prefix(&prefix))
            .filter(|rest| !rest.contains('/'))
            .map(String::from)
            .collect())
    }
}

fn op_strategy() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    let path = 0..PATHS.len();
    let value = proptest::collection::vec(any::<u8>(), 0..40);
    prop_oneof![
        (path.clone(), value.clone()).prop_map(|(p, v)| Op::Write(p, v)),
        path.clone().prop_map(Op::Read),
        path.clone().prop_map(Op::Mkdir),
        path.clone().prop_map(Op::Rm),
        path.clone().prop_map(Op::Dir),
        (path.clone(), path, value).prop_map(|(a, b, v)| Op::TxWrite(a, b, v)),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    #[test]
    fn random_ops_match_model(
        ops in proptest::collection::vec(op_strategy(), 1..40),
        chunk in 1usize..200,
        start in proptest::prelude::any::<u32>(),
    ) {
        let fake = FakeXenstored::new(DomId(7)).with_start_index(start);
        fake.set_chunk(chunk);
        let mut c = fake.client(TIMEOUT);
        c.mkdir("data").unwrap();
        let mut m = Model::default();
        m.create("data");
        let full = |p: usize| alloc::format!("data/{}", PATHS[p]);
        for op in ops {
            match op {
                Op::Write(p, v) => {
                    c.write(&full(p), &v).unwrap();
                    m.write(&full(p), &v);
                }
                Op::Read(p) => {
                    let want = m.nodes.get(&full(p)).cloned().ok_or(XsError::Xs(XsErrno::NoEnt));
                    proptest::prop_assert_eq!(c.read(&full(p)), want);
                }
                Op::Mkdir(p) => {
                    c.mkdir(&full(p)).unwrap();
                    m.create(&full(p));
                }
                Op::Rm(p) => {
                    let want = m.rm(&full(p)).map_err(XsError::Xs);
                    proptest::prop_assert_eq!(c.rm(&full(p)), want);
                }
                Op::Dir(p) => {
                    let want = m.dir(&full(p)).map_err(XsError::Xs);
                    let got = c.directory(&full(p)).map(|mut v| { v.sort(); v });
                    proptest::prop_assert_eq!(got, want);
                }
                Op::TxWrite(a, b, v) => {
                    c.transaction(3, |tx| {
                        tx.write(&full(a), &v)?;
                        tx.write(&full(b), &v)
                    }).unwrap();
                    m.write(&full(a), &v);
                    m.write(&full(b), &v);
                }
            }
        }
        // The daemon's committed tree agrees with the model.
        for (p, v) in &m.nodes {
            proptest::prop_assert_eq!(fake.value(p), Some(v.clone()));
        }
    }
}
