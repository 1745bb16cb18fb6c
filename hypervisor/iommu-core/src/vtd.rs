//! Intel VT-d in-memory formats (legacy, non-scalable mode).
//!
//! Section numbers refer to the "Intel Virtualization Technology for
//! Directed I/O Architecture Specification" (rev. 3.x/4.x numbering). Each
//! type is a plain value; reading and writing memory is done elsewhere.

use crate::types::Mfn;

/// Bits 51:12 of an entry: a 4 KiB-aligned host physical address.
pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Entries in one 4 KiB table (root, context or paging).
pub const ENTRIES_PER_TABLE: usize = 512;

/// Root entry, §9.1 (128 bits; 256 per root table, indexed by bus).
///
/// | bits    | field |
/// |---------|-------|
/// | 0       | P: present |
/// | 11:1    | reserved |
/// | 63:12   | CTP: context-table pointer (4 KiB aligned) |
/// | 127:64  | reserved (legacy mode) |
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RootEntry {
    /// Bits 63:0.
    pub lo: u64,
    /// Bits 127:64.
    pub hi: u64,
}

impl RootEntry {
    const P: u64 = 1 << 0;

    /// A present entry pointing at the context table in `ctp`.
    pub fn new(ctp: Mfn) -> Self {
        RootEntry { lo: (ctp.addr() & ADDR_MASK) | Self::P, hi: 0 }
    }

    /// P bit.
    pub fn present(self) -> bool {
        self.lo & Self::P != 0
    }

    /// Context-table pointer.
    pub fn ctp(self) -> Mfn {
        Mfn::from_addr(self.lo & ADDR_MASK)
    }

    /// Reserved bits set (fault reason 0xA).
    pub fn reserved_set(self) -> bool {
        self.lo & 0xffe != 0 || self.hi != 0
    }
}

/// Translation type of a context entry (§9.3, bits 3:2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TranslationType {
    /// 00b: untranslated requests only, via the second-level tables.
    Untranslated = 0,
    /// 01b: untranslated and translated requests (device-TLB / ATS).
    DeviceTlb = 1,
    /// 10b: pass-through (never used here: it would expose all of memory).
    PassThrough = 2,
}

/// Address width of a context (§9.3 AW field; CAP.SAGAW §10.4.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddrWidth {
    /// AW=001b: 39-bit, 3-level second-level table.
    Aw39 = 1,
    /// AW=010b: 48-bit, 4-level second-level table.
    Aw48 = 2,
}

impl AddrWidth {
    /// Paging levels.
    pub fn levels(self) -> u8 {
        match self {
            AddrWidth::Aw39 => 3,
            AddrWidth::Aw48 => 4,
        }
    }

    /// Input address bits.
    pub fn bits(self) -> u32 {
        12 + 9 * self.levels() as u32
    }

    /// Decodes the AW field.
    pub fn from_field(v: u64) -> Option<Self> {
        match v {
            1 => Some(AddrWidth::Aw39),
            2 => Some(AddrWidth::Aw48),
            _ => None,
        }
    }
}

/// Context entry, §9.3 (128 bits; 256 per context table, indexed by devfn).
///
/// | bits    | field |
/// |---------|-------|
/// | 0       | P: present |
/// | 1       | FPD: fault processing disable |
/// | 3:2     | TT: translation type |
/// | 11:4    | reserved |
/// | 63:12   | SLPTPTR: second-level page-table pointer |
/// | 66:64   | AW: address width (001b 39-bit, 010b 48-bit) |
/// | 70:67   | ignored |
/// | 71      | reserved |
/// | 87:72   | DID: domain identifier (tags IOTLB entries) |
/// | 127:88  | reserved |
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContextEntry {
    /// Bits 63:0.
    pub lo: u64,
    /// Bits 127:64.
    pub hi: u64,
}

impl ContextEntry {
    const P: u64 = 1 << 0;
    const FPD: u64 = 1 << 1;
    const TT_SHIFT: u32 = 2;
    const DID_SHIFT: u32 = 8; // in `hi`: bit 72 overall

