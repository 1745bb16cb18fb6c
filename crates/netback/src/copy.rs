//! Moving bytes between a guest's granted pages and our staging buffer:
//! one batched `GNTTABOP_copy` per call, or (for a buffer that names no
//! frames) map, copy by the CPU, unmap.

use alloc::vec;
use alloc::vec::Vec;
use xen::gnttab::{CopyEnd, CopyOp, GrantOps, LocalFrames, MapRequest};
use xen::shmem::SharedMem;
use xen::types::{DomId, GrantRef};

const PAGE: usize = 4096;

/// One piece of guest memory and where it goes in the staging buffer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Piece {
    /// The guest's grant.
    pub(crate) gref: u32,
    /// Offset in the guest's page (`page_off + len <= 4096`, checked by
    /// callers).
    pub(crate) page_off: u16,
    /// Bytes.
    pub(crate) len: u16,
    /// Offset in the staging buffer.
    pub(crate) at: usize,
}

/// Moves `pieces` between grants of `dom` and `buf` (`into_buf`: guest ->
/// buffer). Returns, per piece, whether it moved.
pub(crate) fn move_data<G: GrantOps, B: AsRef<[u8]> + AsMut<[u8]> + LocalFrames>(
    g: &mut G,
    stats: &mut crate::Stats,
    dom: DomId,
    buf: &mut B,
    pieces: &[Piece],
    into_buf: bool,
) -> Vec<bool> {
    let mut ok = vec![true; pieces.len()];
    if pieces.is_empty() {
        return ok;
    }
    if buf.local_frame(0).is_some() {
        if !into_buf {
            buf.sync_for_copy();
        }
        let mut ops = Vec::with_capacity(pieces.len() * 2);
        let mut owner = Vec::with_capacity(pieces.len() * 2);
        for (k, p) in pieces.iter().enumerate() {
            // Each op stays within one of our frames (they need not be
            // contiguous) and within the guest's page.
            let mut done = 0usize;
            while done < usize::from(p.len) {
                let Some((pfn, foff)) = buf.local_frame(p.at + done) else {
                    ok[k] = false;
                    break;
                };
                let n = (usize::from(p.len) - done).min(PAGE - usize::from(foff));
                let guest = CopyEnd::Grant { dom, gref: GrantRef(p.gref), offset: p.page_off + done as u16 };
                let local = CopyEnd::Local { pfn, offset: foff };
                let (src, dst) = if into_buf { (guest, local) } else { (local, guest) };
                ops.push(CopyOp { src, dst, len: n as u16 });
                owner.push(k);
                done += n;
            }
        }
        stats.grant_copies += 1;
        for (r, &k) in g.copy_batch(&ops).iter().zip(&owner) {
            if r.is_err() {
                ok[k] = false;
            }
        }
        if into_buf {
            buf.sync_for_cpu();
        }
        return ok;
    }
    let reqs: Vec<MapRequest> =
        pieces.iter().map(|p| MapRequest { dom, gref: GrantRef(p.gref), readonly: into_buf }).collect();
    stats.data_maps += 1;
    let mut maps = Vec::new();
    let results = g.map_batch(&reqs);
    for (k, (p, r)) in pieces.iter().zip(results).enumerate() {
        match r {
            Ok(m) => {
                let page = g.page(&m);
                let range = p.at..p.at + usize::from(p.len);
                match buf.as_mut().get_mut(range) {
                    Some(b) if into_buf => page.read(usize::from(p.page_off), b),
                    Some(b) => page.write(usize::from(p.page_off), b),
                    None => ok[k] = false,
                }
                maps.push(m);
            }
            Err(_) => ok[k] = false,
        }
    }
    let _ = g.unmap_batch(&maps);
    ok
}
