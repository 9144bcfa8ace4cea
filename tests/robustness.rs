//! Trust under faults, against the real API server with the daemon as a real process: a leader
//! whose Lease renewals fail stops writing and calling hooks before a standby can take over; a policy the daemon
//! cannot read is reported `Invalid` while the others roll out; the probes tell the truth.

mod fixture;
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use canaryd::resources::policy::{Phase, RolloutPolicy};
use fixture::{Seed, cli, ensure, seed};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};
use support::standin::{StandIn, ok_json};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const T: Duration = Duration::from_secs(30);
const VS: &str = "istio-test-vs";
const POLICY: &str = "istio-test";

fn phase(p: &RolloutPolicy) -> Phase {
    p.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

/// GET `path` on a daemon's HTTP port: (status, body).
async fn probe(addr: &str, path: &str) -> Result<(u16, String)> {
    let response = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()?
        .get(format!("http://{addr}{path}"))
        .send()
        .await?;
    Ok((response.status().as_u16(), response.text().await?))
}

/// A ServiceAccount of the daemon's own, bound to deploy/'s ClusterRole and lease Role by bindings
/// of its own, so that its lease rights can be taken away alone. Returns its kubeconfig.
async fn own_daemon_account(seed: &Seed, name: &str) -> Result<std::path::PathBuf> {
    fixture::daemon_kubeconfig().await?; // applies deploy/rbac.yaml
    let rbac = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: {name}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: canaryd}}\n\
         subjects:\n- {{kind: ServiceAccount, name: {name}, namespace: canaryd-system}}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: {name}-leader, namespace: canaryd-system}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: canaryd-leader}}\n\
         subjects:\n- {{kind: ServiceAccount, name: {name}, namespace: canaryd-system}}\n"
    );
    seed.apply(&rbac).await?;
    let token = support::token_for("canaryd-system", name).await?;
    fixture::kubeconfig_for_token(&token, "canaryd-system").await
}

