//! Xen public ABI structures used by the runtime (x86-64 layouts).
//!
//! Facts from `xen/include/public/`: `xen.h` (start_info, shared_info,
//! vcpu_time_info, mmu_update), `event_channel.h`, `grant_table.h`,
//! `arch-x86/hvm/start_info.h`, `io/console.h`. Each struct is `repr(C)`,
//! has compile-time size/offset asserts and a golden-bytes test below.
#![forbid(unsafe_code)]

use bytemuck::{Pod, Zeroable};
use core::mem::{offset_of, size_of};

/// `struct start_info` as Xen hands it to a PV guest.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct StartInfo {
    pub magic: [u8; 32],
    pub nr_pages: u64,
    /// Machine address of the shared info page.
    pub shared_info: u64,
    pub flags: u32,
    pub _pad0: u32,
    pub store_mfn: u64,
    pub store_evtchn: u32,
    pub _pad1: u32,
    pub console_mfn: u64,
    pub console_evtchn: u32,
    pub _pad2: u32,
    /// Virtual address of the top-level page table.
    pub pt_base: u64,
    pub nr_pt_frames: u64,
    /// Virtual address of the pfn → mfn list.
    pub mfn_list: u64,
    pub mod_start: u64,
    pub mod_len: u64,
    pub cmd_line: [u8; 1024],
    pub first_p2m_pfn: u64,
    pub nr_p2m_frames: u64,
}
const _: () = {
    assert!(size_of::<StartInfo>() == 1168);
    assert!(offset_of!(StartInfo, nr_pages) == 32);
    assert!(offset_of!(StartInfo, flags) == 48);
    assert!(offset_of!(StartInfo, store_mfn) == 56);
    assert!(offset_of!(StartInfo, store_evtchn) == 64);
    assert!(offset_of!(StartInfo, console_mfn) == 72);
    assert!(offset_of!(StartInfo, console_evtchn) == 80);
    assert!(offset_of!(StartInfo, pt_base) == 88);
    assert!(offset_of!(StartInfo, mfn_list) == 104);
    assert!(offset_of!(StartInfo, cmd_line) == 128);
    assert!(offset_of!(StartInfo, first_p2m_pfn) == 1152);
};

/// `start_info.flags`: this is the hardware (control) domain.
pub const SIF_PRIVILEGED: u32 = 1 << 0;
/// `start_info.flags`: this domain is the initial domain.
pub const SIF_INITDOMAIN: u32 = 1 << 1;

impl StartInfo {
    /// The magic string ("xen-3.0-x86_64"), up to its NUL.
    pub fn magic_str(&self) -> &str {
        let end = self.magic.iter().position(|&b| b == 0).unwrap_or(self.magic.len());
        core::str::from_utf8(&self.magic[..end]).unwrap_or("?")
    }
    /// The command line, up to its NUL.
    pub fn cmdline(&self) -> &str {
        let end = self.cmd_line.iter().position(|&b| b == 0).unwrap_or(self.cmd_line.len());
        core::str::from_utf8(&self.cmd_line[..end]).unwrap_or("")
    }
}

/// `struct vcpu_time_info` (32 bytes).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, Default)]
pub struct VcpuTimeInfo {
    pub version: u32,
    pub _pad0: u32,
    pub tsc_timestamp: u64,
    pub system_time: u64,
    pub tsc_to_system_mul: u32,
    pub tsc_shift: i8,
    pub flags: u8,
    pub _pad1: [u8; 2],
}
const _: () = assert!(size_of::<VcpuTimeInfo>() == 32);

impl VcpuTimeInfo {
    /// System time in ns at TSC value `tsc`, per the formula in `xen.h`:
    /// scale the TSC delta by `2^tsc_shift`, multiply by `mul / 2^32`.
    pub fn system_time_at(&self, tsc: u64) -> u64 {
        let mut delta = tsc.wrapping_sub(self.tsc_timestamp);
        if self.tsc_shift >= 0 {
            delta <<= self.tsc_shift as u32;
        } else {
            delta >>= (-(self.tsc_shift as i32)) as u32;
        }
        let scaled = ((delta as u128 * self.tsc_to_system_mul as u128) >> 32) as u64;
        self.system_time.wrapping_add(scaled)
    }
}

/// Offsets inside the shared info page (x86-64: 32 legacy vCPUs of 64 bytes).
pub mod shared_info {
    /// `vcpu_info[0].evtchn_upcall_mask`.
    pub const VCPU0_UPCALL_MASK: usize = 1;
    /// `vcpu_info[0].time`.
    pub const VCPU0_TIME: usize = 32;
    /// `evtchn_pending[64]` (64-bit words).
    pub const EVTCHN_PENDING: usize = 2048;
    /// `evtchn_mask[64]`.
    pub const EVTCHN_MASK: usize = 2560;
    /// Number of 2-level event channel ports (64 × 64).
    pub const NR_PORTS: u32 = 4096;
}

