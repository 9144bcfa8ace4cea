//! HPA coordination end to end: the daemon (a real process with exactly the RBAC of deploy/) rolls
//! the seed scenario out on the bed with the real Deployment, ReplicaSet and HPA controllers and
//! kwok's fake node, so a raised `minReplicas` really becomes pods that really become Ready.
//!
//! Orderings are proved from watch histories: every object of the scenario is watched from before
//! the policy is applied, and its versions are put in one sequence by `resourceVersion` (one etcd
//! here, so resourceVersions are etcd revisions, comparable across kinds). Readiness is held back
//! per namespace with `ControlPlane::hold_pods` (the fake scheduler leaves the pods unbound).

mod fixture;
mod support;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use canaryd::resources::policy::{Phase, RolloutPolicy};
use fixture::scaling::{CANARY, Hpas, Replicas, STABLE, STABLE_REPLICAS, replicas_of, seed_with_pods};
use fixture::{Seed, cli, ensure, start_daemon};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

const T: Duration = Duration::from_secs(30);
const VS: &str = "istio-test-vs";
const POLICY: &str = "istio-test";
const FINALIZER: &str = "canaryd.io/cleanup";
/// `spec.scaling.scaleDownDelay` in these tests.
const SCALE_DOWN_DELAY: Duration = Duration::from_secs(3);
/// Slack for the time between an API write and its watch event reaching the test.
const SLACK: Duration = Duration::from_millis(500);

/// Canary replicas for a weight with stable at 4 and headroom 1.0: ceil(4 × w / 100).
fn need(weight: u8) -> i32 {
    match weight {
        0 => 0,
        w => ((i32::from(w) * STABLE_REPLICAS + 99) / 100).max(1),
    }
}

/// The seed policy with `second_pause` as the step between 50 and 100 (`{}` waits for approval),
/// `scaleDownDelay: 3s` and `progressDeadline`.
fn policy(seed: &Seed, second_pause: &str, progress_deadline: &str) -> Result<String> {
    let text = seed.policy_yaml();
    ensure(
        text.contains("    - pause: {}\n") && text.contains("  progressDeadline: 10m"),
        format!("the seed policy changed:\n{text}"),
    )?;
    Ok(text
        .replace("    - pause: {}\n", &format!("    - pause: {second_pause}\n"))
        .replace(
            "  progressDeadline: 10m",
            &format!("  scaling:\n    scaleDownDelay: 3s\n  progressDeadline: {progress_deadline}"),
        ))
}

