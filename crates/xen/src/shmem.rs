//! Access to memory shared with another domain (rings, grant pages).
//!
//! Everything read through this trait may be changed by the other side at any
//! moment: callers copy data out once and validate the copy. The real
//! implementation (volatile accesses on a mapped page) lives in `hal`; tests
//! use [`VecShared`], a plain buffer.

use alloc::vec;
use alloc::vec::Vec;

/// A window of shared memory, addressed by byte offset.
///
/// Out-of-range accesses are a caller bug, not guest input: implementations
/// panic on them (the offsets used are constants of the ring layouts).
pub trait SharedMem {
    /// Size of the window in bytes.
    fn len(&self) -> usize;
    /// Whether the window is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Reads a little-endian `u32` with acquire ordering: later reads of the
    /// window are not performed before it (used for producer indices).
    fn load_u32_acquire(&self, off: usize) -> u32;
    /// Writes a `u32` with release ordering: earlier writes to the window are
    /// visible before it (used to publish producer/consumer indices).
    fn store_u32_release(&self, off: usize, val: u32);
    /// Copies `buf.len()` bytes out of the window starting at `off`.
    fn read(&self, off: usize, buf: &mut [u8]);
    /// Copies `data` into the window starting at `off`.
    fn write(&self, off: usize, data: &[u8]);
    /// Full memory barrier (orders a store before a later load).
    fn fence(&self);
}

/// A heap buffer standing in for a shared page in host tests.
///
/// Interior mutability lets a test play both sides of a ring through `&self`.
pub struct VecShared {
    buf: spin::Mutex<Vec<u8>>,
}

impl VecShared {
    /// A zeroed window of `len` bytes.
    pub fn new(len: usize) -> Self {
        Self { buf: spin::Mutex::new(vec![0; len]) }
    }
    /// Snapshot of the whole window (for assertions).
    pub fn snapshot(&self) -> Vec<u8> {
        self.buf.lock().clone()
    }
}

impl SharedMem for VecShared {
    // Fakes are never inlined: `./run.sh bench cpu` excludes their cost by call chain.
    #[inline(never)]
    fn len(&self) -> usize {
        self.buf.lock().len()
    }
    #[inline(never)]
    fn load_u32_acquire(&self, off: usize) -> u32 {
        let b = self.buf.lock();
        u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
    }
    #[inline(never)]
    fn store_u32_release(&self, off: usize, val: u32) {
        self.buf.lock()[off..off + 4].copy_from_slice(&val.to_le_bytes());
    }
    #[inline(never)]
    fn read(&self, off: usize, buf: &mut [u8]) {
        buf.copy_from_slice(&self.buf.lock()[off..off + buf.len()]);
    }
    #[inline(never)]
    fn write(&self, off: usize, data: &[u8]) {
        self.buf.lock()[off..off + data.len()].copy_from_slice(data);
    }
    #[inline(never)]
    fn fence(&self) {
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    }
}

/// Forwards every access through a pointer-like wrapper, so a window can be
/// used through `&`, `Rc` or `Arc` (tests hand one side to a ring under test
/// and keep the other to play the peer).
macro_rules! forward_shared_mem {
    ($($ty:ty),*) => {$(
        impl<T: SharedMem + ?Sized> SharedMem for $ty {
            fn len(&self) -> usize {
                (**self).len()
            }
            fn load_u32_acquire(&self, off: usize) -> u32 {
                (**self).load_u32_acquire(off)
            }
            fn store_u32_release(&self, off: usize, val: u32) {
                (**self).store_u32_release(off, val)
            }
            fn read(&self, off: usize, buf: &mut [u8]) {
                (**self).read(off, buf)
            }
            fn write(&self, off: usize, data: &[u8]) {
                (**self).write(off, data)
            }
            fn fence(&self) {
                (**self).fence()
            }
        }
    )*};
}
forward_shared_mem!(&T, alloc::rc::Rc<T>, alloc::sync::Arc<T>);
