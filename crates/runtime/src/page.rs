//! A mapped 4 KiB page accessed with volatile operations.

use core::sync::atomic::{fence, AtomicU32, Ordering};
use xen::shmem::SharedMem;

/// A page mapped at a fixed virtual address, shared with another domain or
/// a device. All accesses are volatile and bounds-checked against 4 KiB.
#[derive(Clone, Copy, Debug)]
pub struct MappedPage {
    va: usize,
}

impl MappedPage {
    /// Wraps the page at `va`.
    ///
    /// # Safety
    /// `va` must be page-aligned and stay mapped (readable, and writable if
    /// written through this handle) for as long as the handle is used.
    pub unsafe fn new(va: u64) -> Self {
        Self { va: va as usize }
    }
    /// The page's virtual address.
    pub fn va(&self) -> u64 {
        self.va as u64
    }
    fn check(&self, off: usize, len: usize) {
        assert!(off.checked_add(len).is_some_and(|e| e <= 4096), "MappedPage access out of range");
    }
    fn atomic(&self, off: usize) -> &AtomicU32 {
        self.check(off, 4);
        assert!(off.is_multiple_of(4), "unaligned index access");
        // SAFETY: in range and 4-byte aligned inside a page mapped for the
        // handle's lifetime (constructor contract); AtomicU32 has u32 layout.
        unsafe { &*((self.va + off) as *const AtomicU32) }
    }
}

impl SharedMem for MappedPage {
    fn len(&self) -> usize {
        4096
    }
    fn load_u32_acquire(&self, off: usize) -> u32 {
        self.atomic(off).load(Ordering::Acquire)
    }
    fn store_u32_release(&self, off: usize, val: u32) {
        self.atomic(off).store(val, Ordering::Release)
    }
    fn read(&self, off: usize, buf: &mut [u8]) {
        self.check(off, buf.len());
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: in range of the mapped page (checked above).
            *b = unsafe { core::ptr::read_volatile((self.va + off + i) as *const u8) };
        }
    }
    fn write(&self, off: usize, data: &[u8]) {
        self.check(off, data.len());
        for (i, b) in data.iter().enumerate() {
            // SAFETY: in range of the mapped page (checked above).
            unsafe { core::ptr::write_volatile((self.va + off + i) as *mut u8, *b) };
        }
    }
    fn fence(&self) {
        fence(Ordering::SeqCst);
    }
}
