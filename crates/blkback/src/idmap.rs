//! [`IdMap`]: the vbds by device id, as a vector sorted by id. A poll
//! walks every vbd (twice) and looks none up: walking a vector costs a
//! few instructions per vbd, a B-tree's iterator tens; lookups by id
//! (the lifecycle's, off the data path) bisect.

use alloc::vec::Vec;

/// Values by `u32` id, iterated in id order (a map's interface, the
/// part the backend uses).
pub(crate) struct IdMap<V> {
    /// Sorted by id, ids unique.
    items: Vec<(u32, V)>,
}

impl<V> Default for IdMap<V> {
    fn default() -> Self {
        IdMap { items: Vec::new() }
    }
}

impl<V> IdMap<V> {
    fn find(&self, id: u32) -> Result<usize, usize> {
        self.items.binary_search_by_key(&id, |(k, _)| *k)
    }

    /// Records `v` under `id`; returns the value it replaces.
    pub(crate) fn insert(&mut self, id: u32, v: V) -> Option<V> {
        match self.find(id) {
            Ok(i) => Some(core::mem::replace(&mut self.items[i].1, v)),
            Err(i) => {
                self.items.insert(i, (id, v));
                None
            }
        }
    }

    pub(crate) fn get_mut(&mut self, id: &u32) -> Option<&mut V> {
        let i = self.find(*id).ok()?;
        self.items.get_mut(i).map(|(_, v)| v)
    }

    pub(crate) fn remove(&mut self, id: &u32) -> Option<V> {
        let i = self.find(*id).ok()?;
        Some(self.items.remove(i).1)
    }

    pub(crate) fn contains_key(&self, id: &u32) -> bool {
        self.find(*id).is_ok()
    }

    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    /// The values in id order.
    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.items.iter().map(|(_, v)| v)
    }

    /// The values in id order.
    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.items.iter_mut().map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeMap;

    #[test]
    fn behaves_like_a_map() {
        let mut m: IdMap<u32> = IdMap::default();
        let mut b: BTreeMap<u32, u32> = BTreeMap::new();
        for (i, id) in [7u32, 3, 9, 3, 1, 12, 7].into_iter().enumerate() {
            assert_eq!(m.insert(id, i as u32), b.insert(id, i as u32));
        }
        for id in [3u32, 4, 12] {
            assert_eq!(m.remove(&id), b.remove(&id));
        }
        *m.get_mut(&9).unwrap() += 100;
        *b.get_mut(&9).unwrap() += 100;
        assert_eq!(m.get_mut(&4), None);
        assert!(m.contains_key(&1) && !m.contains_key(&3));
        assert_eq!(m.len(), b.len());
        assert!(m.values().copied().eq(b.values().copied()));
        assert!(m.values_mut().map(|v| *v).eq(b.values().copied()));
    }
}
