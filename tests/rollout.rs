//! The rollout engine against the real API server: the daemon (a real process, with exactly the RBAC
//! of deploy/) walks the seed scenario's weights; people steer it with the CLI.

mod fixture;
mod support;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use canaryd::resources::policy::{Phase, RolloutPolicy};
use fixture::{Seed, cli, ensure, mark_ready, operator_kubeconfig, seed, start_daemon};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);
const VS: &str = "istio-test-vs";
const POLICY: &str = "istio-test";

fn phase(p: &RolloutPolicy) -> Phase {
    p.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

/// The VirtualService spec with the managed route's weights and the added canary destination taken
/// out: what must stay byte-identical.
fn without_weights(vs: &Value) -> Value {
    let mut spec = vs["spec"].clone();
    if let Some(routes) = spec.pointer_mut("/http/1/route").and_then(Value::as_array_mut) {
        routes.retain(|d| d.pointer("/destination/subset") != Some(&json!("v2")));
        for d in routes.iter_mut() {
            if let Some(d) = d.as_object_mut() {
                d.remove("weight");
            }
        }
    }
    json!({"spec": spec, "labels": vs["metadata"]["labels"], "annotations": vs["metadata"]["annotations"]})
}

async fn assert_untouched(seed: &Seed, before: &Value) -> Result<()> {
    let now = seed.vs(&seed.vs_ns, VS).await?;
    ensure(
        now["spec"]["http"][0] == before["spec"]["http"][0],
        format!("header route changed: {}", now["spec"]["http"][0]),
    )?;
    ensure(
        without_weights(&now) == without_weights(before),
        format!(
            "more than weights changed:\nbefore {}\nnow    {}",
            without_weights(before),
            without_weights(&now)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_scenario_walks_to_v2_touching_only_weights() -> Result<()> {
    let seed = seed("seed").await?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        let before = seed.vs(&seed.vs_ns, VS).await?;
        seed.apply(&seed.policy_yaml()).await?;

        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 90), ("v2", 10)], T)
            .await?;
        assert_untouched(&seed, &before).await?;

        let waiting = seed
            .wait_policy(POLICY, "WaitingForApproval", T, |p| {
                phase(p) == Phase::WaitingForApproval
            })
            .await?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 50), ("v2", 50)], T)
            .await?;
        assert_untouched(&seed, &before).await?;
        let status = waiting.status.clone().unwrap_or_default();
        ensure(
            status.canary_weight == 50 && status.step == Some(3),
            format!("{status:?}"),
        )?;
        ensure(
            status
                .pending_approval
                .as_deref()
                .unwrap_or("")
                .contains("canaryd promote"),
            format!("pending approval: {:?}", status.pending_approval),
        )?;
        // It waits for a person, not for time.
        tokio::time::sleep(Duration::from_secs(3)).await;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 50), ("v2", 50)], T)
            .await?;

        // An approver (deploy/roles.yaml: creates RolloutCommands, never writes the policy) promotes it.
        let operator = operator_kubeconfig(&seed).await?;
        let (ok, out) = cli(&operator, &["promote", POLICY, "-n", &seed.ns]).await?;
        ensure(ok, format!("promote failed: {out}"))?;
        let done = seed
            .wait_policy(POLICY, "Succeeded", T, |p| phase(p) == Phase::Succeeded)
            .await?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 0), ("v2", 100)], T)
            .await?;
        assert_untouched(&seed, &before).await?;
        let status = done.status.unwrap_or_default();
        ensure(
            status.stable.as_ref().map(|s| s.subset.as_str()) == Some("v2"),
            format!("stable: {:?}", status.stable),
        )?;
        ensure(done.spec.stable.subset == "v1", "spec is never edited")?;

        // Every transition has an Event; the approval names who gave it.
        for reason in [
            "RolloutStarted",
            "WeightChanged",
            "Pausing",
            "WaitingForApproval",
            "Promoted",
        ] {
            ensure(
                !seed.events(POLICY, reason).await?.is_empty(),
                format!("no {reason} event"),
            )?;
        }
        let promoted = seed.events(POLICY, "Promoted").await?.join(" | ");
        ensure(
            promoted.contains(&format!("by system:serviceaccount:{}:operator", seed.ns)),
            format!("promote events: {promoted}"),
        )?;

        let (ok, out) = cli(&operator, &["status", "-n", &seed.ns]).await?;
        // After promotion v2 is the stable and holds all traffic.
        ensure(
            ok && out.contains("Succeeded") && out.contains("v2") && out.contains("100/0"),
            format!("status: {out}"),
        )?;

        // kubectl's printer columns.
        let req = http::Request::get(format!(
            "/apis/canaryd.io/v1alpha1/namespaces/{}/rolloutpolicies",
            seed.ns
        ))
        .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
        .body(Vec::new())?;
        let table: Value = seed.client.request(req).await?;
        let columns: Vec<&str> = table["columnDefinitions"]
            .as_array()
            .context("columnDefinitions")?
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        ensure(
            columns == ["Name", "Phase", "Stable", "Canary", "Weight", "Step", "Age"],
            format!("{columns:?}"),
        )?;
        let cells = &table["rows"][0]["cells"];
        ensure(cells[1] == "Succeeded" && cells[2] == "v2", format!("row: {cells}"))?;
        Ok(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}

