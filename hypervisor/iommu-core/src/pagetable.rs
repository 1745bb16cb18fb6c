//! VT-d second-level page tables (§3.7, §9.8), 4 KiB leaves only.
//!
//! A table is a root frame plus a level count (3 for 39-bit, 4 for 48-bit
//! input addresses). Level `l` indexes with dfn bits `9*(l-1) .. 9*l`.
//! Intermediate tables are allocated on demand and freed only with the
//! whole table ([`SlTable::destroy`]); they must not be reused before the
//! IOTLB/paging-structure caches of the owning domain id are invalidated.

use alloc::vec::Vec;

use crate::mem::{PageAlloc, PhysMem};
use crate::types::{Dfn, Mfn};
use crate::vtd::{AddrWidth, Perm, SlPte, ENTRIES_PER_TABLE};

/// Why a page-table operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PtError {
    /// The dfn is already mapped.
    InUse,
    /// The dfn is not mapped.
    NotMapped,
    /// No frame for an intermediate table.
    NoMemory,
    /// The dfn does not fit the address width.
    OutOfRange,
    /// A table entry is malformed or points outside memory (a core bug;
    /// reported rather than followed).
    Corrupt,
}

/// A mapping found by a walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// Device frame.
    pub dfn: Dfn,
    /// Machine frame.
    pub mfn: Mfn,
    /// Rights.
    pub perm: Perm,
    /// Holds a page reference (software bit).
    pub holds_ref: bool,
}

/// Contiguous mappings, as reported by [`SlTable::replay`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MappedRange {
    /// First device frame.
    pub dfn: Dfn,
    /// First machine frame.
    pub mfn: Mfn,
    /// Pages in the range (dfn and mfn both increase by one per page).
    pub count: u64,
    /// Rights of every page.
    pub perm: Perm,
}

/// A second-level page table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlTable {
    root: Mfn,
    aw: AddrWidth,
}

fn index(dfn: u64, level: u8) -> u64 {
    (dfn >> (9 * (level as u32 - 1))) & (ENTRIES_PER_TABLE as u64 - 1)
}

fn entry_addr(table: Mfn, idx: u64) -> u64 {
    table.addr() + idx * 8
}

impl SlTable {
    /// Allocates an empty root table.
    pub fn new<M: PageAlloc + ?Sized>(mem: &mut M, aw: AddrWidth) -> Result<Self, PtError> {
        let root = mem.alloc_zeroed().ok_or(PtError::NoMemory)?;
        Ok(SlTable { root, aw })
    }

    /// Root frame (the context entry's SLPTPTR).
    pub fn root(&self) -> Mfn {
        self.root
    }

    /// Address width.
    pub fn addr_width(&self) -> AddrWidth {
        self.aw
    }

    /// Number of device frames addressable: `2^(9*levels)`.
    pub fn dfn_limit(&self) -> u64 {
        1u64 << (9 * self.aw.levels() as u32)
    }

    fn check(&self, dfn: Dfn) -> Result<(), PtError> {
        if dfn.0 < self.dfn_limit() {
            Ok(())
        } else {
            Err(PtError::OutOfRange)
        }
    }

    /// Follows the table down to the leaf table of `dfn`, allocating
    /// missing tables when `alloc` is given. Returns the leaf table frame.
    fn leaf_table<M: PhysMem + PageAlloc + ?Sized>(
        &self,
        mem: &mut M,
        dfn: u64,
        alloc: bool,
    ) -> Result<Option<Mfn>, PtError> {
        let mut table = self.root;
        let mut level = self.aw.levels();
        while level > 1 {
            let at = entry_addr(table, index(dfn, level));
            let pte = SlPte(mem.read_u64(at).ok_or(PtError::Corrupt)?);
            if pte.present() {
                if pte.superpage() {
                    return Err(PtError::Corrupt);
                }
                table = pte.frame();
            } else if alloc {
                let next = mem.alloc_zeroed().ok_or(PtError::NoMemory)?;
                mem.write_u64(at, SlPte::table(next).0);
                table = next;
            } else {
                return Ok(None);
            }
            level -= 1;
        }
        Ok(Some(table))
    }