    /// A present entry translating through `table` with domain id `did`.
    /// Faults are reported (FPD clear).
    pub fn new(table: Mfn, aw: AddrWidth, did: u16, tt: TranslationType) -> Self {
        ContextEntry {
            lo: (table.addr() & ADDR_MASK) | ((tt as u64) << Self::TT_SHIFT) | Self::P,
            hi: (aw as u64) | ((did as u64) << Self::DID_SHIFT),
        }
    }

    /// P bit.
    pub fn present(self) -> bool {
        self.lo & Self::P != 0
    }

    /// FPD bit.
    pub fn fault_disable(self) -> bool {
        self.lo & Self::FPD != 0
    }

    /// TT field (None for the reserved encoding 11b).
    pub fn translation_type(self) -> Option<TranslationType> {
        match (self.lo >> Self::TT_SHIFT) & 3 {
            0 => Some(TranslationType::Untranslated),
            1 => Some(TranslationType::DeviceTlb),
            2 => Some(TranslationType::PassThrough),
            _ => None,
        }
    }

    /// SLPTPTR.
    pub fn slptptr(self) -> Mfn {
        Mfn::from_addr(self.lo & ADDR_MASK)
    }

    /// AW field (None if not a supported width).
    pub fn addr_width(self) -> Option<AddrWidth> {
        AddrWidth::from_field(self.hi & 7)
    }

    /// DID.
    pub fn did(self) -> u16 {
        (self.hi >> Self::DID_SHIFT) as u16
    }

    /// Reserved bits set (fault reason 0xB).
    pub fn reserved_set(self) -> bool {
        self.lo & 0xff0 != 0 || self.hi & !0x00ff_ff7f != 0
    }
}

/// Access rights of a second-level mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Perm {
    /// R: reads allowed.
    pub read: bool,
    /// W: writes allowed.
    pub write: bool,
}

impl Perm {
    /// Read and write.
    pub const RW: Perm = Perm { read: true, write: true };
    /// Read only.
    pub const RO: Perm = Perm { read: true, write: false };
    /// Write only.
    pub const WO: Perm = Perm { read: false, write: true };
}

/// Second-level paging entry, §9.8 (64 bits, 512 per table).
///
/// | bits  | field |
/// |-------|-------|
/// | 0     | R: read |
/// | 1     | W: write |
/// | 2     | X: execute (ignored for DMA without ECAP.SLEE) |
/// | 5:3   | EMT (leaf, with snoop control) |
/// | 6     | IPAT (leaf) |
/// | 7     | PS: super-page (2M/1G leaf) in PDE/PDPE; reserved in PML4E |
/// | 10:8  | ignored |
/// | 11    | SNP (leaf) |
/// | 51:12 | ADDR: next table or page frame |
/// | 61:52 | ignored; bit 52 used by this crate: [`SlPte::SW_REF`] |
/// | 62    | TM: transient mapping |
/// | 63    | ignored |
///
/// An entry is present when R or W is set. Non-leaf entries here always
/// carry R|W so the leaf alone decides access.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlPte(pub u64);

impl SlPte {
    /// R.
    pub const R: u64 = 1 << 0;
    /// W.
    pub const W: u64 = 1 << 1;
    /// PS.
    pub const PS: u64 = 1 << 7;
    /// Software bit (ignored by hardware): the mapping holds a page reference
    /// taken by `map_pages`, to be dropped when it is unmapped.
    pub const SW_REF: u64 = 1 << 52;

    /// A pointer to the next-level table.
    pub fn table(next: Mfn) -> Self {
        SlPte((next.addr() & ADDR_MASK) | Self::R | Self::W)
    }

    /// A 4 KiB leaf.
    pub fn leaf(frame: Mfn, perm: Perm, holds_ref: bool) -> Self {
        let mut v = frame.addr() & ADDR_MASK;
        if perm.read {
            v |= Self::R;
        }
        if perm.write {
            v |= Self::W;
        }
        if holds_ref {
            v |= Self::SW_REF;
        }
        SlPte(v)
    }

    /// R or W set.
    pub fn present(self) -> bool {
        self.0 & (Self::R | Self::W) != 0
    }

