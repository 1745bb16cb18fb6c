//! The deterministic cost benchmark's workload (`./run.sh bench cpu`).
//!
//! The real blkback and NVMe driver, on the host: blkback's simulated
//! blkfront (`blkback::testing`) publishes requests, the backend serves
//! them from a `block::View` of the real [`Nvme`] driver, whose controller
//! is the fake one (`drivers::fake::FakeNvme`), completing each command at
//! its doorbell. Instructions are counted by callgrind (`bench/cpu.sh`
//! runs this binary under it): collection is on only inside
//! [`backend_poll`] (the backend's one entry point on the data path), the
//! counters are zeroed at [`measure_begin`] and dumped at [`measure_end`],
//! once per workload, and `bench/cpu.py` splits the cost by stage and
//! subtracts the fakes'.
//!
//! Run alone, it just serves the workloads (a check that every request is
//! answered OKAY) and prints how many requests each served.

use blkback::abi::{self, Abi, BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_RSP_OKAY, SEGMENTS_PER_INDIRECT_PAGE};
use blkback::testing::{enc_indirect, enc_rw, world_with, Buf, Opts, Req, World, PAGE};
use blkback::xenbus::BackendConfig;
use drivers::fake::{FakeClock, FakeDma, FakeMemory, FakeNvme, FakeNvmeConfig, ForeignMemory};
use drivers::nvme::{Config, Nvme};
use std::hint::black_box;
use std::rc::Rc;
use xen::evtchn::EventOps;
use xen::gnttab::fake::DeviceView;
use xen::types::GrantRef;

type Disk = Nvme<FakeNvme, FakeDma<Buf>, FakeClock>;

/// One workload: an operation, a request size, a queue depth.
#[derive(Clone, Copy)]
struct Workload {
    name: &'static str,
    op: u8,
    /// 4 KiB pages per request.
    pages: usize,
    qd: usize,
}

const WORKLOADS: [Workload; 6] = [
    Workload { name: "4k-read-qd1", op: BLKIF_OP_READ, pages: 1, qd: 1 },
    Workload { name: "4k-read-qd32", op: BLKIF_OP_READ, pages: 1, qd: 32 },
    Workload { name: "4k-write-qd1", op: BLKIF_OP_WRITE, pages: 1, qd: 1 },
    Workload { name: "4k-write-qd32", op: BLKIF_OP_WRITE, pages: 1, qd: 32 },
    Workload { name: "128k-read-qd1", op: BLKIF_OP_READ, pages: 32, qd: 1 },
    Workload { name: "128k-read-qd32", op: BLKIF_OP_READ, pages: 32, qd: 32 },
];

/// Sectors of the fake namespace: 32 slots of 128 KiB.
const BLOCKS: u64 = 32 * 256;

/// The backend's entry point on the data path: callgrind collects only
/// inside this function.
#[inline(never)]
fn backend_poll(w: &mut World<Disk>) -> bool {
    w.blk.poll(&mut w.g, &mut w.e)
}

/// Callgrind zeroes its counters when this is entered.
#[inline(never)]
fn measure_begin(name: &str) {
    black_box(name);
}

/// Callgrind dumps its counters (one file per workload) when this is entered.
#[inline(never)]
fn measure_end(name: &str, requests: usize) {
    black_box((name, requests));
}

/// The fake controller's view of granted pages mapped for the device
/// (a fake's cost: it is under `drivers::fake` on every call chain).
struct Bus(DeviceView);

impl ForeignMemory for Bus {
    fn read(&self, addr: u64, out: &mut [u8]) -> bool {
        self.0.read(addr, out)
    }
    fn write(&self, addr: u64, data: &[u8]) -> bool {
        self.0.write(addr, data)
    }
}

