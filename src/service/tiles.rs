//! The tile service: lookup -> decide -> lead or join the fill -> answer. No HTTP in here, so the
//! HTTP handler, the seeder and purge share it.
//!
//! 1. Key the request by its upstream identity ([`crate::upstream::UpstreamConfig::cache_key`]).
//! 2. Look in the cache; the request's index decides what the entry is worth to it
//!    ([`freshness::lifetime`], [`freshness::decide`]): fresh -> `HIT` (close to expiry, maybe
//!    plus one background early refresh, XFetch); within stale-while-revalidate -> `STALE` plus
//!    one background refresh; else fetch, keeping the old
//!    copy to revalidate with and, within stale-if-error, to stand in for a failing upstream.
//! 3. Ask the [`crate::store::flight::FillLock`] who fills the key. A leader **looks in the cache
//!    again** before fetching (a lookup that yielded may have missed an entry a flight stored
//!    meanwhile), then spawns the fetch ([`crate::service::fetch::run`]) on this worker; followers read
//!    the leader's flight.
//! 4. The answer: an [`Answer`] (entry or flight) or an [`UpstreamFailure`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::config::Policy;
use crate::domain::entry::HitSource;
use crate::domain::entry::{Entry, Meta};
use crate::domain::failure::UpstreamFailure;
use crate::domain::freshness::{self, Decision};
use crate::domain::key::CacheKey;
use crate::domain::routes::TileRequest;
use crate::service::core::Core;
use crate::service::fetch::{self, FetchCtx};
use crate::store::flight::{FlightHead, FlightReader, FlightWriter, Join};

/// The body of an answer.
pub enum Body {
    /// Complete, from the cache.
    Full(Bytes),
    /// Streaming from a flight.
    Flight(FlightReader),
}

/// What a client gets for a tile. Its response head is built by one function
/// (`http::tile::response_head`) from `meta` and the index's `lifetime`, for hits and misses alike.
pub struct Answer {
    pub meta: Meta,
    pub content_length: Option<u64>,
    /// How long the requesting index may keep it (`None`: not at all).
    pub lifetime: Option<Duration>,
    /// `HIT`, `MISS` or `STALE`.
    pub x_cache: &'static str,
    /// Why a stale copy is served (`X-Cache-Reason`).
    pub reason: Option<&'static str>,
    /// Metrics label: `hit`, `negative_hit`, `stale`, `miss`, `coalesced`.
    pub label: &'static str,
    /// The tier a hit came from.
    pub source: Option<HitSource>,
    pub body: Body,
}

/// What the slow paths of one request need.
struct Ctx<'a> {
    client: &'a awc::Client,
    tile: &'a TileRequest,
    index_label: &'a str,
    key: CacheKey,
    policy: &'a Policy,
}

/// The tile service. Cheap to clone.
#[derive(Clone)]
pub struct TileService {
    core: Arc<Core>,
}

impl TileService {
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    fn entry_answer(
        &self,
        entry: Entry,
        lifetime: Option<Duration>,
        source: Option<HitSource>,
        stale: Option<&'static str>,
    ) -> Answer {
        let label = match (stale, entry.meta.status) {
            (Some(_), _) => "stale",
            (None, 200) => "hit",
            (None, _) => "negative_hit",
        };
        Answer {
            content_length: Some(entry.body.len() as u64),
            meta: entry.meta,
            lifetime,
            x_cache: if stale.is_some() { "STALE" } else { "HIT" },
            reason: stale,
            label,
            source,
            body: Body::Full(entry.body),
        }
    }

