//! Ferrite's unsafe layer: everything `unsafe` in a guest image.
//!
//! Boot entry points, hypercalls, PV page tables, mapped shared pages, MMIO,
//! the console, time, event channels and grant tables. Each piece hands safe
//! types (the traits of the `xen` and `drivers` crates) to the rest of the
//! system. Built only for the bare-metal target (`x86_64-unknown-none`); the
//! IDT/LAPIC/VT-d helpers of the PVH IOMMU test are behind `selftest`.
#![no_std]
#![cfg(target_os = "none")]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

extern crate alloc;

pub mod boot;
pub mod console;
pub mod dev;
pub mod events;
pub mod grants;
pub mod hypercall;
pub mod iomap;
pub mod page;
pub mod pv;
pub mod pvh;
pub mod time;
pub mod virtio;
#[cfg(feature = "selftest")]
pub mod vtd;

use core::sync::atomic::{AtomicU8, Ordering};
use linked_list_allocator::LockedHeap;
use page::MappedPage;
use pv::PvMm;
use xen::types::Mfn;
use xen::xen_abi::{HvmMemmapEntry, HvmStartInfo, StartInfo, HVM_START_MAGIC, MEMMAP_RAM};

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

/// Bytes of the heap currently allocated.
pub fn heap_used() -> usize {
    HEAP.lock().used()
}

/// How we were booted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Platform {
    Unknown,
    /// Xen PV guest.
    XenPv,
    /// PVH under plain QEMU (tests).
    Pvh,
}

static PLATFORM: AtomicU8 = AtomicU8::new(0);

/// The platform this image booted on.
pub fn platform() -> Platform {
    match PLATFORM.load(Ordering::Relaxed) {
        1 => Platform::XenPv,
        2 => Platform::Pvh,
        _ => Platform::Unknown,
    }
}

/// Heap size on Xen PV (the domain has 32 MiB in all).
pub const PV_HEAP_PAGES: u64 = 2048;
/// Heap size on PVH.
pub const PVH_HEAP_BYTES: u64 = 16 << 20;

static MM: spin::Once<spin::Mutex<PvMm>> = spin::Once::new();

/// What a Xen PV boot hands to the application.
pub struct PvBoot {
    pub start_info: StartInfo,
    pub mm: &'static spin::Mutex<PvMm>,
    pub heap_bytes: u64,
    /// The xenstore ring page and its event channel.
    pub xs_page: MappedPage,
    pub xs_notifier: events::PortNotifier,
    /// Event channels of this domain.
    pub events: events::XenEvents,
}

/// What a PVH boot hands to the application.
pub struct PvhBoot {
    /// The kernel command line (QEMU `-append`).
    pub cmdline: alloc::string::String,
    /// First byte above the heap: free RAM from here to `ram_top`.
    pub free_start: u64,
    pub ram_top: u64,
    pub heap_bytes: u64,
    pub tsc_per_us: u64,
}

/// The boot, as the application's `ferrite_main` receives it.
// Made once per boot and moved once, before the heap exists: boxing the PV
// variant would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Boot {
    Pv(PvBoot),
    Pvh(PvhBoot),
}

extern "Rust" {
    /// Provided by the image crate.
    fn ferrite_main(boot: Boot) -> !;
}

extern "C" {
    static __image_end: u8;
}

/// Xen PV entry (called from `_start` in boot.rs).
#[no_mangle]
extern "C" fn ferrite_pv_start(si_va: u64, boot_rsp: u64) -> ! {
    PLATFORM.store(1, Ordering::Relaxed);
    // SAFETY: Xen passes the virtual address of start_info, mapped in the
    // bootstrap region; we copy it once.
    let si: StartInfo = unsafe { core::ptr::read_volatile(si_va as *const StartInfo) };
    let con_va = pv::mfn_to_pfn(Mfn(si.console_mfn)).0 * pv::PAGE;
    // SAFETY: the console page is part of the bootstrap mapping and stays
    // mapped for the life of the domain.
    console::init_pv(unsafe { MappedPage::new(con_va) }, si.console_evtchn);
    let (mm, heap_start) = match PvMm::init(&si, si_va, boot_rsp, PV_HEAP_PAGES) {
        Ok(x) => x,
        Err(e) => {
            console::print(format_args!("ferrite: memory setup failed: {e:?}\n"));
            crash();
        }
    };
    let heap_bytes = PV_HEAP_PAGES * pv::PAGE;
    // SAFETY: [heap_start, +heap_bytes) are frames PvMm::init mapped 1:1
    // writable and reserved for the heap; nothing else uses them.
    unsafe { HEAP.lock().init(heap_start as *mut u8, heap_bytes as usize) };
    let mm = MM.call_once(|| spin::Mutex::new(mm));
    let shared_info_va = match mm.lock().map_mfn(Mfn(si.shared_info >> 12), pv::PTE_DATA_RW) {
        Ok(va) => va,
        Err(e) => {
            console::print(format_args!("ferrite: cannot map shared info: {e:?}\n"));
            crash();
        }
    };
    time::set_shared_info(shared_info_va);
    let store_va = pv::mfn_to_pfn(Mfn(si.store_mfn)).0 * pv::PAGE;
    // SAFETY: the xenstore page is in the bootstrap mapping for the domain's
    // life; the shared info page was mapped above and is never unmapped.
    let (xs_page, xs_notifier, events) = unsafe {
        (
            MappedPage::new(store_va),
            events::PortNotifier::new(shared_info_va, xen::types::EvtchnPort(si.store_evtchn)),
            events::XenEvents::new(shared_info_va),
        )
    };
    let boot = Boot::Pv(PvBoot { start_info: si, mm, heap_bytes, xs_page, xs_notifier, events });
    // SAFETY: the image crate defines `ferrite_main` with this signature.
    unsafe { ferrite_main(boot) }
}

