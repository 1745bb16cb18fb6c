//! The crate's one error type (STYLE.md §8) and the typed NVMe status codes
//! it carries.

/// Errors of a [`crate::hal::DmaMapper`]. Implementations (fake, identity
/// map, PV-IOMMU) map their own failures into these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaError {
    /// No DMA-able memory (or no IOMMU space) left.
    NoMemory,
    /// Offset/length outside the region or buffer.
    OutOfBounds,
    /// The buffer cannot be made visible to the device.
    MapFailed,
    /// Device access could not be revoked; the buffer may still be reachable
    /// by the device.
    UnmapFailed,
}

/// Which hardware wait ran out of time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// CSTS.RDY to become 0 after CC.EN=0 (bounded by CAP.TO).
    Disable,
    /// CSTS.RDY to become 1 after CC.EN=1 (bounded by CAP.TO).
    Enable,
    /// An admin command's completion.
    AdminCommand,
    /// CSTS.SHST to report shutdown complete.
    Shutdown,
}

/// The drivers crate's error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// DMA allocation/mapping failed.
    Dma(DmaError),
    /// A hardware wait passed its deadline.
    Timeout(Wait),
    /// The controller reported a fatal status (CSTS.CFS).
    ControllerFatal,
    /// Registers read as all-ones: the device is gone (surprise removal).
    DeviceGone,
    /// The controller cannot be driven by us (page size, queue entry size,
    /// LBA format with metadata, no NVM command set...).
    UnsupportedController,
    /// The controller reports a limit that makes no sense (CAP.MQES = 0,
    /// doorbells that lie beyond BAR0): that controller is not used.
    BadCapability(&'static str),
    /// The operation is not supported by this device (e.g. ONCS lacks DSM).
    NotSupported,
    /// Every slot of the queue is in use; try again after polling.
    QueueFull,
    /// No such I/O queue.
    NoSuchQueue,
    /// The buffer's length/alignment does not fit the request (not a
    /// multiple of the block size, larger than the transfer limit, segments
    /// that a PRP cannot describe).
    BadBuffer,
    /// The LBA range lies outside the device.
    OutOfRange,
    /// The device completed the command with an error status.
    Status(Status),
    /// The command timed out and was aborted.
    Aborted,
    /// The command was in flight when the controller was reset; it was
    /// failed back without a device answer (it may or may not have run).
    Reset,
    /// The controller could not be brought back after a reset; the device
    /// takes no more commands.
    ControllerFailed,
    /// The device broke the protocol (bad identify data, impossible
    /// completion...).
    Protocol,
}

impl From<DmaError> for Error {
    fn from(e: DmaError) -> Self {
        Error::Dma(e)
    }
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{self:?}")
    }
}

/// A completion status other than success, decoded from the CQE Status
/// Field (NVMe Base 1.4 §4.6.1.2: SCT 0 generic, 1 command specific,
/// 2 media and data integrity, 3 path related, 7 vendor specific).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    // SCT 0, Figure 128.
    InvalidOpcode,
    InvalidField,
    CommandIdConflict,
    DataTransferError,
    AbortedPowerLoss,
    InternalError,
    AbortRequested,
    AbortedSqDeletion,
    InvalidNamespaceOrFormat,
    CommandSequenceError,
    LbaOutOfRange,
    CapacityExceeded,
    NamespaceNotReady,
    ReservationConflict,
    // SCT 1, Figure 129.
    CompletionQueueInvalid,
    InvalidQueueIdentifier,
    InvalidQueueSize,
    AbortCommandLimitExceeded,
    ConflictingAttributes,
    WriteToReadOnlyRange,
    // SCT 2, Figure 130.
    WriteFault,
    UnrecoveredReadError,
    EndToEndGuardCheck,
    EndToEndApplicationTagCheck,
    EndToEndReferenceTagCheck,
    CompareFailure,
    AccessDenied,
    DeallocatedOrUnwrittenBlock,
    /// SCT 3.
    PathRelated(u8),
    /// SCT 7.
    VendorSpecific(u8),
    /// Anything else, kept verbatim.
    Other {
        sct: u8,
        sc: u8,
    },
}

impl Status {
    /// Decodes SCT/SC. Returns `None` for success (SCT 0, SC 0).
    pub fn from_codes(sct: u8, sc: u8) -> Option<Status> {
        use Status::*;
        Some(match (sct, sc) {
            (0, 0x00) => return None,
            (0, 0x01) => InvalidOpcode,
            (0, 0x02) => InvalidField,
            (0, 0x03) => CommandIdConflict,
            (0, 0x04) => DataTransferError,
            (0, 0x05) => AbortedPowerLoss,
            (0, 0x06) => InternalError,
            (0, 0x07) => AbortRequested,
            (0, 0x08) => AbortedSqDeletion,
            (0, 0x0B) => InvalidNamespaceOrFormat,
            (0, 0x0C) => CommandSequenceError,
            (0, 0x80) => LbaOutOfRange,
            (0, 0x81) => CapacityExceeded,
            (0, 0x82) => NamespaceNotReady,
            (0, 0x83) => ReservationConflict,
            (1, 0x00) => CompletionQueueInvalid,
            (1, 0x01) => InvalidQueueIdentifier,
            (1, 0x02) => InvalidQueueSize,
            (1, 0x03) => AbortCommandLimitExceeded,
            (1, 0x80) => ConflictingAttributes,
            (1, 0x82) => WriteToReadOnlyRange,
            (2, 0x80) => WriteFault,
            (2, 0x81) => UnrecoveredReadError,
            (2, 0x82) => EndToEndGuardCheck,
            (2, 0x83) => EndToEndApplicationTagCheck,
            (2, 0x84) => EndToEndReferenceTagCheck,
            (2, 0x85) => CompareFailure,
            (2, 0x86) => AccessDenied,
            (2, 0x87) => DeallocatedOrUnwrittenBlock,
            (3, sc) => PathRelated(sc),
            (7, sc) => VendorSpecific(sc),
            (sct, sc) => Other { sct, sc },
        })
    }

    /// The error a submitter sees for this status. A command aborted at our
    /// request reads as [`Error::Aborted`].
    pub fn into_error(self) -> Error {
        match self {
            Status::AbortRequested => Error::Aborted,
            s => Error::Status(s),
        }
    }
}
