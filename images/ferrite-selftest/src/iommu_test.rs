//! PVH self-test of the IOMMU stack on QEMU's intel-iommu (kernel command
//! line `iommu`).
//!
//! The hypervisor-side core (`iommu_core::Iommu`) drives the real VT-d unit
//! through `iommu_core::mmio::MmioVtd`; the PV-IOMMU client talks to it
//! in-process (a `Transport` that calls the handler instead of trapping to
//! Xen), and the NVMe driver maps its DMA through `IommuDma`, so every bus
//! address it hands the controller is an IOVA in a non-default context.
//!
//! Steps, each logged as `pvh test iommu-<name>: PASS|FAIL`:
//! 1. `dmar`: RSDP → RSDT/XSDT → DMAR → the unit covering the NVMe; VER/CAP.
//! 2. `enable`: root/context tables, queued invalidation, translation on
//!    (GCMD/GSTS handshakes with deadlines); the NVMe in context 1.
//! 3. `msi-reserved`: mapping into 0xFEE00000.. is refused.
//! 4. `nvme-io`: `disktest::run` through IOVAs; no faults recorded.
//! 5. `fault`: a read whose second page is left unmapped: the VT-d fault
//!    record names the NVMe and that IOVA, the page behind it is untouched.
//! 6. `reattach-replay`: context 1 replayed into context 2, device
//!    reattached, the same driver instance keeps doing verified I/O.
//! 7. `msi`: MSI-X on the NVMe (admin queue, vector 0) delivered to the
//!    local APIC while the device sits in context 2.
//! 8. `fault-status`: a command whose PRP list sits at an unmapped IOVA
//!    completes with an error status (VT-d read fault recorded).
//! 9. `queue`: the invalidation queue drained (IQH = IQT), no IQE/ICE/ITE.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;

use drivers::block::BlockRequest;
use drivers::hal::RegisterIo;
use drivers::nvme::{Config, Nvme};
use drivers::pci::{BarKind, PciDevice};
use iommu_core::acpi::{find_rsdp, find_table, Dmar};
use iommu_core::mem::{PageAlloc, PhysMem};
use iommu_core::mmio::{fsts, gcmd, reg, MmioVtd, RegisterAccess};
use iommu_core::types::{DomId, Gfn, Instant, Mfn, PciSbdf};
use iommu_core::{hypercall_return, Frame, Iommu, Platform, Rmrr, Source};
use log::{error, info, warn};
use pv_iommu_client::client::MapFlags;
use pv_iommu_client::dma::{Faults, IommuDma};
use pv_iommu_client::iova::{IovaAllocator, MSI_WINDOW};
use pv_iommu_client::types::{CtxNo, Dfn};
use pv_iommu_client::{Client, Transport};
use runtime::dev::{mmio_identity, DmaBuf, HalClock, HalDma, Mmio, PortPci, Translation};
use runtime::vtd::{irq, read_firmware, PhysPool};
use runtime::{time, PvhBoot};

use crate::disktest;

/// The domain the test plays: it owns the NVMe and issues PV-IOMMU calls.
const SELF: DomId = DomId(1);
/// Frames reserved for VT-d structures (the default context alone needs
/// ~260 table pages for 512 MiB).
const POOL_FRAMES: u64 = 1024;

/// VT-d registers through the HAL's volatile MMIO.
struct Regs(RefCell<Mmio>);

impl RegisterAccess for Regs {
    fn read32(&self, off: usize) -> u32 {
        self.0.borrow_mut().read32(off)
    }
    fn write32(&self, off: usize, v: u32) {
        // Mmio orders the write after earlier stores (release fence).
        self.0.borrow_mut().write32(off, v)
    }
}

/// Pool frames as the core's memory.
struct Pool(PhysPool);

impl PhysMem for Pool {
    fn read_u64(&self, pa: u64) -> Option<u64> {
        self.0.read_u64(pa)
    }
    fn write_u64(&mut self, pa: u64, v: u64) {
        assert!(self.0.write_u64(pa, v), "IOMMU core wrote outside its pool: {pa:#x}");
    }
    fn write_back(&mut self, pa: u64, len: u64) {
        // CLFLUSH; MmioVtd calls this only when ECAP.C = 0.
        self.0.write_back(pa, len)
    }
}