/// PVH entry (called from `pvh_start32` after the switch to long mode).
#[no_mangle]
extern "C" fn ferrite_pvh_start(info_paddr: u64) -> ! {
    PLATFORM.store(2, Ordering::Relaxed);
    console::init_serial();
    // SAFETY: the PVH loader passes the physical address of hvm_start_info;
    // we identity-map the low 4 GiB.
    let info: HvmStartInfo = unsafe { core::ptr::read_volatile(info_paddr as *const HvmStartInfo) };
    if info.magic != HVM_START_MAGIC {
        console::print(format_args!("ferrite: bad hvm_start_info magic {:#x}\n", info.magic));
        pvh::exit(pvh::EXIT_FAILURE);
    }
    let image_end = core::ptr::addr_of!(__image_end) as u64;
    let heap_start = (image_end + 0xFFFF) & !0xFFFF;
    let mut ram_top = 0u64;
    if info.version >= 1 && info.memmap_paddr != 0 {
        for i in 0..info.memmap_entries.min(128) as u64 {
            // SAFETY: the loader's memory map, inside identity-mapped low memory.
            let e: HvmMemmapEntry =
                unsafe { core::ptr::read_volatile((info.memmap_paddr + i * 24) as *const HvmMemmapEntry) };
            if e.kind == MEMMAP_RAM && e.addr <= heap_start && e.addr + e.size > heap_start {
                ram_top = (e.addr + e.size).min(0xC000_0000);
            }
        }
    }
    if ram_top < heap_start + PVH_HEAP_BYTES {
        console::print(format_args!("ferrite: not enough RAM above the image (top {ram_top:#x})\n"));
        pvh::exit(pvh::EXIT_FAILURE);
    }
    // SAFETY: RAM from the loader's map, above the image, unused.
    unsafe { HEAP.lock().init(heap_start as *mut u8, PVH_HEAP_BYTES as usize) };
    let tsc_per_us = pvh::calibrate_tsc();
    time::set_tsc_rate(tsc_per_us);
    let mut cmdline = alloc::string::String::new();
    if info.cmdline_paddr != 0 && info.cmdline_paddr < 0x1_0000_0000 {
        // Bounded copy of the NUL-terminated string (identity-mapped).
        for i in 0..1024u64 {
            // SAFETY: low memory is identity-mapped; the loader placed the
            // string there; we stop at NUL or 1 KiB.
            let b = unsafe { core::ptr::read_volatile((info.cmdline_paddr + i) as *const u8) };
            if b == 0 {
                break;
            }
            cmdline.push(if b.is_ascii_graphic() || b == b' ' { b as char } else { '?' });
        }
    }
    let boot = Boot::Pvh(PvhBoot {
        cmdline,
        free_start: heap_start + PVH_HEAP_BYTES,
        ram_top,
        heap_bytes: PVH_HEAP_BYTES,
        tsc_per_us,
    });
    // SAFETY: the image crate defines `ferrite_main` with this signature.
    unsafe { ferrite_main(boot) }
}

/// Xen feature flags, submap 0 (`XENVER_get_features`, `features.h`):
/// bit 2 `XENFEAT_auto_translated_physmap` (set for PVH/HVM, clear for PV).
pub fn xen_features() -> Result<u32, xen::error::XenError> {
    // struct xen_feature_info { unsigned int submap_idx; uint32_t submap; }
    let mut info = [0u32; 2];
    // SAFETY: XENVER_get_features (6) fills the 8-byte struct on our stack.
    xen::error::XenError::check(unsafe {
        hypercall::hypercall2(hypercall::nr::XEN_VERSION, 6, info.as_mut_ptr() as u64)
    })?;
    Ok(info[1])
}

/// Bytes of heap in use and free.
pub fn heap_usage() -> (usize, usize) {
    let h = HEAP.lock();
    (h.used(), h.free())
}

/// Powers the domain off cleanly (console drained first). On PVH, exits QEMU.
pub fn poweroff() -> ! {
    console::drain();
    match platform() {
        Platform::Pvh => pvh::exit(pvh::EXIT_SUCCESS),
        _ => {
            let e = hypercall::sched_shutdown(hypercall::sched::POWEROFF);
            console::print(format_args!("ferrite: poweroff refused: {e}\n"));
            crash()
        }
    }
}

/// Ends the domain as crashed (or QEMU with the failure code).
pub fn crash() -> ! {
    console::drain();
    if platform() == Platform::Pvh {
        pvh::exit(pvh::EXIT_FAILURE);
    }
    loop {
        hypercall::sched_shutdown(hypercall::sched::CRASH);
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    console::emergency(format_args!("ferrite: PANIC: {info}\n"));
    crash()
}
