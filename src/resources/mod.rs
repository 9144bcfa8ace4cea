//! The bottom layer: every custom resource canaryd defines or reads (RolloutPolicy, MetricProvider,
//! RolloutCommand, NotificationTarget) and the spec and status types they embed, one file each.
//! Plain data with serde and schemars: nothing here imports the rest of the daemon or knows a
//! client (tests/layers.rs keeps it so).

pub mod bounds;
pub mod command;
pub mod crd;
pub mod policy;
pub mod provider;
pub mod reason;
pub mod schedule;
pub mod schema;
pub mod selector;
pub mod status;
pub mod target;
pub mod webhook;

/// One problem, with the path of the field that has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}