/// Renewals of the leader fail (its RBAC on Leases is revoked: 403) while it keeps running and can
/// still write everything else. It must stop writing at its renew deadline, before the standby can
/// acquire the Lease; the standby then finishes the rollout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_cannot_renew_stops_before_the_standby_takes_over() -> Result<()> {
    let seed = seed("split").await?;
    let account = "canaryd-split-a";
    let kubeconfig_a = own_daemon_account(&seed, account).await?;
    let kubeconfig_a = kubeconfig_a.to_string_lossy().into_owned();
    let (lease_duration, renew_deadline) = (Duration::from_secs(6), Duration::from_secs(3));
    let election = [
        "--leader-elect",
        "--lease-name",
        "split-test",
        "--lease-duration",
        "6s",
        "--renew-deadline",
        "3s",
    ];
    let mut a = fixture::start_daemon_with(
        &seed.ns,
        &election,
        &[("POD_NAME", "daemon-a"), ("KUBECONFIG", kubeconfig_a.as_str())],
    )
    .await?;
    let leases: Api<Lease> = Api::namespaced(seed.client.clone(), "canaryd-system");
    let lease = async || -> Result<Option<Lease>> { Ok(leases.get_opt("split-test").await?) };
    let holder =
        async || -> Result<Option<String>> { Ok(lease().await?.and_then(|l| l.spec).and_then(|s| s.holder_identity)) };
    support::wait_until("daemon-a holds the lease", T, async || {
        Ok((holder().await?.as_deref() == Some("daemon-a")).then_some(()))
    })
    .await?;
    let b = fixture::start_daemon_with(&seed.ns, &election, &[("POD_NAME", "daemon-b")]).await?;
    // A rollout hook asked every second while the canary has traffic, and event hooks: calls to a
    // tenant's URL that only a leader may make.
    let receiver = StandIn::start(ok_json("{}"))?;
    let run = async {
        let hooks = format!(
            "  webhooks:\n    - {{name: load, type: rollout, url: '{url}/rollout', interval: 1s}}\n    \
             - {{name: news, type: event, url: '{url}/event'}}\n",
            url = receiver.url()
        );
        let policy = seed.policy_yaml().replace("    - pause: {duration: 2s}\n", "") + &hooks;
        seed.apply(&policy).await?;
        seed.wait_policy(POLICY, "WaitingForApproval", T, |p| {
            phase(p) == Phase::WaitingForApproval
        })
        .await?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 50), ("v2", 50)], T)
            .await?;
        let vs_before = seed.vs(&seed.vs_ns, VS).await?["metadata"]["resourceVersion"].clone();
        let policy_before = seed.policy(POLICY).await?.metadata.resource_version;
        support::wait_until("daemon-a calls the rollout hook", T, async || {
            Ok((receiver.to("/rollout").len() >= 2).then_some(()))
        })
        .await?;

        // Only daemon-a's lease rights go: every other call of it still works.
        let bindings: Api<RoleBinding> = Api::namespaced(seed.client.clone(), "canaryd-system");
        bindings
            .delete(&format!("{account}-leader"), &DeleteParams::default())
            .await?;
        let revoked = Instant::now();
        // Its last renewal came before the revocation, so its renew deadline has passed by then
        // (a request sent just before may still arrive within the slack).
        let past_deadline = async {
            tokio::time::sleep(renew_deadline + Duration::from_millis(300)).await;
            receiver.requests().len()
        };
        let (exited, calls_at_deadline) = tokio::join!(a.wait(lease_duration + Duration::from_secs(5)), past_deadline);
        exited.context("daemon-a kept running although it could not renew the lease")?;
        let stopped = Instant::now();
        // daemon-b acquires only after daemon-a stopped (checked below): every call so far is a's.
        let calls = receiver.requests().len();
        ensure(
            calls == calls_at_deadline,
            format!(
                "daemon-a called {} hook(s) after its renew deadline, before it stopped {:?} after the revocation",
                calls - calls_at_deadline,
                stopped - revoked
            ),
        )?;
        let stopped_wall = jiff::Timestamp::now();
        eprintln!(
            "daemon-a stopped {:?} after its lease rights were revoked",
            stopped - revoked
        );
        ensure(
            stopped - revoked <= renew_deadline + Duration::from_secs(2),
            format!("daemon-a stopped only {:?} after the revocation", stopped - revoked),
        )?;
        let log_a = std::fs::read_to_string(a.stderr_log())?;
        ensure(
            log_a.contains("within the renew deadline; stopped writing") && log_a.contains("lost the lease"),
            format!("daemon-a does not say why it stopped:\n{}", a.logs(20)),
        )?;

        support::wait_until("daemon-b holds the lease", T, async || {
            Ok((holder().await?.as_deref() == Some("daemon-b")).then_some(()))
        })
        .await?;
        let acquired = lease()
            .await?
            .and_then(|l| l.spec)
            .and_then(|s| s.acquire_time)
            .context("no acquireTime")?
            .0;
        ensure(
            acquired > stopped_wall,
            format!("daemon-b acquired the lease at {acquired}, before daemon-a stopped at {stopped_wall}"),
        )?;
        // Nothing was written between the revocation and the takeover.
        ensure(
            seed.vs(&seed.vs_ns, VS).await?["metadata"]["resourceVersion"] == vs_before,
            "the VirtualService was written before the takeover",
        )?;
        ensure(
            seed.policy(POLICY).await?.metadata.resource_version == policy_before,
            "the policy was written before the takeover",
        )?;

        let admin = support::control_plane().await?.kubeconfig_path().to_path_buf();
        let (ok, out) = cli(&admin, &["promote", POLICY, "-n", &seed.ns]).await?;
        ensure(ok, out)?;
        seed.wait_policy(POLICY, "Succeeded", T, |p| phase(p) == Phase::Succeeded)
            .await?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 0), ("v2", 100)], T)
            .await?;
        let log_b = std::fs::read_to_string(b.stderr_log())?;
        ensure(log_b.contains("weights set"), "the new leader did not write")?;
        Ok::<_, anyhow::Error>(())
    };
    run.await
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}\n{}", a.logs(40), b.logs(40)))
}