impl PageAlloc for Pool {
    fn alloc_zeroed(&mut self) -> Option<Mfn> {
        self.0.alloc_zeroed().map(Mfn::from_addr)
    }
    fn free_page(&mut self, mfn: Mfn) {
        self.0.free(mfn.addr())
    }
}

/// PVH memory: guest frame = machine frame for RAM below `ram_top`.
struct Plat {
    first: u64,
    end: u64,
    refs: i64,
}

impl Platform for Plat {
    fn frame_of(&mut self, _dom: DomId, gfn: Gfn) -> Option<Frame> {
        (gfn.0 >= self.first && gfn.0 < self.end).then_some(Frame { mfn: Mfn(gfn.0), source: Source::Own })
    }
    fn get_frame(&mut self, _dom: DomId, _frame: Frame, _writable: bool) -> bool {
        self.refs += 1;
        true
    }
    fn put_frame(&mut self, _mfn: Mfn, _writable: bool) {
        self.refs -= 1;
    }
    fn domain_pages(&self, _dom: DomId, from: Gfn, max: usize) -> Vec<(Gfn, Mfn)> {
        (from.0.max(self.first)..self.end).take(max).map(|p| (Gfn(p), Mfn(p))).collect()
    }
    fn device_owner(&self, _dev: PciSbdf) -> Option<DomId> {
        // The self-test plays the hypervisor for one domain that owns every device.
        Some(SELF)
    }
    fn copy_from_guest(&mut self, _: DomId, _: u64, _: &mut [u8]) -> bool {
        false
    }
    fn copy_to_guest(&mut self, _: DomId, _: u64, _: &[u8]) -> bool {
        false
    }
}

type Core = Iommu<Pool, MmioVtd<Regs>, Plat>;

/// The PV-IOMMU "hypercall": straight into the handler.
#[derive(Clone, Copy)]
struct Local<'a>(&'a RefCell<Core>);

impl Transport for Local<'_> {
    fn iommu_op(&mut self, subop: u32, arg: &mut [u8]) -> i64 {
        let now = Instant(time::now());
        hypercall_return(self.0.borrow_mut().handle(SELF, subop, arg, now))
    }
}

type Dma<'a> = IommuDma<Local<'a>, HalDma>;
type Drv<'a> = Nvme<Mmio, Dma<'a>, HalClock>;

struct Tally(u32);

impl Tally {
    fn check(&mut self, name: &str, ok: bool) -> bool {
        if ok {
            info!("pvh test iommu-{name}: PASS");
        } else {
            error!("pvh test iommu-{name}: FAIL");
            self.0 += 1;
        }
        ok
    }
}

/// Runs the IOMMU tests against the NVMe at `bdf`; returns the failure count.
pub fn run(b: &PvhBoot, bdf: Option<(u8, u8, u8)>) -> u32 {
    let mut t = Tally(0);
    let Some(bdf) = bdf else {
        t.check("nvme-present", false);
        return t.0;
    };
    if let Err(e) = run_inner(b, bdf, &mut t) {
        error!("iommu test stopped: {e}");
        t.check("run", false);
    }
    t.0
}

