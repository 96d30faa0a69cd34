//! Upstream budgets per index: fetches per UTC hour and per UTC day (`budget_hour`,
//! `budget_day`, per index or in `[defaults]`). Every upstream fetch an index leads (misses,
//! refreshes, revalidations; not the retries of one fetch) is charged before it is made. A
//! spent budget refuses the fetch: the client gets 429 `budget_exhausted` with `Retry-After` to
//! the window's end, or a stale copy where stale-if-error allows one; hits never get here.
//!
//! Budgets are kept per metrics label (see [`crate::observe::metrics::Metrics::index_label`]): indices
//! past `metrics_max_indices` share `_other`'s, so client-chosen index names cannot multiply the
//! budget without bound (`unknown_indices = "reject"` closes that door completely).
//!
//! With Redis the counts are two keys per index and window, checked and counted by one script,
//! shared by the fleet. This pod remembers the last counts Redis gave it and goes on counting
//! from them locally while Redis is unavailable, so an outage does not hand every pod a fresh
//! budget.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use crate::base::clock::SharedClock;
use crate::config::Budget;
use crate::domain::failure::UpstreamFailure;
use crate::observe::metrics::{Metrics, BUDGET_DAY, BUDGET_HOUR, BUDGET_TRAFFIC_DAY, BUDGET_TRAFFIC_HOUR};
use crate::store::redis::{Deadline, Lua, Redis};

const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 86_400_000;

/// `KEYS`: hour and day counters. `ARGV`: hour limit, day limit (-1: none), their lifetimes
/// (ms), n (1: charge if within both limits; -1: refund; 0: read). Returns `{ok, window, hour,
/// day}` (window 1: hour spent, 2: day spent).
static BUDGET: LazyLock<Lua> = LazyLock::new(|| Lua::new(BUDGET_LUA));
const BUDGET_LUA: &str = r"
local h = tonumber(redis.call('GET', KEYS[1]) or '0')
local d = tonumber(redis.call('GET', KEYS[2]) or '0')
local lh, ld, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[5])
if n > 0 then
  if lh >= 0 and h + n > lh then return {0, 1, h, d} end
  if ld >= 0 and d + n > ld then return {0, 2, h, d} end
end
if n ~= 0 then
  h = redis.call('INCRBY', KEYS[1], n)
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  d = redis.call('INCRBY', KEYS[2], n)
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
return {1, 0, h, d}
";

/// Which of an index's two budgets a fetch is charged to: its map tiles, or its traffic tiles
/// (`traffic_budget_hour`/`_day`: HERE bills traffic apart). Each has its own counters, Redis
/// keys and `window` label values (`hour`/`day`, `traffic_hour`/`traffic_day`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Account {
    Tiles,
    Traffic,
}

impl Account {
    pub fn of(traffic: bool) -> Account {
        if traffic {
            Account::Traffic
        } else {
            Account::Tiles
        }
    }

    /// The hour's and the day's names (metric labels, the 429's `window`).
    pub fn windows(self) -> (&'static str, &'static str) {
        match self {
            Account::Tiles => (BUDGET_HOUR, BUDGET_DAY),
            Account::Traffic => (BUDGET_TRAFFIC_HOUR, BUDGET_TRAFFIC_DAY),
        }
    }

    /// The hour's and the day's names in Redis keys.
    fn key_windows(self) -> (&'static str, &'static str) {
        match self {
            Account::Tiles => ("h", "d"),
            Account::Traffic => ("th", "td"),
        }
    }
}

/// Fetches counted in the current windows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spent {
    hour_id: u64,
    day_id: u64,
    pub hour: u64,
    pub day: u64,
}

impl Spent {
    /// The same counts as of `now_ms`: a window that has ended counts from zero.
    fn at(self, now_ms: u64) -> Spent {
        let (hour_id, day_id) = (now_ms / HOUR_MS, now_ms / DAY_MS);
        Spent {
            hour_id,
            day_id,
            hour: if self.hour_id == hour_id { self.hour } else { 0 },
            day: if self.day_id == day_id { self.day } else { 0 },
        }
    }
}

/// Seconds until the window containing `now_ms` ends.
pub fn until_end(now_ms: u64, window_ms: u64) -> u64 {
    (window_ms - now_ms % window_ms).div_ceil(1000).max(1)
}

