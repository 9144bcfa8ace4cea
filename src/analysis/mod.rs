//! Analysis (pure): the built-in templates and the judgement of each check. Asking Prometheus is
//! `crate::prometheus`.

pub mod burn;
pub mod check;
pub mod judge;
pub mod mannwhitney;
pub mod templates;
