//! Grant tables: granting our pages, mapping and copying others' grants.
//!
//! [`GrantOps`] is what the backends use; the hal implements it with
//! `grant_table_op` (v1 table, batched map/unmap/copy) and [`fake`] with an
//! in-memory hub for host tests. [`RefAllocator`] hands out our own grant
//! references (pure bookkeeping, shared by both).
#![forbid(unsafe_code)]

use crate::error::XenError;
use crate::types::{DomId, GrantRef, Pfn};
use alloc::vec::Vec;

/// Page size of grants.
pub const PAGE_SIZE: usize = 4096;

/// Why a grant operation failed (GNTST_* values of `grant_table.h`, plus
/// our own bookkeeping errors).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantError {
    GeneralError,
    BadDomain,
    BadGntref,
    BadHandle,
    BadVirtAddr,
    BadDevAddr,
    NoDeviceSpace,
    PermissionDenied,
    BadPage,
    BadCopyArg,
    AddressTooBig,
    Eagain,
    /// A status Xen returned that we do not know.
    Unknown(i16),
    /// The hypercall itself failed.
    Xen(XenError),
    /// Our table has no free reference left.
    NoFreeRefs,
    /// The grant is still mapped by its grantee.
    InUse,
    /// A reference we never handed out (or already ended).
    NotGranted,
}

impl GrantError {
    /// Maps a negative GNTST_* status.
    pub fn from_status(s: i16) -> Self {
        match s {
            -1 => Self::GeneralError,
            -2 => Self::BadDomain,
            -3 => Self::BadGntref,
            -4 => Self::BadHandle,
            -5 => Self::BadVirtAddr,
            -6 => Self::BadDevAddr,
            -7 => Self::NoDeviceSpace,
            -8 => Self::PermissionDenied,
            -9 => Self::BadPage,
            -10 => Self::BadCopyArg,
            -11 => Self::AddressTooBig,
            -12 => Self::Eagain,
            other => Self::Unknown(other),
        }
    }
    /// `Ok` for GNTST_okay (0), the typed error otherwise.
    pub fn check(status: i16) -> Result<(), GrantError> {
        if status == 0 {
            Ok(())
        } else {
            Err(Self::from_status(status))
        }
    }
}

/// A foreign grant to map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapRequest {
    pub dom: DomId,
    pub gref: GrantRef,
    pub readonly: bool,
}

/// A foreign grant mapped into our address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub dom: DomId,
    pub gref: GrantRef,
    pub readonly: bool,
    /// Handle Xen returned, needed to unmap.
    pub handle: u32,
    /// Where the page is mapped (virtual address in the unikernel).
    pub addr: u64,
    /// The page's address for our devices' DMA, when it was mapped with
    /// device access (`GNTMAP_device_map`: `dev_bus_addr`, the machine
    /// address under stock Xen for a PV domain, which Xen also maps 1:1 in
    /// the IOMMU); `None` for a CPU-only mapping. Valid until unmapped.
    pub bus: Option<u64>,
}

/// One end of a grant copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyEnd {
    /// A page another domain granted us.
    Grant { dom: DomId, gref: GrantRef, offset: u16 },
    /// One of our own pages.
    Local { pfn: Pfn, offset: u16 },
}

/// A `GNTTABOP_copy` element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyOp {
    pub src: CopyEnd,
    pub dst: CopyEnd,
    pub len: u16,
}

/// Our own memory that `GNTTABOP_copy` can name as the local end of a copy
/// ([`CopyEnd::Local`], `DOMID_SELF`), so that data moves between it and a
/// foreign grant without mapping the grant.
///
/// Xen's copies bypass the CPU's view of the buffer, as a device's DMA
/// does: after writing the buffer with the CPU, call
/// [`sync_for_copy`](Self::sync_for_copy) before copies read it; after
/// copies wrote it, call [`sync_for_cpu`](Self::sync_for_cpu) before the CPU
/// reads it. On Xen both are compiler barriers; the host fake
/// ([`fake::FrameBuf`]) keeps the two views apart, so a missing call fails
/// a test.
pub trait LocalFrames {
    /// The frame holding byte `off` of the buffer and that byte's offset in
    /// the frame (`< PAGE_SIZE`). `None` past the end, or when the memory
    /// has no frame a copy can name (then the caller maps the grant instead).
    fn local_frame(&self, off: usize) -> Option<(Pfn, u16)>;
    /// CPU writes become visible to copies reading the frames.
    fn sync_for_copy(&mut self) {}
    /// Copies into the frames become visible to the CPU.
    fn sync_for_cpu(&mut self) {}
}

