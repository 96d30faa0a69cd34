//! The operational and admin endpoints: health ([`health`]), purge ([`purge`]), per-index
//! statistics ([`stats`]) and seed jobs ([`seed`]).

pub mod auth;
pub mod health;
pub mod purge;
pub mod seed;
pub mod stats;
