//! The crash matrix: five journeys (a healthy walk to 100 %, a breach that rolls back, an abort, a
//! promotion with scale-down, a policy deletion), each crashed once at every crash point it passes
//! (src/failpoint.rs). A journey first runs without a crash and traces the points it hits; then, for
//! each point, a fresh copy of the journey (its own namespaces, daemon and mesh simulator) runs with
//! the daemon armed to exit at that point's first hit, the daemon is restarted unarmed, the journey
//! finishes, and the cell is compared with the run without a crash:
//! - the end state (weights, phase, HPA bounds, replicas) is the same;
//! - the canary weights the VirtualService ever had (watched during the whole cell) are the same
//!   sequence: no step repeated or skipped, and once traffic was taken away from the canary it never
//!   got any again; every version's weights sum to 100;
//! - every command and decision acts exactly once: the durable record of each (a transition into
//!   `RollingBack` in `status.history`, by reason) appears as often as without a crash, and each
//!   command or decision Event (`ONCE_REASONS`) was published at least once (Events are
//!   notifications: one published just before a crash is published again by the next daemon).
//!
//! Which cells run: every point of the rollback and abort journeys, and a sample of the others that
//! rotates by the day (`CANARYD_CRASH_SAMPLE_SEED` overrides the day); `CANARYD_CRASH_MATRIX=full`
//! runs every cell (scripts/crash-matrix), `CANARYD_CRASH_ONLY=JOURNEY:POINT:QUALIFIER` just one.
//! `CANARYD_CRASH_PARALLEL` cells run at once (default 4).
//! The matrix goes to stderr and to `target/tmp/crash-matrix.txt`.

mod fixture;
mod support;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use canaryd::resources::policy::RolloutPolicy;
use fixture::analysis::{POLICY, SUCCESS_AND_LATENCY, VS, mesh, set_subset};
use fixture::scaling::{Hpas, STABLE, seed_with_pods};
use fixture::{Seed, cli, daemon_kubeconfig};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams};
use kube::runtime::watcher;
use serde_json::json;
use support::{ChildProc, Prometheus};
use tokio::task::JoinHandle;

/// A whole journey, restarts included.
const JOURNEY_TIMEOUT: Duration = Duration::from_secs(60);
/// After the journey's end: long enough for a wrong write of a restarted daemon to show.
const SETTLE: Duration = Duration::from_secs(3);
/// Events of a command or a decision, which must be published. Progress events (`WeightChanged`,
/// `WaitingForApproval`, `ScaledDown`, ...) are not compared: they repeat after any status conflict.
const ONCE_REASONS: [&str; 8] = [
    "Aborted",
    "AnalysisFailed",
    "ProgressDeadlineExceeded",
    "CapacityUnavailable",
    "PromotedFull",
    "Retry",
    "PauseRequested",
    "ResumeRequested",
];
/// Points sampled per journey outside rollback and abort when not running the full matrix.
const SAMPLE: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Journey {
    Healthy,
    Rollback,
    Abort,
    Promotion,
    Deletion,
}

const JOURNEYS: [Journey; 5] = [
    Journey::Healthy,
    Journey::Rollback,
    Journey::Abort,
    Journey::Promotion,
    Journey::Deletion,
];

