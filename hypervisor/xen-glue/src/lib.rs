//! The PV-IOMMU core ([`iommu_core`]) linked into Xen 4.17 as a static
//! library: what `do_iommu_op` (hypercall 43, the C shell in the project's
//! Xen patch) calls, a global allocator over `_xmalloc` that fails by
//! returning null, and a panic handler that logs through printk and fails
//! the hypercall instead of stopping the host.
//!
//! Issue 13, third step: the core runs over Xen memory and shares the VT-d
//! unit with Xen's own VT-d driver ([`unit`]): a device reattached to one of
//! the core's non-default contexts has its context entry in Xen's table
//! pointed at that context's tables (built by the core), under a hardware
//! domain id Xen reserves for it, and goes back to Xen's own mapping for its
//! owner on reattach to context 0, on free with reattach-default, and on
//! domain teardown; IOTLB invalidations after unmaps become Xen's flushes.
//! The core applies its per-caller policy over Xen's facts
//! ([`XenPlatform`]): a domain's own
//! frames and the frames granted to it (Xen's per-grantee grant counts),
//! page references (`get_page`/`get_page_type`), PCI device ownership
//! (`pci_get_pdev`), and domain teardown (`domain_kill` calls
//! [`ferrite_iommu_domain_destroyed`]). Who reaches the core:
//!
//! * the hardware domain: noop, query_capabilities, init, alloc_context
//!   (paged; identity contexts are off: Xen does not list a PV domain's
//!   pages to us yet), free_context, map_pages, unmap_pages, and
//!   remote_cmd with those on behalf of a domain that has a PCI device
//!   (registered with its devices on first use, under that domain's rules),
//!   and reattach_device (also through remote_cmd) for a device the target
//!   domain owns: endpoints behind the first unit without RMRR or phantom
//!   functions (others: -EOPNOTSUPP from Xen's side); a device whose ATS
//!   Xen enabled (Xen's `ats` option) is registered with ATS, and its
//!   device-TLB invalidations are posted to the unit without waiting
//!   (`unit.rs`);
//! * a domU Xen assigned a PCI device to (a driver domain such as
//!   Ferrite): every sub-op but remote_cmd, for itself, under the core's
//!   domU rules (its own devices, its own and granted frames, its limits),
//!   registered with its devices on its first call;
//! * every other domain: -ENODEV.
//!
//! Built only by `lab/xen-build.sh` (x86_64-unknown-none, -Z build-std,
//! Xen's code-generation flags); never part of a guest image.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

extern crate alloc;

mod mem;
mod unit;
#[cfg(not(test))]
mod xen;
/// Host tests: the same services over the host's memory and clock.
#[cfg(test)]
#[path = "xen_fake.rs"]
mod xen;

#[cfg(not(test))]
use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use iommu_core::types::{DomId, Gfn, Instant, Mfn, PciSbdf};
use iommu_core::{hypercall_return, Config, Frame, Iommu, Limits, Platform, Source};
use pv_iommu_abi::{errno, subop};

use mem::XenMemory;
use unit::XenUnit;

/// Largest argument structure of any sub-op (the C shell's buffer size).
pub const MAX_ARG: usize = 64;

/// Lab-only sub-op that panics on purpose (feature `lab-panic-test`).
pub const LAB_PANIC_SUBOP: u32 = 0xfe7e_0001;

// ------------------------------------------------------------- allocator

#[cfg(not(test))]
struct XenAlloc;

#[cfg(not(test))]
// SAFETY: alloc returns null or a block of the layout's size and alignment
// (Xen's _xmalloc contract); dealloc frees only such blocks.
unsafe impl GlobalAlloc for XenAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() == 0 || layout.align() > 4096 {
            return core::ptr::null_mut();
        }
        // SAFETY: size is not zero, align a power of two (Layout).
        unsafe { xen::alloc(layout.size(), layout.align()) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: GlobalAlloc's contract: ptr came from alloc above.
        unsafe { xen::free(ptr) }
    }
}

#[cfg(not(test))]
#[global_allocator]
static ALLOC: XenAlloc = XenAlloc;

// ------------------------------------------------------------- panics

/// Set by the panic handler: the core's state may be half-updated, so every
/// later call answers -ENODEV (the interface is off) and nothing touches it.
static POISONED: AtomicBool = AtomicBool::new(false);
#[cfg(not(test))]
static PANICKING: AtomicBool = AtomicBool::new(false);

/// A fixed buffer for one log line (no allocation while panicking).
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for &b in s.as_bytes() {
            if self.len + 1 < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
        Ok(())
    }
}

impl Line {
    fn new() -> Self {
        Line { buf: [0; 256], len: 0 }
    }

    fn emit(&mut self) {
        if self.len < self.buf.len() {
            self.buf[self.len] = b'\n';
            self.len += 1;
        }
        match core::str::from_utf8(&self.buf[..self.len]) {
            Ok(s) => xen::log(s),
            Err(e) => xen::log(core::str::from_utf8(&self.buf[..e.valid_up_to()]).unwrap_or("?\n")),
        }
    }
}

/// Logs one line on Xen's console.
macro_rules! log {
    ($($arg:tt)*) => {{
        let mut l = Line::new();
        let _ = write!(l, "ferrite-iommu: ");
        let _ = write!(l, $($arg)*);
        l.emit();
    }};
}

#[cfg(not(test))]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    POISONED.store(true, Ordering::SeqCst);
    if !PANICKING.swap(true, Ordering::SeqCst) {
        let mut l = Line::new();
        let _ = write!(l, "ferrite-iommu: PANIC in the Rust core");
        if let Some(at) = info.location() {
            let _ = write!(l, " at {}:{}", at.file(), at.line());
        }
        let _ = write!(l, ": {}; hypercall fails with -EIO, interface disabled", info.message());
        l.emit();
    } else {
        xen::log("ferrite-iommu: nested panic\n");
    }
    xen::panic_exit()
}

// ------------------------------------------------------------- platform

/// The core's view of Xen's domains: facts and references from Xen (the
/// C side), the policy in the core. PV domains only (gfn = mfn).
struct XenPlatform;

impl Platform for XenPlatform {
    fn frame_of(&mut self, dom: DomId, gfn: Gfn) -> Option<Frame> {
        let source = match xen::frame_of(dom.0, gfn.0) {
            xen::FrameKind::None => return None,
            xen::FrameKind::Own => Source::Own,
            xen::FrameKind::GrantedRo(g) => Source::Granted { granter: DomId(g), writable: false },
            xen::FrameKind::GrantedRw(g) => Source::Granted { granter: DomId(g), writable: true },
        };
        Some(Frame { mfn: Mfn(gfn.0), source })
    }

