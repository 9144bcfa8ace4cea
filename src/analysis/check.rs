//! One finished analysis check: plain data shared by the engine (which makes it) and the pure
//! planner (which judges the rollout on it), so the planner never imports the async engine.

use jiff::Timestamp;

use crate::resources::policy::MetricResult;

/// The results of one check of all of a policy's metrics.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    /// When the answers were judged.
    pub at: Timestamp,
    /// The earliest instant any of its queries looked at (query time minus the widest window): only
    /// a check whose whole window lies after a weight was set speaks for that weight.
    pub window_start: Timestamp,
    pub results: Vec<MetricResult>,
}