fn phase(p: &RolloutPolicy) -> Phase {
    p.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

async fn admin_kubeconfig() -> Result<std::path::PathBuf> {
    Ok(support::control_plane().await?.kubeconfig_path().to_path_buf())
}

// ---------------------------------------------------------------------------------------------
// The recorder: every version of the scenario's objects, in etcd order.

#[derive(Clone, Debug, PartialEq)]
enum Change {
    Hpa {
        name: String,
        min: Option<i32>,
        max: i32,
    },
    Deploy {
        name: String,
        replicas: Replicas,
    },
    /// The managed route's weights: (v1, v2); a missing destination counts 0.
    Weights(u8, u8),
    Policy {
        status: Value,
        finalizers: Vec<String>,
    },
    PolicyGone,
}

#[derive(Clone, Debug)]
struct Raw {
    rv: u64,
    at: Instant,
    change: Change,
}

/// What the scenario looked like right after one write.
#[derive(Clone, Debug, Default, PartialEq)]
struct State {
    hpa: BTreeMap<String, (Option<i32>, i32)>,
    deploy: BTreeMap<String, Replicas>,
    weights: (u8, u8),
    /// The policy's status; `None` before it exists and after it is gone.
    status: Option<Value>,
    policy_exists: bool,
    policy_gone: bool,
}

impl State {
    fn min(&self, hpa: &str) -> Option<i32> {
        self.hpa.get(hpa).map(|(min, _)| min.unwrap_or(1))
    }
    fn bounds(&self, hpa: &str) -> Option<(i32, i32)> {
        self.hpa.get(hpa).map(|(min, max)| (min.unwrap_or(1), *max))
    }
    fn ready(&self, d: &str) -> i32 {
        self.deploy.get(d).map(|r| r.ready).unwrap_or(0)
    }
    fn spec(&self, d: &str) -> i32 {
        self.deploy.get(d).map(|r| r.spec).unwrap_or(0)
    }
    fn canary_weight(&self) -> u8 {
        self.weights.1
    }
    fn phase(&self) -> String {
        self.status
            .as_ref()
            .and_then(|s| s["phase"].as_str())
            .unwrap_or("")
            .to_string()
    }
    fn scaling(&self) -> Option<&Value> {
        self.status.as_ref().map(|s| &s["scaling"]).filter(|v| !v.is_null())
    }
}

#[derive(Clone, Debug)]
struct Obs {
    rv: u64,
    at: Instant,
    change: Change,
    state: State,
}

struct Recorder {
    raws: Arc<Mutex<Vec<Raw>>>,
    /// Whether the scenario has HPAs: the timeline starts once all its objects have been seen.
    hpas: bool,
    tasks: Vec<JoinHandle<()>>,
    began: Instant,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn rv_of<K: Resource>(o: &K) -> u64 {
    o.meta()
        .resource_version
        .as_deref()
        .and_then(|rv| rv.parse().ok())
        .unwrap_or(0)
}

fn spawn_watch<K>(
    api: Api<K>,
    config: watcher::Config,
    raws: Arc<Mutex<Vec<Raw>>>,
    listed: Arc<AtomicUsize>,
    change: impl Fn(&K, bool) -> Option<Change> + Send + 'static,
) -> JoinHandle<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    tokio::spawn(async move {
        let mut events = watcher(api, config).boxed();
        let mut first_list = true;
        while let Some(event) = events.next().await {
            let (obj, deleted) = match event {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => (o, false),
                Ok(watcher::Event::Delete(o)) => (o, true),
                Ok(watcher::Event::InitDone) if first_list => {
                    first_list = false;
                    listed.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                _ => continue,
            };
            if let Some(c) = change(&obj, deleted) {
                let raw = Raw {
                    rv: rv_of(&obj),
                    at: Instant::now(),
                    change: c,
                };
                if let Ok(mut raws) = raws.lock() {
                    raws.push(raw);
                }
            }
        }
    })
}

impl Recorder {
    /// Watches the HPAs and Deployments of the seed's namespace, its VirtualService and its policy;
    /// returns once the current state of all of them has been seen.
    async fn start(seed: &Seed, with_hpas: Hpas) -> Result<Self> {
        let raws = Arc::new(Mutex::new(Vec::new()));
        let listed = Arc::new(AtomicUsize::new(0));
        let client = seed.client.clone();
        let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &seed.ns);
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &seed.ns);
        let vss: Api<DynamicObject> = Api::namespaced_with(
            client.clone(),
            &seed.vs_ns,
            &canaryd::mesh::istio::virtual_service_resource(),
        );
        let policies: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &seed.ns, &ApiResource::erase::<RolloutPolicy>(&()));
        let fqdn = format!("istio-test.{}.svc.cluster.local", seed.ns);
        let vs_ns = seed.vs_ns.clone();
        let tasks = vec![
            spawn_watch(
                hpas,
                watcher::Config::default(),
                raws.clone(),
                listed.clone(),
                |h, deleted| {
                    let spec = &h.spec;
                    (!deleted).then(|| Change::Hpa {
                        name: h.name_any(),
                        min: spec.min_replicas,
                        max: spec.max_replicas,
                    })
                },
            ),
            spawn_watch(
                deployments,
                watcher::Config::default(),
                raws.clone(),
                listed.clone(),
                |d, deleted| {
                    (!deleted).then(|| Change::Deploy {
                        name: d.name_any(),
                        replicas: replicas_of(d),
                    })
                },
            ),
            spawn_watch(
                vss,
                watcher::Config::default().fields(&format!("metadata.name={VS}")),
                raws.clone(),
                listed.clone(),
                move |vs, _| {
                    let vs = serde_json::to_value(vs).ok()?;
                    let route = vs.pointer("/spec/http/1")?;
                    let w = canaryd::mesh::routes::route_weights(route, &vs_ns, &fqdn);
                    let get = |s: &str| w.get(s).copied().unwrap_or(0);
                    Some(Change::Weights(get("v1"), get("v2")))
                },
            ),
            spawn_watch(
                policies,
                watcher::Config::default().fields(&format!("metadata.name={POLICY}")),
                raws.clone(),
                listed.clone(),
                |p, deleted| {
                    if deleted {
                        return Some(Change::PolicyGone);
                    }
                    Some(Change::Policy {
                        status: p.data.get("status").cloned().unwrap_or(Value::Null),
                        finalizers: p.finalizers().to_vec(),
                    })
                },
            ),
        ];
        let rec = Recorder {
            raws,
            hpas: with_hpas == Hpas::Both,
            tasks,
            began: Instant::now(),
        };
        // Every watch has listed (and so watches from then on), and the objects are all known.
        let watches = rec.tasks.len();
        support::wait_until("the recorder's first view", T, async || {
            let listed = listed.load(Ordering::SeqCst) == watches;
            Ok((listed && !rec.timeline().is_empty()).then_some(()))
        })
        .await?;
        Ok(rec)
    }

    /// Every recorded write in etcd order, with the state right after it, from the first state in
    /// which every object of the scenario is known.
    fn timeline(&self) -> Vec<Obs> {
        let mut raws = self.raws.lock().map(|r| r.clone()).unwrap_or_default();
        raws.sort_by_key(|r| (r.rv, r.at));
        // A relist shows versions already seen again.
        raws.dedup_by(|b, a| a.rv == b.rv && a.change == b.change);
        let mut state = State::default();
        let mut out: Vec<Obs> = Vec::new();
        for raw in raws {
            match &raw.change {
                Change::Hpa { name, min, max } => {
                    state.hpa.insert(name.clone(), (*min, *max));
                }
                Change::Deploy { name, replicas } => {
                    state.deploy.insert(name.clone(), *replicas);
                }
                Change::Weights(stable, canary) => state.weights = (*stable, *canary),
                Change::Policy { status, .. } => {
                    state.status = Some(status.clone());
                    state.policy_exists = true;
                }
                Change::PolicyGone => {
                    state.status = None;
                    state.policy_exists = false;
                    state.policy_gone = true;
                }
            }
            let known = state.deploy.contains_key(STABLE)
                && state.deploy.contains_key(CANARY)
                && state.weights != (0, 0)
                && (!self.hpas || (state.hpa.contains_key(STABLE) && state.hpa.contains_key(CANARY)));
            if !known {
                continue;
            }
            out.push(Obs {
                rv: raw.rv,
                at: raw.at,
                change: raw.change,
                state: state.clone(),
            });
        }
        out
    }

    fn now(&self) -> State {
        self.timeline().last().map(|o| o.state.clone()).unwrap_or_default()
    }

    /// The timeline as a table (policy writes without a change of phase or scaling left out).
    fn dump(&self) -> String {
        let mut out = String::from(
            "--- timeline (rv, t, what changed → canary HPA min/max, canary spec/ready, stable HPA min/max, stable spec/ready, weights v1/v2, phase) ---\n",
        );
        let mut last_policy: Option<(String, Option<Value>)> = None;
        for o in self.timeline() {
            let what = match &o.change {
                Change::Hpa { name, .. } => format!("hpa {name}"),
                Change::Deploy { name, .. } => format!("deploy {name}"),
                Change::Weights(..) => "weights".into(),
                Change::Policy { .. } => {
                    let key = (o.state.phase(), o.state.scaling().cloned());
                    if last_policy.as_ref() == Some(&key) {
                        continue;
                    }
                    last_policy = Some(key);
                    format!(
                        "policy scaling={}",
                        o.state.scaling().map(|v| v.to_string()).unwrap_or_default()
                    )
                }
                Change::PolicyGone => "policy deleted".into(),
            };
            let s = &o.state;
            let _ = writeln!(
                out,
                "{:>8} {:>6.2}s {what:<30} canary {:?} {}/{}  stable {:?} {}/{}  weights {}/{}  {}",
                o.rv,
                o.at.saturating_duration_since(self.began).as_secs_f64(),
                s.bounds(CANARY),
                s.spec(CANARY),
                s.ready(CANARY),
                s.bounds(STABLE),
                s.spec(STABLE),
                s.ready(STABLE),
                s.weights.0,
                s.weights.1,
                s.phase(),
            );
        }
        out
    }

    /// The observations at which the canary weight rose (the weight before, the observation).
    fn weight_rises(&self) -> Vec<(u8, Obs)> {
        let tl = self.timeline();
        let mut out = Vec::new();
        let mut before = 0;
        for o in tl {
            if matches!(o.change, Change::Weights(..)) {
                if o.state.canary_weight() > before {
                    out.push((before, o.clone()));
                }
                before = o.state.canary_weight();
            }
        }
        out
    }
}

