//! Seed jobs that belong to the fleet (with Redis): any pod answers `GET /admin/seed/{id}` and
//! lists every job, and a job outlives the pod that runs it.
//!
//! A job is one Redis hash (`<prefix>:{seed}:job:<id>`): its spec (the `POST /admin/seed` body,
//! from which any pod rebuilds the same job, [`super::spec::build`]) and its progress: the done
//! positions as ranges ([`Done`]), the counts, the state. The pod running it holds a lease
//! (`<prefix>:{seed}:lease:<id>`, a random token, `PX` the `[redis] lease`) and renews it with
//! every checkpoint, every third of the lease at most; a checkpoint is written only while the
//! lease is still its own (one script), so a pod that lost its job (it stalled past the lease and
//! another pod took over) learns it at its next checkpoint and stops.
//!
//! Takeover: every pod looks at the running jobs (`<prefix>:{seed}:running`) on each tick of
//! [`FleetJobs::spawn_watch`]; one whose lease has expired is claimed with `SET NX PX` and
//! resumed from its last checkpoint. No tile is fetched twice: the positions done before the
//! checkpoint are skipped, and a tile fetched after it (but before the pod died) is in the Redis
//! tier, so asking for it again is a Redis hit, counted `cached`, not an upstream call. Only a
//! tile whose upstream request was in flight at the moment the pod died is asked again: its
//! answer never reached anyone.
//!
//! Redis down: starting a job falls back to a pod-local one (`super::jobs`); a running job keeps
//! running, its checkpoints failing, and writes its end when Redis answers again (or the job is
//! taken over from its last checkpoint, the tiles since then being Redis hits).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::fetchers::Direct;
use super::jobs::state_of;
use super::run::{self, Counts, Progress, Stop, StopReason};
use super::state_file::Done;
use super::tiles::Job;
use crate::config::UpstreamSettings;
use crate::service::tiles::TileService;
use crate::store::redis::{token, Deadline, Lua, Redis, RedisError};

/// How long a finished job's record stays in Redis.
pub const RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// The longest time between two looks for jobs to take over.
pub const WATCH_MAX: Duration = Duration::from_secs(5);
/// Jobs listed by `GET /admin/seed` (the newest); older ids leave the list.
pub const LISTED: usize = 100;

/// `KEYS`: job, lease, jobs, running. `ARGV`: token, lease ms, id, start ms, the job's fields
/// (name, value, ...). Stores a new job with its lease held.
static CREATE: LazyLock<Lua> = LazyLock::new(|| Lua::new(CREATE_LUA));
const CREATE_LUA: &str = r"
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[3])
redis.call('SADD', KEYS[4], ARGV[3])
return 1
";

/// `KEYS`: job, lease. `ARGV`: token, lease ms, fields. Renews the lease and writes the
/// progress, only while the lease is ours: 1, else 0.
static CHECKPOINT: LazyLock<Lua> = LazyLock::new(|| Lua::new(CHECKPOINT_LUA));
const CHECKPOINT_LUA: &str = r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
return 1
";

/// `KEYS`: job, lease, running. `ARGV`: token, retention ms, id, fields. Writes the end of a
/// job whose lease is ours, lets the lease go and keeps the record for the retention: 1, else 0.
static FINISH: LazyLock<Lua> = LazyLock::new(|| Lua::new(FINISH_LUA));
const FINISH_LUA: &str = r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[3], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
";

/// `KEYS`: job, lease, running. `ARGV`: token, lease ms, pod, id. Takes over a running job
/// whose lease has expired: 1, else 0 (a job no longer running leaves the running set).
static CLAIM: LazyLock<Lua> = LazyLock::new(|| Lua::new(CLAIM_LUA));
const CLAIM_LUA: &str = r"
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then
  redis.call('SREM', KEYS[3], ARGV[4])
  return 0
end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'owner', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'takeovers', 1)
return 1
";

