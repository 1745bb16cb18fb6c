//! PRP construction (NVMe Base 1.4 §4.3 "Physical Region Page Entry and
//! List"), as pure functions.
//!
//! Rules:
//! - PRP1 is the first data address and may carry a page offset (dword
//!   aligned); every later entry is page aligned (offset 0).
//! - One page touched: PRP2 unused (0). Two pages: PRP2 is the second
//!   page. More: PRP2 points to a PRP list.
//! - A PRP list page holds `page_size / 8` entries; if more entries remain
//!   than fit, its last entry points to the next list page instead.
//!
//! The buffer is given as device segments (from a [`Mapping`]); segments
//! after the first must start on a page boundary and segments before the
//! last must end on one, otherwise no PRP can describe them.
//!
//! [`Mapping`]: crate::hal::Mapping

use alloc::vec::Vec;

use crate::error::Error;
use crate::hal::{BusAddr, DmaSegment};

/// What goes into the command and the PRP list pages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prp {
    pub prp1: u64,
    pub prp2: u64,
    /// Contents of each list page, in chain order (empty when PRP2 is not
    /// a list pointer). Page `i` is written to `list_pages[i]`.
    pub lists: Vec<Vec<u64>>,
}

/// The sequence of PRP entries (first with offset, then page addresses)
/// for `segments`. Fails on empty input, a first address that is not dword
/// aligned, holes, or more than `max_entries` entries.
pub fn entries(segments: &[DmaSegment], page_size: usize, max_entries: usize) -> Result<Vec<u64>, Error> {
    let mut out = Vec::new();
    entries_into(segments, page_size, max_entries, &mut out)?;
    Ok(out)
}

/// [`entries`] into `out` (cleared first; its capacity reused, so the
/// I/O path allocates nothing once it has seen its largest transfer).
pub fn entries_into(
    segments: &[DmaSegment],
    page_size: usize,
    max_entries: usize,
    out: &mut Vec<u64>,
) -> Result<(), Error> {
    debug_assert!(page_size.is_power_of_two() && page_size >= 4096);
    out.clear();
    let ps = page_size as u64;
    let total: usize = segments.iter().map(|s| s.len).fold(0usize, |a, l| a.saturating_add(l));
    if segments.is_empty() || total == 0 {
        return Err(Error::BadBuffer);
    }
    out.reserve(total / page_size + 2);
    let last = segments.len() - 1;
    for (i, seg) in segments.iter().enumerate() {
        if seg.len == 0 {
            return Err(Error::BadBuffer);
        }
        let start = seg.bus.0;
        let end = start.checked_add(seg.len as u64).ok_or(Error::BadBuffer)?;
        if i == 0 && start & 0x3 != 0 {
            return Err(Error::BadBuffer); // PRP1 offset must be dword aligned
        }
        if i > 0 && start & (ps - 1) != 0 {
            return Err(Error::BadBuffer); // hole before this segment
        }
        if i < last && end & (ps - 1) != 0 {
            return Err(Error::BadBuffer); // hole after this segment
        }
        out.push(start);
        let mut page = (start & !(ps - 1)) + ps;
        while page < end {
            out.push(page);
            page += ps;
        }
        if out.len() > max_entries {
            return Err(Error::BadBuffer);
        }
    }
    Ok(())
}

/// PRP1 and PRP2 of a one-segment buffer that spans at most two pages
/// (no list, nothing allocated): what [`entries`] and [`build`] give for
/// it. `None` for anything else (the general path then decides).
pub fn direct(segments: &[DmaSegment], page_size: usize, max_entries: usize) -> Option<(u64, u64)> {
    let ps = page_size as u64;
    let [seg] = segments else { return None };
    let start = seg.bus.0;
    let end = start.checked_add(seg.len as u64)?;
    if seg.len == 0 || start & 0x3 != 0 || max_entries < 2 {
        return None;
    }
    let second = (start & !(ps - 1)) + ps;
    if second >= end {
        Some((start, 0))
    } else if second + ps >= end {
        Some((start, second))
    } else {
        None
    }
}

/// How many PRP list pages `entry_count` entries need.
pub fn list_pages_needed(entry_count: usize, page_size: usize) -> usize {
    let per_page = page_size / 8;
    if entry_count <= 2 {
        return 0;
    }
    let in_lists = entry_count - 1;
    if in_lists <= per_page {
        1
    } else {
        // Each page but the last gives one slot to the chain pointer.
        1 + (in_lists - per_page).div_ceil(per_page - 1)
    }
}