/// Wraps a test's error with the daemon's logs and the recorded timeline.
fn failed(daemons: &[&support::ChildProc], rec: &Recorder, err: anyhow::Error) -> anyhow::Error {
    let logs: Vec<String> = daemons.iter().map(|d| d.logs(80)).collect();
    anyhow::anyhow!("{err:#}\n{}\n{}", rec.dump(), logs.join("\n"))
}

/// `what` holds at every check for `window` (polled every 100 ms).
async fn holds_for(window: Duration, what: &str, mut probe: impl AsyncFnMut() -> Result<Option<String>>) -> Result<()> {
    let end = Instant::now() + window;
    while Instant::now() < end {
        if let Some(broken) = probe().await? {
            bail!("{what} did not hold: {broken}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn wait_hpa_min(seed: &Seed, hpa: &str, min: i32) -> Result<()> {
    let mut last = None;
    let result = support::wait_until(&format!("HPA {hpa} minReplicas {min}"), T, async || {
        let m = seed.hpa_min(hpa).await?;
        last = Some(m);
        Ok((m == min).then_some(()))
    })
    .await;
    result.with_context(|| format!("last minReplicas {last:?}"))
}

/// Waits for the canary HPA min and for the HPA controller to have acted on it.
async fn wait_raised(seed: &Seed, min: i32) -> Result<()> {
    wait_hpa_min(seed, CANARY, min).await?;
    let mut last = None;
    let result = support::wait_until(
        &format!("{CANARY} scaled to {min} by the HPA controller"),
        T,
        async || {
            let r = seed.replicas(CANARY).await?;
            last = Some(r);
            Ok((r.spec == min).then_some(()))
        },
    )
    .await;
    result.with_context(|| format!("last {last:?}"))
}

/// For `window`: the canary weight stays `weight`, the canary HPA min `min`, and `ready` canary
/// pods are Ready.
async fn weight_held(seed: &Seed, window: Duration, weight: u8, min: i32, ready: i32) -> Result<()> {
    holds_for(
        window,
        &format!("weight {weight} with canary HPA min {min} and {ready} Ready"),
        async || {
            let w = seed.weights(&seed.vs_ns, VS, 1).await?;
            let m = seed.hpa_min(CANARY).await?;
            let r = seed.replicas(CANARY).await?;
            let now = (w.get("v2").copied().unwrap_or(0), m, r.ready);
            Ok((now != (weight, min, ready)).then(|| format!("(weight, min, ready) = {now:?}, weights {w:?}")))
        },
    )
    .await
}

/// Waits until the HPA's spec, labels and annotations are the ones it had before the rollout.
async fn wait_hpa_restored(seed: &Seed, name: &str, before: &Value, timeout: Duration) -> Result<()> {
    let mut last = Value::Null;
    let result = support::wait_until(&format!("HPA {name} back to its original spec"), timeout, async || {
        last = seed.hpa_owned(name).await?;
        Ok((&last == before).then_some(()))
    })
    .await;
    result.with_context(|| format!("before {before}\nnow    {last}"))
}

/// Waits until `status.scaling` is gone.
async fn wait_scaling_cleared(seed: &Seed) -> Result<()> {
    let mut last = Value::Null;
    let result = support::wait_until("status.scaling cleared", T, async || {
        let p = seed.policy_json(POLICY).await?.context("policy gone")?;
        last = p["status"]["scaling"].clone();
        Ok(last.is_null().then_some(()))
    })
    .await;
    result.with_context(|| format!("status.scaling: {last}"))
}

/// Checks one version's record in `status.scaling` against the truth before the rollout.
fn check_version_scaling(v: &Value, deployment: &str, hpa: Option<(i32, i32)>, replicas: i32) -> Result<()> {
    // What canaryd set is recorded next to the originals; only the originals are checked here.
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("setBounds");
    }
    let v = &v;
    let want = match hpa {
        Some((min, max)) => json!({
            "deployment": deployment,
            "hpa": deployment,
            "originalBounds": {"minReplicas": min, "maxReplicas": max},
            "originalReplicas": replicas,
        }),
        None => json!({"deployment": deployment, "originalReplicas": replicas}),
    };
    ensure(v == &want, format!("status.scaling for {deployment}: {v}\nwant {want}"))
}

/// Every `status.scaling` the policy ever had records the true originals.
fn check_recorded_originals(rec: &Recorder, hpas: bool) -> Result<usize> {
    let bounds = hpas.then_some((1, 10));
    let mut seen = 0;
    let mut last: Option<Value> = None;
    for o in rec.timeline() {
        let Change::Policy { .. } = o.change else { continue };
        let Some(scaling) = o.state.scaling() else { continue };
        if last.as_ref() == Some(scaling) {
            continue;
        }
        last = Some(scaling.clone());
        seen += 1;
        ensure(
            scaling["stableReplicasAtStart"] == json!(STABLE_REPLICAS),
            format!("stableReplicasAtStart at rv {}: {scaling}", o.rv),
        )?;
        // After promotion the canary is the new stable; each record keeps the originals of its
        // Deployment, whatever it is called by then.
        for key in ["stable", "canary"] {
            let v = &scaling[key];
            if v.is_null() {
                continue;
            }
            let replicas = match v["deployment"].as_str() {
                Some(STABLE) => STABLE_REPLICAS,
                Some(CANARY) => 1,
                other => bail!("status.scaling.{key}.deployment {other:?} at rv {}", o.rv),
            };
            let d = v["deployment"].as_str().unwrap_or_default();
            check_version_scaling(v, d, bounds, replicas).with_context(|| format!("at rv {}", o.rv))?;
        }
    }
    Ok(seen)
}

/// The originals are in status before canaryd changes any HPA (or replicas) of the scenario.
fn check_recorded_before_changes(rec: &Recorder, hpas: bool) -> Result<()> {
    let tl = rec.timeline();
    let first_record = tl
        .iter()
        .find(|o| matches!(o.change, Change::Policy { .. }) && o.state.scaling().is_some())
        .map(|o| o.rv)
        .context("status.scaling was never written")?;
    let initial = tl
        .iter()
        .find(|o| matches!(o.change, Change::Policy { .. }))
        .map(|o| o.state.clone())
        .context("no policy seen")?;
    let first_change = tl.iter().find(|o| match &o.change {
        Change::Hpa { name, .. } if hpas => o.state.bounds(name) != initial.bounds(name),
        Change::Deploy { name, replicas } if !hpas => replicas.spec != initial.spec(name),
        _ => false,
    });
    if let Some(change) = first_change {
        ensure(
            first_record < change.rv,
            format!(
                "{:?} at rv {} before status.scaling was recorded at rv {first_record}",
                change.change, change.rv
            ),
        )?;
    }
    Ok(())
}

/// A rollback in etcd order: the weights went back to 100/0 while both HPAs still had the rollout's
/// bounds (canary min raised, stable pinned at 4); both got their original bounds back after that.
fn check_traffic_first(rec: &Recorder) -> Result<()> {
    let tl = rec.timeline();
    let back = tl
        .iter()
        .filter(|o| matches!(o.change, Change::Weights(..)))
        .skip_while(|o| o.state.canary_weight() == 0)
        .find(|o| o.state.canary_weight() == 0)
        .cloned()
        .context("weights never went back to 100/0")?;
    eprintln!(
        "weights 100/0 at rv {}: canary HPA (min, max) {:?}, stable HPA {:?}",
        back.rv,
        back.state.bounds(CANARY),
        back.state.bounds(STABLE)
    );
    ensure(
        back.state.min(CANARY).unwrap_or(0) >= 2,
        format!(
            "canary HPA min already {:?} when the weights hit 100/0 (rv {})",
            back.state.min(CANARY),
            back.rv
        ),
    )?;
    ensure(
        back.state.min(STABLE) == Some(STABLE_REPLICAS),
        format!(
            "stable HPA min already {:?} when the weights hit 100/0 (rv {})",
            back.state.min(STABLE),
            back.rv
        ),
    )?;
    for name in [CANARY, STABLE] {
        tl.iter()
            .find(|o| o.rv > back.rv && o.state.bounds(name) == Some((1, 10)))
            .with_context(|| format!("HPA {name} never got its bounds back after the weights went back"))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 1. Capacity first, then the weight.

/// Stable at 4 Ready pods; steps 10 → 2 s → 50 → 2 s → 100. Readiness is held back: the weight
/// stays while the canary HPA min is raised and the new pods are not Ready, and moves only once
/// they are: min 1 before 10 %, 2 before 50 %, 4 before 100 %.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_capacity_is_ready_before_each_weight_increase() -> Result<()> {
    let cp = support::control_plane_with_nodes().await?;
    let seed = seed_with_pods("hpa-steps", Hpas::Both).await?;
    let rec = Recorder::start(&seed, Hpas::Both).await?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        // No canary pod gets Ready from here on unless admitted.
        cp.hold_pods(&seed.ns);
        seed.apply(&policy(&seed, "{duration: 2s}", "10m")?).await?;
        // 10 % needs 1 replica, which the canary has.
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 90), ("v2", 10)], T)
            .await?;

        // Before 50 %: min 2; the HPA controller adds a pod, which is held.
        wait_raised(&seed, 2).await.context("before 50 %")?;
        weight_held(&seed, Duration::from_secs(3), 10, 2, 1).await?;
        let admitted_2nd = Instant::now();
        cp.admit_pods(&seed.ns, 1);
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 50), ("v2", 50)], T)
            .await?;

        // Before 100 %: min 4; two more pods, held.
        wait_raised(&seed, 4).await.context("before 100 %")?;
        weight_held(&seed, Duration::from_secs(3), 50, 4, 2).await?;
        let admitted_4th = Instant::now();
        cp.admit_pods(&seed.ns, 2);
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 0), ("v2", 100)], T)
            .await?;
        cp.release_pods(&seed.ns);
        seed.wait_policy(POLICY, "Succeeded", T, |p| phase(p) == Phase::Succeeded)
            .await?;

        // Each rise of the weight came after its capacity was Ready, in etcd order.
        let rises = rec.weight_rises();
        let weights: Vec<u8> = rises.iter().map(|(_, o)| o.state.canary_weight()).collect();
        ensure(weights == [10, 50, 100], format!("weight rises {weights:?}"))?;
        for (before, o) in &rises {
            let w = o.state.canary_weight();
            let (min, ready) = (o.state.min(CANARY).unwrap_or(0), o.state.ready(CANARY));
            ensure(
                min >= need(w) && ready >= need(w),
                format!(
                    "weight {before} → {w} at rv {} with canary HPA min {min} and {ready} Ready (needs {})",
                    o.rv,
                    need(w)
                ),
            )?;
        }
        // The weights moved only after the pods were let go (they could not be Ready before).
        let at = |w: u8| {
            rises
                .iter()
                .find(|(_, o)| o.state.canary_weight() == w)
                .map(|(_, o)| o.at)
        };
        ensure(
            at(50).is_some_and(|t| t > admitted_2nd),
            "50 % before the 2nd pod was admitted",
        )?;
        ensure(
            at(100).is_some_and(|t| t > admitted_4th),
            "100 % before the 3rd and 4th pods were admitted",
        )?;

        // The sequence of (canary HPA min, canary Ready, weight) until 100 %: never a lower min,
        // and the held states were there to see.
        let mut seq: Vec<(i32, i32, u8)> = Vec::new();
        for o in rec.timeline() {
            let s = &o.state;
            let t = (s.min(CANARY).unwrap_or(0), s.ready(CANARY), s.canary_weight());
            if seq.last() != Some(&t) {
                seq.push(t);
            }
            if t.2 == 100 {
                break;
            }
        }
        eprintln!("(canary HPA min, canary Ready, weight): {seq:?}");
        for pair in seq.windows(2) {
            ensure(
                pair[1].0 >= pair[0].0,
                format!("canary HPA min lowered during the rollout: {seq:?}"),
            )?;
        }
        let expected = [
            (1, 1, 0),
            (1, 1, 10),
            (2, 1, 10),
            (2, 2, 10),
            (2, 2, 50),
            (4, 2, 50),
            (4, 4, 50),
            (4, 4, 100),
        ];
        let mut it = seq.iter();
        for e in expected {
            ensure(
                it.any(|s| *s == e),
                format!("{e:?} missing from (min, ready, weight) sequence {seq:?}"),
            )?;
        }
        Ok(())
    };
    let result = run.await;
    cp.release_pods(&seed.ns);
    result.map_err(|e| failed(&[&daemon], &rec, e))
}

