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
use log::{info, warn};
use pv_iommu_client::{Client, Error};
use runtime::dev::{HalDma, Translation};
use runtime::pv::PvMm;
use xen::pcifront::PciAddr;

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

/// How a device reaches our memory: its own PV-IOMMU context when the
/// hypervisor gives us one (`kind` "pv-iommu"), else machine frames
/// (Xen's 1:1 mapping of our memory). A context that cannot be set up
/// leaves the device where it was, on machine frames, and says why.
pub fn device_dma(
    what: &str,
    addr: PciAddr,
    machine: Option<PciAddr>,
    mm: &'static spin::Mutex<PvMm>,
    kind: &str,
    grants: bool,
) -> Result<HalDma, String> {
    match kind {
        "machine-frames" => Ok(HalDma::new(Translation::PvMachineFrames(mm))),
        "pv-iommu" => {
            let r = match machine {
                Some(m) => crate::iommu::CONTEXTS.give_context(m, grants),
                None => Err(String::from("pciback gave no machine address (dev-N)")),
            };
            match r {
                Ok(ctx) => {
                    info!(
                        "{what} {addr} (machine {}): PV-IOMMU context {ctx} of its own, empty until its buffers are mapped",
                        machine.map_or(String::from("?"), |m| format!("{m}"))
                    );
                    Ok(HalDma::new(Translation::PvIommu(mm, ctx)))
                }
                Err(e) => {
                    warn!("{what} {addr}: no PV-IOMMU context ({e}): machine frames (Xen's mapping of all our memory)");
                    Ok(HalDma::new(Translation::PvMachineFrames(mm)))
                }
            }
        }
        other => Err(format!("DMA strategy {other} is not implemented")),
    }
}