/// A policy at rest changes nothing, so it has no finalizer (deleting it needs no cleanup) and no
/// Event: one status write each when a fleet of them appears at once. The finalizer comes before
/// the first change, the weights of a rollout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_at_rest_gets_its_finalizer_only_before_its_first_change() -> Result<()> {
    let seed = seed("atrest").await?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        let with_canary = seed.policy_yaml();
        let at_rest: String = with_canary
            .lines()
            .filter(|l| !l.trim_start().starts_with("canary:"))
            .map(|l| format!("{l}\n"))
            .collect();
        seed.apply(&at_rest).await?;
        let healthy = seed
            .wait_policy(POLICY, "Healthy", T, |p| {
                p.status
                    .as_ref()
                    .is_some_and(|s| s.phase == Phase::Healthy && s.observed_generation == p.metadata.generation)
            })
            .await?;
        ensure(
            healthy.metadata.finalizers.as_deref().unwrap_or_default().is_empty(),
            format!("finalizers at rest: {:?}", healthy.metadata.finalizers),
        )?;
        ensure(
            seed.events(POLICY, "NoCanary").await?.is_empty(),
            "no Event for a policy first seen at rest",
        )?;
        // A canary: the finalizer is there by the time the weights move.
        seed.apply(&with_canary).await?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 90), ("v2", 10)], T)
            .await?;
        let rolling = seed.policy(POLICY).await?;
        ensure(
            rolling
                .metadata
                .finalizers
                .as_deref()
                .unwrap_or_default()
                .iter()
                .any(|f| f == "canaryd.io/cleanup"),
            format!("finalizers while rolling out: {:?}", rolling.metadata.finalizers),
        )?;
        ensure(
            !seed.events(POLICY, "RolloutStarted").await?.is_empty(),
            "the rollout's start has its Event",
        )?;
        Ok(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_virtual_services_are_stepped_together() -> Result<()> {
    let seed = seed("twovs").await?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        let gateway_vs = [
            "apiVersion: networking.istio.io/v1",
            "kind: VirtualService",
            &format!("metadata: {{name: istio-test-public, namespace: {}}}", seed.vs_ns),
            "spec:",
            "  hosts: [istio-test.example.com]",
            "  gateways: [istio-system/public-gateway]",
            "  http:",
            "    - route:",
            &format!(
                "        - destination: {{host: istio-test.{}.svc.cluster.local, subset: v1}}",
                seed.ns
            ),
        ]
        .join("\n");
        seed.apply(&gateway_vs).await?;
        let policy = seed.policy_yaml().replace(
            "      routes: [primary]\n",
            &format!(
                "      routes: [primary]\n    - name: istio-test-public\n      namespace: {}\n",
                seed.vs_ns
            ),
        );
        seed.apply(&policy).await?;
        seed.wait_policy(POLICY, "WaitingForApproval", T, |p| {
            phase(p) == Phase::WaitingForApproval
        })
        .await?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 50), ("v2", 50)], T)
            .await?;
        seed.wait_weights(&seed.vs_ns, "istio-test-public", 0, &[("v1", 50), ("v2", 50)], T)
            .await?;
        let admin = support::control_plane().await?.kubeconfig_path().to_path_buf();
        let (ok, out) = cli(&admin, &["promote", POLICY, "-n", &seed.ns, "--full"]).await?;
        ensure(ok, out)?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 0), ("v2", 100)], T)
            .await?;
        seed.wait_weights(&seed.vs_ns, "istio-test-public", 0, &[("v1", 0), ("v2", 100)], T)
            .await?;
        let gw = seed.vs(&seed.vs_ns, "istio-test-public").await?;
        ensure(
            gw["spec"]["gateways"] == json!(["istio-system/public-gateway"]),
            format!("{gw}"),
        )?;
        Ok(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_pause_resumes_without_restarting_it() -> Result<()> {
    let seed = seed("restart").await?;
    let mut daemon = start_daemon(&seed.ns).await?;
    let policy = seed.policy_yaml().replace("duration: 2s", "duration: 10s");
    seed.apply(&policy).await?;
    let paused = seed
        .wait_policy(POLICY, "Paused", T, |p| phase(p) == Phase::Paused)
        .await?;
    let started = paused
        .status
        .as_ref()
        .and_then(|s| s.step_started_at)
        .context("stepStartedAt")?;
    let pause_ends = Instant::now() + Duration::from_secs(10)
        - Duration::from_millis(u64::try_from((jiff::Timestamp::now() - started).get_milliseconds()).unwrap_or(0));
    tokio::time::sleep(Duration::from_secs(2)).await;
    daemon.kill()?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        let after = seed.policy(POLICY).await?;
        let status = after.status.clone().unwrap_or_default();
        ensure(
            status.step_started_at == Some(started) && status.step == Some(1),
            format!("{status:?}"),
        )?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 50), ("v2", 50)], T)
            .await?;
        let reached = Instant::now();
        // Had the pause restarted with the daemon, 50 % would come 5 s later than this.
        ensure(
            reached < pause_ends + Duration::from_secs(3),
            format!(
                "50% reached {:?} after the pause should have ended",
                reached.saturating_duration_since(pause_ends)
            ),
        )?;
        ensure(reached + Duration::from_millis(500) >= pause_ends, "pause cut short")?;
        let history = seed.policy(POLICY).await?.status.unwrap_or_default().history;
        let tens = history
            .iter()
            .filter(|t| t.reason == "WeightChanged" && t.canary_weight == 10)
            .count();
        ensure(tens == 1, format!("step 1 repeated: {history:#?}"))?;
        Ok(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_edits_of_the_virtual_service_survive() -> Result<()> {
    let seed = seed("concurrent").await?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        let steps = (1..=10)
            .map(|i| format!("    - weight: {}\n", i * 10))
            .collect::<String>();
        let policy = seed.policy_yaml();
        let start = policy.find("  steps:\n").context("steps")?;
        let end = policy.find("  progressDeadline").context("progressDeadline")?;
        let policy = format!("{}  steps:\n{steps}{}", &policy[..start], &policy[end..]);
        let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
            seed.client.clone(),
            &seed.vs_ns,
            &canaryd::mesh::istio::virtual_service_resource(),
        );
        seed.apply(&policy).await?;
        // Someone else edits the VirtualService while canaryd steps its weights.
        for i in 1..=40 {
            let patch = json!({"metadata": {"annotations": {"example.com/edit": i.to_string()}}});
            api.patch(VS, &PatchParams::default(), &Patch::Merge(&patch)).await?;
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let timeout = json!([{"op": "replace", "path": "/spec/http/1/timeout", "value": "20s"}]);
        api.patch(
            VS,
            &PatchParams::default(),
            &Patch::<()>::Json(serde_json::from_value(timeout)?),
        )
        .await?;
        seed.wait_policy(POLICY, "Succeeded", T, |p| phase(p) == Phase::Succeeded)
            .await?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 0), ("v2", 100)], T)
            .await?;
        let vs = seed.vs(&seed.vs_ns, VS).await?;
        ensure(
            vs["metadata"]["annotations"]["example.com/edit"] == "40",
            format!("{}", vs["metadata"]),
        )?;
        ensure(
            vs["spec"]["http"][1]["timeout"] == "20s",
            format!("{}", vs["spec"]["http"][1]),
        )?;
        Ok(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_returns_traffic_at_once_and_retry_starts_over() -> Result<()> {
    let seed = seed("abort").await?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        let policy = seed
            .policy_yaml()
            .replace("    - pause: {duration: 2s}\n", "    - pause: {}\n");
        seed.apply(&policy).await?;
        seed.wait_policy(POLICY, "WaitingForApproval", T, |p| {
            phase(p) == Phase::WaitingForApproval
        })
        .await?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 90), ("v2", 10)], T)
            .await?;
        let operator = operator_kubeconfig(&seed).await?;

        let sent = Instant::now();
        let (ok, out) = cli(&operator, &["abort", POLICY, "-n", &seed.ns, "--no-wait"]).await?;
        ensure(ok, out)?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 100), ("v2", 0)], T)
            .await?;
        let took = sent.elapsed();
        ensure(took < Duration::from_secs(3), format!("abort took {took:?}"))?;
        seed.wait_policy(POLICY, "Aborted", T, |p| phase(p) == Phase::Aborted)
            .await?;
        // Aborted stays aborted.
        tokio::time::sleep(Duration::from_secs(2)).await;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 100), ("v2", 0)], T)
            .await?;

        let (ok, out) = cli(&operator, &["retry", POLICY, "-n", &seed.ns]).await?;
        ensure(ok, out)?;
        let p = seed
            .wait_policy(POLICY, "retried", T, |p| phase(p) == Phase::WaitingForApproval)
            .await?;
        ensure(p.status.and_then(|s| s.step) == Some(1), "retry starts from step one")?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 90), ("v2", 10)], T)
            .await?;

        // pause / resume with the same restricted identity.
        let (ok, out) = cli(&operator, &["pause", POLICY, "-n", &seed.ns]).await?;
        ensure(ok && out.contains("Paused"), out)?;
        let (ok, out) = cli(&operator, &["resume", POLICY, "-n", &seed.ns]).await?;
        ensure(ok && out.contains("WaitingForApproval"), out)?;
        Ok(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_canary_template_restarts_from_the_first_step() -> Result<()> {
    let seed = seed("template").await?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        seed.apply(&seed.policy_yaml()).await?;
        seed.wait_policy(POLICY, "WaitingForApproval", T, |p| {
            phase(p) == Phase::WaitingForApproval
        })
        .await?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 50), ("v2", 50)], T)
            .await?;

        let deployments: Api<Deployment> = Api::namespaced(seed.client.clone(), &seed.ns);
        let bump = json!({"spec": {"template": {"metadata": {"annotations": {"example.com/build": "2"}}}}});
        deployments
            .patch("istio-test-v2", &PatchParams::default(), &Patch::Merge(&bump))
            .await?;
        // Traffic goes back to stable while the new pods are not Ready.
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 100), ("v2", 0)], T)
            .await?;
        let p = seed
            .wait_policy(POLICY, "restart", T, |p| {
                p.status
                    .as_ref()
                    .is_some_and(|s| s.history.iter().any(|t| t.reason == "CanaryChanged"))
            })
            .await?;
        ensure(p.status.and_then(|s| s.step) == Some(0), "restarted at step one")?;
        mark_ready(&seed.client, &seed.ns, "istio-test-v2", 1).await?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 90), ("v2", 10)], T)
            .await?;
        seed.wait_policy(POLICY, "WaitingForApproval again", T, |p| {
            phase(p) == Phase::WaitingForApproval
        })
        .await?;
        Ok(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}

