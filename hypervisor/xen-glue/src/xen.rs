//! The C side of the glue (`xen/drivers/passthrough/vtd/ferrite-iommu.c` in
//! the project's Xen patch): the only `unsafe` of this crate, behind safe
//! wrappers.
//!
//! Every function here is implemented in C inside Xen; the names and types
//! must match that file.

use core::ffi::{c_char, c_void};

extern "C" {
    fn ferrite_xen_log(s: *const c_char, len: usize);
    fn ferrite_xen_alloc(size: usize, align: usize) -> *mut c_void;
    fn ferrite_xen_free(p: *mut c_void);
    fn ferrite_xen_page_alloc() -> u64;
    fn ferrite_xen_page_free(maddr: u64);
    fn ferrite_xen_page_va(maddr: u64) -> *mut u64;
    fn ferrite_xen_vtd_caps(cap: *mut u64, ecap: *mut u64) -> i32;
    fn ferrite_xen_now() -> u64;
    fn ferrite_xen_panic_exit() -> !;
    fn ferrite_xen_frame_of(domid: u16, gfn: u64, granter: *mut u16) -> i32;
    fn ferrite_xen_get_frame(mfn: u64, owner: u16, writable: i32) -> i32;
    fn ferrite_xen_put_frame(mfn: u64, writable: i32);
    fn ferrite_xen_device_owner(seg: u16, bus: u8, devfn: u8) -> i32;
    fn ferrite_xen_domain_devices(domid: u16, sbdf: *mut u32, max: u32) -> u32;
    fn ferrite_xen_copy_from_guest(domid: u16, addr: u64, buf: *mut u8, len: usize) -> i32;
    fn ferrite_xen_copy_to_guest(domid: u16, addr: u64, buf: *const u8, len: usize) -> i32;
    // xen/drivers/passthrough/vtd/iommu.c (the project's patch): devices in the core's contexts.
    fn ferrite_vtd_attach(bus: u8, devfn: u8, root: u64, domid: u16, levels: u32, ats: i32) -> i32;
    fn ferrite_vtd_detach(bus: u8, devfn: u8) -> i32;
    fn ferrite_vtd_domid_alloc() -> i32;
    fn ferrite_vtd_domid_free(domid: u16);
    fn ferrite_vtd_flush(domid: u16, addr: u64, order: i32) -> i32;
    fn ferrite_vtd_sync_cache(maddr: u64, len: u64);
    fn ferrite_vtd_read_entry(bus: u8, devfn: u8, lo: *mut u64, hi: *mut u64) -> i32;
    fn ferrite_vtd_device_ats(bus: u8, devfn: u8) -> i32;
    fn ferrite_vtd_devtlb_submit(sid: u16, ranges: *const u64, nr: u32, status: u64, data: u32) -> i32;
}

/// The context entry (low, high) the unit reads for 0000:`bus`:`devfn`
/// from Xen's table; `None` if the bus has no context table.
pub fn vtd_read_entry(bus: u8, devfn: u8) -> Option<(u64, u64)> {
    let (mut lo, mut hi) = (0u64, 0u64);
    // SAFETY: both pointers are valid for one u64 write each; Xen only reads its tables.
    (unsafe { ferrite_vtd_read_entry(bus, devfn, &mut lo, &mut hi) } == 1).then_some((lo, hi))
}

/// Points device 0000:`bus`:`devfn`'s context entry (in Xen's table) at the
/// second-level table at machine address `root` (`levels` deep), tagged
/// with the hardware domain id of Xen pseudo domain id `domid`, with
/// translation type "device-TLB enabled" if `ats` (the device's ATS must be
/// on in Xen: [`vtd_device_ats`]); Xen flushes what the unit cached for the
/// entry's previous id. 0 or a negative errno (-EOPNOTSUPP: a device or unit
/// Xen will not hand over, or no ATS; -ENODEV: unknown, unassigned or not
/// set up; -ENOMEM, -EBUSY, -EILSEQ).
pub fn vtd_attach(bus: u8, devfn: u8, root: u64, domid: u16, levels: u8, ats: bool) -> i64 {
    // SAFETY: plain values. Xen checks the device, the table's frame and the
    // id; the table stays valid while a device uses it (the core detaches
    // every device before it frees a table).
    i64::from(unsafe { ferrite_vtd_attach(bus, devfn, root, domid, u32::from(levels), ats as i32) })
}

/// True if device 0000:`bus`:`devfn` is behind the first unit with ATS that
/// Xen enabled (Xen runs with `ats`, the unit has device-TLB support).
pub fn vtd_device_ats(bus: u8, devfn: u8) -> bool {
    // SAFETY: plain values; Xen looks the device up under its PCI lock.
    unsafe { ferrite_vtd_device_ats(bus, devfn) == 1 }
}

