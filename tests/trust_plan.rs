//! Issue 8, the planner's part: a rollback is recorded before traffic moves, a canary that cannot
//! serve loses its traffic, abort and the deadline work whatever else is wrong, no traffic goes to a
//! version without Ready pods, every weight is judged over a whole window at it, shortened steps end
//! at 100 %, and (tests/trust_capacity.rs) `promote --full` waits for capacity. The daemon is a real process with deploy/'s RBAC.

mod fixture;
mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use canaryd::mesh::routes::route_weights;
use canaryd::resources::policy::{Phase, RolloutPolicy, RolloutPolicyStatus};
use fixture::analysis::{SUCCESS_AND_LATENCY, mesh, policy as analysis_policy, set_subset};
use fixture::{Seed, cli, ensure, mark_ready, operator_kubeconfig, seed, seed_yaml, start_daemon};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::runtime::watcher;
use serde_json::json;
use support::Prometheus;

const T: Duration = Duration::from_secs(30);
const VS: &str = "istio-test-vs";
const POLICY: &str = "istio-test";

fn phase(p: &RolloutPolicy) -> Phase {
    p.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

fn status(p: &RolloutPolicy) -> RolloutPolicyStatus {
    p.status.clone().unwrap_or_default()
}

fn last_reason(p: &RolloutPolicy) -> String {
    status(p).history.last().map(|t| t.reason.clone()).unwrap_or_default()
}

/// The seed policy, waiting for approval at 50 % (10 → pause 2s → 50 → approval → 100).
async fn at_fifty(seed: &Seed, policy: &str) -> Result<()> {
    seed.apply(policy).await?;
    seed.wait_policy(POLICY, "WaitingForApproval", T, |p| {
        phase(p) == Phase::WaitingForApproval
    })
    .await?;
    seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 50), ("v2", 50)], T)
        .await
}

