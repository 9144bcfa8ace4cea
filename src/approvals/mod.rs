//! Approvals: people steer a rollout through RolloutCommands. The approval API (bots, `curl`) and
//! Slack's interactivity endpoint create them; admission decides whether one may act.

pub mod admission;
pub mod api;
pub mod button;
pub mod slack;
