//! An IOVA (device frame) allocator: first fit over a window, with reserved
//! ranges (the MSI window, RMRRs) never handed out.

use alloc::collections::BTreeMap;

/// The MSI window 0xFEE00000–0xFEEFFFFF in frames: reserved in every context.
pub const MSI_WINDOW: (u64, u64) = (0xfee00, 0x100);

/// Free device-frame ranges.
#[derive(Clone, Debug)]
pub struct IovaAllocator {
    /// first frame → frame count, disjoint and not adjacent.
    free: BTreeMap<u64, u64>,
    first: u64,
    end: u64,
    reserved: alloc::vec::Vec<(u64, u64)>,
}

impl IovaAllocator {
    /// Frames `[first, end)` minus every `(first, count)` in `reserved`.
    pub fn new(first: u64, end: u64, reserved: &[(u64, u64)]) -> Self {
        let mut a = IovaAllocator { free: BTreeMap::new(), first, end, reserved: reserved.to_vec() };
        if first < end {
            a.free.insert(first, end - first);
        }
        for &(r, n) in reserved {
            a.carve(r, r.saturating_add(n));
        }
        a
    }

    /// Removes `[lo, hi)` from the free set.
    fn carve(&mut self, lo: u64, hi: u64) {
        let hit: alloc::vec::Vec<(u64, u64)> =
            self.free.range(..hi).filter(|(&s, &n)| s + n > lo).map(|(&s, &n)| (s, n)).collect();
        for (s, n) in hit {
            self.free.remove(&s);
            if s < lo {
                self.free.insert(s, lo - s);
            }
            if s + n > hi {
                self.free.insert(hi, s + n - hi);
            }
        }
    }

    /// `pages` contiguous frames, lowest address first; `None` when no
    /// free range is large enough (or `pages` is 0).
    pub fn alloc(&mut self, pages: u64) -> Option<u64> {
        if pages == 0 {
            return None;
        }
        let (&s, &n) = self.free.iter().find(|(_, &n)| n >= pages)?;
        self.free.remove(&s);
        if n > pages {
            self.free.insert(s + pages, n - pages);
        }
        Some(s)
    }

    /// Returns `[first, first + pages)`. Refuses (false) a range outside the
    /// window or overlapping free space: a double free is a caller bug and
    /// must not corrupt the allocator.
    pub fn free(&mut self, first: u64, pages: u64) -> bool {
        let Some(end) = first.checked_add(pages) else {
            return false;
        };
        if pages == 0 || first < self.first || end > self.end {
            return false;
        }
        if self.free.range(..end).any(|(&s, &n)| s + n > first) {
            return false;
        }
        if self.reserved.iter().any(|&(r, n)| r < end && first < r.saturating_add(n)) {
            return false;
        }
        let mut lo = first;
        let mut n = pages;
        if let Some((&ps, &pn)) = self.free.range(..first).next_back() {
            if ps + pn == first {
                self.free.remove(&ps);
                lo = ps;
                n += pn;
            }
        }
        if let Some(&nn) = self.free.get(&end) {
            self.free.remove(&end);
            n += nn;
        }
        self.free.insert(lo, n);
        true
    }

    /// Frames currently free.
    pub fn free_pages(&self) -> u64 {
        self.free.values().sum()
    }

    /// True if `frame` could ever be handed out (inside the window, not reserved).
    pub fn contains_free(&self, frame: u64) -> bool {
        self.free.range(..=frame).next_back().is_some_and(|(&s, &n)| frame < s + n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn skips_the_msi_window() {
        let mut a = IovaAllocator::new(0xfed00, 0x100000, &[MSI_WINDOW]);
        assert_eq!(a.alloc(0x80), Some(0xfed00));
        // 0x100 frames do not fit below 0xfee00 any more: next fit is above.
        assert_eq!(a.alloc(0x100), Some(0xfef00));
        assert_eq!(a.alloc(0x80), Some(0xfed80));
        assert!(!a.contains_free(0xfee42));
        assert!(a.free(0xfed00, 0x80));
        assert!(!a.free(0xfed00, 0x80), "double free refused");
        assert!(!a.free(0xfee00, 1), "reserved frames are not ours to free");
        assert!(a.free(0xfed80, 0x80));
        assert!(a.free(0xfef00, 0x100));
        assert_eq!(a.free_pages(), 0x100000 - 0xfed00 - 0x100);
    }

    proptest! {
        /// Against a model: allocations never overlap each other or the
        /// reserved range, stay in the window, and freeing restores the count.
        #[test]
        fn model(ops in proptest::collection::vec((0u8..3, 1u64..40), 1..200)) {
            let (first, end) = (0xfed00u64, 0xff000u64);
            let mut a = IovaAllocator::new(first, end, &[MSI_WINDOW]);
            let total = a.free_pages();
            let mut live: Vec<(u64, u64)> = Vec::new();
            for (op, n) in ops {
                if op < 2 {
                    if let Some(s) = a.alloc(n) {
                        prop_assert!(s >= first && s + n <= end);
                        prop_assert!(s + n <= MSI_WINDOW.0 || s >= MSI_WINDOW.0 + MSI_WINDOW.1);
                        for &(ls, ln) in &live {
                            prop_assert!(s + n <= ls || ls + ln <= s);
                        }
                        live.push((s, n));
                    }
                } else if !live.is_empty() {
                    let (s, n) = live.remove((n as usize) % live.len());
                    prop_assert!(a.free(s, n));
                }
            }
            for (s, n) in live {
                prop_assert!(a.free(s, n));
            }
            prop_assert_eq!(a.free_pages(), total);
        }
    }
}