/// Posts device-TLB invalidations for requester id `sid` to the unit's
/// queue: `ranges` holds (address, S bit) pairs (VT-d 6.5.2.5), followed by
/// a wait descriptor that writes `data` to the dword at machine address
/// `status` once the device answered them all. Returns at once: 0, or
/// -EBUSY (no room in the queue now), -ENODEV (no such ATS device), -EINVAL.
pub fn vtd_devtlb_submit(sid: u16, ranges: &[u64], status: u64, data: u32) -> i64 {
    let nr = u32::try_from(ranges.len() / 2).unwrap_or(0);
    // SAFETY: `ranges` is valid for 2·nr u64 reads and outlives the call (the
    // C side copies the values into the queue). `status` is a dword of a page
    // the caller keeps allocated for as long as the unit may write it; Xen
    // checks its alignment and that it is RAM.
    i64::from(unsafe { ferrite_vtd_devtlb_submit(sid, ranges.as_ptr(), nr, status, data) })
}

/// Gives device 0000:`bus`:`devfn` back its owner's mapping (Xen's own
/// path). False if Xen could not: it cleared the entry instead (the
/// device's DMA faults). Either way the device uses no core table after it.
pub fn vtd_detach(bus: u8, devfn: u8) -> bool {
    // SAFETY: plain values; Xen looks the device up under its PCI lock.
    unsafe { ferrite_vtd_detach(bus, devfn) == 0 }
}

/// A Xen pseudo domain id (from the unit's quarantine id map) for one core
/// context, or `None` when none is free (or Xen runs without quarantine).
pub fn vtd_domid_alloc() -> Option<u16> {
    // SAFETY: no arguments.
    let r = unsafe { ferrite_vtd_domid_alloc() };
    u16::try_from(r).ok()
}

/// Returns a pseudo domain id from [`vtd_domid_alloc`] (after an IOTLB flush of it).
pub fn vtd_domid_free(domid: u16) {
    // SAFETY: plain value; Xen ignores ids that are not pseudo ids.
    unsafe { ferrite_vtd_domid_free(domid) }
}

/// IOTLB invalidation of pseudo domain id `domid`: domain-selective, or the
/// 2^order pages at `addr`. Synchronous (Xen waits for the unit). False if
/// Xen reports a failure.
pub fn vtd_flush(domid: u16, page: Option<(u64, u8)>) -> bool {
    let (addr, order) = page.map_or((0, -1), |(a, o)| (a, i32::from(o)));
    // SAFETY: plain values.
    unsafe { ferrite_vtd_flush(domid, addr, order) == 0 }
}

/// Writes the CPU cache lines of `[maddr, maddr + len)` (inside one page)
/// back to memory, for a unit without page-walk coherency.
pub fn sync_cache(maddr: u64, len: u64) {
    // SAFETY: plain values; Xen checks the frame and the range, and a cache
    // write-back changes no memory contents.
    unsafe { ferrite_vtd_sync_cache(maddr, len) }
}

/// What a domain's frame is ([`frame_of`]); values of the C side's FERRITE_FRAME_*.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// Not the domain's, not granted to it, or not a PV domain.
    None,
    /// The domain's own page.
    Own,
    /// Granted to it by the given domain, read-only.
    GrantedRo(u16),
    /// Granted to it by the given domain, writable.
    GrantedRw(u16),
}

/// What frame `gfn` (= mfn: PV domains only) of `domid` is. No reference taken.
pub fn frame_of(domid: u16, gfn: u64) -> FrameKind {
    let mut granter = 0u16;
    // SAFETY: `granter` is valid for one u16 write; the C side looks the
    // domain up under RCU and only reads Xen's page and grant state.
    match unsafe { ferrite_xen_frame_of(domid, gfn, &mut granter) } {
        1 => FrameKind::Own,
        2 => FrameKind::GrantedRo(granter),
        3 => FrameKind::GrantedRw(granter),
        _ => FrameKind::None,
    }
}

/// Takes a reference on frame `mfn` owned by `owner` (and a writable-type
/// reference if `writable`); false when Xen refuses (not that owner's, or a
/// page that cannot be writable).
pub fn get_frame(mfn: u64, owner: u16, writable: bool) -> bool {
    // SAFETY: plain values; Xen checks the frame and the owner itself.
    unsafe { ferrite_xen_get_frame(mfn, owner, writable as i32) == 1 }
}

/// Drops a reference [`get_frame`] took.
///
/// # Safety
/// A reference with the same `writable` was taken by [`get_frame`] on
/// `mfn` and is dropped once.
pub unsafe fn put_frame(mfn: u64, writable: bool) {
    // SAFETY: per the contract, the reference exists and is ours.
    unsafe { ferrite_xen_put_frame(mfn, writable as i32) }
}

/// The domain a PCI function is assigned to (`None`: unknown device or none).
pub fn device_owner(seg: u16, bus: u8, devfn: u8) -> Option<u16> {
    // SAFETY: plain values; the C side walks Xen's PCI list under its lock.
    let r = unsafe { ferrite_xen_device_owner(seg, bus, devfn) };
    u16::try_from(r).ok()
}

