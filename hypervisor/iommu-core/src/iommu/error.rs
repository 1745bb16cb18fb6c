//! Results at the two boundaries: [`Error`] and [`Outcome`] for the guest
//! (turned into the hypercall's return value by [`hypercall_return`]), and
//! [`MgmtError`] for the host-side management calls.

use pv_iommu_abi::{errno, AbiError};

/// Errors returned to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// -EPERM.
    Perm,
    /// -ENOENT.
    NoEnt,
    /// -E2BIG.
    TooBig,
    /// -ENOMEM.
    NoMem,
    /// -EACCES.
    Access,
    /// -EFAULT.
    Fault,
    /// -EBUSY.
    Busy,
    /// -ENODEV.
    NoDev,
    /// -EINVAL.
    Inval,
    /// -ENOSPC.
    NoSpc,
    /// -EOPNOTSUPP.
    OpNotSupp,
    /// -EADDRINUSE.
    AddrInUse,
    /// -EADDRNOTAVAIL.
    AddrNotAvail,
}

impl Error {
    /// The positive errno.
    pub fn errno(self) -> i64 {
        match self {
            Error::Perm => errno::EPERM,
            Error::NoEnt => errno::ENOENT,
            Error::TooBig => errno::E2BIG,
            Error::NoMem => errno::ENOMEM,
            Error::Access => errno::EACCES,
            Error::Fault => errno::EFAULT,
            Error::Busy => errno::EBUSY,
            Error::NoDev => errno::ENODEV,
            Error::Inval => errno::EINVAL,
            Error::NoSpc => errno::ENOSPC,
            Error::OpNotSupp => errno::EOPNOTSUPP,
            Error::AddrInUse => errno::EADDRINUSE,
            Error::AddrNotAvail => errno::EADDRNOTAVAIL,
        }
    }
}

impl From<AbiError> for Error {
    fn from(e: AbiError) -> Self {
        match e {
            AbiError::UnknownSubop(_) => Error::OpNotSupp,
            AbiError::Truncated { .. } => Error::Fault,
        }
    }
}

impl From<crate::hw::AttachError> for Error {
    fn from(e: crate::hw::AttachError) -> Self {
        use crate::hw::AttachError as A;
        match e {
            A::NotSupported => Error::OpNotSupp,
            A::NoDevice => Error::NoDev,
            A::NoSpace => Error::NoSpc,
            A::Failed => Error::NoMem,
        }
    }
}

/// A successful handler result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Finished; the hypercall returns 0.
    Done,
    /// Preempted with progress recorded in the argument; re-issue the same
    /// hypercall (Xen: `hypercall_create_continuation`).
    Restart,
}

/// The value `do_iommu_op` returns for a handler result.
pub fn hypercall_return(r: Result<Outcome, Error>) -> i64 {
    match r {
        Ok(Outcome::Done) => 0,
        Ok(Outcome::Restart) => -errno::ERESTART,
        Err(e) => -e.errno(),
    }
}

/// Errors of the host-side management calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MgmtError {
    /// Out of hypervisor memory.
    NoMemory,
    /// No such domain or device, or it is in the wrong state.
    Invalid,
    /// A reserved range collides with an existing mapping.
    Conflict,
    /// The invalidation backlog is full; poll and retry.
    Busy,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_values() {
        assert_eq!(hypercall_return(Ok(Outcome::Done)), 0);
        assert_eq!(hypercall_return(Ok(Outcome::Restart)), -85);
        assert_eq!(hypercall_return(Err(Error::AddrInUse)), -98);
    }
}
