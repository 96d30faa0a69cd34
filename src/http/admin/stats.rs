//! Per-index statistics: `GET /admin/stats` (admin token) and `tile-proxy stats`, which prints
//! them as a table.
//!
//! The counts come from this pod's own Prometheus counters (no extra work per request). With
//! Redis, every pod also writes a snapshot of them to one hash every few seconds
//! ([`spawn_housekeeping`]); `/admin/stats` then adds up every pod's fresh snapshot (this pod's
//! live counts in place of its own snapshot), and budgets are read from Redis, so the answer is
//! the fleet's. Counts start at zero when a pod starts.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use prometheus::core::Collector;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::app::cli::StatsArgs;
use crate::http::state::AppState;
use crate::protect::budget::until_end;
use crate::service::tiles::TileService;
use crate::store::redis::Deadline;

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
pub fn local_counts(state: &AppState) -> BTreeMap<String, Counts> {
    let m = &state.metrics;
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

/// Every [`TICK`]: roll the budget gauges over to the current windows and, with Redis, write
/// this pod's snapshot. Runs until the server's runtime stops.
pub fn spawn_housekeeping(state: Arc<AppState>) {
    actix_web::rt::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let settings = state.settings.clone();
            state.protect.budgets.tick(|index| settings.policy(index).budget);
            if let Some(redis) = &state.redis {
                let snapshot = Snapshot { at_ms: state.clock.now_ms(), indices: local_counts(&state) };
                let Ok(json) = serde_json::to_string(&snapshot) else { continue };
                let mut cmd = redis::cmd("HSET");
                cmd.arg(redis.keys.stats()).arg(&state.pod_id).arg(json);
                let _ = redis.call::<i64>("stats_write", Deadline::Write, &cmd).await;
            }
        }
    });
}

