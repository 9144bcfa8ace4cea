//! Hostile objects the API server still stores (written through a CRD from before the bounds, then
//! the strict CRD installed, as an upgrade would leave them) do not stop the fleet: with one of each
//! kind present when the daemon restarts, another namespace's rollout moves, `canaryd abort` acts,
//! the probes stay 200, and each object is counted, reported and refused where its author looks.

mod fixture;
mod support;

use std::time::Duration;

use anyhow::{Context, Result};
use canaryd::resources::policy::{Phase, RolloutPolicy};
use fixture::{Seed, cli, ensure, seed};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::ChildProc;

const T: Duration = Duration::from_secs(30);
const VS: &str = "istio-test-vs";
const POLICY: &str = "istio-test";
const TENANT: &str = "hostile-tenant";
const SPEC: &str = "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties";

fn phase(p: &RolloutPolicy) -> Phase {
    p.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

/// The daemon over every namespace (this binary has a control plane of its own), with deploy/'s RBAC.
async fn start_daemon() -> Result<(ChildProc, String)> {
    let kubeconfig = fixture::daemon_kubeconfig().await?;
    let kubeconfig = kubeconfig.to_string_lossy().into_owned();
    let env = [
        ("KUBECONFIG", kubeconfig.as_str()),
        ("RUST_LOG", "info,canaryd=debug,kube=warn"),
    ];
    let mut daemon = support::spawn_bin("canaryd", &["run", "--listen", "127.0.0.1:0"], &env)?;
    let addr = daemon.listening_addr(Duration::from_secs(20)).await?;
    Ok((daemon, addr))
}

async fn get(addr: &str, path: &str) -> Result<(u16, String)> {
    let response = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()?
        .get(format!("http://{addr}{path}"))
        .send()
        .await?;
    Ok((response.status().as_u16(), response.text().await?))
}

async fn probes_ok(addr: &str) -> Result<()> {
    for path in ["/healthz", "/readyz"] {
        let (code, body) = get(addr, path).await?;
        ensure(code == 200, format!("{path}: {code} {body}"))?;
    }
    Ok(())
}

/// `canaryd_objects_rejected_total{kind}` as the daemon serves it.
async fn rejected(addr: &str, kind: &str) -> Result<u64> {
    let (_, text) = get(addr, "/metrics").await?;
    let prefix = format!("canaryd_objects_rejected_total{{kind=\"{kind}\"}} ");
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}

/// JSON-patch a CRD's schema, as an older, looser version of it.
async fn loosen(seed: &Seed, crd: &str, ops: Value) -> Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(seed.client.clone());
    crds.patch(
        crd,
        &PatchParams::default(),
        &Patch::Json::<()>(serde_json::from_value(ops)?),
    )
    .await
    .with_context(|| format!("loosening {crd}"))?;
    Ok(())
}

/// Store `yaml` once the looser schema is in force: a command created by `tenant` (approvers may
/// only create them), anything else applied by the admin.
async fn store(seed: &Seed, tenant: Option<&kube::Client>, what: &str, yaml: &str) -> Result<()> {
    let mut last = String::new();
    let stored = support::wait_until(&format!("the looser CRD to store {what}"), T, async || {
        let result = match tenant {
            Some(client) => create_command(client, yaml).await,
            None => seed.apply(yaml).await,
        };
        last = result.as_ref().err().map(|e| format!("{e:#}")).unwrap_or_default();
        Ok(result.ok())
    })
    .await;
    stored.with_context(|| format!("last error: {}", last.chars().take(500).collect::<String>()))
}

async fn create_command(client: &kube::Client, yaml: &str) -> Result<()> {
    let object: DynamicObject = serde_json::from_value(serde_saphyr::from_str::<Value>(yaml)?)?;
    let api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        TENANT,
        &ApiResource::erase::<canaryd::resources::command::RolloutCommand>(&()),
    );
    api.create(&PostParams::default(), &object).await?;
    Ok(())
}

