//! Xen PV memory: the pfn ↔ mfn tables and page-table updates by hypercall.
//!
//! A PV guest's page tables hold machine frames and are read-only to it;
//! every change goes through `mmu_update` / `update_va_mapping`, and Xen
//! checks it. Layout of our address space (VIRT_BASE = 0):
//! - `[0, nr_pages * 4K)`: all our pseudo-physical memory, 1:1 (va = pfn << 12).
//!   Xen maps the bootstrap part; [`PvMm::init`] maps the rest.
//! - `[DYN_BASE, DYN_END)`: dynamic mappings (shared info, grant table frames,
//!   mapped foreign grants, device BARs), allocated page by page.

use super::hypercall::{hypercall3, hypercall5, nr};
use alloc::vec::Vec;
use xen::error::XenError;
use xen::types::{Mfn, Pfn};
use xen::xen_abi::{MmuUpdate, StartInfo, DOMID_IO, DOMID_SELF, MMU_NORMAL_PT_UPDATE, UVMF_INVLPG};

/// Read-only machine-to-phys table Xen maps into every PV guest.
const M2P_BASE: u64 = 0xFFFF_8000_0000_0000;
/// Dynamic mapping window.
pub const DYN_BASE: u64 = 0x4000_0000;
pub const DYN_END: u64 = 0x8000_0000;

pub const PAGE: u64 = 4096;
const PTE_PRESENT: u64 = 1 << 0;
const PTE_RW: u64 = 1 << 1;
const PTE_USER: u64 = 1 << 2;
const PTE_PWT: u64 = 1 << 3;
const PTE_PCD: u64 = 1 << 4;
const PTE_ACCESSED: u64 = 1 << 5;
const PTE_DIRTY: u64 = 1 << 6;
const PTE_ADDR: u64 = 0x000F_FFFF_FFFF_F000;
/// Flags of a normal writable data page.
pub const PTE_DATA_RW: u64 = PTE_PRESENT | PTE_RW | PTE_USER | PTE_ACCESSED | PTE_DIRTY;
/// Flags of a read-only page (page-table pages must be mapped like this).
pub const PTE_DATA_RO: u64 = PTE_PRESENT | PTE_USER | PTE_ACCESSED;
/// Flags of an uncached device (MMIO) page.
pub const PTE_MMIO: u64 = PTE_DATA_RW | PTE_PCD | PTE_PWT;
/// Flags of a page-table entry pointing to a lower-level table.
const PTE_TABLE: u64 = PTE_PRESENT | PTE_RW | PTE_USER | PTE_ACCESSED;

/// Why a memory operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmError {
    /// Xen refused the update.
    Xen(XenError),
    /// No free frames left.
    OutOfFrames,
    /// The dynamic window is full.
    OutOfVa,
    /// A pfn outside our memory.
    BadPfn,
}

impl From<XenError> for MmError {
    fn from(e: XenError) -> Self {
        Self::Xen(e)
    }
}

/// The PV memory manager (one per domain, owned by the runtime).
pub struct PvMm {
    p2m_va: u64,
    nr_pages: u64,
    l4_va: u64,
    /// Next never-used frame (bump region).
    next_pfn: u64,
    /// Frames handed back.
    free_frames: Vec<Pfn>,
    /// End of the frames the allocator may hand out.
    end_pfn: u64,
    dyn_next: u64,
    dyn_free: Vec<u64>,
}

fn read_u64(va: u64) -> u64 {
    // SAFETY: every caller passes an address inside the bootstrap mapping,
    // our 1:1 region or the read-only M2P, all mapped readable.
    unsafe { core::ptr::read_volatile(va as *const u64) }
}

/// Our pseudo-physical frame for machine frame `mfn` (M2P).
pub fn mfn_to_pfn(mfn: Mfn) -> Pfn {
    Pfn(read_u64(M2P_BASE + mfn.0 * 8))
}

