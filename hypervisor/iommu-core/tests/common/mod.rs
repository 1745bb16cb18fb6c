//! Shared fixtures: a fake platform, a guest transport over the handler,
//! and a DMA helper through the software VT-d.
#![allow(dead_code)]

use std::collections::BTreeMap;

use iommu_core::hw::SoftVtd;
use iommu_core::mem::VecMemory;
use iommu_core::types::{DomId, Gfn, Instant, Mfn, PciSbdf, Sid};
use iommu_core::vtd::{AddrWidth, FaultReason};
use iommu_core::{hypercall_return, Config, Frame, Iommu, Platform, Source};
use pv_iommu_client::client::MapFlags;
use pv_iommu_client::{Client, Transport};

pub const HWDOM: DomId = DomId(0);
pub const GUEST: DomId = DomId(1);
/// Guest pages 0..GUEST_PAGES are usable; others are refused.
pub const GUEST_PAGES: u64 = 0x10000;
/// Pages each domain owns for its default/identity contexts.
pub const OWN_PAGES: u64 = 16;

pub const DEV_A: PciSbdf = PciSbdf::new(0, 0, 3, 0); // plain
pub const DEV_B: PciSbdf = PciSbdf::new(0, 0, 4, 0); // ATS, answers at once
pub const DEV_C: PciSbdf = PciSbdf::new(0, 1, 0, 0); // ATS, answers when told
pub const DEV_Q: PciSbdf = PciSbdf::new(0, 2, 0, 1); // never assigned

pub const RW: MapFlags = MapFlags::READ_WRITE;

/// Machine frame of a guest frame.
pub fn mfn_of(dom: DomId, gfn: u64) -> Mfn {
    Mfn(0x40_0000 + ((dom.0 as u64) << 20) + gfn)
}

/// A fake Xen: domain `d` owns guest frames 0..GUEST_PAGES (machine frame
/// [`mfn_of`]`(d, gfn)`) and names a frame granted to it by its machine
/// frame (as a PV domain does); devices belong to whom `owners` says.
/// References are counted per frame (a `put` without a `get` panics).
#[derive(Default)]
pub struct FakePlatform {
    pub refs: BTreeMap<Mfn, u32>,
    /// Writable-type references among `refs`.
    pub wrefs: BTreeMap<Mfn, u32>,
    /// Hardware-domain memory reachable through guest handles.
    pub guest_mem: BTreeMap<u64, Vec<u8>>,
    /// Active grants: (grantee, machine frame) → (granter, writable).
    pub grants: BTreeMap<(DomId, u64), (DomId, bool)>,
    /// Device assignment as Xen sees it.
    pub owners: BTreeMap<PciSbdf, DomId>,
    /// Pages each domain owns, for the default/identity contexts (OWN_PAGES if absent).
    pub own_pages: BTreeMap<DomId, u64>,
    /// Frames whose grant ends between `frame_of` and `get_frame` (a race).
    pub ends_before_get: std::collections::BTreeSet<Mfn>,
    /// `get_frame` takes any reference without re-checking (a platform that
    /// leaves every rule to the core), so tests see the core's checks alone.
    pub no_recheck: bool,
}

impl FakePlatform {
    pub fn refs(&self, m: Mfn) -> u32 {
        self.refs.get(&m).copied().unwrap_or(0)
    }

    pub fn total_refs(&self) -> u64 {
        self.refs.values().map(|&r| r as u64).sum()
    }

    /// `granter` grants its frame `gfn` to `grantee`; returns the frame
    /// number the grantee names it by.
    pub fn grant(&mut self, granter: DomId, gfn: u64, grantee: DomId, writable: bool) -> u64 {
        let m = mfn_of(granter, gfn).0;
        self.grants.insert((grantee, m), (granter, writable));
        m
    }
}

/// The domain owning a machine frame of [`mfn_of`].
pub fn owner_of(m: Mfn) -> Option<DomId> {
    let off = m.0.checked_sub(0x40_0000)?;
    (off & 0xf_ffff < GUEST_PAGES).then_some(DomId((off >> 20) as u16))
}

impl Platform for FakePlatform {
    fn frame_of(&mut self, dom: DomId, gfn: Gfn) -> Option<Frame> {
        if gfn.0 < GUEST_PAGES {
            return Some(Frame { mfn: mfn_of(dom, gfn.0), source: Source::Own });
        }
        let &(granter, writable) = self.grants.get(&(dom, gfn.0))?;
        Some(Frame { mfn: Mfn(gfn.0), source: Source::Granted { granter, writable } })
    }

    fn get_frame(&mut self, dom: DomId, f: Frame, writable: bool) -> bool {
        let still = match f.source {
            Source::Own => owner_of(f.mfn) == Some(dom),
            Source::Granted { granter, writable: w } => self.grants.get(&(dom, f.mfn.0)) == Some(&(granter, w)),
        };
        if (!still && !self.no_recheck) || self.ends_before_get.contains(&f.mfn) {
            return false;
        }
        *self.refs.entry(f.mfn).or_default() += 1;
        if writable {
            *self.wrefs.entry(f.mfn).or_default() += 1;
        }
        true
    }