fn command(name: &str, user: &str, step: &str, canary: &str) -> String {
    format!(
        "apiVersion: canaryd.io/v1alpha1\nkind: RolloutCommand\nmetadata: {{name: {name}, namespace: {TENANT}}}\n\
         spec: {{policy: app, command: promote, canary: {canary}, step: {step}, requestedBy: \"{user}\"}}\n"
    )
}

const PROVIDER: &str = "apiVersion: canaryd.io/v1alpha1\nkind: MetricProvider\nmetadata: {name: hostile-provider}\n\
     spec: {address: \"http://prometheus:9090\", timeout: 99999999999999999999s}\n";
const TARGET: &str = "apiVersion: canaryd.io/v1alpha1\nkind: NotificationTarget\nmetadata: {name: hostile-target}\n\
     spec: {slack: {channel: 5}}\n";

/// One hostile object of each kind canaryd defines, written through looser CRDs (a tenant's
/// approver writes the commands); then deploy/'s CRDs again.
async fn store_hostile_objects(seed: &Seed, tenant: &kube::Client, user: &str) -> Result<()> {
    let spec = |field: &str| format!("{SPEC}/{field}");
    loosen(
        seed,
        "rolloutcommands.canaryd.io",
        json!([{"op": "remove", "path": spec("step/maximum")}, {"op": "remove", "path": spec("canary/maxLength")}]),
    )
    .await?;
    let overflow = command("overflow", user, "4294967296", "abc");
    store(seed, Some(tenant), "a step past u32", &overflow).await?;
    let long = command("long", user, "1", &"a".repeat(70_000));
    store(seed, Some(tenant), "a 70,000-character canary", &long).await?;
    loosen(
        seed,
        "metricproviders.canaryd.io",
        json!([{"op": "remove", "path": spec("timeout/pattern")}]),
    )
    .await?;
    store(seed, None, "an overflowing timeout", PROVIDER).await?;
    let channel = spec("slack/properties/channel");
    loosen(
        seed,
        "notificationtargets.canaryd.io",
        json!([{"op": "remove", "path": format!("{channel}/maxLength")},
               {"op": "replace", "path": format!("{channel}/type"), "value": "integer"}]),
    )
    .await?;
    store(seed, None, "a channel of the wrong type", TARGET).await?;
    for kind in ["rolloutcommand", "metricprovider", "notificationtarget"] {
        let yaml = std::fs::read_to_string(fixture::repo().join(format!("deploy/crds/{kind}.yaml")))?;
        support::apply_yaml(&seed.client, &yaml).await?;
    }
    let probe = command("probe", user, "4294967296", "abc");
    support::wait_until("the strict CRD to refuse again", T, async || {
        Ok(create_command(tenant, &probe).await.is_err().then_some(()))
    })
    .await
}

/// An approver of the tenant's namespace only: (client, username).
async fn tenant_approver(seed: &Seed) -> Result<(kube::Client, String)> {
    support::create_namespace(TENANT).await?;
    fixture::operator_kubeconfig(seed).await?; // applies deploy/roles.yaml
    let binding = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: mallory, namespace: {TENANT}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: rollout-approver}}\n\
         subjects:\n- {{kind: ServiceAccount, name: mallory, namespace: {TENANT}}}\n"
    );
    seed.apply(&binding).await?;
    let token = support::token_for(TENANT, "mallory").await?;
    let client = support::client_with_token(&token).await?;
    Ok((client, format!("system:serviceaccount:{TENANT}:mallory")))
}

