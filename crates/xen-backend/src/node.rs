//! Writing a backend's nodes without resurrecting its directory.

use crate::lifecycle::Device;
use crate::state::XenbusState;
use alloc::format;
use alloc::string::String;
use log::warn;
use xen::shmem::SharedMem;
use xen::wait::Notifier;
use xen::xenstore::{XsClient, XsErrno, XsError};

/// Writes `value` at `{be}/{key}` only if our directory still exists, in a
/// transaction that first reads `{be}/state` (Linux `xenbus_switch_state`
/// does the same): a write must never re-create a directory the toolstack
/// removed. `Ok(false)`: the directory is gone, nothing written.
pub fn write_existing<M: SharedMem, N: Notifier>(
    xs: &mut XsClient<M, N>,
    be: &str,
    key: &str,
    value: &str,
) -> Result<bool, XsError> {
    let state = format!("{be}/state");
    let path = format!("{be}/{key}");
    xs.transaction(4, |tx| match tx.read(&state) {
        Ok(_) => tx.write(&path, value.as_bytes()).map(|()| true),
        Err(XsError::Xs(XsErrno::NoEnt)) => Ok(false),
        Err(err) => Err(err),
    })
}

/// One device's view of xenstore while its kind handles an event: writes
/// into its backend directory (skipped once the directory is gone, which
/// they also detect), reads of the frontend's keys.
pub struct DeviceXs<'a, M: SharedMem, N: Notifier> {
    pub(crate) xs: &'a mut XsClient<M, N>,
    pub(crate) dev: &'a mut Device,
    pub(crate) kind: &'a str,
}

impl<'a, M: SharedMem, N: Notifier> DeviceXs<'a, M, N> {
    /// The device.
    pub fn device(&self) -> &Device {
        self.dev
    }

    /// Whether the toolstack removed the backend directory (nothing more is
    /// written there).
    pub fn gone(&self) -> bool {
        self.dev.gone
    }

    /// Writes `{be}/{key}` if the directory still exists (a failure is
    /// logged, not returned: the handshake goes on).
    pub fn write(&mut self, key: &str, value: &str) {
        if self.dev.gone {
            return;
        }
        match write_existing(self.xs, &self.dev.be, key, value) {
            Ok(true) => {}
            Ok(false) => self.dev.gone = true,
            Err(err) => warn!("{} {}: writing {key}: {err:?}", self.kind, self.dev.be),
        }
    }

    /// Writes our `state` node.
    pub fn switch_state(&mut self, s: XenbusState) {
        self.write("state", &s.to_node());
    }

    /// Logs `msg` and writes it to the `error` node (`xenbus_dev_fatal`).
    pub fn write_error(&mut self, msg: &str) {
        if self.dev.gone {
            return;
        }
        warn!("{} {}: {msg}", self.kind, self.dev.be);
        if let Ok(false) = write_existing(self.xs, &self.dev.be, "error", msg) {
            self.dev.gone = true;
        }
    }

    /// Writes `msg` to the `error` node without logging it (for a kind
    /// that logs within its own rate limit what a guest caused).
    pub fn write_error_node(&mut self, msg: &str) {
        if self.dev.gone {
            return;
        }
        if let Ok(false) = write_existing(self.xs, &self.dev.be, "error", msg) {
            self.dev.gone = true;
        }
    }

    /// Reads `{fe}/{key}` from the frontend's directory.
    pub fn read_frontend(&mut self, key: &str) -> Option<String> {
        self.xs.read_string(&format!("{}/{key}", self.dev.fe)).ok()
    }

    /// The xenstore client, for anything else.
    pub fn xs(&mut self) -> &mut XsClient<M, N> {
        self.xs
    }
}
