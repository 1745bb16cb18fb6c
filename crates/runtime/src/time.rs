//! Monotonic time: Xen system time (PV) or a TSC estimate (PVH).

use core::sync::atomic::{AtomicU64, Ordering};
use xen::xen_abi::VcpuTimeInfo;

static SHARED_INFO_VA: AtomicU64 = AtomicU64::new(0);
/// TSC ticks per microsecond when running without Xen (PVH); 0 = unknown.
static TSC_PER_US: AtomicU64 = AtomicU64::new(0);

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no memory effects; it is permitted in PV ring 3
    // unless Xen traps it, in which case Xen emulates it.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Uses vCPU 0's time info in the shared info page mapped at `va`.
pub(crate) fn set_shared_info(va: u64) {
    SHARED_INFO_VA.store(va, Ordering::Release);
}

/// Sets the TSC rate for PVH boots.
pub(crate) fn set_tsc_rate(per_us: u64) {
    TSC_PER_US.store(per_us.max(1), Ordering::Release);
}

fn snapshot(va: u64) -> VcpuTimeInfo {
    let p = (va as usize + xen::xen_abi::shared_info::VCPU0_TIME) as *const VcpuTimeInfo;
    // Xen bumps `version` to odd while updating; retry a bounded number of
    // times until we see the same even version before and after.
    let mut t = VcpuTimeInfo::default();
    for _ in 0..1000 {
        // SAFETY: `va` is the mapped shared info page (set_shared_info); the
        // time info lies inside it; volatile because Xen updates it.
        let v1 = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*p).version)) };
        core::sync::atomic::fence(Ordering::Acquire);
        // SAFETY: as above.
        t = unsafe { core::ptr::read_volatile(p) };
        core::sync::atomic::fence(Ordering::Acquire);
        // SAFETY: as above.
        let v2 = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*p).version)) };
        if v1 == v2 && v1 & 1 == 0 {
            break;
        }
    }
    t
}

/// Nanoseconds of monotonic time (Xen system time on PV).
pub fn now() -> u64 {
    let va = SHARED_INFO_VA.load(Ordering::Acquire);
    if va != 0 {
        return snapshot(va).system_time_at(rdtsc());
    }
    let per_us = TSC_PER_US.load(Ordering::Acquire);
    if per_us == 0 {
        return 0;
    }
    rdtsc() / per_us * 1000
}
