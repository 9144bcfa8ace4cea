//! Slack: the buttons canaryd's messages carry, and the interactivity endpoint that acts on clicks.

pub mod button;
pub mod interactivity;
