//! The daemon's HTTP clients' common part: how a client is built and the capped body reader.

pub mod body;
pub mod client;