/// The weights stay `want` for `window`.
async fn weights_hold(seed: &Seed, want: &[(&str, u8)], window: Duration) -> Result<()> {
    let until = Instant::now() + window;
    while Instant::now() < until {
        let w = seed.weights(&seed.vs_ns, VS, 1).await?;
        let want: std::collections::BTreeMap<String, u8> = want.iter().map(|(s, w)| (s.to_string(), *w)).collect();
        ensure(w == want, format!("weights moved to {w:?}, want {want:?}"))?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The seed's DestinationRule document, edited by `edit`.
fn destination_rule(seed: &Seed, edit: impl Fn(String) -> String) -> String {
    let istio = seed_yaml("istio.yaml", &seed.ns, &seed.vs_ns);
    let dr = istio.split("\n---\n").next().unwrap_or_default().to_string();
    edit(dr)
}

async fn set_stable_ready(seed: &Seed, replicas: i32) -> Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(seed.client.clone(), &seed.ns);
    deployments
        .patch(
            "istio-test-v1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await?;
    mark_ready(&seed.client, &seed.ns, "istio-test-v1", replicas).await
}

// ---------------------------------------------------------------------------------------------
// Defect 4: a canary that cannot serve loses its traffic, durably and with a reason.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_cannot_serve_loses_its_traffic() -> Result<()> {
    struct Case {
        prefix: &'static str,
        what: &'static str,
    }
    let cases = [
        Case {
            prefix: "tp-gone",
            what: "canary Deployment deleted",
        },
        Case {
            prefix: "tp-subset",
            what: "canary subset removed from the DestinationRule",
        },
    ];
    for case in cases {
        let seed = seed(case.prefix).await?;
        let daemon = start_daemon(&seed.ns).await?;
        let run = async {
            at_fifty(&seed, &seed.policy_yaml()).await?;
            if case.prefix == "tp-gone" {
                let deployments: Api<Deployment> = Api::namespaced(seed.client.clone(), &seed.ns);
                deployments.delete("istio-test-v2", &DeleteParams::default()).await?;
            } else {
                let dr = destination_rule(&seed, |d| {
                    d.replace("    - name: v2\n      labels: {version: v2}\n", "")
                });
                ensure(!dr.contains("name: v2"), format!("edit failed: {dr}"))?;
                seed.apply(&dr).await?;
            }
            // A DestinationRule edit does not wake the policy: it is seen within a resync (30 s).
            seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 100), ("v2", 0)], Duration::from_secs(45))
                .await?;
            let p = seed
                .wait_policy(POLICY, "RolledBack", T, |p| phase(p) == Phase::RolledBack)
                .await?;
            let st = status(&p);
            ensure(last_reason(&p) == "CanaryUnavailable", format!("{st:#?}"))?;
            ensure(
                st.history.iter().any(|t| t.phase == Phase::RollingBack),
                format!("no RollingBack recorded: {st:#?}"),
            )?;
            ensure(
                st.canary.and_then(|c| c.halted) == Some(Phase::RolledBack),
                "canary not halted",
            )?;
            let events = seed.events(POLICY, "CanaryUnavailable").await?;
            ensure(
                events.iter().any(|e| e.contains("cannot serve")),
                format!("events: {events:?}"),
            )?;
            // It stays on stable.
            weights_hold(&seed, &[("v1", 100), ("v2", 0)], Duration::from_secs(2)).await
        };
        run.await
            .map_err(|e| fixture::fail_with_logs(&daemon, e.context(case.what)))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Defect 4: another problem holds the weights, but abort and the progress deadline still work.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_works_while_a_problem_holds_the_rollout() -> Result<()> {
    let seed = seed("tp-held").await?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        at_fifty(&seed, &seed.policy_yaml()).await?;
        let host = format!("istio-test.{}.svc.cluster.local", seed.ns);
        seed.apply(&destination_rule(&seed, |d| d.replace(&host, "elsewhere.example.com")))
            .await?;
        // DestinationRules are read from a cache without waking the policy: seen within a resync.
        let held = seed
            .wait_policy(POLICY, "Invalid", Duration::from_secs(45), |p| {
                phase(p) == Phase::Invalid
            })
            .await?;
        ensure(
            last_reason(&held) == "DestinationRuleHostMismatch"
                && status(&held)
                    .message
                    .unwrap_or_default()
                    .contains("holding canary v2 at 50%"),
            format!("{:#?}", status(&held)),
        )?;
        weights_hold(&seed, &[("v1", 50), ("v2", 50)], Duration::from_secs(2)).await?;

        let operator = operator_kubeconfig(&seed).await?;
        let (ok, out) = cli(&operator, &["abort", POLICY, "-n", &seed.ns, "--no-wait"]).await?;
        ensure(ok, out)?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 100), ("v2", 0)], T)
            .await?;
        seed.wait_policy(POLICY, "Aborted", T, |p| phase(p) == Phase::Aborted)
            .await?;
        weights_hold(&seed, &[("v1", 100), ("v2", 0)], Duration::from_secs(2)).await
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_progress_deadline_ends_a_rollout_held_by_a_problem() -> Result<()> {
    let seed = seed("tp-deadline").await?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        let policy = seed
            .policy_yaml()
            .replace("progressDeadline: 10m", "progressDeadline: 3s");
        at_fifty(&seed, &policy).await?;
        let host = format!("istio-test.{}.svc.cluster.local", seed.ns);
        seed.apply(&destination_rule(&seed, |d| d.replace(&host, "elsewhere.example.com")))
            .await?;
        // DestinationRules are read from a cache without waking the policy: seen within a resync.
        seed.wait_policy(POLICY, "Invalid", Duration::from_secs(45), |p| {
            phase(p) == Phase::Invalid
        })
        .await?;
        let seen = Instant::now();
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 100), ("v2", 0)], T)
            .await?;
        let took = seen.elapsed();
        ensure(
            took >= Duration::from_secs(2) && took < Duration::from_secs(10),
            format!("rolled back {took:?} after the problem was seen"),
        )?;
        let p = seed
            .wait_policy(POLICY, "RolledBack", T, |p| phase(p) == Phase::RolledBack)
            .await?;
        ensure(
            last_reason(&p) == "ProgressDeadlineExceeded",
            format!("{:#?}", status(&p)),
        )
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}

// ---------------------------------------------------------------------------------------------
// Defect 1: the verdict is in status before the weights move.

