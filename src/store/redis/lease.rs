//! [`FleetFill`]: one upstream fetch per cold tile across every pod.
//!
//! Within a pod the in-process [`Flights`] coalesce first, so only a pod's local leader asks
//! Redis, once per cold tile. The leader runs one script on the tile's keys: if the entry is in
//! Redis already it answers from it; if another pod marked the tile too large to share it
//! fetches itself; else it tries `SET lease token NX PX lease`. Holding the lease it fetches; the
//! lease is released (compare-and-delete: only our own token) and `<prefix>:filled` published
//! when its flight ends, stored or failed. Finding the lease held it waits, at most
//! `lease_wait`, for that notification (with polling behind it should a message be lost), then
//! runs the script again: the entry is there (answer from it), or the holder failed and its lease
//! is gone (compete again). Redis down or slow: it fetches itself at once.
//!
//! A held lease is renewed while its flight runs: every third of the lease a compare-and-extend
//! script (`PEXPIRE` only while the value is still our token) pushes its expiry out again, so a
//! large body streaming for longer than the lease does not let a second pod start a duplicate
//! fetch. The renewal task belongs to the [`Lease`]: it stops when the lease is dropped with the
//! flight's writer (stored, failed, client gone, task killed), or when the lease is found lost.
//! A renewal that fails (deadline, breaker open) is skipped and never fails the flight.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::sync::LazyLock;

use tokio::sync::Notify;

use super::{Deadline, Lua, Redis};
use crate::domain::key::CacheKey;
use crate::store::cache::BoxFuture;
use crate::store::flight::{FillLock, Flights, Join};

