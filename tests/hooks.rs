//! Webhook gates end to end: the daemon (a real process, deploy/'s RBAC) calls a real HTTP receiver
//! in this test, which answers per a script; what the rollout does is read from the policy's status
//! and the VirtualService.

mod fixture;
mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use canaryd::resources::policy::{Phase, RolloutPolicy};
use fixture::analysis::{POLICY, SUCCESS_AND_LATENCY, VS, mesh, message, phase, policy, set_subset};
use fixture::{Seed, ensure, seed, start_daemon};
use serde_json::{Value, json};
use support::Prometheus;

const T: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Script {
    /// Status code per hook path (default 200).
    codes: HashMap<String, u16>,
    /// Calls to hold for 30 s (beyond any timeout) before answering, per path; u32::MAX: always.
    hang: HashMap<String, u32>,
    /// Every call received: (path, body).
    calls: Vec<(String, Value)>,
    /// The Authorization header of every call: (path, header).
    auth: Vec<(String, Option<String>)>,
}

/// A webhook receiver on 127.0.0.1 answering per its script.
#[derive(Clone)]
struct Receiver {
    base: String,
    script: Arc<Mutex<Script>>,
}

impl Receiver {
    async fn start() -> Result<Self> {
        let script = Arc::new(Mutex::new(Script::default()));
        let app = axum::Router::new()
            .route("/{hook}", post(answer))
            .with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self { base, script })
    }

    fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.script.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, hook: &str, code: u16) {
        self.script().codes.insert(hook.into(), code);
    }

    fn hang(&self, hook: &str, calls: u32) {
        self.script().hang.insert(hook.into(), calls);
    }

    fn calls(&self, hook: &str) -> Vec<Value> {
        self.script()
            .calls
            .iter()
            .filter(|(h, _)| h == hook)
            .map(|(_, b)| b.clone())
            .collect()
    }
}

