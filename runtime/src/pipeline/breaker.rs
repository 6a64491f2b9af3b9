//! A stage's circuit breaker: closed while the plugin behaves; opened by `traps` traps within
//! `window` (the stage's batches are then settled by `on_error` without calling the plugin);
//! half-open after `cooldown`, when one trial batch decides whether it closes again.

use std::collections::VecDeque;
use std::time::Instant;

use crate::config::Breaker;

/// The state of a stage's circuit breaker.
#[derive(Debug, Default)]
pub struct Circuit {
    traps: VecDeque<Instant>,
    open_until: Option<Instant>,
}

impl Circuit {
    /// Whether the plugin may be called at `now` (closed, or open past its cool-down: a trial).
    pub fn allows(&self, now: Instant) -> bool {
        self.open_until.is_none_or(|until| now >= until)
    }

    /// Count a trap at `now`; true when this opens the breaker (a failed trial reopens it).
    pub fn trapped(&mut self, settings: &Breaker, now: Instant) -> bool {
        let trial_failed = self.open_until.is_some();
        self.traps.push_back(now);
        while self
            .traps
            .front()
            .is_some_and(|t| now.duration_since(*t) > settings.window)
        {
            self.traps.pop_front();
        }
        if trial_failed || self.traps.len() >= settings.traps as usize {
            self.open_until = Some(now + settings.cooldown);
            self.traps.clear();
            true
        } else {
            false
        }
    }

    /// A call returned normally; true when that closes an open breaker.
    pub fn succeeded(&mut self) -> bool {
        self.open_until.take().is_some()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn opens_after_traps_in_the_window_then_half_opens_and_closes_or_reopens() {
        let settings = Breaker {
            traps: 3,
            window: Duration::from_secs(10),
            cooldown: Duration::from_secs(30),
        };
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut c = Circuit::default();
        // Traps spread wider than the window never open it.
        assert!(!c.trapped(&settings, t0));
        assert!(!c.trapped(&settings, t0 + s(11)));
        assert!(!c.trapped(&settings, t0 + s(22)));
        assert!(c.allows(t0 + s(22)));
        // Three within the window do.
        assert!(!c.trapped(&settings, t0 + s(23)));
        assert!(c.trapped(&settings, t0 + s(24)));
        assert!(!c.allows(t0 + s(25)));
        assert!(!c.allows(t0 + s(53)));
        // Half-open after the cool-down: one trial; a trap reopens it at once.
        assert!(c.allows(t0 + s(54)));
        assert!(c.trapped(&settings, t0 + s(54)));
        assert!(!c.allows(t0 + s(55)));
        // The next trial succeeds: closed, and it takes three traps again to open.
        assert!(c.allows(t0 + s(84)));
        assert!(c.succeeded());
        assert!(!c.succeeded());
        assert!(!c.trapped(&settings, t0 + s(85)));
        assert!(c.allows(t0 + s(85)));
    }
}
