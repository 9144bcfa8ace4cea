//! The daemon's own Prometheus metrics. Labels are bounded: policy identity, phase, error category.

use std::sync::Mutex;
use std::time::Duration;

use kube::ResourceExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::resources::policy::{Phase, RolloutPolicy, RolloutPolicyStatus};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    pub result: &'static str,
    pub category: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CategoryLabels {
    pub category: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    pub verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

/// A NotificationTarget (cluster-scoped, named by the platform team) and a failure kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetKindLabels {
    pub target: String,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    pub namespace: String,
    pub policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub namespace: String,
    pub policy: String,
    pub phase: &'static str,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    pub reconciles: Family<ReconcileLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub weight_changes: Counter,
    pub phase: Family<PhaseLabels, Gauge>,
    pub canary_weight: Family<PolicyLabels, Gauge>,
    pub rollbacks: Counter,
    pub promotions: Counter,
    /// Analysis: distinct Prometheus queries asked, ticks, results by verdict, errors by category.
    pub prometheus_queries: Counter,
    pub prometheus_errors: Family<CategoryLabels, Counter>,
    pub analysis_ticks: Counter,
    pub checks: Family<VerdictLabels, Counter>,
    pub analysis_duration: Histogram,
    /// Objects the caches skip because they cannot be decoded, by kind (plural).
    pub objects_rejected: Family<KindLabels, Counter>,
    /// Failed notification deliveries, by target and kind (permanent, transient, rate_limited).
    pub notification_failures: Family<TargetKindLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("canaryd");
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        let reconcile_duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        let weight_changes = Counter::default();
        let phase = Family::<PhaseLabels, Gauge>::default();
        let canary_weight = Family::<PolicyLabels, Gauge>::default();
        let rollbacks = Counter::default();
        let promotions = Counter::default();
        let prometheus_queries = Counter::default();
        let prometheus_errors = Family::<CategoryLabels, Counter>::default();
        let analysis_ticks = Counter::default();
        let checks = Family::<VerdictLabels, Counter>::default();
        let analysis_duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        let objects_rejected = Family::<KindLabels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles by result and error category",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time of one reconcile",
            reconcile_duration.clone(),
        );
        registry.register("weight_changes", "VirtualService weight writes", weight_changes.clone());
        registry.register("rollout_phase", "The phase each policy is in (value 1)", phase.clone());
        registry.register(
            "canary_weight_percent",
            "Traffic share of the canary",
            canary_weight.clone(),
        );
        registry.register("rollbacks", "Rollouts rolled back", rollbacks.clone());
        registry.register("promotions", "Canaries promoted to stable", promotions.clone());
        registry.register(
            "prometheus_queries",
            "Distinct Prometheus queries asked",
            prometheus_queries.clone(),
        );
        registry.register(
            "prometheus_errors",
            "Prometheus queries that failed, by category",
            prometheus_errors.clone(),
        );
        registry.register(
            "analysis_ticks",
            "Analysis checks run (one per Prometheus per tick)",
            analysis_ticks.clone(),
        );
        registry.register("analysis_checks", "Metric check results by verdict", checks.clone());
        registry.register(
            "analysis_duration_seconds",
            "Time of one analysis tick",
            analysis_duration.clone(),
        );
        registry.register(
            "objects_rejected",
            "Objects skipped by the caches because they cannot be decoded, by kind",
            objects_rejected.clone(),
        );
        let notification_failures = registered_notification_failures(&mut registry);
        Self {
            registry: Mutex::new(registry),
            reconciles,
            reconcile_duration,
            weight_changes,
            phase,
            canary_weight,
            rollbacks,
            promotions,
            prometheus_queries,
            prometheus_errors,
            analysis_ticks,
            checks,
            analysis_duration,
            objects_rejected,
            notification_failures,
        }
    }
}

/// `canaryd_notification_failures_total{target,kind}`.
fn registered_notification_failures(registry: &mut Registry) -> Family<TargetKindLabels, Counter> {
    let family = Family::<TargetKindLabels, Counter>::default();
    let help = "Notification deliveries that failed, by target and kind";
    registry.register("notification_failures", help, family.clone());
    family
}

impl Metrics {
    pub fn observe_reconcile(&self, took: Duration, error_category: Option<&'static str>) {
        self.reconcile_duration.observe(took.as_secs_f64());
        let labels = match error_category {
            None => ReconcileLabels {
                result: "ok",
                category: "",
            },
            Some(category) => ReconcileLabels {
                result: "error",
                category,
            },
        };
        self.reconciles.get_or_create(&labels).inc();
    }

    /// One series per policy for its phase (the phase it is in, value 1) and one for its weight:
    /// a series per phase and policy would cost more memory than the policy itself at scale.
    pub fn record_policy(&self, policy: &RolloutPolicy, status: &RolloutPolicyStatus) {
        let namespace = policy.namespace().unwrap_or_default();
        let name = policy.name_any();
        self.forget_phases(&namespace, &name, Some(status.phase));
        let labels = PhaseLabels {
            namespace: namespace.clone(),
            policy: name.clone(),
            phase: status.phase.as_str(),
        };
        self.phase.get_or_create(&labels).set(1);
        self.canary_weight
            .get_or_create(&PolicyLabels {
                namespace,
                policy: name,
            })
            .set(i64::from(status.canary_weight));
    }

    /// A deleted policy has no series.
    pub fn forget_policy(&self, namespace: &str, name: &str) {
        self.forget_phases(namespace, name, None);
        self.canary_weight.remove(&PolicyLabels {
            namespace: namespace.to_string(),
            policy: name.to_string(),
        });
    }

    fn forget_phases(&self, namespace: &str, name: &str, except: Option<Phase>) {
        for phase in Phase::ALL.into_iter().filter(|p| Some(*p) != except) {
            self.phase.remove(&PhaseLabels {
                namespace: namespace.to_string(),
                policy: name.to_string(),
                phase: phase.as_str(),
            });
        }
    }

    pub fn rejected(&self, kind: &'static str) {
        self.objects_rejected.get_or_create(&KindLabels { kind }).inc();
    }

    /// OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Ok(registry) = self.registry.lock() {
            // Writing into a String cannot fail.
            let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        }
        out
    }
}

#[cfg(test)]
mod policy_series_tests {
    use super::*;
    use crate::resources::policy::RolloutPolicyStatus;

    fn policy() -> RolloutPolicy {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "canaryd.io/v1alpha1", "kind": "RolloutPolicy",
            "metadata": {"name": "p", "namespace": "dev"},
            "spec": {"service": "app", "virtualServices": [{"name": "app"}], "destinationRule": "app",
                     "stable": {"subset": "v1", "deployment": "app-v1"}, "steps": [{"weight": 100}]},
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn phase_lines(m: &Metrics) -> Vec<String> {
        m.encode()
            .lines()
            .filter(|l| l.starts_with("canaryd_rollout_phase{"))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn a_policy_has_one_phase_series_and_none_once_deleted() {
        let m = Metrics::default();
        let p = policy();
        let status = |phase| RolloutPolicyStatus {
            phase,
            ..RolloutPolicyStatus::default()
        };
        m.record_policy(&p, &status(Phase::Progressing));
        m.record_policy(&p, &status(Phase::RolledBack));
        let lines = phase_lines(&m);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].contains(r#"phase="RolledBack""#) && lines[0].ends_with(" 1"),
            "{lines:?}"
        );
        m.forget_policy("dev", "p");
        assert!(phase_lines(&m).is_empty());
        assert!(!m.encode().contains("canaryd_canary_weight_percent{"));
    }
}
