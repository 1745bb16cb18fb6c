//! Fixtures for tests that run the core in-process (this crate's and other
//! crates' host tests): a platform where guest frame = machine frame, and a
//! PV-IOMMU transport that calls the handler directly. Not for production.

use alloc::collections::BTreeMap;
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::RefCell;

use crate::hw::SoftVtd;
use crate::iommu::{hypercall_return, Frame, Iommu, Platform, Source};
use crate::mem::VecMemory;
use crate::types::{DomId, Gfn, Instant, Mfn, PciSbdf};

/// The domain [`InProcess`] issues its calls for.
pub const DOM: DomId = DomId(1);

/// Guest frame = machine frame, every frame the domain's own, every device
/// the domain's; page references are counted (a `put` without a `get`
/// panics: a test bug). Guest memory copies fail.
#[derive(Default)]
pub struct IdentityPlatform {
    /// Outstanding references per frame.
    pub refs: BTreeMap<u64, u32>,
}

impl Platform for IdentityPlatform {
    fn frame_of(&mut self, _: DomId, gfn: Gfn) -> Option<Frame> {
        Some(Frame { mfn: Mfn(gfn.0), source: Source::Own })
    }
    fn get_frame(&mut self, _: DomId, f: Frame, _: bool) -> bool {
        *self.refs.entry(f.mfn.0).or_default() += 1;
        true
    }
    fn put_frame(&mut self, mfn: Mfn, _: bool) {
        let r = self.refs.get_mut(&mfn.0).expect("put without get");
        *r -= 1;
        if *r == 0 {
            self.refs.remove(&mfn.0);
        }
    }
    fn domain_pages(&self, _: DomId, from: Gfn, max: usize) -> Vec<(Gfn, Mfn)> {
        (from.0..16).take(max).map(|g| (Gfn(g), Mfn(g))).collect()
    }
    fn device_owner(&self, _: PciSbdf) -> Option<DomId> {
        Some(DOM)
    }
    fn copy_from_guest(&mut self, _: DomId, _: u64, _: &mut [u8]) -> bool {
        false
    }
    fn copy_to_guest(&mut self, _: DomId, _: u64, _: &[u8]) -> bool {
        false
    }
}

/// The core over host memory, the software VT-d and [`IdentityPlatform`].
pub type TestIommu = Iommu<VecMemory, SoftVtd, IdentityPlatform>;

/// The PV-IOMMU "hypercall" straight into a shared [`TestIommu`], as [`DOM`].
#[derive(Clone)]
pub struct InProcess(pub Rc<RefCell<TestIommu>>);

impl pv_iommu_client::Transport for InProcess {
    fn iommu_op(&mut self, subop: u32, arg: &mut [u8]) -> i64 {
        hypercall_return(self.0.borrow_mut().handle(DOM, subop, arg, Instant(0)))
    }
}

/// A [`TestIommu`] (4096 frames from 0x1000, a 39-bit unit in caching mode
/// with ECAP.C = `coherent`) with [`DOM`] added and `dev` assigned to it,
/// and a PV-IOMMU client for [`DOM`] already initialised.
pub fn setup(
    dev: crate::types::PciSbdf,
    coherent: bool,
) -> (Rc<RefCell<TestIommu>>, pv_iommu_client::Client<InProcess>) {
    let mut hw = SoftVtd::new(crate::vtd::AddrWidth::Aw39);
    hw.set_caching_mode(true);
    hw.set_coherent(coherent);
    let mut hv =
        Iommu::new(crate::Config::default(), VecMemory::new(Mfn(0x1000), 4096), hw, IdentityPlatform::default())
            .expect("a test IOMMU");
    hv.add_domain(DOM, true).expect("add the test domain");
    hv.add_device(dev, false, &[]).expect("add the test device");
    hv.assign_device(dev, DOM, Instant(0)).expect("assign the test device");
    let hv = Rc::new(RefCell::new(hv));
    let mut c = pv_iommu_client::Client::new(InProcess(hv.clone()));
    c.ensure_initialised().expect("PV-IOMMU init");
    (hv, c)
}
