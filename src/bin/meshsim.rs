//! meshsim: a stand-in for Istio's Envoy data plane in tests and the demo.
//!
//! It follows one http route of one VirtualService, generates synthetic traffic split
//! across the route's subsets by its weights, and exports the destination-reporter
//! telemetry Istio would (`istio_requests_total`, `istio_request_duration_milliseconds`).
//! An admin API on the same listener changes error ratios, latencies and load at run time.

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use clap::Parser;
use futures::StreamExt as _;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::watch_object;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::{info, warn};

const CLUSTER_DOMAIN: &str = "cluster.local";

/// Istio's default buckets for `istio_request_duration_milliseconds`.
const ISTIO_DURATION_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0, 300000.0,
    600000.0, 1800000.0, 3600000.0,
];

/// Standard normal 0.99 quantile, to fit a log-normal to a (p50, p99) pair.
const Z_P99: f64 = 2.326_347_874_040_840_8;

/// Slack for float error when flooring accumulators, so 17.999999999 counts as 18.
const EPS: f64 = 1e-9;

const TICK: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------------------------------------
// CLI
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Parser)]
#[command(
    name = "meshsim",
    about = "Simulated Istio data plane: follows a VirtualService's weights and exports Istio telemetry"
)]
struct Cli {
    /// Namespace of the VirtualService to follow.
    #[arg(long)]
    namespace: String,

    /// Name of the VirtualService to follow (networking.istio.io/v1).
    #[arg(long)]
    virtual_service: String,

    /// FQDN of the Service whose route destinations are followed, e.g. app.ns.svc.cluster.local.
    #[arg(long)]
    service_host: String,

    /// Name of the http route to follow; default: the first route without `match`
    /// that has a destination for the service host.
    #[arg(long)]
    route: Option<String>,

    /// Maps a DestinationRule subset to a workload (Deployment) and version:
    /// SUBSET=WORKLOAD[:VERSION], version defaulting to the subset name. Repeatable.
    /// Unmapped subsets report workload SERVICE-SUBSET.
    #[arg(long = "subset", value_name = "SUBSET=WORKLOAD[:VERSION]", value_parser = parse_subset_mapping)]
    subsets: Vec<SubsetMapping>,

    /// Total synthetic requests per second across all subsets.
    #[arg(long, default_value_t = 200.0)]
    rps: f64,

    /// Address for /metrics and the admin API; port 0 picks a free one (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,

    /// `source_workload` label of the synthetic client.
    #[arg(long, default_value = "loadgen")]
    source_workload: String,

    /// `source_workload_namespace` label; default: the VirtualService namespace.
    #[arg(long)]
    source_namespace: Option<String>,

    /// Initial success ratio of every subset (0..=1).
    #[arg(long, default_value_t = 1.0)]
    success_ratio: f64,

    /// Initial median latency of every subset, in milliseconds.
    #[arg(long, default_value_t = 10.0)]
    latency_p50_ms: f64,

    /// Initial 99th-percentile latency of every subset, in milliseconds.
    #[arg(long, default_value_t = 50.0)]
    latency_p99_ms: f64,

    /// Seed of the latency PRNG, for reproducible runs.
    #[arg(long, default_value_t = 0x6d65_7368_7369_6d)]
    seed: u64,

    /// Also export steady telemetry of this many other services (workloads `bg-I` in namespace
    /// `mesh-bg`, 10 requests per second each), standing in for the rest of a large mesh.
    #[arg(long, default_value_t = 0)]
    background_services: u32,
}

#[derive(Debug, Clone, PartialEq)]
struct SubsetMapping {
    subset: String,
    workload: String,
    version: String,
}

fn parse_subset_mapping(s: &str) -> Result<SubsetMapping, String> {
    let (subset, rest) = s
        .split_once('=')
        .ok_or_else(|| format!("expected SUBSET=WORKLOAD[:VERSION], got {s:?}"))?;
    let (workload, version) = match rest.split_once(':') {
        Some((w, v)) => (w, v),
        None => (rest, subset),
    };
    if subset.is_empty() || workload.is_empty() || version.is_empty() {
        return Err(format!("empty subset, workload or version in {s:?}"));
    }
    Ok(SubsetMapping {
        subset: subset.to_owned(),
        workload: workload.to_owned(),
        version: version.to_owned(),
    })
}

// ---------------------------------------------------------------------------------------------
// Pure core: host resolution, route selection, traffic split, error accounting, latency
// ---------------------------------------------------------------------------------------------

/// Resolves a VirtualService destination host to an FQDN: `name` → `name.<vs-ns>.svc.cluster.local`,
/// `name.ns` and `name.ns.svc` are completed, anything longer is taken as already qualified.
fn resolve_host(host: &str, vs_namespace: &str) -> String {
    let host = host.trim().trim_end_matches('.').to_ascii_lowercase();
    let labels: Vec<&str> = host.split('.').collect();
    match labels.as_slice() {
        [name] => format!("{name}.{vs_namespace}.svc.{CLUSTER_DOMAIN}"),
        [name, ns] => format!("{name}.{ns}.svc.{CLUSTER_DOMAIN}"),
        [name, ns, "svc"] => format!("{name}.{ns}.svc.{CLUSTER_DOMAIN}"),
        _ => host,
    }
}

/// The followed route: its name (if any) and merged weight per subset, in route order.
#[derive(Debug, Clone, PartialEq)]
struct FollowedRoute {
    name: Option<String>,
    weights: Vec<(String, u32)>,
}