/// Lays out `entries` into PRP1/PRP2 and list pages at `list_pages`
/// (page aligned, at least [`list_pages_needed`] of them).
pub fn build(entries: &[u64], list_pages: &[BusAddr], page_size: usize) -> Result<Prp, Error> {
    let per_page = page_size / 8;
    match entries.len() {
        0 => Err(Error::BadBuffer),
        1 => Ok(Prp { prp1: entries[0], prp2: 0, lists: Vec::new() }),
        2 => Ok(Prp { prp1: entries[0], prp2: entries[1], lists: Vec::new() }),
        n => {
            let need = list_pages_needed(n, page_size);
            if list_pages.len() < need || list_pages.iter().any(|p| p.page_offset(page_size) != 0) {
                return Err(Error::BadBuffer);
            }
            let mut lists = Vec::with_capacity(need);
            let mut rest = &entries[1..];
            for i in 0..need {
                if rest.len() <= per_page {
                    lists.push(rest.to_vec());
                    rest = &[];
                } else {
                    let mut page = rest[..per_page - 1].to_vec();
                    page.push(list_pages[i + 1].0);
                    lists.push(page);
                    rest = &rest[per_page - 1..];
                }
            }
            debug_assert!(rest.is_empty());
            Ok(Prp { prp1: entries[0], prp2: list_pages[0].0, lists })
        }
    }
}

/// The bytes of list page `i` of the layout [`build`] makes for `entries`
/// (little endian, into `out`, cleared first): what `build(..).lists[i]`
/// serialises to, without building the lists. `next` is the bus address
/// of list page `i + 1`, used only if this page chains to it. Returns
/// false if there is no page `i` (fewer than three entries, or `i` past
/// the last page) or the page chains and `next` is missing or not page
/// aligned.
pub fn list_page_into(entries: &[u64], i: usize, next: Option<BusAddr>, page_size: usize, out: &mut Vec<u8>) -> bool {
    out.clear();
    let per_page = page_size / 8;
    if entries.len() < 3 || i >= list_pages_needed(entries.len(), page_size) {
        return false;
    }
    // Every page before `i` chains, so it holds `per_page - 1` entries.
    let Some(rest) = i.checked_mul(per_page - 1).and_then(|at| entries[1..].get(at..)) else { return false };
    if rest.len() <= per_page {
        out.reserve(rest.len() * 8);
        for e in rest {
            out.extend_from_slice(&e.to_le_bytes());
        }
        return true;
    }
    let Some(next) = next.filter(|n| n.page_offset(page_size) == 0) else { return false };
    out.reserve(per_page * 8);
    for e in &rest[..per_page - 1] {
        out.extend_from_slice(&e.to_le_bytes());
    }
    out.extend_from_slice(&next.0.to_le_bytes());
    true
}

/// Serialises one list page's entries (little endian).
pub fn list_bytes(list: &[u64]) -> Vec<u8> {
    let mut out = Vec::new();
    list_bytes_into(list, &mut out);
    out
}

/// [`list_bytes`] into `out` (cleared first; its capacity reused).
pub fn list_bytes_into(list: &[u64], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(list.len() * 8);
    for e in list {
        out.extend_from_slice(&e.to_le_bytes());
    }
}

