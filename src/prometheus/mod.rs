//! Asking Prometheus: the bounded client and the one analysis loop for all policies.

pub mod client;
pub mod engine;
