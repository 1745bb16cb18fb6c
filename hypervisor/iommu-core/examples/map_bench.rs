//! Map+unmap throughput through the PV-IOMMU handler on the software VT-d:
//! batched (`nr_pages` = 512 per call) versus one page per call.
//!
//!     cargo run --release -p iommu-core --example map_bench [pages]
//!
//! Every call goes the whole way a guest's would: the client encodes the
//! argument, the handler decodes it, walks/extends the second-level table,
//! queues invalidations (page-selective IOTLB; with caching mode also on
//! map) and the software unit processes the queue.

use std::time::Instant as Clock;

use iommu_core::hw::SoftVtd;
use iommu_core::mem::VecMemory;
use iommu_core::types::{CtxNo, Dfn, DomId, Gfn, Instant, Mfn, PciSbdf};
use iommu_core::vtd::AddrWidth;
use iommu_core::{hypercall_return, Config, Frame, Iommu, Platform, Source};
use pv_iommu_client::client::MapFlags;
use pv_iommu_client::{Client, Transport};

const DOM: DomId = DomId(1);

struct Plat;

impl Platform for Plat {
    fn frame_of(&mut self, _: DomId, gfn: Gfn) -> Option<Frame> {
        Some(Frame { mfn: Mfn(0x10_0000 + gfn.0), source: Source::Own })
    }
    fn get_frame(&mut self, _: DomId, _: Frame, _: bool) -> bool {
        true
    }
    fn put_frame(&mut self, _: Mfn, _: bool) {}
    fn domain_pages(&self, _: DomId, from: Gfn, max: usize) -> Vec<(Gfn, Mfn)> {
        (from.0..16).take(max).map(|g| (Gfn(g), Mfn(0x10_0000 + g))).collect()
    }
    fn device_owner(&self, _: PciSbdf) -> Option<DomId> {
        Some(DOM)
    }
    fn copy_from_guest(&mut self, _: DomId, _: u64, _: &mut [u8]) -> bool {
        false
    }
    fn copy_to_guest(&mut self, _: DomId, _: u64, _: &[u8]) -> bool {
        false
    }
}

type Core = Iommu<VecMemory, SoftVtd, Plat>;

struct Direct<'a> {
    core: &'a mut Core,
    t: u64,
}

impl Transport for Direct<'_> {
    fn iommu_op(&mut self, subop: u32, arg: &mut [u8]) -> i64 {
        self.t += 1;
        hypercall_return(self.core.handle(DOM, subop, arg, Instant(self.t)))
    }
}

fn setup(cm: bool) -> Core {
    let mut hw = SoftVtd::new(AddrWidth::Aw39);
    hw.set_caching_mode(cm);
    let mut core = Iommu::new(Config::default(), VecMemory::new(Mfn(0x1000), 16384), hw, Plat).unwrap();
    core.add_domain(DOM, true).unwrap();
    core.add_device(PciSbdf::new(0, 0, 3, 0), false, &[]).unwrap();
    core.assign_device(PciSbdf::new(0, 0, 3, 0), DOM, Instant(0)).unwrap();
    core
}

/// Maps and unmaps `pages` pages in calls of `per_call`; returns pages/s
/// of map+unmap (each page counted once) and the number of calls.
fn run(cm: bool, pages: u32, per_call: u32) -> (f64, u64) {
    let mut core = setup(cm);
    let mut c = Client::new(Direct { core: &mut core, t: 0 });
    c.init(4, 16).unwrap();
    let ctx: CtxNo = c.alloc_context(false).unwrap();
    let base = 0x4_0000u64;
    // Warm the tables once so both variants measure steady state.
    c.map_pages(ctx, Gfn(0), Dfn(base), pages, MapFlags::READ_WRITE).unwrap();
    c.unmap_pages(ctx, Dfn(base), pages).unwrap();
    let calls0 = c.transport_mut().t;
    let t0 = Clock::now();
    let mut at = 0;
    while at < pages {
        let n = per_call.min(pages - at);
        c.map_pages(ctx, Gfn(at as u64), Dfn(base + at as u64), n, MapFlags::READ_WRITE).unwrap();
        at += n;
    }
    at = 0;
    while at < pages {
        let n = per_call.min(pages - at);
        c.unmap_pages(ctx, Dfn(base + at as u64), n).unwrap();
        at += n;
    }
    let secs = t0.elapsed().as_secs_f64();
    let calls = c.transport_mut().t - calls0;
    (pages as f64 / secs, calls)
}

fn main() {
    let pages: u32 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1 << 16);
    println!("map+unmap of {pages} 4 KiB pages through Iommu::handle on SoftVtd (39-bit, 3 levels)");
    for cm in [false, true] {
        let (batched, bc) = run(cm, pages, 512);
        let (single, sc) = run(cm, pages, 1);
        println!(
            "caching mode {:>3}: batched (512/call): {:>12.0} pages/s ({bc} hypercalls incl. restarts) | one page per call: {:>12.0} pages/s ({sc} hypercalls) | ratio {:.1}x",
            if cm { "on" } else { "off" },
            batched,
            single,
            batched / single
        );
    }
}