/// Picks the http route to follow from a VirtualService (as JSON with a `spec`) and extracts
/// the weights of the destinations that resolve to `service_fqdn`. `Err` explains why none.
fn select_route(
    vs: &Value,
    vs_namespace: &str,
    service_fqdn: &str,
    route_name: Option<&str>,
) -> Result<FollowedRoute, String> {
    let routes = vs
        .pointer("/spec/http")
        .and_then(Value::as_array)
        .ok_or("VirtualService has no spec.http routes")?;
    let ours = |d: &Value| {
        d.pointer("/destination/host")
            .and_then(Value::as_str)
            .is_some_and(|h| resolve_host(h, vs_namespace) == service_fqdn)
    };
    let has_ours = |r: &Value| {
        r.get("route")
            .and_then(Value::as_array)
            .is_some_and(|ds| ds.iter().any(ours))
    };
    let route = match route_name {
        Some(want) => {
            let r = routes
                .iter()
                .find(|r| r.get("name").and_then(Value::as_str) == Some(want))
                .ok_or_else(|| format!("no http route named {want:?}"))?;
            if !has_ours(r) {
                return Err(format!("http route {want:?} has no destination for {service_fqdn}"));
            }
            r
        }
        None => routes
            .iter()
            .find(|r| {
                let unmatched = r
                    .get("match")
                    .is_none_or(|m| m.is_null() || m.as_array().is_some_and(Vec::is_empty));
                unmatched && has_ours(r)
            })
            .ok_or_else(|| format!("no http route without match has a destination for {service_fqdn}"))?,
    };
    let dests = route
        .get("route")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    // Istio: a lone destination may omit weight (100%); among several, a missing weight is 0.
    let lone = dests.len() == 1;
    let mut weights: Vec<(String, u32)> = Vec::new();
    for d in dests.iter().filter(|d| ours(d)) {
        let subset = d
            .pointer("/destination/subset")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let weight = match d.get("weight").and_then(Value::as_i64) {
            Some(w) => u32::try_from(w.max(0)).unwrap_or(u32::MAX),
            None if lone => 100,
            None => 0,
        };
        match weights.iter_mut().find(|(s, _)| *s == subset) {
            Some((_, w)) => *w = w.saturating_add(weight),
            None => weights.push((subset, weight)),
        }
    }
    Ok(FollowedRoute {
        name: route.get("name").and_then(Value::as_str).map(str::to_owned),
        weights,
    })
}

/// Splits `n` (possibly fractional) requests across `weights`, carrying each subset's
/// fractional remainder in `acc`, so over time counts follow the weights exactly
/// (cumulative error below one request per subset) with no randomness.
fn split(weights: &[u32], acc: &mut [f64], n: f64) -> Vec<u64> {
    let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
    if total <= 0.0 || n <= 0.0 {
        return vec![0; weights.len()];
    }
    weights
        .iter()
        .zip(acc.iter_mut())
        .map(|(&w, a)| {
            *a += n * f64::from(w) / total;
            let whole = (*a + EPS).floor().max(0.0);
            *a -= whole;
            whole as u64
        })
        .collect()
}

/// How many of `count` new requests fail, given `acc` (start it at 0.5): after N requests
/// in total exactly round(N × (1 − success_ratio)) have failed.
fn take_errors(acc: &mut f64, count: u64, success_ratio: f64) -> u64 {
    *acc += count as f64 * (1.0 - success_ratio.clamp(0.0, 1.0));
    let whole = (*acc + EPS).floor().clamp(0.0, count as f64);
    *acc -= whole;
    whole as u64
}

