//! The actix side: the tile handler and everything a client or an operator reaches over HTTP.

pub mod access_log;
pub mod admin;
pub mod bypass;
pub mod client_ip;
pub mod conditional;
pub mod error;
pub mod http_metrics;
pub mod map_page;
pub mod metadata;
pub mod negotiate;
pub mod site;
pub mod state;
pub mod tile;
pub mod tilejson;
