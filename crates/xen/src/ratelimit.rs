//! Bounded logging for anything a guest can trigger (STYLE.md: log hostile
//! input at a bounded rate).
//!
//! Each source (a vbd, a vif) owns a [`LogLimit`]: a burst of lines, then
//! one line per period; lines over the budget are counted, and the next line
//! that goes out says how many were suppressed. Time is passed in.
#![forbid(unsafe_code)]

use crate::wait::Nanos;

/// A token bucket for log lines.
#[derive(Clone, Copy, Debug)]
pub struct LogLimit {
    burst: u32,
    period: Nanos,
    tokens: u32,
    refilled: Nanos,
    suppressed: u64,
}

impl LogLimit {
    /// `burst` lines at once, then one more per `period` ns.
    pub const fn new(burst: u32, period: Nanos) -> Self {
        LogLimit { burst, period, tokens: burst, refilled: 0, suppressed: 0 }
    }

    /// Ferrite's default for guest-triggered messages: 10 lines, then one
    /// per 5 s.
    pub const fn guest() -> Self {
        Self::new(10, 5_000_000_000)
    }

    /// `Some(n)`: log this line now, mentioning `n` lines suppressed
    /// before it (0: none). `None`: suppress it (it is counted).
    pub fn allow(&mut self, now: Nanos) -> Option<u64> {
        if self.period > 0 && now > self.refilled {
            let gained = (now - self.refilled) / self.period;
            if gained > 0 {
                self.tokens = self.burst.min(self.tokens.saturating_add(u32::try_from(gained).unwrap_or(u32::MAX)));
                self.refilled = self.refilled.saturating_add(gained.saturating_mul(self.period));
            }
        }
        if self.tokens == 0 {
            self.suppressed = self.suppressed.saturating_add(1);
            return None;
        }
        self.tokens -= 1;
        Some(core::mem::take(&mut self.suppressed))
    }

    /// Lines suppressed and not yet reported.
    pub fn pending(&self) -> u64 {
        self.suppressed
    }
}

/// `" (N suppressed)"` when `n > 0`, else nothing: append to the line
/// [`LogLimit::allow`] let through.
pub fn suppressed_note(n: u64) -> impl core::fmt::Display {
    struct Note(u64);
    impl core::fmt::Display for Note {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            if self.0 > 0 {
                write!(f, " ({} suppressed)", self.0)
            } else {
                Ok(())
            }
        }
    }
    Note(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Nanos = 1_000_000_000;

    #[test]
    fn a_thousand_bad_writes_make_a_bounded_number_of_lines() {
        let mut l = LogLimit::guest();
        // 1,000 events within one second: only the burst gets out.
        let out: Vec<u64> = (0..1000).filter_map(|i| l.allow(i * 1_000_000)).collect();
        assert_eq!(out.len(), 10);
        assert_eq!(l.pending(), 990);
        // Five seconds later one more line, carrying the count.
        assert_eq!(l.allow(5 * S + 1), Some(990));
        assert_eq!(l.allow(5 * S + 2), None);
        assert_eq!(alloc::format!("x{}", suppressed_note(990)), "x (990 suppressed)");
        assert_eq!(alloc::format!("x{}", suppressed_note(0)), "x");
    }

    #[test]
    fn steady_rate_over_an_hour_is_bounded() {
        let mut l = LogLimit::guest();
        let lines = (0..3_600_000u64).filter(|i| l.allow(i * 1_000_000).is_some()).count();
        // 10 at once, then one per 5 s: 10 + 720.
        assert!((720..=731).contains(&lines), "{lines}");
    }

    #[test]
    fn clock_going_backwards_is_harmless() {
        let mut l = LogLimit::new(1, S);
        assert_eq!(l.allow(10 * S), Some(0));
        assert_eq!(l.allow(S), None);
        assert_eq!(l.allow(12 * S), Some(1));
    }
}
