//! Ring memory made of separately mapped pages.

use crate::{RingMem, PAGE_SIZE};
use alloc::vec::Vec;
use core::ops::Range;

/// A multi-page ring: `pages` mapped one by one (each ring-ref is its own
/// grant), seen as one window of `pages.len() * 4096` bytes. Accesses that
/// cross a page boundary are split.
#[derive(Debug)]
pub struct PagesMem<P: RingMem> {
    pages: Vec<P>,
}

impl<P: RingMem> PagesMem<P> {
    /// The pages in ring order (each `PAGE_SIZE` bytes).
    pub fn new(pages: Vec<P>) -> Self {
        Self { pages }
    }

    /// The pages in ring order.
    pub fn pages(&self) -> &[P] {
        &self.pages
    }

    /// Calls `f(page, offset in page, range of the caller's buffer)` for
    /// each page piece of `off..off + len`. Bounded: each round moves at
    /// least one byte.
    fn split(&self, off: usize, len: usize, mut f: impl FnMut(&P, usize, Range<usize>)) {
        let mut done = 0;
        while done < len {
            let at = off + done;
            let (page, in_page) = (at / PAGE_SIZE, at % PAGE_SIZE);
            let n = (PAGE_SIZE - in_page).min(len - done);
            f(&self.pages[page], in_page, done..done + n);
            done += n;
        }
    }
}

impl<P: RingMem> RingMem for PagesMem<P> {
    fn len(&self) -> usize {
        self.pages.len() * PAGE_SIZE
    }
    fn load_u32_acquire(&self, off: usize) -> u32 {
        // Header fields are 4-byte aligned: never split.
        self.pages[off / PAGE_SIZE].load_u32_acquire(off % PAGE_SIZE)
    }
    fn store_u32_release(&self, off: usize, val: u32) {
        self.pages[off / PAGE_SIZE].store_u32_release(off % PAGE_SIZE, val)
    }
    fn read(&self, off: usize, buf: &mut [u8]) {
        self.split(off, buf.len(), |p, o, r| p.read(o, &mut buf[r]));
    }
    fn write(&self, off: usize, data: &[u8]) {
        self.split(off, data.len(), |p, o, r| p.write(o, &data[r]));
    }
    fn fence(&self) {
        if let Some(p) = self.pages.first() {
            p.fence();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xen::shmem::VecShared;

    #[test]
    fn accesses_straddle_pages() {
        let m = PagesMem::new(alloc::vec![VecShared::new(PAGE_SIZE), VecShared::new(PAGE_SIZE)]);
        assert_eq!(m.len(), 2 * PAGE_SIZE);
        let data: Vec<u8> = (0..108u8).collect();
        m.write(4060, &data);
        let mut back = [0u8; 108];
        m.read(4060, &mut back);
        assert_eq!(&back[..], &data[..]);
        assert_eq!(&m.pages()[0].snapshot()[4060..], &data[..36]);
        assert_eq!(&m.pages()[1].snapshot()[..72], &data[36..]);
        m.store_u32_release(4096 + 8, 0xdead_beef);
        assert_eq!(m.load_u32_acquire(4096 + 8), 0xdead_beef);
        assert_eq!(&m.pages()[1].snapshot()[8..12], &0xdead_beefu32.to_le_bytes());
    }
}