/// Each Istio trap gives its own condition and Event, and no weight changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_traps_are_reported_and_change_nothing() -> Result<()> {
    struct Trap {
        prefix: &'static str,
        reason: &'static str,
        hint: &'static str,
        /// (file, from, to) edits of the seed before it is applied.
        edit: fn(&str, &str, &str) -> (String, String, String),
    }
    let traps = [
        Trap {
            prefix: "trap-dr",
            reason: "DestinationRuleInWrongNamespace",
            hint: "move it to",
            edit: |istio, ns, vs_ns| {
                // The DestinationRule is the first document: put it next to the VirtualService.
                let moved = istio.replacen(&format!("namespace: {ns}"), &format!("namespace: {vs_ns}"), 1);
                (moved, String::new(), String::new())
            },
        },
        Trap {
            prefix: "trap-host",
            reason: "HostResolvesElsewhere",
            hint: "write the FQDN",
            edit: |istio, ns, _| {
                let needle = format!(
                    "      route:\n        - destination:\n            host: istio-test.{ns}.svc.cluster.local\n            subset: v1\n      timeout"
                );
                let short = "      route:\n        - destination:\n            host: istio-test\n            subset: v1\n      timeout";
                (istio.replace(&needle, short), String::new(), String::new())
            },
        },
        Trap {
            prefix: "trap-labels",
            reason: "SubsetSelectsNoPods",
            hint: "lack version=v-two",
            edit: |istio, _, _| {
                (
                    istio.replace("labels: {version: v2}", "labels: {version: v-two}"),
                    String::new(),
                    String::new(),
                )
            },
        },
        Trap {
            prefix: "trap-subset",
            reason: "SubsetNotFound",
            hint: "has no subset \"v2\"",
            edit: |istio, _, _| {
                (
                    istio.replace("    - name: v2\n      labels: {version: v2}\n", ""),
                    String::new(),
                    String::new(),
                )
            },
        },
        Trap {
            prefix: "trap-steps",
            reason: "InvalidSpec",
            hint: "the last weight step must be 100",
            edit: |istio, _, _| {
                (
                    istio.to_string(),
                    "    - weight: 100\n".into(),
                    "    - weight: 80\n".into(),
                )
            },
        },
    ];
    for trap in traps {
        let ns = format!("{}-dev", trap.prefix);
        let vs_ns = format!("{}-gw", trap.prefix);
        support::create_namespace(&ns).await?;
        support::create_namespace(&vs_ns).await?;
        let client = support::client().await?;
        let seed = Seed {
            ns: ns.clone(),
            vs_ns: vs_ns.clone(),
            client: client.clone(),
        };
        seed.apply(&fixture::seed_yaml("app.yaml", &ns, &vs_ns)).await?;
        for d in ["istio-test-v1", "istio-test-v2"] {
            mark_ready(&client, &ns, d, 1).await?;
        }
        let (istio, from, to) = (trap.edit)(&fixture::seed_yaml("istio.yaml", &ns, &vs_ns), &ns, &vs_ns);
        seed.apply(&istio).await?;
        let before = seed.vs(&vs_ns, VS).await?;
        let mut policy = seed.policy_yaml();
        if !from.is_empty() {
            policy = policy.replace(&from, &to);
        }
        let daemon = start_daemon(&ns).await?;
        let run = async {
            seed.apply(&policy).await?;
            let p = seed
                .wait_policy(POLICY, trap.reason, T, |p| phase(p) == Phase::Invalid)
                .await?;
            let status = p.status.unwrap_or_default();
            let ready = status
                .conditions
                .iter()
                .find(|c| c.type_ == "Ready")
                .context("Ready condition")?;
            ensure(
                ready.status == "False" && ready.reason == trap.reason && ready.message.contains(trap.hint),
                format!("{}: condition {ready:?}", trap.prefix),
            )?;
            let events = seed.events(POLICY, trap.reason).await?;
            ensure(!events.is_empty(), format!("{}: no {} event", trap.prefix, trap.reason))?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let after = seed.vs(&vs_ns, VS).await?;
            ensure(
                after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"],
                format!("{}: the VirtualService was written", trap.prefix),
            )?;
            Ok::<_, anyhow::Error>(())
        };
        run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))?;
    }
    Ok(())
}