/// A job this pod runs: what it resumes from, and its lease's token.
struct Taken {
    id: String,
    token: String,
    job: Job,
    concurrency: usize,
    done: Done,
    /// Counts of the runs before this one.
    base: Counts,
}

/// The fleet's seed jobs, as one pod sees and runs them. See the module docs.
pub struct FleetJobs {
    redis: Arc<Redis>,
    service: TileService,
    pod_id: String,
    /// Ids this pod runs now.
    mine: Mutex<HashSet<String>>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl FleetJobs {
    pub fn new(redis: Arc<Redis>, service: TileService, pod_id: String) -> Arc<FleetJobs> {
        Arc::new(FleetJobs { redis, service, pod_id, mine: Mutex::default() })
    }

    fn lease_ms(&self) -> String {
        self.redis.settings.lease.as_millis().max(1).to_string()
    }

    /// How often a running job writes its checkpoint and renews its lease.
    fn checkpoint_every(&self) -> Duration {
        (self.redis.settings.lease / 3).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }

    /// How often a pod looks for jobs to take over: half the lease, [`WATCH_MAX`] at most (a
    /// takeover waits for the lease to expire anyway; an idle fleet's pods cost Redis one
    /// `SMEMBERS` each per tick).
    fn watch_every(&self) -> Duration {
        (self.redis.settings.lease / 2).clamp(Duration::from_millis(100), WATCH_MAX)
    }

    fn job_key(&self, id: &str) -> String {
        self.redis.keys.seed(&format!("job:{id}"))
    }

    fn lease_key(&self, id: &str) -> String {
        self.redis.keys.seed(&format!("lease:{id}"))
    }

    /// Stores job `id` (its `spec`, the request body) in Redis with this pod's lease on it and
    /// starts running it here. Redis not answering: the job is handed back, to run locally.
    pub async fn start(
        self: &Arc<Self>,
        id: &str,
        spec: &str,
        job: Job,
        concurrency: usize,
        client: awc::Client,
    ) -> Result<(), (RedisError, Job)> {
        let token = token();
        let started = now_ms().to_string();
        let (total, conc) = (job.total.to_string(), concurrency.to_string());
        let fields: [(&str, &str); 13] = [
            ("spec", spec),
            ("index", &job.params.index),
            ("total", &total),
            ("concurrency", &conc),
            ("state", "running"),
            ("ranges", "[]"),
            ("done", "0"),
            ("fetched", "0"),
            ("cached", "0"),
            ("failed", "0"),
            ("started_ms", &started),
            ("owner", &self.pod_id),
            ("takeovers", "0"),
        ];
        let (job_key, lease_key, jobs, running) =
            (self.job_key(id), self.lease_key(id), self.redis.keys.seed("jobs"), self.redis.keys.seed("running"));
        let lease_ms = self.lease_ms();
        let mut args = vec![token.as_str(), lease_ms.as_str(), id, started.as_str()];
        args.extend(fields.iter().flat_map(|(k, v)| [*k, *v]));
        let keys = [job_key.as_str(), lease_key.as_str(), jobs.as_str(), running.as_str()];
        if let Err(e) = self.redis.eval::<i64>("seed_write", Deadline::Write, &CREATE, &keys, &args).await {
            return Err((e, job));
        }
        self.trim().await;
        let taken = Taken { id: id.to_string(), token, job, concurrency, done: Done::default(), base: zero() };
        self.spawn_run(taken, client);
        Ok(())
    }

    /// Drops the oldest ids from the list beyond [`LISTED`] (their records expire by themselves).
    async fn trim(&self) {
        let mut cmd = redis::cmd("ZREMRANGEBYRANK");
        cmd.arg(self.redis.keys.seed("jobs")).arg(0).arg(-(LISTED as i64) - 1);
        let _ = self.redis.call::<i64>("seed_write", Deadline::Write, &cmd).await;
    }

    fn spawn_run(self: &Arc<Self>, taken: Taken, client: awc::Client) {
        let id = taken.id.clone();
        self.mine.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone());
        let this = self.clone();
        // awc is not `Send`: the job runs on this thread.
        tokio::task::spawn_local(async move {
            this.drive(taken, client).await;
            this.mine.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        });
    }