/// The budgets of every index.
pub struct Budgets {
    local: Mutex<HashMap<(String, Account), Spent>>,
    redis: Option<Arc<Redis>>,
    clock: SharedClock,
    metrics: Arc<Metrics>,
}

impl Budgets {
    pub fn new(redis: Option<Arc<Redis>>, clock: SharedClock, metrics: Arc<Metrics>) -> Budgets {
        Budgets { local: Mutex::default(), redis, clock, metrics }
    }

    /// Charges one upstream fetch to `index` (its metrics label), or refuses it when a window's
    /// budget is spent. Free for an index without a budget.
    pub async fn charge(&self, index: &str, account: Account, budget: Budget) -> Result<(), UpstreamFailure> {
        if !budget.is_limited() {
            return Ok(());
        }
        let now = self.clock.now_ms();
        let refused = match self.shared(index, account, budget, now, 1).await {
            Some((ok, window, spent)) => {
                self.remember(index, account, spent, budget);
                (!ok).then_some(window)
            }
            None => self.charge_local(index, account, budget, now),
        };
        match refused {
            None => Ok(()),
            Some(window) => {
                let (hour, day) = account.windows();
                let (name, len) = if window == 2 { (day, DAY_MS) } else { (hour, HOUR_MS) };
                self.metrics.budget_exhausted.with_label_values(&[index, name]).inc();
                Err(UpstreamFailure::BudgetExhausted { window: name, retry_after_secs: until_end(now, len) })
            }
        }
    }

    /// Makes a configured index's budget gauges exist before its first fetch (nothing spent;
    /// `tile_proxy_budget_exhausted_total` exists from the start: [`Metrics::new`]).
    pub fn register(&self, index: &str, account: Account, budget: Budget) {
        self.publish(index, account, Spent::default(), budget);
    }

    /// Gives back a charge whose fetch was never made (the rate cap refused it).
    pub async fn refund(&self, index: &str, account: Account, budget: Budget) {
        if !budget.is_limited() {
            return;
        }
        let now = self.clock.now_ms();
        match self.shared(index, account, budget, now, -1).await {
            Some((_, _, spent)) => self.remember(index, account, spent, budget),
            None => {
                let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
                let s = local.entry((index.to_string(), account)).or_default();
                *s = s.at(now);
                s.hour = s.hour.saturating_sub(1);
                s.day = s.day.saturating_sub(1);
                self.publish(index, account, *s, budget);
            }
        }
    }

    /// What `index` has spent in the current windows: the fleet's count from Redis when it
    /// answers, else this pod's view.
    pub async fn spent(&self, index: &str, account: Account, budget: Budget) -> Spent {
        let now = self.clock.now_ms();
        if budget.is_limited() {
            if let Some((_, _, spent)) = self.shared(index, account, budget, now, 0).await {
                self.remember(index, account, spent, budget);
                return spent;
            }
        }
        let local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        local.get(&(index.to_string(), account)).copied().unwrap_or_default().at(now)
    }

    /// Rolls every index's gauges over to the current windows (a window can end with no fetch).
    pub fn tick(&self, budget_of: impl Fn(&str, Account) -> Budget) {
        let now = self.clock.now_ms();
        let local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        for ((index, account), spent) in local.iter() {
            self.publish(index, *account, spent.at(now), budget_of(index, *account));
        }
    }

    /// The script's answer, or `None` without Redis or when it is unavailable.
    async fn shared(
        &self,
        index: &str,
        account: Account,
        budget: Budget,
        now: u64,
        n: i64,
    ) -> Option<(bool, u8, Spent)> {
        let redis = self.redis.as_ref()?;
        let (hour_id, day_id) = (now / HOUR_MS, now / DAY_MS);
        let (h, d) = account.key_windows();
        let keys = [redis.keys.budget(index, h, hour_id), redis.keys.budget(index, d, day_id)];
        let limit = |l: Option<u64>| l.map_or("-1".to_string(), |l| l.to_string());
        // Kept a minute past the window's end, for late readers.
        let life = |len: u64| (len - now % len + 60_000).to_string();
        let args = [limit(budget.hour), limit(budget.day), life(HOUR_MS), life(DAY_MS), n.to_string()];
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match redis.eval::<(i64, i64, i64, i64)>("budget", Deadline::Write, &BUDGET, &keys, &args).await {
            Ok((ok, window, hour, day)) => {
                let spent = Spent { hour_id, day_id, hour: hour.max(0) as u64, day: day.max(0) as u64 };
                Some((ok == 1, window as u8, spent))
            }
            Err(_) => {
                self.metrics.protect_fallback.with_label_values(&["budget"]).inc();
                None
            }
        }
    }

