//! Typed numbers that cross the PV-IOMMU interface. The Xen-wide ids (domains,
//! frames) come from `xen-types`; the ones only this interface has live here.

pub use xen_types::{Dfn, DomId, Gfn};
/// A PV-IOMMU context number within one domain (0 = default context).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct CtxNo(pub u16);

impl CtxNo {
    /// `IOMMU_DEFAULT_CONTEXT`.
    pub const DEFAULT: CtxNo = CtxNo(0);
}

/// A machine PCI address: segment, bus, device/function (as `physdev_pci_device`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PciSbdf {
    /// PCI segment (domain).
    pub seg: u16,
    /// Bus number.
    pub bus: u8,
    /// Device (bits 7..3) and function (bits 2..0).
    pub devfn: u8,
}

impl PciSbdf {
    /// Builds an address from its parts.
    pub const fn new(seg: u16, bus: u8, dev: u8, func: u8) -> Self {
        PciSbdf { seg, bus, devfn: ((dev & 0x1f) << 3) | (func & 7) }
    }

    /// The VT-d source id (requester id): bus in bits 15..8, devfn in 7..0.
    pub const fn source_id(self) -> u16 {
        ((self.bus as u16) << 8) | self.devfn as u16
    }
}

/// Page size the interface speaks in (`pgsize`); VT-d reports 4 KiB only.
pub const PAGE_SIZE_4K: u32 = 1 << 12;
