//! [`ByToken`]: what a caller keeps per request in flight on a device, by
//! the device's [`Token`](crate::block::Token), for the I/O path.
//!
//! A device hands out tokens in rising order (the drivers here count
//! them) and completes mostly in submission order, so a queue in
//! submission order finds a completion's entry at its front; a map (a
//! B-tree) would search and rebalance for every request. Any order of
//! tokens and completions still works: a queue whose tokens stopped
//! rising is searched linearly (bounded by what is in flight) until it
//! empties.

use alloc::collections::VecDeque;

/// Values by token, in submission order, with a map's semantics (a token
/// given again replaces the value under it).
#[derive(Debug)]
pub struct ByToken<V> {
    q: VecDeque<(u64, V)>,
    /// Every token in `q` is larger than the one before it (the order a
    /// device hands them out in): a new larger token cannot be in `q`,
    /// and lookups can bisect.
    ascending: bool,
}

impl<V> Default for ByToken<V> {
    fn default() -> Self {
        ByToken { q: VecDeque::new(), ascending: true }
    }
}

impl<V> ByToken<V> {
    /// Entries held.
    pub fn len(&self) -> usize {
        self.q.len()
    }

    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    /// Where `token` is, if held.
    fn find(&self, token: u64) -> Option<usize> {
        if self.q.front().is_some_and(|(t, _)| *t == token) {
            return Some(0);
        }
        if self.ascending {
            self.q.binary_search_by_key(&token, |(t, _)| *t).ok()
        } else {
            self.q.iter().position(|(t, _)| *t == token)
        }
    }

    /// Records `v` under `token`; returns the value it replaces, if any.
    pub fn insert(&mut self, token: u64, v: V) -> Option<V> {
        match self.q.back() {
            Some((last, _)) if self.ascending && token > *last => {}
            None => self.ascending = true,
            Some((last, _)) => {
                let last = *last;
                if let Some(i) = self.find(token) {
                    return self.q.get_mut(i).map(|e| core::mem::replace(&mut e.1, v));
                }
                self.ascending &= token > last;
            }
        }
        self.q.push_back((token, v));
        None
    }

    /// Takes the value under `token`.
    pub fn remove(&mut self, token: u64) -> Option<V> {
        let i = self.find(token)?;
        let (_, v) = if i == 0 { self.q.pop_front()? } else { self.q.remove(i)? };
        if self.q.is_empty() {
            self.ascending = true;
        }
        Some(v)
    }

    /// Every entry, in submission order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &V)> {
        self.q.iter().map(|(t, v)| (*t, v))
    }

    /// Keeps the entries for which `f` holds (order kept).
    pub fn retain(&mut self, mut f: impl FnMut(u64, &mut V) -> bool) {
        self.q.retain_mut(|(t, v)| f(*t, v));
        if self.q.is_empty() {
            self.ascending = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeMap;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u64, u32),
        Remove(u64),
        Oldest,
        Retain(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..40, any::<u32>()).prop_map(|(t, v)| Op::Insert(t, v)),
            (0u64..40).prop_map(Op::Remove),
            Just(Op::Oldest),
            (1u64..5).prop_map(Op::Retain),
        ]
    }

    proptest! {
        /// Whatever the order of tokens and completions, it is a map.
        #[test]
        fn is_a_map(ops in proptest::collection::vec(op(), 0..200), rising in any::<bool>()) {
            let mut b: ByToken<u32> = ByToken::default();
            let mut m: BTreeMap<u64, u32> = BTreeMap::new();
            let mut next = 0u64;
            for op in ops {
                match op {
                    Op::Insert(t, v) => {
                        // Rising tokens as a driver hands them out, or any.
                        let t = if rising { next += 1; next } else { t };
                        prop_assert_eq!(b.insert(t, v), m.insert(t, v));
                    }
                    Op::Remove(t) => prop_assert_eq!(b.remove(t), m.remove(&t)),
                    Op::Oldest => {
                        let first = b.iter().next().map(|(t, _)| t);
                        if let Some(t) = first {
                            prop_assert_eq!(b.remove(t), m.remove(&t));
                        }
                    }
                    Op::Retain(k) => {
                        b.retain(|t, _| t % k != 0);
                        m.retain(|t, _| t % k != 0);
                    }
                }
                prop_assert_eq!(b.len(), m.len());
                let mut got: Vec<(u64, u32)> = b.iter().map(|(t, v)| (t, *v)).collect();
                got.sort_unstable();
                prop_assert_eq!(got, m.iter().map(|(t, v)| (*t, *v)).collect::<Vec<_>>());
            }
        }
    }
}
