//! Webhook calls: the runner asks the hooks the planner wants asked, off the reconcile path.

pub mod runner;
