//! Transmit credit (the vif's `rate` node, `bytes,usec`): each queue may
//! take `bytes` per `usec` from its guest, as Linux netback's
//! `tx_credit_exceeded`/`tx_add_credit` do. A period's unused credit
//! carries over up to a burst of one largest packet (or `bytes`, if more),
//! so every packet can eventually go.

use xen::wait::Nanos;

/// Largest burst a small rate still lets through: one largest packet.
const MIN_BURST: u64 = net::MAX_FRAME as u64;

/// A queue's transmit credit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Credit {
    /// Bytes per period (`u64::MAX`: unlimited).
    bytes: u64,
    /// Period in ns.
    period: Nanos,
    remaining: u64,
    window: Nanos,
}

impl Credit {
    /// No limit.
    pub const UNLIMITED: Credit = Credit { bytes: u64::MAX, period: 0, remaining: u64::MAX, window: 0 };

    /// `bytes` per `usec` microseconds, starting full at `now`. A zero in
    /// either is no limit.
    pub fn new(bytes: u64, usec: u64, now: Nanos) -> Credit {
        if bytes == 0 || usec == 0 {
            return Credit::UNLIMITED;
        }
        Credit { bytes, period: usec.saturating_mul(1000), remaining: bytes, window: now }
    }

    /// Parses the `rate` node (`"bytes,usec"`); `None` if malformed.
    pub fn parse(s: &str, now: Nanos) -> Option<Credit> {
        let (b, u) = s.trim().split_once(',')?;
        let num = |t: &str| {
            if t.is_empty() || t.len() > 19 || !t.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            t.parse::<u64>().ok()
        };
        Some(Credit::new(num(b)?, num(u)?, now))
    }

    /// Whether this is a real limit.
    pub fn limited(&self) -> bool {
        self.bytes != u64::MAX
    }

    /// Takes `size` bytes of credit at `now` if there is enough (refilling
    /// first when a period has passed). `false`: wait until
    /// [`next_refill`](Self::next_refill).
    pub fn take(&mut self, now: Nanos, size: u64) -> bool {
        if !self.limited() {
            return true;
        }
        if now >= self.next_refill() {
            self.window = now;
            let burst = self.bytes.max(MIN_BURST);
            self.remaining = self.remaining.saturating_add(self.bytes).min(burst);
        }
        if size > self.remaining {
            return false;
        }
        self.remaining -= size;
        true
    }

    /// When the next period starts.
    pub fn next_refill(&self) -> Nanos {
        self.window.saturating_add(self.period)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_limit() {
        assert_eq!(Credit::parse("", 0), None);
        assert_eq!(Credit::parse("10,x", 0), None);
        assert_eq!(Credit::parse("-1,5", 0), None);
        assert!(!Credit::parse("0,100", 0).unwrap().limited());
        let mut c = Credit::parse("10000,1000", 0).unwrap();
        assert!(c.take(0, 6000));
        assert!(!c.take(10, 6000), "4000 left");
        assert_eq!(c.next_refill(), 1_000_000);
        assert!(c.take(1_000_000, 6000));
        // A packet bigger than one period's credit goes after credit built up.
        let mut c = Credit::new(1000, 1, 0);
        let mut t = 0;
        while !c.take(t, 9000) {
            t += 1000;
            assert!(t < 100_000);
        }
        assert_eq!(t, 8000);
    }
}