fn run_inner(b: &PvhBoot, bdf: (u8, u8, u8), t: &mut Tally) -> Result<(), String> {
    let dev = PciSbdf::new(0, bdf.0, bdf.1, bdf.2);
    let sid = dev.source_id();

    // ---- 1. Find the unit through ACPI.
    let mut rd = |a: u64, buf: &mut [u8]| read_firmware(a, buf);
    let rsdp = find_rsdp(&mut rd, 0xE0000, 0x20000).ok_or("no ACPI RSDP in 0xE0000-0xFFFFF")?;
    let dmar_raw = find_table(&mut rd, rsdp, b"DMAR").map_err(|e| format!("DMAR: {e:?}"))?;
    let dmar = Dmar::parse(&dmar_raw).map_err(|e| format!("DMAR parse: {e:?}"))?;
    let unit = dmar.unit_for(dev.bus, dev.devfn).ok_or("no DRHD covers the NVMe")?;
    info!(
        "iommu: RSDP at {rsdp:#x}; DMAR {} bytes, HAW {} bits, flags {:#x}, {} unit(s), {} RMRR(s); NVMe {:02x}:{:02x}.{} (SID {sid:#06x}) -> unit at {:#x} (include-all {})",
        dmar_raw.len(),
        dmar.haw as u32 + 1,
        dmar.flags,
        dmar.units.len(),
        dmar.rmrrs.len(),
        bdf.0,
        bdf.1,
        bdf.2,
        unit.base,
        unit.include_all
    );
    if unit.base >= 1 << 32 {
        return Err(format!("unit at {:#x} is above the identity map", unit.base));
    }
    let regs = Regs(RefCell::new(mmio_identity(unit.base, 0x1000)));
    let hw = MmioVtd::probe(regs, time::now).map_err(|e| format!("VT-d probe: {e:?}"))?;
    let (maj, min) = hw.version();
    let c = hw.caps();
    info!(
        "iommu: VT-d {maj}.{min} CAP {:#x} ECAP {:#x}: SAGAW {:#b} MGAW {} CM {} ND {} domain ids, {} fault record(s) at {:#x}, QI {} DT {} C {}",
        c.cap,
        c.ecap,
        c.sagaw(),
        c.mgaw(),
        c.caching_mode(),
        c.domain_ids(),
        c.fault_records(),
        c.fault_offset(),
        c.queued_invalidation(),
        c.device_tlb(),
        c.coherent()
    );
    t.check("dmar", maj >= 1);

    // ---- 2. Tables, queue, translation.
    let pool = PhysPool::claim(b, POOL_FRAMES).ok_or("cannot claim RAM above the heap for the IOMMU pool")?;
    info!("iommu: structure pool {} frames at {:#x}", pool.capacity(), pool.base());
    let ram_end = b.ram_top >> 12;
    let plat = Plat { first: 0x100, end: ram_end, refs: 0 };
    let t0 = time::now();
    let core =
        Iommu::new(iommu_core::Config::default(), Pool(pool), hw, plat).map_err(|e| format!("Iommu::new: {e:?}"))?;
    let core = RefCell::new(core);
    {
        let mut c = core.borrow_mut();
        let hw = c.hw_mut();
        let st = hw.status();
        let rt = hw.regs().read64(reg::RTADDR);
        let iqa = hw.regs().read64(reg::IQA);
        info!(
            "iommu: GSTS {st:#010x} (TES {} RTPS {} QIES {}), RTADDR {rt:#x}, IQA {iqa:#x}, error {:?}",
            st & gcmd::TE != 0,
            st & gcmd::SRTP != 0,
            st & gcmd::QIE != 0,
            hw.error()
        );
        let on = st & gcmd::TE != 0 && st & gcmd::QIE != 0 && hw.error().is_none();
        let rmrr: Vec<Rmrr> =
            dmar.rmrrs_for(dev.bus, dev.devfn).into_iter().map(|(first, count)| Rmrr { first, count }).collect();
        c.add_domain(SELF, true).map_err(|e| format!("add_domain: {e:?}"))?;
        c.add_device(dev, false, &rmrr).map_err(|e| format!("add_device: {e:?}"))?;
        c.assign_device(dev, SELF, Instant(time::now())).map_err(|e| format!("assign_device: {e:?}"))?;
        info!(
            "iommu: default context maps {} RAM pages 1:1 ({} pool frames used, {} ms); NVMe assigned, in context {:?}",
            ram_end - 0x100,
            c.mem().0.allocated(),
            (time::now() - t0) / 1_000_000,
            c.device_context(dev)
        );
        t.check("enable", on);
    }
    let mut client = Client::new(Local(&core));
    let caps = client.ensure_initialised().map_err(|e| format!("init: {e:?}"))?;
    let ctx1 = client.alloc_context(false).map_err(|e| format!("alloc_context: {e:?}"))?;
    client.reattach_device(ctx1, dev).map_err(|e| format!("reattach: {e:?}"))?;
    info!(
        "iommu: PV-IOMMU caps: max IOVA {:#x}, {} contexts, pgsize mask {:#x}; NVMe reattached to context {} ({:?})",
        caps.max_iova_addr,
        caps.max_ctx_no,
        caps.pgsize_mask,
        ctx1.0,
        core.borrow().device_context(dev)
    );

    // ---- 3. The MSI window is reserved.
    let r = client.map_pages(ctx1, Gfn(b.free_start >> 12), Dfn(MSI_WINDOW.0 + 3), 1, MapFlags::READ_WRITE);
    info!("iommu: map_pages at IOVA {:#x} -> {:?}", (MSI_WINDOW.0 + 3) << 12, r);
    t.check("msi-reserved", matches!(r, Err(e) if e.error == pv_iommu_client::Error::AddressNotAvailable));

    // ---- 4. NVMe I/O through IOVAs.
    let mut reserved: Vec<(u64, u64)> = alloc::vec![MSI_WINDOW];
    reserved.extend(dmar.rmrrs_for(dev.bus, dev.devfn));
    // Starts 2 MiB below the MSI window: allocations run into it and must
    // jump over it. Every IOVA is far above the 512 MiB of RAM.
    let iova_a = IovaAllocator::new(0xFEC00, 0x40_0000, &reserved);
    let dma = IommuDma::new(Client::new(Local(&core)), HalDma::new(Translation::Identity), ctx1, iova_a);
    let mut pci = PortPci::new(bdf.0, bdf.1, bdf.2);
    let bar = match pci.bar(0) {
        Some(b) if b.kind != BarKind::Io && b.base + b.size <= 1 << 32 => b,
        other => return Err(format!("NVMe BAR0 unusable: {other:?}")),
    };
    pci.enable_memory_and_bus_master();
    let cfg = Config {
        io_queues: 4,
        queue_depth: 64,
        io_timeout_ns: 10_000_000_000,
        abort_timeout_ns: 3_000_000_000,
        ..Config::default()
    };
    let mut nvme: Drv<'_> = Nvme::init(mmio_identity(bar.base, bar.size as usize), dma, HalClock, cfg)
        .map_err(|e| format!("nvme init through the IOMMU: {e:?}"))?;
    info!(
        "iommu: NVMe up through context {}: {} I/O queues; DMA {:?}",
        ctx1.0,
        nvme.info().io_queues,
        nvme.dma().stats()
    );
    let io = disktest::run(&mut nvme, 16 * 1024, 512);
    let s = nvme.dma().stats();
    let faults = drain_faults(&core);
    info!(
        "iommu: disk test through IOVAs: {:?}; {} map calls for {} pages, {} unmap calls for {} pages; {} VT-d fault(s)",
        io.as_ref().map(|r| r.bytes_written),
        s.map_calls,
        s.pages_mapped,
        s.unmap_calls,
        s.pages_unmapped,
        faults.len()
    );
    t.check("nvme-io", io.is_ok() && faults.is_empty() && s.failures == 0);
    let ranges = core.borrow().replay(SELF, ctx1).map_err(|e| format!("replay: {e:?}"))?;
    let above = ranges.iter().filter(|r| r.dfn.0 >= MSI_WINDOW.0 + MSI_WINDOW.1).count();
    let inside =
        ranges.iter().filter(|r| r.dfn.0 < MSI_WINDOW.0 + MSI_WINDOW.1 && r.dfn.0 + r.count > MSI_WINDOW.0).count();
    info!(
        "iommu: context {} holds {} range(s) ({} below, {} above the MSI window, {} inside); first: IOVA {:#x} -> physical {:#x}, {} page(s)",
        ctx1.0,
        ranges.len(),
        ranges.len() - above - inside,
        above,
        inside,
        ranges.first().map_or(0, |r| r.dfn.0 << 12),
        ranges.first().map_or(0, |r| r.mfn.0 << 12),
        ranges.first().map_or(0, |r| r.count)
    );

    // ---- 5. A DMA to an unmapped IOVA faults and changes nothing.
    fault_test(&core, &mut nvme, sid, t);

    // ---- 6. Replay into a new context, reattach, keep going.
    let ctx2 = client.alloc_context(false).map_err(|e| format!("alloc_context 2: {e:?}"))?;
    let ranges = core.borrow().replay(SELF, ctx1).map_err(|e| format!("replay: {e:?}"))?;
    let mut replay_ok = true;
    let mut pages = 0u64;
    for r in &ranges {
        let flags = match (r.perm.read, r.perm.write) {
            (true, true) => MapFlags::READ_WRITE,
            (true, false) => MapFlags::READ,
            _ => MapFlags::WRITE,
        };
        let Ok(n) = u32::try_from(r.count) else {
            replay_ok = false;
            continue;
        };
        // PVH: guest frame = machine frame, so the replayed MFN is the gfn.
        if let Err(e) = client.map_pages(ctx2, Gfn(r.mfn.0), r.dfn, n, flags) {
            error!("replay map {:?}: {e:?}", r);
            replay_ok = false;
        }
        pages += r.count;
    }
    let copy = core.borrow().replay(SELF, ctx2).map_err(|e| format!("replay 2: {e:?}"))?;
    replay_ok &= copy == ranges;
    client.reattach_device(ctx2, dev).map_err(|e| format!("reattach 2: {e:?}"))?;
    nvme.dma().set_context(ctx2);
    let freed = client.free_context(ctx1, false);
    info!(
        "iommu: replayed {} range(s) / {pages} pages of context {} into {} (identical walk: {}); NVMe now in {:?}; context {} freed: {:?}",
        ranges.len(),
        ctx1.0,
        ctx2.0,
        copy == ranges,
        core.borrow().device_context(dev),
        ctx1.0,
        freed
    );
    let io2 = disktest::run(&mut nvme, 16 * 1024, 64);
    let faults = drain_faults(&core);
    info!("iommu: disk test after reattach: {:?}; {} fault(s)", io2.as_ref().map(|r| r.bytes_written), faults.len());
    t.check("reattach-replay", replay_ok && freed.is_ok() && io2.is_ok() && faults.is_empty() && !nvme.is_failed());
    if let Err(e) = nvme.shutdown() {
        warn!("nvme shutdown: {e:?}");
    }
    drop(nvme);

    // ---- 7/8. MSI-X while in context 2, and a failing command.
    msi_and_status_test(&core, &mut pci, bar.base, bar.size, ctx2, &reserved, sid, t);
    let mut c = core.borrow_mut();
    c.poll(Instant(time::now()));
    let hw = c.hw_mut();
    let (iqh, iqt, fs) = (hw.regs().read64(reg::IQH), hw.regs().read64(reg::IQT), hw.fault_status());
    info!(
        "iommu: invalidation queue: head {} tail {} (descriptor index), FSTS {fs:#x} (IQE {} ICE {} ITE {}), latched error {:?}",
        iqh >> 4,
        iqt >> 4,
        fs & fsts::IQE != 0,
        fs & fsts::ICE != 0,
        fs & fsts::ITE != 0,
        hw.error()
    );
    let qi_ok = iqh == iqt && fs & (fsts::IQE | fsts::ICE | fsts::ITE) == 0 && hw.error().is_none();
    t.check("queue", qi_ok);
    info!(
        "iommu: end: NVMe in {:?}; {} pool frames in use; page references held by contexts: {}",
        c.device_context(dev),
        c.mem().0.allocated(),
        c.platform().refs
    );
    Ok(())
}

