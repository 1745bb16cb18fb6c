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

/// What the fake Xen knows: domain 0 owns frames 0x1000..0x1100 and device
/// 00:02.0; domain 5 owns frames 0x5000..0x5100 and device 00:04.0, and has
/// frame 0x1010 granted read-only and 0x1011 writable by domain 0.
/// References are counted per frame.
pub mod state {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    thread_local! {
        pub static REFS: RefCell<BTreeMap<u64, (u32, u32)>> = const { RefCell::new(BTreeMap::new()) };
        /// The calling domain's memory reachable at guest addresses (remote_cmd's inner argument).
        pub static GUEST_MEM: RefCell<BTreeMap<u64, Vec<u8>>> = const { RefCell::new(BTreeMap::new()) };
    }

    pub fn refs() -> u32 {
        REFS.with(|r| r.borrow().values().map(|v| v.0).sum())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    None,
    Own,
    GrantedRo(u16),
    GrantedRw(u16),
}

fn owner(mfn: u64) -> Option<u16> {
    match mfn {
        0x1000..0x1100 => Some(0),
        0x5000..0x5100 => Some(5),
        _ => None,
    }
}

pub fn frame_of(domid: u16, gfn: u64) -> FrameKind {
    match (domid, gfn) {
        (d, m) if owner(m) == Some(d) => FrameKind::Own,
        (5, 0x1010) => FrameKind::GrantedRo(0),
        (5, 0x1011) => FrameKind::GrantedRw(0),
        _ => FrameKind::None,
    }
}

pub fn get_frame(mfn: u64, own: u16, writable: bool) -> bool {
    if owner(mfn) != Some(own) {
        return false;
    }
    state::REFS.with(|r| {
        let mut r = r.borrow_mut();
        let e = r.entry(mfn).or_default();
        e.0 += 1;
        e.1 += writable as u32;
    });
    true
}

/// # Safety
/// As the real one (no unsafety here).
pub unsafe fn put_frame(mfn: u64, writable: bool) {
    state::REFS.with(|r| {
        let mut r = r.borrow_mut();
        let e = r.get_mut(&mfn).expect("put without get");
        e.0 -= 1;
        e.1 -= writable as u32;
        if e.0 == 0 {
            r.remove(&mfn);
        }
    });
}

pub fn device_owner(seg: u16, bus: u8, devfn: u8) -> Option<u16> {
    match (seg, bus, devfn) {
        (0, 0, 0x10) => Some(0),
        (0, 0, 0x20) => Some(5),
        _ => None,
    }
}

pub fn domain_devices(domid: u16, out: &mut [u32]) -> usize {
    let dev = match domid {
        0 => 0x10,
        5 => 0x20,
        _ => return 0,
    };
    match out.first_mut() {
        Some(o) => {
            *o = dev;
            1
        }
        None => 0,
    }
}

pub fn copy_from_guest(_domid: u16, addr: u64, buf: &mut [u8]) -> bool {
    state::GUEST_MEM.with(|m| match m.borrow().get(&addr) {
        Some(v) if v.len() >= buf.len() => {
            buf.copy_from_slice(&v[..buf.len()]);
            true
        }
        _ => false,
    })
}

pub fn copy_to_guest(_domid: u16, addr: u64, buf: &[u8]) -> bool {
    state::GUEST_MEM.with(|m| match m.borrow_mut().get_mut(&addr) {
        Some(v) if v.len() >= buf.len() => {
            v[..buf.len()].copy_from_slice(buf);
            true
        }
        _ => false,
    })
}
