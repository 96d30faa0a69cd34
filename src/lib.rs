//! tile-proxy: a caching proxy for HERE map tiles.
//!
//! The request path, module by module (see `docs/architecture.md`):
//! [`routes`] parses and validates -> [`key`] names the tile -> [`cache`] looks it up ->
//! [`freshness`] decides -> [`proxy`] answers from the cache or joins the one [`flight`] for the
//! key, whose fetch [`upstream`] performs with retries -> the body streams to every waiting client
//! and is stored after a clean end. [`metrics`], [`telemetry`] and [`admin`] observe; [`error`]
//! maps failures to JSON; [`config`] loads settings; [`server`] wires it all.

pub mod admin;
pub mod breaker;
pub mod cache;
pub mod config;
pub mod error;
pub mod flight;
pub mod freshness;
pub mod key;
pub mod metrics;
pub mod proxy;
pub mod routes;
pub mod server;
pub mod telemetry;
pub mod upstream;