fn drain_faults(core: &RefCell<Core>) -> Vec<iommu_core::vtd::FaultRecord> {
    let mut v = Vec::new();
    let mut c = core.borrow_mut();
    for _ in 0..64 {
        match c.next_fault() {
            Some((f, _, _)) => v.push(f),
            None => break,
        }
    }
    v
}

/// Polls queue 0 until one completion or `deadline`.
fn wait_one(nvme: &mut Drv<'_>, deadline: u64) -> Option<drivers::block::BlockCompletion<DmaBuf>> {
    loop {
        let now = time::now();
        if let Some(c) = nvme.poll(0, now) {
            return Some(c);
        }
        if now > deadline {
            return None;
        }
    }
}

const GUARD: u8 = 0xA5;

fn fault_test(core: &RefCell<Core>, nvme: &mut Drv<'_>, sid: u16, t: &mut Tally) {
    let _ = drain_faults(core);
    let Some(mut buf) = DmaBuf::zeroed(8192) else {
        t.check("fault", false);
        return;
    };
    buf.as_mut().fill(GUARD);
    nvme.dma().arm_faults(Faults { map_only: Some(1), ..Faults::default() });
    let bs = u64::from(nvme.info().block_size);
    let req = BlockRequest::Read { lba: 0, buffer: buf };
    if let Err((e, _)) = nvme.submit(0, req) {
        error!("fault test: submit refused: {e:?}");
        t.check("fault", false);
        return;
    }
    let hole = nvme.dma().last_hole();
    let done = wait_one(nvme, time::now() + 40_000_000_000);
    let outcome = match &done {
        Some(c) => format!("{:?}", c.result),
        None => String::from("no completion within 40 s"),
    };
    let faults = drain_faults(core);
    for f in &faults {
        info!(
            "iommu: VT-d fault record: SID {:#06x} addr {:#x} reason {:#x} {}",
            f.sid(),
            f.addr(),
            f.reason(),
            if f.is_write() { "write" } else { "read" }
        );
    }
    let Some((hole_dfn, _)) = hole else {
        t.check("fault", false);
        return;
    };
    let hit = faults.iter().any(|f| f.sid() == sid && f.addr() == hole_dfn << 12 && f.is_write());
    let (mapped_ok, guard_ok) = match done.and_then(|c| c.request.into_buffer()) {
        Some(buf) => {
            let b = buf.as_ref();
            (disktest::first_mismatch(&b[..4096], 0).is_none() && bs <= 4096, b[4096..].iter().all(|&x| x == GUARD))
        }
        None => (false, false),
    };
    info!(
        "iommu: fault test: 8 KiB read at LBA 0, IOVA page 2 ({:#x}) left unmapped: completion {outcome}; mapped page holds the disk data: {mapped_ok}; page behind the hole still all {GUARD:#x}: {guard_ok}; fault for SID {sid:#06x} at that IOVA: {hit}",
        hole_dfn << 12
    );
    t.check("fault", hit && guard_ok);
}