    /// Runs a job to its end (or until another pod took it), writing checkpoints meanwhile.
    async fn drive(&self, taken: Taken, client: awc::Client) {
        let Taken { id, token, job, concurrency, mut done, base } = taken;
        let progress = Progress::new(job.total, done.count(), indicatif::ProgressBar::hidden());
        let fetcher = Direct { service: self.service.clone(), client };
        let stop = Stop::default();
        let latest = RefCell::new(done.clone());
        tracing::info!(%id, index = %job.params.index, tiles = job.total, resumed = done.count(), "seed job running on this pod");
        let running = async {
            let save = |d: &Done| *latest.borrow_mut() = d.clone();
            let ending = run::run(&job, &fetcher, concurrency, &mut done, &progress, &stop, save).await;
            (ending, done)
        };
        let renewing = async {
            loop {
                tokio::time::sleep(self.checkpoint_every()).await;
                let snapshot = latest.borrow().clone();
                let fields = progress_fields(&snapshot, &progress, base);
                if let Ok(0) = self.write(&CHECKPOINT, &id, &token, &fields).await {
                    return;
                }
            }
        };
        tokio::pin!(running, renewing);
        let (ending, done, lost) = tokio::select! {
            (ending, done) = &mut running => (ending, done, false),
            () = &mut renewing => {
                stop.request(StopReason::Interrupted);
                let (ending, done) = (&mut running).await;
                (ending, done, true)
            }
        };
        let c = progress.counts();
        if lost {
            tracing::warn!(%id, "seed job taken over by another pod (this pod missed its lease); stopped here");
            return;
        }
        let mut fields = progress_fields(&done, &progress, base);
        let (state, message) = state_of(Some(&ending), base.failed + c.failed, &job.params.index);
        fields.push(("state", state.to_string()));
        fields.push(("message", message.unwrap_or_default()));
        fields.push(("finished_ms", now_ms().to_string()));
        let ended = self.write(&FINISH, &id, &token, &fields).await;
        tracing::info!(%id, ?ending, fetched = c.fetched, cached = c.cached, failed = c.failed, "seed job ended");
        match ended {
            Ok(1) => {}
            Ok(_) => tracing::warn!(%id, "seed job ended here but another pod holds it now"),
            Err(e) => {
                tracing::warn!(%id, error = %e, "cannot write the end of a seed job; another pod will take it over")
            }
        }
    }

    /// Runs the checkpoint or the finish script with `fields`.
    async fn write(&self, lua: &Lua, id: &str, token: &str, fields: &[(&str, String)]) -> Result<i64, RedisError> {
        let (job_key, lease_key, running) = (self.job_key(id), self.lease_key(id), self.redis.keys.seed("running"));
        let finish = std::ptr::eq(lua, &*FINISH);
        let second = if finish { RETENTION.as_millis().to_string() } else { self.lease_ms() };
        let mut args = vec![token, second.as_str()];
        let mut keys = vec![job_key.as_str(), lease_key.as_str()];
        if finish {
            args.push(id);
            keys.push(running.as_str());
        }
        args.extend(fields.iter().flat_map(|(k, v)| [*k, v.as_str()]));
        self.redis.eval::<i64>("seed_write", Deadline::Write, lua, &keys, &args).await
    }