async fn answer(
    State(script): State<Arc<Mutex<Script>>>,
    Path(hook): Path<String>,
    headers: axum::http::HeaderMap,
    Json(body): Json<Value>,
) -> StatusCode {
    let (code, hang) = {
        let mut s = script.lock().unwrap_or_else(|e| e.into_inner());
        s.calls.push((hook.clone(), body));
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        s.auth.push((hook.clone(), auth));
        let hang = match s.hang.get_mut(&hook) {
            Some(n) if *n > 0 => {
                *n = n.saturating_sub(if *n == u32::MAX { 0 } else { 1 });
                true
            }
            _ => false,
        };
        (s.codes.get(&hook).copied().unwrap_or(200), hang)
    };
    if hang {
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl Receiver {
    fn auth(&self, hook: &str) -> Vec<Option<String>> {
        self.script()
            .auth
            .iter()
            .filter(|(h, _)| h == hook)
            .map(|(_, a)| a.clone())
            .collect()
    }
}

/// `spec.webhooks` entries: (name, type, extra fields), each at `receiver/name`.
fn webhooks(r: &Receiver, hooks: &[(&str, &str, &str)]) -> String {
    let mut out = String::from("  webhooks:\n");
    for (name, type_, extra) in hooks {
        out.push_str(&format!(
            "    - {{name: {name}, type: {type_}, url: \"{}/{name}\", interval: 1s, metadata: {{team: payments}}{extra}}}\n",
            r.base
        ));
    }
    out
}

/// The seed policy with `steps` and `tail` (webhooks, analysis) appended.
fn seed_policy(seed: &Seed, steps: &str, tail: &str) -> Result<String> {
    let base = seed.policy_yaml();
    let start = base.find("  steps:\n").context("steps")?;
    let end = base.find("  progressDeadline").context("progressDeadline")?;
    Ok(format!("{}  steps:\n{steps}{}{tail}", &base[..start], &base[end..]))
}

fn gate(p: &RolloutPolicy) -> Option<(String, Option<String>)> {
    let g = p.status.as_ref()?.gate.as_ref()?;
    Some((g.hook.clone(), g.last_answer.clone()))
}

fn reasons(p: &RolloutPolicy) -> Vec<String> {
    p.status
        .as_ref()
        .map(|s| s.history.iter().map(|t| t.reason.clone()).collect())
        .unwrap_or_default()
}

/// Weights of the managed route now.
async fn canary_weight(seed: &Seed) -> Result<u8> {
    Ok(seed.weights(&seed.vs_ns, VS, 1).await?.get("v2").copied().unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_gates_wait_for_a_2xx_and_events_see_every_transition_in_order() -> Result<()> {
    let seed = seed("hk-confirm").await?;
    let r = Receiver::start().await?;
    r.set("start", 403);
    r.set("promote", 503);
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        let hooks = webhooks(
            &r,
            &[
                ("start", "confirm-rollout", ""),
                ("promote", "confirm-promotion", ""),
                ("log", "event", ""),
            ],
        );
        seed.apply(&seed_policy(&seed, "    - weight: 10\n    - weight: 100\n", &hooks)?)
            .await?;
        let p = seed
            .wait_policy(POLICY, "waiting at confirm-rollout", T, |p| {
                gate(p).is_some_and(|(h, a)| h == "start" && a.is_some_and(|a| a.contains("HTTP 403")))
            })
            .await?;
        ensure(message(&p).contains("confirm-rollout webhook start"), message(&p))?;
        let operator = fixture::operator_kubeconfig(&seed).await?;
        let (ok, out) = fixture::cli(
            &operator,
            &["status", POLICY, "-n", &seed.ns, "--watch", "--watch-for", "2s"],
        )
        .await?;
        ensure(
            ok && out.contains("gate   confirm-rollout webhook start since") && out.contains("HTTP 403"),
            format!("canaryd status: {out}"),
        )?;
        // Re-asked every interval while it says no, and no traffic moves meanwhile.
        tokio::time::sleep(Duration::from_secs(3)).await;
        ensure(
            canary_weight(&seed).await? == 0,
            "canary got traffic before confirm-rollout said yes",
        )?;
        let asked = r.calls("start").len();
        ensure(asked >= 3, format!("confirm-rollout asked {asked} times in ~4 s"))?;
        let body = r.calls("start").pop().context("a call")?;
        ensure(
            body["name"] == POLICY
                && body["namespace"] == seed.ns.as_str()
                && body["type"] == "confirm-rollout"
                && body["phase"] == "Progressing"
                && body["canaryWeight"] == 0
                && body["stable"]["subset"] == "v1"
                && body["canary"]["subset"] == "v2"
                && body["metadata"]["team"] == "payments"
                && body["hook"] == "start"
                && body["step"] == 0
                && body["stableWeight"] == 100
                && body["stable"]["version"] == "v1"
                && body["canary"]["version"] == "v2"
                && body["canary"]["templateHash"].as_str().is_some_and(|h| !h.is_empty())
                && body["reason"] == "WaitingForWebhook"
                && body["timestamp"]
                    .as_str()
                    .is_some_and(|t| t.parse::<jiff::Timestamp>().is_ok()),
            format!("payload: {body}"),
        )?;

        r.set("start", 200);
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 90), ("v2", 10)], T)
            .await?;
        seed.wait_policy(POLICY, "waiting at confirm-promotion", T, |p| {
            gate(p).is_some_and(|(h, _)| h == "promote")
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        ensure(
            canary_weight(&seed).await? == 10,
            "promoted before confirm-promotion said yes",
        )?;
        r.set("promote", 200);
        let done = seed
            .wait_policy(POLICY, "Succeeded", T, |p| phase(p) == Phase::Succeeded)
            .await?;
        ensure(gate(&done).is_none(), "status.gate left after promotion")?;

        // Every recorded transition reached the event hook, in order.
        let history = reasons(&done);
        let got = support::wait_until("every event delivered", T, async || {
            let got: Vec<String> = r
                .calls("log")
                .iter()
                .map(|b| b["reason"].as_str().unwrap_or_default().to_string())
                .collect();
            Ok((got.len() >= history.len()).then_some(got))
        })
        .await?;
        ensure(got == history, format!("events {got:?}\nhistory {history:?}"))?;
        Ok(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_rollout_failures_roll_back_and_post_rollout_failures_change_nothing() -> Result<()> {
    let seed = seed("hk-pre").await?;
    let r = Receiver::start().await?;
    r.set("smoke", 500);
    r.set("after", 500);
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        let hooks = webhooks(
            &r,
            &[("smoke", "pre-rollout", ", retries: 1"), ("after", "post-rollout", "")],
        );
        seed.apply(&seed_policy(&seed, "    - weight: 10\n    - weight: 100\n", &hooks)?)
            .await?;
        let p = seed
            .wait_policy(POLICY, "RolledBack", T, |p| phase(p) == Phase::RolledBack)
            .await?;
        let m = message(&p);
        ensure(
            m.contains("pre-rollout webhook smoke failed: HTTP 500 (after 1 retries); 1 failed webhook call(s)"),
            format!("message: {m}"),
        )?;
        ensure(
            reasons(&p).contains(&"WebhookFailed".to_string()),
            format!("{:?}", reasons(&p)),
        )?;
        ensure(r.calls("smoke").len() == 2, format!("{} calls", r.calls("smoke").len()))?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 100), ("v2", 0)], T)
            .await?;
        // post-rollout is told, answers 500, and the outcome stands.
        support::wait_until("post-rollout called", T, async || {
            Ok(r.calls("after")
                .iter()
                .any(|b| b["phase"] == "RolledBack")
                .then_some(()))
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let p = seed.policy(POLICY).await?;
        ensure(phase(&p) == Phase::RolledBack, format!("{:?}", phase(&p)))?;
        ensure(r.calls("after").len() == 1, "post-rollout called more than once")?;
        Ok(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_2xx_rolls_back_within_one_interval() -> Result<()> {
    let seed = seed("hk-rollback").await?;
    let r = Receiver::start().await?;
    r.set("stop", 404);
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        let hooks = webhooks(&r, &[("stop", "rollback", "")]);
        let steps = "    - weight: 10\n    - pause: {}\n    - weight: 100\n";
        seed.apply(&seed_policy(&seed, steps, &hooks)?).await?;
        seed.wait_policy(POLICY, "WaitingForApproval", T, |p| {
            phase(p) == Phase::WaitingForApproval
        })
        .await?;
        let before = r.calls("stop").len();
        tokio::time::sleep(Duration::from_secs(2)).await;
        ensure(r.calls("stop").len() > before, "rollback hook not polled while waiting")?;
        ensure(canary_weight(&seed).await? == 10, "a no rolled back")?;
        r.set("stop", 200);
        let yes = Instant::now();
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 100), ("v2", 0)], T)
            .await?;
        let latency = yes.elapsed();
        eprintln!("rollback 2xx → weights on stable: {latency:?}");
        // One interval (1 s) until it is asked, then one reconcile records it and the next moves.
        ensure(latency <= Duration::from_millis(2500), format!("took {latency:?}"))?;
        let p = seed
            .wait_policy(POLICY, "RolledBack", T, |p| phase(p) == Phase::RolledBack)
            .await?;
        ensure(
            message(&p).contains("rollback webhook stop answered HTTP 200"),
            message(&p),
        )?;
        Ok(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_receiver_hits_the_timeout_and_slows_nothing_else() -> Result<()> {
    let seed = seed("hk-hang").await?;
    let r = Receiver::start().await?;
    r.hang("start", 1);
    r.hang("log", u32::MAX);
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        let hooks = webhooks(
            &r,
            &[
                ("start", "confirm-rollout", ", timeout: 1s"),
                ("log", "event", ", timeout: 1s"),
            ],
        );
        let applied = Instant::now();
        seed.apply(&seed_policy(&seed, "    - weight: 10\n    - weight: 100\n", &hooks)?)
            .await?;
        let p = seed
            .wait_policy(POLICY, "the timeout in status", T, |p| {
                gate(p).is_some_and(|(_, a)| a.is_some_and(|a| a.contains("timed out after 1s")))
            })
            .await?;
        ensure(phase(&p) == Phase::Progressing, format!("{:?}", phase(&p)))?;
        seed.wait_policy(POLICY, "Succeeded", T, |p| phase(p) == Phase::Succeeded)
            .await?;
        let took = applied.elapsed();
        eprintln!("apply → Succeeded with a hanging first answer and a hanging event hook: {took:?}");
        // The first call times out (1 s), the second is asked one interval (1 s) later and says yes;
        // the event hook, hanging on every call, holds nothing up.
        ensure(took <= Duration::from_secs(6), format!("took {took:?}"))?;
        ensure(r.calls("start").len() == 2, format!("{} calls", r.calls("start").len()))?;
        Ok(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_slo_breach_rolls_back_while_confirm_traffic_increase_says_no() -> Result<()> {
    let seed = seed("hk-breach").await?;
    let prom = Prometheus::start().await?;
    let (_mesh, addr) = mesh(&seed, &prom, 400).await?;
    let r = Receiver::start().await?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        let hooks = webhooks(&r, &[("more", "confirm-traffic-increase", "")]);
        let steps = "    - weight: 10\n    - weight: 50\n    - weight: 100\n";
        let yaml = policy(&seed, &prom, steps, SUCCESS_AND_LATENCY)?;
        seed.apply(&format!("{yaml}{hooks}")).await?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 90), ("v2", 10)], T)
            .await?;
        // The weight window and startAfter keep the next increase seconds away: say no now.
        r.set("more", 403);
        seed.wait_policy(POLICY, "held by confirm-traffic-increase", T, |p| {
            gate(p).is_some_and(|(h, a)| h == "more" && a.is_some_and(|a| a.contains("403")))
        })
        .await?;
        set_subset(&addr, "v2", json!({"successRatio": 0.9})).await?;
        let p = seed
            .wait_policy(POLICY, "RolledBack", T, |p| phase(p) == Phase::RolledBack)
            .await?;
        ensure(
            reasons(&p).contains(&"AnalysisFailed".to_string()),
            format!("{:?}", reasons(&p)),
        )?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 100), ("v2", 0)], T)
            .await?;
        Ok(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_goes_only_to_the_urls_its_secret_allows() -> Result<()> {
    let seed = seed("hk-token").await?;
    let r = Receiver::start().await?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        // The platform's Secrets in the daemon's namespace: one allows the receiver's /start only.
        seed.apply(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: hk-gate-token\n  namespace: canaryd-system\n  \
             annotations: {{canaryd.io/webhook-urls: \"{}/start\", canaryd.io/webhook-namespaces: \"\"}}\nstringData: {{token: s3cret-hk}}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata:\n  name: hk-other-token\n  namespace: canaryd-system\n  \
             annotations: {{canaryd.io/webhook-urls: \"http://elsewhere.test/\", canaryd.io/webhook-namespaces: \"\"}}\nstringData: {{token: not-for-you}}\n",
            r.base
        ))
        .await?;
        let hooks = webhooks(
            &r,
            &[
                (
                    "start",
                    "confirm-rollout",
                    ", bearerTokenSecret: {name: hk-gate-token, key: token}",
                ),
                (
                    "promote",
                    "confirm-promotion",
                    ", bearerTokenSecret: {name: hk-other-token, key: token}",
                ),
            ],
        );
        seed.apply(&seed_policy(&seed, "    - weight: 10\n    - weight: 100\n", &hooks)?)
            .await?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 90), ("v2", 10)], T)
            .await?;
        ensure(
            !r.auth("start").is_empty() && r.auth("start").iter().all(|a| a.as_deref() == Some("Bearer s3cret-hk")),
            format!("{:?}", r.auth("start")),
        )?;
        // A Secret that does not list this URL: the call is not made, the gate holds and says why.
        let p = seed
            .wait_policy(POLICY, "confirm-promotion refused its token", T, |p| {
                gate(p).is_some_and(|(h, a)| h == "promote" && a.is_some_and(|a| a.contains("does not allow this URL")))
            })
            .await?;
        ensure(phase(&p) == Phase::Progressing, format!("{:?}", phase(&p)))?;
        ensure(r.calls("promote").is_empty(), "a refused token's hook was called")?;
        ensure(canary_weight(&seed).await? == 10, "promoted past a refused gate")?;
        Ok(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}