    /// Charges this pod's own count; `Some(window)` when refused.
    fn charge_local(&self, index: &str, account: Account, budget: Budget, now: u64) -> Option<u8> {
        let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        let s = local.entry((index.to_string(), account)).or_default();
        *s = s.at(now);
        let refused = if budget.hour.is_some_and(|l| s.hour >= l) {
            Some(1)
        } else if budget.day.is_some_and(|l| s.day >= l) {
            Some(2)
        } else {
            s.hour += 1;
            s.day += 1;
            None
        };
        self.publish(index, account, *s, budget);
        refused
    }

    fn remember(&self, index: &str, account: Account, spent: Spent, budget: Budget) {
        self.local.lock().unwrap_or_else(|p| p.into_inner()).insert((index.to_string(), account), spent);
        self.publish(index, account, spent, budget);
    }

    fn publish(&self, index: &str, account: Account, spent: Spent, budget: Budget) {
        let m = &self.metrics;
        let (hour, day) = account.windows();
        for (window, used, limit) in [(hour, spent.hour, budget.hour), (day, spent.day, budget.day)] {
            if let Some(limit) = limit {
                m.budget_used.with_label_values(&[index, window]).set(used as i64);
                m.budget_limit.with_label_values(&[index, window]).set(limit as i64);
                m.budget_remaining.with_label_values(&[index, window]).set(limit.saturating_sub(used) as i64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::clock::{Clock, ManualClock};

    fn budgets(clock: Arc<ManualClock>) -> Budgets {
        let metrics = Arc::new(Metrics::new(&prometheus::Registry::new(), 10, []).unwrap());
        Budgets::new(None, clock, metrics)
    }

    #[actix_web::test]
    async fn spent_budgets_refuse_until_the_window_ends() {
        let clock = ManualClock::new();
        let now = clock.now_ms();
        clock.advance_ms((now / DAY_MS + 1) * DAY_MS + 10 * HOUR_MS + 59 * 60_000 - now); // 10:59 UTC tomorrow
        let b = budgets(clock.clone());
        let budget = Budget { hour: Some(2), day: Some(3) };
        assert!(b.charge("a", Account::Tiles, budget).await.is_ok());
        assert!(b.charge("a", Account::Tiles, budget).await.is_ok());
        assert_eq!(
            b.charge("a", Account::Tiles, budget).await,
            Err(UpstreamFailure::BudgetExhausted { window: "hour", retry_after_secs: 60 })
        );
        assert!(b.charge("other", Account::Tiles, budget).await.is_ok(), "budgets are per index");
        clock.advance_ms(60_000); // 11:00: a new hour, the same day
        assert!(b.charge("a", Account::Tiles, budget).await.is_ok());
        let Err(UpstreamFailure::BudgetExhausted { window, retry_after_secs }) =
            b.charge("a", Account::Tiles, budget).await
        else {
            panic!("the day's budget is spent")
        };
        assert_eq!((window, retry_after_secs), ("day", 13 * 3600));
        b.refund("a", Account::Tiles, budget).await;
        assert_eq!(b.spent("a", Account::Tiles, budget).await.day, 2);
        assert!(b.charge("free", Account::Tiles, Budget::default()).await.is_ok());
        // The same index's traffic budget is counted apart, and says which window it spent.
        assert!(b.charge("a", Account::Traffic, budget).await.is_ok());
        assert!(b.charge("a", Account::Traffic, budget).await.is_ok());
        let Err(UpstreamFailure::BudgetExhausted { window, .. }) = b.charge("a", Account::Traffic, budget).await else {
            panic!("the traffic hour is spent")
        };
        assert_eq!(window, "traffic_hour");
        assert_eq!(b.spent("a", Account::Traffic, budget).await.hour, 2);
    }

    #[test]
    fn windows_end_on_the_hour_and_at_midnight_utc() {
        assert_eq!(until_end(0, HOUR_MS), 3600);
        assert_eq!(until_end(HOUR_MS - 1, HOUR_MS), 1);
        assert_eq!(until_end(DAY_MS + 1000, DAY_MS), 86_399);
    }
}
