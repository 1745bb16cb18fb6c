//! Ferrite's unikernel runtime.
//!
//! Protocol logic (xenstore wire format and client, console and xenstore
//! rings, event-channel and grant-table bookkeeping) is safe code that builds
//! and tests on the host. Hypercalls, page tables and raw shared memory live
//! in [`hal`], compiled only for the bare-metal target.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

extern crate alloc;

pub mod error;
pub mod shmem;
pub mod wait;
pub mod xenstore;
