//! Time and waiting, passed in rather than global (see STYLE.md §6).

/// Nanoseconds of monotonic system time (the workspace's one time type).
pub use xen_types::Nanos;

/// What a ring client needs from its transport: tell the peer, and wait for
/// the peer to tell us, with a deadline.
pub trait Notifier {
    /// Signals the peer (event channel send).
    fn notify(&mut self);
    /// Waits until the peer may have signalled us or `deadline` passes.
    /// Returns `false` when the deadline has passed. Spurious wake-ups are
    /// allowed: callers re-check the ring.
    fn wait(&mut self, deadline: Nanos) -> bool;
    /// Current monotonic time.
    fn now(&self) -> Nanos;
}
