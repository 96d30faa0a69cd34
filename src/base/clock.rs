//! The clock every freshness decision reads, injected so tests move time instead of sleeping.
//!
//! Production uses [`SystemClock`] (Unix milliseconds). Tests hand the server a [`ManualClock`]
//! and call [`ManualClock::advance_ms`]: an entry's expiry, stale windows, `Age` and the circuit
//! breaker's cool-down all follow it, with no sleeping and no dependence on machine load.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of "now" in Unix milliseconds.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> u64;
}

/// Wall-clock time.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
    }
}

/// A clock that only moves when told to.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// Starts at the current wall-clock time.
    pub fn new() -> Arc<ManualClock> {
        Arc::new(ManualClock(AtomicU64::new(SystemClock.now_ms())))
    }

    /// Starts at `unix_ms` (a pod whose clock is off: `now - 5 minutes`).
    pub fn at(unix_ms: u64) -> Arc<ManualClock> {
        Arc::new(ManualClock(AtomicU64::new(unix_ms)))
    }

    pub fn advance_ms(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }

    pub fn advance_secs(&self, secs: u64) {
        self.advance_ms(secs.saturating_mul(1000));
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// The clock type the server holds.
pub type SharedClock = Arc<dyn Clock>;

/// A pod's clock corrected to a clock the whole fleet shares (Redis's `TIME`): `now_ms` is the
/// pod clock plus the offset last measured, so reading it costs no call. Until a first
/// measurement ([`FleetClock::set_offset_ms`]) it is the pod clock itself.
pub struct FleetClock {
    pod: SharedClock,
    offset_ms: AtomicI64,
    measured: AtomicBool,
}

impl FleetClock {
    pub fn new(pod: SharedClock) -> Arc<FleetClock> {
        Arc::new(FleetClock { pod, offset_ms: AtomicI64::new(0), measured: AtomicBool::new(false) })
    }

    /// The pod's own clock.
    pub fn pod(&self) -> &SharedClock {
        &self.pod
    }

    /// Sets the fleet clock's lead over the pod clock (negative: the pod clock is ahead).
    pub fn set_offset_ms(&self, offset_ms: i64) {
        self.offset_ms.store(offset_ms, Ordering::Release);
        self.measured.store(true, Ordering::Release);
    }

    /// The offset in use; `None` before the first measurement.
    pub fn offset_ms(&self) -> Option<i64> {
        self.measured.load(Ordering::Acquire).then(|| self.offset_ms.load(Ordering::Acquire))
    }
}

impl Clock for FleetClock {
    fn now_ms(&self) -> u64 {
        self.pod.now_ms().saturating_add_signed(self.offset_ms.load(Ordering::Acquire))
    }
}

/// The UTC calendar year of a Unix time in milliseconds (proleptic Gregorian; for copyright
/// notices such as TileJSON's `© HERE <year>`).
pub fn utc_year(unix_ms: u64) -> i64 {
    // Days since 1970-01-01 -> civil date (Howard Hinnant's algorithm), year only.
    let days = (unix_ms / 86_400_000) as i64 + 719_468;
    let era = days.div_euclid(146_097);
    let doe = days.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    // Months counted from March: 10 and 11 are January and February of the next year.
    let month_from_march = (5 * doy + 2) / 153;
    yoe + era * 400 + i64::from(month_from_march >= 10)
}

/// The UTC civil date (year, month 1-12, day 1-31) of a count of days since 1970-01-01
/// (Howard Hinnant's `civil_from_days`). The access log's timestamps and the bill's months
/// both use it.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m as u32, d as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new();
        let t = c.now_ms();
        assert_eq!(c.now_ms(), t);
        c.advance_secs(6);
        assert_eq!(c.now_ms(), t + 6000);
        assert!(SystemClock.now_ms() > 1_600_000_000_000);
    }

    #[test]
    fn a_fleet_clock_is_the_pod_clock_until_measured_then_shifted_by_the_offset() {
        let pod = ManualClock::at(1_000_000);
        let fleet = FleetClock::new(pod.clone());
        assert_eq!((fleet.now_ms(), fleet.offset_ms()), (1_000_000, None));
        fleet.set_offset_ms(300_000);
        assert_eq!((fleet.now_ms(), fleet.offset_ms()), (1_300_000, Some(300_000)));
        pod.advance_ms(5);
        assert_eq!(fleet.now_ms(), 1_300_005, "moves with the pod clock");
        fleet.set_offset_ms(-2_000_000);
        assert_eq!(fleet.now_ms(), 0, "never below 0");
    }

    #[test]
    fn utc_years() {
        let cases = [
            (0, 1970),
            (951_782_400_000, 2000),   // 2000-02-29
            (1_704_067_199_999, 2023), // 2023-12-31T23:59:59.999
            (1_704_067_200_000, 2024), // 2024-01-01
            (1_767_225_599_000, 2025), // 2025-12-31T23:59:59
            (4_102_444_800_000, 2100), // 2100-01-01
        ];
        for (ms, year) in cases {
            assert_eq!(utc_year(ms), year, "{ms}");
        }
    }
}