impl Journey {
    fn name(self) -> &'static str {
        match self {
            Journey::Healthy => "healthy",
            Journey::Rollback => "rollback",
            Journey::Abort => "abort",
            Journey::Promotion => "promotion",
            Journey::Deletion => "deletion",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Journey::Healthy => "he",
            Journey::Rollback => "rb",
            Journey::Abort => "ab",
            Journey::Promotion => "pr",
            Journey::Deletion => "de",
        }
    }

    fn analysed(self) -> bool {
        matches!(self, Journey::Healthy | Journey::Rollback)
    }

    /// Every point of these journeys runs in CI.
    fn always_full(self) -> bool {
        matches!(self, Journey::Rollback | Journey::Abort)
    }

    fn hpas(self) -> Hpas {
        match self {
            Journey::Promotion | Journey::Deletion => Hpas::Both,
            _ => Hpas::None,
        }
    }

    fn policy(self, seed: &Seed, prom: &Prometheus) -> Result<String> {
        let analysis = SUCCESS_AND_LATENCY.replace("startAfter: 2s", "startAfter: 1s");
        let no_scaling = |text: String| {
            text.replace(
                "  progressDeadline: 10m",
                "  scaling: {enabled: false}\n  progressDeadline: 10m",
            )
        };
        let with_scaling = |steps: &str| {
            let base = seed.policy_yaml();
            let start = base.find("  steps:\n").context("steps")?;
            let end = base.find("  progressDeadline").context("progressDeadline")?;
            Ok::<_, anyhow::Error>(format!(
                "{}  steps:\n{steps}  scaling:\n    scaleDownDelay: 1s\n{}",
                &base[..start],
                &base[end..]
            ))
        };
        let walk = "    - weight: 10\n    - pause: {duration: 1s}\n    - weight: 50\n    - pause: {duration: 1s}\n    - weight: 100\n";
        let hold = "    - weight: 10\n    - pause: {}\n    - weight: 100\n";
        Ok(match self {
            Journey::Healthy => no_scaling(fixture::analysis::policy(seed, prom, walk, &analysis)?),
            Journey::Rollback => no_scaling(fixture::analysis::policy(seed, prom, hold, &analysis)?),
            Journey::Abort => no_scaling(fixture::analysis::policy(seed, prom, hold, "")?),
            Journey::Promotion => with_scaling(walk)?,
            Journey::Deletion => with_scaling(
                "    - weight: 10\n    - pause: {duration: 1s}\n    - weight: 50\n    - pause: {}\n    - weight: 100\n",
            )?,
        })
    }
}

/// What a user sees once the journey is over.
#[derive(Clone, Debug, PartialEq)]
struct EndState {
    /// (stable v1, canary v2) of the managed route.
    weights: (u8, u8),
    /// `gone` once the policy is deleted.
    phase: String,
    hpa: BTreeMap<String, (i32, i32)>,
    replicas: BTreeMap<String, i32>,
}

/// One run of a journey.
#[derive(Debug)]
struct Run {
    /// The daemon exited at the armed point.
    reached: bool,
    /// Points hit, in order of first hit (traced runs only).
    points: Vec<String>,
    end: EndState,
    /// Canary weights the VirtualService had, consecutive repeats folded.
    canary: Vec<u8>,
    /// Versions whose weights did not sum to 100.
    bad_sums: Vec<(u8, u8)>,
    events: BTreeMap<String, u32>,
    /// Decisions recorded in `status.history` (transitions into `RollingBack`), by reason.
    decisions: BTreeMap<String, u32>,
}

/// Every version of the managed route's weights, from before the policy exists.
struct VsWatch {
    seen: Arc<Mutex<Vec<(u8, u8)>>>,
    task: JoinHandle<()>,
}

impl VsWatch {
    async fn start(seed: &Seed) -> Result<Self> {
        let api: Api<DynamicObject> = Api::namespaced_with(
            seed.client.clone(),
            &seed.vs_ns,
            &canaryd::mesh::istio::virtual_service_resource(),
        );
        let seen = Arc::new(Mutex::new(Vec::new()));
        let listed = Arc::new(AtomicBool::new(false));
        let fqdn = format!("istio-test.{}.svc.cluster.local", seed.ns);
        let vs_ns = seed.vs_ns.clone();
        let (seen2, listed2) = (seen.clone(), listed.clone());
        let config = watcher::Config::default().fields(&format!("metadata.name={VS}"));
        let task = tokio::spawn(async move {
            let mut events = watcher(api, config).boxed();
            while let Some(event) = events.next().await {
                let vs = match event {
                    Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => o,
                    Ok(watcher::Event::InitDone) => {
                        listed2.store(true, Ordering::SeqCst);
                        continue;
                    }
                    _ => continue,
                };
                let Some(route) = serde_json::to_value(&vs)
                    .ok()
                    .and_then(|v| v.pointer("/spec/http/1").cloned())
                else {
                    continue;
                };
                let w = canaryd::mesh::routes::route_weights(&route, &vs_ns, &fqdn);
                let get = |s: &str| w.get(s).copied().unwrap_or(0);
                if let Ok(mut seen) = seen2.lock() {
                    seen.push((get("v1"), get("v2")));
                }
            }
        });
        support::wait_until("the VirtualService watch", Duration::from_secs(30), async || {
            Ok(listed.load(Ordering::SeqCst).then_some(()))
        })
        .await?;
        Ok(Self { seen, task })
    }