/// Every fresh snapshot of the other pods (and forgets the stale ones). `None`: no Redis, or
/// it did not answer.
async fn fleet(state: &AppState) -> Option<Vec<Snapshot>> {
    let redis = state.redis.as_ref()?;
    let mut cmd = redis::cmd("HGETALL");
    cmd.arg(redis.keys.stats());
    let all: BTreeMap<String, String> = redis.call("stats_read", Deadline::Read, &cmd).await.ok()?;
    let now = state.clock.now_ms();
    let mut fresh = Vec::new();
    for (pod, json) in all {
        let snapshot = serde_json::from_str::<Snapshot>(&json).ok();
        match snapshot {
            Some(s) if pod == state.pod_id => drop(s),
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

/// `GET /admin/stats`.
pub async fn api(req: HttpRequest, service: web::Data<TileService>) -> HttpResponse {
    let state = service.state();
    if let Some(denied) = crate::http::admin::purge::deny(&req, state) {
        return denied;
    }
    let mut counts = local_counts(state);
    let (scope, pods) = match fleet(state).await {
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
    for name in state.settings.policies.keys() {
        if state.settings.policy(name).budget.is_limited() {
            counts.entry(state.metrics.index_label(name).to_string()).or_default();
        }
    }
    let now = state.clock.now_ms();
    let mut indices = serde_json::Map::new();
    let mut total = Counts::default();
    for (index, c) in &counts {
        total.add(c);
        let budget = state.settings.policy(index).budget;
        let mut doc = serde_json::to_value(c).unwrap_or_default();
        doc["hit_ratio"] = json!(c.hit_ratio().map(|r| (r * 10_000.0).round() / 10_000.0));
        if budget.is_limited() {
            let spent = state.protect.budgets.spent(index, budget).await;
            let window = |used: u64, limit: Option<u64>, len: u64| {
                limit.map(|l| {
                    json!({"used": used, "limit": l, "left": l.saturating_sub(used), "resets_in_seconds": until_end(now, len)})
                })
            };
            doc["budget"] = json!({
                "hour": window(spent.hour, budget.hour, 3_600_000),
                "day": window(spent.day, budget.day, 86_400_000),
            });
        }
        indices.insert(index.clone(), doc);
    }
    let mut totals = serde_json::to_value(total).unwrap_or_default();
    totals["hit_ratio"] = json!(total.hit_ratio().map(|r| (r * 10_000.0).round() / 10_000.0));
    HttpResponse::Ok().insert_header((header::CACHE_CONTROL, "no-store")).json(json!({
        "scope": scope,
        "pods": pods,
        "generated_at_unix_ms": now,
        "indices": indices,
        "totals": totals,
    }))
}

/// The document as a table, one line per index.
pub fn table(doc: &serde_json::Value) -> String {
    let mut out = format!(
        "scope: {} ({} pod{})\n",
        doc["scope"].as_str().unwrap_or("?"),
        doc["pods"],
        if doc["pods"].as_u64() == Some(1) { "" } else { "s" }
    );
    let header = ["index", "hits", "stale", "misses", "hit%", "upstream", "bytes", "limited", "budget h", "budget d"];
    let mut rows = vec![header.iter().map(|s| s.to_string()).collect::<Vec<_>>()];
    let budget = |v: &serde_json::Value| match (v["used"].as_u64(), v["limit"].as_u64()) {
        (Some(u), Some(l)) => format!("{u}/{l}"),
        _ => "-".to_string(),
    };
    let row = |name: &str, v: &serde_json::Value| {
        vec![
            name.to_string(),
            v["hits"].to_string(),
            v["stale"].to_string(),
            (v["misses"].as_u64().unwrap_or(0) + v["coalesced"].as_u64().unwrap_or(0)).to_string(),
            v["hit_ratio"].as_f64().map_or("-".to_string(), |r| format!("{:.1}", r * 100.0)),
            v["upstream_calls"].to_string(),
            crate::config::units::format_size(crate::config::ByteSize::b(v["bytes"].as_u64().unwrap_or(0))),
            v["rate_limited"].to_string(),
            budget(&v["budget"]["hour"]),
            budget(&v["budget"]["day"]),
        ]
    };
    if let Some(indices) = doc["indices"].as_object() {
        for (name, v) in indices {
            rows.push(row(name, v));
        }
    }
    rows.push(row("(total)", &doc["totals"]));
    let widths: Vec<usize> =
        (0..header.len()).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| if i == 0 { format!("{c:<w$}", w = widths[i]) } else { format!("{c:>w$}", w = widths[i]) })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `tile-proxy stats`.
pub fn run_cli(args: &StatsArgs) -> ExitCode {
    let url = format!("{}/admin/stats", args.url.trim_end_matches('/'));
    let token = args.token.clone();
    let fetched = actix_web::rt::System::new().block_on(async move {
        let client = awc::Client::builder().timeout(Duration::from_secs(10)).finish();
        let mut req = client.get(&url);
        if let Some(t) = &token {
            req = req.insert_header((header::AUTHORIZATION, format!("Bearer {t}")));
        }
        let mut res = req.send().await.map_err(|e| format!("{url}: {e}"))?;
        let body = res.body().limit(16 << 20).await.map_err(|e| format!("{url}: {e}"))?;
        if !res.status().is_success() {
            return Err(format!("{url} answered {}: {}", res.status(), String::from_utf8_lossy(&body)));
        }
        serde_json::from_slice::<serde_json::Value>(&body).map_err(|e| format!("{url}: not JSON: {e}"))
    });
    match fetched {
        Ok(doc) if args.json => {
            println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Ok(doc) => {
            print!("{}", table(&doc));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tile-proxy stats: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_every_index_and_the_total() {
        let doc = json!({
            "scope": "fleet", "pods": 2,
            "indices": {"123": {"hits": 9, "stale": 0, "misses": 1, "coalesced": 0, "hit_ratio": 0.9,
                "upstream_calls": 1, "bytes": 2048, "rate_limited": 3,
                "budget": {"hour": {"used": 1, "limit": 100}, "day": null}}},
            "totals": {"hits": 9, "stale": 0, "misses": 1, "coalesced": 0, "hit_ratio": 0.9,
                "upstream_calls": 1, "bytes": 2048, "rate_limited": 3},
        });
        let t = table(&doc);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "scope: fleet (2 pods)");
        assert!(lines[1].starts_with("index") && lines[1].ends_with("budget d"), "{t}");
        let row: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(row, ["123", "9", "0", "1", "90.0", "1", "2KiB", "3", "1/100", "-"], "{t}");
        assert!(lines[3].starts_with("(total)"), "{t}");
    }

    #[test]
    fn hit_ratio_counts_stale_answers_as_cached() {
        let c = Counts { hits: 6, stale: 2, misses: 1, coalesced: 1, ..Default::default() };
        assert_eq!(c.hit_ratio(), Some(0.8));
        assert_eq!(Counts::default().hit_ratio(), None);
    }
}
