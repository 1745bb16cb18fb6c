//! The buffer budget: disk buffer bytes held by requests, for all rings
//! together and per ring, so that guests cannot size our heap and a ring
//! flooding the backend cannot keep the others waiting (see
//! [`Blkback`](crate::Blkback)).

use alloc::rc::Rc;
use core::cell::Cell;

/// Bytes of disk buffers held; bounded by [`MAX_BUFFER_BYTES`](crate::MAX_BUFFER_BYTES) for all
/// rings so that guests cannot size our heap, and counted per ring too.
#[derive(Clone, Default)]
pub(crate) struct Budget(pub(crate) Rc<Cell<usize>>);

/// One request's buffer bytes, charged to the global budget and to its
/// ring's, returned to both when dropped (the request answered, failed,
/// or dropped at disconnect).
pub(crate) struct Charge {
    budgets: [Budget; 2],
    bytes: usize,
}

impl Budget {
    pub(crate) fn used(&self) -> usize {
        self.0.get()
    }
}

pub(crate) fn charge(global: &Budget, ring: &Budget, bytes: usize) -> Charge {
    for b in [global, ring] {
        b.0.set(b.0.get() + bytes);
    }
    Charge { budgets: [global.clone(), ring.clone()], bytes }
}

impl Drop for Charge {
    fn drop(&mut self) {
        for b in &self.budgets {
            b.0.set(b.0.get().saturating_sub(self.bytes));
        }
    }
}