#[derive(Debug, Clone)]
enum Seen {
    Policy {
        phase: Phase,
        halted: Option<Phase>,
        command: Option<String>,
    },
    Weights(u8, u8),
}

fn rv_of(meta: &kube::api::ObjectMeta) -> u64 {
    meta.resource_version
        .as_deref()
        .and_then(|rv| rv.parse().ok())
        .unwrap_or(0)
}

/// What the watchers saw, by resourceVersion.
type Log = Arc<Mutex<Vec<(u64, Seen)>>>;

/// Every version of the policy and the VirtualService, in etcd order.
fn record(seed: &Seed) -> (Log, Vec<tokio::task::JoinHandle<()>>) {
    let seen: Log = Arc::default();
    let policies: Api<RolloutPolicy> = Api::namespaced(seed.client.clone(), &seed.ns);
    let log = seen.clone();
    let p = tokio::spawn(async move {
        let mut events = watcher(policies, watcher::Config::default()).boxed();
        while let Some(Ok(e)) = events.next().await {
            if let watcher::Event::Apply(p) | watcher::Event::InitApply(p) = e {
                let st = status(&p);
                let entry = Seen::Policy {
                    phase: st.phase,
                    halted: st.canary.and_then(|c| c.halted),
                    command: st.last_command_id,
                };
                if let Ok(mut log) = log.lock() {
                    log.push((rv_of(&p.metadata), entry));
                }
            }
        }
    });
    let vss: Api<DynamicObject> = Api::namespaced_with(
        seed.client.clone(),
        &seed.vs_ns,
        &canaryd::mesh::istio::virtual_service_resource(),
    );
    let fqdn = format!("istio-test.{}.svc.cluster.local", seed.ns);
    let vs_ns = seed.vs_ns.clone();
    let log = seen.clone();
    let v = tokio::spawn(async move {
        let mut events = watcher(vss, watcher::Config::default()).boxed();
        while let Some(Ok(e)) = events.next().await {
            if let watcher::Event::Apply(o) | watcher::Event::InitApply(o) = e {
                let Ok(value) = serde_json::to_value(&o) else { continue };
                let Some(route) = value.pointer("/spec/http/1") else {
                    continue;
                };
                let w = route_weights(route, &vs_ns, &fqdn);
                let entry = Seen::Weights(w.get("v1").copied().unwrap_or(0), w.get("v2").copied().unwrap_or(0));
                if let Ok(mut log) = log.lock() {
                    log.push((rv_of(&o.metadata), entry));
                }
            }
        }
    });
    (seen, vec![p, v])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_is_recorded_before_the_weights_move() -> Result<()> {
    let seed = seed("tp-record").await?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        at_fifty(&seed, &seed.policy_yaml()).await?;
        let (seen, tasks) = record(&seed);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let operator = operator_kubeconfig(&seed).await?;
        let (ok, out) = cli(&operator, &["abort", POLICY, "-n", &seed.ns, "--no-wait"]).await?;
        ensure(ok, out)?;
        seed.wait_policy(POLICY, "Aborted", T, |p| phase(p) == Phase::Aborted)
            .await?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 100), ("v2", 0)], T)
            .await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        for t in tasks {
            t.abort();
        }
        let mut log = seen.lock().map(|l| l.clone()).unwrap_or_default();
        log.sort_by_key(|(rv, _)| *rv);
        let recorded = log
            .iter()
            .find(|(_, s)| {
                matches!(
                    s,
                    Seen::Policy {
                        halted: Some(Phase::Aborted),
                        ..
                    }
                )
            })
            .cloned()
            .with_context(|| format!("no halted status seen: {log:#?}"))?;
        let moved = log
            .iter()
            .find(|(_, s)| matches!(s, Seen::Weights(100, 0)))
            .cloned()
            .with_context(|| format!("no weight write seen: {log:#?}"))?;
        ensure(
            recorded.0 < moved.0,
            format!(
                "weights moved (rv {}) before the abort was recorded (rv {}): {log:#?}",
                moved.0, recorded.0
            ),
        )?;
        ensure(
            matches!(
                &recorded.1,
                Seen::Policy {
                    phase: Phase::RollingBack,
                    command: Some(_),
                    ..
                }
            ),
            format!("the record is RollingBack with the command id: {recorded:?}"),
        )?;
        // After the record, the canary never gets traffic again.
        let after: Vec<_> = log
            .iter()
            .filter(|(rv, s)| *rv > moved.0 && matches!(s, Seen::Weights(_, w) if *w > 0))
            .collect();
        ensure(after.is_empty(), format!("traffic back on the canary: {after:?}"))
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}