    /// Answers a validated tile request. `client` is this worker's upstream client (fetches
    /// run on this worker: awc is not `Send`). `index_label` names the index in metrics.
    ///
    /// Every request is recorded in the cache map: when, and the copy it was answered from or
    /// that its fill stored (none for a failure or an answer that may not be kept).
    pub async fn serve(
        &self,
        client: &awc::Client,
        tile: &TileRequest,
        index_label: &str,
    ) -> Result<Answer, UpstreamFailure> {
        let answer = self.answer(client, tile, index_label).await;
        let st = &self.core;
        // A copy from a tier, or a fill's that may be kept.
        let stored =
            answer.as_ref().ok().filter(|a| a.source.is_some() || a.lifetime.is_some()).map(|a| a.meta.stored_at_ms);
        let key = || crate::observe::cache_map::key_hash(st.upstream.cache_key(tile).as_str());
        st.cache_map.record(&tile.index, (tile.z, tile.x, tile.y), st.clock.now_ms(), stored, key);
        answer
    }

    async fn answer(
        &self,
        client: &awc::Client,
        tile: &TileRequest,
        index_label: &str,
    ) -> Result<Answer, UpstreamFailure> {
        let st = &self.core;
        let key = st.upstream.cache_key(tile);
        let policy = st.settings.policy_for(&tile.index, tile.api.is_traffic());
        let found = self.lookup(&key, tile).await;
        let mut expired = None;
        if let Some((entry, source)) = found {
            let lifetime = freshness::lifetime(&entry.meta, policy, st.settings.limits());
            let draw = st.early_refresh_draw;
            match freshness::decide(&entry.meta, lifetime, policy, st.clock.now_ms(), draw) {
                // The hot path: nothing else is awaited.
                Decision::Fresh => return Ok(self.entry_answer(entry, lifetime, Some(source), None)),
                Decision::EarlyRefresh => {
                    self.start_early_refresh(client, tile, index_label, key, &entry);
                    return Ok(self.entry_answer(entry, lifetime, Some(source), None));
                }
                Decision::StaleWhileRevalidate => {
                    let ctx = Ctx { client, tile, index_label, key, policy };
                    return Ok(Box::pin(self.serve_stale(ctx, entry, lifetime, source)).await);
                }
                Decision::Fetch { fallback } => expired = Some((entry, fallback)),
            }
        }
        // The cold path, boxed so the hot path's future stays small.
        Box::pin(self.fill(Ctx { client, tile, index_label, key, policy }, expired)).await
    }

    /// Within stale-while-revalidate: the stale copy now, one background refresh. The refresh
    /// is started in a task of its own: asking who fills the key may wait on another pod's lease,
    /// and the client never waits for a refresh.
    async fn serve_stale(&self, ctx: Ctx<'_>, entry: Entry, lifetime: Option<Duration>, source: HitSource) -> Answer {
        let service = self.clone();
        let (client, tile, index) = (ctx.client.clone(), ctx.tile.clone(), ctx.index_label.to_string());
        let (key, stale) = (ctx.key, entry.clone());
        actix_web::rt::spawn(async move { service.refresh(&client, &tile, key, &index, stale, false).await });
        self.entry_answer(entry, lifetime, Some(source), Some("revalidating"))
    }

    /// XFetch chose to refresh a fresh entry early: the caller answers `HIT` from it, one
    /// background refresh (the stale-while-revalidate one) replaces it. Nothing is started while
    /// this pod already fetches the key (no task per hit for the refresh's duration); across
    /// pods the fill lock keeps it to one.
    fn start_early_refresh(
        &self,
        client: &awc::Client,
        tile: &TileRequest,
        index_label: &str,
        key: CacheKey,
        entry: &Entry,
    ) {
        if self.core.flights.is_running(&key) {
            return;
        }
        let service = self.clone();
        let (client, tile, index) = (client.clone(), tile.clone(), index_label.to_string());
        let old = entry.clone();
        actix_web::rt::spawn(async move { service.refresh(&client, &tile, key, &index, old, true).await });
    }

