//! Each device Ferrite drives in a PV-IOMMU context of its own.
//!
//! When the hypervisor offers PV-IOMMU to us (a domU with passed-through
//! devices, under its rules: our own devices, our own frames and frames
//! guests granted us), every device gets a context that holds only what
//! it must reach: its queues and DMA buffers, and, for a disk controller,
//! the guests' granted pages while they are mapped for it. Everything else
//! of ours, and everything of other domains, is out of its reach: a DMA
//! there faults in the IOMMU.
//!
//! A context maps IOVA = machine address (MFN << 12), so the bus addresses
//! the rest of Ferrite computes do not change; `runtime::iomap` calls
//! [`Contexts`] whenever a page starts or stops being reachable. Maps are
//! counted per (context, frame): the same page reached twice stays mapped
//! until both let go.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use log::warn;
use pv_iommu_client::client::MapFlags;
use pv_iommu_client::types::{CtxNo, Dfn, Gfn, PciSbdf};
use pv_iommu_client::{Client, Transport};
use runtime::iomap::{DeviceMap, Scope};
use xen::pcifront::PciAddr;

/// Hypercall 43 from this domain.
pub struct Hypercall;
impl Transport for Hypercall {
    fn iommu_op(&mut self, subop: u32, arg: &mut [u8]) -> i64 {
        runtime::hypercall::iommu_op(subop, arg)
    }
}

/// The MSI window's frames (0xFEE00000–0xFEEFFFFF): never mapped.
const MSI_FRAMES: core::ops::RangeInclusive<u64> = 0xfee00..=0xfeeff;

/// Our contexts and what is mapped in them.
pub struct Contexts {
    inner: spin::Mutex<Inner>,
}

struct Inner {
    /// Contexts of devices that serve guests' granted pages.
    grant_ctxs: Vec<u16>,
    /// Every context, with its device (for the report).
    devices: Vec<(u16, PciAddr)>,
    pages: Pages,
}

/// What is mapped where, and the client that maps it.
struct Pages {
    /// Set by the first [`Contexts::give_context`].
    client: Option<Client<Hypercall>>,
    max_iova: u64,
    /// (context, frame) → (maps, mapped writable).
    maps: BTreeMap<(u16, u64), (u32, bool)>,
    /// Maps the hypervisor refused.
    refused: u64,
}

/// The image's one set of contexts.
pub static CONTEXTS: Contexts = Contexts {
    inner: spin::Mutex::new(Inner {
        grant_ctxs: Vec::new(),
        devices: Vec::new(),
        pages: Pages { client: None, max_iova: 0, maps: BTreeMap::new(), refused: 0 },
    }),
};

impl Contexts {
    /// Gives the device at machine address `dev` a context of its own,
    /// empty, and moves the device into it. `grants`: the device serves
    /// guests' granted pages (a disk controller). Returns the context
    /// number for `Translation::PvIommu`. On failure nothing changed: the
    /// device stays in the default context (Xen's mapping of our memory).
    pub fn give_context(&'static self, dev: PciAddr, grants: bool) -> Result<u16, String> {
        let seg = u16::try_from(dev.domain).map_err(|_| format!("PCI segment {:#x} out of range", dev.domain))?;
        let sbdf = PciSbdf::new(seg, dev.bus, dev.devfn >> 3, dev.devfn & 7);
        let mut g = self.inner.lock();
        let c = g.pages.client.get_or_insert_with(|| Client::new(Hypercall));
        let caps = c.ensure_initialised().map_err(|e| format!("PV-IOMMU init: {e:?}"))?;
        let ctx = c.alloc_context(false).map_err(|e| format!("alloc_context: {e:?}"))?;
        if let Err(e) = c.reattach_device(ctx, sbdf) {
            let _ = c.free_context(ctx, false);
            return Err(format!("reattach_device {dev} to context {}: {e:?}", ctx.0));
        }
        g.pages.max_iova = caps.max_iova_addr;
        if grants {
            g.grant_ctxs.push(ctx.0);
        }
        g.devices.push((ctx.0, dev));
        drop(g);
        runtime::iomap::install(self);
        Ok(ctx.0)
    }

    /// Pages mapped in all our contexts together (each context counted),
    /// and maps the hypervisor refused so far.
    pub fn counts(&self) -> (usize, u64) {
        let g = self.inner.lock();
        (g.pages.maps.len(), g.pages.refused)
    }

