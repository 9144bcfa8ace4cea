//! Gates: what a person, a webhook (or later Slack or a schedule window) says about a rollout.

pub mod commands;
pub mod runner;
pub mod target;
pub mod webhook;
