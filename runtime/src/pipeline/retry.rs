//! Retries: the back-off between attempts, and what is known of one record's failure across
//! them (kind, text, attempts, first and last time) for the dead-letter entry or the error.

use std::time::{Duration, SystemTime};

use super::failure::{Cause, StageRef};
use crate::config::{Breaker, Retry};
use crate::contract::WitError;
use crate::plugin::Trap;

/// Back-off before attempt `attempt + 1`: doubling from `retry.backoff`, capped, with full
/// jitter in [half, whole].
pub fn backoff(retry: &Retry, attempt: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(20));
    let base = retry.backoff.saturating_mul(factor).min(retry.max_backoff);
    let half = base / 2;
    half + base.mul_f64(fastrand::f64() * 0.5)
}

/// Why one record failed, across attempts.
#[derive(Debug, Clone)]
pub(super) struct Failure {
    pub(super) kind: String,
    pub(super) error: String,
    pub(super) attempts: u32,
    pub(super) first: SystemTime,
    pub(super) last: SystemTime,
    pub(super) cause: Cause,
}

impl Failure {
    fn new(kind: &str, error: String, cause: Cause) -> Failure {
        let now = SystemTime::now();
        Failure {
            kind: kind.to_owned(),
            error,
            attempts: 1,
            first: now,
            last: now,
            cause,
        }
    }

    /// Fold a later attempt's failure into this one (a shut-off breaker is no attempt).
    pub(super) fn again(mut self, later: Failure) -> Failure {
        if !matches!(later.cause, Cause::CircuitOpen(_)) {
            self.attempts += 1;
        }
        self.last = later.last;
        self.kind = later.kind;
        self.error = later.error;
        self.cause = later.cause;
        self
    }

    /// The plugin's own error about record `record` of the batch it was handed.
    pub(super) fn error(function: &'static str, error: WitError, record: usize) -> Failure {
        let kind = error.kind.to_string();
        let text = crate::contract::message_text(&error);
        Failure::new(
            &kind,
            text,
            Cause::Error {
                function,
                error,
                record: Some(record),
            },
        )
    }

    /// The instance trapped.
    pub(super) fn trap(trap: Trap) -> Failure {
        Failure::new("trap", trap.reason.clone(), Cause::Trap(trap))
    }

    /// The stage's breaker is open: the plugin was not called.
    pub(super) fn open(stage: &StageRef, breaker: &Breaker) -> Failure {
        let text = format!(
            "circuit breaker of {stage} is open ({} traps within {}); retrying the plugin after {}",
            breaker.traps,
            humantime::format_duration(breaker.window),
            humantime::format_duration(breaker.cooldown)
        );
        Failure::new("circuit-open", text.clone(), Cause::CircuitOpen(text))
    }

    /// The plugin broke the contract (a wrong number of answers).
    pub(super) fn contract(text: String) -> Failure {
        Failure::new("contract", text.clone(), Cause::Contract(text))
    }
}

/// `now`, folded into what came before it.
pub(super) fn merge(previous: Option<Box<Failure>>, now: Failure) -> Failure {
    match previous {
        Some(p) => (*p).again(now),
        None => now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let retry = Retry {
            attempts: 10,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };
        for _ in 0..100 {
            let first = backoff(&retry, 1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = backoff(&retry, 3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            let late = backoff(&retry, 30);
            assert!(late >= Duration::from_millis(500) && late <= Duration::from_secs(1));
        }
    }
}
