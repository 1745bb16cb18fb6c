//! Sub-op decoding and dispatch: interface presence, unknown and unsupported
//! sub-ops, capabilities, `init`, `remote_cmd`, and hostile arguments.
//! Checked through the client and the software VT-d.

mod common;

use common::*;
use iommu_core::types::{CtxNo, Dfn, DomId, Gfn};
use iommu_core::vtd::AddrWidth;
use pv_iommu_abi::{self as abi, subop, MapPages};
use pv_iommu_client::Error;

#[test]
fn interface_presence_and_unknown_subops() {
    let mut hv = setup(AddrWidth::Aw48);
    hv.add_domain(DomId(5), false).unwrap();
    assert_eq!(client(&mut hv, GUEST).noop(), Ok(()));
    assert_eq!(client(&mut hv, DomId(5)).noop(), Err(Error::NoDevice), "not enabled");
    assert_eq!(client(&mut hv, DomId(9)).query_capabilities(), Err(Error::NoDevice), "unknown domain");
    assert_eq!(raw(&mut hv, GUEST, 13, &mut [0; 64]), -95);
    for s in 9..=12 {
        assert_eq!(raw(&mut hv, GUEST, s, &mut []), -95);
    }
    assert_eq!(raw(&mut hv, GUEST, subop::MAP_PAGES, &mut [0; 20]), -14, "short argument");
}

#[test]
fn capabilities_follow_address_width() {
    for (aw, bits) in [(AddrWidth::Aw39, 39), (AddrWidth::Aw48, 48)] {
        let mut hv = setup(aw);
        let caps = client(&mut hv, GUEST).query_capabilities().unwrap();
        assert_eq!(caps.max_iova_addr, (1 << bits) - 1);
        assert_eq!(caps.pgsize_mask, 0x1000);
        assert_eq!(caps.max_ctx_no, 0);
        assert_ne!(caps.cap_flags & abi::cap::IDENTITY, 0);
    }
}

#[test]
fn init_rules_and_no_fallthrough_into_alloc() {
    let mut hv = setup(AddrWidth::Aw48);
    let mut c = client(&mut hv, GUEST);
    assert_eq!(c.alloc_context(false), Err(Error::NoSpace), "no contexts before init");
    assert_eq!(c.init(u32::MAX, 4), Err(Error::TooBig));
    assert_eq!(c.init(4, 63), Err(Error::TooBig));
    assert_eq!(c.init(4, 6), Ok(()));
    assert_eq!(c.init(4, 6), Err(Error::AccessDenied));
    // init did not allocate: context 1 does not exist yet.
    assert_eq!(c.free_context(CtxNo(1), false), Err(Error::NotFound));
    assert_eq!(c.query_capabilities().unwrap().max_ctx_no, 4);
    assert_eq!(c.alloc_context(false), Ok(CtxNo(1)));
    // The Linux sequence is a no-op once initialised.
    assert_eq!(c.ensure_initialised().map(|c| c.max_ctx_no), Ok(4));
}

#[test]
fn remote_cmd_only_from_the_hardware_domain() {
    let mut hv = ready(AddrWidth::Aw48);
    let mut inner = abi::Alloc::default().to_bytes();
    assert_eq!(client(&mut hv, GUEST).remote_cmd(GUEST, subop::ALLOC_CONTEXT, &mut inner), Err(Error::NotPermitted));
    assert_eq!(client(&mut hv, DomId(1)).remote_cmd(DomId(0), subop::NOOP, &mut []), Err(Error::NotPermitted));
    // The hardware domain allocates and maps on behalf of the guest.
    let mut hw = client(&mut hv, HWDOM);
    assert_eq!(hw.remote_cmd(GUEST, subop::ALLOC_CONTEXT, &mut inner), Ok(0));
    let ctx = abi::Alloc::from_bytes(&inner).ctx_no;
    assert_eq!(ctx, 1);
    let mut m = MapPages::new(CtxNo(ctx), Gfn(0x44), Dfn(0x10), 3, 4096, 2).to_bytes();
    assert_eq!(hw.remote_cmd(GUEST, subop::MAP_PAGES, &mut m), Ok(0));
    assert_eq!(MapPages::from_bytes(&m).mapped, 2);
    assert_eq!(hw.remote_cmd(GUEST, subop::REMOTE_CMD, &mut [0; 16]), Err(Error::Invalid), "no nesting");
    assert_eq!(hw.remote_cmd(DomId(77), subop::NOOP, &mut []), Err(Error::NoDevice));
    assert_eq!(hv.replay(GUEST, CtxNo(1)).unwrap().len(), 1);
}

mod hostile {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Any sub-op with any bytes, from any domain: no panic, a valid
        /// errno or success, and the hardware keeps failing closed.
        #[test]
        fn handle_never_panics(
            dom in 0u16..3,
            subop in prop_oneof![0u32..14, any::<u32>()],
            mut bytes in proptest::collection::vec(any::<u8>(), 0..48),
        ) {
            let mut hv = setup(AddrWidth::Aw39);
            let _ = client(&mut hv, GUEST).init(4, 8);
            let _ = client(&mut hv, GUEST).alloc_context(false);
            let r = raw(&mut hv, DomId(dom), subop, &mut bytes);
            prop_assert!(r == 0 || r == -85 || (-99..0).contains(&r));
            prop_assert!(dma(&mut hv, DEV_Q, 0, false).is_err());
        }
    }
}
