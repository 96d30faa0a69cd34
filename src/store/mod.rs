//! Where tiles are kept: the tiers behind one lookup ([`cache`]: memory and disk through foyer),
//! the in-process flights that make one fetch per key ([`flight`]), and the optional Redis tier
//! shared by the fleet ([`redis`]: entries, the fetch lease, purge rules over pub/sub), and the
//! bill's counts ([`bill`]: Redis, else a file in the cache folder).

pub mod bill;
pub mod cache;
pub mod flight;
pub mod purge_file;
pub mod redis;