    /// Maps `dfn` to `mfn`; fails with [`PtError::InUse`] over a mapping.
    pub fn map<M: PhysMem + PageAlloc + ?Sized>(
        &self,
        mem: &mut M,
        dfn: Dfn,
        mfn: Mfn,
        perm: Perm,
        holds_ref: bool,
    ) -> Result<(), PtError> {
        self.check(dfn)?;
        let table = self.leaf_table(mem, dfn.0, true)?.ok_or(PtError::Corrupt)?;
        let at = entry_addr(table, index(dfn.0, 1));
        let old = SlPte(mem.read_u64(at).ok_or(PtError::Corrupt)?);
        if old.present() {
            return Err(PtError::InUse);
        }
        mem.write_u64(at, SlPte::leaf(mfn, perm, holds_ref).0);
        Ok(())
    }

    /// Clears the mapping of `dfn`, returning what it was.
    pub fn unmap<M: PhysMem + PageAlloc + ?Sized>(&self, mem: &mut M, dfn: Dfn) -> Result<Leaf, PtError> {
        self.check(dfn)?;
        let table = self.leaf_table(mem, dfn.0, false)?.ok_or(PtError::NotMapped)?;
        let at = entry_addr(table, index(dfn.0, 1));
        let old = SlPte(mem.read_u64(at).ok_or(PtError::Corrupt)?);
        if !old.present() {
            return Err(PtError::NotMapped);
        }
        mem.write_u64(at, 0);
        Ok(Leaf { dfn, mfn: old.frame(), perm: old.perm(), holds_ref: old.holds_ref() })
    }

    /// Table pages that mapping every dfn of `dfns` would allocate (a dry
    /// run: nothing is written). Out-of-range dfns count nothing; an
    /// unreadable entry is [`PtError::Corrupt`].
    pub fn tables_needed<M: PhysMem + ?Sized>(&self, mem: &M, dfns: impl Iterator<Item = u64>) -> Result<u64, PtError> {
        // A missing table is named by its level (1 = leaf table) and the dfn
        // bits above what it covers; each is counted once.
        let mut missing: alloc::collections::BTreeSet<(u8, u64)> = alloc::collections::BTreeSet::new();
        for dfn in dfns {
            if self.check(Dfn(dfn)).is_err() {
                continue;
            }
            let mut table = self.root;
            let mut level = self.aw.levels();
            while level > 1 {
                let pte = SlPte(mem.read_u64(entry_addr(table, index(dfn, level))).ok_or(PtError::Corrupt)?);
                if !pte.present() {
                    for l in 1..level {
                        missing.insert((l, dfn >> (9 * l as u32)));
                    }
                    break;
                }
                if pte.superpage() {
                    return Err(PtError::Corrupt);
                }
                table = pte.frame();
                level -= 1;
            }
        }
        Ok(missing.len() as u64)
    }

    /// Table frames (root included): a walk.
    pub fn table_pages<M: PhysMem + ?Sized>(&self, mem: &M) -> Result<u64, PtError> {
        let mut n = 0;
        self.visit(mem, &mut |_| n += 1, &mut |_| {})?;
        Ok(n)
    }

    /// The mapping of `dfn`, if any (read-only walk).
    pub fn lookup<M: PhysMem + ?Sized>(&self, mem: &M, dfn: Dfn) -> Option<Leaf> {
        if self.check(dfn).is_err() {
            return None;
        }
        let mut table = self.root;
        let mut level = self.aw.levels();
        loop {
            let pte = SlPte(mem.read_u64(entry_addr(table, index(dfn.0, level)))?);
            if !pte.present() || pte.superpage() {
                return None;
            }
            if level == 1 {
                return Some(Leaf { dfn, mfn: pte.frame(), perm: pte.perm(), holds_ref: pte.holds_ref() });
            }
            table = pte.frame();
            level -= 1;
        }
    }

