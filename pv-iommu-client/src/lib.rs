#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
//! pv-iommu-client (placeholder; filled in by its issue)
extern crate alloc;
