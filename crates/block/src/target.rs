//! What a vbd's `params` node (xl's `target=`) names.
//!
//! Accepted forms (a leading `/dev/` is ignored, so a Linux habit works):
//! - `nvme0n1`: namespace 1 of the first NVMe controller (controllers are
//!   numbered in PCI address order, namespaces by NSID);
//! - `nvme0n1p2`: GPT partition 2 of that namespace;
//! - `partlabel=NAME`: the GPT partition whose name is `NAME`;
//! - `partuuid=UUID`: the GPT partition with that unique GUID;
//! - `ram:SIZE`: a RAM disk of SIZE bytes (`K`, `M`, `G` suffixes, powers of
//!   1024), for experiments: nothing on it survives Ferrite.

use alloc::string::{String, ToString};
use core::fmt;

use crate::gpt::Guid;

/// The largest RAM disk a target may name (Ferrite runs in tens of MiB).
pub const MAX_RAM_BYTES: u64 = 64 << 20;
/// Longest `params` value looked at (xenstore values are guest-reachable
/// only through the toolstack, but are bounded all the same).
pub const MAX_PARAMS_LEN: usize = 256;

/// A parsed target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A namespace, or a partition of it (`part` is the 1-based GPT entry).
    Nvme { ctrl: u32, nsid: u32, part: Option<u32> },
    /// The GPT partition with this name.
    PartLabel(String),
    /// The GPT partition with this unique GUID.
    PartUuid(Guid),
    /// A RAM disk of this many bytes.
    Ram { bytes: u64 },
}

/// Why a `params` value names nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetError {
    Empty,
    TooLong,
    /// Not one of the accepted forms.
    Unknown,
    /// `ram:` with a size that is missing, zero, not a multiple of 512 or
    /// larger than [`MAX_RAM_BYTES`].
    BadRamSize,
    /// `partuuid=` with something that is not a GUID.
    BadUuid,
    /// `partlabel=` with an empty or over-long (36 UTF-16 units) name.
    BadLabel,
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetError::Empty => "empty target",
            TargetError::TooLong => "target longer than 256 bytes",
            TargetError::Unknown => {
                "unknown target (expected nvmeXnY, nvmeXnYpZ, partlabel=NAME, partuuid=UUID or ram:SIZE)"
            }
            TargetError::BadRamSize => "bad RAM disk size (a multiple of 512 bytes, at most 64M)",
            TargetError::BadUuid => "partuuid= needs a GUID like 0fc63daf-8483-4772-8e79-3d69d8477de4",
            TargetError::BadLabel => "partlabel= needs a name of 1 to 36 characters",
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Nvme { ctrl, nsid, part: None } => write!(f, "nvme{ctrl}n{nsid}"),
            Target::Nvme { ctrl, nsid, part: Some(p) } => write!(f, "nvme{ctrl}n{nsid}p{p}"),
            Target::PartLabel(l) => write!(f, "partlabel={l}"),
            Target::PartUuid(u) => write!(f, "partuuid={u}"),
            Target::Ram { bytes } => write!(f, "ram:{bytes}"),
        }
    }
}

/// Parses a `params` value. Never panics, whatever the bytes.
pub fn parse(params: &str) -> Result<Target, TargetError> {
    if params.len() > MAX_PARAMS_LEN {
        return Err(TargetError::TooLong);
    }
    let s = params.trim();
    let s = s.strip_prefix("/dev/").unwrap_or(s);
    if s.is_empty() {
        return Err(TargetError::Empty);
    }
    if let Some(rest) = s.strip_prefix("ram:") {
        return parse_size(rest).map(|bytes| Target::Ram { bytes }).ok_or(TargetError::BadRamSize);
    }
    if let Some(rest) = s.strip_prefix("partuuid=") {
        return Guid::parse(rest).map(Target::PartUuid).ok_or(TargetError::BadUuid);
    }
    if let Some(rest) = s.strip_prefix("partlabel=") {
        let units = rest.encode_utf16().count();
        if units == 0 || units > crate::gpt::NAME_UNITS {
            return Err(TargetError::BadLabel);
        }
        return Ok(Target::PartLabel(rest.to_string()));
    }
    parse_nvme(s).ok_or(TargetError::Unknown)
}