    /// PS set.
    pub fn superpage(self) -> bool {
        self.0 & Self::PS != 0
    }

    /// R/W rights.
    pub fn perm(self) -> Perm {
        Perm { read: self.0 & Self::R != 0, write: self.0 & Self::W != 0 }
    }

    /// ADDR as a frame.
    pub fn frame(self) -> Mfn {
        Mfn::from_addr(self.0 & ADDR_MASK)
    }

    /// The software reference bit.
    pub fn holds_ref(self) -> bool {
        self.0 & Self::SW_REF != 0
    }
}

/// Granularity of an IOTLB invalidation (§6.5.2.3, G field bits 5:4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IotlbGranularity {
    /// 01b: all entries.
    Global,
    /// 10b: entries tagged with `did`.
    Domain {
        /// Domain id.
        did: u16,
    },
    /// 11b: `2^am` pages at `addr` (aligned to that size) tagged with `did`.
    Page {
        /// Domain id.
        did: u16,
        /// Page-aligned input address.
        addr: u64,
        /// Address mask: log2 of the page count.
        am: u8,
    },
}

/// Granularity of a context-cache invalidation (§6.5.2.1, G bits 5:4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContextGranularity {
    /// 01b: all entries.
    Global,
    /// 10b: entries with `did`.
    Domain {
        /// Domain id.
        did: u16,
    },
    /// 11b: the entry of `sid` (function mask 0), which had `did`.
    Device {
        /// Domain id the entry had.
        did: u16,
        /// Source id.
        sid: u16,
    },
}

/// One queued-invalidation descriptor, decoded (§6.5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inv {
    /// Context-cache invalidate, type 1h (§6.5.2.1).
    Context(ContextGranularity),
    /// IOTLB invalidate, type 2h (§6.5.2.3), with drain reads/writes.
    Iotlb(IotlbGranularity),
    /// Device-TLB invalidate, type 3h (§6.5.2.5). `size` is the S bit:
    /// with S=1 the range is encoded in the low address bits (ATS 2.4:
    /// the first 0 bit from bit 12 up gives the size).
    DevTlb {
        /// Source id of the ATS device.
        sid: u16,
        /// Address (bits 63:12) with the size encoding.
        addr: u64,
        /// S bit.
        size: bool,
    },
    /// Invalidation wait, type 5h (§6.5.2.8): once all earlier descriptors
    /// have completed, writes `data` to `status_addr` (SW=1).
    Wait {
        /// Dword-aligned address written on completion.
        status_addr: u64,
        /// Value written.
        data: u32,
        /// FN: later descriptors wait for this one.
        fence: bool,
    },
}

/// A raw 128-bit descriptor as it sits in the queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InvDesc {
    /// Bits 63:0.
    pub lo: u64,
    /// Bits 127:64.
    pub hi: u64,
}

/// Descriptor type codes (bits 3:0).
pub mod inv_type {
    /// Context-cache invalidate.
    pub const CONTEXT: u64 = 0x1;
    /// IOTLB invalidate.
    pub const IOTLB: u64 = 0x2;
    /// Device-TLB invalidate.
    pub const DEV_TLB: u64 = 0x3;
    /// Invalidation wait.
    pub const WAIT: u64 = 0x5;
}

const G_SHIFT: u32 = 4;
const IOTLB_DW: u64 = 1 << 6;
const IOTLB_DR: u64 = 1 << 7;
const WAIT_SW: u64 = 1 << 5;
const WAIT_FN: u64 = 1 << 6;

