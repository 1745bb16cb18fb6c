//! Raw Xen hypercalls through the hypercall page (x86-64 PV).
//!
//! Calling convention (Xen `arch-x86/xen-x86_64.h`): `call hypercall_page +
//! 32 * nr`; arguments in rdi, rsi, rdx, r10, r8; result in rax. Xen may
//! clobber rcx and r11 (the `syscall` path) and the argument registers.

use xen::error::XenError;

/// Hypercall numbers used by Ferrite (`xen/include/public/xen.h`).
pub mod nr {
    pub const MMU_UPDATE: usize = 1;
    pub const MEMORY_OP: usize = 12;
    pub const UPDATE_VA_MAPPING: usize = 14;
    pub const XEN_VERSION: usize = 17;
    pub const CONSOLE_IO: usize = 18;
    pub const GRANT_TABLE_OP: usize = 20;
    pub const VCPU_OP: usize = 24;
    pub const MMUEXT_OP: usize = 26;
    pub const SCHED_OP: usize = 29;
    pub const EVENT_CHANNEL_OP: usize = 32;
    pub const PHYSDEV_OP: usize = 33;
    /// PV-IOMMU (`__HYPERVISOR_iommu_op`, from the PV-IOMMU series).
    pub const IOMMU_OP: usize = 43;
}

/// `iommu_op(subop, arg)`: the PV-IOMMU hypercall, `arg` being the
/// sub-op's argument structure as bytes (in and out). Returns Xen's result.
/// A hypervisor without the interface answers -ENOSYS.
pub fn iommu_op(subop: u32, arg: &mut [u8]) -> i64 {
    let ptr = if arg.is_empty() { 0 } else { arg.as_mut_ptr() as u64 };
    // SAFETY: `arg` is a live buffer of the size of the sub-op's structure
    // (the client sizes it from the ABI); Xen reads and writes only it.
    unsafe { hypercall2(nr::IOMMU_OP, subop as u64, ptr) }
}

extern "C" {
    static hypercall_page: u8;
}

#[inline]
fn entry(nr: usize) -> usize {
    let base = core::ptr::addr_of!(hypercall_page) as usize;
    base + nr * 32
}

/// Issues hypercall `nr` with up to five arguments.
///
/// # Safety
/// The arguments must be valid for the hypercall: pointers must reference
/// memory of the documented layout that stays valid for the call, and the
/// operation must not break the memory the rest of the program relies on
/// (e.g. unmapping pages still in use).
pub unsafe fn hypercall5(nr: usize, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> i64 {
    let ret: i64;
    // SAFETY: the caller upholds the argument contract; the stub at
    // `entry(nr)` was written by Xen (HYPERCALL_PAGE note) and follows the
    // convention above; clobbers are declared.
    unsafe {
        core::arch::asm!(
            "call {f}",
            f = in(reg) entry(nr),
            inlateout("rdi") a1 => _,
            inlateout("rsi") a2 => _,
            inlateout("rdx") a3 => _,
            inlateout("r10") a4 => _,
            inlateout("r8") a5 => _,
            lateout("rax") ret,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
    ret
}

/// Hypercall with three arguments. See [`hypercall5`].
///
/// # Safety
/// As for [`hypercall5`].
pub unsafe fn hypercall3(nr: usize, a1: u64, a2: u64, a3: u64) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { hypercall5(nr, a1, a2, a3, 0, 0) }
}

/// Hypercall with two arguments. See [`hypercall5`].
///
/// # Safety
/// As for [`hypercall5`].
pub unsafe fn hypercall2(nr: usize, a1: u64, a2: u64) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { hypercall5(nr, a1, a2, 0, 0, 0) }
}

/// Runs a hypercall whose result is 0 or a negative errno.
///
/// # Safety
/// As for [`hypercall5`].
pub unsafe fn checked(nr: usize, a1: u64, a2: u64, a3: u64) -> Result<u64, XenError> {
    // SAFETY: forwarded contract.
    XenError::check(unsafe { hypercall3(nr, a1, a2, a3) })
}

/// `sched_op` sub-commands (`xen/include/public/sched.h`).
pub mod sched {
    pub const YIELD: u64 = 0;
    pub const SHUTDOWN: u64 = 2;
    pub const POLL: u64 = 3;
    pub const POWEROFF: u32 = 0;
    pub const CRASH: u32 = 3;
}

/// `struct sched_poll` (x86-64): ports handle @0, nr_ports @8, timeout @16.
#[repr(C)]
pub struct SchedPoll {
    pub ports: u64,
    pub nr_ports: u32,
    pub _pad: u32,
    /// Absolute system time in ns; 0 means no timeout.
    pub timeout: u64,
}
const _: () = assert!(core::mem::size_of::<SchedPoll>() == 24);

/// Blocks until one of `ports` is pending or system time reaches `deadline`.
pub fn sched_poll(ports: &[u32], deadline: u64) -> Result<(), XenError> {
    let mut arg =
        SchedPoll { ports: ports.as_ptr() as u64, nr_ports: ports.len() as u32, _pad: 0, timeout: deadline.max(1) };
    // SAFETY: `arg` and `ports` live across the call; SCHEDOP_poll only reads them.
    unsafe { checked(nr::SCHED_OP, sched::POLL, &mut arg as *mut _ as u64, 0) }.map(|_| ())
}

/// Asks Xen to end this domain with `reason`. Returns only on failure.
pub fn sched_shutdown(reason: u32) -> XenError {
    let arg: u32 = reason;
    // SAFETY: a 4-byte `struct sched_shutdown` on our stack.
    match unsafe { checked(nr::SCHED_OP, sched::SHUTDOWN, &arg as *const u32 as u64, 0) } {
        Ok(_) => XenError::Other(0),
        Err(e) => e,
    }
}