    fn get_frame(&mut self, dom: DomId, frame: Frame, writable: bool) -> bool {
        // Still what it was when the core checked it, then referenced under
        // its owner. (A grant unmapped in between leaves the page referenced
        // but refused here; one unmapped after this keeps its page held
        // until the mapping goes.)
        if self.frame_of(dom, Gfn(frame.mfn.0)) != Some(frame) {
            return false;
        }
        let owner = match frame.source {
            Source::Own => dom,
            Source::Granted { granter, .. } => granter,
        };
        xen::get_frame(frame.mfn.0, owner.0, writable)
    }

    fn put_frame(&mut self, mfn: Mfn, writable: bool) {
        // SAFETY: the core drops each reference it took with get_frame
        // exactly once, with the same `writable` (the mapping's write right).
        unsafe { xen::put_frame(mfn.0, writable) }
    }

    fn domain_pages(&self, _dom: DomId, _from: Gfn, _max: usize) -> alloc::vec::Vec<(Gfn, Mfn)> {
        // Not listed yet: default contexts stay empty (they are Xen's on the
        // hardware) and identity contexts are off (Config::identity_contexts).
        alloc::vec::Vec::new()
    }

    fn device_owner(&self, dev: PciSbdf) -> Option<DomId> {
        xen::device_owner(dev.seg, dev.bus, dev.devfn).map(DomId)
    }

    fn copy_from_guest(&mut self, dom: DomId, addr: u64, buf: &mut [u8]) -> bool {
        xen::copy_from_guest(dom.0, addr, buf)
    }

    fn copy_to_guest(&mut self, dom: DomId, addr: u64, buf: &[u8]) -> bool {
        xen::copy_to_guest(dom.0, addr, buf)
    }
}

// ------------------------------------------------------------- state

type Core = Iommu<XenMemory, XenUnit, XenPlatform>;

enum State {
    /// Not set up yet (set up on the first call).
    Idle,
    /// Set up: the core and the hardware domain it was set up for.
    Up(alloc::boxed::Box<Core>, DomId),
    /// Xen runs without a usable VT-d unit, or setting up failed.
    Off,
}

/// The core's state, behind a try-lock.
struct Global {
    busy: AtomicBool,
    state: UnsafeCell<State>,
}

// SAFETY: `state` is only reached through `with`, which holds `busy`
// (acquire/release) for the whole access, so at most one CPU uses it.
unsafe impl Sync for Global {}

static GLOBAL: Global = Global { busy: AtomicBool::new(false), state: UnsafeCell::new(State::Idle) };

impl Global {
    /// Runs `f` on the state; `None` if another CPU holds it (the C shell
    /// serialises calls, so that is only after a panic left it held).
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> Option<R> {
        if self.busy.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            return None;
        }
        // SAFETY: `busy` was false and is now ours: no other reference to
        // `state` exists until it is released below.
        let r = f(unsafe { &mut *self.state.get() });
        self.busy.store(false, Ordering::Release);
        Some(r)
    }
}

fn set_up(hwdom: DomId) -> State {
    let Some((cap, ecap)) = xen::vtd_caps() else {
        log!("no VT-d unit in use by Xen: PV-IOMMU off (-ENODEV)");
        return State::Off;
    };
    let Some(unit) = XenUnit::new(cap, ecap) else {
        log!("VT-d CAP {cap:#x}: no 39/48-bit second-level tables: PV-IOMMU off");
        return State::Off;
    };
    let caps = unit.caps();
    let cfg = Config {
        hardware_domain: hwdom,
        hwdom_limits: Limits { contexts: 64, table_pages: 4096 },
        domu_limits: Limits { contexts: 16, table_pages: 1024 },
        identity_contexts: false,
        ..Config::default()
    };
    let mut core = match Iommu::new(cfg, XenMemory::default(), unit, XenPlatform) {
        Ok(c) => c,
        Err(e) => {
            log!("core set-up failed: {e:?}: PV-IOMMU off");
            return State::Off;
        }
    };
    if let Err(e) = core.add_domain(hwdom, true) {
        log!("hardware domain {} not added: {e:?}: PV-IOMMU off", hwdom.0);
        return State::Off;
    }
    sync_devices(&mut core, hwdom, Instant(xen::now_ns()));
    log!(
        "Rust core up: VT-d CAP {:#x} ECAP {:#x} ({}-bit, CM {}, {} domain ids, QI {}); hardware domain {} and domUs with PCI devices under the policy (remote_cmd for the hardware domain only); devices in non-default contexts use the core's tables ({} pages now), everything else Xen's VT-d code",
        caps.cap,
        caps.ecap,
        caps.addr_width().map_or(0, |a| a.bits()),
        caps.caching_mode() as u8,
        caps.domain_ids(),
        caps.queued_invalidation() as u8,
        hwdom.0,
        core.mem().pages(),
    );
    State::Up(alloc::boxed::Box::new(core), hwdom)
}

/// Polls a teardown may take to release everything (hardware domain's
/// limit: 4096 table pages of 512 references, 1024 released per poll).
const MAX_TEARDOWN_POLLS: usize = 1 << 16;

/// Largest number of PCI functions of one domain the glue registers.
const MAX_DEVICES: usize = 32;

/// Brings the core's record of `dom`'s PCI functions in line with Xen's:
/// each function Xen assigns to it is registered and assigned to it in the
/// core (taken from a previous owner's record first). Segment 0 only.
fn sync_devices(core: &mut Core, dom: DomId, now: Instant) -> usize {
    let mut buf = [0u32; MAX_DEVICES];
    let n = xen::domain_devices(dom.0, &mut buf);
    for &sbdf in &buf[..n] {
        let (seg, bus, devfn) = ((sbdf >> 16) as u16, (sbdf >> 8) as u8, sbdf as u8);
        if seg != 0 {
            continue;
        }
        let dev = PciSbdf::new(seg, bus, devfn >> 3, devfn & 7);
        // With ATS when Xen enabled it for the device (Xen's `ats` option):
        // the core then invalidates its device TLB (posted to the unit).
        // Already registered: Invalid, fine.
        let _ = core.add_device(dev, xen::vtd_device_ats(bus, devfn), &[]);
        match core.device_context(dev) {
            Some((o, _)) if o == dom => {}
            Some(_) => {
                let _ = core.deassign_device(dev, now);
                let _ = core.assign_device(dev, dom, now);
            }
            None => {
                let _ = core.assign_device(dev, dom, now);
            }
        }
    }
    n
}

