//! [`RedisTier`]: the shared tier behind the [`Tier`] interface, asked after memory and disk.
//!
//! Values are the entry codec's bytes ([`Entry::encode`], CRC-checked on the way back). An
//! entry larger than `redis_max_value` stays local, and a short-lived marker tells the other
//! pods not to wait on a lease for it. Every error is a miss for the caller (fail open).

use std::sync::Arc;

use redis::Cmd;

use super::{Deadline, Redis};
use crate::domain::entry::Entry;
use crate::domain::entry::HitSource;
use crate::domain::key::CacheKey;
use crate::store::cache::{BoxFuture, Tier, TierError};

/// The Redis tier.
pub struct RedisTier {
    redis: Arc<Redis>,
    max_entry: usize,
}

impl RedisTier {
    /// `max_entry`: the largest body a decoded entry may have (`max_entry_size`).
    pub fn new(redis: Arc<Redis>, max_entry: usize) -> RedisTier {
        RedisTier { redis, max_entry }
    }
}

fn err(e: impl std::fmt::Display) -> TierError {
    TierError { tier: "redis", message: e.to_string() }
}

impl Tier for RedisTier {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn get<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Result<Option<(Entry, HitSource)>, TierError>> {
        Box::pin(async move {
            let r = &self.redis;
            let tag = r.keys.tag(key);
            let value: Option<Vec<u8>> =
                r.call("get", Deadline::Read, &Cmd::get(r.keys.entry(&tag))).await.map_err(err)?;
            match value {
                None => Ok(None),
                Some(bytes) => {
                    let entry = Entry::decode(&mut bytes.as_slice(), self.max_entry).map_err(err)?;
                    Ok(Some((entry, HitSource::Remote)))
                }
            }
        })
    }

    fn insert<'a>(
        &'a self,
        key: &'a CacheKey,
        entry: Entry,
        expires_at_ms: u64,
    ) -> BoxFuture<'a, Result<(), TierError>> {
        Box::pin(async move {
            let r = &self.redis;
            let ttl_ms = expires_at_ms.saturating_sub(r.clock.now_ms());
            if ttl_ms == 0 || expires_at_ms == u64::MAX {
                // Already useless, or a promotion (Redis is the last tier: none reach it).
                return Ok(());
            }
            let tag = r.keys.tag(key);
            if entry.encoded_len() > r.settings.max_value {
                r.metrics.ops.with_label_values(&["set", "too_large"]).inc();
                // Tell the other pods not to wait for it: nothing will be shared.
                let mark = Cmd::set_options(
                    r.keys.large(&tag),
                    "1",
                    redis::SetOptions::default().with_expiration(redis::SetExpiry::PX(ttl_ms)),
                );
                let _: () = r.call("set_large", Deadline::Write, &mark).await.map_err(err)?;
                return Ok(());
            }
            let mut value = Vec::with_capacity(entry.encoded_len());
            entry.encode(&mut value).map_err(err)?;
            let cmd = Cmd::pset_ex(r.keys.entry(&tag), value, ttl_ms);
            let _: () = r.call("set", Deadline::Write, &cmd).await.map_err(err)?;
            Ok(())
        })
    }

    fn remove<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Result<(), TierError>> {
        Box::pin(async move {
            let r = &self.redis;
            let tag = r.keys.tag(key);
            let _: () = r.call("del", Deadline::Write, &Cmd::del(r.keys.entry(&tag))).await.map_err(err)?;
            Ok(())
        })
    }

    fn close(&self) -> BoxFuture<'_, Result<(), TierError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn status(&self) -> serde_json::Value {
        self.redis.status()
    }

    fn problem(&self) -> Option<String> {
        self.redis.problem()
    }
}
