//! One analysis loop for all policies. Every tick it gathers the checks that are due, asks each
//! Prometheus once per distinct query (built-in templates once for all rollouts, grouped by workload),
//! judges every metric, stores the result and wakes the policies whose checks are done. Prometheus
//! load grows with the number of distinct (template, window) pairs, not with the number of rollouts.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::channel::mpsc::UnboundedSender;
use futures::future::join_all;
use jiff::Timestamp;

use super::client::{Credentials, Keep, PromClient, PromError};
pub use crate::analysis::check::Check;
use crate::analysis::judge::{self, Sample};
use crate::analysis::templates::{self, Template, Vars};
use crate::metrics::{CategoryLabels, Metrics, VerdictLabels};
use crate::resources::policy::{Analysis, MetricCheck, MetricResult, PrometheusAddress, Verdict};

/// How often the loop looks for due checks; intervals are whole seconds, so this is fine-grained enough.
const TICK: Duration = Duration::from_millis(100);

/// A policy, by namespace and name.
pub type Key = (String, String);

/// What one policy needs checked, built by the controller from spec and status.
#[derive(Clone, Debug)]
pub struct Request {
    pub analysis: Analysis,
    pub vars: Vars,
    /// When the canary first got traffic; nothing is judged before `since + startAfter`.
    pub since: Timestamp,
    /// Where to ask: the policy's MetricProvider or its own plain address.
    pub prometheus: PrometheusAddress,
    pub credentials: Option<Credentials>,
    pub ca_pem: Option<Vec<u8>>,
}

struct Entry {
    request: Request,
    fingerprint: String,
    next_due: Timestamp,
    in_flight: bool,
    latest: Option<Check>,
}

pub struct Engine {
    entries: Mutex<HashMap<Key, Entry>>,
    clients: Mutex<HashMap<String, PromClient>>,
    wake: UnboundedSender<Key>,
    metrics: Arc<Metrics>,
}

/// The query window of a metric: its own, else the interval, and at least 1m so rate() has samples.
pub fn window(analysis: &Analysis, metric: &MetricCheck) -> String {
    templates::format_window(window_duration(analysis, metric))
}

fn window_duration(analysis: &Analysis, metric: &MetricCheck) -> Duration {
    metric
        .window
        .unwrap_or_else(|| analysis.interval.max(Duration::from_secs(60)))
}

/// The earliest instant a check asked at `asked` looks at: its widest window back from then.
/// Prometheus evaluates at or after `asked`, so the true start is never earlier than this.
pub fn window_start(analysis: &Analysis, asked: Timestamp) -> Timestamp {
    let widest = analysis
        .metrics
        .iter()
        .map(|m| window_duration(analysis, m))
        .max()
        .unwrap_or_default();
    jiff::SignedDuration::try_from(widest)
        .ok()
        .and_then(|d| asked.checked_sub(d).ok())
        .unwrap_or(Timestamp::MIN)
}

/// The next due time on the interval's grid: every policy with the same interval is due at the same
/// instant, so their identical queries are asked once.
fn next_on_grid(after: Timestamp, interval: Duration) -> Timestamp {
    let step = i128::try_from(interval.as_nanos().max(1)).unwrap_or(i128::MAX);
    let now = after.as_nanosecond();
    let next = (now / step + 1) * step;
    Timestamp::from_nanosecond(next).unwrap_or(after)
}

fn add(t: Timestamp, d: Duration) -> Timestamp {
    jiff::SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(t)
}

/// One distinct query of a tick: a built-in template's grouped query, shared by every rollout that
/// uses it (by [`Template::query_key`]; its text depends on the workloads due), or a custom one.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Query {
    Grouped(String),
    Custom(String),
}

fn metric_query(analysis: &Analysis, metric: &MetricCheck, vars: &Vars) -> Result<Query, String> {
    let window = window(analysis, metric);
    if let Some(name) = &metric.template {
        let t = Template::parse(name).ok_or_else(|| format!("unknown template {name:?}"))?;
        return Ok(Query::Grouped(t.query_key(&window)));
    }
    let query = metric.query.as_deref().unwrap_or_default();
    let vars = Vars { window, ..vars.clone() };
    templates::render(query, &vars)
        .map(Query::Custom)
        .map_err(|e| e.to_string())
}

