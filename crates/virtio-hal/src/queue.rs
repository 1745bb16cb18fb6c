//! A virtqueue that owns the buffers it lends the device, so drivers use
//! virtio-drivers' [`VirtQueue`] without `unsafe`.
//!
//! `VirtQueue::add` and `pop_used` are `unsafe`: the buffers handed to
//! `add` must stay valid and untouched until `pop_used` takes them back,
//! and `pop_used` must be given the same buffers. [`BufQueue`] keeps that
//! promise by construction: [`BufQueue::add`] takes the buffers by value
//! (`Vec<u8>`: moving a `Vec` does not move its heap bytes) and files them
//! under the token `add` returned; [`BufQueue::pop`] returns them only for
//! a token the device reports *and* that is filed. A token the device
//! makes up is refused ([`QueueError::BadToken`]) without touching the
//! queue, and a used length past the device-writable bytes is reported as
//! such ([`Used::overrun`]), never trusted.
#![allow(unsafe_code)]

use alloc::vec::Vec;

use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::Transport;
use virtio_drivers::Hal;

/// Why a queue operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueError {
    /// Not enough free descriptors: take back used buffers, then retry.
    Full,
    /// No buffers, or an empty one (the device cannot use it).
    Empty,
    /// The device reported a used descriptor id that is not the head of
    /// anything in flight.
    BadToken(u16),
    /// virtio-drivers refused (queue setup, size, ...).
    Virtio(virtio_drivers::Error),
}

impl From<virtio_drivers::Error> for QueueError {
    fn from(e: virtio_drivers::Error) -> Self {
        match e {
            virtio_drivers::Error::QueueFull => QueueError::Full,
            e => QueueError::Virtio(e),
        }
    }
}

/// One chain the device finished with.
#[derive(Debug)]
pub struct Used {
    /// The token [`BufQueue::add`] returned for it.
    pub token: u16,
    /// The device-readable buffers, as given.
    pub readable: Vec<Vec<u8>>,
    /// The device-writable buffers, with what the device wrote.
    pub writable: Vec<Vec<u8>>,
    /// Bytes the device says it wrote, clamped to the writable bytes.
    pub len: usize,
    /// The device claimed more bytes than the writable buffers hold.
    pub overrun: bool,
}

struct Chain {
    readable: Vec<Vec<u8>>,
    writable: Vec<Vec<u8>>,
}

/// A [`VirtQueue`] of `SIZE` descriptors whose in-flight buffers it owns.
pub struct BufQueue<H: Hal, const SIZE: usize> {
    queue: VirtQueue<H, SIZE>,
    idx: u16,
    chains: Vec<Option<Chain>>,
    in_flight: usize,
}

impl<H: Hal, const SIZE: usize> BufQueue<H, SIZE> {
    /// Sets up queue `idx` on `transport` (no indirect descriptors, no
    /// event index).
    pub fn new<T: Transport>(transport: &mut T, idx: u16) -> Result<Self, QueueError> {
        let queue = VirtQueue::new(transport, idx, false, false)?;
        let mut chains = Vec::new();
        chains.resize_with(SIZE, || None);
        Ok(BufQueue { queue, idx, chains, in_flight: 0 })
    }

    /// The queue's index on the device.
    pub fn index(&self) -> u16 {
        self.idx
    }

    /// Free descriptors.
    pub fn free_descriptors(&self) -> usize {
        self.queue.available_desc()
    }

    /// Chains the device holds.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Whether the device wants a notification after [`BufQueue::add`].
    pub fn should_notify(&self) -> bool {
        self.queue.should_notify()
    }

    /// Tells the device not to interrupt (we poll).
    pub fn suppress_interrupts(&mut self) {
        self.queue.set_dev_notify(false);
    }

    /// Lends the device one chain: `readable` buffers first, then
    /// `writable`. On failure the buffers come back with the error.
    #[allow(clippy::type_complexity)]
    pub fn add(
        &mut self,
        readable: Vec<Vec<u8>>,
        mut writable: Vec<Vec<u8>>,
    ) -> Result<u16, (QueueError, Vec<Vec<u8>>, Vec<Vec<u8>>)> {
        if (readable.is_empty() && writable.is_empty()) || readable.iter().chain(writable.iter()).any(|b| b.is_empty())
        {
            return Err((QueueError::Empty, readable, writable));
        }
        if readable.len() + writable.len() > self.queue.available_desc() {
            return Err((QueueError::Full, readable, writable));
        }
        let token = {
            let ins: Vec<&[u8]> = readable.iter().map(|b| b.as_slice()).collect();
            let mut outs: Vec<&mut [u8]> = writable.iter_mut().map(|b| b.as_mut_slice()).collect();
            // SAFETY: the buffers' heap bytes are moved into `self.chains`
            // below (moving a Vec keeps its allocation in place) and nobody
            // touches or frees them until `pop` hands them to `pop_used` for
            // this very token; in-flight buffers are leaked, never freed, if
            // the queue is dropped (see `Drop`). None is empty (checked).
            unsafe { self.queue.add(&ins, &mut outs) }
        };
        match token {
            Ok(t) => match self.chains.get_mut(usize::from(t)) {
                Some(slot @ None) => {
                    *slot = Some(Chain { readable, writable });
                    self.in_flight += 1;
                    Ok(t)
                }
                _ => {
                    // virtio-drivers handed out a token we cannot file: the
                    // device may still use these buffers, so they must
                    // never be freed.
                    core::mem::forget(readable);
                    core::mem::forget(writable);
                    Err((QueueError::BadToken(t), Vec::new(), Vec::new()))
                }
            },
            Err(e) => Err((e.into(), readable, writable)),
        }
    }

    /// Takes back the next chain the device finished, if any.
    pub fn pop(&mut self) -> Option<Result<Used, QueueError>> {
        let token = self.queue.peek_used()?;
        let Some(chain) = self.chains.get_mut(usize::from(token)).and_then(|c| c.take()) else {
            return Some(Err(QueueError::BadToken(token)));
        };
        let Chain { readable, mut writable } = chain;
        let r = {
            let ins: Vec<&[u8]> = readable.iter().map(|b| b.as_slice()).collect();
            let mut outs: Vec<&mut [u8]> = writable.iter_mut().map(|b| b.as_mut_slice()).collect();
            // SAFETY: these are exactly the buffers `add` passed for `token`
            // (filed under it, taken out once), unchanged since.
            unsafe { self.queue.pop_used(token, &ins, &mut outs) }
        };
        match r {
            Ok(len) => {
                self.in_flight -= 1;
                let cap: usize = writable.iter().map(|b| b.len()).sum();
                let claimed = usize::try_from(len).unwrap_or(usize::MAX);
                Some(Ok(Used { token, readable, writable, len: claimed.min(cap), overrun: claimed > cap }))
            }
            Err(e) => {
                // Not popped: the device still owns the chain.
                if let Some(slot) = self.chains.get_mut(usize::from(token)) {
                    *slot = Some(Chain { readable, writable });
                }
                Some(Err(e.into()))
            }
        }
    }
}

impl<H: Hal, const SIZE: usize> Drop for BufQueue<H, SIZE> {
    fn drop(&mut self) {
        // The device may still own in-flight buffers (virtio-drivers'
        // contract: valid until popped): leak them rather than free them.
        for c in self.chains.iter_mut() {
            if let Some(c) = c.take() {
                core::mem::forget(c);
            }
        }
    }
}
