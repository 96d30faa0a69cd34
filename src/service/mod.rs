//! Serving a tile without HTTP: look it up, let the index's policy decide, lead or join the one
//! fetch for its key ([`tiles`]), and the fetch itself ([`fetch`]); statistics ([`stats`]) and
//! the month's HERE bill ([`bill`]).

pub mod bill;
pub mod body;
pub mod core;
pub mod fetch;
pub mod metadata;
pub mod stats;
pub mod tiles;
