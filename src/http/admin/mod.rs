//! The operational and admin endpoints: health ([`health`]), purge ([`purge`]), per-index
//! statistics ([`stats`]), seed jobs ([`seed`]) and the cache map ([`cache_map`]).

pub mod auth;
pub mod cache_map;
pub mod health;
pub mod purge;
pub mod seed;
pub mod stats;