/// Makes sure the core knows `dom` (the target of a remote_cmd): a domain
/// with at least one PCI function, added with its devices on first use. A
/// domain the core saw die stays unknown (its id is not reused soon).
fn ensure_domain(core: &mut Core, dom: DomId, now: Instant) -> Result<(), i64> {
    match core.domain_dying(dom) {
        Some(true) => Err(-errno::ENODEV),
        Some(false) => {
            sync_devices(core, dom, now);
            Ok(())
        }
        None => {
            let mut buf = [0u32; 1];
            if xen::domain_devices(dom.0, &mut buf) == 0 {
                return Err(-errno::ENODEV);
            }
            core.add_domain(dom, true).map_err(|_| -errno::ENOMEM)?;
            sync_devices(core, dom, now);
            log!("domain {} registered for remote_cmd with its PCI devices", dom.0);
            Ok(())
        }
    }
}

// ------------------------------------------------------------- C entry points

/// Bytes of the argument structure of `subop` (0 for sub-ops without one
/// and for unknown sub-ops, which the core refuses without reading it).
#[no_mangle]
pub extern "C" fn ferrite_iommu_arg_size(op: u32) -> usize {
    pv_iommu_abi::arg_size(op).unwrap_or(0).min(MAX_ARG)
}

/// `do_iommu_op` after the C shell copied the guest's argument (once) into
/// `arg[..len]`; the shell copies `arg[..len]` back when this returns.
/// Returns 0, a negative Xen errno, or -ERESTART (re-issue).
///
/// # Safety
/// `arg` points to `len` writable bytes (the shell's buffer), `len` is at
/// most [`MAX_ARG`], and nothing else uses them during the call.
#[no_mangle]
pub unsafe extern "C" fn ferrite_iommu_op(caller: u16, hwdom: u16, op: u32, arg: *mut u8, len: usize) -> i64 {
    if POISONED.load(Ordering::SeqCst) {
        return -errno::ENODEV;
    }
    if len > MAX_ARG || (len > 0 && arg.is_null()) {
        return -errno::EINVAL;
    }
    let arg: &mut [u8] = if len == 0 {
        &mut []
    } else {
        // SAFETY: the caller guarantees `len` writable bytes at `arg`, used
        // by nobody else for the duration of this call.
        unsafe { core::slice::from_raw_parts_mut(arg, len) }
    };
    #[cfg(feature = "lab-panic-test")]
    if op == LAB_PANIC_SUBOP && caller == hwdom {
        log!("lab panic test requested by domain {caller}");
        panic!("lab panic test (sub-op {op:#x})");
    }
    GLOBAL.with(|st| dispatch(st, DomId(caller), DomId(hwdom), op, arg)).unwrap_or(-errno::EBUSY)
}

/// One call on the state: sets the core up on the first call, then answers
/// `op` for `caller` (see the crate documentation for who gets what).
fn dispatch(st: &mut State, caller: DomId, hwdom: DomId, op: u32, arg: &mut [u8]) -> i64 {
    if let State::Idle = st {
        *st = set_up(hwdom);
    }
    match st {
        State::Up(core, hw) => {
            if *hw != hwdom {
                // The hardware domain changed (late hwdom): not handled yet.
                return -errno::ENODEV;
            }
            let now = Instant(xen::now_ns());
            if caller != hwdom {
                // A driver domain: only one Xen gave a PCI device to, under
                // its own rules (the core's policy); -ENODEV for the rest.
                if let Err(e) = ensure_domain(core, caller, now) {
                    return e;
                }
            }
            if op == subop::REMOTE_CMD {
                let Ok(rc) = pv_iommu_abi::RemoteCmd::parse(arg) else {
                    return -errno::EFAULT;
                };
                let target = rc.target();
                if target != hwdom {
                    if let Err(e) = ensure_domain(core, target, now) {
                        return e;
                    }
                }
            }
            hypercall_return(core.handle(caller, op, arg, now))
        }
        _ => -errno::ENODEV,
    }
}

/// Called from Xen's `domain_kill` (under the C shell's lock) once per
/// dying domain, before its memory is relinquished: the core tears the
/// domain's contexts down and drops every page reference its mappings held
/// (the unit flushes through Xen and completes the invalidation at once).
#[no_mangle]
pub extern "C" fn ferrite_iommu_domain_destroyed(domid: u16) {
    if POISONED.load(Ordering::SeqCst) {
        return;
    }
    GLOBAL.with(|st| {
        if let State::Up(core, _) = st {
            domain_destroyed(core, DomId(domid), Instant(xen::now_ns()));
        }
    });
}

/// VT-d faults Xen's fault handler saw, counted without a lock (the handler
/// may run while a hypercall holds the core): how many, and the last one
/// (device, address, reason and direction; its fields are stored one by
/// one, so a fault racing another may mix them: a diagnostic, not a log).
struct FaultLog {
    total: AtomicU64,
    /// segment << 16 | source id.
    sbdf: AtomicU64,
    addr: AtomicU64,
    /// reason | read << 8.
    kind: AtomicU64,
}

static FAULTS: FaultLog =
    FaultLog { total: AtomicU64::new(0), sbdf: AtomicU64::new(0), addr: AtomicU64::new(0), kind: AtomicU64::new(0) };

/// Called by Xen's VT-d fault handler for every fault record it reads
/// (`read` nonzero: a DMA read). Never blocks, never allocates, never logs.
#[no_mangle]
pub extern "C" fn ferrite_iommu_fault(seg: u16, source_id: u16, addr: u64, reason: u8, read: i32) {
    FAULTS.sbdf.store(u64::from(seg) << 16 | u64::from(source_id), Ordering::Relaxed);
    FAULTS.addr.store(addr, Ordering::Relaxed);
    FAULTS.kind.store(u64::from(reason) | u64::from(read != 0) << 8, Ordering::Relaxed);
    FAULTS.total.fetch_add(1, Ordering::Release);
}

