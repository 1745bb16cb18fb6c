#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
//! storage-backend (placeholder; filled in by its issue)
extern crate alloc;
