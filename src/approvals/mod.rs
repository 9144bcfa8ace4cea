//! Approvals: people steer a rollout through RolloutCommands. The approval API (bots, `curl`) and
//! Slack's interactivity endpoint create them; admission decides whether one may act.

pub mod admission;
pub mod api;
pub mod auth;
pub mod button;
mod click;
mod create;
pub mod keys;
pub mod listener;
pub mod slack;