/// `struct mmu_update` (16 bytes).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, Default, PartialEq, Eq)]
pub struct MmuUpdate {
    /// Machine address of the PTE, low bits = command.
    pub ptr: u64,
    pub val: u64,
}
const _: () = assert!(size_of::<MmuUpdate>() == 16);
pub const MMU_NORMAL_PT_UPDATE: u64 = 0;
pub const DOMID_SELF: u16 = 0x7FF0;
/// Owner of I/O memory in page-table updates.
pub const DOMID_IO: u16 = 0x7FF1;
pub const UVMF_INVLPG: u64 = 2;

/// `struct evtchn_alloc_unbound`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, Default, PartialEq, Eq)]
pub struct EvtchnAllocUnbound {
    pub dom: u16,
    pub remote_dom: u16,
    /// Out: the new local port.
    pub port: u32,
}
const _: () = assert!(size_of::<EvtchnAllocUnbound>() == 8);

/// `struct evtchn_bind_interdomain`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, Default, PartialEq, Eq)]
pub struct EvtchnBindInterdomain {
    pub remote_dom: u16,
    pub _pad: u16,
    pub remote_port: u32,
    /// Out: the local port.
    pub local_port: u32,
}
const _: () = {
    assert!(size_of::<EvtchnBindInterdomain>() == 12);
    assert!(offset_of!(EvtchnBindInterdomain, remote_port) == 4);
    assert!(offset_of!(EvtchnBindInterdomain, local_port) == 8);
};

/// `event_channel_op` sub-commands.
pub mod evtchnop {
    pub const BIND_INTERDOMAIN: u64 = 0;
    pub const CLOSE: u64 = 3;
    pub const SEND: u64 = 4;
    pub const ALLOC_UNBOUND: u64 = 6;
    pub const UNMASK: u64 = 9;
}

/// `grant_table_op` sub-commands and flags.
pub mod gnttabop {
    pub const MAP_GRANT_REF: u64 = 0;
    pub const UNMAP_GRANT_REF: u64 = 1;
    pub const SETUP_TABLE: u64 = 2;
    pub const COPY: u64 = 5;
    pub const QUERY_SIZE: u64 = 6;
    pub const SET_VERSION: u64 = 8;
    /// grant_table.h `_GNTMAP_device_map` (bit 0): the mapping is also for
    /// device DMA; Xen returns the page's bus address in `dev_bus_addr`.
    pub const GNTMAP_DEVICE_MAP: u32 = 1 << 0;
    pub const GNTMAP_HOST_MAP: u32 = 1 << 1;
    pub const GNTMAP_READONLY: u32 = 1 << 2;
    pub const GNTCOPY_SOURCE_GREF: u16 = 1 << 0;
    pub const GNTCOPY_DEST_GREF: u16 = 1 << 1;
    /// `grant_entry_v1.flags`.
    pub const GTF_PERMIT_ACCESS: u16 = 1;
    pub const GTF_READONLY: u16 = 1 << 2;
    pub const GTF_READING: u16 = 1 << 3;
    pub const GTF_WRITING: u16 = 1 << 4;
    /// Refs 0..8 are reserved for the toolstack (console, xenstore).
    pub const NR_RESERVED_ENTRIES: u32 = 8;
}

/// `struct gnttab_setup_table`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, Default)]
pub struct GnttabSetupTable {
    pub dom: u16,
    pub _pad0: u16,
    pub nr_frames: u32,
    pub status: i16,
    pub _pad1: [u8; 6],
    pub frame_list: u64,
}
const _: () = {
    assert!(size_of::<GnttabSetupTable>() == 24);
    assert!(offset_of!(GnttabSetupTable, status) == 8);
    assert!(offset_of!(GnttabSetupTable, frame_list) == 16);
};

/// `struct gnttab_map_grant_ref`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, Default, PartialEq, Eq)]
pub struct GnttabMapGrantRef {
    pub host_addr: u64,
    pub flags: u32,
    pub gref: u32,
    pub dom: u16,
    /// Out: GNTST_* status.
    pub status: i16,
    /// Out: handle for unmap.
    pub handle: u32,
    /// Out: bus address for device mappings.
    pub dev_bus_addr: u64,
}
const _: () = {
    assert!(size_of::<GnttabMapGrantRef>() == 32);
    assert!(offset_of!(GnttabMapGrantRef, gref) == 12);
    assert!(offset_of!(GnttabMapGrantRef, dom) == 16);
    assert!(offset_of!(GnttabMapGrantRef, status) == 18);
    assert!(offset_of!(GnttabMapGrantRef, handle) == 20);
    assert!(offset_of!(GnttabMapGrantRef, dev_bus_addr) == 24);
};

