//! The top layer: wiring. The server built and run ([`server`]), logging ([`telemetry`]), the
//! container probe ([`healthcheck`]) and the `seed` command ([`seed`]).

pub mod cli;
pub mod healthcheck;
pub mod seed;
pub mod server;
pub mod stats;
pub mod telemetry;