/// Finds the MSI-X capability, points table entry 0 at the local APIC and
/// enables MSI-X. Returns the table size.
fn msix_enable(pci: &mut PortPci, msg: (u64, u32)) -> Result<u16, String> {
    if pci.config_read16(0x06) & 0x10 == 0 {
        return Err(String::from("no capability list"));
    }
    let mut ptr = pci.config_read8(0x34) & 0xFC;
    let mut cap = None;
    for _ in 0..48 {
        if ptr < 0x40 {
            break;
        }
        if pci.config_read8(u16::from(ptr)) == 0x11 {
            cap = Some(u16::from(ptr));
            break;
        }
        ptr = pci.config_read8(u16::from(ptr) + 1) & 0xFC;
    }
    let cap = cap.ok_or("no MSI-X capability")?;
    let ctrl = pci.config_read16(cap + 2);
    let n = (ctrl & 0x7FF) + 1;
    let tbl = pci.config_read32(cap + 4);
    let bir = (tbl & 7) as u8;
    let bar = pci.bar(bir).ok_or("MSI-X BAR not decodable")?;
    let base = bar.base + u64::from(tbl & !7);
    if bar.kind == BarKind::Io || base + 16 * u64::from(n) > 1 << 32 {
        return Err(format!("MSI-X table at {base:#x} unusable"));
    }
    // Function mask while the entry is written, then enable unmasked.
    pci.config_write16(cap + 2, ctrl | 0x8000 | 0x4000);
    let mut t = mmio_identity(base, 16 * usize::from(n));
    t.write32(0, msg.0 as u32);
    t.write32(4, (msg.0 >> 32) as u32);
    t.write32(8, msg.1);
    t.write32(12, 0);
    pci.config_write16(cap + 2, (ctrl | 0x8000) & !0x4000);
    info!(
        "iommu: MSI-X: {n} vectors, table in BAR{bir} at {base:#x}; vector 0 -> address {:#x} data {:#x}",
        msg.0, msg.1
    );
    Ok(n)
}