// ---------------------------------------------------------------------------------------------
// 2. Stable pinned; after promotion the old stable goes to 0 and every HPA gets its bounds back.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stable_is_pinned_and_scaled_to_zero_after_promotion() -> Result<()> {
    let seed = seed_with_pods("hpa-promote", Hpas::Both).await?;
    let before_stable = seed.hpa_owned(STABLE).await?;
    let before_canary = seed.hpa_owned(CANARY).await?;
    let rec = Recorder::start(&seed, Hpas::Both).await?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        seed.apply(&policy(&seed, "{duration: 2s}", "10m")?).await?;
        seed.wait_policy(POLICY, "Succeeded", T, |p| phase(p) == Phase::Succeeded)
            .await?;
        // The header route `user: zhj1 → v1` follows the promotion, as it must before v1 can go.
        fixture::header_route_to_canary(&seed).await?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 0), ("v2", 100)], T)
            .await?;
        // The old stable goes to zero after scaleDownDelay; status.scaling is then cleared.
        let mut last = None;
        support::wait_until("old stable at 0 replicas", T, async || {
            let r = seed.replicas(STABLE).await?;
            last = Some(r);
            Ok((r.spec == 0).then_some(()))
        })
        .await
        .with_context(|| format!("last {last:?}"))?;
        wait_scaling_cleared(&seed).await?;
        // Every HPA has its original spec back, field for field.
        wait_hpa_restored(&seed, STABLE, &before_stable, Duration::from_secs(5)).await?;
        wait_hpa_restored(&seed, CANARY, &before_canary, Duration::from_secs(5)).await?;
        // The old stable's HPA is inactive at 0 replicas: it stays there.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let r = seed.replicas(STABLE).await?;
        ensure(
            r.spec == 0 && r.ready == 0,
            format!("old stable after scale-down: {r:?}"),
        )?;
        let new_stable = seed.replicas(CANARY).await?;
        ensure(
            new_stable.spec == STABLE_REPLICAS && new_stable.ready == STABLE_REPLICAS,
            format!("new stable lost capacity: {new_stable:?}"),
        )?;

        let tl = rec.timeline();
        // Stable's HPA min was pinned to 4 at every weight of the rollout.
        let rises = rec.weight_rises();
        ensure(rises.len() == 3, format!("{} weight rises", rises.len()))?;
        for (_, o) in &rises {
            ensure(
                o.state.min(STABLE) == Some(STABLE_REPLICAS),
                format!(
                    "stable HPA min {:?} when the weight went to {} (rv {})",
                    o.state.min(STABLE),
                    o.state.canary_weight(),
                    o.rv
                ),
            )?;
        }
        let first_move = rises[0].1.rv;
        let at_100 = rises[2].1.clone();
        for o in tl.iter().filter(|o| o.rv >= first_move && o.rv < at_100.rv) {
            ensure(
                o.state.min(STABLE) == Some(STABLE_REPLICAS),
                format!(
                    "stable HPA min {:?} during the rollout at rv {}",
                    o.state.min(STABLE),
                    o.rv
                ),
            )?;
        }

        // After promotion: stable's (old stable's) bounds at once, then after the delay the old
        // stable to 0 and the new stable's bounds.
        let after = |pred: &dyn Fn(&State) -> bool| tl.iter().find(|o| o.rv > at_100.rv && pred(&o.state)).cloned();
        let stable_restored = after(&|s| s.bounds(STABLE) == Some((1, 10))).context("stable HPA never restored")?;
        let scaled_down = after(&|s| s.spec(STABLE) == 0).context("old stable never scaled down")?;
        let canary_restored = after(&|s| s.bounds(CANARY) == Some((1, 10))).context("canary HPA never restored")?;
        let since = |o: &Obs| o.at.saturating_duration_since(at_100.at);
        ensure(
            since(&stable_restored) < Duration::from_secs(2),
            format!("stable's bounds restored {:?} after promotion", since(&stable_restored)),
        )?;
        ensure(
            stable_restored.rv < scaled_down.rv,
            "the old stable was scaled down before its HPA got its bounds back",
        )?;
        ensure(
            since(&scaled_down) + SLACK >= SCALE_DOWN_DELAY
                && since(&scaled_down) < SCALE_DOWN_DELAY + Duration::from_secs(10),
            format!(
                "old stable scaled down {:?} after promotion (delay 3s)",
                since(&scaled_down)
            ),
        )?;
        ensure(
            since(&canary_restored) + SLACK >= SCALE_DOWN_DELAY,
            format!(
                "new stable's bounds restored {:?} after promotion, before scaleDownDelay",
                since(&canary_restored)
            ),
        )?;
        // Nothing touched the old stable's Deployment during the rollout.
        for o in tl.iter().filter(|o| o.rv < scaled_down.rv) {
            ensure(
                o.state.spec(STABLE) == STABLE_REPLICAS,
                format!("old stable at {} replicas at rv {}", o.state.spec(STABLE), o.rv),
            )?;
        }

        // What status said: the originals, recorded before any HPA changed; the scale-down plan.
        ensure(check_recorded_originals(&rec, true)? > 0, "no status.scaling seen")?;
        check_recorded_before_changes(&rec, true)?;
        let planned = tl
            .iter()
            .filter_map(|o| o.state.scaling())
            .find(|s| !s["scaleDown"].is_null())
            .map(|s| s["scaleDown"].clone())
            .context("status.scaling.scaleDown never seen")?;
        ensure(
            planned["deployment"] == STABLE && planned["at"].is_string(),
            format!("scaleDown {planned}"),
        )?;
        Ok(())
    };
    run.await.map_err(|e| failed(&[&daemon], &rec, e))
}

