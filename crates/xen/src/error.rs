//! Xen error numbers mapped to one typed error for the runtime.

/// An error returned by a hypercall (Xen's errno values, `xen/include/public/errno.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XenError {
    Perm,
    NoEnt,
    Srch,
    Io,
    TooBig,
    Again,
    NoMem,
    Access,
    Fault,
    Busy,
    Exist,
    NoDev,
    Inval,
    NoSpc,
    Range,
    NoSys,
    NotSup,
    AddrInUse,
    AddrNotAvail,
    /// Any other negative return, kept verbatim.
    Other(i64),
}

impl XenError {
    /// Maps a negative hypercall return value to the typed error.
    pub fn from_errno(ret: i64) -> Self {
        match -ret {
            1 => Self::Perm,
            2 => Self::NoEnt,
            3 => Self::Srch,
            5 => Self::Io,
            7 => Self::TooBig,
            11 => Self::Again,
            12 => Self::NoMem,
            13 => Self::Access,
            14 => Self::Fault,
            16 => Self::Busy,
            17 => Self::Exist,
            19 => Self::NoDev,
            22 => Self::Inval,
            28 => Self::NoSpc,
            34 => Self::Range,
            38 => Self::NoSys,
            95 => Self::NotSup,
            98 => Self::AddrInUse,
            99 => Self::AddrNotAvail,
            _ => Self::Other(ret),
        }
    }

    /// Turns a raw hypercall result into `Ok(value)` or the typed error.
    pub fn check(ret: i64) -> Result<u64, XenError> {
        if ret < 0 {
            Err(Self::from_errno(ret))
        } else {
            Ok(ret as u64)
        }
    }
}

impl core::fmt::Display for XenError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Other(n) => write!(f, "Xen error {n}"),
            e => write!(f, "{e:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn errno_mapping() {
        assert_eq!(XenError::check(0), Ok(0));
        assert_eq!(XenError::check(7), Ok(7));
        assert_eq!(XenError::check(-22), Err(XenError::Inval));
        assert_eq!(XenError::check(-38), Err(XenError::NoSys));
        assert_eq!(XenError::check(-4096), Err(XenError::Other(-4096)));
    }
}