/// A plain heap vector names no frame: grants are mapped for it.
impl LocalFrames for Vec<u8> {
    fn local_frame(&self, _off: usize) -> Option<(Pfn, u16)> {
        None
    }
}

/// Grant-table operations of one domain.
pub trait GrantOps {
    /// Access to a mapped foreign page.
    type Page: crate::shmem::SharedMem;
    /// Lets `to` map or copy our page `pfn`.
    fn grant_access(&mut self, to: DomId, pfn: Pfn, readonly: bool) -> Result<GrantRef, GrantError>;
    /// Revokes a grant; fails with `InUse` while the grantee has it mapped.
    fn end_access(&mut self, r: GrantRef) -> Result<(), GrantError>;
    /// Maps a batch of foreign grants (one hypercall); one result each.
    fn map_batch(&mut self, reqs: &[MapRequest]) -> Vec<Result<Mapping, GrantError>>;
    /// Unmaps a batch of mappings (one hypercall); one result each.
    fn unmap_batch(&mut self, maps: &[Mapping]) -> Vec<Result<(), GrantError>>;
    /// Performs a batch of grant copies (one hypercall); one result each.
    fn copy_batch(&mut self, ops: &[CopyOp]) -> Vec<Result<(), GrantError>>;
    /// The contents of a mapped page.
    fn page(&self, m: &Mapping) -> Self::Page;
}

/// Free-list of our grant references `[first, first + count)`.
pub struct RefAllocator {
    free: Vec<u32>,
    in_use: Vec<bool>,
    first: u32,
}

impl RefAllocator {
    /// References `first..first+count` (first ≥ NR_RESERVED_ENTRIES in practice).
    pub fn new(first: u32, count: u32) -> Self {
        Self { free: (first..first + count).rev().collect(), in_use: alloc::vec![false; count as usize], first }
    }
    /// Takes a free reference.
    pub fn alloc(&mut self) -> Result<GrantRef, GrantError> {
        let r = self.free.pop().ok_or(GrantError::NoFreeRefs)?;
        self.in_use[(r - self.first) as usize] = true;
        Ok(GrantRef(r))
    }
    /// Returns a reference; refuses ones not handed out.
    pub fn free(&mut self, r: GrantRef) -> Result<(), GrantError> {
        let i = r.0.checked_sub(self.first).map(|i| i as usize).filter(|&i| i < self.in_use.len());
        match i {
            Some(i) if self.in_use[i] => {
                self.in_use[i] = false;
                self.free.push(r.0);
                Ok(())
            }
            _ => Err(GrantError::NotGranted),
        }
    }
    /// Number of references still free.
    pub fn available(&self) -> usize {
        self.free.len()
    }
}

/// Host fake: domains with pages and grant tables, as Xen would keep them.
pub mod fake {
    use super::*;
    use crate::shmem::{SharedMem, VecShared};
    use alloc::collections::BTreeMap;
    use alloc::rc::Rc;
    use alloc::sync::Arc;
    use core::cell::RefCell;

    struct Entry {
        to: DomId,
        pfn: Pfn,
        readonly: bool,
        maps: u32,
    }

    /// Xen's view of every fake domain.
    #[derive(Default)]
    pub struct Hub {
        pages: BTreeMap<(DomId, Pfn), Arc<VecShared>>,
        grants: BTreeMap<(DomId, GrantRef), Entry>,
        handles: BTreeMap<u32, (DomId, DomId, GrantRef)>,
        next_handle: u32,
        next_addr: u64,
        /// Map hypercalls issued (one per batch).
        pub map_calls: u32,
        /// Copy hypercalls issued (one per batch) and copy elements in them.
        pub copy_calls: u32,
        pub copy_ops: u64,
        /// Next frame number for a [`FrameBuf`].
        next_buf_pfn: u64,
        /// Mappings get a bus address (see [`FakeGrants::set_device_map`]).
        device_map: bool,
    }

