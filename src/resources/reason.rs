//! Every reason a RolloutPolicy's transition can have: `status.history[].reason`, the phase's
//! Event, `spec.notifications[].events` filters and `canaryd validate` all come from this one list
//! (the reasons table in docs/policy.md is checked against it). The wire form is the variant's
//! name, as it always was.

use serde::{Deserialize, Serialize};

macro_rules! reasons {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Why a policy's status changed.
        #[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Reason {
            $($(#[$doc])* $name,)*
        }

        impl Reason {
            /// Every reason, in declaration order.
            pub const ALL: &'static [Reason] = &[$(Reason::$name,)*];

            /// The name on the wire (status, Events, notification filters).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$name => stringify!($name),)*
                }
            }
        }
    };
}

reasons! {
    // A rollout moving.
    RolloutStarted,
    CanaryChanged,
    WeightChanged,
    WaitingForCanary,
    WaitingForAnalysis,
    WaitingForWebhook,
    WaitingForApproval,
    /// The schedule holds the weight: no window is open.
    OutsideWindow,
    /// The schedule holds the weight: a freeze is in force.
    Frozen,
    StableNotReady,
    Pausing,
    Paused,
    Promoted,
    StableChanged,
    CanaryRemoved,
    NoCanary,
    // A rollout failing.
    AnalysisFailed,
    ProviderErrors,
    Inconclusive,
    CanaryUnavailable,
    ProgressDeadlineExceeded,
    CapacityUnavailable,
    WebhookFailed,
    WebhookRollback,
    Aborted,
    // A policy that cannot run (phase Invalid, or a hold): spec, preflight and tenancy problems.
    InvalidSpec,
    CanaryDeploymentNotFound,
    ServiceNotFound,
    ServiceSelectsNoPods,
    DeploymentNotFound,
    DestinationRuleNotFound,
    DestinationRuleInWrongNamespace,
    DestinationRuleHostMismatch,
    SubsetNotFound,
    SubsetSelectsNoPods,
    VirtualServiceNotFound,
    HostResolvesElsewhere,
    RouteNotFound,
    NoManagedRoute,
    RouteNotToService,
    StableDestinationMissing,
    ForeignDestination,
    HpaNotFound,
    AmbiguousHpa,
    ProviderNotAllowed,
    TargetNotAllowed,
    WebhookTokenNotAllowed,
}

impl Reason {
    /// The reason named `name` (exactly as on the wire).
    pub fn from_name(name: &str) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| r.as_str() == name)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for Reason {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<Reason> for String {
    fn eq(&self, other: &Reason) -> bool {
        self == other.as_str()
    }
}

#[cfg(test)]
#[path = "reason_tests.rs"]
mod tests;
