//! The backup host's clock. Retention and the apply delay measure age by
//! it, never by the protected host's: a compromised host sets its own
//! clock and forges the times in its records (Documentation/security.rst,
//! "Time"). Tests drive a manual clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// `CLOCK_REALTIME` of the backup host, or a clock that a test sets.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    manual: Option<Arc<AtomicU64>>,
}

impl Clock {
    /// The system's real-time clock.
    pub fn system() -> Self {
        Self::default()
    }

    /// A clock that stands at `ns` until [`Clock::set`] or
    /// [`Clock::advance`] moves it (its clones move with it).
    pub fn manual(ns: u64) -> Self {
        Self {
            manual: Some(Arc::new(AtomicU64::new(ns))),
        }
    }

    /// Nanoseconds since the epoch.
    pub fn now_ns(&self) -> u64 {
        match &self.manual {
            Some(t) => t.load(Ordering::Relaxed),
            None => system_ns(),
        }
    }

    /// Sets a manual clock (the system clock is not set).
    pub fn set(&self, ns: u64) {
        if let Some(t) = &self.manual {
            t.store(ns, Ordering::Relaxed);
        }
    }

    /// Moves a manual clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        if let Some(t) = &self.manual {
            t.fetch_add(
                u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
        }
    }

    /// The time `age` before now (0 if that is before the epoch).
    pub(crate) fn ago(&self, age: Duration) -> u64 {
        self.now_ns()
            .saturating_sub(u64::try_from(age.as_nanos()).unwrap_or(u64::MAX))
    }
}

/// `CLOCK_REALTIME` in nanoseconds.
pub(crate) fn system_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