/// `struct gnttab_unmap_grant_ref`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, Default, PartialEq, Eq)]
pub struct GnttabUnmapGrantRef {
    pub host_addr: u64,
    pub dev_bus_addr: u64,
    pub handle: u32,
    /// Out: GNTST_* status.
    pub status: i16,
    pub _pad: u16,
}
const _: () = {
    assert!(size_of::<GnttabUnmapGrantRef>() == 24);
    assert!(offset_of!(GnttabUnmapGrantRef, status) == 20);
};

/// One side of a `gnttab_copy`: a grant ref or a local frame, plus offset.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, Default, PartialEq, Eq)]
pub struct GnttabCopyPtr {
    /// `grant_ref_t ref` or `xen_pfn_t gmfn`.
    pub u: u64,
    pub domid: u16,
    pub offset: u16,
    pub _pad: u32,
}

/// `struct gnttab_copy`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, Default, PartialEq, Eq)]
pub struct GnttabCopy {
    pub source: GnttabCopyPtr,
    pub dest: GnttabCopyPtr,
    pub len: u16,
    pub flags: u16,
    /// Out: GNTST_* status.
    pub status: i16,
    pub _pad: u16,
}
const _: () = {
    assert!(size_of::<GnttabCopyPtr>() == 16);
    assert!(size_of::<GnttabCopy>() == 40);
    assert!(offset_of!(GnttabCopy, dest) == 16);
    assert!(offset_of!(GnttabCopy, len) == 32);
    assert!(offset_of!(GnttabCopy, flags) == 34);
    assert!(offset_of!(GnttabCopy, status) == 36);
};

/// `grant_entry_v1` (8 bytes): flags, domid, frame.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, Default, PartialEq, Eq)]
pub struct GrantEntryV1 {
    pub flags: u16,
    pub domid: u16,
    pub frame: u32,
}
const _: () = assert!(size_of::<GrantEntryV1>() == 8);

/// `hvm_start_info` (PVH boot), version 1.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, Default)]
pub struct HvmStartInfo {
    pub magic: u32,
    pub version: u32,
    pub flags: u32,
    pub nr_modules: u32,
    pub modlist_paddr: u64,
    pub cmdline_paddr: u64,
    pub rsdp_paddr: u64,
    pub memmap_paddr: u64,
    pub memmap_entries: u32,
    pub _reserved: u32,
}
const _: () = {
    assert!(size_of::<HvmStartInfo>() == 56);
    assert!(offset_of!(HvmStartInfo, memmap_paddr) == 40);
    assert!(offset_of!(HvmStartInfo, memmap_entries) == 48);
};
pub const HVM_START_MAGIC: u32 = 0x336e_c578;

/// `hvm_memmap_table_entry` (E820-style).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, Default)]
pub struct HvmMemmapEntry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
    pub _reserved: u32,
}
const _: () = assert!(size_of::<HvmMemmapEntry>() == 24);
pub const MEMMAP_RAM: u32 = 1;

