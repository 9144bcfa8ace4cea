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

use crate::policy::types::{Phase, RolloutPolicy, RolloutPolicyStatus};

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
        registry.register("rollout_phase", "1 for the phase each policy is in", phase.clone());
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
        }
    }
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

    pub fn record_policy(&self, policy: &RolloutPolicy, status: &RolloutPolicyStatus) {
        let namespace = policy.namespace().unwrap_or_default();
        let name = policy.name_any();
        for phase in Phase::ALL {
            let labels = PhaseLabels {
                namespace: namespace.clone(),
                policy: name.clone(),
                phase: phase.as_str(),
            };
            self.phase.get_or_create(&labels).set(i64::from(phase == status.phase));
        }
        self.canary_weight
            .get_or_create(&PolicyLabels {
                namespace,
                policy: name,
            })
            .set(i64::from(status.canary_weight));
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