/// The dump's fault line, written without allocating: `faults: total=N`
/// and, once there was one, `last=SSSS:BB:DD.F write|read addr=0x... reason=N`.
fn write_faults<W: Write>(w: &mut W) -> core::fmt::Result {
    let total = FAULTS.total.load(Ordering::Acquire);
    write!(w, "faults: total={total}")?;
    if total == 0 {
        return Ok(());
    }
    let sbdf = FAULTS.sbdf.load(Ordering::Relaxed);
    let kind = FAULTS.kind.load(Ordering::Relaxed);
    let sid = (sbdf & 0xffff) as u16;
    write!(
        w,
        " last={:04x}:{:02x}:{:02x}.{} {} addr={:#x} reason={}",
        sbdf >> 16,
        sid >> 8,
        (sid >> 3) & 0x1f,
        sid & 7,
        if kind >> 8 & 1 == 1 { "read" } else { "write" },
        FAULTS.addr.load(Ordering::Relaxed),
        kind & 0xff
    )
}

/// Debug key 'F' (C side, under the shell's lock): the core's domains,
/// contexts and counters on Xen's console, one `ferrite-iommu:` line each.
#[no_mangle]
pub extern "C" fn ferrite_iommu_dump() {
    if POISONED.load(Ordering::SeqCst) {
        log!("dump: interface disabled after a panic");
        return;
    }
    let done = GLOBAL.with(|st| match st {
        State::Up(core, _) => {
            let mut w = Lines::new();
            let _ = core.dump(&mut w);
            w.flush();
            let _ = core.hw_mut().dump(&mut w);
            w.flush();
            let mut l = Line::new();
            let _ = write!(l, "ferrite-iommu: ");
            let _ = write_faults(&mut l);
            l.emit();
            let (devs, ids) = core.hw_mut().attached();
            log!(
                "unit: devices in core contexts={} hardware domain ids={} failures={}",
                devs,
                ids,
                core.hw_mut().failures
            );
        }
        State::Idle => log!("dump: core not set up (no hypercall 43 yet)"),
        State::Off => log!("dump: PV-IOMMU off"),
    });
    if done.is_none() {
        log!("dump: busy");
    }
}

/// A `fmt::Write` that logs each line (prefixed, cut at the line buffer).
struct Lines(Line);

impl Lines {
    fn new() -> Self {
        let mut l = Line::new();
        let _ = write!(l, "ferrite-iommu: ");
        Lines(l)
    }

    fn flush(&mut self) {
        if self.0.len > "ferrite-iommu: ".len() {
            self.0.emit();
        }
        *self = Lines::new();
    }
}

impl Write for Lines {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let mut parts = s.split('\n');
        if let Some(first) = parts.next() {
            self.0.write_str(first)?;
        }
        for p in parts {
            self.flush();
            self.0.write_str(p)?;
        }
        Ok(())
    }
}

