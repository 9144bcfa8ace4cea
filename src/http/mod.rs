//! The daemon's HTTP clients' common part: the capped body reader.

pub mod body;
