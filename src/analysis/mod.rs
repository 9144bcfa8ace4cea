//! Analysis: Prometheus queries, built-in templates and the judgement of each check.

pub mod check;
pub mod engine;
pub mod judge;
pub mod prometheus;
pub mod templates;