// ---------------------------------------------------------------------------------------------
// Defect 8: no traffic to a version without Ready pods, stable included.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_traffic_goes_to_a_stable_without_ready_pods() -> Result<()> {
    let seed = seed("tp-stable").await?;
    // A promotion happened under an earlier policy: v2 carries everything and v1 was scaled to zero.
    let fqdn = format!("istio-test.{}.svc.cluster.local", seed.ns);
    let istio = seed_yaml("istio.yaml", &seed.ns, &seed.vs_ns);
    let vs = istio.split("\n---\n").nth(1).unwrap_or_default().replace(
        &format!(
            "    - name: primary\n      route:\n        - destination:\n            host: {fqdn}\n            subset: v1\n"
        ),
        &format!(
            "    - name: primary\n      route:\n        - destination:\n            host: {fqdn}\n            subset: v1\n          weight: 0\n        - destination:\n            host: {fqdn}\n            subset: v2\n          weight: 100\n"
        ),
    );
    seed.apply(&vs).await?;
    seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 0), ("v2", 100)], T)
        .await?;
    set_stable_ready(&seed, 0).await?;
    let mut daemon = start_daemon(&seed.ns).await?;
    let run = async {
        // The policy is recreated naming v1 as stable.
        seed.apply(&seed.policy_yaml()).await?;
        let p = seed
            .wait_policy(POLICY, "StableNotReady", T, |p| last_reason(p) == "StableNotReady")
            .await?;
        ensure(
            status(&p)
                .message
                .unwrap_or_default()
                .contains("istio-test-v1 has no Ready pods"),
            format!("{:#?}", status(&p)),
        )?;
        ensure(
            !seed.events(POLICY, "StableNotReady").await?.is_empty(),
            "no StableNotReady event",
        )?;
        weights_hold(&seed, &[("v1", 0), ("v2", 100)], Duration::from_secs(2)).await?;
        set_stable_ready(&seed, 1).await?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 90), ("v2", 10)], T)
            .await
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))?;

    // A rollback toward a stable that lost its pods is recorded, held, survives a restart, and
    // moves the traffic once stable is Ready again.
    let run = async {
        seed.wait_policy(POLICY, "WaitingForApproval", T, |p| {
            phase(p) == Phase::WaitingForApproval
        })
        .await?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 50), ("v2", 50)], T)
            .await?;
        set_stable_ready(&seed, 0).await?;
        let operator = operator_kubeconfig(&seed).await?;
        let (ok, out) = cli(&operator, &["abort", POLICY, "-n", &seed.ns, "--no-wait"]).await?;
        ensure(ok, out)?;
        let p = seed
            .wait_policy(POLICY, "RollingBack, held", T, |p| {
                phase(p) == Phase::RollingBack && last_reason(p) == "StableNotReady"
            })
            .await?;
        ensure(
            status(&p).message.unwrap_or_default().contains("certain outage"),
            format!("{:#?}", status(&p)),
        )?;
        weights_hold(&seed, &[("v1", 50), ("v2", 50)], Duration::from_secs(2)).await?;
        Ok::<_, anyhow::Error>(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))?;
    daemon.kill()?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let p = seed.policy(POLICY).await?;
        ensure(phase(&p) == Phase::RollingBack, format!("{:#?}", status(&p)))?;
        set_stable_ready(&seed, 1).await?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 100), ("v2", 0)], T)
            .await?;
        seed.wait_policy(POLICY, "Aborted", T, |p| phase(p) == Phase::Aborted)
            .await?;
        Ok(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}

