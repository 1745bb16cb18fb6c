//! Typed identifiers (STYLE.md §7), defined once in `xen-types` for the whole
//! workspace and re-exported here.

pub use xen_types::{Dfn, DomId, EvtchnPort, Gfn, GrantRef, Instant, Mfn, Nanos, Pfn};
