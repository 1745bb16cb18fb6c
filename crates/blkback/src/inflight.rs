//! Work on the disks, by (vbd id, disk token): the index is a small map of
//! keys to slots, the work itself stays put in a slab, so completions in
//! submission order do not shift large values inside the map's nodes.

use crate::datapath::Work;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;

/// Work on a disk: (serial of the ring context that submitted it, the work).
pub(crate) type InFlight<B> = (u64, Work<B>);

/// (vbd id, disk token) → [`InFlight`]. Each vbd has its own disk, whose
/// tokens may collide with another disk's.
pub(crate) struct Tokens<B> {
    index: BTreeMap<(u32, u64), u32>,
    slots: Vec<Option<InFlight<B>>>,
    /// Empty slots (bounded by the most work ever in flight at once).
    free: Vec<u32>,
}

impl<B> Default for Tokens<B> {
    fn default() -> Self {
        Tokens { index: BTreeMap::new(), slots: Vec::new(), free: Vec::new() }
    }
}

impl<B> Tokens<B> {
    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Records `v` under `key` (work already under `key` is dropped).
    pub(crate) fn insert(&mut self, key: (u32, u64), v: InFlight<B>) {
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some(v);
                s
            }
            None => {
                self.slots.push(Some(v));
                (self.slots.len() - 1) as u32
            }
        };
        if let Some(old) = self.index.insert(key, slot) {
            self.release(old);
        }
    }

    /// Takes the work under `key`.
    pub(crate) fn remove(&mut self, key: &(u32, u64)) -> Option<InFlight<B>> {
        let slot = self.index.remove(key)?;
        let v = self.slots.get_mut(slot as usize)?.take();
        self.free.push(slot);
        v
    }

    /// Work on the disks with its key.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&(u32, u64), &InFlight<B>)> {
        self.index.iter().filter_map(|(k, s)| self.slots.get(*s as usize)?.as_ref().map(|v| (k, v)))
    }

    /// Keys in order.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &(u32, u64)> {
        self.index.keys()
    }

    /// Keeps the work for which `f(key, serial)` holds; drops the rest.
    pub(crate) fn retain(&mut self, mut f: impl FnMut(&(u32, u64), u64) -> bool) {
        let slots = &mut self.slots;
        let mut gone = Vec::new();
        self.index.retain(|k, s| {
            let keep = slots.get(*s as usize).and_then(Option::as_ref).is_some_and(|(serial, _)| f(k, *serial));
            if !keep {
                gone.push(*s);
            }
            keep
        });
        for s in gone {
            self.release(s);
        }
    }

    fn release(&mut self, slot: u32) {
        if let Some(v) = self.slots.get_mut(slot as usize) {
            *v = None;
            self.free.push(slot);
        }
    }
}
