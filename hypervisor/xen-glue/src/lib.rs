//! The PV-IOMMU core ([`iommu_core`]) linked into Xen 4.17 as a static
//! library: what `do_iommu_op` (hypercall 43, the C shell in the project's
//! Xen patch) calls, a global allocator over `_xmalloc` that fails by
//! returning null, and a panic handler that logs through printk and fails
//! the hypercall instead of stopping the host.
//!
//! First step (issue 13): the core runs over Xen memory and the real VT-d
//! unit's capabilities, but is detached from the hardware ([`unit`]). The
//! hardware domain gets answers from the core for `noop` and
//! `query_capabilities`; unknown sub-ops get the core's -EOPNOTSUPP; the
//! known sub-ops that would need the hardware (init, contexts, map, unmap,
//! remote_cmd) answer -EOPNOTSUPP from the glue; every other domain is not
//! enabled (-ENODEV, from the core), so guests keep their machine-frame
//! DMA path.
//!
//! Built only by `lab/xen-build.sh` (x86_64-unknown-none, -Z build-std,
//! Xen's code-generation flags); never part of a guest image.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

extern crate alloc;

mod mem;
mod unit;
mod xen;

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, Ordering};

use iommu_core::types::{DomId, Gfn, Instant, Mfn};
use iommu_core::{hypercall_return, Config, Iommu, Platform};
use pv_iommu_abi::{errno, subop};

use mem::XenMemory;
use unit::DetachedUnit;

/// Largest argument structure of any sub-op (the C shell's buffer size).
pub const MAX_ARG: usize = 64;

/// Lab-only sub-op that panics on purpose (feature `lab-panic-test`).
pub const LAB_PANIC_SUBOP: u32 = 0xfe7e_0001;

// ------------------------------------------------------------- allocator

struct XenAlloc;

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

#[global_allocator]
static ALLOC: XenAlloc = XenAlloc;

// ------------------------------------------------------------- panics

/// Set by the panic handler: the core's state may be half-updated, so every
/// later call answers -ENODEV (the interface is off) and nothing touches it.
static POISONED: AtomicBool = AtomicBool::new(false);
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

/// The core's view of Xen's domains. In this step no sub-op that needs
/// guest pages or guest copies reaches the core, so every answer is "no".
struct XenPlatform;

impl Platform for XenPlatform {
    fn get_page(&mut self, _dom: DomId, _gfn: Gfn, _writable: bool) -> Option<Mfn> {
        None
    }

    fn put_page(&mut self, _mfn: Mfn) {}

    fn domain_pages(&self, _dom: DomId) -> alloc::vec::Vec<(Gfn, Mfn)> {
        alloc::vec::Vec::new()
    }

    fn copy_from_guest(&mut self, _dom: DomId, _addr: u64, _buf: &mut [u8]) -> bool {
        false
    }

    fn copy_to_guest(&mut self, _dom: DomId, _addr: u64, _buf: &[u8]) -> bool {
        false
    }
}

// ------------------------------------------------------------- state

type Core = Iommu<XenMemory, DetachedUnit, XenPlatform>;

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
    let Some(unit) = DetachedUnit::new(cap, ecap) else {
        log!("VT-d CAP {cap:#x}: no 39/48-bit second-level tables: PV-IOMMU off");
        return State::Off;
    };
    let caps = unit.caps();
    let cfg = Config { hardware_domain: hwdom, ..Config::default() };
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
    log!(
        "Rust core up: VT-d CAP {:#x} ECAP {:#x} ({}-bit, CM {}, {} domain ids, QI {}); enabled for the hardware domain {} only; core tables ({} pages) detached from the unit, which Xen's VT-d code keeps driving",
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

/// Sub-ops that reach the core in this step.
fn core_answers(op: u32) -> bool {
    matches!(op, subop::NOOP | subop::QUERY_CAPABILITIES) || pv_iommu_abi::arg_size(op).is_err()
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
    let r = GLOBAL.with(|st| {
        if let State::Idle = st {
            *st = set_up(DomId(hwdom));
        }
        match st {
            State::Up(core, hw) => {
                if *hw != DomId(hwdom) {
                    // The hardware domain changed (late hwdom): not handled yet.
                    return -errno::ENODEV;
                }
                if caller == hwdom && !core_answers(op) {
                    // Known, but needs the hardware: not in this step.
                    return -errno::EOPNOTSUPP;
                }
                hypercall_return(core.handle(DomId(caller), op, arg, Instant(xen::now_ns())))
            }
            _ => -errno::ENODEV,
        }
    });
    r.unwrap_or(-errno::EBUSY)
}
