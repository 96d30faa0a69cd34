//! tile-proxy: a caching proxy for HERE map tiles.
//!
//! One crate in layers, a folder each, bottom first (`docs/architecture.md` has the table and a
//! request's path through them; `tests/layering.rs` checks that every import goes down):
//!
//! - [`base`]: the injected clock, stable hashing, the index-name rule, CA files;
//! - [`config`]: settings as data (file, environment, flags; validation);
//! - [`domain`]: pure rules: the URL grammar, the cache key, entries, freshness, purge rules,
//!   Web-Mercator maths, the breaker, what an upstream answer means, scrubbing, encodings;
//! - [`observe`]: metrics and health;
//! - [`upstream`]: the HERE client with retries;
//! - [`store`]: the cache tiers (foyer memory+disk, Redis), flights and the fleet lease;
//! - [`protect`]: the bill's guards (rate cap, budgets, client limits);
//! - [`service`]: serving a tile without HTTP (`Core`, `TileService`, the fetch, encoded bodies,
//!   metadata, statistics);
//! - [`seed`]: warming the cache;
//! - [`http`]: actix handlers, `AppState`, the one error mapping, the admin API;
//! - [`app`]: wiring (server, CLI, telemetry, probes, the `seed` and `stats` commands).

pub mod app;
pub mod base;
pub mod config;
pub mod domain;
pub mod http;
pub mod observe;
pub mod protect;
pub mod seed;
pub mod service;
pub mod store;
pub mod upstream;
