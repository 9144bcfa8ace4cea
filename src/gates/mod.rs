//! Gates: what a person (or later a webhook, Slack or a schedule window) says about a rollout.

pub mod commands;
pub mod schedule;
pub mod target;