    /// Bus addresses of device-mapped grants start here (bus page =
    /// `DEVICE_BUS_PFN` + handle), far from any fake DMA memory.
    pub const DEVICE_BUS_PFN: u64 = 1 << 44;

    /// Frames of [`FrameBuf`]s start here, far above the pages tests grant.
    const FRAME_BUF_PFN: u64 = 1 << 40;
    /// What a [`FrameBuf`]'s frames hold before the CPU's bytes are synced
    /// to them.
    pub const FRAME_POISON: u8 = 0xdb;

    /// One domain's grant interface.
    pub struct FakeGrants {
        hub: Rc<RefCell<Hub>>,
        me: DomId,
        refs: RefAllocator,
    }

    impl FakeGrants {
        /// Domains sharing one hub, each with `refs` grant references.
        pub fn domains(ids: &[DomId], refs: u32) -> Vec<FakeGrants> {
            let hub = Rc::new(RefCell::new(Hub {
                next_addr: 0x4000_0000,
                next_handle: 1,
                next_buf_pfn: FRAME_BUF_PFN,
                ..Default::default()
            }));
            ids.iter()
                .map(|&me| FakeGrants {
                    hub: hub.clone(),
                    me,
                    refs: RefAllocator::new(crate::xen_abi::gnttabop::NR_RESERVED_ENTRIES, refs),
                })
                .collect()
        }
        /// Maps from now on carry device access (a bus address), as the
        /// hal's with `GNTMAP_device_map`.
        pub fn set_device_map(&mut self, on: bool) {
            self.hub.borrow_mut().device_map = on;
        }
        /// What a device sees at bus addresses of device-mapped grants
        /// (for a fake device's DMA).
        pub fn device_view(&self) -> DeviceView {
            DeviceView { hub: self.hub.clone() }
        }
        /// One of our own pages (created zeroed on first use).
        pub fn local_page(&self, pfn: Pfn) -> Arc<VecShared> {
            self.hub
                .borrow_mut()
                .pages
                .entry((self.me, pfn))
                .or_insert_with(|| Arc::new(VecShared::new(PAGE_SIZE)))
                .clone()
        }
        /// Map hypercalls so far (all domains).
        pub fn map_calls(&self) -> u32 {
            self.hub.borrow().map_calls
        }
        /// Copy hypercalls so far (all domains).
        pub fn copy_calls(&self) -> u32 {
            self.hub.borrow().copy_calls
        }
        /// Copy elements so far (all domains).
        pub fn copy_ops(&self) -> u64 {
            self.hub.borrow().copy_ops
        }
        /// Allocates [`FrameBuf`]s among this domain's frames.
        pub fn frame_alloc(&self) -> FrameAlloc {
            FrameAlloc { hub: self.hub.clone(), me: self.me }
        }
        fn resolve(&self, end: &CopyEnd, write: bool) -> Result<(Arc<VecShared>, usize), GrantError> {
            match *end {
                // A freed FrameBuf's frames are gone, not fresh pages.
                CopyEnd::Local { pfn, .. }
                    if pfn.0 >= FRAME_BUF_PFN && !self.hub.borrow().pages.contains_key(&(self.me, pfn)) =>
                {
                    Err(GrantError::BadPage)
                }
                CopyEnd::Local { pfn, offset } => Ok((self.local_page(pfn), offset as usize)),
                CopyEnd::Grant { dom, gref, offset } => {
                    let hub = self.hub.borrow();
                    let e = hub.grants.get(&(dom, gref)).ok_or(GrantError::BadGntref)?;
                    if e.to != self.me {
                        return Err(GrantError::PermissionDenied);
                    }
                    if write && e.readonly {
                        return Err(GrantError::PermissionDenied);
                    }
                    let page = hub.pages.get(&(dom, e.pfn)).ok_or(GrantError::BadPage)?.clone();
                    Ok((page, offset as usize))
                }
            }
        }
    }

    impl GrantOps for FakeGrants {
        type Page = Arc<VecShared>;