fn mmu_update(reqs: &[MmuUpdate]) -> Result<(), XenError> {
    if reqs.is_empty() {
        return Ok(());
    }
    let mut done: u32 = 0;
    // SAFETY: `reqs` and `done` are valid for the call; each request only
    // changes entries of our own page tables, which Xen validates.
    let r = unsafe {
        hypercall5(
            nr::MMU_UPDATE,
            reqs.as_ptr() as u64,
            reqs.len() as u64,
            &mut done as *mut u32 as u64,
            DOMID_SELF as u64,
            0,
        )
    };
    XenError::check(r).map(|_| ())
}

/// Changes the mapping of one virtual page (`pte` = machine address | flags,
/// or 0 to unmap) and flushes its TLB entry.
///
/// # Safety
/// Nothing may use the old mapping of `va` afterwards.
pub unsafe fn update_va_mapping(va: u64, pte: u64) -> Result<(), XenError> {
    // SAFETY: caller guarantees the old mapping is unused; Xen validates the new one.
    XenError::check(unsafe { hypercall3(nr::UPDATE_VA_MAPPING, va, pte, UVMF_INVLPG) }).map(|_| ())
}

extern "C" {
    static __image_end: u8;
}

impl PvMm {
    /// Takes over memory from `start_info`: finds the first frame after
    /// everything Xen placed (image, p2m, start info, rings, page tables,
    /// boot stack) and maps all remaining frames 1:1.
    ///
    /// `heap_pages` frames right after that are reserved for the heap; the
    /// returned value includes their start address.
    pub fn init(si: &StartInfo, si_va: u64, boot_rsp: u64, heap_pages: u64) -> Result<(PvMm, u64), MmError> {
        let image_end = core::ptr::addr_of!(__image_end) as u64;
        let nr_pages = si.nr_pages;
        let ends = [
            image_end,
            si_va + PAGE,
            si.pt_base + si.nr_pt_frames * PAGE,
            si.mfn_list + nr_pages * 8,
            (boot_rsp + PAGE - 1) & !(PAGE - 1),
            (mfn_to_pfn(Mfn(si.store_mfn)).0 + 1) * PAGE,
            (mfn_to_pfn(Mfn(si.console_mfn)).0 + 1) * PAGE,
        ];
        let first_free = ends.iter().map(|e| e.div_ceil(PAGE)).max().unwrap_or(0);
        let mut mm = PvMm {
            p2m_va: si.mfn_list,
            nr_pages,
            l4_va: si.pt_base,
            next_pfn: first_free,
            free_frames: Vec::new(),
            end_pfn: nr_pages,
            dyn_next: DYN_BASE,
            dyn_free: Vec::new(),
        };
        if first_free + heap_pages + 64 > nr_pages {
            return Err(MmError::OutOfFrames);
        }
        // Map every frame from first_free up. Xen maps ≥ 512 KiB beyond the
        // bootstrap area, so new page-table frames (taken from next_pfn,
        // which never passes the frame being mapped) are always mapped.
        let mut batch = [MmuUpdate::default(); 64];
        let mut n = 0;
        for pfn in first_free..nr_pages {
            let va = pfn * PAGE;
            let l1e = match mm.l1e_maddr_opt(va) {
                Some(a) => a,
                None => {
                    mmu_update(&batch[..n])?;
                    n = 0;
                    mm.l1e_maddr_create(va)?
                }
            };
            if read_u64(mm.l1e_va(va).unwrap_or(0)) & PTE_PRESENT != 0 {
                continue;
            }
            batch[n] =
                MmuUpdate { ptr: l1e | MMU_NORMAL_PT_UPDATE, val: (mm.pfn_to_mfn(Pfn(pfn))?.0 << 12) | PTE_DATA_RW };
            n += 1;
            if n == batch.len() {
                mmu_update(&batch)?;
                n = 0;
            }
        }
        mmu_update(&batch[..n])?;
        let heap_start = mm.next_pfn * PAGE;
        mm.next_pfn += heap_pages;
        Ok((mm, heap_start))
    }

    /// Total pages of the domain.
    pub fn nr_pages(&self) -> u64 {
        self.nr_pages
    }
    /// Frames not yet handed out.
    pub fn free_pages(&self) -> u64 {
        self.end_pfn - self.next_pfn + self.free_frames.len() as u64
    }