fn domain_destroyed(core: &mut Core, dom: DomId, now: Instant) {
    if core.domain_dying(dom) != Some(false) {
        return;
    }
    let before = core.counters(dom);
    if core.destroy_domain(dom, now).is_err() {
        return;
    }
    // Host side (domain_kill): drain every budgeted release now, so the
    // domain's memory is free when Xen relinquishes it. Bounded: each poll
    // releases Config::release_budget items of a finite set.
    for _ in 0..MAX_TEARDOWN_POLLS {
        core.poll(now);
        if !core.releases_pending() {
            break;
        }
    }
    let after = core.counters(dom);
    log!(
        "domain {} torn down: contexts {} -> {}, domain ids {} -> {}, table pages {} -> {}, page references {} -> {}",
        dom.0,
        before.contexts,
        after.contexts,
        before.domain_ids,
        after.domain_ids,
        before.table_pages,
        after.table_pages,
        before.held_refs,
        after.held_refs
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use iommu_core::mem::{PageAlloc, PhysMem};
    use iommu_core::types::{CtxNo, Dfn};
    use pv_iommu_abi::{Alloc, Capabilities, Init, MapPages, ReattachDevice, RemoteCmd, UnmapPages};

    fn call(st: &mut State, caller: u16, op: u32) -> (i64, [u8; MAX_ARG]) {
        let mut arg = [0u8; MAX_ARG];
        let len = ferrite_iommu_arg_size(op);
        let rc = dispatch(st, DomId(caller), DomId(0), op, &mut arg[..len]);
        (rc, arg)
    }

    #[test]
    fn hardware_domain_gets_capabilities_from_the_core() {
        let mut st = State::Idle;
        let (rc, arg) = call(&mut st, 0, subop::QUERY_CAPABILITIES);
        assert_eq!(rc, 0);
        // QEMU's intel-iommu (the lab's): SAGAW 39-bit only.
        assert_eq!(u64::from_le_bytes(arg[0..8].try_into().unwrap()), (1 << 39) - 1);
        assert_eq!(u32::from_le_bytes(arg[8..12].try_into().unwrap()), 0x01, "default identity; no identity contexts");
        assert_eq!(u32::from_le_bytes(arg[12..16].try_into().unwrap()), 0x1000);
        assert_eq!(u32::from_le_bytes(arg[16..20].try_into().unwrap()), 0);
        assert_eq!(u16::from_le_bytes(arg[20..22].try_into().unwrap()), 0);
        assert_eq!(ferrite_iommu_arg_size(subop::QUERY_CAPABILITIES), Capabilities::SIZE);
        assert_eq!(call(&mut st, 0, subop::NOOP).0, 0);
    }

    #[test]
    fn unknown_and_not_yet_implemented_sub_ops_are_refused() {
        let mut st = State::Idle;
        for op in [13, 0x100, u32::MAX] {
            assert_eq!(ferrite_iommu_arg_size(op), 0);
            assert_eq!(call(&mut st, 0, op).0, -errno::EOPNOTSUPP, "sub-op {op:#x}");
        }
        for op in [9, 10, 11, 12] {
            assert_eq!(call(&mut st, 0, op).0, -errno::EOPNOTSUPP, "sub-op {op}");
        }
        // Reattach reaches the core: 0000:00:00.0 is not dom0's in the fake Xen.
        assert_eq!(call(&mut st, 0, subop::REATTACH_DEVICE).0, -errno::ENOENT);
        init(&mut st, 0);
        let (rc, _) = op(&mut st, 0, subop::ALLOC_CONTEXT, &Alloc { alloc_flags: 1, ..Default::default() }.to_bytes());
        assert_eq!(rc, -errno::EOPNOTSUPP, "identity contexts are off");
    }

    #[test]
    fn domains_without_a_device_are_not_enabled() {
        let mut st = State::Idle;
        for op in [subop::NOOP, subop::QUERY_CAPABILITIES, subop::INIT, subop::MAP_PAGES, subop::REMOTE_CMD, 13] {
            let (rc, arg) = call(&mut st, 7, op);
            assert_eq!(rc, -errno::ENODEV, "sub-op {op}");
            assert!(arg.iter().all(|&b| b == 0), "nothing written back for a refused call");
        }
        // A different hardware domain than the one the core was set up for.
        let mut arg = [0u8; MAX_ARG];
        assert_eq!(dispatch(&mut st, DomId(7), DomId(7), subop::NOOP, &mut arg[..0]), -errno::ENODEV);
    }

    fn op(st: &mut State, caller: u16, op: u32, bytes: &[u8]) -> (i64, [u8; MAX_ARG]) {
        let mut arg = [0u8; MAX_ARG];
        arg[..bytes.len()].copy_from_slice(bytes);
        let len = ferrite_iommu_arg_size(op);
        (dispatch(st, DomId(caller), DomId(0), op, &mut arg[..len]), arg)
    }

    fn init(st: &mut State, caller: u16) {
        assert_eq!(op(st, caller, subop::INIT, &Init { max_ctx_no: 4, arena_order: 6 }.to_bytes()).0, 0);
    }

    /// remote_cmd from the hardware domain, the inner argument at a fake guest address.
    fn remote(st: &mut State, target: u16, inner_op: u32, inner: &mut [u8]) -> i64 {
        const AT: u64 = 0x7000_0000;
        xen::state::GUEST_MEM.with(|m| m.borrow_mut().insert(AT, inner.to_vec()));
        let rc = RemoteCmd { domid: target, subop: inner_op as u16, pad0: 0, arg: AT }.to_bytes();
        let (r, _) = op(st, 0, subop::REMOTE_CMD, &rc);
        xen::state::GUEST_MEM.with(|m| inner.copy_from_slice(&m.borrow_mut().remove(&AT).unwrap()[..inner.len()]));
        r
    }

    fn map(ctx: u16, gfn: u64, flags: u32) -> [u8; MapPages::SIZE] {
        MapPages::new(CtxNo(ctx), Gfn(gfn), Dfn(gfn), flags, 4096, 1).to_bytes()
    }

    #[test]
    fn hardware_domain_maps_its_own_frames_only() {
        let mut st = State::Idle;
        init(&mut st, 0);
        let (rc, arg) = op(&mut st, 0, subop::ALLOC_CONTEXT, &Alloc::default().to_bytes());
        assert_eq!(rc, 0, "dom0 owns 00:02.0");
        let ctx = Alloc::parse(&arg).unwrap().ctx_no;
        assert_eq!(op(&mut st, 0, subop::MAP_PAGES, &map(ctx, 0x1001, 3)).0, 0);
        assert_eq!(xen::state::refs(), 1);
        assert_eq!(op(&mut st, 0, subop::MAP_PAGES, &map(ctx, 0x5001, 1)).0, -errno::EPERM, "domain 5's frame");
        assert_eq!(op(&mut st, 0, subop::MAP_PAGES, &map(ctx, 0x9000, 1)).0, -errno::EPERM, "nobody's");
        assert_eq!(xen::state::refs(), 1);
        let un = UnmapPages::new(CtxNo(ctx), Dfn(0x1001), 4096, 1).to_bytes();
        assert_eq!(op(&mut st, 0, subop::UNMAP_PAGES, &un).0, 0);
        assert_eq!(xen::state::refs(), 0, "released once the (software) invalidation completed");
    }

    #[test]
    fn remote_cmd_applies_the_target_domains_rules_and_teardown_releases() {
        let mut st = State::Idle;
        assert_eq!(call(&mut st, 0, subop::NOOP).0, 0);
        let mut i = Init { max_ctx_no: 64, arena_order: 12 }.to_bytes();
        assert_eq!(remote(&mut st, 5, subop::INIT, &mut i), 0, "domain 5 has a PCI device: registered");
        let mut a = Alloc::default().to_bytes();
        assert_eq!(remote(&mut st, 5, subop::ALLOC_CONTEXT, &mut a), 0);
        let ctx = Alloc::from_bytes(&a).ctx_no;
        assert_eq!(remote(&mut st, 5, subop::MAP_PAGES, &mut map(ctx, 0x5002, 3)), 0, "its own");
        assert_eq!(
            remote(&mut st, 5, subop::MAP_PAGES, &mut map(ctx, 0x1010, 3)),
            -errno::EACCES,
            "read-only grant, written"
        );
        assert_eq!(remote(&mut st, 5, subop::MAP_PAGES, &mut map(ctx, 0x1010, 1)), 0, "... read");
        assert_eq!(remote(&mut st, 5, subop::MAP_PAGES, &mut map(ctx, 0x1011, 3)), 0, "writable grant");
        assert_eq!(remote(&mut st, 5, subop::MAP_PAGES, &mut map(ctx, 0x1012, 1)), -errno::EPERM, "not granted");
        assert_eq!(xen::state::refs(), 3);
        let mut r = ReattachDevice::default().to_bytes();
        assert_eq!(remote(&mut st, 5, subop::REATTACH_DEVICE, &mut r), -errno::ENOENT, "00:00.0 is not domain 5's");
        let mut r = reattach_bytes(ctx, 0x20);
        assert_eq!(remote(&mut st, 5, subop::REATTACH_DEVICE, &mut r), 0, "its own 00:04.0");
        assert!(vtd(|v| v.attached.contains_key(&(0, 0x20))));
        assert_eq!(remote(&mut st, 9, subop::NOOP, &mut []), -errno::ENODEV, "no such domain / no device");
        let State::Up(core, _) = &st else { panic!("core not up") };
        assert_eq!(core.counters(DomId(5)).held_refs, 3);
        ferrite_iommu_domain_destroyed_on(&mut st, 5);
        assert_eq!(xen::state::refs(), 0, "teardown dropped every reference");
        vtd(|v| {
            assert!(v.attached.is_empty(), "teardown gave the device back to Xen's mapping");
            assert!(v.ids.is_empty(), "and the pseudo domain id back to Xen");
        });
        let State::Up(core, _) = &st else { panic!("core not up") };
        assert_eq!(core.counters(DomId(5)), iommu_core::Counters::default());
        assert_eq!(remote(&mut st, 5, subop::NOOP, &mut []), -errno::ENODEV, "a dead domain is not re-registered");
    }

    fn vtd<R>(f: impl FnOnce(&xen::state::Vtd) -> R) -> R {
        xen::state::VTD.with(|v| f(&v.borrow()))
    }

    fn reattach_bytes(ctx: u16, devfn: u8) -> [u8; ReattachDevice::SIZE] {
        let dev = PciSbdf::new(0, 0, devfn >> 3, devfn & 7);
        ReattachDevice { ctx_no: ctx, dev: dev.into(), pad0: 0, pasid: 0 }.to_bytes()
    }

    fn dump(st: &mut State) -> String {
        let State::Up(core, _) = st else { panic!("core not up") };
        let mut out = String::new();
        core.dump(&mut out).unwrap();
        out
    }

    #[test]
    fn faults_are_counted_and_the_last_one_described() {
        let mut line = String::new();
        write_faults(&mut line).unwrap();
        let before: u64 = line.trim_start_matches("faults: total=").split(' ').next().unwrap().parse().unwrap();
        ferrite_iommu_fault(0, 0x0028, 0x103000, 5, 0);
        ferrite_iommu_fault(0, 0x0028, 0x200000, 5, 0);
        let mut line = String::new();
        write_faults(&mut line).unwrap();
        assert_eq!(line, format!("faults: total={} last=0000:00:05.0 write addr=0x200000 reason=5", before + 2));
        ferrite_iommu_fault(1, 0x0311, 0xfee0_0000, 0x22, 1);
        let mut line = String::new();
        write_faults(&mut line).unwrap();
        assert!(line.ends_with("last=0001:03:02.1 read addr=0xfee00000 reason=34"), "{line}");
    }

    #[test]
    fn reattach_points_xens_context_entry_at_the_core_tables_and_back() {
        let mut st = State::Idle;
        init(&mut st, 0);
        let (rc, arg) = op(&mut st, 0, subop::ALLOC_CONTEXT, &Alloc::default().to_bytes());
        assert_eq!(rc, 0);
        let ctx = Alloc::parse(&arg).unwrap().ctx_no;
        let m = MapPages::new(CtxNo(ctx), Gfn(0x1001), Dfn(0x100), 1, 4096, 3).to_bytes();
        assert_eq!(op(&mut st, 0, subop::MAP_PAGES, &m).0, 0);
        assert_eq!(op(&mut st, 0, subop::REATTACH_DEVICE, &reattach_bytes(ctx, 0x10)).0, 0);
        let (root, id) = vtd(|v| v.attached.get(&(0, 0x10)).copied()).expect("00:02.0 attached");
        assert_eq!(root % 4096, 0);
        assert!(id > 0x7fff, "a Xen pseudo domain id");
        let d = dump(&mut st);
        assert!(d.contains(&format!("d0 ctx{ctx} Paged did=3 mapped=3 devs=[0000:00:02.0]")), "{d}");
        let State::Up(core, _) = &mut st else { panic!("core not up") };
        let mut u = String::new();
        core.hw_mut().dump(&mut u).unwrap();
        assert!(u.contains(&format!("unit: 0000:00:02.0 core did 3 (Xen id {id:#x}) root {root:#x}")), "{u}");
        assert!(u.contains(": the core's table"), "{u}");
        // A second context gets its own hardware id; moving between them keeps each.
        let (_, arg) = op(&mut st, 0, subop::ALLOC_CONTEXT, &Alloc::default().to_bytes());
        let ctx2 = Alloc::parse(&arg).unwrap().ctx_no;
        assert_eq!(op(&mut st, 0, subop::REATTACH_DEVICE, &reattach_bytes(ctx2, 0x10)).0, 0);
        let (root2, id2) = vtd(|v| v.attached[&(0, 0x10)]);
        assert_ne!((root2, id2), (root, id));
        assert_eq!(op(&mut st, 0, subop::REATTACH_DEVICE, &reattach_bytes(ctx, 0x10)).0, 0);
        assert_eq!(vtd(|v| v.attached[&(0, 0x10)]), (root, id));
        // Unmaps reach the hardware as IOTLB flushes of the context's hardware id.
        xen::state::VTD.with(|v| v.borrow_mut().flushes.clear());
        let un = UnmapPages::new(CtxNo(ctx), Dfn(0x101), 4096, 1).to_bytes();
        assert_eq!(op(&mut st, 0, subop::UNMAP_PAGES, &un).0, 0);
        assert!(vtd(|v| v.flushes.iter().any(|f| f.0 == id)), "{:?}", vtd(|v| v.flushes.clone()));
        // Back to the default context: Xen's own mapping; then both contexts go.
        assert_eq!(op(&mut st, 0, subop::REATTACH_DEVICE, &reattach_bytes(0, 0x10)).0, 0);
        assert!(vtd(|v| v.attached.is_empty()));
        for c in [ctx, ctx2] {
            let f = pv_iommu_abi::Free { ctx_no: c, pad0: 0, free_flags: 0 }.to_bytes();
            assert_eq!(op(&mut st, 0, subop::FREE_CONTEXT, &f).0, 0);
        }
        vtd(|v| assert!(v.ids.is_empty(), "pseudo ids returned: {:?}", v.ids));
        assert_eq!(xen::state::refs(), 0);
    }

    fn unit_line(st: &mut State) -> String {
        let State::Up(core, _) = st else { panic!("core not up") };
        let mut u = String::new();
        core.hw_mut().dump(&mut u).unwrap();
        u.lines().find(|l| l.starts_with("unit: device-TLB")).unwrap_or_default().to_string()
    }

    fn held(st: &mut State) -> Vec<iommu_core::types::Mfn> {
        let State::Up(core, _) = st else { panic!("core not up") };
        core.held_guest_pages()
    }

    fn noop(st: &mut State) {
        assert_eq!(op(st, 0, subop::NOOP, &[]).0, 0);
    }

    /// dom0's 00:02.0 with ATS in a context of its own, one page mapped at
    /// dfn 0x100; the move's whole-device invalidation answered.
    fn ats_context(st: &mut State) -> u16 {
        xen::state::VTD.with(|v| v.borrow_mut().ats.insert((0, 0x10)));
        init(st, 0);
        let (_, arg) = op(st, 0, subop::ALLOC_CONTEXT, &Alloc::default().to_bytes());
        let ctx = Alloc::parse(&arg).unwrap().ctx_no;
        let m = MapPages::new(CtxNo(ctx), Gfn(0x1001), Dfn(0x100), 1, 4096, 3).to_bytes();
        assert_eq!(op(st, 0, subop::MAP_PAGES, &m).0, 0);
        assert_eq!(op(st, 0, subop::REATTACH_DEVICE, &reattach_bytes(ctx, 0x10)).0, 0);
        assert_eq!(vtd(|v| v.ats_attaches), 1, "attached with translation type device-TLB");
        assert_eq!(vtd(|v| v.devtlb.len()), 1, "the move invalidates the whole device TLB");
        assert_eq!(vtd(|v| v.devtlb[0].1.clone()), [(0x7fff_ffff_ffff_f000, true)]);
        xen::complete_devtlb();
        noop(st);
        assert!(unit_line(st).contains("posted=1 completed=1 in-flight=0"), "{}", unit_line(st));
        ctx
    }

    #[test]
    fn an_unmapped_page_stays_held_until_the_device_tlb_answers() {
        let mut st = State::Idle;
        let ctx = ats_context(&mut st);
        let refs = xen::state::refs();
        let un = UnmapPages::new(CtxNo(ctx), Dfn(0x100), 4096, 1).to_bytes();
        assert_eq!(op(&mut st, 0, subop::UNMAP_PAGES, &un).0, 0, "the unmap returns without an answer");
        let post = vtd(|v| v.devtlb.last().cloned()).unwrap();
        assert_eq!((post.0, post.1.clone()), (0x10, vec![(0x100000, false)]), "one page of 00:02.0");
        assert!(unit_line(&mut st).contains("posted=2 completed=1 in-flight=1"), "{}", unit_line(&mut st));
        // Not answered: the page stays referenced, whatever the calls.
        for _ in 0..3 {
            noop(&mut st);
            assert_eq!(xen::state::refs(), refs, "the page is not given back");
            assert_eq!(held(&mut st), [iommu_core::types::Mfn(0x1001)]);
        }
        let d = dump(&mut st);
        assert!(d.contains("held-for-invalidation=1 "), "{d}");
        // The unit writes the status dword; the next call sees it.
        xen::complete_devtlb();
        assert_eq!(xen::state::refs(), refs, "released on a call, not by the unit");
        noop(&mut st);
        assert_eq!(xen::state::refs(), refs - 1);
        assert!(held(&mut st).is_empty());
        assert!(unit_line(&mut st).contains("posted=2 completed=2 in-flight=0"), "{}", unit_line(&mut st));
        // Back to Xen's mapping (one more whole-device invalidation), freed.
        assert_eq!(op(&mut st, 0, subop::REATTACH_DEVICE, &reattach_bytes(0, 0x10)).0, 0);
        xen::complete_devtlb();
        noop(&mut st);
        let f = pv_iommu_abi::Free { ctx_no: ctx, pad0: 0, free_flags: 0 }.to_bytes();
        assert_eq!(op(&mut st, 0, subop::FREE_CONTEXT, &f).0, 0);
        noop(&mut st);
        assert_eq!(xen::state::refs(), 0);
        vtd(|v| assert!(v.ids.is_empty() && v.attached.is_empty()));
        assert!(dump(&mut st).contains("held-for-invalidation=0 to-release=0 leaked-behind-broken=0"));
    }

    #[test]
    fn a_full_unit_queue_puts_the_post_off_to_a_later_call() {
        let mut st = State::Idle;
        let ctx = ats_context(&mut st);
        let refs = xen::state::refs();
        xen::state::VTD.with(|v| v.borrow_mut().devtlb_refuse = errno::EBUSY as i32);
        let un = UnmapPages::new(CtxNo(ctx), Dfn(0x100), 4096, 1).to_bytes();
        assert_eq!(op(&mut st, 0, subop::UNMAP_PAGES, &un).0, 0);
        assert_eq!(vtd(|v| v.devtlb.len()), 1, "nothing posted");
        assert!(unit_line(&mut st).contains("busy=1"), "{}", unit_line(&mut st));
        xen::complete_devtlb();
        noop(&mut st);
        assert_eq!(xen::state::refs(), refs, "held while not even posted");
        xen::state::VTD.with(|v| v.borrow_mut().devtlb_refuse = 0);
        noop(&mut st);
        assert_eq!(vtd(|v| v.devtlb.len()), 2, "posted on a later call");
        assert_eq!(xen::state::refs(), refs);
        xen::complete_devtlb();
        noop(&mut st);
        assert_eq!(xen::state::refs(), refs - 1);
    }

    #[test]
    fn a_device_that_never_answers_is_broken_by_the_core_time_out() {
        let mut st = State::Idle;
        let ctx = ats_context(&mut st);
        let refs = xen::state::refs();
        let un = UnmapPages::new(CtxNo(ctx), Dfn(0x100), 4096, 1).to_bytes();
        assert_eq!(op(&mut st, 0, subop::UNMAP_PAGES, &un).0, 0);
        xen::state::NOW.with(|n| n.set(59_000_000_000));
        noop(&mut st);
        assert!(vtd(|v| v.attached.contains_key(&(0, 0x10))), "still attached before the time-out");
        xen::state::NOW.with(|n| n.set(61_000_000_000));
        noop(&mut st);
        let State::Up(core, _) = &st else { panic!("core not up") };
        assert!(core.device_broken(PciSbdf::new(0, 0, 2, 0)), "declared broken");
        vtd(|v| assert!(!v.attached.contains_key(&(0, 0x10)), "its context entry left the core's tables"));
        let u = unit_line(&mut st);
        assert!(u.contains("completed=1 in-flight=0") && u.contains("aborted=1"), "{u}");
        let d = dump(&mut st);
        assert!(d.contains("leaked-behind-broken=1"), "{d}");
        assert_eq!(xen::state::refs(), refs, "what its invalidation covered is held for good");
        // A late answer changes nothing.
        xen::complete_devtlb();
        noop(&mut st);
        assert_eq!(xen::state::refs(), refs);
    }

    #[test]
    fn xen_refusing_a_device_changes_nothing() {
        let mut st = State::Idle;
        init(&mut st, 0);
        let (_, arg) = op(&mut st, 0, subop::ALLOC_CONTEXT, &Alloc::default().to_bytes());
        let ctx = Alloc::parse(&arg).unwrap().ctx_no;
        xen::state::VTD.with(|v| v.borrow_mut().refuse = errno::EOPNOTSUPP as i32);
        assert_eq!(op(&mut st, 0, subop::REATTACH_DEVICE, &reattach_bytes(ctx, 0x10)).0, -errno::EOPNOTSUPP);
        vtd(|v| assert!(v.attached.is_empty() && v.ids.is_empty(), "{v:?}"));
        let State::Up(core, _) = &st else { panic!("core not up") };
        assert_eq!(core.device_context(PciSbdf::new(0, 0, 2, 0)), Some((DomId(0), CtxNo(0))));
        xen::state::VTD.with(|v| v.borrow_mut().refuse = 0);
        assert_eq!(op(&mut st, 0, subop::REATTACH_DEVICE, &reattach_bytes(ctx, 0x10)).0, 0);
        // Free with reattach-default: detached before the tables go.
        let f = pv_iommu_abi::Free { ctx_no: ctx, pad0: 0, free_flags: 1 }.to_bytes();
        assert_eq!(op(&mut st, 0, subop::FREE_CONTEXT, &f).0, 0);
        vtd(|v| assert!(v.attached.is_empty() && v.ids.is_empty(), "{v:?}"));
    }

    /// A driver domain (5, owner of 00:04.0) calling for itself: its own
    /// device and frames, grants with their rights; nobody else's device or
    /// frames, no remote_cmd, no context past its limit; teardown releases.
    #[test]
    fn a_driver_domain_uses_the_interface_for_itself_under_its_rules() {
        let mut st = State::Idle;
        assert_eq!(call(&mut st, 0, subop::NOOP).0, 0);
        let (rc, arg) = call(&mut st, 5, subop::QUERY_CAPABILITIES);
        assert_eq!(rc, 0, "domain 5 has a PCI device: registered on its first call");
        assert_eq!(u32::from_le_bytes(arg[12..16].try_into().unwrap()), 0x1000);
        // Asks for more than a domU may have: clamped to its limits.
        assert_eq!(op(&mut st, 5, subop::INIT, &Init { max_ctx_no: 64, arena_order: 12 }.to_bytes()).0, 0);
        let (rc, arg) = op(&mut st, 5, subop::ALLOC_CONTEXT, &Alloc::default().to_bytes());
        assert_eq!(rc, 0);
        let ctx = Alloc::parse(&arg).unwrap().ctx_no;
        assert_eq!(op(&mut st, 5, subop::MAP_PAGES, &map(ctx, 0x5003, 3)).0, 0, "its own frame");
        assert_eq!(op(&mut st, 5, subop::MAP_PAGES, &map(ctx, 0x1002, 1)).0, -errno::EPERM, "dom0's, not granted");
        assert_eq!(op(&mut st, 5, subop::MAP_PAGES, &map(ctx, 0x1010, 3)).0, -errno::EACCES, "read-only grant");
        assert_eq!(op(&mut st, 5, subop::MAP_PAGES, &map(ctx, 0x1011, 3)).0, 0, "writable grant");
        assert_eq!(xen::state::refs(), 2);
        assert_eq!(
            op(&mut st, 5, subop::REATTACH_DEVICE, &reattach_bytes(ctx, 0x10)).0,
            -errno::ENOENT,
            "dom0's device"
        );
        assert!(vtd(|v| v.attached.is_empty()), "refused: nothing attached");
        let rc = RemoteCmd { domid: 0, subop: subop::NOOP as u16, pad0: 0, arg: 0 }.to_bytes();
        assert_eq!(op(&mut st, 5, subop::REMOTE_CMD, &rc).0, -errno::EPERM, "remote_cmd is the hardware domain's");
        assert_eq!(op(&mut st, 5, subop::REATTACH_DEVICE, &reattach_bytes(ctx, 0x20)).0, 0, "its own 00:04.0");
        assert!(vtd(|v| v.attached.contains_key(&(0, 0x20))));
        // Limits: 16 contexts for a domU (set_up), the 17th refused.
        let mut more = 1;
        loop {
            let (rc, _) = op(&mut st, 5, subop::ALLOC_CONTEXT, &Alloc::default().to_bytes());
            if rc != 0 {
                assert_eq!(rc, -errno::ENOSPC);
                break;
            }
            more += 1;
            assert!(more <= 16, "past the domU limit");
        }
        assert_eq!(more, 16, "refused at the 17th");
        ferrite_iommu_domain_destroyed_on(&mut st, 5);
        assert_eq!(xen::state::refs(), 0);
        vtd(|v| assert!(v.attached.is_empty() && v.ids.is_empty(), "{v:?}"));
        let State::Up(core, _) = &st else { panic!("core not up") };
        assert_eq!(core.counters(DomId(5)), iommu_core::Counters::default());
        assert_eq!(call(&mut st, 5, subop::NOOP).0, -errno::ENODEV, "a dead domain is not re-registered");
    }

    #[test]
    fn dump_lines_split_at_newlines() {
        let mut w = Lines::new();
        write!(w, "a=1\nb=2").unwrap();
        assert_eq!(&w.0.buf[..w.0.len], b"ferrite-iommu: b=2");
        w.flush();
        assert_eq!(w.0.len, "ferrite-iommu: ".len());
    }

    fn ferrite_iommu_domain_destroyed_on(st: &mut State, dom: u16) {
        if let State::Up(core, _) = st {
            domain_destroyed(core, DomId(dom), Instant(1));
        }
    }

    #[test]
    fn argument_sizes_fit_the_shell_buffer() {
        for op in 0..=20 {
            assert!(ferrite_iommu_arg_size(op) <= MAX_ARG);
        }
        // SAFETY: a null pointer with a length the shell never passes: refused before use.
        assert_eq!(unsafe { ferrite_iommu_op(0, 0, 1, core::ptr::null_mut(), 24) }, -errno::EINVAL);
        let mut big = [0u8; MAX_ARG + 1];
        // SAFETY: `big` has MAX_ARG + 1 writable bytes; refused as too long.
        assert_eq!(unsafe { ferrite_iommu_op(0, 0, 1, big.as_mut_ptr(), big.len()) }, -errno::EINVAL);
    }

    #[test]
    fn memory_touches_only_its_own_pages() {
        let mut m = XenMemory::default();
        let f = m.alloc_zeroed().unwrap();
        let pa = f.0 << 12;
        m.write_u64(pa + 8, 0x1234);
        assert_eq!(m.read_u64(pa + 8), Some(0x1234));
        assert_eq!(m.read_u64(pa + 4), None, "misaligned");
        assert_eq!(m.read_u64(pa + 4096), None, "next page is not ours");
        m.write_u64(pa + 4096, 1);
        assert_eq!(m.stray_writes, 1);
        m.free_page(f);
        assert_eq!(m.read_u64(pa + 8), None, "freed");
        m.free_page(f);
        assert_eq!(m.pages(), 0);
    }
}