impl Inv {
    /// Encodes the descriptor.
    ///
    /// Layouts: context `lo` = type | G<<4 | DID<<16 | SID<<32 | FM<<48;
    /// IOTLB `lo` = type | G<<4 | DW | DR | DID<<16, `hi` = ADDR | IH<<6 | AM;
    /// device-TLB `lo` = type | MIP<<16 (0) | SID<<32, `hi` = ADDR | S;
    /// wait `lo` = type | IF<<4 | SW<<5 | FN<<6 | DATA<<32, `hi` = status address.
    pub fn encode(self) -> InvDesc {
        match self {
            Inv::Context(g) => {
                let (gv, did, sid) = match g {
                    ContextGranularity::Global => (1, 0, 0),
                    ContextGranularity::Domain { did } => (2, did, 0),
                    ContextGranularity::Device { did, sid } => (3, did, sid),
                };
                InvDesc { lo: inv_type::CONTEXT | (gv << G_SHIFT) | ((did as u64) << 16) | ((sid as u64) << 32), hi: 0 }
            }
            Inv::Iotlb(g) => {
                let (gv, did, hi) = match g {
                    IotlbGranularity::Global => (1, 0, 0),
                    IotlbGranularity::Domain { did } => (2, did, 0),
                    IotlbGranularity::Page { did, addr, am } => (3, did, (addr & !0xfff) | (am as u64 & 0x3f)),
                };
                InvDesc { lo: inv_type::IOTLB | (gv << G_SHIFT) | IOTLB_DW | IOTLB_DR | ((did as u64) << 16), hi }
            }
            Inv::DevTlb { sid, addr, size } => {
                InvDesc { lo: inv_type::DEV_TLB | ((sid as u64) << 32), hi: (addr & !0xfff) | size as u64 }
            }
            Inv::Wait { status_addr, data, fence } => InvDesc {
                lo: inv_type::WAIT | WAIT_SW | if fence { WAIT_FN } else { 0 } | ((data as u64) << 32),
                hi: status_addr & !3,
            },
        }
    }
}

impl InvDesc {
    /// Decodes a descriptor; `None` for unknown types, reserved granularity
    /// or set reserved bits (hardware reports an invalidation queue error).
    pub fn decode(self) -> Option<Inv> {
        let g = (self.lo >> G_SHIFT) & 3;
        match self.lo & 0xf {
            inv_type::CONTEXT => {
                if self.hi != 0 || self.lo & 0xfffc_0000_0000_ffc0 != 0 {
                    return None;
                }
                let did = (self.lo >> 16) as u16;
                let sid = (self.lo >> 32) as u16;
                Some(Inv::Context(match g {
                    1 => ContextGranularity::Global,
                    2 => ContextGranularity::Domain { did },
                    3 => ContextGranularity::Device { did, sid },
                    _ => return None,
                }))
            }
            inv_type::IOTLB => {
                if self.lo & 0xffff_ffff_0000_ff00 != 0 || self.hi & 0xf80 != 0 {
                    return None;
                }
                let did = (self.lo >> 16) as u16;
                Some(Inv::Iotlb(match g {
                    1 => IotlbGranularity::Global,
                    2 => IotlbGranularity::Domain { did },
                    3 => IotlbGranularity::Page { did, addr: self.hi & !0xfff, am: (self.hi & 0x3f) as u8 },
                    _ => return None,
                }))
            }
            inv_type::DEV_TLB => {
                if self.lo & 0xffff_0000_ffe0_fff0 != 0 || self.hi & 0xffe != 0 {
                    return None;
                }
                Some(Inv::DevTlb { sid: (self.lo >> 32) as u16, addr: self.hi & !0xfff, size: self.hi & 1 != 0 })
            }
            inv_type::WAIT => {
                // Only status-write waits are modelled; IF (interrupt) is refused.
                if self.lo & WAIT_SW == 0 || self.lo & 0x0000_0000_ffff_ff90 != 0 || self.hi & 3 != 0 {
                    return None;
                }
                Some(Inv::Wait { status_addr: self.hi, data: (self.lo >> 32) as u32, fence: self.lo & WAIT_FN != 0 })
            }
            _ => None,
        }
    }
}

/// Device-TLB range encoding (ATS spec 2.4, used by §6.5.2.5): the pages
/// `[first, first + 2^order)` with `first` aligned to `2^order`.
pub fn devtlb_range(first_pfn: u64, order: u8) -> (u64, bool) {
    if order == 0 {
        return (first_pfn << 12, false);
    }
    // S=1; bits 12..12+order-1 set to 1 except the top one, which stays 0.
    let ones = (1u64 << (order - 1)) - 1;
    ((first_pfn | ones) << 12, true)
}

