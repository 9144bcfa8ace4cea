//! Slack: what the daemon's messages carry for the interactivity endpoint to act on.

pub mod button;
