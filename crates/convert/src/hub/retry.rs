//! When and how long to wait before trying a request again.
//!
//! Transient failures (connection refused/reset, timeouts, a body cut short, HTTP 408/429/5xx)
//! are retried with capped exponential backoff and jitter; a `Retry-After` from the server is
//! honoured in full (it is the server telling us when it will serve us). Attempts are counted per
//! request; a download that made progress since its last failure starts counting again, so a
//! 400 GB file on a flaky link is not abandoned after a handful of cuts.

use std::time::Duration;

/// The backoff policy. The defaults suit the real hub; tests shrink `base` so they run fast.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts per request before giving up (the first try included).
    pub max_attempts: u32,
    /// Delay before the first retry; doubles per attempt.
    pub base: Duration,
    /// Largest backoff delay (before jitter).
    pub cap: Duration,
    /// Longest `Retry-After` honoured; larger values are clamped to this.
    pub max_retry_after: Duration,
    /// Complete re-downloads after a hash mismatch before failing.
    pub checksum_retries: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            base: Duration::from_secs(1),
            cap: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(600),
            checksum_retries: 1,
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `attempt` (1 = first retry): `base·2^(attempt-1)` capped at
    /// `cap`, jittered to between half and all of it (so parallel jobs do not retry in lockstep),
    /// and never shorter than the server's `Retry-After`.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let capped = exp.min(self.cap);
        let jittered = capped.mul_f64(0.5 + 0.5 * jitter());
        match retry_after {
            Some(ra) => jittered.max(ra.min(self.max_retry_after)),
            None => jittered,
        }
    }
}

/// A number in [0, 1) that differs between threads and calls (no RNG dependency for this).
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Parses `Retry-After` given as delta-seconds (the hub's form). HTTP-dates are not parsed: the
/// caller then falls back to its own backoff.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let v = value.trim();
    v.parse::<u64>().ok().map(Duration::from_secs).or_else(|| {
        v.parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_honours_retry_after() {
        let p = RetryPolicy {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(800),
            ..RetryPolicy::default()
        };
        for attempt in 1..10 {
            let d = p.delay(attempt, None);
            let full = Duration::from_millis(100 * (1 << (attempt - 1).min(3)));
            assert!(d >= full / 2 && d <= full, "{attempt}: {d:?}");
        }
        assert!(p.delay(1, Some(Duration::from_secs(3))) >= Duration::from_secs(3));
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}
