//! [`Persistent`]: one ring's persistent grant mappings by grant reference,
//! with the tick of their last use (for least-recently-used release).
//!
//! Every data segment of a persistent ring is looked up here (33 times for
//! a 128 KiB indirect request). The index is a vector of (grant, slot)
//! sorted by grant, searched by bisection: a bounded number of steps
//! whatever grant numbers the guest picks (no hash a guest could collide),
//! each on a small entry. Blkfront hands out a request's grants mostly in
//! order, so a lookup first tries the entry after the last one found. The
//! mappings stay put in a slab. Mapping a new grant shifts the index
//! (at most [`MAX_PERSISTENT_PER_RING`](crate::MAX_PERSISTENT_PER_RING)
//! entries of 8 bytes): rare, a grant is mapped once and kept.

use alloc::vec::Vec;
use xen::gnttab::Mapping;

/// A mapping and the tick of its last use.
pub(crate) type Entry = (Mapping, u64);

/// Persistent grant mappings by grant reference (a map's interface, the
/// part the ring uses).
#[derive(Default)]
pub(crate) struct Persistent {
    /// (grant, slot), sorted by grant, grants unique.
    index: Vec<(u32, u32)>,
    slots: Vec<Option<Entry>>,
    /// Empty slots.
    free: Vec<u32>,
    /// Position in `index` of the last grant found.
    finger: usize,
}

impl Persistent {
    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    /// Position of `gref` in the index (`Err`: where it would go).
    fn find(&mut self, gref: u32) -> Result<usize, usize> {
        // The entry after the last one found, then that one, then bisect.
        for i in [self.finger.wrapping_add(1), self.finger] {
            if self.index.get(i).is_some_and(|(g, _)| *g == gref) {
                self.finger = i;
                return Ok(i);
            }
        }
        let at = self.index.binary_search_by_key(&gref, |(g, _)| *g);
        if let Ok(i) = at {
            self.finger = i;
        }
        at
    }

    pub(crate) fn get_mut(&mut self, gref: u32) -> Option<&mut Entry> {
        let i = self.find(gref).ok()?;
        let slot = self.index.get(i)?.1;
        self.slots.get_mut(slot as usize)?.as_mut()
    }

    pub(crate) fn contains_key(&self, gref: u32) -> bool {
        self.index.binary_search_by_key(&gref, |(g, _)| *g).is_ok()
    }

    /// Records `e` under `gref`; returns the entry it replaces.
    pub(crate) fn insert(&mut self, gref: u32, e: Entry) -> Option<Entry> {
        match self.find(gref) {
            Ok(i) => {
                let slot = self.index.get(i)?.1;
                self.slots.get_mut(slot as usize)?.replace(e)
            }
            Err(i) => {
                let slot = match self.free.pop() {
                    Some(s) => {
                        self.slots[s as usize] = Some(e);
                        s
                    }
                    None => {
                        self.slots.push(Some(e));
                        (self.slots.len() - 1) as u32
                    }
                };
                self.index.insert(i, (gref, slot));
                None
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn remove(&mut self, gref: u32) -> Option<Entry> {
        let i = self.find(gref).ok()?;
        let (_, slot) = self.index.remove(i);
        let e = self.slots.get_mut(slot as usize)?.take();
        self.free.push(slot);
        e
    }

    /// Removes the mappings of `grefs` (those held), in one pass over the
    /// index; returns them in the order of `grefs`.
    pub(crate) fn remove_all(&mut self, grefs: &[u32]) -> Vec<Mapping> {
        let mut out = Vec::with_capacity(grefs.len());
        for g in grefs {
            let Ok(i) = self.index.binary_search_by_key(g, |(k, _)| *k) else { continue };
            let slot = self.index[i].1;
            if let Some((m, _)) = self.slots.get_mut(slot as usize).and_then(Option::take) {
                out.push(m);
                self.free.push(slot);
            }
        }
        let slots = &self.slots;
        self.index.retain(|(_, s)| slots.get(*s as usize).is_some_and(Option::is_some));
        self.finger = 0;
        out
    }

    /// Every mapping with its grant, in grant order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &Entry)> {
        self.index.iter().filter_map(|(g, s)| self.slots.get(*s as usize)?.as_ref().map(|e| (*g, e)))
    }

    /// Takes every mapping out (in grant order), leaving none.
    pub(crate) fn take_all(&mut self) -> Vec<(u32, Entry)> {
        let index = core::mem::take(&mut self.index);
        let mut slots = core::mem::take(&mut self.slots);
        self.free.clear();
        self.finger = 0;
        index.into_iter().filter_map(|(g, s)| slots.get_mut(s as usize)?.take().map(|e| (g, e))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeMap;
    use proptest::prelude::*;
    use xen::types::{DomId, GrantRef};

    fn m(g: u32) -> Mapping {
        Mapping { dom: DomId(1), gref: GrantRef(g), readonly: false, handle: g, addr: 0, bus: None }
    }

    proptest! {
        /// Whatever the grants and the order, it is a map.
        #[test]
        fn is_a_map(ops in proptest::collection::vec((0u8..4, 0u32..48, any::<u64>()), 0..300)) {
            let mut p = Persistent::default();
            let mut b: BTreeMap<u32, Entry> = BTreeMap::new();
            for (op, g, t) in ops {
                match op {
                    0 => prop_assert_eq!(p.insert(g, (m(g), t)), b.insert(g, (m(g), t))),
                    1 => prop_assert_eq!(p.remove(g), b.remove(&g)),
                    2 => {
                        let got = p.get_mut(g).map(|e| { e.1 = t; *e });
                        let want = b.get_mut(&g).map(|e| { e.1 = t; *e });
                        prop_assert_eq!(got, want);
                    }
                    3 if t % 4 == 0 => {
                        // Several at once (some not held, one twice).
                        let gs = [g, g / 2, g, g + 1];
                        let mut want = alloc::vec::Vec::new();
                        for k in gs {
                            if let Some((mm, _)) = b.remove(&k) {
                                want.push(mm);
                            }
                        }
                        prop_assert_eq!(p.remove_all(&gs), want);
                    }
                    _ => prop_assert_eq!(p.contains_key(g), b.contains_key(&g)),
                }
                prop_assert_eq!(p.len(), b.len());
                prop_assert!(p.iter().map(|(g, e)| (g, *e)).eq(b.iter().map(|(g, e)| (*g, *e))));
            }
            prop_assert!(p.take_all().into_iter().eq(core::mem::take(&mut b).into_iter()));
            prop_assert_eq!(p.len(), 0);
        }
    }
}