    /// The machine frame backing `pfn` (P2M).
    pub fn pfn_to_mfn(&self, pfn: Pfn) -> Result<Mfn, MmError> {
        if pfn.0 >= self.nr_pages {
            return Err(MmError::BadPfn);
        }
        Ok(Mfn(read_u64(self.p2m_va + pfn.0 * 8) & ((1 << 40) - 1)))
    }

    /// Virtual address of the table at the next level from a present entry.
    fn next_table_va(entry: u64) -> u64 {
        mfn_to_pfn(Mfn((entry & PTE_ADDR) >> 12)).0 * PAGE
    }

    /// Virtual address of the L1 entry for `va`, if its tables exist.
    fn l1e_va(&self, va: u64) -> Option<u64> {
        let mut table = self.l4_va;
        for level in [4u32, 3, 2] {
            let idx = (va >> (12 + 9 * (level - 1))) & 511;
            let e = read_u64(table + idx * 8);
            if e & PTE_PRESENT == 0 {
                return None;
            }
            table = Self::next_table_va(e);
        }
        Some(table + ((va >> 12) & 511) * 8)
    }

    /// Machine address of the L1 entry for `va`, if its tables exist.
    fn l1e_maddr_opt(&self, va: u64) -> Option<u64> {
        let e_va = self.l1e_va(va)?;
        let mfn = self.pfn_to_mfn(Pfn(e_va / PAGE)).ok()?;
        Some((mfn.0 << 12) | (e_va & (PAGE - 1)))
    }

    /// Machine address of the L1 entry for `va`, creating missing tables.
    fn l1e_maddr_create(&mut self, va: u64) -> Result<u64, MmError> {
        let mut table = self.l4_va;
        for level in [4u32, 3, 2] {
            let idx = (va >> (12 + 9 * (level - 1))) & 511;
            let e = read_u64(table + idx * 8);
            if e & PTE_PRESENT != 0 {
                table = Self::next_table_va(e);
                continue;
            }
            // A new table: zero it through its 1:1 mapping, make that
            // mapping read-only (Xen refuses writable page-table pages), then
            // hook it into the parent entry; Xen validates it as a table.
            let pfn = self.alloc_raw_frame()?;
            let new_va = pfn.0 * PAGE;
            // SAFETY: a frame just taken from the allocator, mapped 1:1
            // writable and used by nothing else.
            unsafe { core::ptr::write_bytes(new_va as *mut u8, 0, PAGE as usize) };
            let mfn = self.pfn_to_mfn(pfn)?;
            // SAFETY: the frame's only mapping becomes read-only; nothing
            // writes it through the old mapping any more.
            unsafe { update_va_mapping(new_va, (mfn.0 << 12) | PTE_DATA_RO)? };
            let parent_mfn = self.pfn_to_mfn(Pfn(table / PAGE))?;
            mmu_update(&[MmuUpdate { ptr: (parent_mfn.0 << 12) + idx * 8, val: (mfn.0 << 12) | PTE_TABLE }])?;
            table = new_va;
        }
        let idx = (va >> 12) & 511;
        Ok((self.pfn_to_mfn(Pfn(table / PAGE))?.0 << 12) + idx * 8)
    }

    fn alloc_raw_frame(&mut self) -> Result<Pfn, MmError> {
        if let Some(p) = self.free_frames.pop() {
            return Ok(p);
        }
        if self.next_pfn >= self.end_pfn {
            return Err(MmError::OutOfFrames);
        }
        let p = Pfn(self.next_pfn);
        self.next_pfn += 1;
        Ok(p)
    }

    /// A zeroed frame of ours, mapped 1:1 at `pfn << 12`.
    pub fn alloc_frame(&mut self) -> Result<Pfn, MmError> {
        let p = self.alloc_raw_frame()?;
        // SAFETY: a free frame, mapped 1:1 writable, owned by nobody else.
        unsafe { core::ptr::write_bytes((p.0 * PAGE) as *mut u8, 0, PAGE as usize) };
        Ok(p)
    }

