//! Slack: the interactivity endpoint (clicks on canaryd buttons).

pub mod interactivity;