/// A world with one frontend connected over `nvme0n1` of a fake controller
/// (PRPs, as before issue 14's zero-copy, so the figures compare); with `zerocopy`, grants are mapped for the device
/// as the product maps them, so persistent grants go by zero-copy.
fn setup(persistent: bool, zerocopy: bool) -> World<Disk> {
    let mem = FakeMemory::new_shared();
    let m = mem.clone();
    let mut w = world_with(
        move |_clock| {
            let fc = FakeNvmeConfig { blocks: BLOCKS, ..Default::default() };
            let ctrl = FakeNvme::new(m.clone(), fc);
            Nvme::init(ctrl, FakeDma::for_buffers(m), FakeClock::new(1000), Config::default()).expect("nvme init")
        },
        BackendConfig::default(),
        &[5],
    );
    w.g.set_device_map(zerocopy);
    w.blk.set_zerocopy(zerocopy);
    mem.borrow_mut().set_foreign(Rc::new(Bus(w.g.device_view())));
    w.attach_nodes_with(0, "nvme0n1", Some("w"));
    assert!(w.pump());
    w.connect(0, Opts { persistent, ..Opts::default() });
    w
}

/// The requests of one batch (one per queue slot), over pages granted
/// once (blkfront reuses its grants with persistent grants).
fn requests(w: &mut World<Disk>, wl: Workload) -> Vec<Req> {
    let f = &mut w.fronts[0];
    let ro = wl.op == BLKIF_OP_WRITE && !f.persistent;
    let data = vec![0x3c; PAGE];
    (0..wl.qd)
        .map(|slot| {
            let sector = (slot * 256) as u64;
            let id = slot as u64;
            let segs: Vec<abi::Segment> = (0..wl.pages)
                .map(|_| abi::Segment { gref: f.grant_page(&data, ro).gref.0, first_sect: 0, last_sect: 7 })
                .collect();
            if segs.len() <= abi::MAX_SEGMENTS_PER_REQUEST {
                return enc_rw(f.abi, wl.op, id, sector, &segs);
            }
            let mut pages: Vec<GrantRef> = Vec::new();
            for chunk in segs.chunks(SEGMENTS_PER_INDIRECT_PAGE) {
                let mut b = vec![0u8; PAGE];
                for (i, s) in chunk.iter().enumerate() {
                    s.encode(&mut b[i * 8..]);
                }
                pages.push(f.grant_page(&b, !f.persistent).gref);
            }
            enc_indirect(f.abi, wl.op, segs.len() as u16, id, sector, &pages)
        })
        .collect()
}

/// Publishes one batch and polls the backend until every answer came.
fn batch(w: &mut World<Disk>, reqs: &[Req]) {
    for r in reqs {
        w.fronts[0].push(0, r);
    }
    w.fronts[0].publish(0);
    let mut got = 0;
    for _ in 0..10_000 {
        backend_poll(w);
        let f = &mut w.fronts[0];
        if f.e.take_pending(f.rings[0].port) {
            for rsp in f.take_responses(0) {
                assert_eq!(rsp.status, BLKIF_RSP_OKAY, "request {} failed", rsp.id);
                got += 1;
            }
        }
        if got == reqs.len() {
            return;
        }
    }
    panic!("{} of {} requests answered", got, reqs.len());
}

fn run(wl: Workload, total: usize, persistent: bool, zerocopy: bool) -> usize {
    let mut w = setup(persistent, zerocopy);
    assert_eq!(w.fronts[0].abi, Abi::X86_64);
    let reqs = requests(&mut w, wl);
    // Warm-up: persistent grants mapped, buffers and queues in use once.
    for _ in 0..2 {
        batch(&mut w, &reqs);
    }
    let batches = total.div_ceil(wl.qd).max(1);
    measure_begin(wl.name);
    for _ in 0..batches {
        batch(&mut w, &reqs);
    }
    let n = batches * wl.qd;
    measure_end(wl.name, n);
    n
}

fn main() {
    let mut total = 2000;
    let mut persistent = true;
    let mut zerocopy = true;
    let mut only: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--requests" => total = args.next().and_then(|v| v.parse().ok()).expect("--requests N"),
            "--grant-copy" => persistent = false,
            "--copy" => zerocopy = false,
            "--workload" => only = args.next(),
            _ => {
                eprintln!("usage: cpubench [--requests N] [--grant-copy] [--copy] [--workload NAME]");
                std::process::exit(2);
            }
        }
    }
    for wl in WORKLOADS.iter().filter(|w| only.as_deref().is_none_or(|o| o == w.name)) {
        let n = run(*wl, total, persistent, zerocopy);
        println!("workload {} requests {n} persistent {persistent}", wl.name);
    }
}