    /// Volatile access to one of our frames through its 1:1 mapping.
    pub fn frame_page(&self, p: Pfn) -> Result<super::page::MappedPage, MmError> {
        if p.0 >= self.nr_pages {
            return Err(MmError::BadPfn);
        }
        // SAFETY: every pfn below nr_pages stays mapped 1:1 (init maps them
        // all and nothing unmaps them); access is volatile, byte-wise.
        Ok(unsafe { super::page::MappedPage::new(p.0 * PAGE) })
    }

    /// Returns a frame from [`alloc_frame`](Self::alloc_frame).
    pub fn free_frame(&mut self, p: Pfn) {
        self.free_frames.push(p);
    }

    /// Reserves one page of the dynamic window, with its L1 table present
    /// (grant maps need the table to exist), but maps nothing there.
    pub fn alloc_va(&mut self) -> Result<u64, MmError> {
        let va = match self.dyn_free.pop() {
            Some(v) => v,
            None => {
                if self.dyn_next >= DYN_END {
                    return Err(MmError::OutOfVa);
                }
                let v = self.dyn_next;
                self.dyn_next += PAGE;
                v
            }
        };
        if self.l1e_maddr_opt(va).is_none() {
            self.l1e_maddr_create(va)?;
        }
        Ok(va)
    }

    /// Returns a dynamic page (its mapping must already be gone).
    pub fn free_va(&mut self, va: u64) {
        self.dyn_free.push(va);
    }

    /// Pages of the dynamic window in use (grant mappings, mapped BARs and
    /// foreign frames): what a leak of mappings would make grow.
    pub fn va_in_use(&self) -> u64 {
        (self.dyn_next - DYN_BASE) / PAGE - self.dyn_free.len() as u64
    }

    /// Maps machine frame `mfn` at a new dynamic address with `flags`.
    pub fn map_mfn(&mut self, mfn: Mfn, flags: u64) -> Result<u64, MmError> {
        let va = self.alloc_va()?;
        // SAFETY: a fresh dynamic page nobody uses.
        if let Err(e) = unsafe { update_va_mapping(va, (mfn.0 << 12) | flags) } {
            self.free_va(va);
            return Err(e.into());
        }
        Ok(va)
    }

    /// Maps `size` bytes of device memory at machine address `maddr`
    /// (page aligned) uncached at consecutive dynamic addresses. Xen checks
    /// that the toolstack gave us access to that I/O memory.
    pub fn map_mmio(&mut self, maddr: u64, size: u64) -> Result<u64, MmError> {
        let pages = size.div_ceil(PAGE);
        if !maddr.is_multiple_of(PAGE) || pages == 0 || self.dyn_next + pages * PAGE > DYN_END {
            return Err(MmError::OutOfVa);
        }
        let base = self.dyn_next;
        self.dyn_next += pages * PAGE;
        for i in 0..pages {
            let va = base + i * PAGE;
            let l1e = match self.l1e_maddr_opt(va) {
                Some(a) => a,
                None => self.l1e_maddr_create(va)?,
            };
            let val = (maddr + i * PAGE) | PTE_MMIO;
            // I/O memory belongs to no domain: name DOMID_IO as its owner.
            let req = [MmuUpdate { ptr: l1e | MMU_NORMAL_PT_UPDATE, val }];
            let mut done: u32 = 0;
            // SAFETY: one update of our own L1 entry for a fresh dynamic
            // page; Xen checks the I/O memory permission.
            let r = unsafe {
                hypercall5(nr::MMU_UPDATE, req.as_ptr() as u64, 1, &mut done as *mut u32 as u64, DOMID_IO as u64, 0)
            };
            XenError::check(r)?;
        }
        Ok(base)
    }

    /// Unmaps a dynamic page mapped by [`map_mfn`](Self::map_mfn).
    ///
    /// # Safety
    /// Nothing may access `va` afterwards.
    pub unsafe fn unmap(&mut self, va: u64) -> Result<(), MmError> {
        // SAFETY: forwarded from the caller.
        unsafe { update_va_mapping(va, 0)? };
        self.free_va(va);
        Ok(())
    }

    /// Whether `va` currently has a present mapping (for tests and checks).
    pub fn is_mapped(&self, va: u64) -> bool {
        self.l1e_va(va).map(|e| read_u64(e) & PTE_PRESENT != 0).unwrap_or(false)
    }
}
