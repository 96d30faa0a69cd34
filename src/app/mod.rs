//! The top layer: wiring. The server built and run ([`server`]) and its configuration reloaded
//! ([`reload`]), logging ([`telemetry`]), the
//! container probe ([`healthcheck`]), the `seed` command ([`seed`]), and the commands that call
//! a running proxy's admin API ([`stats`], [`purge`], through [`admin_client`]).

pub mod admin_client;
pub mod cli;
pub mod healthcheck;
pub mod purge;
pub mod reload;
pub mod seed;
pub mod server;
pub mod stats;
pub mod telemetry;