#[allow(clippy::too_many_arguments)]
fn msi_and_status_test(
    core: &RefCell<Core>,
    pci: &mut PortPci,
    bar: u64,
    size: u64,
    ctx: CtxNo,
    reserved: &[(u64, u64)],
    sid: u16,
    t: &mut Tally,
) {
    // The MSI window is reserved in this context too.
    let r = Client::new(Local(core)).map_pages(ctx, Gfn(0x100), Dfn(MSI_WINDOW.0), 1, MapFlags::WRITE);
    let reserved_ok = matches!(r, Err(e) if e.error == pv_iommu_client::Error::AddressNotAvailable);
    info!("iommu: map_pages at IOVA {:#x} in context {} -> {:?}", MSI_WINDOW.0 << 12, ctx.0, r);
    let apic = match irq::init() {
        Ok(id) => id,
        Err(e) => {
            error!("interrupts: {e:?}");
            t.check("msi", false);
            return;
        }
    };
    if let Err(e) = msix_enable(pci, irq::msi_message(apic)) {
        error!("MSI-X: {e}");
        t.check("msi", false);
        return;
    }
    let iova_b = IovaAllocator::new(0x100_0000, 0x110_0000, reserved);
    let dma = IommuDma::new(Client::new(Local(core)), HalDma::new(Translation::Identity), ctx, iova_b);
    let before = irq::msi_count();
    // PRPs here: the fault-status step puts a PRP list at an unmapped IOVA.
    let cfg = Config {
        io_queues: 1,
        queue_depth: 16,
        io_timeout_ns: 10_000_000_000,
        abort_timeout_ns: 3_000_000_000,
        use_sgl: false,
        ..Config::default()
    };
    // Bring-up runs admin commands (identify, features, queue creation);
    // each completion on the admin queue raises MSI-X vector 0.
    let up = irq::with_interrupts(|| {
        let r = Nvme::init(mmio_identity(bar, size as usize), dma, HalClock, cfg);
        let deadline = time::now() + 1_000_000_000;
        while irq::msi_count() == before && time::now() < deadline {
            core::hint::spin_loop();
        }
        r
    });
    let got = irq::msi_count() - before;
    let mut nvme: Drv<'_> = match up {
        Ok(n) => n,
        Err(e) => {
            error!("nvme init with MSI-X: {e:?}");
            t.check("msi", false);
            return;
        }
    };
    let dev_ctx = core.borrow().device_context(PciSbdf { seg: 0, bus: (sid >> 8) as u8, devfn: sid as u8 });
    info!("iommu: {got} MSI(s) on vector {:#x} to APIC {apic} during bring-up, NVMe in {:?}", irq::MSI_VECTOR, dev_ctx);
    t.check("msi", reserved_ok && got > 0 && dev_ctx.is_some_and(|(_, c)| c == ctx));

    // A command whose PRP list page sits at an unmapped IOVA.
    let _ = drain_faults(core);
    let Some(buf) = DmaBuf::zeroed(3 * 4096) else {
        t.check("fault-status", false);
        return;
    };
    nvme.dma().arm_faults(Faults { unmapped_alloc: true, ..Faults::default() });
    let r = match nvme.submit(0, BlockRequest::Read { lba: 0, buffer: buf }) {
        Ok(_) => wait_one(&mut nvme, time::now() + 40_000_000_000),
        Err((e, _)) => {
            error!("submit: {e:?}");
            None
        }
    };
    let hole = nvme.dma().last_hole();
    let faults = drain_faults(core);
    for f in &faults {
        info!(
            "iommu: VT-d fault record: SID {:#06x} addr {:#x} reason {:#x} {}",
            f.sid(),
            f.addr(),
            f.reason(),
            if f.is_write() { "write" } else { "read" }
        );
    }
    let hit = hole.is_some_and(|(d, _)| faults.iter().any(|f| f.sid() == sid && f.addr() == d << 12 && !f.is_write()));
    let result = r.as_ref().map(|c| c.result);
    info!(
        "iommu: 12 KiB read with its PRP list at unmapped IOVA {:#x}: completion {:?}; read fault recorded: {hit}",
        hole.map_or(0, |h| h.0 << 12),
        result
    );
    t.check("fault-status", hit && matches!(result, Some(Err(_))));
    if let Err(e) = nvme.shutdown() {
        warn!("nvme shutdown: {e:?}");
    }
}
