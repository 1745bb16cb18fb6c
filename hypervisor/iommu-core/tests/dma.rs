//! `pv_iommu_client::dma::IommuDma` over the real handler and the software
//! VT-d: every bus address the mapper hands out is an IOVA the unit
//! translates to the buffer's frame, with the direction's rights only;
//! after unmap or free it faults; replay into a second context and a
//! reattach keep live translations.

use std::cell::RefCell;
use std::rc::Rc;

use drivers::fake::{FakeDma, FakeMemory};
use drivers::hal::{DmaDirection, DmaMapper, PAGE_SIZE};
use iommu_core::types::{DomId, Gfn, Instant, PciSbdf, Sid};
use iommu_core::vtd::FaultReason;
use pv_iommu_client::client::MapFlags;
use pv_iommu_client::dma::{Faults, IommuDma};
use pv_iommu_client::iova::{IovaAllocator, MSI_WINDOW};
use pv_iommu_client::Client;

const DOM: DomId = DomId(1);
const DEV: PciSbdf = PciSbdf::new(0, 0, 4, 0);
const PS: u64 = PAGE_SIZE as u64;

use iommu_core::testing::{InProcess as Local, TestIommu as Hv};

fn setup() -> (Rc<RefCell<Hv>>, Client<Local>) {
    iommu_core::testing::setup(DEV, true)
}

fn dma(hv: &Rc<RefCell<Hv>>, iova: u64, write: bool) -> Result<u64, FaultReason> {
    let mut h = hv.borrow_mut();
    let (hw, mem) = h.hw_and_mem();
    hw.dma(mem, Sid::from(DEV), iova, write)
}

#[test]
fn iovas_translate_to_the_buffer_with_direction_rights() {
    let (hv, mut c) = setup();
    let ctx = c.alloc_context(false).unwrap();
    c.reattach_device(ctx, DEV).unwrap();
    let mut d = IommuDma::new(
        Client::new(Local(hv.clone())),
        FakeDma::new(FakeMemory::new_shared()),
        ctx,
        IovaAllocator::new(MSI_WINDOW.0 - 3, 1 << 27, &[MSI_WINDOW]),
    );
    // A driver region: read-write at its IOVA, the frame FakeDma allocated.
    let r = d.alloc_zeroed(2).unwrap();
    let (dfn, gfn) = d.region_frames(&r).unwrap();
    assert_eq!(r.bus().0, dfn * PS);
    assert_eq!(dma(&hv, r.bus().0 + PS + 0x18, true), Ok((gfn + 1) * PS + 0x18));
    assert_eq!(dma(&hv, r.bus().0, false), Ok(gfn * PS));

    // A 3-page buffer the device writes: does not fit below the MSI window
    // any more (1 frame left), so it lands above it; write-only.
    let mut buf = vec![0u8; 3 * PAGE_SIZE];
    let m = d.map(&mut buf, DmaDirection::FromDevice).unwrap();
    assert_eq!(m.segments().len(), 1);
    let iova = m.segments()[0].bus.0;
    assert!(iova >= (MSI_WINDOW.0 + MSI_WINDOW.1) * PS, "jumped over the MSI window: {iova:#x}");
    for p in 0..3 {
        assert!(dma(&hv, iova + p * PS, true).is_ok());
        assert_eq!(dma(&hv, iova + p * PS, false), Err(FaultReason::Read), "write-only");
    }
    // Batched: the region and the buffer took one map call each.
    assert_eq!(d.stats().map_calls, 2);
    d.unmap(m, &mut buf).unwrap();
    assert_eq!(dma(&hv, iova, true), Err(FaultReason::Write), "revoked after unmap");

    // A buffer the device reads: read-only.
    let m = d.map(&mut buf, DmaDirection::ToDevice).unwrap();
    let iova = m.segments()[0].bus.0;
    assert!(dma(&hv, iova, false).is_ok());
    assert_eq!(dma(&hv, iova, true), Err(FaultReason::Write));
    d.unmap(m, &mut buf).unwrap();

    // Fault hooks: half a buffer. (Earlier denials left records: drop them.)
    while hv.borrow_mut().next_fault().is_some() {}
    d.arm_faults(Faults { map_only: Some(1), ..Faults::default() });
    let m = d.map(&mut buf, DmaDirection::FromDevice).unwrap();
    let iova = m.segments()[0].bus.0;
    assert!(dma(&hv, iova, true).is_ok());
    assert_eq!(d.last_hole(), Some((iova / PS + 1, 2)));
    assert_eq!(dma(&hv, iova + PS, true), Err(FaultReason::Write));
    let (f, dev, owner) = hv.borrow_mut().next_fault().expect("fault recorded");
    assert_eq!((f.sid(), f.addr(), f.is_write()), (Sid::from(DEV).0, iova + PS, true));
    assert_eq!((dev, owner), (Some(DEV), Some(DOM)));
    assert!(hv.borrow_mut().next_fault().is_none());
    d.unmap(m, &mut buf).unwrap();

    d.free(r);
    assert_eq!(dma(&hv, dfn * PS, false), Err(FaultReason::Read), "revoked after free");
    hv.borrow_mut().poll(Instant(1));
    assert!(hv.borrow().platform().refs.is_empty(), "every page reference dropped");
}

#[test]
fn replay_and_reattach_keep_translations() {
    let (hv, mut c) = setup();
    let ctx1 = c.alloc_context(false).unwrap();
    c.reattach_device(ctx1, DEV).unwrap();
    let mut d = IommuDma::new(
        Client::new(Local(hv.clone())),
        FakeDma::new(FakeMemory::new_shared()),
        ctx1,
        IovaAllocator::new(0x1000, 1 << 27, &[MSI_WINDOW]),
    );
    let regions: Vec<_> = (1..5).map(|n| d.alloc_zeroed(n).unwrap()).collect();
    let mut buf = vec![0u8; 2 * PAGE_SIZE];
    let m = d.map(&mut buf, DmaDirection::FromDevice).unwrap();

    let ctx2 = c.alloc_context(false).unwrap();
    let ranges = hv.borrow().replay(DOM, ctx1).unwrap();
    for r in &ranges {
        let flags = match (r.perm.read, r.perm.write) {
            (true, true) => MapFlags::READ_WRITE,
            (true, false) => MapFlags::READ,
            _ => MapFlags::WRITE,
        };
        c.map_pages(ctx2, Gfn(r.mfn.0), r.dfn, r.count as u32, flags).unwrap();
    }
    assert_eq!(hv.borrow().replay(DOM, ctx2).unwrap(), ranges);
    c.reattach_device(ctx2, DEV).unwrap();
    d.set_context(ctx2);
    c.free_context(ctx1, false).unwrap();
    for r in &regions {
        let (dfn, gfn) = d.region_frames(r).unwrap();
        assert_eq!(dma(&hv, dfn * PS + 8, true), Ok(gfn * PS + 8));
    }
    let iova = m.segments()[0].bus.0;
    assert!(dma(&hv, iova, true).is_ok());
    assert_eq!(dma(&hv, iova, false), Err(FaultReason::Read), "rights replayed too");
    // Later unmaps go to the new context.
    d.unmap(m, &mut buf).unwrap();
    assert_eq!(dma(&hv, iova, true), Err(FaultReason::Write));
    for r in regions {
        d.free(r);
    }
    assert!(hv.borrow().replay(DOM, ctx2).unwrap().is_empty());
}