// ---------------------------------------------------------------------------------------------
// 3. Rollback: traffic first, then the bounds.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_returns_traffic_before_restoring_bounds() -> Result<()> {
    let seed = seed_with_pods("hpa-abort", Hpas::Both).await?;
    let before_stable = seed.hpa_owned(STABLE).await?;
    let before_canary = seed.hpa_owned(CANARY).await?;
    let rec = Recorder::start(&seed, Hpas::Both).await?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        // Waits for approval at 50 %.
        seed.apply(&policy(&seed, "{}", "10m")?).await?;
        seed.wait_policy(POLICY, "WaitingForApproval", T, |p| {
            phase(p) == Phase::WaitingForApproval
        })
        .await?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 50), ("v2", 50)], T)
            .await?;
        let (canary_min, stable_min) = (seed.hpa_min(CANARY).await?, seed.hpa_min(STABLE).await?);
        ensure(
            canary_min >= 2 && stable_min == STABLE_REPLICAS,
            format!("at 50 %: canary HPA min {canary_min}, stable HPA min {stable_min}"),
        )?;

        let (ok, out) = cli(&admin_kubeconfig().await?, &["abort", POLICY, "-n", &seed.ns]).await?;
        ensure(ok, format!("abort: {out}"))?;
        seed.wait_policy(POLICY, "Aborted", T, |p| phase(p) == Phase::Aborted)
            .await?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 100), ("v2", 0)], T)
            .await?;
        wait_hpa_restored(&seed, CANARY, &before_canary, T).await?;
        wait_hpa_restored(&seed, STABLE, &before_stable, T).await?;

        check_traffic_first(&rec)?;
        ensure(check_recorded_originals(&rec, true)? > 0, "no status.scaling seen")?;
        Ok(())
    };
    run.await.map_err(|e| failed(&[&daemon], &rec, e))
}

