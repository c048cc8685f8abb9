//! Retry schedule for status callbacks: exponential backoff, capped.

use std::time::Duration;

/// Delay before the attempt that follows failed attempt number `attempt` (1-based):
/// `base * 2^(attempt-1)`, never more than `cap`. Attempt 0 is treated as 1.
pub fn next_delay(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let exp = attempt.saturating_sub(1).min(31);
    base.checked_mul(1u32 << exp).unwrap_or(cap).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);
    const CAP: Duration = Duration::from_secs(600);

    #[test]
    fn doubles_from_base() {
        let got: Vec<u64> = (1..=6).map(|a| next_delay(a, S, CAP).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32]);
    }

    #[test]
    fn caps_and_never_overflows() {
        assert_eq!(next_delay(10, S, CAP), Duration::from_secs(512));
        assert_eq!(next_delay(11, S, CAP), CAP); // 1024 s uncapped
        assert_eq!(next_delay(u32::MAX, S, CAP), CAP);
        assert_eq!(next_delay(40, Duration::MAX, CAP), CAP);
    }

    #[test]
    fn attempt_zero_is_base() {
        assert_eq!(next_delay(0, S, CAP), S);
    }
}