/// Events in `ns` about object `name` with `reason`: their notes.
async fn events(seed: &Seed, ns: &str, name: &str, reason: &str) -> Result<Vec<String>> {
    let api: Api<Event> = Api::namespaced(seed.client.clone(), ns);
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter_map(|e| e.note)
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_objects_of_every_kind_do_not_stop_the_fleet() -> Result<()> {
    let seed = seed("hostile").await?;
    let operator = fixture::operator_kubeconfig(&seed).await?;
    let (tenant, user) = tenant_approver(&seed).await?;
    // Names the hostile provider and target; its VirtualService does not exist, so it moves nothing.
    let analysed = seed
        .policy_yaml()
        .replace("name: istio-test\n", "name: analysed\n")
        .replace("- name: istio-test-vs", "- name: nowhere")
        .replace(
            "  progressDeadline: 10m\n",
            "  progressDeadline: 10m\n  notifications: [{target: hostile-target}]\n  analysis:\n    provider: hostile-provider\n    \
             metrics: [{name: ok, query: \"vector(1)\", min: 0}]\n",
        );
    seed.apply(&analysed).await?;

    let (mut first, addr) = start_daemon().await?;
    let before = async {
        support::wait_until("the first daemon to be ready", T, async || {
            Ok(probes_ok(&addr).await.ok())
        })
        .await?;
        store_hostile_objects(&seed, &tenant, &user).await?;
        // Reported through the watch too.
        support::wait_until("the running daemon to count the commands", T, async || {
            Ok((rejected(&addr, "rolloutcommands").await? == 2).then_some(()))
        })
        .await
    };
    before.await.map_err(|e| fixture::fail_with_logs(&first, e))?;
    first.terminate(Duration::from_secs(10)).await?;

    // The restart: every cache lists the hostile objects first. The other team's rollout starts.
    seed.apply(&seed.policy_yaml()).await?;
    let (daemon, addr) = start_daemon().await?;
    let run = async {
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 90), ("v2", 10)], T)
            .await?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 50), ("v2", 50)], T)
            .await?;
        seed.wait_policy(POLICY, "WaitingForApproval", T, |p| {
            phase(p) == Phase::WaitingForApproval
        })
        .await?;
        probes_ok(&addr).await?;
        let (ok, out) = cli(&operator, &["abort", POLICY, "-n", &seed.ns]).await?;
        ensure(ok, format!("canaryd abort: {out}"))?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 100), ("v2", 0)], T)
            .await?;
        seed.wait_policy(POLICY, "Aborted", T, |p| phase(p) == Phase::Aborted)
            .await?;

        for (kind, n) in [
            ("rolloutcommands", 2),
            ("metricproviders", 1),
            ("notificationtargets", 1),
        ] {
            let got = rejected(&addr, kind).await?;
            ensure(
                got == n,
                format!("canaryd_objects_rejected_total{{kind={kind:?}}} = {got}, want {n}"),
            )?;
        }
        // The author of each command sees it refused, with why.
        let commands: Api<DynamicObject> = Api::namespaced_with(
            seed.client.clone(),
            TENANT,
            &ApiResource::erase::<canaryd::resources::command::RolloutCommand>(&()),
        );
        for (name, why) in [("overflow", "4294967296"), ("long", "spec.canary: 70000 characters")] {
            let status = support::wait_until(&format!("command {name} to be refused"), T, async || {
                let c = commands.get(name).await?;
                let status = c.data.get("status").cloned().unwrap_or(Value::Null);
                Ok((status["outcome"] == "Refused").then_some(status))
            })
            .await?;
            ensure(
                status["reason"] == "Undecodable" && status["message"].as_str().unwrap_or_default().contains(why),
                format!("{name}: {status}"),
            )?;
            let notes = events(&seed, TENANT, name, "Rejected").await?;
            ensure(
                notes.iter().any(|n| n.contains(why)),
                format!("{name}: Rejected events {notes:?}"),
            )?;
        }
        // A policy naming the rejected provider says so; so does its notification.
        let p = seed
            .wait_policy("analysed", "analysed to name its provider", T, |p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.message.as_deref())
                    .is_some_and(|m| m.contains("MetricProvider \"hostile-provider\" is rejected"))
            })
            .await?;
        ensure(phase(&p) == Phase::Invalid, format!("analysed: {:?}", p.status))?;
        let notes = support::wait_until("the notifier to name the rejected target", T, async || {
            let notes = events(&seed, &seed.ns, "analysed", "NotificationTargetNotFound").await?;
            Ok(notes.iter().any(|n| n.contains("is rejected")).then_some(notes))
        })
        .await?;
        eprintln!("analysed: {:?}; {notes:?}", p.status.and_then(|s| s.message));
        probes_ok(&addr).await
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}
