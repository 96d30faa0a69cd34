//! The tile service: lookup -> decide -> lead or join the fill -> answer. No HTTP in here, so the
//! HTTP handler, the seeder and purge share it.
//!
//! 1. Key the request by its upstream identity ([`crate::upstream::UpstreamConfig::cache_key`]).
//! 2. Look in the cache; the request's index decides what the entry is worth to it
//!    ([`freshness::lifetime`], [`freshness::decide`]): fresh -> `HIT`; within
//!    stale-while-revalidate -> `STALE` plus one background refresh; else fetch, keeping the old
//!    copy to revalidate with and, within stale-if-error, to stand in for a failing upstream.
//! 3. Ask the [`crate::flight::FillLock`] who fills the key. A leader **looks in the cache
//!    again** before fetching (a lookup that yielded may have missed an entry a flight stored
//!    meanwhile), then spawns the fetch ([`crate::fetch::run`]) on this worker; followers read
//!    the leader's flight.
//! 4. The answer: an [`Answer`] (entry or flight) or an [`UpstreamFailure`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::cache::HitSource;
use crate::config::Policy;
use crate::entry::{Entry, Meta};
use crate::error::UpstreamFailure;
use crate::fetch::{self, FetchCtx};
use crate::flight::{FlightHead, FlightReader, FlightWriter, Join};
use crate::freshness::{self, Decision};
use crate::key::CacheKey;
use crate::routes::TileRequest;
use crate::state::AppState;

/// The body of an answer.
pub enum Body {
    /// Complete, from the cache.
    Full(Bytes),
    /// Streaming from a flight.
    Flight(FlightReader),
}

/// What a client gets for a tile. Its response head is built by one function
/// (`proxy::response_head`) from `meta` and the index's `lifetime`, for hits and misses alike.
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

/// The tile service. Cheap to clone.
#[derive(Clone)]
pub struct TileService {
    state: Arc<AppState>,
}

impl TileService {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }

    pub fn state(&self) -> &Arc<AppState> {
        &self.state
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
    pub async fn serve(
        &self,
        client: &awc::Client,
        tile: TileRequest,
        index_label: &str,
    ) -> Result<Answer, UpstreamFailure> {
        let st = &self.state;
        let key = st.upstream.cache_key(&tile);
        let settings = st.settings.clone();
        let policy = settings.policy(&tile.index);
        let limits = st.settings.limits();
        let now = st.clock.now_ms();

        // The old copy: to revalidate with, and (if `usable`) to stand in for a failing upstream.
        let mut expired: Option<(Entry, bool)> = None;
        if let Some((entry, source)) = st.cache.get(&key).await {
            let lifetime = freshness::lifetime(&entry.meta, policy, limits);
            match freshness::decide(&entry.meta, lifetime, policy, now) {
                Decision::Fresh => return Ok(self.entry_answer(entry, lifetime, Some(source), None)),
                Decision::StaleWhileRevalidate => {
                    if let Join::Leader(writer, reader) = st.fill.acquire(&key).await {
                        drop(reader);
                        // Refreshed by a flight that just ended? Then that is the answer.
                        if let Some(fresh) = self.recheck(&key, policy, &mut None).await {
                            writer_done(writer, &fresh);
                            return Ok(fresh);
                        }
                        self.spawn_fetch(writer, client, tile, Some(entry.clone()), index_label);
                    }
                    return Ok(self.entry_answer(entry, lifetime, Some(source), Some("revalidating")));
                }
                Decision::Fetch { fallback } => expired = Some((entry, fallback)),
            }
        }

        let (mut reader, label) = match st.fill.acquire(&key).await {
            Join::Leader(writer, reader) => {
                // Look again: a lookup that yielded may have missed what a flight just stored.
                if let Some(answer) = self.recheck(&key, policy, &mut expired).await {
                    writer_done(writer, &answer);
                    return Ok(answer);
                }
                let revalidate = expired.as_ref().map(|(e, _)| e.clone());
                self.spawn_fetch(writer, client, tile, revalidate, index_label);
                (reader, "miss")
            }
            Join::Follower(reader) => (reader, "coalesced"),
        };
        let s = &st.settings.upstream;
        let bound = s.head_timeout * s.retry_attempts as u32 + s.retry_total + Duration::from_secs(1);
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
                source: None,
                body: Body::Flight(reader),
            }),
            Err(failure) => {
                let now = st.clock.now_ms();
                match expired {
                    Some((entry, true)) => {
                        let lifetime = freshness::lifetime(&entry.meta, policy, limits);
                        if freshness::usable_if_error(&entry.meta, lifetime, policy, now) {
                            Ok(self.entry_answer(entry, lifetime, None, Some(failure.label())))
                        } else {
                            Err(failure)
                        }
                    }
                    _ => Err(failure),
                }
            }
        }
    }

    /// The leader's second look. A fresh entry is the answer; an expired one found now (and
    /// none before) becomes the copy to revalidate with.
    async fn recheck(&self, key: &CacheKey, policy: &Policy, expired: &mut Option<(Entry, bool)>) -> Option<Answer> {
        let st = &self.state;
        let (entry, source) = st.cache.get(key).await?;
        let now = st.clock.now_ms();
        let lifetime = freshness::lifetime(&entry.meta, policy, st.settings.limits());
        match freshness::decide(&entry.meta, lifetime, policy, now) {
            Decision::Fresh => Some(self.entry_answer(entry, lifetime, Some(source), None)),
            decision => {
                if expired.is_none() {
                    let usable = !matches!(decision, Decision::Fetch { fallback: false });
                    *expired = Some((entry, usable));
                }
                None
            }
        }
    }

    fn spawn_fetch(
        &self,
        writer: FlightWriter,
        client: &awc::Client,
        tile: TileRequest,
        stale: Option<Entry>,
        index_label: &str,
    ) {
        // Only an entry with the upstream's ETag can be revalidated.
        let stale = stale.filter(|e| e.meta.status == 200 && e.meta.etag.is_some());
        let ctx =
            FetchCtx { state: self.state.clone(), client: client.clone(), tile, stale, index: index_label.to_string() };
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
        FlightHead { meta: answer.meta.clone(), content_length: answer.content_length, x_cache: "HIT" },
        body.clone(),
    );
}
