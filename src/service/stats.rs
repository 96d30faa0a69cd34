//! Per-index statistics, as `GET /admin/stats` gives them ([`document`]) and `tile-proxy stats`
//! prints them.
//!
//! The counts come from this pod's own Prometheus counters (no extra work per request). With
//! Redis, every pod also writes a snapshot of them to one hash every few seconds
//! ([`spawn_housekeeping`]); the document then adds up every pod's fresh snapshot (this pod's
//! live counts in place of its own snapshot), and budgets are read from Redis, so the answer is
//! the fleet's. Counts start at zero when a pod starts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use prometheus::core::Collector;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::{Budget, Settings};
use crate::protect::budget::{until_end, Account};
use crate::service::core::Core;
use crate::store::redis::{Deadline, Redis};

/// How often a pod refreshes its gauges and its snapshot in Redis.
pub const TICK: Duration = Duration::from_secs(2);
/// A snapshot older than this is a pod that is gone.
const STALE_AFTER_MS: u64 = 30_000;

/// One index's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub hits: u64,
    pub stale: u64,
    pub misses: u64,
    pub coalesced: u64,
    pub errors: u64,
    pub upstream_calls: u64,
    pub bytes: u64,
    pub rate_limited: u64,
    pub budget_exhausted: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.hits += o.hits;
        self.stale += o.stale;
        self.misses += o.misses;
        self.coalesced += o.coalesced;
        self.errors += o.errors;
        self.upstream_calls += o.upstream_calls;
        self.bytes += o.bytes;
        self.rate_limited += o.rate_limited;
        self.budget_exhausted += o.budget_exhausted;
    }

    /// Answers served from the cache (fresh or stale) over answers served.
    pub fn hit_ratio(&self) -> Option<f64> {
        let cached = self.hits + self.stale;
        let total = cached + self.misses + self.coalesced;
        (total > 0).then(|| cached as f64 / total as f64)
    }
}

/// What one pod writes to Redis.
#[derive(Serialize, Deserialize)]
struct Snapshot {
    at_ms: u64,
    indices: BTreeMap<String, Counts>,
}

/// Sums a counter family by its `index` label, `pick` choosing the field from the other labels.
fn fold(
    out: &mut BTreeMap<String, Counts>,
    vec: &impl Collector,
    pick: impl Fn(&mut Counts, &[(String, String)], u64),
) {
    for family in vec.collect() {
        for m in family.get_metric() {
            let labels: Vec<(String, String)> =
                m.get_label().iter().map(|l| (l.name().to_string(), l.value().to_string())).collect();
            let Some((_, index)) = labels.iter().find(|(n, _)| n == "index") else { continue };
            if index.starts_with("_invalid") {
                continue;
            }
            let value = m.get_counter().get_value() as u64;
            if value > 0 {
                pick(out.entry(index.clone()).or_default(), &labels, value);
            }
        }
    }
}

/// This pod's counts per index, from its metrics.
pub fn local_counts(core: &Core) -> BTreeMap<String, Counts> {
    let m = &core.metrics;
    let mut out = BTreeMap::new();
    let label = |labels: &[(String, String)], name: &str| {
        labels.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()).unwrap_or_default()
    };
    fold(&mut out, &m.requests, |c, l, v| match label(l, "cache").as_str() {
        "hit" | "negative_hit" => c.hits += v,
        "stale" => c.stale += v,
        "miss" => c.misses += v,
        "coalesced" => c.coalesced += v,
        "error" => c.errors += v,
        _ => {}
    });
    fold(&mut out, &m.upstream_requests, |c, _, v| c.upstream_calls += v);
    fold(&mut out, &m.bytes_served, |c, _, v| c.bytes += v);
    fold(&mut out, &m.rate_limited, |c, _, v| c.rate_limited += v);
    fold(&mut out, &m.budget_exhausted, |c, _, v| c.budget_exhausted += v);
    out
}

/// A new id for a pod in the fleet's snapshots: host, process and a random part (one process
/// may run several servers, as the tests do).
pub fn new_pod_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}-{}", host.trim(), std::process::id(), &crate::store::redis::token()[..8])
}