        // Fakes are never inlined: `./run.sh bench cpu` excludes their cost by call chain.
        #[inline(never)]
        fn grant_access(&mut self, to: DomId, pfn: Pfn, readonly: bool) -> Result<GrantRef, GrantError> {
            self.local_page(pfn);
            let r = self.refs.alloc()?;
            self.hub.borrow_mut().grants.insert((self.me, r), Entry { to, pfn, readonly, maps: 0 });
            Ok(r)
        }
        #[inline(never)]
        fn end_access(&mut self, r: GrantRef) -> Result<(), GrantError> {
            let mut hub = self.hub.borrow_mut();
            match hub.grants.get(&(self.me, r)) {
                None => return Err(GrantError::NotGranted),
                Some(e) if e.maps > 0 => return Err(GrantError::InUse),
                Some(_) => {}
            }
            hub.grants.remove(&(self.me, r));
            drop(hub);
            self.refs.free(r)
        }
        #[inline(never)]
        fn map_batch(&mut self, reqs: &[MapRequest]) -> Vec<Result<Mapping, GrantError>> {
            let mut hub = self.hub.borrow_mut();
            hub.map_calls += 1;
            let mut out = Vec::with_capacity(reqs.len());
            for q in reqs {
                let ok = match hub.grants.get(&(q.dom, q.gref)) {
                    None => Err(GrantError::BadGntref),
                    Some(e) if e.to != self.me => Err(GrantError::PermissionDenied),
                    Some(e) if e.readonly && !q.readonly => Err(GrantError::PermissionDenied),
                    Some(_) => Ok(()),
                };
                out.push(ok.map(|()| {
                    if let Some(e) = hub.grants.get_mut(&(q.dom, q.gref)) {
                        e.maps += 1;
                    }
                    let handle = hub.next_handle;
                    hub.next_handle += 1;
                    let addr = hub.next_addr;
                    hub.next_addr += PAGE_SIZE as u64;
                    hub.handles.insert(handle, (self.me, q.dom, q.gref));
                    let bus = hub.device_map.then(|| (DEVICE_BUS_PFN + u64::from(handle)) * PAGE_SIZE as u64);
                    Mapping { dom: q.dom, gref: q.gref, readonly: q.readonly, handle, addr, bus }
                }));
            }
            out
        }
        #[inline(never)]
        fn unmap_batch(&mut self, maps: &[Mapping]) -> Vec<Result<(), GrantError>> {
            let mut hub = self.hub.borrow_mut();
            maps.iter()
                .map(|m| match hub.handles.get(&m.handle) {
                    Some(&(who, dom, gref)) if who == self.me && dom == m.dom && gref == m.gref => {
                        hub.handles.remove(&m.handle);
                        if let Some(e) = hub.grants.get_mut(&(dom, gref)) {
                            e.maps = e.maps.saturating_sub(1);
                        }
                        Ok(())
                    }
                    _ => Err(GrantError::BadHandle),
                })
                .collect()
        }
        #[inline(never)]
        fn copy_batch(&mut self, ops: &[CopyOp]) -> Vec<Result<(), GrantError>> {
            {
                let mut hub = self.hub.borrow_mut();
                hub.copy_calls += 1;
                hub.copy_ops += ops.len() as u64;
            }
            ops.iter()
                .map(|op| {
                    let (src, so) = self.resolve(&op.src, false)?;
                    let (dst, d_off) = self.resolve(&op.dst, true)?;
                    let len = op.len as usize;
                    if so + len > PAGE_SIZE || d_off + len > PAGE_SIZE {
                        return Err(GrantError::BadCopyArg);
                    }
                    let mut buf = alloc::vec![0u8; len];
                    src.read(so, &mut buf);
                    dst.write(d_off, &buf);
                    Ok(())
                })
                .collect()
        }
        #[inline(never)]
        fn page(&self, m: &Mapping) -> Arc<VecShared> {
            let hub = self.hub.borrow();
            let pfn = hub.grants.get(&(m.dom, m.gref)).map(|e| e.pfn).unwrap_or(Pfn(u64::MAX));
            hub.pages.get(&(m.dom, pfn)).cloned().unwrap_or_else(|| Arc::new(VecShared::new(PAGE_SIZE)))
        }
    }

    /// The device's view of device-mapped grants: a bus address resolves
    /// to the granted page while its mapping lives (after the unmap it
    /// resolves to nothing, so a device access then fails the test).
    #[derive(Clone)]
    pub struct DeviceView {
        hub: Rc<RefCell<Hub>>,
    }

