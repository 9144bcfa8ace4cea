//! What the API adapters (mesh weights, HPA bounds and replicas) share: a leaf module, so that
//! neither adapter depends on the other.

/// The field manager of every write canaryd makes, so `managedFields` show who set a value.
pub const FIELD_MANAGER: &str = "canaryd";

/// What one write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    Unchanged,
    Written,
}
