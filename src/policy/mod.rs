//! RolloutPolicy checks the schema cannot express (pure): the same rules serve the daemon (phase
//! `Invalid`) and `canaryd validate` in GitOps CI.

pub mod validate;
pub mod webhooks;
