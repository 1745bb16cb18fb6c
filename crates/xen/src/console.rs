//! The PV console ring (`io/console.h`), producer side for `out`.
//!
//! Safe logic over [`SharedMem`]; the hal supplies the mapped page and the
//! event channel. The backend (xenconsoled) consumes `out` and may be slow or
//! absent, so writes never block: they return how much fitted.
#![forbid(unsafe_code)]

use crate::shmem::SharedMem;
use crate::xen_abi::console as c;

/// Writer for the console page's output ring.
pub struct ConsoleRing<M: SharedMem> {
    mem: M,
}

/// What a write did.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum WriteOutcome {
    /// This many bytes were queued.
    Queued(usize),
    /// The indices are inconsistent (`prod - cons > size`): the ring is
    /// broken; nothing was written.
    Broken,
}

impl<M: SharedMem> ConsoleRing<M> {
    /// Wraps a mapped console page.
    pub fn new(mem: M) -> Self {
        assert!(mem.len() >= c::OUT_PROD + 4, "console page too small");
        Self { mem }
    }

    /// Queues as many bytes of `data` as fit.
    pub fn write(&self, data: &[u8]) -> WriteOutcome {
        // Read the backend's consumer index once; acquire so that our later
        // writes into the ring cannot be reordered before it.
        let cons = self.mem.load_u32_acquire(c::OUT_CONS);
        let mut prod = self.mem.load_u32_acquire(c::OUT_PROD);
        let used = prod.wrapping_sub(cons) as usize;
        if used > c::OUT_SIZE {
            return WriteOutcome::Broken;
        }
        let n = data.len().min(c::OUT_SIZE - used);
        let mut done = 0;
        while done < n {
            let idx = (prod as usize) % c::OUT_SIZE;
            let chunk = (n - done).min(c::OUT_SIZE - idx);
            self.mem.write(c::OUT + idx, &data[done..done + chunk]);
            done += chunk;
            prod = prod.wrapping_add(chunk as u32);
        }
        // Release: the bytes above are visible before the new producer index.
        self.mem.store_u32_release(c::OUT_PROD, prod);
        WriteOutcome::Queued(n)
    }

    /// Bytes written but not yet consumed by the backend.
    pub fn pending(&self) -> usize {
        let cons = self.mem.load_u32_acquire(c::OUT_CONS);
        let prod = self.mem.load_u32_acquire(c::OUT_PROD);
        (prod.wrapping_sub(cons) as usize).min(c::OUT_SIZE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shmem::VecShared;
    use std::sync::Arc;

    /// Plays xenconsoled: consumes everything pending.
    fn drain(page: &VecShared) -> Vec<u8> {
        let cons = page.load_u32_acquire(c::OUT_CONS);
        let prod = page.load_u32_acquire(c::OUT_PROD);
        let mut out = Vec::new();
        let mut i = cons;
        while i != prod {
            let mut b = [0u8];
            page.read(c::OUT + (i as usize % c::OUT_SIZE), &mut b);
            out.push(b[0]);
            i = i.wrapping_add(1);
        }
        page.store_u32_release(c::OUT_CONS, prod);
        out
    }

    #[test]
    fn wraps_and_preserves_bytes() {
        let page = Arc::new(VecShared::new(4096));
        let ring = ConsoleRing::new(page.clone());
        let mut sent = Vec::new();
        let mut got = Vec::new();
        for round in 0..200u32 {
            let msg: Vec<u8> = (0..(round % 97 + 1)).map(|i| (i + round) as u8).collect();
            assert_eq!(ring.write(&msg), WriteOutcome::Queued(msg.len()));
            sent.extend_from_slice(&msg);
            if round % 7 == 0 {
                got.extend(drain(&page));
            }
        }
        got.extend(drain(&page));
        assert_eq!(got, sent);
    }

    #[test]
    fn full_ring_takes_only_what_fits() {
        let page = Arc::new(VecShared::new(4096));
        let ring = ConsoleRing::new(page.clone());
        assert_eq!(ring.write(&[b'x'; 3000]), WriteOutcome::Queued(c::OUT_SIZE));
        assert_eq!(ring.write(b"more"), WriteOutcome::Queued(0));
        assert_eq!(ring.pending(), c::OUT_SIZE);
        drain(&page);
        assert_eq!(ring.write(b"more"), WriteOutcome::Queued(4));
    }

    #[test]
    fn hostile_indices_are_refused() {
        let page = Arc::new(VecShared::new(4096));
        page.store_u32_release(c::OUT_CONS, 10);
        page.store_u32_release(c::OUT_PROD, 5000);
        let ring = ConsoleRing::new(page.clone());
        assert_eq!(ring.write(b"x"), WriteOutcome::Broken);
        assert_eq!(page.load_u32_acquire(c::OUT_PROD), 5000);
    }
}
