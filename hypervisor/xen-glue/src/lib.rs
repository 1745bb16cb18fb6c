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
            if caller == hwdom && !core_answers(op) {
                // Known, but needs the hardware: not in this step.
                return -errno::EOPNOTSUPP;
            }
            hypercall_return(core.handle(caller, op, arg, Instant(xen::now_ns())))
        }
        _ => -errno::ENODEV,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iommu_core::mem::{PageAlloc, PhysMem};
    use pv_iommu_abi::Capabilities;

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
        assert_eq!(u32::from_le_bytes(arg[8..12].try_into().unwrap()), 0x11);
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
        for op in subop::INIT..=subop::DETACH_PASID {
            assert_eq!(call(&mut st, 0, op).0, -errno::EOPNOTSUPP, "sub-op {op}");
        }
    }

    #[test]
    fn other_domains_are_not_enabled() {
        let mut st = State::Idle;
        for op in [subop::NOOP, subop::QUERY_CAPABILITIES, subop::INIT, subop::MAP_PAGES, 13] {
            let (rc, arg) = call(&mut st, 1, op);
            assert_eq!(rc, -errno::ENODEV, "sub-op {op}");
            assert!(arg.iter().all(|&b| b == 0), "nothing written back for a refused call");
        }
        // A different hardware domain than the one the core was set up for.
        let mut arg = [0u8; MAX_ARG];
        assert_eq!(dispatch(&mut st, DomId(7), DomId(7), subop::NOOP, &mut arg[..0]), -errno::ENODEV);
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