// ---------------------------------------------------------------------------------------------
// 4. SIGKILL between raising the HPA and moving the weight.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_raising_the_hpa_keeps_the_true_originals() -> Result<()> {
    let cp = support::control_plane_with_nodes().await?;
    let seed = seed_with_pods("hpa-kill", Hpas::Both).await?;
    let before_stable = seed.hpa_owned(STABLE).await?;
    let before_canary = seed.hpa_owned(CANARY).await?;
    let rec = Recorder::start(&seed, Hpas::Both).await?;
    let mut first = start_daemon(&seed.ns).await?;
    cp.hold_pods(&seed.ns);
    let phase_one = async {
        seed.apply(&policy(&seed, "{duration: 2s}", "10m")?).await?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 90), ("v2", 10)], T)
            .await?;
        // The HPA is raised for 50 %; the new pod cannot get Ready, so the weight cannot move.
        wait_raised(&seed, 2).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok::<_, anyhow::Error>(())
    };
    if let Err(e) = phase_one.await {
        cp.release_pods(&seed.ns);
        return Err(failed(&[&first], &rec, e));
    }
    first.kill()?;
    let killed_at = Instant::now();
    let second = match start_daemon(&seed.ns).await {
        Ok(d) => d,
        Err(e) => {
            cp.release_pods(&seed.ns);
            return Err(failed(&[&first], &rec, e));
        }
    };
    let run = async {
        // The restarted daemon looks at the raised HPA and the held pod for a while.
        weight_held(&seed, Duration::from_secs(3), 10, 2, 1).await?;
        let p = seed.policy_json(POLICY).await?.context("policy gone")?;
        let scaling = &p["status"]["scaling"];
        check_version_scaling(&scaling["canary"], CANARY, Some((1, 10)), 1)?;
        check_version_scaling(&scaling["stable"], STABLE, Some((1, 10)), STABLE_REPLICAS)?;
        cp.release_pods(&seed.ns);
        // It goes on where it was, to the end.
        seed.wait_policy(POLICY, "Succeeded", T, |p| phase(p) == Phase::Succeeded)
            .await?;
        // The header route `user: zhj1 → v1` follows the promotion, as it must before v1 can go.
        fixture::header_route_to_canary(&seed).await?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 0), ("v2", 100)], T)
            .await?;
        wait_scaling_cleared(&seed).await?;
        wait_hpa_restored(&seed, STABLE, &before_stable, Duration::from_secs(5)).await?;
        wait_hpa_restored(&seed, CANARY, &before_canary, Duration::from_secs(5)).await?;
        ensure(seed.replicas(STABLE).await?.spec == 0, "old stable not scaled down")?;

        // Before and after the kill, status only ever held the true originals.
        let records = check_recorded_originals(&rec, true)?;
        ensure(records > 0, "no status.scaling seen")?;
        check_recorded_before_changes(&rec, true)?;
        // No weight step repeated or skipped across the restart.
        let rises: Vec<u8> = rec
            .weight_rises()
            .iter()
            .map(|(_, o)| o.state.canary_weight())
            .collect();
        ensure(rises == [10, 50, 100], format!("weight rises {rises:?}"))?;
        let after_restart = rec
            .weight_rises()
            .into_iter()
            .find(|(_, o)| o.state.canary_weight() == 50)
            .map(|(_, o)| o.at);
        ensure(after_restart.is_some_and(|t| t > killed_at), "50 % before the kill")?;
        Ok(())
    };
    let result = run.await;
    cp.release_pods(&seed.ns);
    result.map_err(|e| failed(&[&first, &second], &rec, e))
}