    /// Visits every table frame and leaf, depth first in dfn order.
    /// Depth is bounded by the level count; each table has 512 entries.
    fn visit<M: PhysMem + ?Sized>(
        &self,
        mem: &M,
        tables: &mut dyn FnMut(Mfn),
        leaves: &mut dyn FnMut(Leaf),
    ) -> Result<(), PtError> {
        fn rec<M: PhysMem + ?Sized>(
            mem: &M,
            table: Mfn,
            level: u8,
            base: u64,
            tables: &mut dyn FnMut(Mfn),
            leaves: &mut dyn FnMut(Leaf),
        ) -> Result<(), PtError> {
            tables(table);
            for i in 0..ENTRIES_PER_TABLE as u64 {
                let pte = SlPte(mem.read_u64(entry_addr(table, i)).ok_or(PtError::Corrupt)?);
                if !pte.present() {
                    continue;
                }
                let dfn = base | (i << (9 * (level as u32 - 1)));
                if level == 1 {
                    leaves(Leaf { dfn: Dfn(dfn), mfn: pte.frame(), perm: pte.perm(), holds_ref: pte.holds_ref() });
                } else if pte.superpage() {
                    return Err(PtError::Corrupt);
                } else {
                    rec(mem, pte.frame(), level - 1, dfn, tables, leaves)?;
                }
            }
            Ok(())
        }
        rec(mem, self.root, self.aw.levels(), 0, tables, leaves)
    }

    /// Every mapping, in dfn order.
    pub fn leaves<M: PhysMem + ?Sized>(&self, mem: &M) -> Result<Vec<Leaf>, PtError> {
        let mut out = Vec::new();
        self.visit(mem, &mut |_| {}, &mut |l| out.push(l))?;
        Ok(out)
    }

    /// Replay: the mappings coalesced into ranges that are contiguous in both
    /// dfn and mfn with equal rights.
    pub fn replay<M: PhysMem + ?Sized>(&self, mem: &M) -> Result<Vec<MappedRange>, PtError> {
        let mut out: Vec<MappedRange> = Vec::new();
        self.visit(mem, &mut |_| {}, &mut |l| {
            if let Some(last) = out.last_mut() {
                if last.perm == l.perm
                    && last.dfn.0.checked_add(last.count) == Some(l.dfn.0)
                    && last.mfn.0.checked_add(last.count) == Some(l.mfn.0)
                {
                    last.count += 1;
                    return;
                }
            }
            out.push(MappedRange { dfn: l.dfn, mfn: l.mfn, count: 1, perm: l.perm });
        })?;
        Ok(out)
    }

