//! Seeding (warming the cache): every tile of a bbox over a zoom range, fetched once so clients
//! find it cached. `tile-proxy seed` ([`crate::app::seed`]) runs it through a running proxy or
//! straight into a config's cache, resumably; `POST /admin/seed` ([`crate::http::admin::seed`],
//! its jobs kept in [`jobs`], or with Redis in [`fleet`]: the fleet's, taken over when their pod
//! dies; the request body checked in [`spec`]) runs it inside a pod.
//!
//! Shared by both: [`tiles`] (the job checked, its tiles enumerated in a fixed order, their
//! URLs), [`run`] (the run loop: bounded concurrency, counters, retry and stop rules),
//! [`fetchers`] (through HTTP or through the [`crate::service::tiles::TileService`]) and
//! [`state_file`] (which tiles are done, saved atomically).

pub mod fetchers;
pub mod fleet;
pub mod jobs;
pub mod run;
pub mod spec;
pub mod state_file;
pub mod tiles;
