//! tile-proxy: a caching proxy for HERE map tiles.
//!
//! The request path, module by module (see `docs/architecture.md`):
//! [`proxy`] (HTTP) -> [`routes`] parses and validates -> [`service`] keys the tile by its
//! upstream identity ([`key`], [`upstream`]), looks it up in the [`cache`] tiers, lets the
//! index's policy decide ([`freshness`]), and answers from the [`entry`] or leads/joins the one
//! [`flight`] for the key (through the [`flight::FillLock`] seam), whose [`fetch`] asks the
//! upstream with retries, plans what the answer means, streams it to every reader and stores
//! it. [`metrics`], [`telemetry`], [`access_log`] (a line per request), [`health`] and [`admin`]
//! observe; [`error`] maps failures to JSON; [`config`] loads settings; [`clock`] is injected
//! time; [`state`] holds what workers share; [`server`] wires it all. [`shared`] is the optional
//! Redis tier (entries, fleet-wide fetch lease, purge rules for every pod); [`purge`] the ban-list
//! rules, [`purge_api`] the admin API that makes them. [`seed`] warms the cache through the same
//! [`service`]. Paths that are not tiles go to [`site`]: the [`map_page`], [`tilejson`] documents
//! and HERE's [`metadata`]. [`protect`] guards the bill (rate cap, budgets, client limits),
//! [`stats`] reports per index, and [`compress`] sends vector tiles and JSON br or gzip.

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