/// splitmix64: tiny, fast, good enough for latency jitter.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1]: never 0, so `ln` stays finite.
    fn next_f64(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal via Box–Muller.
    fn next_normal(&mut self) -> f64 {
        let (u1, u2) = (self.next_f64(), self.next_f64());
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// Log-normal latency fitted to a median and a 99th percentile.
#[derive(Debug, Clone, Copy, PartialEq)]
struct LogNormal {
    mu: f64,
    sigma: f64,
}

impl LogNormal {
    fn from_quantiles(p50: f64, p99: f64) -> Self {
        let mu = p50.ln();
        Self {
            mu,
            sigma: ((p99.ln() - mu) / Z_P99).max(0.0),
        }
    }

    fn sample(&self, rng: &mut SplitMix64) -> f64 {
        (self.mu + self.sigma * rng.next_normal()).exp()
    }
}

// ---------------------------------------------------------------------------------------------
// Per-subset settings and the admin API's request bodies
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
struct Settings {
    success_ratio: f64,
    latency_ms: Latency,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
struct Latency {
    p50: f64,
    p99: f64,
}

impl Settings {
    fn validate(&self) -> Result<(), String> {
        let Settings {
            success_ratio: r,
            latency_ms: Latency { p50, p99 },
        } = *self;
        if !(0.0..=1.0).contains(&r) {
            return Err(format!("successRatio must be within 0..=1, got {r}"));
        }
        if !(p50.is_finite() && p50 > 0.0) {
            return Err(format!("latencyMs.p50 must be > 0, got {p50}"));
        }
        if !(p99.is_finite() && p99 >= p50) {
            return Err(format!("latencyMs.p99 must be >= p50 ({p50}), got {p99}"));
        }
        Ok(())
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SubsetUpdate {
    success_ratio: Option<f64>,
    latency_ms: Option<LatencyUpdate>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LatencyUpdate {
    p50: Option<f64>,
    p99: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RpsUpdate {
    rps: f64,
}

/// Applies a partial update; the result is validated as a whole so p50/p99 stay consistent.
fn apply_update(current: Settings, update: &SubsetUpdate) -> Result<Settings, String> {
    let mut next = current;
    if let Some(r) = update.success_ratio {
        next.success_ratio = r;
    }
    if let Some(l) = &update.latency_ms {
        next.latency_ms.p50 = l.p50.unwrap_or(next.latency_ms.p50);
        next.latency_ms.p99 = l.p99.unwrap_or(next.latency_ms.p99);
    }
    next.validate()?;
    Ok(next)
}

fn validate_rps(rps: f64) -> Result<f64, String> {
    if rps.is_finite() && rps >= 0.0 {
        Ok(rps)
    } else {
        Err(format!("rps must be a finite number >= 0, got {rps}"))
    }
}

// ---------------------------------------------------------------------------------------------
// Telemetry: Istio's destination-reporter metrics
// ---------------------------------------------------------------------------------------------

/// Istio's standard metric labels, in the order Envoy's stats filter emits them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct IstioLabels {
    reporter: String,
    source_workload: String,
    source_canonical_service: String,
    source_canonical_revision: String,
    source_workload_namespace: String,
    source_principal: String,
    source_app: String,
    source_version: String,
    source_cluster: String,
    destination_workload: String,
    destination_workload_namespace: String,
    destination_principal: String,
    destination_app: String,
    destination_version: String,
    destination_service: String,
    destination_service_name: String,
    destination_service_namespace: String,
    destination_canonical_service: String,
    destination_canonical_revision: String,
    destination_cluster: String,
    request_protocol: String,
    response_code: String,
    grpc_response_status: String,
    response_flags: String,
    connection_security_policy: String,
}

type DurationFamily = Family<IstioLabels, Histogram, fn() -> Histogram>;

#[derive(Clone)]
struct Metrics {
    requests: Family<IstioLabels, Counter>,
    duration: DurationFamily,
}

impl Metrics {
    fn register(registry: &mut Registry) -> Self {
        let requests = Family::<IstioLabels, Counter>::default();
        let duration: DurationFamily = Family::new_with_constructor(|| Histogram::new(ISTIO_DURATION_BUCKETS_MS));
        // The client library appends `_total` to counters itself.
        registry.register(
            "istio_requests",
            "Requests handled by the destination workload",
            requests.clone(),
        );
        // Registered without a Unit so the `_milliseconds` suffix is not added twice.
        registry.register(
            "istio_request_duration_milliseconds",
            "Request duration seen by the destination workload, in milliseconds",
            duration.clone(),
        );
        Self { requests, duration }
    }
}

/// The fixed identity of the simulated service and client, from the CLI.
#[derive(Debug, Clone)]
struct Identity {
    vs_namespace: String,
    vs_name: String,
    route_name: Option<String>,
    service_fqdn: String,
    service_name: String,
    service_namespace: String,
    source_workload: String,
    source_namespace: String,
    mappings: Vec<SubsetMapping>,
}

impl Identity {
    /// (destination_workload, destination_version) of a subset.
    fn workload_of(&self, subset: &str) -> (String, String) {
        if let Some(m) = self.mappings.iter().find(|m| m.subset == subset) {
            return (m.workload.clone(), m.version.clone());
        }
        if subset.is_empty() {
            (self.service_name.clone(), "unknown".to_owned())
        } else {
            (format!("{}-{subset}", self.service_name), subset.to_owned())
        }
    }

    fn labels(&self, subset: &str, code: u16) -> IstioLabels {
        let (workload, version) = self.workload_of(subset);
        let spiffe = |ns: &str| format!("spiffe://{CLUSTER_DOMAIN}/ns/{ns}/sa/default");
        IstioLabels {
            reporter: "destination".into(),
            source_workload: self.source_workload.clone(),
            source_canonical_service: self.source_workload.clone(),
            source_canonical_revision: "latest".into(),
            source_workload_namespace: self.source_namespace.clone(),
            source_principal: spiffe(&self.source_namespace),
            source_app: self.source_workload.clone(),
            source_version: "unknown".into(),
            source_cluster: "Kubernetes".into(),
            destination_workload: workload,
            destination_workload_namespace: self.service_namespace.clone(),
            destination_principal: spiffe(&self.service_namespace),
            destination_app: self.service_name.clone(),
            destination_version: version.clone(),
            destination_service: self.service_fqdn.clone(),
            destination_service_name: self.service_name.clone(),
            destination_service_namespace: self.service_namespace.clone(),
            destination_canonical_service: self.service_name.clone(),
            destination_canonical_revision: version,
            destination_cluster: "Kubernetes".into(),
            request_protocol: "http".into(),
            response_code: code.to_string(),
            grpc_response_status: String::new(),
            response_flags: "-".into(),
            connection_security_policy: "mutual_tls".into(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Simulator state
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum RouteStatus {
    /// No answer from the API server yet.
    Pending,
    Following(Option<String>),
    VsMissing,
    NoRoute(String),
}

#[derive(Debug, Clone)]
struct SubsetState {
    settings: Settings,
    traffic_acc: f64,
    error_acc: f64,
    requests: u64,
    errors: u64,
}

impl SubsetState {
    fn new(settings: Settings) -> Self {
        Self {
            settings,
            traffic_acc: 0.0,
            // 0.5 turns the error accumulator's floor into rounding.
            error_acc: 0.5,
            requests: 0,
            errors: 0,
        }
    }
}

struct Sim {
    id: Identity,
    metrics: Metrics,
    rps: f64,
    status: RouteStatus,
    weights: Vec<(String, u32)>,
    defaults: Settings,
    subsets: BTreeMap<String, SubsetState>,
    rng: SplitMix64,
    /// Last failure of the VirtualService watch, cleared by the next good event.
    watch_error: Option<String>,
}

impl Sim {
    fn new(id: Identity, metrics: Metrics, rps: f64, defaults: Settings, seed: u64) -> Self {
        Self {
            id,
            metrics,
            rps,
            status: RouteStatus::Pending,
            weights: Vec::new(),
            defaults,
            subsets: BTreeMap::new(),
            rng: SplitMix64(seed),
            watch_error: None,
        }
    }

    fn subset(&mut self, name: &str) -> &mut SubsetState {
        let defaults = self.defaults;
        self.subsets
            .entry(name.to_owned())
            .or_insert_with(|| SubsetState::new(defaults))
    }

    /// Records the latest view of the VirtualService; logs only on change.
    fn set_route(&mut self, observed: Result<FollowedRoute, RouteStatus>) {
        let (status, weights) = match observed {
            Ok(r) => (RouteStatus::Following(r.name), r.weights),
            Err(s) => (s, Vec::new()),
        };
        if status != self.status {
            match &status {
                RouteStatus::Following(name) => info!(
                    route = name.as_deref().unwrap_or("<unnamed>"),
                    "following VirtualService route"
                ),
                RouteStatus::VsMissing => warn!(
                    "VirtualService {}/{} not found; generating no traffic",
                    self.id.vs_namespace, self.id.vs_name
                ),
                RouteStatus::NoRoute(why) => warn!("{why}; generating no traffic"),
                RouteStatus::Pending => {}
            }
        }
        if weights != self.weights {
            let shown: Vec<String> = weights.iter().map(|(s, w)| format!("{s}={w}")).collect();
            let shown = if shown.is_empty() {
                "(none)".to_owned()
            } else {
                shown.join(",")
            };
            info!(weights = %shown, "route weights changed");
            for (s, _) in &weights {
                self.subset(s);
            }
        }
        self.status = status;
        self.weights = weights;
    }

    /// Generates the requests due for `elapsed` and records them in the metrics.
    fn tick(&mut self, elapsed: Duration) {
        let n = self.rps * elapsed.as_secs_f64();
        let weights: Vec<u32> = self.weights.iter().map(|(_, w)| *w).collect();
        let names: Vec<String> = self.weights.iter().map(|(s, _)| s.clone()).collect();
        let mut accs: Vec<f64> = names.iter().map(|s| self.subset(s).traffic_acc).collect();
        let counts = split(&weights, &mut accs, n);
        for ((name, acc), count) in names.iter().zip(accs).zip(counts) {
            // Entries were created just above while reading the accumulators.
            let Some(st) = self.subsets.get_mut(name) else {
                continue;
            };
            st.traffic_acc = acc;
            if count == 0 {
                continue;
            }
            let errors = take_errors(&mut st.error_acc, count, st.settings.success_ratio);
            st.requests += count;
            st.errors += errors;
            let latency = LogNormal::from_quantiles(st.settings.latency_ms.p50, st.settings.latency_ms.p99);
            for (code, k) in [(200, count - errors), (500, errors)] {
                if k == 0 {
                    continue;
                }
                let labels = self.id.labels(name, code);
                self.metrics.requests.get_or_create(&labels).inc_by(k);
                let hist = self.metrics.duration.get_or_create(&labels);
                for _ in 0..k {
                    hist.observe(latency.sample(&mut self.rng));
                }
            }
        }
    }

    fn state_json(&self) -> Value {
        let weights: BTreeMap<&str, u32> = self.weights.iter().map(|(s, w)| (s.as_str(), *w)).collect();
        let subsets: BTreeMap<&str, Value> = self
            .subsets
            .iter()
            .map(|(name, st)| {
                let (workload, version) = self.id.workload_of(name);
                let v = json!({
                    "destinationWorkload": workload,
                    "destinationVersion": version,
                    "weight": weights.get(name.as_str()).copied().unwrap_or(0),
                    "successRatio": st.settings.success_ratio,
                    "latencyMs": st.settings.latency_ms,
                    "requests": st.requests,
                    "errors": st.errors,
                });
                (name.as_str(), v)
            })
            .collect();
        let (status, route, reason) = match &self.status {
            RouteStatus::Pending => ("pending", None, None),
            RouteStatus::Following(r) => ("following", r.clone(), None),
            RouteStatus::VsMissing => ("virtualServiceMissing", None, None),
            RouteStatus::NoRoute(why) => ("noRoute", None, Some(why.clone())),
        };
        json!({
            "virtualService": {"namespace": self.id.vs_namespace, "name": self.id.vs_name},
            "serviceHost": self.id.service_fqdn,
            "requestedRoute": self.id.route_name,
            "status": status,
            "route": route,
            "reason": reason,
            "watchError": self.watch_error,
            "rps": self.rps,
            "weights": weights,
            "subsets": subsets,
            "totalRequests": self.subsets.values().map(|s| s.requests).sum::<u64>(),
        })
    }
}

type SharedSim = Arc<Mutex<Sim>>;

/// A poisoned lock only means a panic elsewhere; the counters are still usable.
fn lock(sim: &SharedSim) -> MutexGuard<'_, Sim> {
    sim.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------------
// Background tasks: VirtualService watch and traffic ticker
// ---------------------------------------------------------------------------------------------

fn virtual_service_resource() -> ApiResource {
    ApiResource {
        group: "networking.istio.io".into(),
        version: "v1".into(),
        api_version: "networking.istio.io/v1".into(),
        kind: "VirtualService".into(),
        plural: "virtualservices".into(),
    }
}

async fn follow_virtual_service(client: kube::Client, sim: SharedSim) {
    let id = lock(&sim).id.clone();
    let api: Api<DynamicObject> = Api::namespaced_with(client, &id.vs_namespace, &virtual_service_resource());
    let mut events = pin!(watch_object(api, &id.vs_name).default_backoff());
    while let Some(event) = events.next().await {
        let observed = match event {
            Ok(Some(vs)) => select_route(&vs.data, &id.vs_namespace, &id.service_fqdn, id.route_name.as_deref())
                .map_err(RouteStatus::NoRoute),
            Ok(None) => Err(RouteStatus::VsMissing),
            Err(e) => {
                // The backoff paces retries; keep the last weights like Envoy keeps its config.
                let msg = e.to_string();
                let mut sim = lock(&sim);
                if sim.watch_error.as_ref() != Some(&msg) {
                    warn!(error = %msg, "watching VirtualService failed; retrying");
                    sim.watch_error = Some(msg);
                }
                continue;
            }
        };
        let mut sim = lock(&sim);
        sim.watch_error = None;
        sim.set_route(observed);
    }
    warn!("VirtualService watch ended");
}

async fn generate_traffic(sim: SharedSim) {
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Instant::now();
    loop {
        ticker.tick().await;
        let now = Instant::now();
        lock(&sim).tick(now - last);
        last = now;
    }
}

/// Steady traffic of `count` services no rollout names: their series are what a grouped query
/// without a workload filter would read.
async fn background_traffic(metrics: Metrics, count: u32) {
    let ids: Vec<Identity> = (0..count)
        .map(|i| Identity {
            vs_namespace: "mesh-bg".into(),
            vs_name: format!("bg-{i}"),
            route_name: None,
            service_fqdn: format!("bg-{i}.mesh-bg.svc.{CLUSTER_DOMAIN}"),
            service_name: format!("bg-{i}"),
            service_namespace: "mesh-bg".into(),
            source_workload: "loadgen".into(),
            source_namespace: "mesh-bg".into(),
            mappings: Vec::new(),
        })
        .collect();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        ticker.tick().await;
        for id in &ids {
            let labels = id.labels("v1", 200);
            metrics.requests.get_or_create(&labels).inc_by(10);
            let histogram = metrics.duration.get_or_create(&labels);
            for _ in 0..10 {
                histogram.observe(10.0);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP: /metrics and the admin API
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct AppState {
    sim: SharedSim,
    registry: Arc<Registry>,
}

fn bad_request(msg: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, axum::Json(json!({"error": msg.into()}))).into_response()
}

async fn metrics(State(app): State<AppState>) -> Response {
    let mut body = String::new();
    match prometheus_text::encode(&mut body, &app.registry) {
        Ok(()) => ([(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn state(State(app): State<AppState>) -> axum::Json<Value> {
    axum::Json(lock(&app.sim).state_json())
}

// Bodies are parsed by hand: axum's Json rejects unknown fields with 422, the contract is 400.
async fn put_subset(State(app): State<AppState>, Path(subset): Path<String>, body: Bytes) -> Response {
    let update: SubsetUpdate = match serde_json::from_slice(&body) {
        Ok(u) => u,
        Err(e) => return bad_request(format!("invalid body: {e}")),
    };
    let mut sim = lock(&app.sim);
    let st = sim.subset(&subset);
    match apply_update(st.settings, &update) {
        Ok(next) => {
            st.settings = next;
            info!(
                subset,
                success_ratio = next.success_ratio,
                p50_ms = next.latency_ms.p50,
                p99_ms = next.latency_ms.p99,
                "subset settings changed"
            );
            axum::Json(json!({"subset": subset, "successRatio": next.success_ratio,
                "latencyMs": next.latency_ms}))
            .into_response()
        }
        Err(e) => bad_request(e),
    }
}

async fn put_rps(State(app): State<AppState>, body: Bytes) -> Response {
    let update: RpsUpdate = match serde_json::from_slice(&body) {
        Ok(u) => u,
        Err(e) => return bad_request(format!("invalid body: {e}")),
    };
    match validate_rps(update.rps) {
        Ok(rps) => {
            lock(&app.sim).rps = rps;
            info!(rps, "request rate changed");
            axum::Json(json!({"rps": rps})).into_response()
        }
        Err(e) => bad_request(e),
    }
}

fn router(app: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/state", get(state))
        .route("/rps", put(put_rps))
        .route("/subsets/{subset}", put(put_subset))
        .with_state(app)
}

// ---------------------------------------------------------------------------------------------
// Process edge
// ---------------------------------------------------------------------------------------------

/// Resolves when SIGTERM or SIGINT arrives.
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            warn!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = interrupt => info!("SIGINT received, shutting down"),
        () = terminate => info!("SIGTERM received, shutting down"),
    }
}

fn identity(cli: &Cli) -> anyhow::Result<Identity> {
    let fqdn = resolve_host(&cli.service_host, &cli.namespace);
    let mut labels = fqdn.split('.');
    let (Some(name), Some(ns)) = (labels.next(), labels.next()) else {
        bail!(
            "--service-host {:?} is not NAME.NAMESPACE[.svc.{CLUSTER_DOMAIN}]",
            cli.service_host
        );
    };
    if name.is_empty() || ns.is_empty() {
        bail!("--service-host {:?} has an empty name or namespace", cli.service_host);
    }
    Ok(Identity {
        vs_namespace: cli.namespace.clone(),
        vs_name: cli.virtual_service.clone(),
        route_name: cli.route.clone(),
        service_name: name.to_owned(),
        service_namespace: ns.to_owned(),
        service_fqdn: fqdn.clone(),
        source_workload: cli.source_workload.clone(),
        source_namespace: cli.source_namespace.clone().unwrap_or_else(|| cli.namespace.clone()),
        mappings: cli.subsets.clone(),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();

    let id = identity(&cli)?;
    let rps = validate_rps(cli.rps).map_err(anyhow::Error::msg)?;
    let defaults = Settings {
        success_ratio: cli.success_ratio,
        latency_ms: Latency {
            p50: cli.latency_p50_ms,
            p99: cli.latency_p99_ms,
        },
    };
    defaults.validate().map_err(anyhow::Error::msg)?;

    let client = kube::Client::try_default()
        .await
        .context("building a Kubernetes client from the environment (KUBECONFIG)")?;

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    info!(
        virtual_service = %format!("{}/{}", id.vs_namespace, id.vs_name),
        service = %id.service_fqdn, rps, "starting mesh simulator"
    );
    let sim: SharedSim = Arc::new(Mutex::new(Sim::new(id, metrics.clone(), rps, defaults, cli.seed)));

    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("binding {}", cli.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    {
        // Tests parse this line to find the port.
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {addr}").context("writing to stdout")?;
        out.flush().context("flushing stdout")?;
    }

    tokio::spawn(follow_virtual_service(client, sim.clone()));
    tokio::spawn(generate_traffic(sim.clone()));
    if cli.background_services > 0 {
        tokio::spawn(background_traffic(metrics, cli.background_services));
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let mut stop_graceful = stop_rx.clone();
    let mut stop_deadline = stop_rx;
    let app = router(AppState {
        sim,
        registry: Arc::new(registry),
    });
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = stop_graceful.wait_for(|stop| *stop).await;
    });
    tokio::select! {
        served = std::future::IntoFuture::into_future(server) => served.context("serving HTTP")?,
        () = async {
            // Scrapers may hold keep-alive connections open; don't hang on them forever.
            let _ = stop_deadline.wait_for(|stop| *stop).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        } => warn!("connections still open after 5s; exiting anyway"),
    }
    info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_hosts() {
        let cases = [
            ("istio-test", "default", "istio-test.default.svc.cluster.local"),
            ("istio-test", "dev", "istio-test.dev.svc.cluster.local"),
            ("istio-test.dev", "default", "istio-test.dev.svc.cluster.local"),
            ("istio-test.dev.svc", "default", "istio-test.dev.svc.cluster.local"),
            (
                "istio-test.dev.svc.cluster.local",
                "default",
                "istio-test.dev.svc.cluster.local",
            ),
            (
                "Istio-Test.dev.svc.cluster.local.",
                "default",
                "istio-test.dev.svc.cluster.local",
            ),
            ("example.com.au", "default", "example.com.au"),
        ];
        for (host, ns, want) in cases {
            assert_eq!(resolve_host(host, ns), want, "{host} in {ns}");
        }
    }

    fn vs(http: Value) -> Value {
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "istio-test", "namespace": "dev"},
            "spec": {"hosts": ["istio-test"], "http": http}})
    }

    fn dest(host: &str, subset: &str, weight: Option<i64>) -> Value {
        let mut d = json!({"destination": {"host": host, "subset": subset}});
        if let Some(w) = weight {
            d["weight"] = json!(w);
        }
        d
    }

    fn weights(ws: &[(&str, u32)]) -> Vec<(String, u32)> {
        ws.iter().map(|(s, w)| (s.to_string(), *w)).collect()
    }

    const FQDN: &str = "istio-test.dev.svc.cluster.local";

    /// (what, VirtualService, --route, Ok((route name, weights)) or Err for "no route").
    type RouteCase = (&'static str, Value, Option<&'static str>, RouteWant);
    type RouteWant = Result<(Option<&'static str>, Vec<(String, u32)>), ()>;

    /// (weights, rps, tick seconds, ticks, expected cumulative counts).
    type SplitCase = (Vec<u32>, f64, f64, usize, Vec<u64>);

    #[test]
    fn selects_routes() {
        let header_match = json!([{"headers": {"x-canary": {"exact": "1"}}}]);
        let cases: Vec<RouteCase> = vec![
            (
                "90/10 short hosts",
                vs(json!([{"name": "primary", "route": [
                    dest("istio-test", "stable", Some(90)),
                    dest("istio-test", "canary", Some(10))]}])),
                None,
                Ok((Some("primary"), weights(&[("stable", 90), ("canary", 10)]))),
            ),
            (
                "lone destination without weight is 100",
                vs(json!([{"route": [dest("istio-test.dev.svc.cluster.local", "stable", None)]}])),
                None,
                Ok((None, weights(&[("stable", 100)]))),
            ),
            (
                "missing weight among several is 0",
                vs(json!([{"route": [dest("istio-test", "stable", Some(100)),
                    dest("istio-test", "canary", None)]}])),
                None,
                Ok((None, weights(&[("stable", 100), ("canary", 0)]))),
            ),
            (
                "skips matched routes and routes of other hosts",
                vs(json!([
                    {"name": "header", "match": header_match, "route": [dest("istio-test", "canary", None)]},
                    {"name": "other", "route": [dest("other", "v1", None)]},
                    {"name": "primary", "route": [dest("istio-test.dev", "stable", Some(70)),
                        dest("other.dev", "x", Some(0)), dest("istio-test.dev.svc", "canary", Some(30))]}])),
                None,
                Ok((Some("primary"), weights(&[("stable", 70), ("canary", 30)]))),
            ),
            (
                "named route even with match",
                vs(json!([
                    {"name": "header", "match": header_match, "route": [dest("istio-test", "canary", None)]},
                    {"name": "primary", "route": [dest("istio-test", "stable", None)]}])),
                Some("header"),
                Ok((Some("header"), weights(&[("canary", 100)]))),
            ),
            (
                "host in another namespace does not resolve to ours",
                vs(json!([{"route": [dest("istio-test.prod", "stable", None)]}])),
                None,
                Err(()),
            ),
            (
                "named route missing",
                vs(json!([{"name": "primary", "route": [dest("istio-test", "stable", None)]}])),
                Some("nope"),
                Err(()),
            ),
            ("no http section", json!({"spec": {"hosts": ["x"]}}), None, Err(())),
            (
                "duplicate subsets are summed",
                vs(json!([{"route": [dest("istio-test", "stable", Some(40)),
                    dest("istio-test", "stable", Some(40)), dest("istio-test", "canary", Some(20))]}])),
                None,
                Ok((None, weights(&[("stable", 80), ("canary", 20)]))),
            ),
        ];
        for (what, vs, route, want) in cases {
            let got = select_route(&vs, "dev", FQDN, route);
            match want {
                Ok((name, ws)) => assert_eq!(
                    got,
                    Ok(FollowedRoute {
                        name: name.map(str::to_owned),
                        weights: ws
                    }),
                    "{what}"
                ),
                Err(()) => assert!(got.is_err(), "{what}: {got:?}"),
            }
        }
    }

    #[test]
    fn split_is_exact_over_time() {
        let cases: Vec<SplitCase> = vec![
            (vec![90, 10], 200.0, 0.1, 1000, vec![18000, 2000]),
            (vec![90, 10], 200.0, 0.1003, 1000, vec![18054, 2006]),
            (vec![99, 1], 200.0, 0.1, 1000, vec![19800, 200]),
            (vec![50, 50], 7.0, 0.1, 100, vec![35, 35]),
            (vec![1, 1, 1], 10.0, 0.1, 300, vec![100, 100, 100]),
            (vec![100, 0], 200.0, 0.1, 10, vec![200, 0]),
            (vec![0, 0], 200.0, 0.1, 10, vec![0, 0]),
            (vec![33, 67], 3.0, 0.1, 1000, vec![99, 201]),
        ];
        for (ws, rps, dt, ticks, want) in cases {
            let mut acc = vec![0.0; ws.len()];
            let mut total = vec![0u64; ws.len()];
            for t in 0..ticks {
                let got = split(&ws, &mut acc, rps * dt);
                for (tot, g) in total.iter_mut().zip(got) {
                    *tot += g;
                }
                // At every instant each subset is within one request of its exact share.
                let sum: f64 = ws.iter().map(|&w| f64::from(w)).sum();
                for (i, &w) in ws.iter().enumerate() {
                    let exact = if sum > 0.0 {
                        rps * dt * (t + 1) as f64 * f64::from(w) / sum
                    } else {
                        0.0
                    };
                    assert!((exact - total[i] as f64).abs() < 1.0, "{ws:?} tick {t}: {total:?}");
                }
            }
            assert_eq!(total, want, "{ws:?} at {rps} rps");
        }
    }

    #[test]
    fn split_ratio_90_10_is_9_to_1_at_each_second() {
        let mut acc = [0.0; 2];
        let (mut a, mut b) = (0, 0);
        for tick in 1..=100 {
            let c = split(&[90, 10], &mut acc, 20.0);
            a += c[0];
            b += c[1];
            if tick % 10 == 0 {
                assert_eq!(a, 9 * b, "after {tick} ticks");
            }
        }
    }

    #[test]
    fn errors_are_exact() {
        // Success ratios in per mille, so the expected count is exact integer arithmetic.
        let ratios_milli = [1000u64, 0, 800, 900, 950, 990, 500, 333, 999, 1];
        // Irregular batch sizes, as ticks produce.
        let batches = [0u64, 1, 2, 3, 17, 18, 2, 20, 1, 5, 7, 0, 100, 3];
        for rm in ratios_milli {
            let ratio = rm as f64 / 1000.0;
            let mut acc = 0.5;
            let (mut n, mut errs) = (0u64, 0u64);
            for round in 0..50 {
                for &b in &batches {
                    let e = take_errors(&mut acc, b, ratio);
                    assert!(e <= b);
                    n += b;
                    errs += e;
                    // round(n × (1000 − rm) / 1000), halves rounding up.
                    let want = (2 * n * (1000 - rm) + 1000) / 2000;
                    assert_eq!(errs, want, "ratio {ratio} round {round}: {errs} errors after {n}");
                }
            }
        }
    }

    #[test]
    fn errors_0_8_give_one_in_five() {
        let mut acc = 0.5;
        let errs: u64 = (0..100).map(|_| take_errors(&mut acc, 1, 0.8)).sum();
        assert_eq!(errs, 20);
    }

    #[test]
    fn lognormal_matches_quantiles() {
        for (p50, p99) in [(10.0, 50.0), (100.0, 400.0), (5.0, 5.0)] {
            let d = LogNormal::from_quantiles(p50, p99);
            let mut rng = SplitMix64(42);
            let mut xs: Vec<f64> = (0..200_000).map(|_| d.sample(&mut rng)).collect();
            xs.sort_by(f64::total_cmp);
            let q = |p: f64| xs[(p * xs.len() as f64) as usize];
            assert!((q(0.5) / p50 - 1.0).abs() < 0.02, "p50 {} vs {p50}", q(0.5));
            assert!((q(0.99) / p99 - 1.0).abs() < 0.05, "p99 {} vs {p99}", q(0.99));
        }
    }

    #[test]
    fn parses_subset_mappings() {
        let ok = |subset: &str, workload: &str, version: &str| SubsetMapping {
            subset: subset.into(),
            workload: workload.into(),
            version: version.into(),
        };
        assert_eq!(
            parse_subset_mapping("stable=istio-test"),
            Ok(ok("stable", "istio-test", "stable"))
        );
        assert_eq!(
            parse_subset_mapping("canary=istio-test-canary:v2"),
            Ok(ok("canary", "istio-test-canary", "v2"))
        );
        for bad in ["stable", "=w", "s=", "s=w:", ""] {
            assert!(parse_subset_mapping(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn validates_updates() {
        let base = Settings {
            success_ratio: 1.0,
            latency_ms: Latency { p50: 10.0, p99: 50.0 },
        };
        let parse = |s: &str| serde_json::from_str::<SubsetUpdate>(s);
        let cases = [
            (r#"{}"#, Some(base)),
            (
                r#"{"successRatio": 0.8}"#,
                Some(Settings {
                    success_ratio: 0.8,
                    ..base
                }),
            ),
            (
                r#"{"latencyMs": {"p99": 200}}"#,
                Some(Settings {
                    latency_ms: Latency { p50: 10.0, p99: 200.0 },
                    ..base
                }),
            ),
            (
                r#"{"successRatio": 0, "latencyMs": {"p50": 20, "p99": 30}}"#,
                Some(Settings {
                    success_ratio: 0.0,
                    latency_ms: Latency { p50: 20.0, p99: 30.0 },
                }),
            ),
            (r#"{"successRatio": 1.2}"#, None),
            (r#"{"successRatio": -0.1}"#, None),
            (r#"{"latencyMs": {"p99": 5}}"#, None),
            (r#"{"latencyMs": {"p50": 0}}"#, None),
            (r#"{"successratio": 0.5}"#, None),
            (r#"{"latencyMs": {"p90": 5}}"#, None),
            (r#"{"successRatio": "x"}"#, None),
            (r#"not json"#, None),
        ];
        for (body, want) in cases {
            let got = parse(body)
                .map_err(|e| e.to_string())
                .and_then(|u| apply_update(base, &u));
            assert_eq!(got.ok(), want, "{body}");
        }
        assert!(serde_json::from_str::<RpsUpdate>(r#"{"rps": 100}"#).is_ok());
        assert!(serde_json::from_str::<RpsUpdate>(r#"{"rps": 100, "x": 1}"#).is_err());
        assert!(validate_rps(-1.0).is_err());
        assert!(validate_rps(0.0).is_ok());
    }

    fn test_sim(registry: &mut Registry) -> Sim {
        let cli = Cli::parse_from([
            "meshsim",
            "--namespace",
            "dev",
            "--virtual-service",
            "istio-test",
            "--service-host",
            FQDN,
            "--subset",
            "stable=istio-test:v1",
            "--subset",
            "canary=istio-test-canary",
        ]);
        let id = identity(&cli).expect("valid identity");
        let defaults = Settings {
            success_ratio: 1.0,
            latency_ms: Latency { p50: 10.0, p99: 50.0 },
        };
        Sim::new(id, Metrics::register(registry), 200.0, defaults, 7)
    }

    #[test]
    fn ticks_follow_weights_and_export_istio_metrics() {
        let mut registry = Registry::default();
        let mut sim = test_sim(&mut registry);
        sim.tick(Duration::from_secs(1));
        assert_eq!(sim.subsets.len(), 0, "no route, no traffic");
        sim.set_route(Ok(FollowedRoute {
            name: Some("primary".into()),
            weights: weights(&[("stable", 90), ("canary", 10)]),
        }));
        sim.subset("canary").settings.success_ratio = 0.8;
        for _ in 0..100 {
            sim.tick(Duration::from_millis(100));
        }
        assert_eq!(sim.subsets["stable"].requests, 1800);
        assert_eq!(sim.subsets["canary"].requests, 200);
        assert_eq!(sim.subsets["canary"].errors, 40);
        assert_eq!(sim.subsets["stable"].errors, 0);

        let state = sim.state_json();
        assert_eq!(state["weights"]["stable"], 90);
        assert_eq!(state["subsets"]["canary"]["requests"], 200);
        assert_eq!(state["subsets"]["canary"]["destinationWorkload"], "istio-test-canary");
        assert_eq!(state["subsets"]["stable"]["destinationVersion"], "v1");
        assert_eq!(state["status"], "following");

        let mut text = String::new();
        prometheus_text::encode(&mut text, &registry).expect("encodes");
        assert!(text.contains("# TYPE istio_requests_total counter"), "{text}");
        assert!(
            text.contains("# TYPE istio_request_duration_milliseconds histogram"),
            "{text}"
        );
        assert!(!text.contains("_total_total") && !text.contains("milliseconds_milliseconds"));
        let canary_500 = text
            .lines()
            .find(|l| {
                l.starts_with("istio_requests_total{")
                    && l.contains(r#"destination_workload="istio-test-canary""#)
                    && l.contains(r#"response_code="500""#)
            })
            .expect("canary 500 series");
        assert!(canary_500.ends_with(" 40"), "{canary_500}");
        for label in [
            r#"reporter="destination""#,
            r#"source_workload="loadgen""#,
            r#"source_workload_namespace="dev""#,
            r#"destination_workload_namespace="dev""#,
            r#"destination_service="istio-test.dev.svc.cluster.local""#,
            r#"destination_service_name="istio-test""#,
            r#"destination_service_namespace="dev""#,
            r#"destination_version="canary""#,
            r#"destination_canonical_service="istio-test""#,
            r#"destination_canonical_revision="canary""#,
            r#"request_protocol="http""#,
            r#"response_flags="-""#,
            r#"connection_security_policy="mutual_tls""#,
        ] {
            assert!(canary_500.contains(label), "{label} missing in {canary_500}");
        }
        assert!(text.contains(r#"istio_request_duration_milliseconds_bucket{"#));
        assert!(text.contains(r#"le="0.5"}"#) && text.contains(r#"le="3.6e+06"}"#));
        assert!(text.contains("istio_request_duration_milliseconds_sum{"));
        assert!(text.contains("istio_request_duration_milliseconds_count{"));

        // Route disappears: traffic stops, counts stay.
        sim.set_route(Err(RouteStatus::VsMissing));
        sim.tick(Duration::from_secs(1));
        assert_eq!(sim.subsets["stable"].requests, 1800);
        assert_eq!(sim.state_json()["status"], "virtualServiceMissing");
    }
}