/// The PromQL of every distinct query of a tick: each grouped query selects the workloads of all
/// the rollouts due that use it, and no other.
fn tick_queries(due: &[(Key, Request)]) -> BTreeMap<Query, (String, Option<templates::Selection>)> {
    let mut grouped: BTreeMap<String, (Template, String, templates::Selection)> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (_, req) in due {
        for m in &req.analysis.metrics {
            match metric_query(&req.analysis, m, &req.vars) {
                Ok(Query::Grouped(key)) => {
                    let Some(t) = m.template.as_deref().and_then(Template::parse) else {
                        continue;
                    };
                    let entry = grouped
                        .entry(key)
                        .or_insert_with(|| (t, window(&req.analysis, m), Default::default()));
                    let v = &req.vars;
                    entry.2.add(&v.namespace, &[&v.stable.deployment, &v.canary.deployment]);
                }
                Ok(Query::Custom(text)) => {
                    out.insert(Query::Custom(text.clone()), (text, None));
                }
                Err(_) => {}
            }
        }
    }
    for (key, (t, window, selection)) in grouped {
        let text = templates::grouped_query(t, &window, &selection);
        out.insert(Query::Grouped(key), (text, Some(selection)));
    }
    out
}

impl Engine {
    pub fn new(wake: UnboundedSender<Key>, metrics: Arc<Metrics>) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            clients: Mutex::new(HashMap::new()),
            wake,
            metrics,
        }
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<Key, Entry>> {
        // A panic while holding the lock cannot leave an entry half-written: recover the map.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Register what a policy needs checked (None: nothing). A changed request starts afresh.
    pub fn want(&self, key: Key, request: Option<Request>) {
        let mut entries = self.entries();
        let Some(request) = request else {
            entries.remove(&key);
            return;
        };
        let fingerprint = format!(
            "{}|{:?}|{:?}|{}|{}|{:?}",
            serde_json::to_string(&request.analysis).unwrap_or_default(),
            request.prometheus,
            request.vars,
            request.since,
            request
                .credentials
                .as_ref()
                .map(Credentials::fingerprint)
                .unwrap_or_default(),
            request.ca_pem
        );
        if entries.get(&key).is_some_and(|e| e.fingerprint == fingerprint) {
            return;
        }
        let start = add(request.since, request.analysis.start_after);
        let next_due = next_on_grid(start.max(Timestamp::now()), request.analysis.interval);
        entries.insert(
            key,
            Entry {
                request,
                fingerprint,
                next_due,
                in_flight: false,
                latest: None,
            },
        );
    }

    /// The newest check of a policy, if any.
    pub fn latest(&self, key: &Key) -> Option<Check> {
        self.entries().get(key).and_then(|e| e.latest.clone())
    }

    /// Run forever: every tick, start the due checks, one task per Prometheus so that a slow one
    /// never holds up rollouts judged by another.
    pub async fn run(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let now = Timestamp::now();
            let mut by_provider: BTreeMap<String, Vec<(Key, Request)>> = BTreeMap::new();
            for (key, entry) in self.entries().iter_mut() {
                if entry.in_flight || entry.next_due > now {
                    continue;
                }
                entry.in_flight = true;
                let provider = provider_key(&entry.request);
                by_provider
                    .entry(provider)
                    .or_default()
                    .push((key.clone(), entry.request.clone()));
            }
            for (provider, due) in by_provider {
                let engine = self.clone();
                tokio::spawn(async move { engine.check(provider, due, now).await });
            }
        }
    }

    fn client(&self, provider: &str, request: &Request) -> Result<PromClient, PromError> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(provider) {
            return Ok(c.clone());
        }
        let p = &request.prometheus;
        let client = PromClient::new(
            &p.address,
            request.credentials.clone(),
            request.ca_pem.as_deref(),
            p.timeout,
        )?;
        clients.insert(provider.to_string(), client.clone());
        Ok(client)
    }

    /// One tick for the policies judged by one Prometheus.
    async fn check(&self, provider: String, due: Vec<(Key, Request)>, now: Timestamp) {
        let started = Instant::now();
        let client = due.first().map(|(_, r)| self.client(&provider, r));
        // Distinct queries of this tick; identical rendered queries are asked once.
        let wanted = tick_queries(&due);
        let answers: HashMap<Query, Result<Vec<Sample>, PromError>> = match client {
            Some(Ok(client)) => {
                let asked = join_all(wanted.values().map(|(q, selection)| {
                    let keep = selection.as_ref().map_or(Keep::FirstTwo, Keep::Selected);
                    client.query_kept(q, keep)
                }))
                .await;
                wanted.into_keys().zip(asked).collect()
            }
            Some(Err(e)) => wanted.into_keys().map(|q| (q, Err(e.clone()))).collect(),
            None => HashMap::new(),
        };
        self.metrics.prometheus_queries.inc_by(answers.len() as u64);
        for err in answers.values().filter_map(|r| r.as_ref().err()) {
            self.metrics
                .prometheus_errors
                .get_or_create(&CategoryLabels {
                    category: err.category(),
                })
                .inc();
        }
        self.metrics.analysis_ticks.inc();
        let finished = Timestamp::now();
        for (key, req) in due {
            let results: Vec<MetricResult> = req
                .analysis
                .metrics
                .iter()
                .map(|m| judge_metric(&req, m, &answers, finished))
                .collect();
            for r in &results {
                self.metrics
                    .checks
                    .get_or_create(&VerdictLabels {
                        verdict: r.verdict.as_str(),
                    })
                    .inc();
            }
            crate::failpoint!("before-verdict", crate::failpoint::verdict(&results));
            if let Some(entry) = self.entries().get_mut(&key) {
                entry.in_flight = false;
                entry.next_due = next_on_grid(now, entry.request.analysis.interval);
                // A request replaced while we were asking keeps its fresh state.
                if entry.fingerprint_matches(&req) {
                    entry.latest = Some(Check {
                        at: finished,
                        window_start: window_start(&req.analysis, now),
                        results,
                    });
                }
            }
            crate::failpoint!(
                "after-verdict",
                crate::failpoint::verdict(&self.latest(&key).map(|c| c.results).unwrap_or_default())
            );
            // The controller is gone only at shutdown.
            let _ = self.wake.unbounded_send(key);
        }
        self.metrics.analysis_duration.observe(started.elapsed().as_secs_f64());
    }
}

