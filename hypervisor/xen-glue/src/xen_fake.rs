//! Host stand-in for [`xen.rs`](xen.rs) in unit tests: pages from the host
//! allocator (a "machine address" is the page's host address), the lab's
//! VT-d unit capabilities, a clock at zero. Same signatures as the real one.

use std::alloc::{alloc_zeroed, dealloc, Layout};

const PAGE: Layout = match Layout::from_size_align(4096, 4096) {
    Ok(l) => l,
    Err(_) => panic!("page layout"),
};

pub fn log(s: &str) {
    eprint!("{s}");
}

pub fn now_ns() -> u64 {
    0
}

pub fn page_alloc() -> Option<u64> {
    // SAFETY: PAGE has a non-zero size.
    let p = unsafe { alloc_zeroed(PAGE) };
    (!p.is_null()).then_some(p as u64)
}

/// # Safety
/// `maddr` came from [`page_alloc`] and is freed once.
pub unsafe fn page_free(maddr: u64) {
    // SAFETY: per the contract, a live block of layout PAGE.
    unsafe { dealloc(maddr as *mut u8, PAGE) }
}

/// # Safety
/// `maddr` lies in a live page from [`page_alloc`] and is 8-byte aligned.
pub unsafe fn read_word(maddr: u64) -> u64 {
    // SAFETY: per the contract, inside a live page.
    unsafe { (maddr as *const u64).read_volatile() }
}

/// # Safety
/// As [`read_word`].
pub unsafe fn write_word(maddr: u64, v: u64) {
    // SAFETY: per the contract, inside a live page.
    unsafe { (maddr as *mut u64).write_volatile(v) }
}

/// QEMU 7.2's intel-iommu with caching-mode=on (read in the lab from Xen).
pub fn vtd_caps() -> Option<(u64, u64)> {
    Some((0xd2_008c_2226_0286, 0xf0_0f4a))
}
