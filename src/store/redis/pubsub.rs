//! The subscriber: one connection per pod listening on `<prefix>:filled` (lease holders telling
//! waiting pods a tile's fetch ended) and `<prefix>:purge` (new purge rules). It reconnects with
//! backoff forever; on every (re)connect it wakes all lease waiters (a message may have been
//! lost) and reads the whole rule set again, so a pod that missed a purge while cut off from
//! Redis catches up. It also pings and re-reads the rules every `REFRESH`, which finds a silently
//! dead connection.
//!
//! In cluster mode it listens on one seed node, and on the next after a failure: a classic
//! PUBLISH, on whichever node it runs, reaches the subscribers of every node. In Sentinel mode it
//! listens on the primary the Sentinels named last, and after a failure has them asked again.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::Cmd;

use super::lease::Waiters;
use super::{Deadline, Redis};
use crate::base::clock::SharedClock;
use crate::domain::purge::{PurgeRules, Rule};

/// How often the subscriber pings and re-reads the rules.
const REFRESH: Duration = Duration::from_secs(15);

/// Called after the rule set changed (metrics, the local copy).
pub type OnChange = Arc<dyn Fn() + Send + Sync>;

/// Starts the subscriber on the Redis runtime.
pub fn start(
    redis: Arc<Redis>,
    waiters: Arc<Waiters>,
    rules: Arc<PurgeRules>,
    clock: SharedClock,
    on_change: OnChange,
) {
    let r = redis.clone();
    redis.spawn(async move {
        let mut backoff = Duration::from_millis(100);
        // In cluster mode, the seed node to listen on: the next one after each failure.
        let mut node = 0usize;
        loop {
            match session(&r, node, &waiters, &rules, &clock, &on_change).await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => {
                    tracing::debug!(error = %e, "redis subscriber disconnected");
                    r.primary_lost();
                    node = node.wrapping_add(1);
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
            tokio::time::sleep(backoff).await;
        }
    });
}

/// Reads every rule stored in Redis into `rules`.
pub async fn load_rules(redis: &Redis, rules: &PurgeRules, now_ms: u64) -> Result<usize, super::RedisError> {
    let all: Vec<(String, String)> =
        redis.call("purges_load", Deadline::Write, &Cmd::hgetall(redis.keys.purges())).await?;
    let parsed: Vec<Rule> = all.iter().filter_map(|(_, json)| serde_json::from_str(json).ok()).collect();
    // Rules that can match nothing any more leave the shared store too.
    let dead: Vec<&str> =
        parsed.iter().filter(|r| !r.live(now_ms, rules.max_life_ms())).map(|r| r.id.as_str()).collect();
    if !dead.is_empty() {
        let _ = redis.call::<()>("purges_expire", Deadline::Write, &Cmd::hdel(redis.keys.purges(), &dead)).await;
    }
    let n = parsed.len() - dead.len();
    rules.merge(parsed, now_ms);
    Ok(n)
}

async fn session(
    redis: &Arc<Redis>,
    node: usize,
    waiters: &Waiters,
    rules: &PurgeRules,
    clock: &SharedClock,
    on_change: &OnChange,
) -> Result<(), String> {
    let limit = redis.settings.connect_timeout;
    let client = redis.subscriber(node).ok_or("no redis primary known yet")?;
    let pubsub = tokio::time::timeout(limit, client.get_async_pubsub())
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let (mut sink, mut stream) = pubsub.split();
    let channels = [redis.keys.filled_channel(), redis.keys.purge_channel()];
    tokio::time::timeout(limit, sink.subscribe(&channels[..]))
        .await
        .map_err(|_| "subscribe timed out".to_string())?
        .map_err(|e| e.to_string())?;
    tracing::info!("redis subscriber connected");
    waiters.notify_all();
    match load_rules(redis, rules, clock.now_ms()).await {
        Ok(_) => on_change(),
        Err(e) => tracing::warn!(error = %e, "cannot read purge rules from redis"),
    }
    let mut tick = tokio::time::interval(REFRESH);
    tick.tick().await;
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else { return Err("connection closed".into()) };
                let payload = msg.get_payload_bytes();
                if msg.get_channel_name() == channels[0] {
                    if let Ok(tag) = std::str::from_utf8(payload) {
                        waiters.notify(tag);
                    }
                } else {
                    match serde_json::from_slice::<Rule>(payload) {
                        Ok(rule) => {
                            if rules.add(rule, clock.now_ms()) {
                                on_change();
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "ignoring a malformed purge message"),
                    }
                }
            }
            _ = tick.tick() => {
                let ping = tokio::time::timeout(limit, sink.ping::<redis::Value>()).await;
                if !matches!(ping, Ok(Ok(_))) {
                    return Err("ping failed".into());
                }
                let _ = load_rules(redis, rules, clock.now_ms()).await;
                rules.expire(clock.now_ms());
                on_change();
            }
        }
    }
}
