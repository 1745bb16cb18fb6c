//! Safe Xen protocols for Ferrite.
//!
//! Protocol logic (xenstore wire format and client, console ring,
//! event-channel and grant-table interfaces with host fakes, Xen ABI
//! structures) is safe code that builds and tests on the host. Hypercalls,
//! page tables and raw shared memory live in the `runtime` crate, built only
//! for the bare-metal target (`x86_64-unknown-none`).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod console;
pub mod error;
pub mod evtchn;
pub mod gnttab;
pub mod pcifront;
pub mod ratelimit;
pub mod shmem;
#[cfg(feature = "test-log")]
pub mod testlog;
pub mod types;
pub mod wait;
pub mod xen_abi;
pub mod xenstore;
