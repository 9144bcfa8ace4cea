//! Gates: what a person, a webhook, Slack or a schedule window says about a rollout.

pub mod api;
pub mod commands;
pub mod notify;
pub mod runner;
pub mod schedule;
pub mod slack;
pub mod target;
pub mod webhook;
