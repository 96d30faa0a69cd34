//! What the service reports about itself: Prometheus families ([`metrics`]) and what it knows of
//! its own health ([`health`]).

pub mod health;
pub mod metrics;