// ---------------------------------------------------------------------------------------------
// Defect 10: steps shortened under a rollout end with the canary at 100 %.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shortened_steps_end_with_the_canary_at_100() -> Result<()> {
    let seed = seed("tp-short").await?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        let policy = seed.policy_yaml();
        at_fifty(&seed, &policy).await?;
        let start = policy.find("  steps:\n").context("steps")?;
        let end = policy.find("  progressDeadline").context("progressDeadline")?;
        let shortened = format!(
            "{}  steps:\n    - weight: 10\n    - weight: 100\n{}",
            &policy[..start],
            &policy[end..]
        );
        seed.apply(&shortened).await?;
        let p = seed
            .wait_policy(POLICY, "Succeeded", T, |p| phase(p) == Phase::Succeeded)
            .await?;
        let weights = seed.weights(&seed.vs_ns, VS, 1).await?;
        ensure(
            weights.get("v2") == Some(&100) && weights.get("v1") == Some(&0),
            format!("Succeeded with weights {weights:?}: {:#?}", status(&p)),
        )
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}

// ---------------------------------------------------------------------------------------------
// Defects 2 and 3, with the real Prometheus scraping the mesh simulator.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analysis_added_mid_rollout_judges_the_canary() -> Result<()> {
    let seed = seed("tp-added").await?;
    let prom = Prometheus::start().await?;
    let (_mesh, addr) = mesh(&seed, &prom, 400).await?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        let steps = "    - weight: 10\n    - pause: {}\n    - weight: 100\n";
        let with = analysis_policy(&seed, &prom, steps, SUCCESS_AND_LATENCY)?;
        let start = with.find("  analysis:").context("analysis")?;
        seed.apply(&with[..start]).await?;
        seed.wait_policy(POLICY, "WaitingForApproval", T, |p| {
            phase(p) == Phase::WaitingForApproval
        })
        .await?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 90), ("v2", 10)], T)
            .await?;
        set_subset(&addr, "v2", json!({"successRatio": 0.9})).await?;
        seed.apply(&with).await?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 100), ("v2", 0)], Duration::from_secs(60))
            .await?;
        let p = seed
            .wait_policy(POLICY, "RolledBack", T, |p| phase(p) == Phase::RolledBack)
            .await?;
        ensure(last_reason(&p) == "AnalysisFailed", format!("{:#?}", status(&p)))
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_weight_waits_for_a_whole_window_at_it() -> Result<()> {
    let seed = seed("tp-window").await?;
    let prom = Prometheus::start().await?;
    let (_mesh, _) = mesh(&seed, &prom, 400).await?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        let steps = "    - weight: 10\n    - weight: 50\n    - weight: 100\n";
        seed.apply(&analysis_policy(&seed, &prom, steps, SUCCESS_AND_LATENCY)?)
            .await?;
        let p = seed
            .wait_policy(POLICY, "Succeeded", Duration::from_secs(90), |p| {
                phase(p) == Phase::Succeeded
            })
            .await?;
        let history = status(&p).history;
        let at = |reason: &str, weight: Option<u8>| {
            history
                .iter()
                .find(|t| t.reason == reason && weight.is_none_or(|w| t.canary_weight == w))
                .map(|t| t.at)
        };
        let marks = [
            at("WeightChanged", Some(10)),
            at("WeightChanged", Some(50)),
            at("WeightChanged", Some(100)),
            at("Promoted", None),
        ];
        let marks: Vec<_> = marks
            .into_iter()
            .collect::<Option<_>>()
            .with_context(|| format!("{history:#?}"))?;
        // Every metric's window is 5 s: no weight is left (or promoted) on a check that saw less.
        for pair in marks.windows(2) {
            let gap = pair[1].as_millisecond() - pair[0].as_millisecond();
            ensure(
                gap >= 5000,
                format!("{}ms between {} and {}: {history:#?}", gap, pair[0], pair[1]),
            )?;
        }
        Ok(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}

// ---------------------------------------------------------------------------------------------
// Issue 16, item 0: Git moving on mid-judgement never sends traffic back to a version it no longer names.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_moving_on_at_100_adopts_the_canary_and_never_resurrects_the_old_stable() -> Result<()> {
    let seed = seed("tp-declared").await?;
    let daemon = start_daemon(&seed.ns).await?;
    let policy = seed.policy_yaml();
    let start = policy.find("  steps:\n").context("steps")?;
    let end = policy.find("  progressDeadline").context("progressDeadline")?;
    // v2 reaches 100 % and is held there, judged, until `canaryd promote`.
    let steps = "  steps:\n    - weight: 50\n    - weight: 100\n    - pause: {}\n";
    let held = format!("{}{steps}{}", &policy[..start], &policy[end..]);
    let run = async {
        seed.apply(&held).await?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 0), ("v2", 100)], T)
            .await?;
        let p = seed
            .wait_policy(POLICY, "WaitingForApproval at 100", T, |p| {
                phase(p) == Phase::WaitingForApproval && status(p).canary_weight == 100
            })
            .await?;
        ensure(status(&p).canary.is_some(), "v2 not in judgement")?;
        // The user ships v3 as they would: its Deployment (the seed's DestinationRule has subset v3),
        // then Git says stable v2, canary v3.
        let app = seed_yaml("app.yaml", &seed.ns, &seed.vs_ns);
        let v2 = app
            .split("\n---\n")
            .find(|d| d.contains("name: istio-test-v2"))
            .context("v2")?;
        seed.apply(&v2.replace("v2", "v3")).await?;
        mark_ready(&seed.client, &seed.ns, "istio-test-v3", 1).await?;
        let moved_on = held
            .replace(
                "stable: {subset: v1, deployment: istio-test-v1}",
                "stable: {subset: v2, deployment: istio-test-v2}",
            )
            .replace(
                "canary: {subset: v2, deployment: istio-test-v2}",
                "canary: {subset: v3, deployment: istio-test-v3}",
            );
        ensure(moved_on.contains("canary: {subset: v3"), "policy edit did not apply")?;
        // Watch the route through the whole transition: v1 must never get traffic again.
        let done = std::sync::atomic::AtomicBool::new(false);
        let seen = Mutex::new(Vec::new());
        let watch = async {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let w = seed.weights(&seed.vs_ns, VS, 1).await?;
                if let Ok(mut s) = seen.lock() {
                    s.push(w);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok::<_, anyhow::Error>(())
        };
        let change = async {
            let result = async {
                seed.apply(&moved_on).await?;
                // v3 walks 50 → 100 against v2 and waits for approval there.
                seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 0), ("v2", 0), ("v3", 100)], T)
                    .await?;
                seed.wait_policy(POLICY, "v3 WaitingForApproval", T, |p| {
                    phase(p) == Phase::WaitingForApproval && status(p).canary.as_ref().is_some_and(|c| c.subset == "v3")
                })
                .await?;
                Ok::<_, anyhow::Error>(())
            }
            .await;
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            result
        };
        let (watched, changed) = tokio::join!(watch, change);
        let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
        for w in &seen {
            ensure(
                w.get("v1").copied().unwrap_or(0) == 0,
                format!("v1, no longer named, got traffic: {w:?} (all samples: {seen:?})"),
            )?;
        }
        watched?;
        changed?;
        ensure(seen.len() >= 3, format!("too few samples: {seen:?}"))?;
        let p = seed.policy(POLICY).await?;
        let st = status(&p);
        ensure(
            st.stable.as_ref().map(|s| s.subset.as_str()) == Some("v2")
                && st.canary.as_ref().map(|c| c.subset.as_str()) == Some("v3"),
            format!("v3 not rolled out against v2: {st:#?}"),
        )?;
        let reasons: Vec<&str> = st.history.iter().map(|t| t.reason.as_str()).collect();
        ensure(
            reasons.contains(&"StableChanged") && !reasons.contains(&"CanaryChanged"),
            format!("{reasons:?}"),
        )?;
        let started = st
            .history
            .iter()
            .rfind(|t| t.reason == "RolloutStarted")
            .context("no RolloutStarted")?;
        ensure(started.message.contains("against stable v2"), started.message.clone())?;
        ensure(
            !seed.events(POLICY, "StableChanged").await?.is_empty(),
            "no StableChanged event",
        )
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}