/// A stored policy the daemon cannot decode (a progressDeadline that overflows, stored while the
/// CRD was looser, as before an upgrade) does not stop the other policies after a (re)start: it is
/// `Invalid` naming the field, the good one rolls out. An absurd but decodable value is refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_policy_is_invalid_and_the_others_roll_out() -> Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let seed = seed("badpol").await?;
    let overflowing = seed
        .policy_yaml()
        .replace("name: istio-test\n", "name: broken\n")
        .replace("progressDeadline: 10m", "progressDeadline: 99999999999999999999s");
    // Today's CRD refuses it.
    let refused = support::apply_yaml(&seed.client, &overflowing).await;
    ensure(
        refused
            .as_ref()
            .err()
            .is_some_and(|e| format!("{e:#}").contains("progressDeadline")),
        format!("the CRD accepted an overflowing progressDeadline: {refused:?}"),
    )?;

    // Store it through a looser CRD (as one from before the bounds), then put the CRD back.
    let crds: Api<CustomResourceDefinition> = Api::all(seed.client.clone());
    let name = "rolloutpolicies.canaryd.io";
    let loosen = json!([{"op": "remove", "path":
        "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/progressDeadline/pattern"}]);
    crds.patch(
        name,
        &PatchParams::default(),
        &Patch::Json::<()>(serde_json::from_value(loosen)?),
    )
    .await?;
    let stored = support::wait_until("the looser CRD to accept the policy", T, async || {
        Ok(support::apply_yaml(&seed.client, &overflowing).await.ok())
    })
    .await;
    let crd_yaml = std::fs::read_to_string(fixture::repo().join("deploy/crds/rolloutpolicy.yaml"))?;
    support::apply_yaml(&seed.client, &crd_yaml).await?;
    stored?;
    let probe_yaml = overflowing.replace("name: broken\n", "name: broken-probe\n");
    support::wait_until("the CRD to refuse overflowing durations again", T, async || {
        Ok(support::apply_yaml(&seed.client, &probe_yaml)
            .await
            .is_err()
            .then_some(()))
    })
    .await?;

    // Absurd but decodable: the CRD accepts it, validation refuses it.
    let absurd = seed
        .policy_yaml()
        .replace("name: istio-test\n", "name: absurd\n")
        .replace(
            "progressDeadline: 10m",
            "progressDeadline: 10m\n  scaling: {scaleDownDelay: 1000000w}",
        );
    seed.apply(&absurd).await?;
    seed.apply(&seed.policy_yaml()).await?;

    let daemon = fixture::start_daemon(&seed.ns).await?;
    let run = async {
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 50), ("v2", 50)], T)
            .await?;
        seed.wait_policy(POLICY, "WaitingForApproval", T, |p| {
            phase(p) == Phase::WaitingForApproval
        })
        .await?;
        let api: Api<DynamicObject> = Api::namespaced_with(
            seed.client.clone(),
            &seed.ns,
            &kube::api::ApiResource::erase::<RolloutPolicy>(&()),
        );
        let broken = support::wait_until("broken to be Invalid", T, async || {
            let p = api.get("broken").await?;
            let status = p.data.get("status").cloned().unwrap_or(Value::Null);
            Ok((status["phase"] == "Invalid").then_some(status))
        })
        .await?;
        let message = broken["message"].as_str().unwrap_or_default();
        ensure(
            message.contains("spec.progressDeadline"),
            format!("the message does not name the field: {broken}"),
        )?;
        ensure(
            !seed.events("broken", "InvalidSpec").await?.is_empty(),
            "no InvalidSpec event on broken",
        )?;
        let absurd = seed
            .wait_policy("absurd", "absurd to be Invalid", T, |p| phase(p) == Phase::Invalid)
            .await?;
        let message = absurd.status.and_then(|s| s.message).unwrap_or_default();
        ensure(
            message.contains("spec.scaling.scaleDownDelay"),
            format!("absurd: {message}"),
        )?;
        Ok::<_, anyhow::Error>(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))?;

    // `canaryd validate` says the same without a cluster.
    let dir = support::scratch_dir("validate")?;
    let file = dir.join("absurd.yaml");
    std::fs::write(&file, &absurd)?;
    let out = std::process::Command::new(support::bin_path("canaryd")?)
        .arg("validate")
        .arg(&file)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure(
        !out.status.success() && text.contains("spec.scaling.scaleDownDelay"),
        format!("canaryd validate: {text}"),
    )?;
    Ok(())
}

