//! The vocabulary every Ferrite crate shares: typed Xen identifiers
//! (STYLE.md §7: no bare integers for domains, ports, grant references or
//! frames) and the time type. Each is defined here once; other crates
//! re-export these, never redeclare them. No dependencies, so the
//! hypervisor-side crates can use it without pulling in the guest's.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

/// Nanoseconds: a duration, or a timestamp from an arbitrary origin that the
/// caller passes in (no crate reads a global clock).
pub type Nanos = u64;

/// A point in time in nanoseconds from an arbitrary origin, passed in by the
/// caller; the typed form of a [`Nanos`] timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(pub Nanos);

impl Instant {
    /// `self + ns`, saturating.
    pub fn after_ns(self, ns: Nanos) -> Instant {
        Instant(self.0.saturating_add(ns))
    }
}

/// A Xen domain id (`domid_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct DomId(pub u16);

impl DomId {
    /// The hardware/control domain.
    pub const DOM0: DomId = DomId(0);
}

/// An event-channel port (`evtchn_port_t`): ours, or the one a frontend
/// wrote to xenstore.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EvtchnPort(pub u32);

/// A grant reference in some domain's grant table (`grant_ref_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct GrantRef(pub u32);

/// A machine frame number (host physical address >> 12).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Mfn(pub u64);

impl Mfn {
    /// The frame's first byte address.
    pub const fn addr(self) -> u64 {
        self.0 << 12
    }

    /// The frame holding `addr`.
    pub const fn from_addr(addr: u64) -> Self {
        Mfn(addr >> 12)
    }
}

/// A guest pseudo-physical frame number, as this domain numbers its own
/// memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pfn(pub u64);

/// A guest frame number as another party names it (the page a guest names in
/// PV-IOMMU `map_pages.gfn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Gfn(pub u64);

/// A device frame number: an IOVA divided by the page size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dfn(pub u64);

macro_rules! display_num {
    ($($t:ty),*) => {$(
        impl core::fmt::Display for $t {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    )*};
}
display_num!(DomId, EvtchnPort, GrantRef, Mfn, Pfn, Gfn, Dfn);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_addresses() {
        assert_eq!(Mfn(0x1234).addr(), 0x123_4000);
        assert_eq!(Mfn::from_addr(0x123_4fff), Mfn(0x1234));
        assert_eq!(Instant(5).after_ns(7), Instant(12));
        assert_eq!(Instant(u64::MAX - 1).after_ns(7), Instant(u64::MAX));
    }

    #[test]
    fn ids_print_as_numbers() {
        extern crate std;
        use std::format;
        assert_eq!(format!("{} {} {}", DomId(7), GrantRef(42), EvtchnPort(3)), "7 42 3");
    }
}
