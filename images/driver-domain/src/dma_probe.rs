//! Chooses how devices address our memory, and says why.
//!
//! First the PV-IOMMU interface (hypercall 43): if the hypervisor has it,
//! devices can get their own contexts. Stock Xen answers -ENOSYS (no
//! interface) or -ENODEV (not enabled for us); then a PV domain without
//! auto-translation uses machine frames as bus addresses, which Xen's
//! IOMMU maps 1:1 for a PV domain that owns a passed-through device.

use crate::iommu::Hypercall;
use alloc::format;
use alloc::string::String;
use pv_iommu_client::{Client, Error};

/// The strategy chosen, as a short key and an explanation for the log.
pub fn probe() -> (&'static str, String) {
    let feats = runtime::xen_features().unwrap_or(0);
    let translated = feats & (1 << 2) != 0;
    let mut c = Client::new(Hypercall);
    match c.query_capabilities() {
        Ok(caps) => (
            "pv-iommu",
            format!(
                "PV-IOMMU present: max IOVA {:#x}, {} contexts, flags {:#x}; devices get their own contexts",
                caps.max_iova_addr, caps.max_ctx_no, caps.cap_flags
            ),
        ),
        Err(e) => {
            let why = match e {
                Error::NotImplemented => "this Xen has no PV-IOMMU interface (ENOSYS)",
                Error::NoDevice => "PV-IOMMU is not enabled for this domain (ENODEV)",
                _ => "PV-IOMMU query failed",
            };
            if translated {
                ("bounce", format!("{why}: {e:?}; auto-translated guest without PV-IOMMU: bounce buffers"))
            } else {
                (
                    "machine-frames",
                    format!("{why}: {e:?}; PV guest (XENFEAT_auto_translated_physmap clear): bus address = machine frame, which Xen's IOMMU maps 1:1 for a PV domain with a passed-through device"),
                )
            }
        }
    }
}