impl Entry {
    fn fingerprint_matches(&self, req: &Request) -> bool {
        self.request.since == req.since && self.request.vars == req.vars && self.request.analysis == req.analysis
    }
}

fn provider_key(request: &Request) -> String {
    let p = &request.prometheus;
    format!(
        "{}|{:?}|{}|{}",
        p.address,
        p.timeout,
        request
            .credentials
            .as_ref()
            .map(Credentials::fingerprint)
            .unwrap_or_default(),
        request.ca_pem.as_ref().map(|c| c.len()).unwrap_or_default()
    )
}

fn judge_metric(
    req: &Request,
    m: &MetricCheck,
    answers: &HashMap<Query, Result<Vec<Sample>, PromError>>,
    at: Timestamp,
) -> MetricResult {
    let window = window(&req.analysis, m);
    let result = |verdict, message: String| MetricResult {
        name: m.name.clone(),
        verdict,
        value: None,
        stable_value: None,
        threshold: String::new(),
        window: window.clone(),
        message,
        at,
    };
    let query = match metric_query(&req.analysis, m, &req.vars) {
        Ok(q) => q,
        Err(e) => return result(Verdict::Error, e),
    };
    let samples = match answers.get(&query) {
        Some(Ok(s)) => s,
        Some(Err(e)) => return result(Verdict::Error, format!("Prometheus: {e}")),
        None => return result(Verdict::Error, "query was not asked".into()),
    };
    let ns = &req.vars.namespace;
    let (canary, stable) = match (&query, m.template.as_deref().and_then(Template::parse)) {
        (Query::Grouped(_), Some(t)) => (
            judge::observe(t, samples, ns, &req.vars.canary.deployment),
            judge::observe(t, samples, ns, &req.vars.stable.deployment),
        ),
        _ => match judge::custom_observation(samples) {
            Ok(obs) => (obs, None),
            Err(e) => return result(Verdict::Error, e.to_string()),
        },
    };
    let j = judge::judge(m, canary, stable, req.analysis.min_requests);
    MetricResult {
        name: m.name.clone(),
        verdict: j.verdict,
        value: j.value,
        stable_value: j.stable_value,
        threshold: j.threshold,
        window,
        message: j.message,
        at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(ns: &str, app: &str, window: &str) -> (Key, Request) {
        let analysis: Analysis = serde_json::from_value(json!({
            "interval": "30s",
            "prometheus": {"address": "http://prometheus:9090"},
            "metrics": [
                {"name": "sr", "template": "istio-request-success-rate", "min": 99, "window": window},
                {"name": "p99", "template": "istio-request-duration-p99", "max": 500, "window": window},
                {"name": "custom", "query": "sum(up{namespace=\"{{namespace}}\"})", "max": 1},
            ],
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let version = |subset: &str| templates::VersionVars {
            subset: subset.into(),
            deployment: format!("{app}-{subset}"),
            version: subset.into(),
        };
        let request = Request {
            prometheus: analysis.prometheus.clone().unwrap_or_else(|| panic!("no address")),
            analysis,
            vars: Vars {
                namespace: ns.into(),
                service: app.into(),
                window: window.into(),
                stable: version("v1"),
                canary: version("v2"),
            },
            since: Timestamp::UNIX_EPOCH,
            credentials: None,
            ca_pem: None,
        };
        ((ns.into(), app.into()), request)
    }

    #[test]
    fn built_in_queries_select_only_the_workloads_due_and_stay_one_per_template_and_window() {
        let due = [
            request("shop", "cart", "1m"),
            request("pay", "api", "1m"),
            request("pay", "ledger", "5m"),
        ];
        let queries = tick_queries(&due);
        let grouped: Vec<&String> = queries
            .iter()
            .filter(|(k, _)| matches!(k, Query::Grouped(_)))
            .map(|(_, (q, _))| q)
            .collect();
        // success rate and duration, each over 1m and 5m; the custom query once per namespace.
        assert_eq!(grouped.len(), 4, "{queries:#?}");
        assert_eq!(queries.len(), 6, "{queries:#?}");
        let one_minute =
            r#"destination_workload_namespace=~"pay|shop",destination_workload=~"api-v1|api-v2|cart-v1|cart-v2"}[1m]"#;
        let five_minutes = r#"destination_workload_namespace=~"pay",destination_workload=~"ledger-v1|ledger-v2"}[5m]"#;
        for q in &grouped {
            assert!(q.contains(one_minute) || q.contains(five_minutes), "{q}");
        }
        // Each rollout's samples are found under its metric's key.
        for (_, req) in &due {
            for m in &req.analysis.metrics {
                let key = metric_query(&req.analysis, m, &req.vars).unwrap_or_else(|e| panic!("{e}"));
                assert!(queries.contains_key(&key), "{key:?}");
            }
        }
    }

    #[test]
    fn grid_aligns_policies_with_the_same_interval() {
        let t = |s: i64, ms: i64| Timestamp::from_millisecond(s * 1000 + ms).unwrap();
        let d = Duration::from_secs(10);
        assert_eq!(next_on_grid(t(101, 0), d), t(110, 0));
        assert_eq!(next_on_grid(t(109, 999), d), t(110, 0));
        assert_eq!(next_on_grid(t(110, 0), d), t(120, 0));
        assert_eq!(next_on_grid(t(5, 300), Duration::from_secs(1)), t(6, 0));
    }
}
