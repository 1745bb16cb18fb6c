//! Feature bits (virtio 1.x §5.1.3 for the network device, §6 for the
//! reserved bits) and the choice of what to accept.

/// Device completes partial checksums of what we send.
pub const CSUM: u64 = 1 << 0;
/// Device may hand us partially checksummed / validated frames.
pub const GUEST_CSUM: u64 = 1 << 1;
/// Device has a MAC address in its config space.
pub const MAC: u64 = 1 << 5;
/// Driver can receive TSOv4 (not accepted: receive buffers are one page).
pub const GUEST_TSO4: u64 = 1 << 7;
/// Driver can receive TSOv6 (not accepted).
pub const GUEST_TSO6: u64 = 1 << 8;
/// Device segments TCP/IPv4 we send (requires CSUM).
pub const HOST_TSO4: u64 = 1 << 11;
/// Device segments TCP/IPv6 we send (requires CSUM).
pub const HOST_TSO6: u64 = 1 << 12;
/// Merged receive buffers (not accepted).
pub const MRG_RXBUF: u64 = 1 << 15;
/// Config `status` (link) is valid.
pub const STATUS: u64 = 1 << 16;
/// Control virtqueue.
pub const CTRL_VQ: u64 = 1 << 17;
/// Several queue pairs (requires CTRL_VQ).
pub const MQ: u64 = 1 << 22;
/// VIRTIO_F_VERSION_1: the modern interface (required: the PCI transport is modern only).
pub const VERSION_1: u64 = 1 << 32;
/// VIRTIO_F_ACCESS_PLATFORM: the device goes through the platform's IOMMU;
/// accepted when offered (our bus addresses already are the device's).
pub const ACCESS_PLATFORM: u64 = 1 << 33;

/// What this driver can use.
pub const SUPPORTED: u64 =
    CSUM | GUEST_CSUM | MAC | HOST_TSO4 | HOST_TSO6 | STATUS | CTRL_VQ | MQ | VERSION_1 | ACCESS_PLATFORM;

/// Why negotiation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeatureError {
    /// The device does not offer VIRTIO_F_VERSION_1.
    NoVersion1,
}

/// The features to accept from `offered` (§5.1.3.1: a driver accepts
/// nothing the device did not offer, nor a feature without the features
/// it requires). `want_mq` false leaves MQ (and its control queue) off.
pub fn negotiate(offered: u64, want_mq: bool) -> Result<u64, FeatureError> {
    if offered & VERSION_1 == 0 {
        return Err(FeatureError::NoVersion1);
    }
    let mut f = offered & SUPPORTED;
    if f & CSUM == 0 {
        f &= !(HOST_TSO4 | HOST_TSO6);
    }
    if !want_mq {
        f &= !MQ;
    }
    if f & CTRL_VQ == 0 {
        f &= !MQ;
    }
    // The control queue is only used for MQ.
    if f & MQ == 0 {
        f &= !CTRL_VQ;
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_respects_dependencies() {
        assert_eq!(negotiate(CSUM | MAC, true), Err(FeatureError::NoVersion1));
        // QEMU's usual offer, with bits we never take.
        let qemu = CSUM
            | GUEST_CSUM
            | MAC
            | GUEST_TSO4
            | GUEST_TSO6
            | HOST_TSO4
            | HOST_TSO6
            | MRG_RXBUF
            | STATUS
            | CTRL_VQ
            | VERSION_1
            | (1 << 29);
        let f = negotiate(qemu, true).unwrap();
        assert_eq!(f, CSUM | GUEST_CSUM | MAC | HOST_TSO4 | HOST_TSO6 | STATUS | VERSION_1);
        // TSO without CSUM is refused; MQ without CTRL_VQ is refused.
        assert_eq!(negotiate(HOST_TSO4 | HOST_TSO6 | MQ | VERSION_1, true).unwrap(), VERSION_1);
        assert_eq!(negotiate(MQ | CTRL_VQ | VERSION_1, true).unwrap(), MQ | CTRL_VQ | VERSION_1);
        assert_eq!(negotiate(MQ | CTRL_VQ | VERSION_1, false).unwrap(), VERSION_1);
        assert_eq!(negotiate(VERSION_1 | ACCESS_PLATFORM, true).unwrap(), VERSION_1 | ACCESS_PLATFORM);
    }
}