/// `struct xencons_interface` offsets (`io/console.h`).
pub mod console {
    pub const IN: usize = 0;
    pub const IN_SIZE: usize = 1024;
    pub const OUT: usize = 1024;
    pub const OUT_SIZE: usize = 2048;
    pub const IN_CONS: usize = 3072;
    pub const IN_PROD: usize = 3076;
    pub const OUT_CONS: usize = 3080;
    pub const OUT_PROD: usize = 3084;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn le(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn golden_map_grant_ref() {
        let m = GnttabMapGrantRef {
            host_addr: 0x1122_3344_5566_7788,
            flags: GNTMAP_FLAGS,
            gref: 0xAABB_CCDD,
            dom: 0x0102,
            status: -3,
            handle: 0x0506_0708,
            dev_bus_addr: 0x0909_0909_0909_0909,
        };
        let expect = le(&[
            &0x1122_3344_5566_7788u64.to_le_bytes(),
            &GNTMAP_FLAGS.to_le_bytes(),
            &0xAABB_CCDDu32.to_le_bytes(),
            &0x0102u16.to_le_bytes(),
            &(-3i16).to_le_bytes(),
            &0x0506_0708u32.to_le_bytes(),
            &[9u8; 8],
        ]);
        assert_eq!(bytemuck::bytes_of(&m), &expect[..]);
    }
    const GNTMAP_FLAGS: u32 = gnttabop::GNTMAP_HOST_MAP | gnttabop::GNTMAP_READONLY;

    #[test]
    fn golden_copy() {
        let c = GnttabCopy {
            source: GnttabCopyPtr { u: 7, domid: 3, offset: 16, _pad: 0 },
            dest: GnttabCopyPtr { u: 0x1234, domid: DOMID_SELF, offset: 0, _pad: 0 },
            len: 4096,
            flags: gnttabop::GNTCOPY_SOURCE_GREF,
            status: 0,
            _pad: 0,
        };
        let b = bytemuck::bytes_of(&c);
        assert_eq!(&b[0..8], &7u64.to_le_bytes());
        assert_eq!(&b[8..12], &[3, 0, 16, 0]);
        assert_eq!(&b[16..24], &0x1234u64.to_le_bytes());
        assert_eq!(&b[24..26], &[0xF0, 0x7F]);
        assert_eq!(&b[32..38], &[0x00, 0x10, 0x01, 0x00, 0, 0]);
    }

    #[test]
    fn golden_evtchn() {
        let a = EvtchnAllocUnbound { dom: DOMID_SELF, remote_dom: 0, port: 0x11 };
        assert_eq!(bytemuck::bytes_of(&a), &[0xF0, 0x7F, 0, 0, 0x11, 0, 0, 0]);
        let b = EvtchnBindInterdomain { remote_dom: 5, _pad: 0, remote_port: 9, local_port: 0 };
        assert_eq!(bytemuck::bytes_of(&b), &[5, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn golden_grant_entry_and_mmu_update() {
        let g = GrantEntryV1 { flags: gnttabop::GTF_PERMIT_ACCESS | gnttabop::GTF_READONLY, domid: 0, frame: 0xDEAD };
        assert_eq!(bytemuck::bytes_of(&g), &[5, 0, 0, 0, 0xAD, 0xDE, 0, 0]);
        let u = MmuUpdate { ptr: 0x1000 | MMU_NORMAL_PT_UPDATE, val: 0x2067 };
        assert_eq!(bytemuck::bytes_of(&u), &le(&[&0x1000u64.to_le_bytes(), &0x2067u64.to_le_bytes()])[..]);
    }

    #[test]
    fn golden_start_info_fields() {
        let mut raw = vec![0u8; size_of::<StartInfo>()];
        raw[..14].copy_from_slice(b"xen-3.0-x86_64");
        raw[32..40].copy_from_slice(&8192u64.to_le_bytes());
        raw[56..64].copy_from_slice(&0x1234u64.to_le_bytes());
        raw[64..68].copy_from_slice(&1u32.to_le_bytes());
        raw[72..80].copy_from_slice(&0x1235u64.to_le_bytes());
        raw[80..84].copy_from_slice(&2u32.to_le_bytes());
        raw[128..131].copy_from_slice(b"a=b");
        let si: StartInfo = bytemuck::pod_read_unaligned(&raw);
        assert_eq!(si.magic_str(), "xen-3.0-x86_64");
        assert_eq!(si.nr_pages, 8192);
        assert_eq!((si.store_mfn, si.store_evtchn), (0x1234, 1));
        assert_eq!((si.console_mfn, si.console_evtchn), (0x1235, 2));
        assert_eq!(si.cmdline(), "a=b");
    }

    #[test]
    fn time_scaling() {
        // mul = 2^31 means 0.5 ns per (shifted) tick; shift -1 halves again.
        let t = VcpuTimeInfo {
            tsc_timestamp: 1000,
            system_time: 5,
            tsc_to_system_mul: 1 << 31,
            tsc_shift: -1,
            ..Default::default()
        };
        assert_eq!(t.system_time_at(1000 + 400), 5 + 100);
        let t2 = VcpuTimeInfo { tsc_shift: 1, ..t };
        assert_eq!(t2.system_time_at(1000 + 400), 5 + 400);
    }

    #[test]
    fn golden_hvm_start_info() {
        let mut raw = vec![0u8; 56];
        raw[0..4].copy_from_slice(&HVM_START_MAGIC.to_le_bytes());
        raw[4..8].copy_from_slice(&1u32.to_le_bytes());
        raw[40..48].copy_from_slice(&0x9000u64.to_le_bytes());
        raw[48..52].copy_from_slice(&3u32.to_le_bytes());
        let h: HvmStartInfo = bytemuck::pod_read_unaligned(&raw);
        assert_eq!((h.magic, h.version, h.memmap_paddr, h.memmap_entries), (HVM_START_MAGIC, 1, 0x9000, 3));
    }
}
