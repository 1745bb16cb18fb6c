//! Hybrid polling for a polled device (no interrupts): while only the
//! device is working, nap for part of its usual wait, then spin.
//!
//! Linux naps for half the mean completion time. A nap here is a block in
//! the hypervisor with a timer, and it ends late by however long the
//! hypervisor takes to run us again: about 50 us on hardware, often more
//! than the whole device wait under emulation. So the late wake-up is
//! measured too, and the nap is half the mean wait *minus* the mean
//! overshoot; when that leaves too little, the wait is spun instead. Every
//! [`REPROBE_EVERY`]-th wait naps anyway (when the device wait itself is
//! worth a nap), so a stale overshoot is re-measured and napping comes back
//! once wake-ups are prompt again.
//!
//! All times are nanoseconds on one monotonic clock, supplied by the caller.

/// A nap shorter than this is not worth taking (it frees less CPU than
/// the block and wake-up cost).
pub const NAP_WORTH_NS: u64 = 40_000;
/// The longest nap.
pub const NAP_MAX_NS: u64 = 2_000_000;
/// One wait in this many naps even when the overshoot says not to, to
/// measure the overshoot again.
pub const REPROBE_EVERY: u32 = 64;

/// The hybrid poller's state: running means of the device wait (1/8 weight
/// per sample) and of a nap's overshoot (1/4: it is sampled only by naps,
/// so it must follow a change within a few), and the current wait.
#[derive(Clone, Debug, Default)]
pub struct HybridPoll {
    wait_mean: u64,
    overshoot_mean: u64,
    since: Option<u64>,
    napped: bool,
    waits: u32,
    /// Naps taken.
    pub naps: u64,
    /// Waits spun through because the overshoot ate the nap.
    pub spun: u64,
}

/// A running mean giving each new sample 1/`k` of the weight (the first
/// sample is taken as it is).
fn ewma(mean: u64, sample: u64, k: u64) -> u64 {
    if mean == 0 {
        sample
    } else {
        mean - mean / k + sample / k
    }
}

impl HybridPoll {
    /// A poller with no history (it spins until it has seen device waits).
    pub fn new() -> HybridPoll {
        HybridPoll::default()
    }

    /// The mean device wait learnt so far.
    pub fn wait_mean(&self) -> u64 {
        self.wait_mean
    }

    /// The mean nap overshoot learnt so far.
    pub fn overshoot_mean(&self) -> u64 {
        self.overshoot_mean
    }

    /// Nothing is in flight: the current wait (if any) is forgotten.
    pub fn idle(&mut self) {
        self.since = None;
    }

    /// The device completed something: the wait since it became the only
    /// thing working is a sample of the device wait.
    pub fn progressed(&mut self, now: u64) {
        if let Some(t0) = self.since.take() {
            self.wait_mean = ewma(self.wait_mean, now.saturating_sub(t0), 8);
        }
    }

    /// Only the device is working at `now` (a wait begins, or goes on):
    /// for spinning, which still learns the device's wait.
    pub fn waiting(&mut self, now: u64) {
        if self.since.is_none() {
            self.since = Some(now);
            self.napped = false;
            self.waits = self.waits.wrapping_add(1);
        }
    }

    /// Only the device is working at `now`: the deadline to nap until, or
    /// `None` to keep spinning. At most one nap per wait.
    pub fn nap_until(&mut self, now: u64) -> Option<u64> {
        self.waiting(now);
        if self.napped || self.wait_mean < NAP_WORTH_NS {
            return None;
        }
        let half = (self.wait_mean / 2).min(NAP_MAX_NS);
        let nap = half.saturating_sub(self.overshoot_mean);
        let reprobe = self.waits.is_multiple_of(REPROBE_EVERY);
        if nap < NAP_WORTH_NS && !reprobe {
            self.spun += 1;
            self.napped = true; // decided for this wait
            return None;
        }
        self.napped = true;
        self.naps += 1;
        Some(now + nap.max(NAP_WORTH_NS))
    }

