//! Work on the disks, by (vbd id, disk token): the index is, per vbd, its
//! disk's tokens in submission order ([`ByToken`]: a disk completes mostly
//! in that order, so a completion's token is found at the front, no map
//! searched and rebalanced per request); the work itself stays put in a
//! slab, so completions do not move large values around.

use crate::datapath::Work;
use alloc::vec::Vec;
use drivers::inflight::ByToken;

/// Work on a disk: (serial of the ring context that submitted it, the work).
pub(crate) type InFlight<B> = (u64, Work<B>);

/// (vbd id, disk token) → [`InFlight`]. Each vbd has its own disk, whose
/// tokens may collide with another disk's.
pub(crate) struct Tokens<B> {
    /// Per vbd that had work on its disk since the last `retain` (a
    /// handful: found by a scan): its slots by token.
    index: Vec<(u32, ByToken<u32>)>,
    slots: Vec<Option<InFlight<B>>>,
    /// Empty slots (bounded by the most work ever in flight at once).
    free: Vec<u32>,
}

impl<B> Default for Tokens<B> {
    fn default() -> Self {
        Tokens { index: Vec::new(), slots: Vec::new(), free: Vec::new() }
    }
}

impl<B> Tokens<B> {
    pub(crate) fn len(&self) -> usize {
        self.index.iter().map(|(_, q)| q.len()).sum()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.index.iter().all(|(_, q)| q.is_empty())
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
        let i = match self.index.iter().position(|(vid, _)| *vid == key.0) {
            Some(i) => i,
            None => {
                self.index.push((key.0, ByToken::default()));
                self.index.len() - 1
            }
        };
        // A disk's tokens are unique while in flight; one that is not
        // replaces the older work, as a map would.
        if let Some(old) = self.index[i].1.insert(key.1, slot) {
            self.release(old);
        }
    }

    /// Takes the work under `key`.
    pub(crate) fn remove(&mut self, key: &(u32, u64)) -> Option<InFlight<B>> {
        let slot = self.index.iter_mut().find(|(vid, _)| *vid == key.0)?.1.remove(key.1)?;
        let v = self.slots.get_mut(slot as usize)?.take();
        self.free.push(slot);
        v
    }

    /// Work on the disks with its key.
    pub(crate) fn iter(&self) -> impl Iterator<Item = ((u32, u64), &InFlight<B>)> {
        let slots = &self.slots;
        self.index.iter().flat_map(move |(vid, q)| {
            q.iter().filter_map(move |(t, s)| slots.get(*s as usize)?.as_ref().map(|v| ((*vid, t), v)))
        })
    }

    /// Keys of the work on the disks.
    pub(crate) fn keys(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.index.iter().flat_map(|(vid, q)| q.iter().map(move |(t, _)| (*vid, t)))
    }

    /// Keeps the work for which `f(key, serial)` holds; drops the rest (and
    /// the index of vbds left without work).
    pub(crate) fn retain(&mut self, mut f: impl FnMut(&(u32, u64), u64) -> bool) {
        let slots = &mut self.slots;
        let mut gone = Vec::new();
        for (vid, q) in self.index.iter_mut() {
            q.retain(|t, s| {
                let keep =
                    slots.get(*s as usize).and_then(Option::as_ref).is_some_and(|(serial, _)| f(&(*vid, t), *serial));
                if !keep {
                    gone.push(*s);
                }
                keep
            });
        }
        self.index.retain(|(_, q)| !q.is_empty());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::{charge, Budget};
    use crate::datapath::{Reply, Step};

    fn work(id: u64) -> Work<()> {
        let b = Budget::default();
        Work {
            req: Reply::new(id, 0),
            segs: Vec::new(),
            step: Step::Flush,
            buf: None,
            sg: None,
            zc: false,
            exclusive: false,
            group: None,
            bytes: 0,
            submitted: 0,
            _charge: charge(&b, &b, 0),
        }
    }

    #[test]
    fn behaves_like_a_map_whatever_the_completion_order() {
        let mut t: Tokens<()> = Tokens::default();
        let mut model = alloc::collections::BTreeMap::new();
        // Two vbds, tokens that collide across them, completions out of order.
        for (i, key) in [(1, 5), (2, 5), (1, 6), (1, 7), (2, 9), (1, 8)].into_iter().enumerate() {
            t.insert(key, (i as u64, work(i as u64)));
            model.insert(key, i as u64);
        }
        // A token still in flight given again replaces the older work.
        t.insert((1, 6), (99, work(99)));
        model.insert((1, 6), 99);
        assert_eq!(t.len(), model.len());
        for key in [(1, 7), (2, 5), (1, 5), (3, 1), (1, 7)] {
            assert_eq!(t.remove(&key).map(|(s, _)| s), model.remove(&key), "{key:?}");
            assert_eq!(t.len(), model.len());
        }
        let mut keys: Vec<_> = t.keys().collect();
        keys.sort_unstable();
        assert_eq!(keys, model.keys().copied().collect::<Vec<_>>());
        t.retain(|k, serial| k.0 != 1 || serial == 99);
        model.retain(|k, serial| k.0 != 1 || *serial == 99);
        let mut got: Vec<_> = t.iter().map(|(k, (s, _))| (k, *s)).collect();
        got.sort_unstable();
        assert_eq!(got, model.iter().map(|(k, s)| (*k, *s)).collect::<Vec<_>>());
        assert_eq!(t.len(), 2);
        // Slots are reused.
        t.insert((4, 1), (7, work(7)));
        assert!(t.slots.len() <= 7);
        assert_eq!(t.remove(&(4, 1)).map(|(s, _)| s), Some(7));
        assert!(!t.is_empty());
    }
}
