//! What a tile request and a stored tile mean, as pure rules: the URL grammar ([`routes`]), the
//! cache key ([`key`]), the stored entry ([`entry`]), freshness ([`freshness`]), purge rules
//! ([`purge`]), the circuit breaker's state machine ([`breaker`]) and conditional requests
//! ([`conditional`]), what the HERE bill counts and costs ([`bill`]). No I/O, no actix.

pub mod bill;
pub mod breaker;
pub mod conditional;
pub mod encoding;
pub mod entry;
pub mod failure;
pub mod freshness;
pub mod geo;
pub mod key;
pub mod plan;
pub mod purge;
pub mod routes;
pub mod scrub;
pub mod tileset;