    /// A nap asked to end at `until` ended at `woke`; `early` if an event
    /// ended it (then it says nothing about the timer's overshoot).
    pub fn woke(&mut self, until: u64, woke: u64, early: bool) {
        if !early {
            self.overshoot_mean = ewma(self.overshoot_mean, woke.saturating_sub(until), 4).max(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `n` device waits of `wait` ns each, with naps that overshoot by
    /// `over` ns; returns the total time per wait (the latency seen).
    fn run(p: &mut HybridPoll, n: u32, wait: u64, over: u64) -> u64 {
        let mut now = 1_000_000u64;
        let mut total = 0;
        for _ in 0..n {
            let start = now;
            let done = start + wait;
            if let Some(until) = p.nap_until(now) {
                let woke = until + over;
                p.woke(until, woke, false);
                now = woke;
            }
            now = now.max(done); // spin until the completion
            p.progressed(now);
            total += now - start;
            p.idle();
            now += 10_000;
        }
        total / u64::from(n)
    }

    #[test]
    fn naps_for_half_the_wait_when_wakeups_are_prompt() {
        let mut p = HybridPoll::new();
        let lat = run(&mut p, 200, 400_000, 0);
        assert!(p.naps > 150, "naps {}", p.naps);
        assert_eq!(lat, 400_000, "a prompt nap adds no latency");
        assert!((390_000..=410_000).contains(&p.wait_mean()));
    }

    #[test]
    fn late_wakeups_shorten_the_nap_by_the_overshoot() {
        let mut p = HybridPoll::new();
        run(&mut p, 200, 400_000, 100_000);
        assert!(p.naps > 150);
        assert!((90_000..=110_000).contains(&p.overshoot_mean()), "{}", p.overshoot_mean());
        // Half the wait (200 us) minus the overshoot (100 us): the nap ends
        // on time with the overshoot, and the wait costs no extra latency.
        let lat = run(&mut p, 50, 400_000, 100_000);
        assert_eq!(lat, 400_000);
    }

    #[test]
    fn spins_when_the_overshoot_eats_the_nap_and_reprobes() {
        // Overshoot (1.5 ms) larger than half the wait (200 us): a plain
        // half-wait nap would add ~1.3 ms per request.
        let mut p = HybridPoll::new();
        let lat = run(&mut p, 640, 400_000, 1_500_000);
        assert!(p.spun > 500, "spun {}", p.spun);
        assert!(p.naps <= 640 / REPROBE_EVERY as u64 + 2, "naps {}", p.naps);
        assert!(lat < 400_000 + 1_500_000 / 8, "mean latency {lat}");
        // Wake-ups become prompt: the re-probes see it and napping returns.
        let before = p.naps;
        run(&mut p, 64 * 40, 400_000, 0);
        assert!(p.naps - before > 64 * 30, "naps after recovery {}", p.naps - before);
    }

    #[test]
    fn short_waits_never_nap_and_early_wakeups_teach_nothing() {
        let mut p = HybridPoll::new();
        run(&mut p, 100, 20_000, 0);
        assert_eq!(p.naps, 0);
        let mut q = HybridPoll::new();
        q.woke(100, 5_000_000, true);
        assert_eq!(q.overshoot_mean(), 0);
        q.woke(100, 300, false);
        assert_eq!(q.overshoot_mean(), 200);
        q.woke(100, 100, false);
        assert_eq!(q.overshoot_mean(), 150);
    }

    #[test]
    fn one_nap_per_wait() {
        let mut p = HybridPoll::new();
        run(&mut p, 20, 400_000, 0);
        assert!(p.nap_until(0).is_some());
        assert!(p.nap_until(10).is_none());
        p.progressed(400_000);
        p.idle();
        assert!(p.nap_until(500_000).is_some());
    }
}