    /// Every tick, takes over at most one running job whose lease expired (its pod is gone),
    /// and runs it here. Runs until the server's runtime stops.
    pub fn spawn_watch(self: &Arc<Self>, upstream: &UpstreamSettings) {
        let this = self.clone();
        let client = crate::upstream::build_client(upstream);
        tokio::task::spawn_local(async move {
            let mut tick = tokio::time::interval(this.watch_every());
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Some(taken) = this.claim_one().await {
                    this.spawn_run(taken, client.clone());
                }
            }
        });
    }

    async fn claim_one(&self) -> Option<Taken> {
        let r = &self.redis;
        let mut cmd = redis::cmd("SMEMBERS");
        cmd.arg(r.keys.seed("running"));
        let ids: Vec<String> = r.call("seed_read", Deadline::Read, &cmd).await.ok()?;
        let lease_ms = self.lease_ms();
        let running = r.keys.seed("running");
        for id in ids {
            if self.mine.lock().unwrap_or_else(|p| p.into_inner()).contains(&id) {
                continue;
            }
            let token = token();
            let (job_key, lease_key) = (self.job_key(&id), self.lease_key(&id));
            let keys = [job_key.as_str(), lease_key.as_str(), running.as_str()];
            let args = [token.as_str(), lease_ms.as_str(), self.pod_id.as_str(), id.as_str()];
            if !matches!(r.eval::<i64>("seed_write", Deadline::Write, &CLAIM, &keys, &args).await, Ok(1)) {
                continue;
            }
            let record = match self.record(&id).await {
                Ok(Some(record)) => record,
                Ok(None) => continue,
                // Its lease lapses, and the job is claimed again later.
                Err(_) => return None,
            };
            match self.load(&id, &token, record).await {
                Ok(taken) => {
                    tracing::warn!(%id, done = taken.done.count(), "seed job taken over: its pod's lease expired");
                    return Some(taken);
                }
                Err(why) => {
                    tracing::warn!(%id, error = %why, "seed job cannot be resumed; marked failed");
                    let fields = [
                        ("state", "failed".to_string()),
                        ("message", format!("cannot be resumed: {why}")),
                        ("finished_ms", now_ms().to_string()),
                    ];
                    let _ = self.write(&FINISH, &id, &token, &fields).await;
                }
            }
        }
        None
    }

    /// The job `id` rebuilt from its `record`, to resume it.
    async fn load(&self, id: &str, token: &str, record: BTreeMap<String, String>) -> Result<Taken, String> {
        let spec = record.get("spec").cloned().ok_or("no spec")?;
        let (job, concurrency) = tokio::task::spawn_blocking(move || super::spec::build(spec.as_bytes()))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let ranges: Vec<[u64; 2]> =
            serde_json::from_str(record.get("ranges").map_or("[]", String::as_str)).map_err(|e| e.to_string())?;
        let done = Done::from_ranges(&ranges).ok_or("its done ranges overlap")?;
        if ranges.last().is_some_and(|[_, end]| *end > job.total) || number(&record, "total") != job.total {
            return Err("its checkpoint does not fit its spec".into());
        }
        let base = Counts {
            done: done.count(),
            fetched: number(&record, "fetched"),
            cached: number(&record, "cached"),
            failed: number(&record, "failed"),
        };
        Ok(Taken { id: id.to_string(), token: token.to_string(), job, concurrency, done, base })
    }

    async fn record(&self, id: &str) -> Result<Option<BTreeMap<String, String>>, RedisError> {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(self.job_key(id));
        let record: BTreeMap<String, String> = self.redis.call("seed_read", Deadline::Read, &cmd).await?;
        Ok((!record.is_empty()).then_some(record))
    }

    /// `GET /admin/seed/{id}`'s document of a fleet job; `None` when Redis has no such job.
    pub async fn status(&self, id: &str) -> Result<Option<Value>, RedisError> {
        Ok(self.record(id).await?.map(|r| document(id, &r, now_ms())))
    }

    /// Every listed job, newest first (ids whose record expired leave the list).
    pub async fn list(&self) -> Result<Vec<Value>, RedisError> {
        let mut cmd = redis::cmd("ZRANGE");
        cmd.arg(self.redis.keys.seed("jobs")).arg(0).arg(-1).arg("REV");
        let ids: Vec<String> = self.redis.call("seed_read", Deadline::Read, &cmd).await?;
        let mut jobs = Vec::with_capacity(ids.len());
        for id in ids {
            match self.record(&id).await? {
                Some(r) => jobs.push(document(&id, &r, now_ms())),
                None => {
                    let mut rem = redis::cmd("ZREM");
                    rem.arg(self.redis.keys.seed("jobs")).arg(&id);
                    let _ = self.redis.call::<i64>("seed_write", Deadline::Write, &rem).await;
                }
            }
        }
        Ok(jobs)
    }
}

