//! Gates: what a person (or later a webhook, Slack or a schedule window) says about a rollout.

pub mod api;
pub mod commands;
pub mod slack;
pub mod target;
