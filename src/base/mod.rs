//! The bottom layer: helpers every other layer may use and that use nothing of ours: the
//! injected clock, stable hashing, the one index-name rule and the operator's extra CA
//! certificates.

pub mod clock;
pub mod hashing;
pub mod names;
pub mod tls;