/// The PCI functions (SBDF) assigned to `domid`, at most `out.len()`.
pub fn domain_devices(domid: u16, out: &mut [u32]) -> usize {
    let max = u32::try_from(out.len()).unwrap_or(u32::MAX);
    // SAFETY: `out` is valid for `max` u32 writes; the C side writes at most that many.
    let n = unsafe { ferrite_xen_domain_devices(domid, out.as_mut_ptr(), max) };
    (n as usize).min(out.len())
}

/// Copies from the calling domain's memory at guest address `addr`.
pub fn copy_from_guest(domid: u16, addr: u64, buf: &mut [u8]) -> bool {
    // SAFETY: `buf` is valid for `buf.len()` writes; Xen's guest-access
    // routines check `addr` and fail on a fault.
    unsafe { ferrite_xen_copy_from_guest(domid, addr, buf.as_mut_ptr(), buf.len()) == 0 }
}

/// Copies to the calling domain's memory at guest address `addr`.
pub fn copy_to_guest(domid: u16, addr: u64, buf: &[u8]) -> bool {
    // SAFETY: `buf` is valid for `buf.len()` reads; as in copy_from_guest.
    unsafe { ferrite_xen_copy_to_guest(domid, addr, buf.as_ptr(), buf.len()) == 0 }
}

/// Writes `s` to Xen's console (printk), as is: callers end lines with `\n`.
pub fn log(s: &str) {
    // SAFETY: the pointer and length describe `s`, which outlives the call;
    // the C side prints with "%.*s" and does not keep the pointer.
    unsafe { ferrite_xen_log(s.as_ptr().cast(), s.len()) }
}

/// Xen's system time (`NOW()`), in nanoseconds since boot.
pub fn now_ns() -> u64 {
    // SAFETY: reads Xen's clock; no arguments.
    unsafe { ferrite_xen_now() }
}

/// `_xmalloc(size, align)`: null when Xen is out of memory.
///
/// # Safety
/// `size` is not zero; `align` is a power of two (GlobalAlloc's layout rules).
pub unsafe fn alloc(size: usize, align: usize) -> *mut u8 {
    // SAFETY: the caller passes a valid layout; _xmalloc returns null or a
    // block of at least `size` bytes aligned to `align`.
    unsafe { ferrite_xen_alloc(size, align).cast() }
}

/// `xfree(p)`.
///
/// # Safety
/// `p` came from [`alloc`] and is not used afterwards.
pub unsafe fn free(p: *mut u8) {
    // SAFETY: per the contract above, `p` is a live _xmalloc block.
    unsafe { ferrite_xen_free(p.cast()) }
}

/// A zeroed 4 KiB xenheap page: its machine address, or `None`.
pub fn page_alloc() -> Option<u64> {
    // SAFETY: no arguments; returns 0 on failure.
    let maddr = unsafe { ferrite_xen_page_alloc() };
    (maddr != 0 && maddr.is_multiple_of(4096)).then_some(maddr)
}

/// Frees a page from [`page_alloc`].
///
/// # Safety
/// `maddr` came from [`page_alloc`], is freed once, and nothing (CPU or
/// device) uses it afterwards.
pub unsafe fn page_free(maddr: u64) {
    // SAFETY: per the contract above.
    unsafe { ferrite_xen_page_free(maddr) }
}

/// Reads the 8-byte word at `maddr` (8-aligned, inside a page from [`page_alloc`]).
///
/// # Safety
/// `maddr` lies in a live page from [`page_alloc`] and is 8-byte aligned.
pub unsafe fn read_word(maddr: u64) -> u64 {
    // SAFETY: the page is mapped in Xen's direct map (xenheap) for as long
    // as it is allocated; the caller checked ownership and alignment. A
    // volatile access because a VT-d unit may also read this memory.
    unsafe { ferrite_xen_page_va(maddr & !0xfff).add(((maddr & 0xfff) / 8) as usize).read_volatile() }
}

/// Writes the 8-byte word at `maddr`.
///
/// # Safety
/// As [`read_word`].
pub unsafe fn write_word(maddr: u64, v: u64) {
    // SAFETY: as in read_word.
    unsafe { ferrite_xen_page_va(maddr & !0xfff).add(((maddr & 0xfff) / 8) as usize).write_volatile(v) }
}

/// CAP_REG and ECAP_REG of the first VT-d unit Xen set up, or `None`
/// when Xen runs without VT-d.
pub fn vtd_caps() -> Option<(u64, u64)> {
    let (mut cap, mut ecap) = (0u64, 0u64);
    // SAFETY: both pointers are valid for one u64 write each.
    let rc = unsafe { ferrite_xen_vtd_caps(&mut cap, &mut ecap) };
    (rc == 0).then_some((cap, ecap))
}

/// Leaves the current hypercall with -EIO without returning through the
/// Rust frames: releases the glue's lock and resumes the calling vCPU
/// (Xen's context-switch tail, which resets this CPU's stack).
pub fn panic_exit() -> ! {
    // SAFETY: called only from the panic handler, inside do_iommu_op.
    unsafe { ferrite_xen_panic_exit() }
}
