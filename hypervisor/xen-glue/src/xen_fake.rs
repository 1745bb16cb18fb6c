//! Host stand-in for [`xen.rs`](xen.rs) in unit tests: pages from the host
//! allocator (a "machine address" is the page's host address), the lab's
//! VT-d unit capabilities, a clock at zero unless a test moves it. Same signatures as the real one.

use std::alloc::{alloc_zeroed, dealloc, Layout};

const PAGE: Layout = match Layout::from_size_align(4096, 4096) {
    Ok(l) => l,
    Err(_) => panic!("page layout"),
};

pub fn log(s: &str) {
    eprint!("{s}");
}

/// The fake clock (state::NOW, zero unless a test moves it).
pub fn now_ns() -> u64 {
    state::NOW.with(|n| n.get())
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

    /// One vtd_devtlb_submit: (sid, (address, S) pairs, status dword address, value).
    pub type DevTlbPost = (u16, Vec<(u64, bool)>, u64, u32);

    /// What the fake Xen VT-d driver saw.
    #[derive(Default, Debug)]
    pub struct Vtd {
        /// Context entries pointed at core tables: (bus, devfn) → (root, pseudo domain id).
        pub attached: BTreeMap<(u8, u8), (u64, u16)>,
        /// Pseudo domain ids handed out and not returned.
        pub ids: std::collections::BTreeSet<u16>,
        pub next_id: u16,
        /// IOTLB flushes: (pseudo domain id, page range or None for the domain).
        pub flushes: Vec<(u16, Option<(u64, u8)>)>,
        pub detaches: u32,
        /// attach answers this errno instead (0: succeed).
        pub refuse: i32,
        /// Devices (bus, devfn) whose ATS Xen enabled.
        pub ats: std::collections::BTreeSet<(u8, u8)>,
        /// Attaches with translation type "device-TLB enabled".
        pub ats_attaches: u32,
        /// Device-TLB invalidations posted: (sid, (address, S) pairs, status
        /// dword address, value); the unit writes the value when the test
        /// says so ([`complete_devtlb`](super::complete_devtlb)).
        pub devtlb: Vec<DevTlbPost>,
        /// Posts answered so far.
        pub devtlb_done: usize,
        /// vtd_devtlb_submit answers this errno instead (0: queue them).
        pub devtlb_refuse: i32,
    }

    thread_local! {
        pub static NOW: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
        pub static VTD: RefCell<Vtd> = RefCell::new(Vtd { next_id: 0x8000, ..Vtd::default() });
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

pub fn vtd_attach(bus: u8, devfn: u8, root: u64, domid: u16, levels: u8, ats: bool) -> i64 {
    state::VTD.with(|v| {
        let mut v = v.borrow_mut();
        if v.refuse != 0 {
            return -i64::from(v.refuse);
        }
        if ats {
            if !v.ats.contains(&(bus, devfn)) {
                return -95;
            }
            v.ats_attaches += 1;
        }
        assert_eq!(levels, 3, "QEMU's unit: 39-bit");
        assert!(v.ids.contains(&domid), "attach with an id that is not held");
        // The fake Xen knows devices 00:02.0 (dom0) and 00:04.0 (domain 5).
        if bus != 0 || (devfn != 0x10 && devfn != 0x20) {
            return -19;
        }
        v.attached.insert((bus, devfn), (root, domid));
        0
    })
}

pub fn vtd_detach(bus: u8, devfn: u8) -> bool {
    state::VTD.with(|v| {
        let mut v = v.borrow_mut();
        v.detaches += 1;
        assert!(v.attached.remove(&(bus, devfn)).is_some(), "detach of a device not attached");
        true
    })
}

pub fn vtd_domid_alloc() -> Option<u16> {
    state::VTD.with(|v| {
        let mut v = v.borrow_mut();
        let id = v.next_id;
        v.next_id += 1;
        v.ids.insert(id);
        Some(id)
    })
}

pub fn vtd_domid_free(domid: u16) {
    state::VTD.with(|v| {
        let mut v = v.borrow_mut();
        assert!(v.ids.remove(&domid), "free of an id not held");
        assert!(v.attached.values().all(|&(_, d)| d != domid), "id freed while a device uses it");
    })
}

pub fn vtd_flush(domid: u16, page: Option<(u64, u8)>) -> bool {
    state::VTD.with(|v| v.borrow_mut().flushes.push((domid, page)));
    true
}

pub fn sync_cache(_maddr: u64, _len: u64) {}

/// The fake Xen's entry: what attach wrote (present, the root, hardware did = !id).
pub fn vtd_read_entry(bus: u8, devfn: u8) -> Option<(u64, u64)> {
    state::VTD.with(|v| {
        let v = v.borrow();
        Some(v.attached.get(&(bus, devfn)).map_or((0, 0), |&(root, id)| (root | 1, u64::from(!id) << 8 | 1)))
    })
}

pub fn vtd_device_ats(bus: u8, devfn: u8) -> bool {
    state::VTD.with(|v| v.borrow().ats.contains(&(bus, devfn)))
}

pub fn vtd_devtlb_submit(sid: u16, ranges: &[u64], status: u64, data: u32) -> i64 {
    state::VTD.with(|v| {
        let mut v = v.borrow_mut();
        if v.devtlb_refuse != 0 {
            return -i64::from(v.devtlb_refuse);
        }
        assert!(!ranges.is_empty() && ranges.len().is_multiple_of(2), "pairs of (address, S)");
        assert!(status.is_multiple_of(4), "status dword aligned");
        let pairs = ranges.chunks(2).map(|p| (p[0], p[1] & 1 == 1)).collect();
        v.devtlb.push((sid, pairs, status, data));
        0
    })
}

/// The unit answers every device-TLB invalidation posted so far: it writes
/// each post's status value (in order, as the hardware queue does).
pub fn complete_devtlb() {
    state::VTD.with(|v| {
        let mut v = v.borrow_mut();
        let done = v.devtlb_done;
        for &(_, _, status, data) in &v.devtlb[done..] {
            // SAFETY: `status` is in the glue's status page (a live page from
            // page_alloc, never freed), 8-aligned: the low dword is written.
            unsafe {
                let old = read_word(status);
                write_word(status, (old & !0xffff_ffff) | u64::from(data));
            }
        }
        v.devtlb_done = v.devtlb.len();
    })
}
