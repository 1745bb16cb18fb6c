#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
//! drivers (placeholder; filled in by its issue)
extern crate alloc;
