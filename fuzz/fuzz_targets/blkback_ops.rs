//! Drives the real blkback through the simulated blkfront and toolstack
//! (`blkback::testing`) with an operation sequence decoded from the input:
//! connects with odd ring orders, queue counts and protocols, requests with
//! random operations, segments, sectors, bad grant references and bad
//! indices, raw slot bytes, bogus `req_prod` values, frontend state changes,
//! detach, directory removal, reconnects and the passing of time.
//!
//! Checked after every operation: nothing panics; the backend never
//! publishes more responses than were published to it, nor writes the
//! frontend's header fields (`xen_ring::mock::FrontRing`); on an untampered
//! ring no request id is answered twice or without being asked; the buffer
//! budget holds. At the end, closing the device gives every grant back.
#![no_main]

use std::collections::BTreeSet;

use blkback::abi::{self, Abi, BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT, MAX_REQUEST_SIZE};
use blkback::testing::{enc_indirect, enc_rw, ram, world, Opts, Req, World, DISK_SECTORS};
use blkback::testing::{Buf, DiskBytes, SlowDisk, SHARED};
use blkback::xenbus::BackendConfig;
use blkback::{MAX_BUFFER_BYTES, MAX_MAPPINGS};
use drivers::block::Volumes;
use libfuzzer_sys::fuzz_target;
use xen::evtchn::EventOps;
use xen::types::GrantRef;

/// Operations per input, at most.
const MAX_OPS: usize = 32;

/// A cursor over the input: every read past the end yields zeros.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }
}

/// Per-ring bookkeeping of the frontend: ids asked and not yet answered,
/// and whether the ring was tampered with (stale slots may then be answered
/// again, legitimately).
#[derive(Default)]
struct RingBook {
    asked: BTreeSet<u64>,
    tampered: bool,
}

struct Fuzz<D: Volumes<Buffer = Buf>> {
    w: World<D>,
    books: Vec<RingBook>,
    max_queues: u32,
    /// The vbd's `mode`: `r` (read-only) or `w`.
    mode: &'static str,
}

impl<D: Volumes<Buffer = Buf>> Fuzz<D> {
    fn be_path(&self, key: &str) -> String {
        format!("{}/{key}", self.w.fronts[0].be_dir())
    }

    /// Takes answers from every ring whose event fired and checks them.
    fn take_answers(&mut self) {
        let f = &mut self.w.fronts[0];
        for (q, book) in self.books.iter_mut().enumerate().take(f.rings.len()) {
            let port = f.rings[q].port;
            if !f.e.take_pending(port) {
                continue;
            }
            for r in f.take_responses(q) {
                if !book.tampered {
                    assert!(book.asked.remove(&r.id), "id {:#x} answered twice or never asked", r.id);
                }
            }
            f.rings[q].ring.check_frontend_fields();
        }
    }

    fn check(&mut self) {
        self.take_answers();
        assert!(self.w.blk.buffer_bytes() <= MAX_BUFFER_BYTES);
        assert!(self.w.blk.mappings() <= MAX_MAPPINGS);
        // One vbd: never more rings than advertised (a frontend that
        // re-makes its rings without closing keeps the old ones served, as
        // Linux does, so the frontend's current count is no bound).
        let ports = self.w.blk.ports().len();
        assert!(ports <= self.max_queues as usize, "{ports} rings bound, at most {} advertised", self.max_queues);
        assert!(self.w.blk.vbd_count() <= 1);
    }

    fn pump(&mut self) {
        assert!(self.w.pump(), "backend busy forever");
    }

    /// blkfront's talk_to_blkback with fuzzed options and an optional bogus
    /// protocol string.
    fn connect(&mut self, b: &mut Bytes) {
        let sel = b.u8();
        let protocol = match sel % 4 {
            0 => None,
            1 => Some(Abi::X86_32),
            _ => Some(Abi::X86_64),
        };
        let order = match b.u8() % 7 {
            0 => None,
            n => Some(n - 1), // 0..=5: 5 is refused
        };
        let queues = u32::from(b.u8() % 3) + 1;
        let persistent = b.u8() & 1 == 1;
        let start = b.u32();
        let o = Opts { protocol, persistent, queues, order, start };
        self.books = (0..queues).map(|_| RingBook::default()).collect();
        if sel % 4 == 3 {
            // A protocol nobody speaks.
            self.w.fe_write(0, "protocol", "x86_16-abi");
            self.w.fronts[0].abi = Abi::X86_64;
            let f = &mut self.w.fronts[0];
            f.persistent = o.persistent;
            f.make_rings(&o);
            let mut keys = f.keys(&o);
            keys.retain(|(k, _)| k != "protocol");
            f.keys_written = keys.iter().map(|(k, _)| k.clone()).chain(["protocol".to_string()]).collect();
            for (k, v) in keys {
                self.w.fe_write(0, &k, &v);
            }
            self.w.fe_write(0, "state", "3");
            self.pump();
        } else {
            self.w.connect_initialised(0, o);
        }
        if b.u8() & 1 == 1 {
            self.w.fe_write(0, "state", "4");
            self.pump();
        }
    }

