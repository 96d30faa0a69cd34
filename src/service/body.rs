//! A tile answer's body in the encoding a client negotiated ([`tile_body`]).
//!
//! Compressed once, kept compressed: each encoded form of a tile is an entry of its own in the
//! [`crate::store::cache::TileCache`] (memory, disk and Redis, like any tile), under a key derived
//! from the tile's key, the encoding and the identity entry's *version*
//! ([`crate::domain::key::CacheKey::variant`]). The identity entry stays the source of truth: it
//! is looked up first as always (freshness, stale windows, purges and revalidation are decided
//! on it), then its variant. So a variant can never outlive or contradict its identity entry: a
//! new version (a refetch after expiry or a purge) has a new variant key, and a 304 revalidation
//! keeps the version and so the variant. A variant is stored with the identity's times and
//! retention and is checked against purge rules under the tile's own key. A variant missing
//! from every tier is compressed now (on the blocking pool, not on the worker's event loop),
//! answered, and stored in the background: once per tile version per fleet with Redis, or per
//! pod without. Concurrent first requests may each compress (no coalescing: it is once per
//! version, and a 50 KB tile takes about 2 ms). Variants weigh their bytes in the memory tier
//! like every entry, so `memory_cache` bounds them too.
//!
//! A miss for a client that accepts an encoding waits for the whole body (bounded by
//! `max_entry_size`; vector tiles are small) and is answered compressed; a body that fails
//! before its end is then a failure (a 502), never a truncated 200.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use crate::domain::encoding::{encode, Encoding};
use crate::domain::entry::{Entry, Meta};
use crate::domain::failure::UpstreamFailure;
use crate::domain::routes::TileRequest;
use crate::service::core::Core;
use crate::service::tiles::Body;

/// [`encode`] on the blocking pool (a large tile must not hold up the worker's other requests).
async fn encode_off_loop(encoding: Encoding, body: Bytes) -> Bytes {
    let b = body.clone();
    match actix_web::web::block(move || encode(encoding, &b)).await {
        Ok(v) => Bytes::from(v),
        // The pool is shutting down: do it here.
        Err(_) => Bytes::from(encode(encoding, &body)),
    }
}

/// The `encoding` form of a tile answer's body: the stored variant of the identity entry's
/// version, else compressed now (and stored in the background). A miss's body is read whole
/// first (the representation was only chosen for a known length within `max_entry_size`);
/// `Err` when it fails before its end.
pub async fn tile_body(
    state: &Arc<Core>,
    tile: &TileRequest,
    meta: &Meta,
    content_length: Option<u64>,
    body: Body,
    encoding: Encoding,
) -> Result<Bytes, UpstreamFailure> {
    let identity = match body {
        Body::Full(b) => b,
        Body::Flight(reader) => {
            let want = content_length.unwrap_or(0);
            let mut buf = BytesMut::with_capacity(want.min(state.settings.max_entry_size as u64) as usize);
            let mut chunks = std::pin::pin!(reader.into_body());
            while let Some(c) = chunks.next().await {
                let c = c.map_err(|_| UpstreamFailure::Body)?;
                if (buf.len() + c.len()) as u64 > want {
                    return Err(UpstreamFailure::Body);
                }
                buf.extend_from_slice(&c);
            }
            if buf.len() as u64 != want {
                return Err(UpstreamFailure::Body);
            }
            buf.freeze()
        }
    };
    let base = state.upstream.cache_key(tile);
    let key = base.variant(encoding.as_str(), meta.version_ms);
    let valid = |e: &Entry| {
        e.meta.version_ms == meta.version_ms
            && e.meta.content_encoding.as_ref().is_some_and(|c| c.as_bytes() == encoding.as_str().as_bytes())
            && !state.purges.is_purged(&tile.index, tile.z, tile.x, tile.y, base.as_str(), e.meta.stored_at_ms)
    };
    let metrics = &state.metrics;
    if let Some((variant, _)) = state.cache.get_valid(&key, valid).await {
        metrics.compressed.with_label_values(&[encoding.as_str(), "stored"]).inc();
        metrics.count_compressed_bytes(encoding.as_str(), identity.len(), variant.body.len());
        return Ok(variant.body);
    }
    let encoded = encode_off_loop(encoding, identity.clone()).await;
    metrics.compressed.with_label_values(&[encoding.as_str(), "compressed"]).inc();
    metrics.count_compressed_bytes(encoding.as_str(), identity.len(), encoded.len());
    // Kept as long as its identity entry would be, with the same times (purges, expiry).
    if let Some(keep) = state.settings.retention(meta, tile.api.is_traffic()) {
        let expires = meta.stored_at_ms.saturating_add(keep.as_millis() as u64);
        let entry =
            Entry { meta: Meta { content_encoding: Some(encoding.header()), ..meta.clone() }, body: encoded.clone() };
        let state = state.clone();
        actix_web::rt::spawn(async move { state.cache.insert(&key, entry, expires).await });
    }
    Ok(encoded)
}