/// Inverse of [`devtlb_range`]: first page and page count (saturating for
/// "everything").
pub fn devtlb_decode(addr: u64, size: bool) -> (u64, u64) {
    let pfn = addr >> 12;
    if !size {
        return (pfn, 1);
    }
    let ones = (pfn).trailing_ones();
    if ones >= 51 {
        return (0, u64::MAX);
    }
    let count = 2u64 << ones;
    (pfn & !(count - 1), count)
}

/// Fault reasons reported for DMA remapping (§7.2.1 / Appendix A).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultReason {
    /// 1h: root entry not present.
    RootNotPresent = 0x1,
    /// 2h: context entry not present.
    ContextNotPresent = 0x2,
    /// 3h: invalid context entry programming (AW, TT).
    ContextInvalid = 0x3,
    /// 4h: input address above the context's address width.
    AddrBeyondAw = 0x4,
    /// 5h: write without W.
    Write = 0x5,
    /// 6h: read without R.
    Read = 0x6,
    /// 7h: paging entry could not be accessed.
    PagingAccess = 0x7,
    /// 8h: root table could not be accessed.
    RootAccess = 0x8,
    /// 9h: context table could not be accessed.
    ContextAccess = 0x9,
    /// Ah: reserved bits in a root entry.
    RootReserved = 0xa,
    /// Bh: reserved bits in a context entry.
    ContextReserved = 0xb,
    /// Ch: reserved bits in a paging entry.
    PagingReserved = 0xc,
    /// Dh: translated request with a context TT that does not allow it.
    TranslatedBlocked = 0xd,
}

/// One fault recording register, §10.4.14 (128 bits).
///
/// | bits    | field |
/// |---------|-------|
/// | 11:0    | reserved |
/// | 63:12   | FI: faulting page address |
/// | 79:64   | SID |
/// | 95      | PP: PASID present (0 here) |
/// | 103:96  | FR: fault reason |
/// | 123:104 | PV: PASID value |
/// | 125:124 | AT: address type |
/// | 126     | T: 0 write, 1 read |
/// | 127     | F: fault recorded |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultRecord {
    /// Bits 63:0.
    pub lo: u64,
    /// Bits 127:64.
    pub hi: u64,
}

impl FaultRecord {
    /// Records a fault.
    pub fn new(sid: u16, addr: u64, write: bool, reason: FaultReason) -> Self {
        let mut hi = (sid as u64) | ((reason as u64) << 32) | (1 << 63);
        if !write {
            hi |= 1 << 62;
        }
        FaultRecord { lo: addr & !0xfff, hi }
    }

    /// SID.
    pub fn sid(self) -> u16 {
        self.hi as u16
    }

    /// FI.
    pub fn addr(self) -> u64 {
        self.lo & !0xfff
    }

    /// FR.
    pub fn reason(self) -> u8 {
        (self.hi >> 32) as u8
    }