    fn put_frame(&mut self, mfn: Mfn, writable: bool) {
        let r = self.refs.get_mut(&mfn).expect("put of a page without references");
        assert!(*r > 0, "reference underflow");
        *r -= 1;
        if *r == 0 {
            self.refs.remove(&mfn);
        }
        if writable {
            let w = self.wrefs.get_mut(&mfn).expect("writable put without a writable get");
            *w -= 1;
            if *w == 0 {
                self.wrefs.remove(&mfn);
            }
        }
    }

    fn domain_pages(&self, dom: DomId, from: Gfn, max: usize) -> Vec<(Gfn, Mfn)> {
        let n = self.own_pages.get(&dom).copied().unwrap_or(OWN_PAGES);
        (from.0..n).take(max).map(|g| (Gfn(g), mfn_of(dom, g))).collect()
    }

    fn device_owner(&self, dev: PciSbdf) -> Option<DomId> {
        self.owners.get(&dev).copied()
    }

    fn copy_from_guest(&mut self, _dom: DomId, addr: u64, buf: &mut [u8]) -> bool {
        match self.guest_mem.get(&addr) {
            Some(v) if v.len() >= buf.len() => {
                buf.copy_from_slice(&v[..buf.len()]);
                true
            }
            _ => false,
        }
    }

    fn copy_to_guest(&mut self, _dom: DomId, addr: u64, buf: &[u8]) -> bool {
        match self.guest_mem.get_mut(&addr) {
            Some(v) if v.len() >= buf.len() => {
                v[..buf.len()].copy_from_slice(buf);
                true
            }
            _ => false,
        }
    }
}

pub type Hv = Iommu<VecMemory, SoftVtd, FakePlatform>;

/// A hypervisor with the hardware domain, one guest owning DEV_A/B/C, and
/// DEV_Q in quarantine.
pub fn setup(aw: AddrWidth) -> Hv {
    setup_unit(aw, true)
}

/// As [`setup`], on a unit with ECAP.C = `coherent` (false: the unit sees
/// table writes only once the core flushes them).
pub fn setup_unit(aw: AddrWidth, coherent: bool) -> Hv {
    let mut hw = SoftVtd::new(aw);
    hw.set_coherent(coherent);
    hw.add_ats_device(Sid::from(DEV_B), false);
    hw.add_ats_device(Sid::from(DEV_C), true);
    let mut hv = Iommu::new(Config::default(), VecMemory::new(Mfn(0x10_0000), 8192), hw, FakePlatform::default())
        .expect("iommu");
    hv.add_domain(HWDOM, true).unwrap();
    hv.add_domain(GUEST, true).unwrap();
    hv.add_device(DEV_A, false, &[]).unwrap();
    hv.add_device(DEV_B, true, &[]).unwrap();
    hv.add_device(DEV_C, true, &[]).unwrap();
    hv.add_device(DEV_Q, false, &[]).unwrap();
    for d in [DEV_A, DEV_B, DEV_C] {
        hv.platform_mut().owners.insert(d, GUEST);
        hv.assign_device(d, GUEST, Instant(0)).unwrap();
    }
    hv
}

/// A guest's view: hypercalls go straight to the handler.
pub struct Guest<'a> {
    pub hv: &'a mut Hv,
    pub dom: DomId,
    pub now: Instant,
}

impl Transport for Guest<'_> {
    fn iommu_op(&mut self, subop: u32, arg: &mut [u8]) -> i64 {
        hypercall_return(self.hv.handle(self.dom, subop, arg, self.now))
    }

    fn iommu_op_remote(&mut self, cmd: &mut [u8; 16], inner: &mut [u8]) -> i64 {
        // Place `inner` in the fake guest memory at a fixed handle.
        const HANDLE: u64 = 0xffff_8000_0000_1000;
        let mut rc = pv_iommu_abi::RemoteCmd::from_bytes(cmd);
        rc.arg = HANDLE;
        *cmd = rc.to_bytes();
        self.hv.platform_mut().guest_mem.insert(HANDLE, inner.to_vec());
        let r = self.iommu_op(pv_iommu_abi::subop::REMOTE_CMD, cmd);
        if let Some(v) = self.hv.platform_mut().guest_mem.remove(&HANDLE) {
            inner.copy_from_slice(&v[..inner.len()]);
        }
        r
    }
}

pub fn client(hv: &mut Hv, dom: DomId) -> Client<Guest<'_>> {
    Client::new(Guest { hv, dom, now: Instant(0) })
}

/// A DMA by `dev` at byte address `iova`.
pub fn dma(hv: &mut Hv, dev: PciSbdf, iova: u64, write: bool) -> Result<u64, FaultReason> {
    let (hw, mem) = hv.hw_and_mem();
    hw.dma(mem, Sid::from(dev), iova, write)
}

/// Raw call with a byte argument.
pub fn raw(hv: &mut Hv, dom: DomId, subop: u32, arg: &mut [u8]) -> i64 {
    hypercall_return(hv.handle(dom, subop, arg, Instant(0)))
}

/// The slow ATS device answers everything outstanding; then a poll.
pub fn answer(hv: &mut Hv, dev: PciSbdf, now: Instant) {
    let (hw, mem) = hv.hw_and_mem();
    hw.complete_device_tlb(mem, Sid::from(dev));
    hv.poll(now);
}

/// [`setup`], with the guest initialised (8 contexts, 1024 arena pages).
pub fn ready(aw: AddrWidth) -> Hv {
    let mut hv = setup(aw);
    client(&mut hv, GUEST).init(8, 10).unwrap();
    hv
}
