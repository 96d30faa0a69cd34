//! The bottom layer: helpers every other layer may use and that use nothing of ours: the
//! injected clock, stable hashing and the one index-name rule.

pub mod clock;
pub mod hashing;
pub mod names;