/// Every [`TICK`]: roll the budget gauges over to the current windows, store the bill's counts
/// and set its gauges (`service::bill::tick`) and, with Redis, measure the fleet clock's offset
/// (`Redis::sync_clock`) and write this pod's snapshot. Runs until the server's runtime stops.
/// `current` gives the core of the configuration loaded now (a reload swaps it).
pub fn spawn_housekeeping(current: impl Fn() -> Arc<Core> + 'static, redis: Option<Arc<Redis>>, pod_id: String) {
    actix_web::rt::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let core = current();
            let settings = core.settings.clone();
            core.protect.budgets.tick(|index, account| budget_of(&settings, index, account));
            crate::service::bill::tick(&core).await;
            if let Some(redis) = &redis {
                // The fleet clock's offset to Redis TIME (an error keeps the last one).
                let _ = redis.sync_clock().await;
                let snapshot = Snapshot { at_ms: core.clock.now_ms(), indices: local_counts(&core) };
                let Ok(json) = serde_json::to_string(&snapshot) else { continue };
                let mut cmd = redis::cmd("HSET");
                cmd.arg(redis.keys.stats()).arg(&pod_id).arg(json);
                let _ = redis.call::<i64>("stats_write", Deadline::Write, &cmd).await;
            }
        }
    });
}

/// Every fresh snapshot of the other pods (and forgets the stale ones). `None`: no Redis, or
/// it did not answer.
async fn fleet(core: &Core, redis: Option<&Redis>, pod_id: &str) -> Option<Vec<Snapshot>> {
    let redis = redis?;
    let mut cmd = redis::cmd("HGETALL");
    cmd.arg(redis.keys.stats());
    let all: BTreeMap<String, String> = redis.call("stats_read", Deadline::Read, &cmd).await.ok()?;
    let now = core.clock.now_ms();
    let mut fresh = Vec::new();
    for (pod, json) in all {
        let snapshot = serde_json::from_str::<Snapshot>(&json).ok();
        match snapshot {
            Some(s) if pod == pod_id => drop(s),
            Some(s) if now.saturating_sub(s.at_ms) <= STALE_AFTER_MS => fresh.push(s),
            _ => {
                let mut del = redis::cmd("HDEL");
                del.arg(redis.keys.stats()).arg(&pod);
                let _ = redis.call::<i64>("stats_write", Deadline::Write, &del).await;
            }
        }
    }
    Some(fresh)
}

/// The statistics document of `GET /admin/stats`: this pod's counts, with Redis every fresh
/// pod's added (scope `fleet`), each index's budget, and the totals.
pub async fn document(core: &Core, redis: Option<&Redis>, pod_id: &str) -> serde_json::Value {
    let mut counts = local_counts(core);
    let (scope, pods) = match fleet(core, redis, pod_id).await {
        Some(others) => {
            let pods = others.len() + 1;
            for s in others {
                for (index, c) in s.indices {
                    counts.entry(index).or_default().add(&c);
                }
            }
            ("fleet", pods)
        }
        None => ("pod", 1),
    };
    // Every index with a budget shows it, used or not.
    for (name, policy) in &core.settings.policies {
        if policy.budget.is_limited() || policy.traffic.budget.is_limited() {
            counts.entry(core.metrics.index_label(name).to_string()).or_default();
        }
    }
    let now = core.clock.now_ms();
    let mut indices = serde_json::Map::new();
    let mut total = Counts::default();
    for (index, c) in &counts {
        total.add(c);
        let mut doc = serde_json::to_value(c).unwrap_or_default();
        doc["hit_ratio"] = json!(c.hit_ratio().map(|r| (r * 10_000.0).round() / 10_000.0));
        for (account, field) in [(Account::Tiles, "budget"), (Account::Traffic, "traffic_budget")] {
            let budget = budget_of(&core.settings, index, account);
            if !budget.is_limited() {
                continue;
            }
            let spent = core.protect.budgets.spent(index, account, budget).await;
            let window = |used: u64, limit: Option<u64>, len: u64| {
                limit.map(|l| {
                    json!({"used": used, "limit": l, "left": l.saturating_sub(used), "resets_in_seconds": until_end(now, len)})
                })
            };
            doc[field] = json!({
                "hour": window(spent.hour, budget.hour, 3_600_000),
                "day": window(spent.day, budget.day, 86_400_000),
            });
        }
        indices.insert(index.clone(), doc);
    }
    let mut totals = serde_json::to_value(total).unwrap_or_default();
    totals["hit_ratio"] = json!(total.hit_ratio().map(|r| (r * 10_000.0).round() / 10_000.0));
    json!({
        "scope": scope,
        "pods": pods,
        "generated_at_unix_ms": now,
        "indices": indices,
        "totals": totals,
    })
}

/// The budget `index` has for `account`.
fn budget_of(settings: &Settings, index: &str, account: Account) -> Budget {
    let policy = settings.policy(index);
    match account {
        Account::Tiles => policy.budget,
        Account::Traffic => policy.traffic.budget,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hit_ratio_counts_stale_answers_as_cached() {
        let c = Counts { hits: 6, stale: 2, misses: 1, coalesced: 1, ..Default::default() };
        assert_eq!(c.hit_ratio(), Some(0.8));
        assert_eq!(Counts::default().hit_ratio(), None);
    }
}
