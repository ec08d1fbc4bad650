//! Retrying transaction conflicts in process, and the jitter that spreads retries out.
//!
//! DynamoDB cancels a transaction that touches an item another transaction is changing at the
//! same moment (`TransactionCanceledException` with reason `TransactionConflict`; a plain write
//! to such an item fails with `TransactionConflictException`). The SDK does not retry either.
//! Every shard of a run that finishes at the same time as another updates the same run item, so
//! at scale conflicts are the normal case, and a conflict that reaches Lambda costs the message
//! a whole visibility timeout (5,400 s in AWS). Both metadata adapters therefore run every
//! transaction through [`on_conflict`]: a conflict is retried here after a short, jittered,
//! growing pause ("full jitter": contenders that collided once do not collide again in step),
//! a bounded number of times. What still fails is [`MetaError::TransactionConflict`], which the
//! SQS glue ([`super::lambda`]) answers by making the message visible again within seconds.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::ports::MetaError;

/// Attempts per transaction, the first included.
pub const CONFLICT_ATTEMPTS: u32 = 10;
/// The pause before retry `k` (0-based) is uniform in `[0, min(CAP, BASE × 2^k)]`. With these
/// the retries of one transaction wait about 2 s in all on average (at most about 4 s), long
/// enough for dozens of contenders on one item to take turns.
const BACKOFF_BASE: Duration = Duration::from_millis(20);
const BACKOFF_CAP: Duration = Duration::from_secs(1);

/// Conflicts retried by this process (for logs and tests: how much contention there was).
static CONFLICTS_RETRIED: AtomicU64 = AtomicU64::new(0);

/// How many transaction conflicts this process has retried so far.
pub fn conflicts_retried() -> u64 {
    CONFLICTS_RETRIED.load(Ordering::Relaxed)
}

/// Runs `attempt` until it succeeds or fails with anything but a transaction conflict, at most
/// [`CONFLICT_ATTEMPTS`] times. `op` names the transaction in the log.
pub async fn on_conflict<T, F, Fut>(op: &str, mut attempt: F) -> Result<T, MetaError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, MetaError>>,
{
    let mut retry = 0u32;
    loop {
        match attempt().await {
            Err(MetaError::TransactionConflict(why)) if retry + 1 < CONFLICT_ATTEMPTS => {
                CONFLICTS_RETRIED.fetch_add(1, Ordering::Relaxed);
                let ceiling = BACKOFF_BASE.saturating_mul(1 << retry.min(16)).min(BACKOFF_CAP);
                let pause = jitter(Duration::ZERO..=ceiling);
                tracing::debug!(op, retry, pause_ms = pause.as_millis() as u64, %why, "transaction conflict; retrying");
                tokio::time::sleep(pause).await;
                retry += 1;
            }
            other => return other,
        }
    }
}

/// A uniformly random duration in `range` (millisecond steps).
pub fn jitter(range: std::ops::RangeInclusive<Duration>) -> Duration {
    let (low, high) = (range.start().as_millis() as u64, range.end().as_millis() as u64);
    if high <= low {
        return *range.start();
    }
    // Jitter needs no secrecy, but the OS source is at hand and never repeats across processes.
    let random = getrandom::u64().unwrap_or(0x9E37_79B9_7F4A_7C15);
    Duration::from_millis(low + random % (high - low + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[tokio::test]
    async fn conflicts_are_retried_a_bounded_number_of_times() {
        let calls = AtomicU32::new(0);
        let r = on_conflict("test", || async {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            if n < 2 { Err(MetaError::TransactionConflict("busy".into())) } else { Ok(n) }
        })
        .await;
        assert_eq!(r.unwrap(), 2);

        calls.store(0, Ordering::SeqCst);
        let r: Result<(), _> =
            on_conflict("test", || async { Err(MetaError::Conflict(format!("{}", calls.fetch_add(1, Ordering::SeqCst)))) }).await;
        assert!(matches!(r, Err(MetaError::Conflict(_))), "a lost condition is an answer, not retried");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn jitter_stays_in_its_range() {
        for _ in 0..100 {
            let d = jitter(Duration::from_secs(2)..=Duration::from_secs(8));
            assert!(d >= Duration::from_secs(2) && d <= Duration::from_secs(8));
        }
        assert_eq!(jitter(Duration::ZERO..=Duration::ZERO), Duration::ZERO);
    }
}