    /// T bit clear.
    pub fn is_write(self) -> bool {
        self.hi & (1 << 62) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_context_layout() {
        let r = RootEntry::new(Mfn(0x12345));
        assert_eq!((r.lo, r.hi), (0x1234_5001, 0));
        assert!(r.present() && !r.reserved_set());
        assert_eq!(r.ctp(), Mfn(0x12345));

        let c = ContextEntry::new(Mfn(0xabcde), AddrWidth::Aw48, 0x1234, TranslationType::DeviceTlb);
        // lo: SLPTPTR | TT=01b<<2 | P ; hi: AW=010b | DID<<8 (bits 87:72)
        assert_eq!(c.lo, 0xabcd_e000 | 0b0100 | 1);
        assert_eq!(c.hi, 0x0012_3402);
        assert_eq!(c.did(), 0x1234);
        assert_eq!(c.addr_width(), Some(AddrWidth::Aw48));
        assert_eq!(c.translation_type(), Some(TranslationType::DeviceTlb));
        assert!(!c.reserved_set() && !c.fault_disable());
        let c3 = ContextEntry::new(Mfn(1), AddrWidth::Aw39, 1, TranslationType::Untranslated);
        assert_eq!(c3.hi & 7, 1);
    }

    #[test]
    fn pte_layout() {
        let p = SlPte::leaf(Mfn(0xff_ffff_ffff), Perm::RW, true);
        assert_eq!(p.0, 0x0010_0000_0000_0000 | 0x000f_ffff_ffff_f000 | 3);
        assert_eq!(p.frame(), Mfn(0xff_ffff_ffff));
        assert!(p.holds_ref() && p.present() && !p.superpage());
        assert_eq!(SlPte::leaf(Mfn(1), Perm::RO, false).0, 0x1001);
        assert_eq!(SlPte::leaf(Mfn(1), Perm::WO, false).0, 0x1002);
        assert_eq!(SlPte::table(Mfn(2)).0, 0x2003);
    }

    #[test]
    fn descriptor_encodings() {
        let d = Inv::Context(ContextGranularity::Device { did: 7, sid: 0x3a10 }).encode();
        assert_eq!(d, InvDesc { lo: 0x0000_3a10_0007_0031, hi: 0 });
        let d = Inv::Iotlb(IotlbGranularity::Page { did: 5, addr: 0x20_0000, am: 3 }).encode();
        assert_eq!(d, InvDesc { lo: 0x0005_00f2, hi: 0x20_0003 });
        let d = Inv::Iotlb(IotlbGranularity::Domain { did: 9 }).encode();
        assert_eq!(d.lo, 0x0009_00e2);
        let d = Inv::Iotlb(IotlbGranularity::Global).encode();
        assert_eq!(d.lo, 0xd2);
        let d = Inv::DevTlb { sid: 0x0100, addr: 0x5000, size: false }.encode();
        assert_eq!(d, InvDesc { lo: 0x0000_0100_0000_0003, hi: 0x5000 });
        let d = Inv::Wait { status_addr: 0x8000_0040, data: 0xdead_beef, fence: false }.encode();
        assert_eq!(d, InvDesc { lo: 0xdead_beef_0000_0025, hi: 0x8000_0040 });
        for inv in [
            Inv::Context(ContextGranularity::Global),
            Inv::Context(ContextGranularity::Domain { did: 3 }),
            Inv::Context(ContextGranularity::Device { did: 3, sid: 0x102 }),
            Inv::Iotlb(IotlbGranularity::Global),
            Inv::Iotlb(IotlbGranularity::Domain { did: 3 }),
            Inv::Iotlb(IotlbGranularity::Page { did: 3, addr: 0x1000, am: 0 }),
            Inv::DevTlb { sid: 9, addr: 0x7000, size: true },
            Inv::Wait { status_addr: 0x1004, data: 1, fence: true },
        ] {
            assert_eq!(inv.encode().decode(), Some(inv));
        }
        assert_eq!(InvDesc { lo: 0x4, hi: 0 }.decode(), None);
        assert_eq!(InvDesc { lo: 0x1, hi: 0 }.decode(), None, "G=00 reserved");
    }

    #[test]
    fn devtlb_size_encoding() {
        assert_eq!(devtlb_range(5, 0), (0x5000, false));
        // 8K at pfn 4: bit 12 = 0.
        assert_eq!(devtlb_range(4, 1), (0x4000, true));
        // 16K at pfn 8: bits 13:12 = 01.
        assert_eq!(devtlb_range(8, 2), (0x9000, true));
        for order in 0..20u8 {
            let first = 3u64 << order;
            let (a, s) = devtlb_range(first, order);
            assert_eq!(devtlb_decode(a, s), (first, 1 << order));
        }
        assert_eq!(devtlb_decode(0x7fff_ffff_ffff_f000, true).1, u64::MAX);
    }

    #[test]
    fn fault_record_layout() {
        let f = FaultRecord::new(0x0310, 0x1234_5678, false, FaultReason::Read);
        assert_eq!(f.lo, 0x1234_5000);
        assert_eq!(f.hi, (1 << 63) | (1 << 62) | (6 << 32) | 0x310);
        assert_eq!((f.sid(), f.reason(), f.is_write()), (0x310, 6, false));
    }
}