/// With leader election, only the Lease holder writes; when it dies, the standby takes over and
/// the rollout goes on where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_writes_and_a_standby_takes_over() -> Result<()> {
    use k8s_openapi::api::coordination::v1::Lease;

    let seed = seed("leader").await?;
    let election = [
        "--leader-elect",
        "--lease-name",
        "leader-test",
        "--lease-duration",
        "3s",
    ];
    let mut a = fixture::start_daemon_with(&seed.ns, &election, &[("POD_NAME", "daemon-a")]).await?;
    let leases: Api<Lease> = Api::namespaced(seed.client.clone(), "canaryd-system");
    let holder = async || -> Result<Option<String>> {
        Ok(leases
            .get_opt("leader-test")
            .await?
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity))
    };
    support::wait_until("daemon-a holds the lease", T, async || {
        Ok((holder().await?.as_deref() == Some("daemon-a")).then_some(()))
    })
    .await?;
    let b = fixture::start_daemon_with(&seed.ns, &election, &[("POD_NAME", "daemon-b")]).await?;
    let run = async {
        let policy = seed.policy_yaml().replace("    - pause: {duration: 2s}\n", "");
        seed.apply(&policy).await?;
        seed.wait_policy(POLICY, "WaitingForApproval", T, |p| {
            phase(p) == Phase::WaitingForApproval
        })
        .await?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 50), ("v2", 50)], T)
            .await?;
        ensure(
            holder().await?.as_deref() == Some("daemon-a"),
            "the lease moved while daemon-a was alive",
        )?;
        let standby_log = std::fs::read_to_string(b.stderr_log())?;
        ensure(
            !standby_log.contains("weights set") && !standby_log.contains("reconcile"),
            format!("the standby acted:\n{standby_log}"),
        )?;

        a.kill()?;
        let took = Instant::now();
        support::wait_until("daemon-b holds the lease", T, async || {
            Ok((holder().await?.as_deref() == Some("daemon-b")).then_some(()))
        })
        .await?;
        eprintln!("standby took over {:?} after the leader died", took.elapsed());
        let admin = support::control_plane().await?.kubeconfig_path().to_path_buf();
        let (ok, out) = cli(&admin, &["promote", POLICY, "-n", &seed.ns]).await?;
        ensure(ok && (out.contains("Succeeded") || out.contains("Progressing")), out)?;
        seed.wait_policy(POLICY, "Succeeded", T, |p| phase(p) == Phase::Succeeded)
            .await?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 0), ("v2", 100)], T)
            .await?;
        let standby_log = std::fs::read_to_string(b.stderr_log())?;
        ensure(standby_log.contains("weights set"), "the new leader did not write")?;
        Ok(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&b, e))
}
