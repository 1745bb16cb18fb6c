//! Grant tables on Xen (v1): our table for granting pages, and batched
//! map / unmap / copy of other domains' grants.

use super::hypercall::{hypercall3, nr};
use super::iomap::{self, Scope};
use super::page::MappedPage;
use super::pv::{PvMm, PTE_DATA_RW};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use xen::error::XenError;
use xen::gnttab::{CopyEnd, CopyOp, GrantError, GrantOps, MapRequest, Mapping, RefAllocator};
use xen::types::{DomId, GrantRef, Mfn, Pfn};
use xen::xen_abi::{
    gnttabop as g, GnttabCopy, GnttabCopyPtr, GnttabMapGrantRef, GnttabSetupTable, GnttabUnmapGrantRef, DOMID_SELF,
};

/// Frames of our v1 grant table (512 entries each).
pub const TABLE_FRAMES: u32 = 4;
/// Largest batch per hypercall.
pub const MAX_BATCH: usize = 64;

/// This domain's grant interface.
pub struct XenGrants<'a> {
    mm: &'a spin::Mutex<PvMm>,
    table_va: [u64; TABLE_FRAMES as usize],
    refs: RefAllocator,
    /// Map grants with device access too (`GNTMAP_device_map`).
    device_map: bool,
}

fn gnttab_op<T>(cmd: u64, arg: *mut T, count: usize) -> Result<(), XenError> {
    // SAFETY: callers pass `count` valid repr(C) elements for `cmd`.
    XenError::check(unsafe { hypercall3(nr::GRANT_TABLE_OP, cmd, arg as u64, count as u64) }).map(|_| ())
}

impl<'a> XenGrants<'a> {
    /// Sets up our grant table (GNTTABOP_setup_table) and maps its frames.
    pub fn new(mm: &'a spin::Mutex<PvMm>) -> Result<Self, GrantError> {
        let mut frames = [0u64; TABLE_FRAMES as usize];
        let mut st = GnttabSetupTable {
            dom: DOMID_SELF,
            nr_frames: TABLE_FRAMES,
            frame_list: frames.as_mut_ptr() as u64,
            ..Default::default()
        };
        gnttab_op(g::SETUP_TABLE, &mut st, 1).map_err(GrantError::Xen)?;
        GrantError::check(st.status)?;
        let mut table_va = [0u64; TABLE_FRAMES as usize];
        let mut m = mm.lock();
        for (i, f) in frames.iter().enumerate() {
            table_va[i] = m.map_mfn(Mfn(*f), PTE_DATA_RW).map_err(|_| GrantError::NoDeviceSpace)?;
        }
        drop(m);
        let n = TABLE_FRAMES * 512 - g::NR_RESERVED_ENTRIES;
        Ok(Self { mm, table_va, refs: RefAllocator::new(g::NR_RESERVED_ENTRIES, n), device_map: false })
    }

    /// Maps from now on also give our devices access (`GNTMAP_device_map`):
    /// each [`Mapping`] carries the page's bus address (`dev_bus_addr`,
    /// the machine address for a PV domain, which Xen maps 1:1 in the
    /// IOMMU of a PV domain with passthrough). Only where bus addresses are
    /// machine addresses (`Translation::PvMachineFrames`).
    pub fn set_device_map(&mut self, on: bool) {
        self.device_map = on;
    }

    /// `GNTTABOP_unmap_grant_ref` of `maps` (contexts are the caller's business).
    fn unmap_granted(&mut self, maps: &[Mapping]) -> Vec<Result<(), GrantError>> {
        let mut out = Vec::with_capacity(maps.len());
        for chunk in maps.chunks(MAX_BATCH) {
            let mut ops: Vec<GnttabUnmapGrantRef> = chunk
                .iter()
                .map(|m| GnttabUnmapGrantRef {
                    host_addr: m.addr,
                    // A device mapping is released only when its bus
                    // address is given back too.
                    dev_bus_addr: m.bus.unwrap_or(0),
                    handle: m.handle,
                    status: 0,
                    _pad: 0,
                })
                .collect();
            let call = gnttab_op(g::UNMAP_GRANT_REF, ops.as_mut_ptr(), ops.len());
            let mut mm = self.mm.lock();
            for (op, m) in ops.iter().zip(chunk) {
                let r = call.map_err(GrantError::Xen).and_then(|()| GrantError::check(op.status));
                if r.is_ok() {
                    mm.free_va(m.addr);
                }
                out.push(r);
            }
        }
        out
    }