    /// The background refresh of a stale (or, `early`, an about to expire) entry: lead it, or
    /// leave it to the refresh already running (on this pod or, with Redis, on another: the
    /// refresh lease). Through `fetch::run` like every fetch: the breaker, the index's budget and
    /// the rate cap apply, and a refused refresh (budget spent, cap queue full) stores nothing,
    /// so the old copy keeps serving.
    async fn refresh(
        &self,
        client: &awc::Client,
        tile: &TileRequest,
        key: CacheKey,
        index_label: &str,
        old: Entry,
        early: bool,
    ) {
        let Some(writer) = self.core.fill.acquire_refresh(&key).await else {
            return;
        };
        // Refreshed by a flight (here or on another pod) that just ended: nothing to fetch.
        if let Some(fresh) = self.newer_than(&key, tile, old.meta.stored_at_ms).await {
            writer_done(writer, &fresh);
            return;
        }
        if early {
            self.core.metrics.early_refresh.with_label_values(&[index_label]).inc();
        }
        self.spawn_fetch(writer, client, tile.clone(), Some(old), index_label);
    }

    /// A refresh's second look: only a copy stored after the one being refreshed
    /// (`stored_at_ms` newer) means someone refreshed it meanwhile. Tiers holding the old copy
    /// are passed over (with Redis, another pod's refresh is found there and promoted).
    async fn newer_than(&self, key: &CacheKey, tile: &TileRequest, stored_at_ms: u64) -> Option<Answer> {
        let (entry, source) = self.lookup_where(key, tile, |e| e.meta.stored_at_ms > stored_at_ms).await?;
        let policy = self.core.settings.policy_for(&tile.index, tile.api.is_traffic());
        let lifetime = freshness::lifetime(&entry.meta, policy, self.core.settings.limits());
        Some(self.entry_answer(entry, lifetime, Some(source), None))
    }