    /// One request (well-formed or not) on ring `q`.
    fn request(&mut self, b: &mut Bytes) {
        let f = &mut self.w.fronts[0];
        if f.rings.is_empty() {
            return;
        }
        let q = usize::from(b.u8()) % f.rings.len();
        if f.rings[q].size() == 0 || f.rings[q].ring.free_slots() == 0 {
            return;
        }
        let kind = b.u8();
        let sector = match b.u8() % 4 {
            0 => u64::from(b.u16()) % DISK_SECTORS,
            1 => DISK_SECTORS - u64::from(b.u8() % 16),
            2 => b.u64(),
            _ => 0,
        };
        let nseg = usize::from(b.u8() % 13);
        let bad_gref = b.u8();
        let mut req: Req = [0u8; MAX_REQUEST_SIZE];
        let id;
        match kind % 8 {
            // Read or write over fresh pages, some spans odd.
            0 | 1 | 2 => {
                let op = if kind % 8 == 0 { abi::BLKIF_OP_READ } else { abi::BLKIF_OP_WRITE };
                let spans: Vec<(u8, u8)> = (0..nseg).map(|_| (b.u8() % 9, b.u8() % 9)).collect();
                let (r, i, _) = f.rw(op, sector, &spans, u32::from(kind), op == abi::BLKIF_OP_WRITE);
                req = r;
                id = i;
                if bad_gref % 5 == 0 && nseg > 0 {
                    // Clobber one segment's grant reference.
                    let off = if f.abi == Abi::X86_64 { 24 } else { 20 };
                    req[off..off + 4].copy_from_slice(&u32::from(b.u16()).to_le_bytes());
                }
            }
            // Flush, barrier (with or without data), discard.
            3 => {
                id = f.id();
                let op = if bad_gref & 1 == 0 { BLKIF_OP_FLUSH_DISKCACHE } else { abi::BLKIF_OP_WRITE_BARRIER };
                req = enc_rw(f.abi, op, id, sector, &[]);
            }
            4 => {
                id = f.id();
                let d = abi::DiscardX64 {
                    operation: BLKIF_OP_DISCARD,
                    flag: b.u8(),
                    handle: 0,
                    id,
                    sector_number: sector,
                    nr_sectors: u64::from(b.u16()),
                };
                match f.abi {
                    Abi::X86_64 => d.encode(&mut req),
                    Abi::X86_32 => abi::DiscardX32::from(d).encode(&mut req),
                }
            }
            // Indirect over real pages, or naming bogus indirect pages.
            5 => {
                let op = if bad_gref & 1 == 0 { abi::BLKIF_OP_READ } else { abi::BLKIF_OP_WRITE };
                if bad_gref & 2 == 0 {
                    let (r, i, _) = f.indirect(op, sector, nseg * 3 + 1, u32::from(kind));
                    req = r;
                    id = i;
                } else {
                    id = f.id();
                    let pages: Vec<GrantRef> = (0..b.u8() % 10).map(|_| GrantRef(u32::from(b.u16()))).collect();
                    req = enc_indirect(f.abi, op, b.u16(), id, sector, &pages);
                }
            }
            // Raw slot bytes (any operation), id placed where the ABI has it.
            _ => {
                for x in req.iter_mut() {
                    *x = b.u8();
                }
                id = f.id();
                let off = f.abi.id_offset();
                req[off..off + 8].copy_from_slice(&id.to_le_bytes());
                if req[0] == BLKIF_OP_INDIRECT && bad_gref & 1 == 0 {
                    req[1] = abi::BLKIF_OP_READ;
                }
            }
        }
        f.push(q, &req);
        self.books[q].asked.insert(id);
        if b.u8() & 3 != 0 {
            f.publish(q);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let max_queues = u32::from(b.u8() % 4) + 1;
    let cfg = BackendConfig { max_queues, ..BackendConfig::default() };
    // A RAM disk that completes at once, or one whose completions lag,
    // whose queues fill and that may refuse large transfers.
    let disk = b.u8();
    // The top bit: a read-only vbd (`mode` r) over a disk layer that would
    // accept writes, so only blkback keeps the disk unchanged.
    let mode = if disk & 0x80 == 0 { "w" } else { "r" };
    if disk & 1 == 0 {
        drive(&mut b, world(ram(2), cfg, &[5]), max_queues, mode);
    } else {
        let limit = if disk & 2 == 0 { usize::MAX } else { 16 * 1024 };
        let slow = SlowDisk::new(DISK_SECTORS, 2, u32::from(disk >> 2) % 4, usize::from(disk >> 4) % 8 + 1);
        drive(&mut b, world(slow.with_limit(limit), cfg, &[5]), max_queues, mode);
    }
});

/// Runs the operations of `b` on `w` and the final checks.
fn drive<D: Volumes<Buffer = Buf> + DiskBytes>(b: &mut Bytes, w: World<D>, max_queues: u32, mode: &'static str) {
    if std::env::var_os("BLKBACK_FUZZ_LOG").is_none() {
        log::set_max_level(log::LevelFilter::Off);
    }
    let mut fz = Fuzz { w, books: Vec::new(), max_queues, mode };
    fz.w.view_enforces_readonly.set(false);
    let before = fz.w.disk().bytes();
    fz.w.attach_nodes_with(0, SHARED, Some(fz.mode));
    fz.pump();
    for _ in 0..MAX_OPS {
        if b.0.is_empty() {
            break;
        }
        match b.u8() % 12 {
            0 => fz.connect(b),
            1..=4 => fz.request(b),
            5 => {
                // Publish and kick every ring.
                let f = &mut fz.w.fronts[0];
                for q in 0..f.rings.len() {
                    f.publish(q);
                    let port = f.rings[q].port;
                    let _ = f.e.send(port);
                }
            }
            6 => {
                // A bogus producer, near the consumer or anywhere.
                let f = &mut fz.w.fronts[0];
                if !f.rings.is_empty() {
                    let q = usize::from(b.u8()) % f.rings.len();
                    let v = match b.u8() % 3 {
                        0 => f.rings[q].cons().wrapping_add(u32::from(b.u8())),
                        1 => f.rings[q].prod().wrapping_sub(u32::from(b.u8() % 8)),
                        _ => b.u32(),
                    };
                    f.rings[q].poke_req_prod(v);
                    fz.books[q].tampered = true;
                    let port = f.rings[q].port;
                    let _ = f.e.send(port);
                }
            }
            7 => {
                // The frontend moves to any state, valid or not.
                let s = match b.u8() % 12 {
                    10 => "x".to_string(),
                    11 => "99999999999".to_string(),
                    n => n.to_string(),
                };
                fz.w.fe_write(0, "state", &s);
            }
            8 => {
                // Toolstack detach.
                let p = fz.be_path("online");
                fz.w.xsd.external_write(&p, b"0");
            }
            9 => {
                // A directory vanishes: the frontend's, or ours.
                let f = &fz.w.fronts[0];
                let p = if b.u8() & 1 == 0 { f.fe_dir() } else { f.be_dir() };
                if fz.w.xsd.value(&p).is_some() {
                    fz.w.xsd.external_rm(&p);
                }
            }
            10 => {
                // Time passes; maintenance runs; the toolstack may re-create
                // the device.
                let now = fz.w.e.now();
                let _ = fz.w.e.wait_any(&[], now + u64::from(b.u8()) * 100_000_000);
                fz.w.blk.maintenance(&mut fz.w.xs, &mut fz.w.g, &mut fz.w.e);
                if b.u8() & 1 == 1 && fz.w.blk.vbd_count() == 0 {
                    fz.w.attach_nodes_with(0, SHARED, Some(fz.mode));
                }
            }
            _ => fz.w.blk.request_rescan(),
        }
        fz.pump();
        fz.check();
    }
    // Close the device (if the frontend can still say so) and check every
    // grant came back.
    fz.w.fe_write(0, "state", "5");
    fz.pump();
    fz.w.fe_write(0, "state", "6");
    fz.pump();
    fz.check();
    if fz.mode == "r" {
        assert!(fz.w.disk().bytes() == before, "a read-only vbd changed the disk");
    }
    if fz.w.blk.vbd_count() == 0 || fz.w.be_state(0).as_deref() == Some("6") {
        // The vbd is closed or gone (or never was): nothing may stay mapped.
        assert_eq!(fz.w.fronts[0].end_all(), vec![], "grants still mapped after the vbd closed");
    }
}
