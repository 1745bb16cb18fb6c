//! Toolstack management: quarantine of unowned devices, deassignment, fault
//! reporting, and destroying a domain.
//! Checked through the client and the software VT-d.

mod common;

use common::*;
use iommu_core::iommu::MgmtError;
use iommu_core::types::{CtxNo, Dfn, Gfn, Instant, PciSbdf, Sid};
use iommu_core::vtd::{AddrWidth, FaultReason};
use pv_iommu_abi::subop;
use pv_iommu_client::{Error, PartialError};

#[test]
fn quarantine_blocks_unowned_devices() {
    let mut hv = ready(AddrWidth::Aw48);
    assert_eq!(dma(&mut hv, DEV_Q, 0x1000, false), Err(FaultReason::Read));
    assert_eq!(dma(&mut hv, DEV_Q, mfn_of(GUEST, 1).addr(), true), Err(FaultReason::Write));
    // Unknown requester: no context entry.
    assert_eq!(dma(&mut hv, PciSbdf::new(0, 0, 9, 0), 0, false), Err(FaultReason::ContextNotPresent));
    assert_eq!(dma(&mut hv, PciSbdf::new(0, 0x80, 0, 0), 0, false), Err(FaultReason::RootNotPresent));
    // Reattach of a device the guest does not own.
    assert_eq!(client(&mut hv, GUEST).reattach_device(CtxNo(0), DEV_Q), Err(Error::NotFound));
    assert_eq!(client(&mut hv, GUEST).reattach_device(CtxNo(0), PciSbdf::new(0, 9, 9, 0)), Err(Error::NotFound));
    assert_eq!(client(&mut hv, GUEST).reattach_device(CtxNo(5), DEV_A), Err(Error::Invalid));
    // Deassign puts an owned device back.
    assert_eq!(dma(&mut hv, DEV_A, mfn_of(GUEST, 1).addr(), true), Ok(mfn_of(GUEST, 1).addr()));
    hv.deassign_device(DEV_A, Instant(0)).unwrap();
    assert_eq!(dma(&mut hv, DEV_A, mfn_of(GUEST, 1).addr(), true), Err(FaultReason::Write));
    assert_eq!(hv.deassign_device(DEV_A, Instant(0)), Err(MgmtError::Invalid));
    // MSI writes are interrupt requests, present in every context, even quarantine.
    assert_eq!(dma(&mut hv, DEV_Q, 0xfee0_1004, true), Ok(0xfee0_1004));
    assert!(dma(&mut hv, DEV_Q, 0xfee0_1004, false).is_err());
    let faults: Vec<_> = std::iter::from_fn(|| hv.next_fault()).collect();
    assert!(faults.len() >= 6);
    let (rec, dev, owner) = faults[0];
    assert_eq!((rec.sid(), dev, owner, rec.is_write()), (Sid::from(DEV_Q).0, Some(DEV_Q), None, false));
    let (rec, _, owner) = faults.iter().find(|f| f.1 == Some(DEV_A)).copied().unwrap();
    assert_eq!((rec.reason(), owner, rec.is_write()), (FaultReason::Write as u8, None, true));
}

#[test]
fn dying_domain_refuses_every_op_and_releases_everything() {
    let mut hv = ready(AddrWidth::Aw48);
    let mut c = client(&mut hv, GUEST);
    let ctx = c.alloc_context(false).unwrap();
    c.map_pages(ctx, Gfn(0x50), Dfn(0x50), 4, RW).unwrap();
    c.reattach_device(ctx, DEV_A).unwrap();
    let frames_before = hv.mem().allocated();
    hv.destroy_domain(GUEST, Instant(1)).unwrap();
    answer(&mut hv, DEV_C, Instant(2)); // detaching the ATS device flushed its TLB
    let mut c = client(&mut hv, GUEST);
    assert_eq!(c.noop(), Err(Error::Invalid));
    assert_eq!(c.map_pages(ctx, Gfn(0x60), Dfn(0x60), 1, RW), Err(PartialError { error: Error::Invalid, done: 0 }));
    assert_eq!(c.alloc_context(false), Err(Error::Invalid));
    assert_eq!(client(&mut hv, HWDOM).remote_cmd(GUEST, subop::NOOP, &mut []), Err(Error::Invalid));
    // Devices are back in quarantine: everything faults.
    assert!(dma(&mut hv, DEV_A, 0x50_000, false).is_err());
    assert_eq!(hv.device_context(DEV_A), None);
    assert!(hv.mem().allocated() < frames_before);
    assert_eq!(hv.platform().refs.len(), 0, "all page references dropped");
}