    /// Takes the table apart without freeing anything: returns its table
    /// frames and its leaves. The caller frees the frames once the caches
    /// are invalidated and drops the leaves' references.
    pub fn destroy<M: PhysMem + ?Sized>(self, mem: &M) -> Result<(Vec<Mfn>, Vec<Leaf>), PtError> {
        let mut frames = Vec::new();
        let mut leaves = Vec::new();
        self.visit(mem, &mut |t| frames.push(t), &mut |l| leaves.push(l))?;
        Ok((frames, leaves))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::VecMemory;

    fn mem() -> VecMemory {
        VecMemory::new(Mfn(0x1000), 64)
    }

    #[test]
    fn map_lookup_unmap_4level() {
        let mut m = mem();
        let t = SlTable::new(&mut m, AddrWidth::Aw48).unwrap();
        let top = Dfn((1 << 36) - 1);
        t.map(&mut m, Dfn(0), Mfn(0x55), Perm::RW, true).unwrap();
        t.map(&mut m, top, Mfn(0x66), Perm::RO, false).unwrap();
        assert_eq!(m.allocated(), 1 + 3 + 3, "root + two separate 3-table paths");
        assert_eq!(t.map(&mut m, Dfn(0), Mfn(0x77), Perm::RW, true), Err(PtError::InUse));
        assert_eq!(t.map(&mut m, Dfn(1 << 36), Mfn(1), Perm::RW, true), Err(PtError::OutOfRange));
        assert_eq!(t.lookup(&m, top).map(|l| (l.mfn, l.perm)), Some((Mfn(0x66), Perm::RO)));
        assert_eq!(t.unmap(&mut m, Dfn(0)).map(|l| (l.mfn, l.holds_ref)), Ok((Mfn(0x55), true)));
        assert_eq!(t.unmap(&mut m, Dfn(0)), Err(PtError::NotMapped));
        assert_eq!(t.unmap(&mut m, Dfn(12345)), Err(PtError::NotMapped));
        assert_eq!(t.lookup(&m, Dfn(0)), None);
    }

    #[test]
    fn three_level_limits_and_layout() {
        let mut m = mem();
        let t = SlTable::new(&mut m, AddrWidth::Aw39).unwrap();
        assert_eq!(t.dfn_limit(), 1 << 27);
        // dfn 0x40201: L3 index 1, L2 index 1, L1 index 1.
        t.map(&mut m, Dfn(0x40201), Mfn(0xabc), Perm::WO, false).unwrap();
        let l3 = SlPte(m.read_u64(t.root().addr() + 8).unwrap());
        assert!(l3.present());
        let l2 = SlPte(m.read_u64(l3.frame().addr() + 8).unwrap());
        let l1 = SlPte(m.read_u64(l2.frame().addr() + 8).unwrap());
        assert_eq!(l1.0, 0xabc_000 | SlPte::W);
    }

    #[test]
    fn tables_needed_matches_what_map_allocates() {
        for aw in [AddrWidth::Aw39, AddrWidth::Aw48] {
            let mut m = VecMemory::new(Mfn(0x1000), 256);
            let t = SlTable::new(&mut m, aw).unwrap();
            t.map(&mut m, Dfn(0x10), Mfn(1), Perm::RW, false).unwrap();
            for (first, n) in [(0x11u64, 4u64), (0x1f0, 0x30), (0x4_0000, 1), (0x5ffff, 3), (0x100_0000, 700)] {
                let want = t.tables_needed(&m, first..first + n).unwrap();
                let before = m.allocated();
                for d in first..first + n {
                    t.map(&mut m, Dfn(d), Mfn(2), Perm::RW, false).unwrap();
                }
                assert_eq!((m.allocated() - before) as u64, want, "{aw:?} {first:#x}+{n}");
                assert_eq!(t.tables_needed(&m, first..first + n), Ok(0));
            }
            assert_eq!(t.table_pages(&m), Ok(m.allocated() as u64));
        }
    }

    #[test]
    fn out_of_memory_is_reported() {
        let mut m = VecMemory::new(Mfn(0x1000), 2);
        let t = SlTable::new(&mut m, AddrWidth::Aw39).unwrap();
        assert_eq!(t.map(&mut m, Dfn(0), Mfn(1), Perm::RW, true), Err(PtError::NoMemory));
    }

    #[test]
    fn replay_coalesces() {
        let mut m = mem();
        let t = SlTable::new(&mut m, AddrWidth::Aw39).unwrap();
        for i in 0..600u64 {
            t.map(&mut m, Dfn(0x100 + i), Mfn(0x9000 + i), Perm::RW, true).unwrap();
        }
        t.map(&mut m, Dfn(0x100 + 600), Mfn(0x1), Perm::RW, true).unwrap();
        t.map(&mut m, Dfn(0x100 + 601), Mfn(0x2), Perm::RO, true).unwrap();
        let r = t.replay(&m).unwrap();
        assert_eq!(
            r,
            [
                MappedRange { dfn: Dfn(0x100), mfn: Mfn(0x9000), count: 600, perm: Perm::RW },
                MappedRange { dfn: Dfn(0x100 + 600), mfn: Mfn(1), count: 1, perm: Perm::RW },
                MappedRange { dfn: Dfn(0x100 + 601), mfn: Mfn(2), count: 1, perm: Perm::RO },
            ]
        );
        let before = m.allocated();
        let (frames, leaves) = t.destroy(&m).unwrap();
        assert_eq!(frames.len(), before);
        assert_eq!(leaves.len(), 602);
    }
}
