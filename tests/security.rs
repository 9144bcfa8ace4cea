//! The security model against the real API server, with real tokens, real RBAC (deploy/) and real
//! admission (deploy/admission.yaml): approvers are not editors, the requester cannot be forged,
//! credentials go only to the address their MetricProvider names, stale commands do nothing, and the
//! daemon reads Secrets only in its own namespace.

mod fixture;
mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use canaryd::resources::command::{CommandKind, Outcome, RolloutCommand, RolloutCommandSpec};
use canaryd::resources::policy::{Phase, RolloutPolicy};
use canaryd::resources::provider::MetricProvider;
use fixture::{Seed, cli, ensure, mark_ready, seed, start_daemon_with};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

const T: Duration = Duration::from_secs(30);
const VS: &str = "istio-test-vs";
const POLICY: &str = "istio-test";
const SYSTEM_NS: &str = "canaryd-system";

fn phase(p: &RolloutPolicy) -> Phase {
    p.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

fn step(p: &RolloutPolicy) -> Option<u32> {
    p.status.as_ref().and_then(|s| s.step)
}

/// The seed policy with an approval gate (instead of a timed pause) at step 1, and one at step 3.
fn gated_policy(seed: &Seed) -> String {
    seed.policy_yaml()
        .replace("    - pause: {duration: 2s}\n", "    - pause: {}\n")
}

/// An approver (deploy/roles.yaml's rollout-approver in the seed's namespace): its kubeconfig for the
/// CLI, a client, and its user name.
async fn approver(seed: &Seed, name: &str) -> Result<(PathBuf, Client, String)> {
    let kubeconfig = fixture::approver_kubeconfig(seed, name).await?;
    let client = support::client_with_token(&support::token_for(&seed.ns, name).await?).await?;
    Ok((kubeconfig, client, format!("system:serviceaccount:{}:{name}", seed.ns)))
}

fn denied(result: Result<impl std::fmt::Debug, kube::Error>, what: &str) -> Result<String> {
    match result {
        Err(kube::Error::Api(s)) if s.code == 403 || s.code == 422 => Ok(s.message),
        other => bail!("{what}: expected a denial, got {other:?}"),
    }
}

fn command(seed: &Seed, spec: RolloutCommandSpec) -> RolloutCommand {
    RolloutCommand {
        metadata: ObjectMeta {
            generate_name: Some("replayed-".into()),
            namespace: Some(seed.ns.clone()),
            ..Default::default()
        },
        spec,
        status: None,
    }
}

/// Wait for the daemon's outcome of command `name`.
async fn outcome(seed: &Seed, name: &str) -> Result<RolloutCommand> {
    let api: Api<RolloutCommand> = Api::namespaced(seed.client.clone(), &seed.ns);
    support::wait_until(&format!("an outcome for {name}"), T, async || {
        let c = api.get(name).await?;
        Ok(c.status.is_some().then_some(c))
    })
    .await
}

/// The command's outcome is `Refused` for `reason`, an Event on the policy says why, and the
/// rollout is still where it was (`weights`, `at_step`) two seconds later.
async fn assert_refused(seed: &Seed, name: &str, reason: &str, weights: &[(&str, u8)], at_step: u32) -> Result<()> {
    let c = outcome(seed, name).await?;
    let status = c.status.context("no status")?;
    ensure(
        status.outcome == Outcome::Refused && status.reason == reason,
        format!("{name}: want Refused/{reason}, got {status:?}"),
    )?;
    // The Event follows the outcome.
    let mut events = Vec::new();
    support::wait_until("the CommandRefused event", T, async || {
        events = seed.events(POLICY, "CommandRefused").await?;
        Ok(events
            .iter()
            .any(|e| e.contains(name) && e.contains(reason))
            .then_some(()))
    })
    .await
    .with_context(|| format!("no CommandRefused event naming {name} and {reason}: {events:?}"))?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    seed.wait_weights(&seed.vs_ns, VS, 1, weights, Duration::from_secs(1))
        .await?;
    let p = seed.policy(POLICY).await?;
    ensure(
        step(&p) == Some(at_step),
        format!("{name} moved the rollout: {:?}", p.status),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approver_promotes_and_aborts_but_cannot_edit() -> Result<()> {
    let seed = seed("sec-approve").await?;
    let daemon = fixture::start_daemon(&seed.ns).await?;
    let run = async {
        seed.apply(&gated_policy(&seed)).await?;
        seed.wait_policy(POLICY, "the first gate", T, |p| {
            phase(p) == Phase::WaitingForApproval && step(p) == Some(1)
        })
        .await?;
        let (kubeconfig, client, user) = approver(&seed, "alice").await?;

        let (ok, out) = cli(&kubeconfig, &["promote", POLICY, "-n", &seed.ns]).await?;
        ensure(ok && out.contains("RolloutCommand"), format!("promote: {out}"))?;
        seed.wait_policy(POLICY, "the second gate", T, |p| step(p) == Some(3))
            .await?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 50), ("v2", 50)], T)
            .await?;
        let promoted = seed.events(POLICY, "Promoted").await?.join(" | ");
        ensure(
            promoted.contains(&format!("by {user}")),
            format!("Promoted events: {promoted}"),
        )?;

        // Whatever an approver may not do, the API server refuses.
        let policies: Api<RolloutPolicy> = Api::namespaced(client.clone(), &seed.ns);
        let edit = json!({"spec": {"steps": [{"weight": 100}]}});
        denied(
            policies
                .patch(POLICY, &PatchParams::default(), &Patch::Merge(&edit))
                .await,
            "approver edits the spec",
        )?;
        let no_finalizer = json!({"metadata": {"finalizers": null}});
        denied(
            policies
                .patch(POLICY, &PatchParams::default(), &Patch::Merge(&no_finalizer))
                .await,
            "approver removes the finalizer",
        )?;
        let annotation = json!({"metadata": {"annotations": {"canaryd.io/command": "promote-full"}}});
        denied(
            policies
                .patch(POLICY, &PatchParams::default(), &Patch::Merge(&annotation))
                .await,
            "approver annotates the policy",
        )?;
        denied(
            policies.delete(POLICY, &DeleteParams::default()).await,
            "approver deletes the policy",
        )?;
        let providers: Api<MetricProvider> = Api::all(client.clone());
        let provider = MetricProvider::new(
            "alice-prom",
            serde_json::from_value(json!({"address": "http://alice.example:9090"}))?,
        );
        denied(
            providers.create(&PostParams::default(), &provider).await,
            "approver creates a MetricProvider",
        )?;
        ensure(
            seed.policy(POLICY)
                .await?
                .finalizers()
                .contains(&"canaryd.io/cleanup".to_string()),
            "the finalizer is still there",
        )?;

        let (ok, out) = cli(&kubeconfig, &["abort", POLICY, "-n", &seed.ns]).await?;
        ensure(ok && out.contains("rollout aborted"), format!("abort: {out}"))?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 100), ("v2", 0)], T)
            .await?;
        let aborted = seed.events(POLICY, "Aborted").await?.join(" | ");
        ensure(
            aborted.contains(&format!("by {user}")),
            format!("Aborted events: {aborted}"),
        )?;
        Ok(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_requester_is_refused_by_the_api_server() -> Result<()> {
    fixture::daemon_kubeconfig().await?; // installs deploy/'s RBAC, roles and admission policy
    let seed = seed("sec-forge").await?;
    let (_, client, user) = approver(&seed, "mallory").await?;
    let api: Api<RolloutCommand> = Api::namespaced(client, &seed.ns);
    let spec = |by: &str| RolloutCommandSpec {
        policy: POLICY.into(),
        command: CommandKind::PromoteFull,
        canary: "0123456789abcdef".into(),
        step: Some(1),
        requested_by: by.into(),
        on_behalf_of: None,
    };
    // The admission policy takes a moment to load after it is created: until it refuses, clean up.
    let forged = spec(&format!("system:serviceaccount:{}:alice", seed.ns));
    let message = support::wait_until("the forged command to be refused", T, async || {
        match api
            .create(&PostParams::default(), &command(&seed, forged.clone()))
            .await
        {
            Err(kube::Error::Api(s)) if s.code == 403 || s.code == 422 => Ok(Some(s.message)),
            Ok(created) => {
                api.delete(&created.name_any(), &DeleteParams::default()).await?;
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    })
    .await?;
    ensure(message.contains("requestedBy"), format!("refusal: {message}"))?;

    let own = api
        .create(&PostParams::default(), &command(&seed, spec(&user)))
        .await
        .context("a command naming its own creator")?;
    // Nobody rewrites a command, not even an admin; an approver cannot write its outcome either.
    let admin: Api<RolloutCommand> = Api::namespaced(seed.client.clone(), &seed.ns);
    let rewrite = json!({"spec": {"requestedBy": "someone-else"}});
    denied(
        admin
            .patch(&own.name_any(), &PatchParams::default(), &Patch::Merge(&rewrite))
            .await,
        "admin rewrites a command's spec",
    )?;
    let outcome =
        json!({"status": {"outcome": "Acted", "reason": "Acted", "message": "", "at": "2026-01-01T00:00:00Z"}});
    denied(
        api.patch_status(&own.name_any(), &PatchParams::default(), &Patch::Merge(&outcome))
            .await,
        "approver writes a command's outcome",
    )?;
    Ok(())
}

/// A request's path and headers (names lowercased).
type Seen = (String, BTreeMap<String, String>);

/// A plain HTTP server that records every request's path and headers, answering each with `respond`.
#[derive(Clone)]
struct StandIn {
    addr: String,
    requests: Arc<Mutex<Vec<Seen>>>,
}

impl StandIn {
    fn start(respond: impl Fn() -> String + Send + Sync + 'static) -> Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?.to_string();
        let requests: Arc<Mutex<Vec<_>>> = Arc::default();
        let (seen, respond) = (requests.clone(), Arc::new(respond));
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (seen, respond) = (seen.clone(), respond.clone());
                std::thread::spawn(move || serve(conn, &seen, &*respond));
            }
        });
        Ok(Self { addr, requests })
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> Vec<Seen> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

/// One keep-alive connection: GET requests without bodies, as the Prometheus client sends them.
fn serve(conn: std::net::TcpStream, seen: &Mutex<Vec<Seen>>, respond: &dyn Fn() -> String) {
    let Ok(mut out) = conn.try_clone() else { return };
    let mut lines = BufReader::new(conn).lines();
    while let Some(Ok(request_line)) = lines.next() {
        let path = request_line.split(' ').nth(1).unwrap_or_default().to_string();
        let mut headers = BTreeMap::new();
        for line in lines.by_ref() {
            let Ok(line) = line else { return };
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        if let Ok(mut s) = seen.lock() {
            s.push((path, headers));
        }
        if out.write_all(respond().as_bytes()).is_err() {
            return;
        }
    }
}

const EMPTY_VECTOR: &str = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;

fn analysis_by(source: &str) -> String {
    format!(
        "  analysis:\n    interval: 1s\n    inconclusiveLimit: 1000\n    onProviderError: {{after: 1000, action: pause}}\n{source}    metrics:\n      - {{name: success-rate, template: istio-request-success-rate, min: 99, window: 10s}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_go_only_to_the_address_their_provider_names() -> Result<()> {
    // The attacker's server, named by a policy, answers like Prometheus; the provider's redirects
    // every query to the attacker's.
    let attacker = StandIn::start(|| {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{EMPTY_VECTOR}",
            EMPTY_VECTOR.len()
        )
    })?;
    let redirect_to = format!("{}/redirected", attacker.url());
    let provider =
        StandIn::start(move || format!("HTTP/1.1 302 Found\r\nLocation: {redirect_to}\r\nContent-Length: 0\r\n\r\n"))?;

    let admin = support::client().await?;
    let daemon_kubeconfig = fixture::daemon_kubeconfig().await?;
    support::create_namespace(SYSTEM_NS).await?;
    let token = "provider-token-0451";
    support::apply_yaml(
        &admin,
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: sec-prom-token, namespace: {SYSTEM_NS}}}\nstringData: {{token: {token}}}\n---\n\
             apiVersion: canaryd.io/v1alpha1\nkind: MetricProvider\nmetadata: {{name: sec-prom}}\n\
             spec: {{address: {}, namespaceSelector: {{}}, auth: {{bearerTokenSecret: {{name: sec-prom-token, key: token}}}}}}\n",
            provider.url()
        ),
    )
    .await?;

    // A policy naming the provider: the token goes to the provider's address, and no further.
    let named = seed("sec-named").await?;
    let named_daemon = start_daemon_with(&named.ns, &[], &[]).await?;
    // A policy naming its own address and its namespace's Secret: gets no credential at all.
    let thief = seed("sec-thief").await?;
    let stolen = "namespace-secret-0452";
    thief
        .apply(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: stolen, namespace: {}}}\nstringData: {{token: {stolen}}}\n",
            thief.ns
        ))
        .await?;
    let thief_daemon = start_daemon_with(&thief.ns, &[], &[]).await?;
    let run = async {
        // A provider that does not exist: Invalid, naming the field, no fallback.
        let missing = named.policy_yaml() + &analysis_by("    provider: sec-prom-missing\n");
        named.apply(&missing).await?;
        let p = named
            .wait_policy(POLICY, "Invalid", T, |p| phase(p) == Phase::Invalid)
            .await?;
        let message = p.status.and_then(|s| s.message).unwrap_or_default();
        ensure(
            message.contains("spec.analysis.provider") && message.contains("sec-prom-missing"),
            format!("message: {message}"),
        )?;
        named
            .apply(&(named.policy_yaml() + &analysis_by("    provider: sec-prom\n")))
            .await?;

        let with_auth = format!(
            "    prometheus:\n      address: {}\n      auth: {{bearerTokenSecret: {{name: stolen, key: token}}}}\n",
            attacker.url()
        );
        if let Err(e) = thief.apply(&(thief.policy_yaml() + &analysis_by(&with_auth))).await {
            eprintln!("the API server refused auth on a policy: {e:#}");
            let plain = format!("    prometheus: {{address: {}}}\n", attacker.url());
            thief.apply(&(thief.policy_yaml() + &analysis_by(&plain))).await?;
        }

        support::wait_until("queries at both servers", T, async || {
            let to_provider = provider.requests().len();
            let to_attacker = attacker.requests().len();
            Ok((to_provider >= 5 && to_attacker >= 5).then_some(()))
        })
        .await?;
        let bearer = format!("Bearer {token}");
        ensure(
            provider
                .requests()
                .iter()
                .all(|(_, h)| h.get("authorization") == Some(&bearer)),
            format!("the provider did not get its token: {:?}", provider.requests()),
        )?;
        for (path, headers) in attacker.requests() {
            ensure(
                !path.starts_with("/redirected"),
                "a redirect of the provider was followed",
            )?;
            let all = format!("{headers:?}");
            ensure(
                !headers.contains_key("authorization") && !all.contains(token) && !all.contains(stolen),
                format!("a credential reached the attacker: {path} {headers:?}"),
            )?;
        }

        // The daemon's own token: Secrets of its namespace only.
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&daemon_kubeconfig)?,
            &Default::default(),
        )
        .await?;
        let daemon = Client::try_from(config)?;
        let theirs: Api<Secret> = Api::namespaced(daemon.clone(), &thief.ns);
        match theirs.get("stolen").await {
            Err(kube::Error::Api(s)) if s.code == 403 => {}
            other => bail!("the daemon read a Secret outside its namespace: {other:?}"),
        }
        match theirs.list(&Default::default()).await {
            Err(kube::Error::Api(s)) if s.code == 403 => {}
            other => bail!("the daemon listed Secrets outside its namespace: {other:?}"),
        }
        let own: Api<Secret> = Api::namespaced(daemon, SYSTEM_NS);
        own.get("sec-prom-token").await.context("the provider's Secret")?;
        // Listed and watched in its own namespace only: the approvals listener's signing secrets.
        own.list(&Default::default())
            .await
            .context("listing its own namespace's Secrets")?;
        Ok(())
    };
    run.await.map_err(|e| {
        let e = fixture::fail_with_logs(&named_daemon, e);
        fixture::fail_with_logs(&thief_daemon, e)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_stale_and_expired_commands_do_nothing() -> Result<()> {
    const TTL: Duration = Duration::from_secs(4);
    let seed = seed("sec-replay").await?;
    let ttl = "4s";
    let mut daemon = start_daemon_with(&seed.ns, &["--command-ttl", ttl], &[]).await?;
    let (kubeconfig, client, _) = approver(&seed, "bob").await?;
    let commands: Api<RolloutCommand> = Api::namespaced(client, &seed.ns);
    let run = async {
        seed.apply(&gated_policy(&seed)).await?;
        seed.wait_policy(POLICY, "the first gate", T, |p| {
            phase(p) == Phase::WaitingForApproval && step(p) == Some(1)
        })
        .await?;
        let (ok, out) = cli(&kubeconfig, &["promote", POLICY, "-n", &seed.ns]).await?;
        ensure(ok, format!("promote: {out}"))?;
        let name = out
            .split("RolloutCommand ")
            .nth(1)
            .and_then(|r| r.split(')').next())
            .context(format!("no command name in {out:?}"))?;
        let first = outcome(&seed, name).await?;
        ensure(
            first.status.as_ref().is_some_and(|s| s.outcome == Outcome::Acted),
            format!("{:?}", first.status),
        )?;
        seed.wait_policy(POLICY, "the second gate", T, |p| step(p) == Some(3))
            .await?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 50), ("v2", 50)], T)
            .await?;

        // The same command applied again (from Git, a backup): a new object, the same spec.
        let replay = commands
            .create(&PostParams::default(), &command(&seed, first.spec.clone()))
            .await?;
        assert_refused(&seed, &replay.name_any(), "WrongStep", &[("v1", 50), ("v2", 50)], 3).await?;

        // The next rollout, at the same first gate: the old approval is for the previous canary.
        let deployments: Api<Deployment> = Api::namespaced(seed.client.clone(), &seed.ns);
        let bump = json!({"spec": {"template": {"metadata": {"annotations": {"example.com/build": "2"}}}}});
        deployments
            .patch("istio-test-v2", &PatchParams::default(), &Patch::Merge(&bump))
            .await?;
        seed.wait_policy(POLICY, "the new rollout", T, |p| {
            p.status
                .as_ref()
                .and_then(|s| s.canary.as_ref())
                .is_some_and(|c| c.template_hash != first.spec.canary)
        })
        .await?;
        mark_ready(&seed.client, &seed.ns, "istio-test-v2", 1).await?;
        let waiting = seed
            .wait_policy(POLICY, "the new rollout's first gate", T, |p| {
                phase(p) == Phase::WaitingForApproval && step(p) == Some(1)
            })
            .await?;
        let previous = commands
            .create(&PostParams::default(), &command(&seed, first.spec.clone()))
            .await?;
        assert_refused(&seed, &previous.name_any(), "WrongCanary", &[("v1", 90), ("v2", 10)], 1).await?;

        // A correctly bound command that waited longer than the TTL (the daemon was down).
        daemon.terminate(Duration::from_secs(10)).await?;
        let hash = waiting
            .status
            .and_then(|s| s.canary)
            .map(|c| c.template_hash)
            .unwrap_or_default();
        let late = commands
            .create(
                &PostParams::default(),
                &command(
                    &seed,
                    RolloutCommandSpec {
                        canary: hash,
                        ..first.spec.clone()
                    },
                ),
            )
            .await?;
        tokio::time::sleep(TTL + Duration::from_secs(1)).await;
        daemon = start_daemon_with(&seed.ns, &["--command-ttl", ttl], &[]).await?;
        assert_refused(&seed, &late.name_any(), "Expired", &[("v1", 90), ("v2", 10)], 1).await?;

        // While the policy is Invalid a command is refused at once, not kept for later.
        let broken = json!({"spec": {"destinationRule": "no-such-rule"}});
        Api::<RolloutPolicy>::namespaced(seed.client.clone(), &seed.ns)
            .patch(POLICY, &PatchParams::default(), &Patch::Merge(&broken))
            .await?;
        seed.wait_policy(POLICY, "Invalid", T, |p| phase(p) == Phase::Invalid)
            .await?;
        let (ok, out) = cli(&kubeconfig, &["promote", POLICY, "-n", &seed.ns]).await?;
        ensure(
            !ok && out.contains("refused (PolicyInvalid)"),
            format!("promote while Invalid: {out}"),
        )?;
        Ok(())
    };
    let result = run.await;
    result.map_err(|e| fixture::fail_with_logs(&daemon, e))
}