/// `KEYS`: entry, large marker, lease. `ARGV`: token, lease ms.
/// Returns 3 when the entry exists, 2 when the tile is too large to share, 1 when the lease was
/// taken, 0 when another pod holds it.
static ACQUIRE: LazyLock<Lua> = LazyLock::new(|| Lua::new(ACQUIRE_LUA));
const ACQUIRE_LUA: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 3 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 2 end
if redis.call('SET', KEYS[3], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
";

/// `KEYS`: large marker, lease. `ARGV`: token, lease ms. A background refresh's lease: the
/// entry exists (it is being refreshed), so only the lease itself decides. Returns 2 when the
/// tile is too large to share, 1 when the lease was taken, 0 when another pod holds it.
static ACQUIRE_REFRESH: LazyLock<Lua> = LazyLock::new(|| Lua::new(ACQUIRE_REFRESH_LUA));
const ACQUIRE_REFRESH_LUA: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 2 end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
";

/// `KEYS`: lease. `ARGV`: token, channel, tag. Deletes the lease only if it is still ours, and
/// tells the waiting pods either way.
static RELEASE: LazyLock<Lua> = LazyLock::new(|| Lua::new(RELEASE_LUA));
const RELEASE_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
";

/// `KEYS`: lease. `ARGV`: token, lease ms. Extends the lease only while it is still ours.
/// Returns 1 when extended, 0 when the lease is gone or another pod's.
static RENEW: LazyLock<Lua> = LazyLock::new(|| Lua::new(RENEW_LUA));
const RENEW_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
";

/// Local waiters for `filled` notifications, by tag.
#[derive(Default)]
pub struct Waiters {
    map: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Waiters {
    fn register(self: &Arc<Self>, tag: &str) -> WaitGuard {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let notify = map.entry(tag.to_string()).or_default().clone();
        WaitGuard { waiters: self.clone(), tag: tag.to_string(), notify }
    }

    /// A `filled` message for `tag` arrived.
    pub fn notify(&self, tag: &str) {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get(tag) {
            n.notify_waiters();
        }
    }

    /// Wakes every waiter (the subscriber reconnected: messages may have been lost).
    pub fn notify_all(&self) {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        for n in map.values() {
            n.notify_waiters();
        }
    }

    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

struct WaitGuard {
    waiters: Arc<Waiters>,
    tag: String,
    notify: Arc<Notify>,
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        let mut map = self.waiters.map.lock().unwrap_or_else(|p| p.into_inner());
        // The map's reference and ours: nobody else waits on this tag.
        if map.get(&self.tag).is_some_and(|n| Arc::strong_count(n) <= 2) {
            map.remove(&self.tag);
        }
    }
}

/// A held lease; dropping it (with the flight's writer, after the entry was stored) stops its
/// renewal and releases it in the background.
struct Lease {
    redis: Arc<Redis>,
    key: String,
    token: String,
    tag: String,
    /// Dropped with the lease: ends the renewal task.
    _renewal: tokio::sync::oneshot::Sender<()>,
}

impl Lease {
    /// A lease just taken: starts renewing it every third of the lease.
    fn held(redis: &Arc<Redis>, key: String, token: String, tag: String) -> Lease {
        let (stop_tx, stop) = tokio::sync::oneshot::channel();
        let (r, k, t) = (redis.clone(), key.clone(), token.clone());
        redis.spawn(renew(r, k, t, stop));
        Lease { redis: redis.clone(), key, token, tag, _renewal: stop_tx }
    }
}

/// Counts a running renewal task in `tile_proxy_redis_leases_held` for as long as it lives.
struct Held<'a>(&'a prometheus::IntGauge);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Renews the lease `key` (ours while it holds `token`) every third of the lease until `stop`
/// resolves (the [`Lease`] was dropped) or the lease is found lost.
async fn renew(redis: Arc<Redis>, key: String, token: String, mut stop: tokio::sync::oneshot::Receiver<()>) {
    redis.metrics.leases_held.inc();
    let _held = Held(&redis.metrics.leases_held);
    let every = (redis.settings.lease / 3).max(Duration::from_millis(10));
    let lease_ms = redis.settings.lease.as_millis().to_string();
    // A steady rate: a slow renewal does not push the next one out.
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = ticks.tick() => {}
        }
        let (keys, args) = ([key.as_str()], [token.as_str(), lease_ms.as_str()]);
        let call = redis.eval::<i64>("lease_renew", Deadline::Read, &RENEW, &keys, &args);
        let outcome = tokio::select! {
            _ = &mut stop => return,
            r = call => r,
        };
        match outcome {
            Ok(1) => redis.metrics.lease.with_label_values(&["renewed"]).inc(),
            Ok(_) => {
                // Expired (Redis unreachable for longer than the lease) and maybe taken by
                // another pod: nothing left to renew. The flight goes on; its store is harmless.
                redis.metrics.lease.with_label_values(&["lost"]).inc();
                tracing::warn!("fetch lease lost while its flight ran; another pod may fetch the tile too");
                return;
            }
            // Counted in tile_proxy_redis_ops_total{op="lease_renew"}; the next period tries again.
            Err(_) => {}
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let redis = self.redis.clone();
        let (key, token, tag) =
            (std::mem::take(&mut self.key), std::mem::take(&mut self.token), std::mem::take(&mut self.tag));
        self.redis.spawn(async move {
            let channel = redis.keys.filled_channel();
            let _ =
                redis.eval::<i64>("lease_release", Deadline::Write, &RELEASE, &[&key], &[&token, &channel, &tag]).await;
        });
    }
}

/// The fleet-wide fill lock: in-process flights first, then a Redis lease.
pub struct FleetFill {
    flights: Arc<Flights>,
    redis: Arc<Redis>,
    waiters: Arc<Waiters>,
}

impl FleetFill {
    pub fn new(flights: Arc<Flights>, redis: Arc<Redis>, waiters: Arc<Waiters>) -> FleetFill {
        FleetFill { flights, redis, waiters }
    }

