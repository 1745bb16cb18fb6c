//! Typed numbers of the core. The Xen-wide ids and the time type come from
//! `xen-types`, the interface's own from `pv-iommu-abi`; only VT-d's source
//! id is the core's.

pub use pv_iommu_abi::types::{CtxNo, PciSbdf};
pub use xen_types::{Dfn, DomId, Gfn, Instant, Mfn};
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