/// `nvme<ctrl>n<nsid>[p<part>]`, decimal without leading `+`/`-`, NSID and
/// partition at least 1.
fn parse_nvme(s: &str) -> Option<Target> {
    let rest = s.strip_prefix("nvme")?;
    let (ctrl, rest) = split_number(rest)?;
    let rest = rest.strip_prefix('n')?;
    let (nsid, rest) = split_number(rest)?;
    let part = match rest {
        "" => None,
        r => {
            let (p, tail) = split_number(r.strip_prefix('p')?)?;
            if !tail.is_empty() || p == 0 {
                return None;
            }
            Some(p)
        }
    };
    (nsid >= 1).then_some(Target::Nvme { ctrl, nsid, part })
}

/// A leading decimal number (1 to 9 digits) and what follows it.
fn split_number(s: &str) -> Option<(u32, &str)> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits > 9 {
        return None;
    }
    Some((s[..digits].parse().ok()?, &s[digits..]))
}

/// `SIZE[K|M|G]` in bytes: non-zero, a multiple of 512, at most
/// [`MAX_RAM_BYTES`].
fn parse_size(s: &str) -> Option<u64> {
    let (num, shift) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 10),
        b'M' | b'm' => (&s[..s.len() - 1], 20),
        b'G' | b'g' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let (n, tail) = split_number(num)?;
    if !tail.is_empty() {
        return None;
    }
    let bytes = u64::from(n).checked_shl(shift)?;
    (bytes > 0 && bytes.is_multiple_of(512) && bytes <= MAX_RAM_BYTES).then_some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names() {
        assert_eq!(parse("nvme0n1"), Ok(Target::Nvme { ctrl: 0, nsid: 1, part: None }));
        assert_eq!(parse("/dev/nvme1n2p3"), Ok(Target::Nvme { ctrl: 1, nsid: 2, part: Some(3) }));
        assert_eq!(parse(" nvme0n1p12 "), Ok(Target::Nvme { ctrl: 0, nsid: 1, part: Some(12) }));
        assert_eq!(parse("ram:4M"), Ok(Target::Ram { bytes: 4 << 20 }));
        assert_eq!(parse("ram:65536"), Ok(Target::Ram { bytes: 65536 }));
        assert_eq!(parse("partlabel=guest-a"), Ok(Target::PartLabel("guest-a".into())));
        let u = "0fc63daf-8483-4772-8e79-3d69d8477de4";
        match parse(&alloc::format!("partuuid={u}")) {
            Ok(Target::PartUuid(g)) => assert_eq!(alloc::format!("{g}"), u),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refusals() {
        for (s, e) in [
            ("", TargetError::Empty),
            ("/dev/", TargetError::Empty),
            ("nvme", TargetError::Unknown),
            ("nvme0", TargetError::Unknown),
            ("nvme0n0", TargetError::Unknown),
            ("nvme0n1p0", TargetError::Unknown),
            ("nvme0n1p", TargetError::Unknown),
            ("nvme0n1x", TargetError::Unknown),
            ("nvme-1n1", TargetError::Unknown),
            ("nvme0n99999999999", TargetError::Unknown),
            ("/dev/sda", TargetError::Unknown),
            ("ram:", TargetError::BadRamSize),
            ("ram:0", TargetError::BadRamSize),
            ("ram:100", TargetError::BadRamSize),
            ("ram:1G", TargetError::BadRamSize),
            ("ram:4X", TargetError::BadRamSize),
            ("partuuid=xyz", TargetError::BadUuid),
            ("partlabel=", TargetError::BadLabel),
        ] {
            assert_eq!(parse(s), Err(e), "{s:?}");
        }
        assert_eq!(parse(&"n".repeat(300)), Err(TargetError::TooLong));
        assert_eq!(parse(&alloc::format!("partlabel={}", "x".repeat(37))), Err(TargetError::BadLabel));
    }

    proptest! {
        #[test]
        fn never_panics_and_round_trips(s in "\\PC{0,80}") {
            if let Ok(t) = parse(&s) {
                let again = parse(&alloc::format!("{t}"));
                prop_assert_eq!(again, Ok(t));
            }
        }

        #[test]
        fn nvme_round_trip(c in 0u32..1000, n in 1u32..1000, p in proptest::option::of(1u32..200)) {
            let t = Target::Nvme { ctrl: c, nsid: n, part: p };
            prop_assert_eq!(parse(&alloc::format!("{t}")), Ok(t));
        }
    }
}