    /// A miss (or an expired copy, kept in `expired` to revalidate with and, if usable, to stand
    /// in for a failing upstream): lead or join the fill, and answer from its flight.
    async fn fill(&self, ctx: Ctx<'_>, mut expired: Option<(Entry, bool)>) -> Result<Answer, UpstreamFailure> {
        let st = &self.core;
        let Ctx { client, tile, index_label, key, policy } = ctx;
        let limits = st.settings.limits();
        let join = if expired.is_some() { st.fill.acquire_expired(&key).await } else { st.fill.acquire(&key).await };
        let (mut reader, label) = match join {
            Join::Leader(writer, reader) => {
                // Look again: a lookup that yielded may have missed what a flight just stored.
                if let Some(answer) = self.recheck(&key, tile, policy, &mut expired).await {
                    writer_done(writer, &answer);
                    return Ok(answer);
                }
                let revalidate = expired.as_ref().map(|(e, _)| e.clone());
                self.spawn_fetch(writer, client, tile.clone(), revalidate, index_label);
                (reader, "miss")
            }
            Join::Follower(reader) => (reader, "coalesced"),
        };
        let s = &st.settings.upstream;
        // A leader may first wait for another pod's lease (at most `lease_wait`), then fetch.
        let lease_wait = st.settings.redis.as_ref().map_or(Duration::ZERO, |r| r.lease_wait);
        // Under `upstream_rps` each attempt may first wait for its turn.
        let turns = st.settings.upstream_interval.map_or(Duration::ZERO, |_| st.settings.upstream_queue_wait);
        let attempts = s.retry_attempts as u32;
        let bound = s.head_timeout * attempts + s.retry_total + Duration::from_secs(1) + lease_wait + turns * attempts;
        let head = match tokio::time::timeout(bound, reader.head()).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamFailure::Timeout),
        };
        match head {
            Ok(head) => Ok(Answer {
                meta: head.meta.clone(),
                content_length: head.content_length,
                lifetime: freshness::lifetime(&head.meta, policy, limits),
                x_cache: head.x_cache,
                reason: None,
                label: if head.x_cache == "HIT" { "hit" } else { label },
                source: head.source,
                body: Body::Flight(reader),
            }),
            Err(failure) => match expired {
                Some((entry, true)) => {
                    let lifetime = freshness::lifetime(&entry.meta, policy, limits);
                    if freshness::usable_if_error(&entry.meta, lifetime, policy, st.clock.now_ms()) {
                        Ok(self.entry_answer(entry, lifetime, None, Some(failure.label())))
                    } else {
                        Err(failure)
                    }
                }
                _ => Err(failure),
            },
        }
    }

    /// The leader's second look. A fresh entry is the answer; an expired one found now (and
    /// none before, or newer than the one before) becomes the copy to revalidate with.
    ///
    /// With an expired copy in hand, only a copy stored after it counts: tiers holding that
    /// same old copy (this pod's memory) are passed over, so another pod's revalidation, just
    /// stored in Redis, is found there (and promoted) instead of this pod asking HERE again.
    /// One revalidation per tile and lifetime across the fleet, however many pods see it
    /// expire.
    async fn recheck(
        &self,
        key: &CacheKey,
        tile: &TileRequest,
        policy: &Policy,
        expired: &mut Option<(Entry, bool)>,
    ) -> Option<Answer> {
        let st = &self.core;
        let found = match expired.as_ref().map(|(old, _)| old.meta.stored_at_ms) {
            Some(at) => self.lookup_where(key, tile, |e| e.meta.stored_at_ms > at).await,
            None => self.lookup(key, tile).await,
        };
        let (entry, source) = found?;
        let now = st.clock.now_ms();
        let lifetime = freshness::lifetime(&entry.meta, policy, st.settings.limits());
        // No early refresh here: this request leads a fill anyway.
        match freshness::decide(&entry.meta, lifetime, policy, now, || 1.0) {
            Decision::Fresh | Decision::EarlyRefresh => Some(self.entry_answer(entry, lifetime, Some(source), None)),
            decision => {
                // Found now, or newer than the copy found before: the one to revalidate with.
                let usable = !matches!(decision, Decision::Fetch { fallback: false });
                *expired = Some((entry, usable));
                None
            }
        }
    }

    /// Looks `key` up in the tiers, skipping entries a purge rule covers for this request
    /// (they are missing: refetched, never served stale).
    async fn lookup(&self, key: &CacheKey, tile: &TileRequest) -> Option<(Entry, HitSource)> {
        self.lookup_where(key, tile, |_| true).await
    }

    /// [`TileService::lookup`], also passing over entries `wanted` refuses.
    async fn lookup_where(
        &self,
        key: &CacheKey,
        tile: &TileRequest,
        wanted: impl Fn(&Entry) -> bool,
    ) -> Option<(Entry, HitSource)> {
        let st = &self.core;
        let valid = |e: &Entry| {
            if !wanted(e) {
                return false;
            }
            let purged = st.purges.is_purged(&tile.index, tile.z, tile.x, tile.y, key.as_str(), e.meta.stored_at_ms);
            if purged {
                st.metrics.purged.with_label_values(&[st.metrics.index_label(&tile.index)]).inc();
            }
            !purged
        };
        st.cache.get_valid(key, valid).await
    }

    fn spawn_fetch(
        &self,
        writer: FlightWriter,
        client: &awc::Client,
        tile: TileRequest,
        stale: Option<Entry>,
        index_label: &str,
    ) {
        // Only an entry with the upstream's ETag or Last-Modified can be revalidated.
        let stale = stale.filter(|e| crate::upstream::Validator::of(&e.meta).is_some());
        let ctx =
            FetchCtx { core: self.core.clone(), client: client.clone(), tile, stale, index: index_label.to_string() };
        // awc futures are not Send: the fetch runs on this worker's local runtime.
        actix_web::rt::spawn(fetch::run(writer, ctx));
    }
}

/// Hands a leader's flight the entry its second look found, so anyone who joined meanwhile
/// reads it too.
fn writer_done(writer: FlightWriter, answer: &Answer) {
    let Body::Full(body) = &answer.body else {
        return;
    };
    writer.complete_with(
        FlightHead {
            meta: answer.meta.clone(),
            content_length: answer.content_length,
            x_cache: "HIT",
            source: answer.source,
        },
        body.clone(),
    );
}