    impl DeviceView {
        /// The page at bus address `addr`, the offset in it, and whether
        /// the mapping is read-only.
        fn resolve(&self, addr: u64) -> Option<(Arc<VecShared>, usize, bool)> {
            let hub = self.hub.borrow();
            let handle = u32::try_from((addr / PAGE_SIZE as u64).checked_sub(DEVICE_BUS_PFN)?).ok()?;
            let &(_, dom, gref) = hub.handles.get(&handle)?;
            let e = hub.grants.get(&(dom, gref))?;
            let page = hub.pages.get(&(dom, e.pfn))?.clone();
            Some((page, (addr % PAGE_SIZE as u64) as usize, e.readonly))
        }
        /// Device read of `out.len()` bytes (within one page) at `addr`.
        #[inline(never)]
        pub fn read(&self, addr: u64, out: &mut [u8]) -> bool {
            match self.resolve(addr) {
                Some((page, off, _)) if off + out.len() <= PAGE_SIZE => {
                    page.read(off, out);
                    true
                }
                _ => false,
            }
        }
        /// Device write (within one page) at `addr`; refused on a
        /// read-only grant.
        #[inline(never)]
        pub fn write(&self, addr: u64, data: &[u8]) -> bool {
            match self.resolve(addr) {
                Some((page, off, false)) if off + data.len() <= PAGE_SIZE => {
                    page.write(off, data);
                    true
                }
                _ => false,
            }
        }
    }

    /// Hands out [`FrameBuf`]s among one fake domain's frames.
    #[derive(Clone)]
    pub struct FrameAlloc {
        hub: Rc<RefCell<Hub>>,
        me: DomId,
    }

    impl FrameAlloc {
        /// A zeroed buffer of `len` bytes on fresh, contiguous frames
        /// (which hold [`FRAME_POISON`] until the first `sync_for_copy`).
        #[inline(never)]
        pub fn alloc(&self, len: usize) -> FrameBuf {
            let pages = len.div_ceil(PAGE_SIZE).max(1);
            let mut hub = self.hub.borrow_mut();
            let first = hub.next_buf_pfn;
            hub.next_buf_pfn += pages as u64;
            for k in 0..pages as u64 {
                let page = VecShared::new(PAGE_SIZE);
                page.write(0, &[FRAME_POISON; PAGE_SIZE]);
                hub.pages.insert((self.me, Pfn(first + k)), Arc::new(page));
            }
            FrameBuf { data: alloc::vec![0; len], first: Pfn(first), pages, hub: self.hub.clone(), me: self.me }
        }
    }

    /// A disk buffer with the two views of memory shared with a copy
    /// engine: the CPU's (`AsRef`/`AsMut`) and the frames grant copies
    /// read and write. Only [`LocalFrames::sync_for_copy`] and
    /// [`LocalFrames::sync_for_cpu`] move bytes between them, as
    /// virtio-drivers' `FakeHal::share` does for DMA: a caller that forgets
    /// one sees stale bytes or [`FRAME_POISON`]. Dropping it frees the frames.
    pub struct FrameBuf {
        data: Vec<u8>,
        first: Pfn,
        pages: usize,
        hub: Rc<RefCell<Hub>>,
        me: DomId,
    }

    impl FrameBuf {
        /// Bytes in the buffer.
        pub fn len(&self) -> usize {
            self.data.len()
        }
        /// Whether the buffer is empty.
        pub fn is_empty(&self) -> bool {
            self.data.is_empty()
        }
        fn frames(&self) -> Vec<Arc<VecShared>> {
            let hub = self.hub.borrow();
            (0..self.pages as u64).filter_map(|k| hub.pages.get(&(self.me, Pfn(self.first.0 + k))).cloned()).collect()
        }
    }

    /// A disk buffer the NVMe driver can map (host tests and benchmarks of
    /// blkback over the fake controller).
    impl drivers::hal::DmaBuffer for FrameBuf {
        fn len(&self) -> usize {
            self.data.len()
        }
    }

    impl AsRef<[u8]> for FrameBuf {
        fn as_ref(&self) -> &[u8] {
            &self.data
        }
    }
    impl AsMut<[u8]> for FrameBuf {
        fn as_mut(&mut self) -> &mut [u8] {
            &mut self.data
        }
    }