/// Walks a PRP (as a device does) and returns the (address, length) chunks
/// covering `len` bytes. `read_list(addr, n)` reads `n` entries at `addr`.
/// Used by the fake controller and by tests; returns `None` on a malformed
/// PRP (misaligned entries, list overrun).
pub fn walk(
    prp1: u64,
    prp2: u64,
    len: usize,
    page_size: usize,
    mut read_list: impl FnMut(u64, usize) -> Option<Vec<u64>>,
) -> Option<Vec<(u64, usize)>> {
    let ps = page_size as u64;
    if prp1 & 0x3 != 0 || len == 0 {
        return None;
    }
    let mut chunks = Vec::new();
    let first = core::cmp::min(len as u64, ps - (prp1 & (ps - 1))) as usize;
    chunks.push((prp1, first));
    let mut remaining = len - first;
    if remaining == 0 {
        return Some(chunks);
    }
    if remaining <= page_size {
        if prp2 & (ps - 1) != 0 {
            return None;
        }
        chunks.push((prp2, remaining));
        return Some(chunks);
    }
    // PRP2 is a list pointer (we only accept page-aligned lists).
    if prp2 & 0x7 != 0 {
        return None;
    }
    let per_page = page_size / 8;
    let mut list_addr = prp2;
    let mut bound = len / page_size + 2; // list pages can't outnumber data pages
    while remaining > 0 {
        bound = bound.checked_sub(1)?;
        let slots = per_page - ((list_addr & (ps - 1)) / 8) as usize;
        let list = read_list(list_addr, slots)?;
        for (i, &e) in list.iter().enumerate() {
            if remaining == 0 {
                break;
            }
            if i == slots - 1 && remaining > page_size {
                list_addr = e; // chain pointer
                if list_addr & 0x7 != 0 {
                    return None;
                }
                break;
            }
            if e & (ps - 1) != 0 {
                return None;
            }
            let n = core::cmp::min(remaining, page_size);
            chunks.push((e, n));
            remaining -= n;
        }
    }
    Some(chunks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeMap;
    use alloc::vec;

    const PS: usize = 4096;

    fn seg(bus: u64, len: usize) -> DmaSegment {
        DmaSegment { bus: BusAddr(bus), len }
    }

    #[test]
    fn direct_is_the_general_path_without_a_list() {
        let base = 0x1_0000_0000u64;
        for &(off, len) in &[(0, 512), (0, 4096), (4, 4092), (0x800, 4096), (0x800, 8192), (0, 8192), (0, 8196), (2, 8)]
        {
            let segs = [seg(base + off, len)];
            let general = entries(&segs, PS, 512).and_then(|e| build(&e, &[], PS));
            match direct(&segs, PS, 512) {
                Some((p1, p2)) => {
                    let g = general.unwrap_or_else(|e| panic!("direct accepted {off:#x}+{len}: {e:?}"));
                    assert_eq!((g.prp1, g.prp2, g.lists.len()), (p1, p2, 0), "{off:#x}+{len}");
                }
                // Refused: either the general path refuses too, or it needs a list.
                None => assert!(general.is_err() || len + (off as usize % PS) > 2 * PS, "{off:#x}+{len}"),
            }
        }
        assert_eq!(direct(&[seg(base, 4096), seg(base + 8192, 4096)], PS, 512), None, "two segments");
        assert_eq!(direct(&[seg(base, 0)], PS, 512), None);
    }

    /// Builds the PRP for `segs`, stores list pages in a map, walks it back
    /// and checks the walk reproduces the segment bytes.
    fn roundtrip(segs: &[DmaSegment]) -> Prp {
        let e = entries(segs, PS, usize::MAX).unwrap();
        let n = list_pages_needed(e.len(), PS);
        let pages: Vec<BusAddr> = (0..n).map(|i| BusAddr(0xF000_0000 + (i as u64) * 2 * PS as u64)).collect();
        let prp = build(&e, &pages, PS).unwrap();
        assert_eq!(prp.lists.len(), n);
        let mut mem: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        let mut bytes = Vec::new();
        for (i, l) in prp.lists.iter().enumerate() {
            assert!(l.len() <= PS / 8);
            // The allocation-free layout the driver writes is the same.
            assert!(list_page_into(&e, i, pages.get(i + 1).copied(), PS, &mut bytes));
            assert_eq!(bytes, list_bytes(l), "list page {i}");
            mem.insert(pages[i].0, l.clone());
        }
        let total: usize = segs.iter().map(|s| s.len).sum();
        let chunks = walk(prp.prp1, prp.prp2, total, PS, |a, _| mem.get(&a).cloned()).unwrap();
        // Flatten both into per-byte-run lists and compare.
        let mut want = Vec::new();
        for s in segs {
            let mut a = s.bus.0;
            let end = a + s.len as u64;
            while a < end {
                let next = core::cmp::min(end, (a & !(PS as u64 - 1)) + PS as u64);
                want.push((a, (next - a) as usize));
                a = next;
            }
        }
        assert_eq!(chunks, want);
        assert!(!list_page_into(&e, n, None, PS, &mut bytes), "no page past the last");
        prp
    }

    #[test]
    fn list_page_refuses_a_missing_or_misaligned_chain() {
        let e: Vec<u64> = (0..(PS / 8 + 2) as u64).map(|i| i * PS as u64).collect();
        let mut bytes = Vec::new();
        assert!(!list_page_into(&e, 0, None, PS, &mut bytes));
        assert!(!list_page_into(&e, 0, Some(BusAddr(0x1008)), PS, &mut bytes));
        assert!(list_page_into(&e, 0, Some(BusAddr(0x2000)), PS, &mut bytes));
        assert!(list_page_into(&e, 1, None, PS, &mut bytes));
        assert!(!list_page_into(&e[..2], 0, None, PS, &mut bytes));
    }

    #[test]
    fn single_page_with_offset() {
        let p = roundtrip(&[seg(0x10_0200, 512)]);
        assert_eq!((p.prp1, p.prp2), (0x10_0200, 0));
    }

    #[test]
    fn exactly_one_page_aligned() {
        let p = roundtrip(&[seg(0x10_0000, PS)]);
        assert_eq!((p.prp1, p.prp2), (0x10_0000, 0));
    }

    #[test]
    fn one_page_length_with_offset_crosses_boundary() {
        // 4 KiB starting at offset 0x200 touches two pages: PRP2 = page 2.
        let p = roundtrip(&[seg(0x10_0200, PS)]);
        assert_eq!((p.prp1, p.prp2), (0x10_0200, 0x10_1000));
        assert!(p.lists.is_empty());
    }

    #[test]
    fn two_pages_aligned_no_list() {
        let p = roundtrip(&[seg(0x10_0000, 2 * PS)]);
        assert_eq!((p.prp1, p.prp2), (0x10_0000, 0x10_1000));
    }

    #[test]
    fn three_pages_use_a_list() {
        let p = roundtrip(&[seg(0x10_0000, 3 * PS)]);
        assert_eq!(p.prp1, 0x10_0000);
        assert_eq!(p.prp2, 0xF000_0000);
        assert_eq!(p.lists, vec![vec![0x10_1000, 0x10_2000]]);
    }

    #[test]
    fn discontiguous_segments() {
        let p = roundtrip(&[seg(0x10_0800, 0x800), seg(0x50_0000, PS), seg(0x90_0000, 0x200)]);
        assert_eq!(p.prp1, 0x10_0800);
        assert_eq!(p.lists, vec![vec![0x50_0000, 0x90_0000]]);
    }

    #[test]
    fn full_list_page_needs_no_chain() {
        // 1 + 512 entries: the list holds exactly 512.
        let p = roundtrip(&[seg(0x100_0000, 513 * PS)]);
        assert_eq!(list_pages_needed(513, PS), 1);
        assert_eq!(p.lists.len(), 1);
        assert_eq!(p.lists[0].len(), 512);
        assert_eq!(*p.lists[0].last().unwrap(), 0x100_0000 + 512 * PS as u64);
    }

    #[test]
    fn list_chains_when_one_more_entry() {
        // 1 + 513 entries: first page 511 entries + chain, second page 2.
        let p = roundtrip(&[seg(0x100_0000, 514 * PS)]);
        assert_eq!(list_pages_needed(514, PS), 2);
        assert_eq!(p.lists[0].len(), 512);
        assert_eq!(p.lists[0][511], 0xF000_0000 + 2 * PS as u64, "chain pointer");
        assert_eq!(p.lists[1].len(), 2);
    }

    #[test]
    fn chaining_with_offset_across_three_list_pages() {
        let n = 1 + 511 + 511 + 7;
        let p = roundtrip(&[seg(0x100_0010, (n - 1) * PS + 16)]);
        assert_eq!(list_pages_needed(n, PS), 3);
        assert_eq!(p.lists.iter().map(|l| l.len()).collect::<Vec<_>>(), vec![512, 512, 7]);
    }

    #[test]
    fn list_pages_needed_table() {
        assert_eq!(list_pages_needed(1, PS), 0);
        assert_eq!(list_pages_needed(2, PS), 0);
        assert_eq!(list_pages_needed(3, PS), 1);
        assert_eq!(list_pages_needed(1 + 512, PS), 1);
        assert_eq!(list_pages_needed(1 + 513, PS), 2);
        assert_eq!(list_pages_needed(1 + 511 + 512, PS), 2);
        assert_eq!(list_pages_needed(1 + 511 + 513, PS), 3);
    }

    #[test]
    fn rejects_what_prps_cannot_describe() {
        assert_eq!(entries(&[], PS, 64), Err(Error::BadBuffer));
        assert_eq!(entries(&[seg(0x1002, 8)], PS, 64), Err(Error::BadBuffer));
        // Second segment not page aligned.
        assert_eq!(entries(&[seg(0x1000, PS), seg(0x5200, 512)], PS, 64), Err(Error::BadBuffer));
        // First segment ends mid-page but is followed by another.
        assert_eq!(entries(&[seg(0x1000, 512), seg(0x5000, 512)], PS, 64), Err(Error::BadBuffer));
        // Over the entry limit.
        assert_eq!(entries(&[seg(0x1000, 4 * PS)], PS, 3), Err(Error::BadBuffer));
        // Not enough list pages / misaligned list page.
        let e = entries(&[seg(0x1000, 4 * PS)], PS, 64).unwrap();
        assert_eq!(build(&e, &[], PS), Err(Error::BadBuffer));
        assert_eq!(build(&e, &[BusAddr(0x10)], PS), Err(Error::BadBuffer));
    }
}