    /// Puts each page just mapped with device access into the devices'
    /// contexts ([`Scope::Grants`], writable as the grant is); a page the
    /// contexts refuse is unmapped again and its result becomes an error.
    fn put_in_contexts(&mut self, out: &mut [Result<Mapping, GrantError>]) {
        let mut refused: Vec<Mapping> = Vec::new();
        for r in out.iter_mut() {
            if let Ok(m) = r {
                let ok = m.bus.is_some_and(|bus| iomap::map(Scope::Grants, bus >> 12, !m.readonly));
                if !ok {
                    refused.push(*m);
                    *r = Err(GrantError::NoDeviceSpace);
                }
            }
        }
        if !refused.is_empty() {
            // Not in any context (refused): straight back through Xen.
            let _ = self.unmap_granted(&refused);
        }
    }

    /// (flags, domid+frame) of entry `r`: flags is a u16 at +0, frame a u32 at +4.
    fn entry(&self, r: GrantRef) -> (&AtomicU16, &AtomicU16, &AtomicU32) {
        let frame = (r.0 / 512) as usize;
        let va = self.table_va[frame] as usize + (r.0 as usize % 512) * 8;
        // SAFETY: `r` came from our RefAllocator, so it lies inside the
        // mapped table frames; the fields are naturally aligned.
        unsafe { (&*(va as *const AtomicU16), &*((va + 2) as *const AtomicU16), &*((va + 4) as *const AtomicU32)) }
    }

    fn copy_ptr(&self, e: &CopyEnd) -> Result<(GnttabCopyPtr, u16), GrantError> {
        Ok(match *e {
            CopyEnd::Grant { dom, gref, offset } => {
                (GnttabCopyPtr { u: gref.0 as u64, domid: dom.0, offset, _pad: 0 }, 1)
            }
            CopyEnd::Local { pfn, offset } => {
                let mfn = self.mm.lock().pfn_to_mfn(pfn).map_err(|_| GrantError::BadPage)?;
                (GnttabCopyPtr { u: mfn.0, domid: DOMID_SELF, offset, _pad: 0 }, 0)
            }
        })
    }
}