    /// Takes the lease for the writer, or waits for the pod holding it. Whatever happens the
    /// caller leads: it looks in the cache again, and fetches if the entry is still missing.
    ///
    /// `expired`: the caller holds an expired copy, and the entry still exists in Redis (kept
    /// for the stale windows), so its existence says nothing; only the lease decides (the
    /// refresh script), and a pod that finds it taken waits for the holder, then takes it
    /// itself: its second look then finds the holder's renewed copy (stored after its own), so
    /// one pod revalidates a tile for the fleet.
    async fn lease(&self, key: &CacheKey, expired: bool) -> Option<Lease> {
        let r = &self.redis;
        let tag = r.keys.tag(key);
        let keys = if expired {
            vec![r.keys.large(&tag), r.keys.lease(&tag)]
        } else {
            vec![r.keys.entry(&tag), r.keys.large(&tag), r.keys.lease(&tag)]
        };
        let (script, lease_key) = if expired { (&ACQUIRE_REFRESH, 1) } else { (&ACQUIRE, 2) };
        let lease_ms = r.settings.lease.as_millis().to_string();
        let token = super::token();
        let waiting = self.waiters.register(&tag);
        let deadline = tokio::time::Instant::now() + r.settings.lease_wait;
        let poll = (r.settings.lease_wait / 20).clamp(Duration::from_millis(20), Duration::from_millis(250));
        let mut waited = false;
        loop {
            // Listen before asking, so a release between the two is not missed.
            let notified = waiting.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            let outcome = match r.eval::<i64>("lease", Deadline::Read, script, &keys, &[&token, &lease_ms]).await {
                Ok(1) => {
                    r.metrics.lease.with_label_values(&["acquired"]).inc();
                    return Some(Lease::held(r, keys[lease_key].to_string(), token, tag));
                }
                Ok(2) if expired => "too_large",
                Ok(3) => {
                    if waited {
                        "waited_filled"
                    } else {
                        "filled"
                    }
                }
                Ok(2) => "too_large",
                Ok(_) => {
                    let now = tokio::time::Instant::now();
                    if now >= deadline {
                        "wait_expired"
                    } else {
                        waited = true;
                        let nap = poll.min(deadline - now);
                        let by = match tokio::time::timeout(nap, notified).await {
                            Ok(()) => "notification",
                            Err(_) => "poll",
                        };
                        r.metrics.wakeups.with_label_values(&[by]).inc();
                        continue;
                    }
                }
                Err(_) => "unavailable",
            };
            r.metrics.lease.with_label_values(&[outcome]).inc();
            return None;
        }
    }
}

impl FleetFill {
    /// One try at a refresh lease, no waiting. `Err(())`: another pod refreshes the key.
    async fn refresh_lease(&self, key: &CacheKey) -> Result<Option<Lease>, ()> {
        let r = &self.redis;
        let tag = r.keys.tag(key);
        let (large, lease) = (r.keys.large(&tag), r.keys.lease(&tag));
        let lease_ms = r.settings.lease.as_millis().to_string();
        let token = super::token();
        let keys = [large.as_str(), lease.as_str()];
        let (outcome, result) =
            match r.eval::<i64>("lease", Deadline::Read, &ACQUIRE_REFRESH, &keys, &[&token, &lease_ms]).await {
                Ok(1) => ("acquired", Ok(Some(Lease::held(r, lease, token, tag)))),
                Ok(2) => ("too_large", Ok(None)),
                Ok(_) => ("refresh_elsewhere", Err(())),
                Err(_) => ("unavailable", Ok(None)),
            };
        r.metrics.lease.with_label_values(&[outcome]).inc();
        result
    }
}

impl FillLock for FleetFill {
    fn acquire_refresh<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Option<crate::store::flight::FlightWriter>> {
        Box::pin(async move {
            let Join::Leader(mut writer, _reader) = self.flights.join(key) else {
                return None;
            };
            match self.refresh_lease(key).await {
                Ok(Some(lease)) => writer.attach(Box::new(lease)),
                Ok(None) => {}
                // Dropping the writer ends this pod's flight; nobody reads it.
                Err(()) => return None,
            }
            Some(writer)
        })
    }

    fn acquire<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Join> {
        self.acquire_with(key, false)
    }

    fn acquire_expired<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Join> {
        self.acquire_with(key, true)
    }
}

impl FleetFill {
    fn acquire_with<'a>(&'a self, key: &'a CacheKey, expired: bool) -> BoxFuture<'a, Join> {
        Box::pin(async move {
            match self.flights.join(key) {
                Join::Leader(mut writer, reader) => {
                    if let Some(lease) = self.lease(key, expired).await {
                        writer.attach(Box::new(lease));
                    }
                    Join::Leader(writer, reader)
                }
                follower => follower,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiters_are_forgotten_when_the_last_one_leaves() {
        let w = Arc::new(Waiters::default());
        let a = w.register("t");
        let b = w.register("t");
        assert_eq!(w.len(), 1);
        drop(a);
        assert_eq!(w.len(), 1, "b still waits");
        drop(b);
        assert!(w.is_empty());
    }

    #[tokio::test]
    async fn a_notification_wakes_a_registered_waiter() {
        let w = Arc::new(Waiters::default());
        let g = w.register("t");
        let n = g.notify.notified();
        tokio::pin!(n);
        n.as_mut().enable();
        w.notify("other");
        w.notify("t");
        tokio::time::timeout(Duration::from_secs(1), n).await.expect("woken");
    }
}
