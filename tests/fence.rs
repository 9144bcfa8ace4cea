//! Leadership fenced in every side effect, not only by the process exiting: a leader that outlives
//! its renew deadline with work in flight (frozen across it, as a paused VM or a stopped container
//! is, then resumed) makes no write and calls no hook once it runs again, whichever hook it was in
//! the middle of. The daemon is a real process against the real API server; the hooks are a real
//! HTTP server in this test that records when each call arrives.

mod fixture;
mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use canaryd::resources::policy::{Phase, RolloutPolicy};
use fixture::{Seed, ensure, seed};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;
use kube::api::{Api, ListParams};

const T: Duration = Duration::from_secs(30);
const VS: &str = "istio-test-vs";
const POLICY: &str = "istio-test";
/// Every hook type, each at `receiver/<name>`, with the status code it answers: the gates let the
/// rollout on, the rollback switch stays off.
const HOOKS: [(&str, &str, u16); 8] = [
    ("confirm-rollout", "confirm-rollout", 200),
    ("pre-rollout", "pre-rollout", 200),
    ("rollout", "rollout", 200),
    ("confirm-traffic-increase", "confirm-traffic-increase", 200),
    ("confirm-promotion", "confirm-promotion", 200),
    ("post-rollout", "post-rollout", 200),
    ("rollback", "rollback", 404),
    ("event", "event", 200),
];

#[derive(Default)]
struct Calls {
    /// Every call: (hook, when it arrived).
    seen: Vec<(String, Instant)>,
    /// The next call to this hook is held this long before it is answered.
    hold_next: Option<(String, Duration)>,
    /// When the held call arrived.
    held_at: Option<Instant>,
}

type Shared = Arc<Mutex<Calls>>;

fn calls(shared: &Shared) -> std::sync::MutexGuard<'_, Calls> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

async fn answer(State(shared): State<Shared>, Path(hook): Path<String>) -> StatusCode {
    let hold = {
        let mut c = calls(&shared);
        c.seen.push((hook.clone(), Instant::now()));
        match c.hold_next.take() {
            Some((h, d)) if h == hook => {
                c.held_at = Some(Instant::now());
                Some(d)
            }
            other => {
                c.hold_next = other;
                None
            }
        }
    };
    if let Some(d) = hold {
        tokio::time::sleep(d).await;
    }
    let code = HOOKS.iter().find(|(n, _, _)| *n == hook).map_or(200, |h| h.2);
    StatusCode::from_u16(code).unwrap_or(StatusCode::OK)
}

async fn receiver() -> Result<(String, Shared)> {
    let shared = Shared::default();
    let app = axum::Router::new()
        .route("/{hook}", post(answer))
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((base, shared))
}

fn signal(pid: u32, sig: libc::c_int) -> Result<()> {
    // SAFETY: the daemon is this test's own unreaped child, so its pid cannot have been reused.
    if unsafe { libc::kill(pid as libc::pid_t, sig) } != 0 {
        return Err(std::io::Error::last_os_error()).context("signalling the daemon");
    }
    Ok(())
}

/// What the daemon can write in the test's namespaces, as versions: the VirtualService and the
/// policy (status included) by resourceVersion, the Deployments by generation (their status is the
/// test's), and every Event.
async fn written(seed: &Seed) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let vs = seed.vs(&seed.vs_ns, VS).await?;
    out.insert(
        format!("VirtualService {VS}"),
        vs["metadata"]["resourceVersion"].to_string(),
    );
    let policy = seed.policy(POLICY).await?;
    out.insert(
        format!("RolloutPolicy {POLICY}"),
        policy.resource_version().unwrap_or_default(),
    );
    let deployments: Api<Deployment> = Api::namespaced(seed.client.clone(), &seed.ns);
    for d in deployments.list(&ListParams::default()).await? {
        out.insert(
            format!("Deployment {}", d.name_any()),
            format!("{:?}", d.metadata.generation),
        );
    }
    for ns in [&seed.ns, &seed.vs_ns] {
        let events: Api<Event> = Api::namespaced(seed.client.clone(), ns);
        for e in events.list(&ListParams::default()).await? {
            out.insert(
                format!("Event {}", e.name_any()),
                e.resource_version().unwrap_or_default(),
            );
        }
    }
    Ok(out)
}