// ---------------------------------------------------------------------------------------------
// 5. Deleting the policy mid-rollout.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_policy_restores_everything_first() -> Result<()> {
    let seed = seed_with_pods("hpa-delete", Hpas::Both).await?;
    let before_stable = seed.hpa_owned(STABLE).await?;
    let before_canary = seed.hpa_owned(CANARY).await?;
    let rec = Recorder::start(&seed, Hpas::Both).await?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        seed.apply(&policy(&seed, "{}", "10m")?).await?;
        seed.wait_policy(POLICY, "WaitingForApproval", T, |p| {
            phase(p) == Phase::WaitingForApproval
        })
        .await?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 50), ("v2", 50)], T)
            .await?;
        wait_hpa_min(&seed, STABLE, STABLE_REPLICAS).await?;
        let p = seed.policy_json(POLICY).await?.context("policy gone")?;
        let finalizers = p["metadata"]["finalizers"].clone();
        ensure(
            finalizers.as_array().is_some_and(|f| f.iter().any(|f| f == FINALIZER)),
            format!("finalizers {finalizers}"),
        )?;
        let canary_min = seed.hpa_min(CANARY).await?;
        ensure(canary_min >= 2, format!("canary HPA min {canary_min} at 50 %"))?;

        let policies: Api<RolloutPolicy> = Api::namespaced(seed.client.clone(), &seed.ns);
        policies.delete(POLICY, &DeleteParams::default()).await?;
        support::wait_until("the policy to disappear", T, async || {
            Ok(seed.policy_json(POLICY).await?.is_none().then_some(()))
        })
        .await?;
        // Gone: everything was already put back.
        let w = seed.weights(&seed.vs_ns, VS, 1).await?;
        ensure(
            w.get("v1") == Some(&100) && w.get("v2").copied().unwrap_or(0) == 0,
            format!("weights after deletion {w:?}"),
        )?;
        for (name, before) in [(STABLE, &before_stable), (CANARY, &before_canary)] {
            let now = seed.hpa_owned(name).await?;
            ensure(
                &now == before,
                format!("HPA {name} after deletion:\n{now}\nbefore:\n{before}"),
            )?;
        }
        // And in etcd order: the restores, then the deletion.
        support::wait_until("the deletion to be recorded", Duration::from_secs(5), async || {
            Ok(rec.now().policy_gone.then_some(()))
        })
        .await?;
        let tl = rec.timeline();
        let gone = tl
            .iter()
            .find(|o| o.change == Change::PolicyGone)
            .map(|o| o.rv)
            .context("deletion")?;
        // The last change of HPA bounds or weights (the HPA controller's status writes aside).
        let last_write = tl
            .windows(2)
            .filter(|w| {
                let (a, b) = (&w[0].state, &w[1].state);
                a.hpa != b.hpa || a.weights != b.weights
            })
            .map(|w| w[1].rv)
            .max()
            .unwrap_or(0);
        ensure(
            last_write < gone,
            format!("HPA bounds or weights changed at rv {last_write}, after the policy was deleted at rv {gone}"),
        )?;
        Ok(())
    };
    run.await.map_err(|e| failed(&[&daemon], &rec, e))
}