/// A TCP proxy between a daemon and the API server that can refuse connections and cut the open
/// ones: the daemon sees its API server go away and come back.
struct Proxy {
    addr: String,
    open: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: String, open: bool) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let open = Arc::new(AtomicBool::new(open));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (is_open, tasks) = (open.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !is_open.load(Ordering::SeqCst) {
                    drop(inbound); // refused: the connection closes at once
                    continue;
                }
                let upstream = upstream.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                if let Ok(mut t) = tasks.lock() {
                    t.push(task);
                }
            }
        });
        Ok(Self {
            addr,
            open,
            conns,
            accept,
        })
    }

    fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }

    /// Refuse new connections and cut every open one.
    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        if let Ok(mut t) = self.conns.lock() {
            for task in t.drain(..) {
                task.abort();
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// The daemon's ServiceAccount token, with the API server reached through `server`.
async fn daemon_kubeconfig_via(server: &str) -> Result<std::path::PathBuf> {
    fixture::daemon_kubeconfig().await?;
    let token = support::token_for("canaryd-system", "canaryd").await?;
    let dir = support::scratch_dir("kubeconfig-proxy")?;
    let path = dir.join("config");
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: https://{server}\n    insecure-skip-tls-verify: true\n\
         users:\n- name: user\n  user:\n    token: {token}\ncontexts:\n- name: local\n  context:\n    cluster: local\n    user: user\n    namespace: canaryd-system\n\
         current-context: local\n"
    );
    std::fs::write(&path, config)?;
    Ok(path)
}

/// /readyz is 503 until the caches have synced and then names the replica's role; /healthz fails
/// once the watches have failed for longer than --stuck-timeout and recovers with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_follow_cache_sync_leadership_and_failing_watches() -> Result<()> {
    let seed = seed("probes").await?;
    let cp = support::control_plane().await?;
    let upstream = cp.server_url().trim_start_matches("https://").to_string();
    let proxy = Proxy::start(upstream, false).await?;
    let kubeconfig = daemon_kubeconfig_via(&proxy.addr).await?;
    let kubeconfig = kubeconfig.to_string_lossy().into_owned();
    let mut daemon = fixture::start_daemon_with(
        &seed.ns,
        &["--stuck-timeout", "3s"],
        &[("KUBECONFIG", kubeconfig.as_str())],
    )
    .await?;
    let addr = daemon.listening_addr(Duration::from_secs(5)).await?;
    let run = async {
        // The API server cannot be reached: not ready, and unhealthy once that lasts past the bound.
        let started = Instant::now();
        let (code, body) = probe(&addr, "/readyz").await?;
        ensure(code == 503, format!("/readyz before any list: {code} {body}"))?;
        let (code, body) = support::wait_until("/healthz to fail", T, async || {
            let (code, body) = probe(&addr, "/healthz").await?;
            Ok((code == 503).then_some((code, body)))
        })
        .await?;
        ensure(
            started.elapsed() >= Duration::from_secs(2) && body.contains("watch of"),
            format!("/healthz {code} after {:?}: {body}", started.elapsed()),
        )?;
        ensure(probe(&addr, "/readyz").await?.0 == 503, "ready without caches")?;

        // It comes back: ready and healthy.
        proxy.open();
        support::wait_until("/readyz to be ready", T * 2, async || {
            let (code, body) = probe(&addr, "/readyz").await?;
            Ok((code == 200 && body == "ok\n").then_some(()))
        })
        .await?;
        support::wait_until("/healthz to recover", T * 2, async || {
            Ok((probe(&addr, "/healthz").await?.0 == 200).then_some(()))
        })
        .await?;

        // It goes away after the sync: unhealthy after the bound, healthy again when it is back.
        proxy.cut();
        let cut = Instant::now();
        let (_, body) = support::wait_until("/healthz to fail after the cut", T, async || {
            let (code, body) = probe(&addr, "/healthz").await?;
            Ok((code == 503).then_some((code, body)))
        })
        .await?;
        eprintln!("/healthz failed {:?} after the cut: {body}", cut.elapsed());
        ensure(
            cut.elapsed() >= Duration::from_secs(3),
            format!("unhealthy before the bound: {:?}", cut.elapsed()),
        )?;
        proxy.open();
        // A restarted watch says nothing: it counts as recovered once its errors stopped for 40 s.
        support::wait_until("/healthz to recover after the cut", T * 3, async || {
            Ok((probe(&addr, "/healthz").await?.0 == 200).then_some(()))
        })
        .await?;
        ensure(daemon.try_wait()?.is_none(), "the daemon exited")?;

        // With leader election: the holder says so, and a standby is ready too (caches warm).
        let election = ["--leader-elect", "--lease-name", "probes-test"];
        let mut leader = fixture::start_daemon_with(&seed.ns, &election, &[("POD_NAME", "probes-a")]).await?;
        let leader_addr = leader.listening_addr(Duration::from_secs(5)).await?;
        support::wait_until("the leader to say it leads", T, async || {
            let (code, body) = probe(&leader_addr, "/readyz").await?;
            Ok((code == 200 && body == "ok: leader\n").then_some(()))
        })
        .await?;
        let mut standby = fixture::start_daemon_with(&seed.ns, &election, &[("POD_NAME", "probes-b")]).await?;
        let standby_addr = standby.listening_addr(Duration::from_secs(5)).await?;
        support::wait_until("the standby to be ready", T, async || {
            let (code, body) = probe(&standby_addr, "/readyz").await?;
            Ok((code == 200 && body == "ok: standby\n").then_some(()))
        })
        .await?;
        ensure(probe(&standby_addr, "/healthz").await?.0 == 200, "standby unhealthy")?;
        standby.kill()?;
        leader.kill()?;
        Ok::<_, anyhow::Error>(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))?;
    drop(proxy);
    Ok(())
}
