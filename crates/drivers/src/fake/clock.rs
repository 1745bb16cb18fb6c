use alloc::rc::Rc;
use core::cell::Cell;

use crate::hal::{Clock, Nanos};

/// A clock tests move by hand. Each `now()` also advances it by `step`
/// nanoseconds, so spin-waits in the driver reach their deadlines.
#[derive(Clone, Debug)]
pub struct FakeClock {
    now: Rc<Cell<Nanos>>,
    step: Nanos,
}

impl FakeClock {
    pub fn new(step: Nanos) -> Self {
        FakeClock { now: Rc::new(Cell::new(0)), step }
    }
    pub fn advance(&self, ns: Nanos) {
        self.now.set(self.now.get() + ns);
    }
    /// The current time without advancing it.
    pub fn peek(&self) -> Nanos {
        self.now.get()
    }
}

impl Clock for FakeClock {
    #[inline(never)]
    fn now(&self) -> Nanos {
        let t = self.now.get();
        self.now.set(t + self.step);
        t
    }
}
