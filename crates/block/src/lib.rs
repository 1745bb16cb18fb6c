//! Disks as values you look up (STYLE.md §12).
//!
//! - [`target`]: what a vbd's `params` (xl's `target=`) names.
//! - [`gpt`]: GPT partition tables, checked like any other hostile input.
//! - [`view`]: an [`view::Extent`] of a shared device, served through a
//!   [`view::View`] that checks and translates every request and routes
//!   completions back to their submitter.
//! - [`registry`]: the disks found (namespaces, partitions) and the one
//!   lookup from target to view, with exclusive writers and shared readers.
//! - [`scan`]: reading a namespace's GPT at boot (read-only).
//! - `model` (feature `model`, and this crate's tests): a disk with a
//!   volatile write cache that can lose every unflushed write at a chosen
//!   power cut.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod gpt;
pub mod registry;
pub mod scan;
pub mod target;
pub mod view;

#[cfg(any(test, feature = "model"))]
pub mod model;

pub use registry::{Disk, OpenError, Registry};
pub use target::{Target, TargetError};
pub use view::{Extent, Shared, View};
