//! virtio-drivers' PCI configuration access over Ferrite's
//! [`drivers::pci::PciDevice`] (pcifront on Xen, ports 0xCF8/0xCFC on PVH),
//! and the PCI transport on top. `unsafe` only because the trait declares
//! an `unsafe fn` (`unsafe_clone`), which is never called here.
#![allow(unsafe_code)]

use core::cell::RefCell;

use drivers::pci::PciDevice;
use virtio_drivers::transport::pci::bus::{ConfigurationAccess, DeviceFunction, PciRoot};
use virtio_drivers::transport::pci::{PciTransport, VirtioPciError};
use virtio_drivers::Hal;

/// PCI vendor id of virtio devices.
pub const VIRTIO_VENDOR: u16 = 0x1af4;
/// Transitional virtio-net.
pub const DEVICE_NET_TRANSITIONAL: u16 = 0x1000;
/// Modern virtio-net (0x1040 + device type 1).
pub const DEVICE_NET_MODERN: u16 = 0x1041;

/// Whether (vendor, device) is a virtio-net function.
pub fn is_virtio_net(vendor: u16, device: u16) -> bool {
    vendor == VIRTIO_VENDOR && (device == DEVICE_NET_TRANSITIONAL || device == DEVICE_NET_MODERN)
}

/// One function's config space as virtio-drivers wants it. The access
/// names a bus/device/function; there is only one function behind a
/// [`PciDevice`], so that is ignored. virtio-drivers reads through `&self`,
/// hence the `RefCell`.
pub struct OneFunction<P: PciDevice>(RefCell<P>);

impl<P: PciDevice> OneFunction<P> {
    /// Wraps `dev`.
    pub fn new(dev: P) -> Self {
        OneFunction(RefCell::new(dev))
    }
    /// The device back.
    pub fn into_inner(self) -> P {
        self.0.into_inner()
    }
}

impl<P: PciDevice> ConfigurationAccess for OneFunction<P> {
    fn read_word(&self, _df: DeviceFunction, register_offset: u8) -> u32 {
        // Never re-entered: virtio-drivers does one access at a time.
        match self.0.try_borrow_mut() {
            Ok(mut d) => d.config_read32(u16::from(register_offset & !3)),
            Err(_) => u32::MAX,
        }
    }
    fn write_word(&mut self, _df: DeviceFunction, register_offset: u8, data: u32) {
        self.0.get_mut().config_write32(u16::from(register_offset & !3), data);
    }
    /// # Safety
    ///
    /// Never called: virtio-drivers clones an access only to enumerate a
    /// bus, which [`transport`] does not do. Panics.
    unsafe fn unsafe_clone(&self) -> Self {
        unreachable!("OneFunction is never cloned")
    }
}

/// The virtio PCI transport of `dev` (its capabilities found, its BARs
/// located through `H::mmio_phys_to_virt`). Memory decoding and bus
/// mastering must already be on.
pub fn transport<H: Hal, P: PciDevice>(dev: P) -> Result<PciTransport, VirtioPciError> {
    let mut root = PciRoot::new(OneFunction::new(dev));
    PciTransport::new::<H, _>(&mut root, DeviceFunction { bus: 0, device: 0, function: 0 })
}
