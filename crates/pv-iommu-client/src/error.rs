//! The client's one error type: Xen errno values from `iommu_op`, typed.

use crate::abi::errno;

/// A failed PV-IOMMU call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// -EPERM: e.g. `remote_cmd` from a domain that is not the hardware domain.
    NotPermitted,
    /// -ENOENT: no such mapping, context or device.
    NotFound,
    /// -E2BIG: `init` asked for too much.
    TooBig,
    /// -ENOMEM: the page-table arena is exhausted.
    NoMemory,
    /// -EACCES: not allowed (e.g. `init` twice; Linux treats it as "not allowed").
    AccessDenied,
    /// -EFAULT: the hypervisor could not read or write the argument.
    BadAddress,
    /// -EBUSY: the context still has devices attached.
    Busy,
    /// -ENODEV: PV-IOMMU not enabled for this domain.
    NoDevice,
    /// -EINVAL.
    Invalid,
    /// -ENOSPC: no free context.
    NoSpace,
    /// -ENOSYS: the hypervisor has no PV-IOMMU interface.
    NotImplemented,
    /// -EOPNOTSUPP: sub-op not supported.
    NotSupported,
    /// -EADDRINUSE: a page in the range is already mapped.
    AddressInUse,
    /// -EADDRNOTAVAIL: the range touches a reserved region (RMRR, MSI window).
    AddressNotAvailable,
    /// The hypervisor answered something the ABI does not allow
    /// (e.g. more pages done than asked, or no progress on success).
    Protocol,
    /// Any other negative return, kept verbatim.
    Other(i64),
}

impl Error {
    /// Maps a negative hypercall return to the typed error.
    pub fn from_errno(ret: i64) -> Self {
        match ret.checked_neg().unwrap_or(0) {
            errno::EPERM => Error::NotPermitted,
            errno::ENOENT => Error::NotFound,
            errno::E2BIG => Error::TooBig,
            errno::ENOMEM => Error::NoMemory,
            errno::EACCES => Error::AccessDenied,
            errno::EFAULT => Error::BadAddress,
            errno::EBUSY => Error::Busy,
            errno::ENODEV => Error::NoDevice,
            errno::EINVAL => Error::Invalid,
            errno::ENOSPC => Error::NoSpace,
            errno::ENOSYS => Error::NotImplemented,
            errno::EOPNOTSUPP => Error::NotSupported,
            errno::EADDRINUSE => Error::AddressInUse,
            errno::EADDRNOTAVAIL => Error::AddressNotAvailable,
            _ => Error::Other(ret),
        }
    }

    /// The errno value (positive) this error stands for, if it has one.
    pub fn errno(self) -> Option<i64> {
        Some(match self {
            Error::NotPermitted => errno::EPERM,
            Error::NotFound => errno::ENOENT,
            Error::TooBig => errno::E2BIG,
            Error::NoMemory => errno::ENOMEM,
            Error::AccessDenied => errno::EACCES,
            Error::BadAddress => errno::EFAULT,
            Error::Busy => errno::EBUSY,
            Error::NoDevice => errno::ENODEV,
            Error::Invalid => errno::EINVAL,
            Error::NoSpace => errno::ENOSPC,
            Error::NotImplemented => errno::ENOSYS,
            Error::NotSupported => errno::EOPNOTSUPP,
            Error::AddressInUse => errno::EADDRINUSE,
            Error::AddressNotAvailable => errno::EADDRNOTAVAIL,
            Error::Protocol => return None,
            Error::Other(r) => return r.checked_neg(),
        })
    }
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Other(n) => write!(f, "PV-IOMMU error {n}"),
            e => write!(f, "PV-IOMMU {e:?}"),
        }
    }
}

/// A map/unmap that stopped part way: `done` pages were processed before `error`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartialError {
    /// Why it stopped.
    pub error: Error,
    /// Pages mapped (or unmapped) before the failure; they stay so.
    pub done: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_roundtrip() {
        for e in [1, 2, 7, 12, 13, 14, 16, 19, 22, 28, 38, 95, 98, 99] {
            let err = Error::from_errno(-e);
            assert!(!matches!(err, Error::Other(_)), "{e}");
            assert_eq!(err.errno(), Some(e));
        }
        assert_eq!(Error::from_errno(-4000), Error::Other(-4000));
        assert_eq!(Error::from_errno(i64::MIN), Error::Other(i64::MIN));
        assert_eq!(Error::Other(i64::MIN).errno(), None);
    }
}