// ---------------------------------------------------------------------------------------------
// 6. Deployments without HPAs: spec.replicas.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_without_hpa_follow_the_steps() -> Result<()> {
    let seed = seed_with_pods("hpa-none", Hpas::None).await?;
    let rec = Recorder::start(&seed, Hpas::None).await?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        seed.apply(&policy(&seed, "{duration: 2s}", "10m")?).await?;
        seed.wait_policy(POLICY, "Succeeded", T, |p| phase(p) == Phase::Succeeded)
            .await?;
        // The header route `user: zhj1 → v1` follows the promotion, as it must before v1 can go.
        fixture::header_route_to_canary(&seed).await?;
        let mut last = None;
        support::wait_until("old stable at 0 replicas", T, async || {
            let r = seed.replicas(STABLE).await?;
            last = Some(r);
            Ok((r.spec == 0).then_some(()))
        })
        .await
        .with_context(|| format!("last {last:?}"))?;
        wait_scaling_cleared(&seed).await?;
        let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(seed.client.clone(), &seed.ns);
        ensure(
            hpas.list(&Default::default()).await?.items.is_empty(),
            "an HPA appeared",
        )?;

        let tl = rec.timeline();
        // The canary's spec.replicas: 1 → 2 → 4, never lowered (it is the new stable at the end).
        let mut specs: Vec<i32> = Vec::new();
        for o in &tl {
            let s = o.state.spec(CANARY);
            if specs.last() != Some(&s) {
                specs.push(s);
            }
        }
        ensure(specs == [1, 2, 4], format!("canary spec.replicas went {specs:?}"))?;
        let new_stable = seed.replicas(CANARY).await?;
        ensure(
            new_stable.spec == 4 && new_stable.ready == 4,
            format!("new stable {new_stable:?}"),
        )?;
        // Each weight rise after its replicas were Ready.
        let rises = rec.weight_rises();
        let weights: Vec<u8> = rises.iter().map(|(_, o)| o.state.canary_weight()).collect();
        ensure(weights == [10, 50, 100], format!("weight rises {weights:?}"))?;
        for (before, o) in &rises {
            let w = o.state.canary_weight();
            let (spec, ready) = (o.state.spec(CANARY), o.state.ready(CANARY));
            ensure(
                spec >= need(w) && ready >= need(w),
                format!(
                    "weight {before} → {w} at rv {} with canary spec {spec}, {ready} Ready",
                    o.rv
                ),
            )?;
        }
        // Stable kept its 4 until promotion, then 0 after the delay.
        let at_100 = rises[2].1.clone();
        let scaled_down = tl
            .iter()
            .find(|o| o.state.spec(STABLE) == 0)
            .cloned()
            .context("old stable never at 0")?;
        ensure(scaled_down.rv > at_100.rv, "old stable scaled down before 100 %")?;
        let since = scaled_down.at.saturating_duration_since(at_100.at);
        ensure(
            since + SLACK >= SCALE_DOWN_DELAY,
            format!("old stable scaled down {since:?} after promotion (delay 3s)"),
        )?;
        for o in tl.iter().filter(|o| o.rv < scaled_down.rv) {
            ensure(
                o.state.spec(STABLE) == STABLE_REPLICAS,
                format!("stable at {} replicas at rv {}", o.state.spec(STABLE), o.rv),
            )?;
        }
        ensure(check_recorded_originals(&rec, false)? > 0, "no status.scaling seen")?;
        check_recorded_before_changes(&rec, false)?;
        Ok(())
    };
    run.await.map_err(|e| failed(&[&daemon], &rec, e))
}

/// 6 (rollback): without HPAs the canary's original replicas come back after the traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_without_hpa_are_restored_on_abort() -> Result<()> {
    let seed = seed_with_pods("hpa-none-abort", Hpas::None).await?;
    let rec = Recorder::start(&seed, Hpas::None).await?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        seed.apply(&policy(&seed, "{}", "10m")?).await?;
        seed.wait_policy(POLICY, "WaitingForApproval", T, |p| {
            phase(p) == Phase::WaitingForApproval
        })
        .await?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 50), ("v2", 50)], T)
            .await?;
        let r = seed.replicas(CANARY).await?;
        ensure(r.spec >= 2 && r.ready >= 2, format!("canary at 50 %: {r:?}"))?;
        let (ok, out) = cli(&admin_kubeconfig().await?, &["abort", POLICY, "-n", &seed.ns]).await?;
        ensure(ok, format!("abort: {out}"))?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 100), ("v2", 0)], T)
            .await?;
        let mut last = None;
        support::wait_until("canary back to 1 replica", T, async || {
            let r = seed.replicas(CANARY).await?;
            last = Some(r);
            Ok((r.spec == 1).then_some(()))
        })
        .await
        .with_context(|| format!("last {last:?}"))?;
        let tl = rec.timeline();
        let back = tl
            .iter()
            .filter(|o| matches!(o.change, Change::Weights(..)))
            .skip_while(|o| o.state.canary_weight() == 0)
            .find(|o| o.state.canary_weight() == 0)
            .cloned()
            .context("weights never back to 100/0")?;
        ensure(
            back.state.spec(CANARY) >= 2,
            format!(
                "canary already at {} replicas when the weights hit 100/0",
                back.state.spec(CANARY)
            ),
        )?;
        ensure(
            tl.iter().all(|o| o.state.spec(STABLE) == STABLE_REPLICAS),
            "stable's replicas changed",
        )?;
        ensure(check_recorded_originals(&rec, false)? > 0, "no status.scaling seen")?;
        Ok(())
    };
    run.await.map_err(|e| failed(&[&daemon], &rec, e))
}

// ---------------------------------------------------------------------------------------------
// 7. A capacity wait longer than progressDeadline fails the rollout.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_wait_past_progress_deadline_rolls_back() -> Result<()> {
    let cp = support::control_plane_with_nodes().await?;
    let seed = seed_with_pods("hpa-deadline", Hpas::Both).await?;
    let before_stable = seed.hpa_owned(STABLE).await?;
    let before_canary = seed.hpa_owned(CANARY).await?;
    let rec = Recorder::start(&seed, Hpas::Both).await?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        cp.hold_pods(&seed.ns);
        seed.apply(&policy(&seed, "{duration: 2s}", "5s")?).await?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 90), ("v2", 10)], T)
            .await?;
        wait_raised(&seed, 2).await?;
        let p = seed
            .wait_policy(POLICY, "RolledBack", T, |p| phase(p) == Phase::RolledBack)
            .await?;
        let status = p.status.unwrap_or_default();
        let reason = status.history.last().map(|t| t.reason.clone()).unwrap_or_default();
        ensure(
            reason == "ProgressDeadlineExceeded",
            format!("rolled back with {reason}: {:?}", status.message),
        )?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 100), ("v2", 0)], T)
            .await?;
        wait_hpa_restored(&seed, CANARY, &before_canary, T).await?;
        wait_hpa_restored(&seed, STABLE, &before_stable, T).await?;
        let rises: Vec<u8> = rec
            .weight_rises()
            .iter()
            .map(|(_, o)| o.state.canary_weight())
            .collect();
        ensure(rises == [10], format!("weight rises {rises:?}"))?;
        check_traffic_first(&rec)?;
        ensure(check_recorded_originals(&rec, true)? > 0, "no status.scaling seen")?;
        Ok(())
    };
    let result = run.await;
    cp.release_pods(&seed.ns);
    result.map_err(|e| failed(&[&daemon], &rec, e))
}
