//! What the service reports about itself: Prometheus families ([`metrics`]) and what it knows of
//! its own health ([`health`]), and what it requested and cached where ([`cache_map`]).

pub mod cache_map;
pub mod health;
pub mod metrics;