    impl LocalFrames for FrameBuf {
        #[inline(never)]
        fn local_frame(&self, off: usize) -> Option<(Pfn, u16)> {
            (off < self.data.len()).then(|| (Pfn(self.first.0 + (off / PAGE_SIZE) as u64), (off % PAGE_SIZE) as u16))
        }
        #[inline(never)]
        fn sync_for_copy(&mut self) {
            for (page, chunk) in self.frames().iter().zip(self.data.chunks(PAGE_SIZE)) {
                page.write(0, chunk);
            }
        }
        #[inline(never)]
        fn sync_for_cpu(&mut self) {
            let frames = self.frames();
            for (page, chunk) in frames.iter().zip(self.data.chunks_mut(PAGE_SIZE)) {
                page.read(0, chunk);
            }
        }
    }

    impl Drop for FrameBuf {
        #[inline(never)]
        fn drop(&mut self) {
            let mut hub = self.hub.borrow_mut();
            for k in 0..self.pages as u64 {
                hub.pages.remove(&(self.me, Pfn(self.first.0 + k)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeGrants;
    use super::*;
    use crate::shmem::SharedMem;

    fn pair() -> (FakeGrants, FakeGrants) {
        let mut v = FakeGrants::domains(&[DomId(0), DomId(5)], 16);
        let b = v.pop().unwrap();
        (v.pop().unwrap(), b)
    }

    #[test]
    fn map_read_write_unmap_end() {
        let (mut dom0, mut fe) = pair();
        let page = dom0.local_page(Pfn(3));
        page.write(0, b"hello");
        let r = dom0.grant_access(DomId(5), Pfn(3), false).unwrap();
        let maps = fe.map_batch(&[MapRequest { dom: DomId(0), gref: r, readonly: false }]);
        let m = maps[0].unwrap();
        let mut buf = [0u8; 5];
        fe.page(&m).read(0, &mut buf);
        assert_eq!(&buf, b"hello");
        fe.page(&m).write(0, b"J");
        let mut b1 = [0u8; 1];
        page.read(0, &mut b1);
        assert_eq!(&b1, b"J");
        assert_eq!(dom0.end_access(r), Err(GrantError::InUse));
        assert_eq!(fe.unmap_batch(&[m]), vec![Ok(())]);
        assert_eq!(fe.unmap_batch(&[m]), vec![Err(GrantError::BadHandle)], "double unmap is refused");
        assert_eq!(dom0.end_access(r), Ok(()));
        assert_eq!(dom0.end_access(r), Err(GrantError::NotGranted));
    }

    #[test]
    fn batch_maps_in_one_call_with_per_entry_status() {
        let (mut dom0, mut fe) = pair();
        let a = dom0.grant_access(DomId(5), Pfn(1), true).unwrap();
        let b = dom0.grant_access(DomId(9), Pfn(2), false).unwrap();
        let res = fe.map_batch(&[
            MapRequest { dom: DomId(0), gref: a, readonly: true },
            MapRequest { dom: DomId(0), gref: a, readonly: false },
            MapRequest { dom: DomId(0), gref: b, readonly: true },
            MapRequest { dom: DomId(0), gref: GrantRef(4000), readonly: true },
        ]);
        assert!(res[0].is_ok());
        assert_eq!(res[1], Err(GrantError::PermissionDenied), "read-only grant mapped writable");
        assert_eq!(res[2], Err(GrantError::PermissionDenied), "granted to another domain");
        assert_eq!(res[3], Err(GrantError::BadGntref));
        assert_eq!(fe.map_calls(), 1);
    }

    #[test]
    fn copy_checks_bounds_and_permissions() {
        let (mut dom0, mut fe) = pair();
        dom0.local_page(Pfn(1)).write(100, b"abc");
        let r = dom0.grant_access(DomId(5), Pfn(1), true).unwrap();
        let res = fe.copy_batch(&[
            CopyOp {
                src: CopyEnd::Grant { dom: DomId(0), gref: r, offset: 100 },
                dst: CopyEnd::Local { pfn: Pfn(7), offset: 0 },
                len: 3,
            },
            CopyOp {
                src: CopyEnd::Local { pfn: Pfn(7), offset: 0 },
                dst: CopyEnd::Grant { dom: DomId(0), gref: r, offset: 0 },
                len: 3,
            },
            CopyOp {
                src: CopyEnd::Grant { dom: DomId(0), gref: r, offset: 4095 },
                dst: CopyEnd::Local { pfn: Pfn(7), offset: 0 },
                len: 2,
            },
        ]);
        assert_eq!(res, vec![Ok(()), Err(GrantError::PermissionDenied), Err(GrantError::BadCopyArg)]);
        let mut buf = [0u8; 3];
        fe.local_page(Pfn(7)).read(0, &mut buf);
        assert_eq!(&buf, b"abc");
    }

    #[test]
    fn frame_buf_views_meet_only_at_syncs() {
        use super::fake::FRAME_POISON;
        let (mut dom0, mut fe) = pair();
        dom0.local_page(Pfn(1)).write(0, &[7u8; PAGE_SIZE]);
        let r = dom0.grant_access(DomId(5), Pfn(1), false).unwrap();
        let mut buf = fe.frame_alloc().alloc(2 * PAGE_SIZE);
        assert_eq!(buf.local_frame(2 * PAGE_SIZE), None);
        let (pfn, off) = buf.local_frame(PAGE_SIZE + 512).unwrap();
        assert_eq!(off, 512);
        let grant = CopyEnd::Grant { dom: DomId(0), gref: r, offset: 0 };
        // Grant -> buffer: visible to the CPU only after sync_for_cpu.
        let into = CopyOp { src: grant, dst: CopyEnd::Local { pfn, offset: off }, len: 100 };
        assert_eq!(fe.copy_batch(&[into]), vec![Ok(())]);
        assert_eq!(buf.as_ref()[PAGE_SIZE + 512], 0);
        buf.sync_for_cpu();
        assert_eq!(&buf.as_ref()[PAGE_SIZE + 512..PAGE_SIZE + 612], &[7u8; 100][..]);
        assert_eq!(buf.as_ref()[PAGE_SIZE + 612], FRAME_POISON, "untouched frame bytes are poison");
        // Buffer -> grant: the CPU's bytes reach the frames only after sync_for_copy.
        buf.as_mut()[..4].copy_from_slice(b"abcd");
        let (p0, _) = buf.local_frame(0).unwrap();
        let out = CopyOp { src: CopyEnd::Local { pfn: p0, offset: 0 }, dst: grant, len: 4 };
        assert_eq!(fe.copy_batch(&[out]), vec![Ok(())]);
        let mut b4 = [0u8; 4];
        dom0.local_page(Pfn(1)).read(0, &mut b4);
        assert_eq!(b4, [FRAME_POISON; 4]);
        buf.sync_for_copy();
        assert_eq!(fe.copy_batch(&[out]), vec![Ok(())]);
        dom0.local_page(Pfn(1)).read(0, &mut b4);
        assert_eq!(&b4, b"abcd");
        assert_eq!((fe.copy_calls(), fe.copy_ops()), (3, 3));
        // Freed frames are not silently recreated.
        drop(buf);
        assert_eq!(fe.copy_batch(&[out]), vec![Err(GrantError::BadPage)]);
    }

    #[test]
    fn ref_allocator_bounds() {
        let mut a = RefAllocator::new(8, 3);
        let r: Vec<_> = (0..3).map(|_| a.alloc().unwrap()).collect();
        assert_eq!(r, vec![GrantRef(8), GrantRef(9), GrantRef(10)]);
        assert_eq!(a.alloc(), Err(GrantError::NoFreeRefs));
        assert_eq!(a.free(GrantRef(7)), Err(GrantError::NotGranted));
        assert_eq!(a.free(GrantRef(11)), Err(GrantError::NotGranted));
        a.free(GrantRef(9)).unwrap();
        assert_eq!(a.free(GrantRef(9)), Err(GrantError::NotGranted));
        assert_eq!(a.alloc(), Ok(GrantRef(9)));
    }

    #[test]
    fn status_mapping() {
        assert_eq!(GrantError::check(0), Ok(()));
        assert_eq!(GrantError::check(-3), Err(GrantError::BadGntref));
        assert_eq!(GrantError::check(-77), Err(GrantError::Unknown(-77)));
    }
}
