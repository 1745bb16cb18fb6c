//! Host-side typed numbers (guest-visible ones come from `pv_iommu_client::types`).

pub use pv_iommu_client::types::{CtxNo, Dfn, DomId, Gfn, PciSbdf};

/// A machine frame number (host physical address >> 12).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Mfn(pub u64);

impl Mfn {
    /// The frame's first byte address.
    pub const fn addr(self) -> u64 {
        self.0 << 12
    }

    /// The frame holding `addr`.
    pub const fn from_addr(addr: u64) -> Self {
        Mfn(addr >> 12)
    }
}

/// A VT-d source id (requester id): bus << 8 | devfn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Sid(pub u16);

impl From<PciSbdf> for Sid {
    fn from(d: PciSbdf) -> Self {
        Sid(d.source_id())
    }
}

impl Sid {
    /// Bus number (root-table index).
    pub fn bus(self) -> u8 {
        (self.0 >> 8) as u8
    }

    /// Device/function (context-table index).
    pub fn devfn(self) -> u8 {
        self.0 as u8
    }
}

/// Time in nanoseconds from an arbitrary origin, passed in by the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Instant(pub u64);

impl Instant {
    /// `self + ns`, saturating.
    pub fn after_ns(self, ns: u64) -> Instant {
        Instant(self.0.saturating_add(ns))
    }
}
