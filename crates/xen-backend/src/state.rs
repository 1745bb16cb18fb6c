//! `enum xenbus_state` (`xen/include/public/io/xenbus.h`) and xenstore
//! integers.

use alloc::string::{String, ToString};

/// `enum xenbus_state` (`io/xenbus.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum XenbusState {
    /// 0: no state node / unknown.
    Unknown,
    /// 1.
    Initialising,
    /// 2: finished early initialisation, waiting for the peer's details.
    InitWait,
    /// 3: details published.
    Initialised,
    /// 4.
    Connected,
    /// 5: the device is being closed.
    Closing,
    /// 6.
    Closed,
    /// 7: reconfiguring (pvSCSI only).
    Reconfiguring,
    /// 8.
    Reconfigured,
}

impl XenbusState {
    /// The numeric value.
    pub const fn to_u32(self) -> u32 {
        self as u32
    }

    /// From a numeric value; `None` past 8.
    pub const fn from_u32(v: u32) -> Option<XenbusState> {
        use XenbusState::*;
        Some(match v {
            0 => Unknown,
            1 => Initialising,
            2 => InitWait,
            3 => Initialised,
            4 => Connected,
            5 => Closing,
            6 => Closed,
            7 => Reconfiguring,
            8 => Reconfigured,
            _ => return None,
        })
    }

    /// Parses a `state` node's text.
    pub fn parse(s: &str) -> Option<XenbusState> {
        parse_u32(s).and_then(XenbusState::from_u32)
    }

    /// Text for the `state` node.
    pub fn to_node(self) -> String {
        self.to_u32().to_string()
    }
}

/// Strict xenstore unsigned: 1..=10 ASCII digits, fits in `u32`, nothing else.
pub fn parse_u32(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.bytes().try_fold(0u32, |acc, b| acc.checked_mul(10)?.checked_add(u32::from(b - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip() {
        for v in 0..=8 {
            let s = XenbusState::from_u32(v).unwrap();
            assert_eq!(s.to_u32(), v);
            assert_eq!(XenbusState::parse(&s.to_node()), Some(s));
        }
        assert_eq!(XenbusState::from_u32(9), None);
        assert_eq!(XenbusState::parse("4 "), None);
        assert_eq!(XenbusState::parse("-1"), None);
    }

    #[test]
    fn strict_integers() {
        assert_eq!(parse_u32("0"), Some(0));
        assert_eq!(parse_u32("4294967295"), Some(u32::MAX));
        assert_eq!(parse_u32("4294967296"), None);
        assert_eq!(parse_u32("00000000001"), None, "more than 10 digits");
        assert_eq!(parse_u32(""), None);
        assert_eq!(parse_u32("+1"), None);
        assert_eq!(parse_u32("1x"), None);
    }
}