    fn seen(&self) -> Vec<(u8, u8)> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for VsWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The daemon of one cell: started armed, restarted unarmed whenever it exits.
struct Daemons {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Result<(bool, Vec<ChildProc>)>>,
}

fn spawn_daemon(kubeconfig: &str, ns: &str, env: Option<(&'static str, String)>) -> Result<ChildProc> {
    let mut all_env = vec![("KUBECONFIG", kubeconfig), ("RUST_LOG", "info,kube=warn")];
    if let Some((k, v)) = &env {
        all_env.push((k, v.as_str()));
    }
    support::spawn_bin(
        "canaryd",
        &["run", "--listen", "127.0.0.1:0", "--namespace", ns],
        &all_env,
    )
}

impl Daemons {
    async fn start(ns: &str, armed: Option<&str>) -> Result<Self> {
        let env = match armed {
            Some(point) => ("CANARYD_FAILPOINT", point.to_string()),
            None => ("CANARYD_FAILPOINT_TRACE", "1".to_string()),
        };
        let kubeconfig = daemon_kubeconfig().await?.to_string_lossy().into_owned();
        let first = spawn_daemon(&kubeconfig, ns, Some(env))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, ns) = (stop.clone(), ns.to_string());
        let task = tokio::spawn(async move {
            let mut procs = vec![first];
            let mut reached = false;
            while !stop2.load(Ordering::SeqCst) {
                let last = procs.last_mut().context("no daemon")?;
                if let Some(status) = last.try_wait()? {
                    if status.code() != Some(137) {
                        bail!("the daemon exited with {status}\n{}", last.logs(40));
                    }
                    reached = true;
                    procs.push(spawn_daemon(&kubeconfig, &ns, None)?);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok((reached, procs))
        });
        Ok(Self { stop, task })
    }

    async fn finish(self) -> Result<(bool, Vec<ChildProc>)> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await?
    }
}

fn phase_of(p: &RolloutPolicy) -> String {
    p.status.as_ref().map(|s| s.phase.as_str()).unwrap_or("").to_string()
}

async fn wait_phase(seed: &Seed, phase: &str) -> Result<()> {
    seed.wait_policy(POLICY, phase, JOURNEY_TIMEOUT, |p| phase_of(p) == phase)
        .await
        .map(|_| ())
}

async fn wait_canary(seed: &Seed, v1: u8, v2: u8) -> Result<()> {
    seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", v1), ("v2", v2)], JOURNEY_TIMEOUT)
        .await
}

/// The user's side of a journey, until its end.
async fn drive(journey: Journey, seed: &Seed) -> Result<()> {
    match journey {
        Journey::Healthy => {
            wait_phase(seed, "Succeeded").await?;
            wait_canary(seed, 0, 100).await
        }
        Journey::Rollback => {
            wait_phase(seed, "RolledBack").await?;
            wait_canary(seed, 100, 0).await
        }
        Journey::Abort => {
            wait_phase(seed, "WaitingForApproval").await?;
            let admin = support::control_plane().await?.kubeconfig_path().to_path_buf();
            let (ok, out) = cli(&admin, &["abort", POLICY, "-n", &seed.ns, "--no-wait"]).await?;
            anyhow::ensure!(ok, "abort: {out}");
            wait_phase(seed, "Aborted").await?;
            wait_canary(seed, 100, 0).await
        }
        Journey::Promotion => {
            wait_phase(seed, "Succeeded").await?;
            wait_canary(seed, 0, 100).await?;
            // The header route still sends v1 traffic: v1 is scaled down only once it follows.
            fixture::header_route_to_canary(seed).await?;
            support::wait_until("old stable scaled down", JOURNEY_TIMEOUT, async || {
                let done = seed.replicas(STABLE).await?.spec == 0
                    && seed
                        .policy_json(POLICY)
                        .await?
                        .is_some_and(|p| p["status"]["scaling"].is_null());
                Ok(done.then_some(()))
            })
            .await
        }
        Journey::Deletion => {
            wait_phase(seed, "WaitingForApproval").await?;
            wait_canary(seed, 50, 50).await?;
            let api: Api<RolloutPolicy> = Api::namespaced(seed.client.clone(), &seed.ns);
            api.delete(POLICY, &DeleteParams::default()).await?;
            support::wait_until("the policy gone", JOURNEY_TIMEOUT, async || {
                Ok(seed.policy_json(POLICY).await?.is_none().then_some(()))
            })
            .await
        }
    }
}

async fn end_state(seed: &Seed) -> Result<EndState> {
    let w = seed.weights(&seed.vs_ns, VS, 1).await?;
    let get = |s: &str| w.get(s).copied().unwrap_or(0);
    let phase = match seed.policy_json(POLICY).await? {
        Some(p) => p["status"]["phase"].as_str().unwrap_or("").to_string(),
        None => "gone".into(),
    };
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(seed.client.clone(), &seed.ns);
    let hpa = hpas
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|h| {
            let name = h.metadata.name.clone().unwrap_or_default();
            (name, (h.spec.min_replicas.unwrap_or(1), h.spec.max_replicas))
        })
        .collect();
    let deployments: Api<Deployment> = Api::namespaced(seed.client.clone(), &seed.ns);
    let replicas = deployments
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|d| {
            let spec = d.spec.replicas.unwrap_or(1);
            (d.metadata.name.unwrap_or_default(), spec)
        })
        .collect();
    Ok(EndState {
        weights: (get("v1"), get("v2")),
        phase,
        hpa,
        replicas,
    })
}