fn phase(p: &RolloutPolicy) -> Phase {
    p.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

/// How many leaders are frozen and resumed in turn: a resumed process races its own exit, so each
/// is one more chance for a call that is not fenced to get out.
const CYCLES: usize = 4;

/// One leader of a fresh Lease (so it leads at once) that carries the rollout on: it is frozen
/// (SIGSTOP) while the receiver holds one of its rollout calls, and resumed (SIGCONT) after its renew
/// deadline, when that call has been answered and the repeating hooks are due again. Returns the
/// hook calls that arrived and the writes that happened after the deadline, and whether it exited.
async fn freeze_across_the_deadline(seed: &Seed, shared: &Shared, cycle: usize) -> Result<(Vec<String>, Vec<String>)> {
    let renew_deadline = Duration::from_secs(3);
    let lease = format!("fence-{cycle}");
    let identity = format!("daemon-{cycle}");
    let election = [
        "--leader-elect",
        "--lease-name",
        &lease,
        "--lease-duration",
        "6s",
        "--renew-deadline",
        "3s",
    ];
    let mut daemon = fixture::start_daemon_with(&seed.ns, &election, &[("POD_NAME", &identity)]).await?;
    let run = async {
        let leases: Api<Lease> = Api::namespaced(seed.client.clone(), "canaryd-system");
        support::wait_until("the daemon holds its lease", T, async || {
            let holder = leases
                .get_opt(&lease)
                .await?
                .and_then(|l| l.spec)
                .and_then(|s| s.holder_identity);
            Ok((holder.as_deref() == Some(identity.as_str())).then_some(()))
        })
        .await?;
        seed.wait_policy(POLICY, "WaitingForApproval", T, |p| {
            phase(p) == Phase::WaitingForApproval
        })
        .await?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 50), ("v2", 50)], T)
            .await?;
        let count = |hook: &str| calls(shared).seen.iter().filter(|(h, _)| h == hook).count();
        let (rollout, rollback) = (count("rollout"), count("rollback"));
        support::wait_until("this leader's rollout and rollback hooks repeat", T, async || {
            Ok((count("rollout") >= rollout + 2 && count("rollback") >= rollback + 2).then_some(()))
        })
        .await?;

        // The next rollout call is held 3 s: the daemon is frozen in the middle of it, and its
        // answer arrives while the daemon is frozen.
        calls(shared).held_at = None;
        calls(shared).hold_next = Some(("rollout".into(), Duration::from_secs(3)));
        support::wait_until("a rollout call is held", T, async || Ok(calls(shared).held_at)).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        signal(daemon.pid(), libc::SIGSTOP)?;
        let stopped = Instant::now();
        // Its deadline is at most `renew_deadline` after it was frozen (its last renewal was sent
        // before). Requests it sent before the freeze have arrived after a second.
        let deadline = stopped + renew_deadline;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = written(seed).await?;
        tokio::time::sleep_until((deadline + Duration::from_millis(1500)).into()).await;
        signal(daemon.pid(), libc::SIGCONT)?;
        let resumed = Instant::now();
        let exited = daemon.wait(Duration::from_secs(10)).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = written(seed).await?;

        let late: Vec<String> = calls(shared)
            .seen
            .iter()
            .filter(|(_, at)| *at > stopped + Duration::from_secs(1))
            .map(|(h, at)| format!("{h} {:?} after resumption", at.saturating_duration_since(resumed)))
            .collect();
        let changed: Vec<String> = after
            .iter()
            .filter(|(k, v)| before.get(*k) != Some(*v))
            .map(|(k, v)| format!("{k}: {:?} → {v}", before.get(k)))
            .collect();
        eprintln!(
            "{identity}: frozen {:?}, resumed {:?} after the latest possible deadline; late calls {late:?}, late writes {changed:?}",
            resumed - stopped,
            resumed.saturating_duration_since(deadline)
        );
        exited.context("the daemon kept running after its renew deadline")?;
        let log = std::fs::read_to_string(daemon.stderr_log())?;
        ensure(
            log.contains("within the renew deadline; stopped writing"),
            "the daemon does not say why it stopped",
        )?;
        Ok::<_, anyhow::Error>((late, changed))
    };
    run.await.map_err(|e| anyhow::anyhow!("{e:#}\n{}", daemon.logs(40)))
}

/// Leaders frozen across their renew deadline while a rollout with every hook type runs, one hook
/// call held, then resumed: from their resumption until they have exited, no hook call arrives and
/// nothing in the cluster changes. Before the fence, resumed processes called the due hooks on
/// their way out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaders_resumed_after_their_renew_deadline_call_no_hook_and_write_nothing() -> Result<()> {
    let seed = seed("fence").await?;
    let (base, shared) = receiver().await?;
    let mut hooks = String::from("  webhooks:\n");
    for (name, type_, _) in HOOKS {
        hooks.push_str(&format!(
            "    - {{name: {name}, type: {type_}, url: '{base}/{name}', interval: 1s, timeout: 10s}}\n"
        ));
    }
    let policy = seed.policy_yaml().replace("    - pause: {duration: 2s}\n", "") + &hooks;
    seed.apply(&policy).await?;
    let (mut late, mut changed) = (Vec::new(), Vec::new());
    for cycle in 0..CYCLES {
        let (l, c) = freeze_across_the_deadline(&seed, &shared, cycle).await?;
        late.extend(l);
        changed.extend(c);
    }
    ensure(
        late.is_empty() && changed.is_empty(),
        format!("resumed leaders acted after their renew deadline: calls {late:?}, writes {changed:?}"),
    )
}