impl GrantOps for XenGrants<'_> {
    type Page = MappedPage;

    fn grant_access(&mut self, to: DomId, pfn: Pfn, readonly: bool) -> Result<GrantRef, GrantError> {
        let mfn = self.mm.lock().pfn_to_mfn(pfn).map_err(|_| GrantError::BadPage)?;
        let frame = u32::try_from(mfn.0).map_err(|_| GrantError::AddressTooBig)?;
        let r = self.refs.alloc()?;
        let (flags, domid, fr) = self.entry(r);
        domid.store(to.0, Ordering::Relaxed);
        fr.store(frame, Ordering::Relaxed);
        // Release: domid and frame are visible before the entry is valid.
        let f = g::GTF_PERMIT_ACCESS | if readonly { g::GTF_READONLY } else { 0 };
        flags.store(f, Ordering::Release);
        Ok(r)
    }

    fn end_access(&mut self, r: GrantRef) -> Result<(), GrantError> {
        let (flags, _, _) = self.entry(r);
        // Clear the entry only if the grantee is not using it (Xen sets
        // GTF_reading/GTF_writing while mapped); compare-exchange so we never
        // race with a mapping being established.
        let cur = flags.load(Ordering::Acquire);
        if cur & (g::GTF_READING | g::GTF_WRITING) != 0 {
            return Err(GrantError::InUse);
        }
        if flags.compare_exchange(cur, 0, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return Err(GrantError::InUse);
        }
        self.refs.free(r)
    }

    fn map_batch(&mut self, reqs: &[MapRequest]) -> Vec<Result<Mapping, GrantError>> {
        let mut out = Vec::with_capacity(reqs.len());
        for chunk in reqs.chunks(MAX_BATCH) {
            let mut ops: Vec<GnttabMapGrantRef> = Vec::with_capacity(chunk.len());
            let mut vas: Vec<Result<u64, GrantError>> = Vec::with_capacity(chunk.len());
            {
                let mut mm = self.mm.lock();
                for q in chunk {
                    let va = mm.alloc_va().map_err(|_| GrantError::NoDeviceSpace);
                    let flags = g::GNTMAP_HOST_MAP
                        | if q.readonly { g::GNTMAP_READONLY } else { 0 }
                        | if self.device_map { g::GNTMAP_DEVICE_MAP } else { 0 };
                    // A slot that could not get an address is sent with
                    // address 0, which Xen rejects; its result is our error.
                    ops.push(GnttabMapGrantRef {
                        host_addr: *va.as_ref().unwrap_or(&0),
                        flags,
                        gref: q.gref.0,
                        dom: q.dom.0,
                        ..Default::default()
                    });
                    vas.push(va);
                }
            }
            let call = gnttab_op(g::MAP_GRANT_REF, ops.as_mut_ptr(), ops.len());
            let mut mm = self.mm.lock();
            for ((op, va), q) in ops.iter().zip(vas).zip(chunk) {
                let r = match (va, &call) {
                    (Err(e), _) => Err(e),
                    (Ok(va), Err(e)) => {
                        mm.free_va(va);
                        Err(GrantError::Xen(*e))
                    }
                    (Ok(va), Ok(())) => match GrantError::check(op.status) {
                        Ok(()) => Ok(Mapping {
                            dom: q.dom,
                            gref: q.gref,
                            readonly: q.readonly,
                            handle: op.handle,
                            addr: va,
                            // Kept as Xen gave it: the unmap must name it
                            // (users check it before DMA).
                            bus: self.device_map.then_some(op.dev_bus_addr),
                        }),
                        Err(e) => {
                            mm.free_va(va);
                            Err(e)
                        }
                    },
                };
                out.push(r);
            }
        }
        if self.device_map && iomap::grants_mapped() {
            self.put_in_contexts(&mut out);
        }
        out
    }

    fn unmap_batch(&mut self, maps: &[Mapping]) -> Vec<Result<(), GrantError>> {
        if iomap::grants_mapped() {
            // Out of the devices' contexts first (their IOTLBs flushed),
            // then out of our address space and back to the granter.
            for m in maps {
                if let Some(bus) = m.bus {
                    iomap::unmap(Scope::Grants, bus >> 12);
                }
            }
        }
        self.unmap_granted(maps)
    }

    fn copy_batch(&mut self, ops: &[CopyOp]) -> Vec<Result<(), GrantError>> {
        let mut out = Vec::with_capacity(ops.len());
        for chunk in ops.chunks(MAX_BATCH) {
            let mut raw: Vec<GnttabCopy> = Vec::with_capacity(chunk.len());
            let mut pre: Vec<Result<(), GrantError>> = Vec::with_capacity(chunk.len());
            for op in chunk {
                match (self.copy_ptr(&op.src), self.copy_ptr(&op.dst)) {
                    (Ok((s, sf)), Ok((d, df))) => {
                        let flags = if sf == 1 { g::GNTCOPY_SOURCE_GREF } else { 0 }
                            | if df == 1 { g::GNTCOPY_DEST_GREF } else { 0 };
                        raw.push(GnttabCopy { source: s, dest: d, len: op.len, flags, status: 0, _pad: 0 });
                        pre.push(Ok(()));
                    }
                    (Err(e), _) | (_, Err(e)) => {
                        // Keep positions aligned: a zero-length local copy.
                        raw.push(GnttabCopy::default());
                        pre.push(Err(e));
                    }
                }
            }
            let call = gnttab_op(g::COPY, raw.as_mut_ptr(), raw.len());
            for (c, p) in raw.iter().zip(pre) {
                out.push(p.and_then(|()| call.map_err(GrantError::Xen)).and_then(|()| GrantError::check(c.status)));
            }
        }
        out
    }

    fn page(&self, m: &Mapping) -> MappedPage {
        // SAFETY: `m` came from map_batch and stays mapped until unmap_batch;
        // callers drop the page view before unmapping.
        unsafe { MappedPage::new(m.addr) }
    }
}