/// Rollbacks and aborts as recorded in the policy's history (none once the policy is gone).
async fn decisions(seed: &Seed) -> Result<BTreeMap<String, u32>> {
    let api: Api<RolloutPolicy> = Api::namespaced(seed.client.clone(), &seed.ns);
    let mut counts = BTreeMap::new();
    let history = api.get_opt(POLICY).await?.and_then(|p| p.status).map(|s| s.history);
    for t in history.unwrap_or_default() {
        if t.phase == canaryd::resources::policy::Phase::RollingBack {
            *counts.entry(t.reason).or_default() += 1;
        }
    }
    Ok(counts)
}

/// Events published about the policy, by reason (a repeat within one process counts in its series).
async fn event_counts(seed: &Seed) -> Result<BTreeMap<String, u32>> {
    let api: Api<Event> = Api::namespaced(seed.client.clone(), &seed.ns);
    let mut counts = BTreeMap::new();
    for e in api.list(&ListParams::default()).await?.items {
        if e.regarding.as_ref().and_then(|r| r.name.as_deref()) != Some(POLICY) {
            continue;
        }
        let n = e.series.as_ref().map(|s| s.count.max(1) as u32).unwrap_or(1);
        *counts.entry(e.reason.unwrap_or_default()).or_default() += n;
    }
    Ok(counts)
}

fn traced_points(procs: &[ChildProc]) -> Vec<String> {
    let mut points: Vec<String> = Vec::new();
    for p in procs {
        let text = std::fs::read_to_string(p.stderr_log()).unwrap_or_default();
        for point in text.lines().filter_map(|l| l.strip_prefix("failpoint hit: ")) {
            if !points.iter().any(|q| q == point) {
                points.push(point.to_string());
            }
        }
    }
    points
}

