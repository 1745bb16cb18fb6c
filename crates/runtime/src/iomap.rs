//! Keeping devices' IOMMU contexts in step with the memory they may reach.
//!
//! Under Xen without PV-IOMMU a PV domain's devices reach all of its memory
//! (Xen maps it 1:1 by machine frame). With PV-IOMMU each device gets its
//! own context, and a machine frame is reachable only while something
//! mapped it there: [`HalDma`](crate::dev::HalDma) for its regions and
//! streaming buffers ([`Scope::Context`]), and the grant table for pages a
//! guest granted us with device access ([`Scope::Grants`]: every context
//! that serves guests' block requests). Bus addresses stay machine
//! addresses (the context maps IOVA = MFN << 12), so nothing else changes.
//!
//! The image installs the implementation ([`install`]); until then every
//! map succeeds without doing anything (no context exists to update).

use core::sync::atomic::{AtomicBool, Ordering};

/// Which contexts a mapping goes into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// One device's context (its PV-IOMMU context number).
    Context(u16),
    /// Every context whose device serves guests' granted pages.
    Grants,
}

/// What the image provides (a PV-IOMMU client behind a lock).
pub trait DeviceMap: Sync {
    /// Makes machine frame `mfn` reachable at bus address `mfn << 12` in
    /// `scope`, writable by the device if `writable`. Counted: as many
    /// [`unmap`](Self::unmap)s as successful maps take it away. `false`
    /// when it could not be mapped (nothing changed).
    fn map(&self, scope: Scope, mfn: u64, writable: bool) -> bool;
    /// Takes one map of `mfn` in `scope` back; the last one removes it from
    /// the contexts (and waits for their IOTLB invalidation).
    fn unmap(&self, scope: Scope, mfn: u64);
}

static HOOK: spin::Once<&'static dyn DeviceMap> = spin::Once::new();
static GRANTS: AtomicBool = AtomicBool::new(false);

/// Installs the image's implementation (once; later calls are ignored).
pub fn install(m: &'static dyn DeviceMap) {
    HOOK.call_once(|| m);
}

/// Grants mapped with device access go into [`Scope::Grants`] from now on.
pub fn set_grants_mapped(on: bool) {
    GRANTS.store(on, Ordering::Release);
}

/// Maps `mfn` in `scope` (see [`DeviceMap::map`]); `true` with no hook.
pub fn map(scope: Scope, mfn: u64, writable: bool) -> bool {
    match HOOK.get() {
        Some(h) => h.map(scope, mfn, writable),
        None => true,
    }
}

/// Takes one map back (see [`DeviceMap::unmap`]).
pub fn unmap(scope: Scope, mfn: u64) {
    if let Some(h) = HOOK.get() {
        h.unmap(scope, mfn);
    }
}

/// Whether granted pages must be mapped into [`Scope::Grants`].
pub(crate) fn grants_mapped() -> bool {
    GRANTS.load(Ordering::Acquire) && HOOK.get().is_some()
}
