//! HorizontalPodAutoscaler replica bounds as the policy's status records them.

/// An HPA without `minReplicas` acts on this minimum.
pub const DEFAULT_MIN_REPLICAS: i32 = 1;

/// The replica bounds of a HorizontalPodAutoscaler, as recorded in status before canaryd changes
/// them and restored exactly afterwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Bounds {
    /// `None`: not set, which the HPA treats as 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_replicas: Option<i32>,
    pub max_replicas: i32,
}

impl Bounds {
    /// The minimum the HPA acts on.
    pub fn effective_min(self) -> i32 {
        self.min_replicas.unwrap_or(DEFAULT_MIN_REPLICAS)
    }

    /// Same behaviour of the HPA: an absent `minReplicas` equals 1.
    pub fn equivalent(self, other: Bounds) -> bool {
        self.effective_min() == other.effective_min() && self.max_replicas == other.max_replicas
    }
}