/// Namespaces of a finished cell go, so that their controllers stop working; the policy's finalizer
/// (no daemon left to remove it) is dropped first.
async fn discard(seed: &Seed) {
    let api: Api<DynamicObject> = Api::namespaced_with(
        seed.client.clone(),
        &seed.ns,
        &kube::api::ApiResource::erase::<RolloutPolicy>(&()),
    );
    let patch = json!({"metadata": {"finalizers": null}});
    let _ = api
        .patch(
            POLICY,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await;
    let namespaces: Api<Namespace> = Api::all(seed.client.clone());
    for ns in [&seed.ns, &seed.vs_ns] {
        let _ = namespaces.delete(ns, &DeleteParams::default()).await;
    }
}

/// One journey in namespaces of its own; `armed` is the crash point, None for the traced run.
async fn run_journey(journey: Journey, prefix: &str, armed: Option<&str>, prom: &Prometheus) -> Result<Run> {
    let seed = seed_with_pods(prefix, journey.hpas()).await?;
    let result = run_seeded(journey, &seed, armed, prom).await;
    discard(&seed).await;
    result
}

async fn run_seeded(journey: Journey, seed: &Seed, armed: Option<&str>, prom: &Prometheus) -> Result<Run> {
    let watch = VsWatch::start(seed).await?;
    let _mesh = match journey.analysed() {
        true => {
            let (mesh, addr) = mesh(seed, prom, 100).await?;
            if journey == Journey::Rollback {
                set_subset(&addr, "v2", json!({"successRatio": 0.8})).await?;
            }
            Some(mesh)
        }
        false => None,
    };
    let daemons = Daemons::start(&seed.ns, armed).await?;
    let driven = async {
        seed.apply(&journey.policy(seed, prom)?).await?;
        drive(journey, seed).await?;
        tokio::time::sleep(SETTLE).await;
        anyhow::Ok(())
    }
    .await;
    let (reached, procs) = daemons.finish().await?;
    if let Err(e) = driven {
        let logs: String = procs.iter().map(|p| p.logs(25)).collect::<Vec<_>>().join("\n");
        let now = match seed.policy(POLICY).await.ok().and_then(|p| p.status) {
            Some(s) => format!(
                "phase {} at canary weight {} ({})",
                s.phase.as_str(),
                s.canary_weight,
                s.message.unwrap_or_default()
            ),
            None => "no status".into(),
        };
        bail!(
            "did not finish: {}; {now}; VirtualService canary weights {:?}\n{logs}",
            e.root_cause(),
            watch.seen().iter().map(|(_, c)| *c).collect::<Vec<_>>()
        );
    }
    let seen = watch.seen();
    let mut canary: Vec<u8> = Vec::new();
    for (_, c) in &seen {
        if canary.last() != Some(c) {
            canary.push(*c);
        }
    }
    Ok(Run {
        reached,
        points: traced_points(&procs),
        end: end_state(seed).await?,
        canary,
        bad_sums: seen.into_iter().filter(|(s, c)| s + c != 100).collect(),
        events: event_counts(seed).await?,
        decisions: decisions(seed).await?,
    })
}

/// What differs from the run without a crash; empty when the cell is ok.
fn compare(base: &Run, run: &Run) -> Vec<String> {
    let mut diffs = Vec::new();
    if run.end != base.end {
        diffs.push(format!("end state {:?} (expected {:?})", run.end, base.end));
    }
    // Traffic taken away: the canary's weight going to 0 after it had some.
    if let Some(i) = run.canary.windows(2).position(|w| w[0] > 0 && w[1] == 0)
        && run.canary[i + 1..].iter().any(|w| *w > 0)
    {
        diffs.push(format!(
            "canary got traffic again after it was taken away: {:?}",
            run.canary
        ));
    } else if run.canary != base.canary {
        diffs.push(format!("canary weights {:?} (expected {:?})", run.canary, base.canary));
    }
    if !run.bad_sums.is_empty() {
        diffs.push(format!("weights not summing to 100: {:?}", run.bad_sums));
    }
    if run.decisions != base.decisions {
        diffs.push(format!("decisions {:?} (expected {:?})", run.decisions, base.decisions));
    }
    let events: Vec<&String> = base
        .events
        .keys()
        .filter(|r| ONCE_REASONS.contains(&r.as_str()) && !run.events.contains_key(*r))
        .collect();
    if !events.is_empty() {
        diffs.push(format!("no Event {events:?}"));
    }
    diffs
}

/// Which traced points become cells: all, or a sample rotating by the day.
fn select(journey: Journey, points: &[String], full: bool, seed: u64) -> Vec<String> {
    if full || journey.always_full() || points.len() <= SAMPLE {
        return points.to_vec();
    }
    let offset = (seed as usize).wrapping_mul(SAMPLE) % points.len();
    let mut picked: Vec<String> = (0..SAMPLE)
        .map(|i| points[(offset + i * points.len() / SAMPLE) % points.len()].clone())
        .collect();
    picked.dedup();
    picked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_anywhere_resumes_exactly() -> Result<()> {
    let started = Instant::now();
    let full = std::env::var("CANARYD_CRASH_MATRIX").is_ok_and(|v| v == "full");
    let day = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0);
    let sample_seed = std::env::var("CANARYD_CRASH_SAMPLE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(day);
    let parallel: usize = std::env::var("CANARYD_CRASH_PARALLEL")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    support::control_plane_with_nodes().await?;
    let prom = Arc::new(Prometheus::start().await?);

    // The runs without a crash: the reference, and the points each journey passes.
    let bases = futures::future::join_all(JOURNEYS.iter().map(|&j| {
        let prom = prom.clone();
        async move { (j, run_journey(j, &format!("cr-{}-base", j.short()), None, &prom).await) }
    }))
    .await;
    let mut report = String::new();
    let mut failed = 0;
    let mut baselines = BTreeMap::new();
    for (j, base) in bases {
        match base {
            Ok(b) => {
                baselines.insert(j, Arc::new(b));
            }
            Err(e) => {
                failed += 1;
                let _ = writeln!(report, "{:<10} (no crash)  FAILED: {e:#}", j.name());
            }
        }
    }

    let mut cells = Vec::new();
    // `CANARYD_CRASH_ONLY=journey:point` runs one cell (after the runs without a crash).
    let only = std::env::var("CANARYD_CRASH_ONLY").ok();
    for (&j, base) in &baselines {
        for point in select(j, &base.points, full || only.is_some(), sample_seed) {
            if only.as_ref().is_some_and(|o| *o != format!("{}:{point}", j.name())) {
                continue;
            }
            cells.push((j, point, base.clone()));
        }
    }
    let results: Vec<(Journey, String, String, bool)> = futures::stream::iter(cells.into_iter().enumerate())
        .map(|(i, (j, point, base))| {
            let prom = prom.clone();
            async move {
                let prefix = format!("cr-{}-{i}", j.short());
                let armed = format!("{point}@1");
                let (verdict, ok) = match run_journey(j, &prefix, Some(&armed), &prom).await {
                    Err(e) => (format!("FAILED: {}", first_lines(&format!("{e:#}"), 1)), false),
                    Ok(run) => {
                        let diffs = compare(&base, &run);
                        match (diffs.is_empty(), run.reached) {
                            (true, true) => ("ok".to_string(), true),
                            (true, false) => ("not reached".to_string(), true),
                            (false, reached) => (
                                format!(
                                    "FAILED{}: {}",
                                    if reached { "" } else { " (not reached)" },
                                    diffs.join("; ")
                                ),
                                false,
                            ),
                        }
                    }
                };
                (j, point, verdict, ok)
            }
        })
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    let mut results = results;
    results.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let cells = results.len();
    for (j, point, verdict, ok) in results {
        failed += usize::from(!ok);
        let _ = writeln!(report, "{:<10} {:<40} {verdict}", j.name(), point);
    }
    let mode = if let Some(o) = &only {
        format!("only {o}")
    } else if full {
        "full matrix".to_string()
    } else {
        format!("rollback and abort in full, a sample of {SAMPLE} points of the others (seed {sample_seed})")
    };
    let summary = format!(
        "crash matrix ({mode}): {cells} cells, {failed} failed, {:.0?}\n",
        started.elapsed()
    );
    let text = format!("{summary}{report}");
    eprintln!("{text}");
    let file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("crash-matrix.txt");
    std::fs::write(&file, &text).with_context(|| format!("writing {}", file.display()))?;
    anyhow::ensure!(failed == 0, "{failed} crash-matrix cells failed:\n{text}");
    Ok(())
}

fn first_lines(text: &str, n: usize) -> String {
    text.lines().take(n).collect::<Vec<_>>().join(" | ")
}
