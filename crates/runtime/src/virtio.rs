//! virtio-drivers' `Hal` for Ferrite's virtio devices: one slot holding the
//! adapter state over a [`HalDma`] (the same DMA strategies as NVMe), and
//! the BAR windows the image mapped, which the slot hands out as MMIO.
//!
//! The image installs the mapper once ([`install_dma`]), maps each of the
//! device's memory BARs itself (`pv_map_bar` on Xen PV, `mmio_identity` on
//! PVH) and registers it ([`register_bar`]); virtio-drivers then finds its
//! capability structures inside those windows and nowhere else.

use alloc::vec::Vec;
use core::ptr::NonNull;

use virtio_hal::{HalState, HalStats, MapperSlot, StagingBuffer, VirtioHal};

use super::dev::{DmaBuf, HalDma, Mmio};

impl StagingBuffer for DmaBuf {
    fn stage(bytes: &[u8]) -> Option<Self> {
        let mut b = DmaBuf::zeroed(bytes.len())?;
        b.as_mut().get_mut(..bytes.len())?.copy_from_slice(bytes);
        Some(b)
    }
    fn bytes(&self) -> &[u8] {
        self.as_ref()
    }
}

/// A registered BAR window: machine/physical base, length, virtual base.
#[derive(Clone, Copy)]
struct Window {
    paddr: u64,
    len: u64,
    va: usize,
}

struct Slot {
    hal: spin::Mutex<Option<HalState<HalDma>>>,
    bars: spin::Mutex<Vec<Window>>,
}

// SAFETY: Ferrite runs one CPU and no threads; the locks only guard
// against re-entry. `HalDma` holds raw pointers to memory it owns.
unsafe impl Sync for Slot {}

static SLOT: Slot = Slot { hal: spin::Mutex::new(None), bars: spin::Mutex::new(Vec::new()) };

/// The slot type virtio devices name: `VirtioHal<DeviceSlot>` is their `Hal`.
pub struct DeviceSlot;

/// virtio-drivers' `Hal` for Ferrite's virtio devices.
pub type Hal = VirtioHal<DeviceSlot>;

// SAFETY: the mapper is `HalDma`, whose `region_ptr` returns the start of a
// page-aligned heap allocation of at least the region's length, owned by
// the mapper until `free` and never referenced (it copies by pointer) —
// the `DmaCpuAccess` contract. `mmio` returns only addresses inside a BAR
// window registered with the `Mmio` that maps it; that mapping is kept for
// ever (the `Mmio` is consumed by `register_bar`, and the mapping outlives it:
// `pv_map_bar` windows are never reused, PVH's identity map is permanent).
unsafe impl MapperSlot for DeviceSlot {
    type Mapper = HalDma;

    fn with<R>(f: impl FnOnce(&mut HalState<HalDma>) -> R) -> Option<R> {
        let mut g = SLOT.hal.try_lock()?;
        g.as_mut().map(f)
    }

    fn mmio(paddr: u64, size: usize) -> Option<NonNull<u8>> {
        let end = paddr.checked_add(size as u64)?;
        let bars = SLOT.bars.try_lock()?;
        let w = bars.iter().find(|w| w.paddr <= paddr && end <= w.paddr.saturating_add(w.len))?;
        let va = w.va.checked_add(usize::try_from(paddr - w.paddr).ok()?)?;
        NonNull::new(va as *mut u8)
    }
}

/// Installs the DMA mapper virtio devices use; `false` (and `dma` dropped)
/// if one is installed already.
pub fn install_dma(dma: HalDma) -> bool {
    let mut g = SLOT.hal.lock();
    if g.is_some() {
        return false;
    }
    *g = Some(HalState::new(dma));
    true
}

/// Makes a mapped BAR (at bus/machine address `paddr`) available to virtio
/// devices as MMIO. The mapping is kept for ever.
pub fn register_bar(paddr: u64, regs: Mmio) {
    // Consumed: nothing else can use these registers afterwards.
    let (va, len) = regs.window();
    SLOT.bars.lock().push(Window { paddr, len: len as u64, va });
}

/// The adapter's counters, and the live regions and shares.
pub fn stats() -> Option<(HalStats, usize, usize)> {
    DeviceSlot::with(|s| (s.stats(), s.live_regions(), s.live_shares()))
}