fn zero() -> Counts {
    Counts { done: 0, fetched: 0, cached: 0, failed: 0 }
}

fn number(record: &BTreeMap<String, String>, field: &str) -> u64 {
    record.get(field).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// A checkpoint's fields: the done positions of `done`, the counts of this run on top of `base`.
fn progress_fields(done: &Done, progress: &Progress, base: Counts) -> Vec<(&'static str, String)> {
    let c = progress.counts();
    vec![
        ("ranges", serde_json::to_string(&done.to_ranges()).unwrap_or_else(|_| "[]".into())),
        ("done", done.count().to_string()),
        ("fetched", (base.fetched + c.fetched).to_string()),
        ("cached", (base.cached + c.cached).to_string()),
        ("failed", (base.failed + c.failed).to_string()),
        ("updated_ms", now_ms().to_string()),
    ]
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// The API's document of a stored job: the same fields as a pod's own job, plus the pod running
/// it (`pod`) and how often it was taken over.
fn document(id: &str, r: &BTreeMap<String, String>, now: u64) -> Value {
    let field = |k: &str| r.get(k).cloned().unwrap_or_default();
    let (total, done, failed) = (number(r, "total"), number(r, "done"), number(r, "failed"));
    let started = number(r, "started_ms");
    let finished = r.get("finished_ms").and_then(|v| v.parse::<u64>().ok());
    let state = field("state");
    let running = state == "running";
    let secs = (finished.unwrap_or(now).saturating_sub(started) as f64 / 1000.0).max(1e-3);
    let rate = (done + failed) as f64 / secs;
    let left = total.saturating_sub(done + failed);
    let eta = (running && rate > 0.0).then(|| (left as f64 / rate).ceil() as u64);
    let message = r.get("message").filter(|m| !m.is_empty());
    json!({
        "id": id,
        "index": field("index"),
        "state": state,
        "total": total,
        "done": done,
        "fetched": number(r, "fetched"),
        "cached": number(r, "cached"),
        "failed": failed,
        "started_at": rfc3339(started),
        "finished_at": finished.map(rfc3339),
        "tiles_per_second": (rate * 10.0).round() / 10.0,
        "eta_seconds": eta,
        "message": message,
        "pod": running.then(|| field("owner")),
        "takeovers": number(r, "takeovers"),
        "scope": "fleet",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_record_reads_back_as_the_api_document() {
        let r: BTreeMap<String, String> = [
            ("index", "a"),
            ("state", "running"),
            ("total", "100"),
            ("done", "40"),
            ("fetched", "30"),
            ("cached", "10"),
            ("failed", "0"),
            ("started_ms", "1000000"),
            ("owner", "pod-b"),
            ("takeovers", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let d = document("j1", &r, 1_010_000);
        assert_eq!(
            (d["state"].as_str(), d["done"].as_u64(), d["pod"].as_str()),
            (Some("running"), Some(40), Some("pod-b"))
        );
        assert_eq!((d["tiles_per_second"].as_f64(), d["eta_seconds"].as_u64()), (Some(4.0), Some(15)));
        assert_eq!((d["takeovers"].as_u64(), d["finished_at"].is_null()), (Some(1), true));
    }
}