    /// One line per context: its device and how many pages it maps.
    pub fn describe(&self) -> String {
        let g = self.inner.lock();
        let mut parts: Vec<String> = Vec::new();
        for &(ctx, dev) in &g.devices {
            let pages = g.pages.maps.range((ctx, 0)..=(ctx, u64::MAX)).count();
            let grants = if g.grant_ctxs.contains(&ctx) { " +grants" } else { "" };
            parts.push(format!("ctx{ctx} {dev} pages={pages}{grants}"));
        }
        if g.pages.refused > 0 {
            parts.push(format!("refused={}", g.pages.refused));
        }
        parts.join("; ")
    }
}

impl Pages {
    /// One more map of `mfn` in `ctx`.
    fn map_one(&mut self, ctx: u16, mfn: u64, writable: bool) -> bool {
        let Some(c) = self.client.as_mut() else { return false };
        let flags = if writable { MapFlags::READ_WRITE } else { MapFlags::READ };
        match self.maps.get_mut(&(ctx, mfn)) {
            Some((n, w)) if *w || !writable => {
                *n += 1;
                true
            }
            Some((n, w)) => {
                // Mapped read-only so far; now it must be writable too.
                let _ = c.unmap_pages(CtxNo(ctx), Dfn(mfn), 1);
                if c.map_pages(CtxNo(ctx), Gfn(mfn), Dfn(mfn), 1, flags).is_ok() {
                    *w = true;
                    *n += 1;
                    true
                } else {
                    let back = c.map_pages(CtxNo(ctx), Gfn(mfn), Dfn(mfn), 1, MapFlags::READ).is_ok();
                    if !back {
                        // Gone from the context: forget it (later unmaps are no-ops).
                        self.maps.remove(&(ctx, mfn));
                    }
                    self.note_refused(ctx, mfn);
                    false
                }
            }
            None => {
                let fits = (mfn << 12) | 0xfff <= self.max_iova && !MSI_FRAMES.contains(&mfn);
                if fits && c.map_pages(CtxNo(ctx), Gfn(mfn), Dfn(mfn), 1, flags).is_ok() {
                    self.maps.insert((ctx, mfn), (1, writable));
                    true
                } else {
                    self.note_refused(ctx, mfn);
                    false
                }
            }
        }
    }

    /// Counts a refused map; the first few and then one in 1024 are logged.
    fn note_refused(&mut self, ctx: u16, mfn: u64) {
        self.refused += 1;
        if self.refused <= 8 || self.refused.is_multiple_of(1024) {
            warn!("iommu: context {ctx} refused frame {mfn:#x} ({} refused so far)", self.refused);
        }
    }

    fn unmap_one(&mut self, ctx: u16, mfn: u64) {
        let Some((n, _)) = self.maps.get_mut(&(ctx, mfn)) else { return };
        *n -= 1;
        if *n == 0 {
            self.maps.remove(&(ctx, mfn));
            if let Some(c) = self.client.as_mut() {
                if let Err(e) = c.unmap_pages(CtxNo(ctx), Dfn(mfn), 1) {
                    warn!("iommu: unmap of frame {mfn:#x} from context {ctx}: {e:?}");
                }
            }
        }
    }
}

impl DeviceMap for Contexts {
    fn map(&self, scope: Scope, mfn: u64, writable: bool) -> bool {
        let mut g = self.inner.lock();
        let Inner { grant_ctxs, pages, .. } = &mut *g;
        let one;
        let ctxs: &[u16] = match scope {
            Scope::Context(c) => {
                one = [c];
                &one
            }
            Scope::Grants => grant_ctxs,
        };
        for (i, &ctx) in ctxs.iter().enumerate() {
            if !pages.map_one(ctx, mfn, writable) {
                for &done in &ctxs[..i] {
                    pages.unmap_one(done, mfn);
                }
                return false;
            }
        }
        true
    }

    fn unmap(&self, scope: Scope, mfn: u64) {
        let mut g = self.inner.lock();
        let Inner { grant_ctxs, pages, .. } = &mut *g;
        match scope {
            Scope::Context(c) => pages.unmap_one(c, mfn),
            Scope::Grants => grant_ctxs.iter().for_each(|&c| pages.unmap_one(c, mfn)),
        }
    }
}
