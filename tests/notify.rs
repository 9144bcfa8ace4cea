//! Notifications against real receivers: a stand-in for Slack's Web API (a real HTTP server speaking
//! chat.postMessage / chat.update with a Bearer token, as Slack does) and Teams / JSON webhook
//! receivers that record what they get. The daemon is a real process with exactly deploy/'s RBAC.

mod fixture;
mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::post;
use canaryd::resources::policy::{Phase, RolloutPolicy};
use fixture::{Seed, cli, ensure, fail_with_logs, operator_kubeconfig, seed, start_daemon};
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);
const POLICY: &str = "istio-test";
const TOKEN: &str = "xoxb-stand-in-token-0123";
const HOOK_SECRET: &str = "hook-credential-4567";

#[derive(Clone, Debug)]
struct Call {
    path: String,
    body: Value,
}

/// Slack's Web API and two webhook receivers in one server; `delay` makes every answer late.
#[derive(Clone, Default)]
struct Stand {
    calls: Arc<Mutex<Vec<Call>>>,
    next_ts: Arc<AtomicU32>,
    delay: Duration,
}

impl Stand {
    async fn start(delay: Duration) -> Result<(Self, String)> {
        let stand = Stand {
            delay,
            ..Default::default()
        };
        let app = axum::Router::new()
            .route("/api/{method}", post(slack_api))
            .route("/hook/{name}", post(receiver))
            .with_state(stand.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok((stand, base))
    }

    fn calls(&self, path: &str) -> Vec<Value> {
        self.calls
            .lock()
            .map(|c| c.iter().filter(|c| c.path == path).map(|c| c.body.clone()).collect())
            .unwrap_or_default()
    }

    fn record(&self, path: String, body: &[u8]) {
        let body = serde_json::from_slice(body).unwrap_or(Value::Null);
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(Call { path, body });
        }
    }
}

/// As Slack answers: HTTP 200 with `ok`, an `error` for a wrong token.
async fn slack_api(State(s): State<Stand>, Path(method): Path<String>, headers: HeaderMap, body: Bytes) -> Json<Value> {
    tokio::time::sleep(s.delay).await;
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    if auth != Some(&format!("Bearer {TOKEN}")) {
        return Json(json!({"ok": false, "error": "invalid_auth"}));
    }
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    s.record(method.clone(), &body);
    let channel = request["channel"].as_str().unwrap_or("C0").to_string();
    match method.as_str() {
        "chat.postMessage" => {
            let n = s.next_ts.fetch_add(1, Ordering::SeqCst);
            Json(json!({"ok": true, "channel": channel, "ts": format!("1700000000.{n:06}"), "message": {}}))
        }
        "chat.update" => Json(json!({"ok": true, "channel": channel, "ts": request["ts"], "text": request["text"]})),
        _ => Json(json!({"ok": false, "error": "unknown_method"})),
    }
}

async fn receiver(State(s): State<Stand>, Path(name): Path<String>, body: Bytes) -> &'static str {
    tokio::time::sleep(s.delay).await;
    s.record(format!("hook/{name}"), &body);
    "1"
}

fn phase(p: &RolloutPolicy) -> Phase {
    p.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

fn reasons(p: &RolloutPolicy) -> Vec<String> {
    p.status
        .iter()
        .flat_map(|s| s.history.iter().map(|t| t.reason.clone()))
        .collect()
}

/// Secrets in the daemon's namespace and NotificationTargets named `{prefix}-…`.
async fn targets(seed: &Seed, prefix: &str, slack_api: &str, teams: &str, hook: &str, slack_hook: &str) -> Result<()> {
    fixture::daemon_kubeconfig().await?; // creates canaryd-system
    let yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {prefix}-notify, namespace: canaryd-system}}\n\
         stringData: {{token: {TOKEN}, wrong: xoxb-wrong, signing: s1gning, teams: '{teams}', hook: '{hook}', slackhook: '{slack_hook}'}}\n---\n\
         apiVersion: canaryd.io/v1alpha1\nkind: NotificationTarget\nmetadata: {{name: {prefix}-slackhook}}\n\
         spec: {{namespaceSelector: {{}}, slack: {{webhookUrl: {{name: {prefix}-notify, key: slackhook}}}}}}\n---\n\
         apiVersion: canaryd.io/v1alpha1\nkind: NotificationTarget\nmetadata: {{name: {prefix}-slack}}\n\
         spec: {{namespaceSelector: {{}}, slack: {{botToken: {{name: {prefix}-notify, key: token}}, channel: C42, apiUrl: '{slack_api}',\n\
           signingSecret: {{name: {prefix}-notify, key: signing}}}}}}\n---\n\
         apiVersion: canaryd.io/v1alpha1\nkind: NotificationTarget\nmetadata: {{name: {prefix}-badslack}}\n\
         spec: {{namespaceSelector: {{}}, slack: {{botToken: {{name: {prefix}-notify, key: wrong}}, channel: C42, apiUrl: '{slack_api}'}}}}\n---\n\
         apiVersion: canaryd.io/v1alpha1\nkind: NotificationTarget\nmetadata: {{name: {prefix}-teams}}\n\
         spec: {{namespaceSelector: {{}}, teams: {{url: {{name: {prefix}-notify, key: teams}}}}}}\n---\n\
         apiVersion: canaryd.io/v1alpha1\nkind: NotificationTarget\nmetadata: {{name: {prefix}-hook}}\n\
         spec: {{namespaceSelector: {{}}, webhook: {{url: {{name: {prefix}-notify, key: hook}}}}}}\n"
    );
    seed.apply(&yaml).await
}

/// The seed policy, telling `targets` everything.
fn policy_with(seed: &Seed, targets: &[&str]) -> String {
    let mut yaml = seed.policy_yaml();
    yaml.push_str("  notifications:\n");
    for t in targets {
        yaml.push_str(&format!("    - target: {t}\n"));
    }
    yaml
}

/// The seed rollout, to its approval gate; returns how long the weight steps took (first to last
/// transition before the gate, from the policy's own history).
async fn to_approval(seed: &Seed) -> Result<(RolloutPolicy, Duration)> {
    let waiting = seed
        .wait_policy(POLICY, "WaitingForApproval", T, |p| {
            phase(p) == Phase::WaitingForApproval
        })
        .await?;
    let history = waiting.status.clone().unwrap_or_default().history;
    let started = history.iter().find(|t| t.reason == "RolloutStarted").map(|t| t.at);
    let gate = history.last().map(|t| t.at);
    let span = match (started, gate) {
        (Some(a), Some(b)) => b.duration_since(a).unsigned_abs(),
        _ => anyhow::bail!("no RolloutStarted in {history:?}"),
    };
    Ok((waiting, span))
}

fn log_text(daemon: &support::ChildProc) -> String {
    let out = std::fs::read_to_string(daemon.stdout_log()).unwrap_or_default();
    let err = std::fs::read_to_string(daemon.stderr_log()).unwrap_or_default();
    format!("{out}{err}")
}

/// The seed rollout told to Slack (bot), Teams and a webhook: one Slack message updated in place
/// with the history in its thread and the buttons at the approval gate; Teams and the webhook get
/// every transition in order; a restart mid-rollout neither repeats nor loses one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_is_told_to_slack_teams_and_a_webhook_across_a_restart() -> Result<()> {
    let seed = seed("ntf").await?;
    let (stand, base) = Stand::start(Duration::ZERO).await?;
    targets(
        &seed,
        "ntf",
        &format!("{base}/api"),
        &format!("{base}/hook/teams"),
        &format!("{base}/hook/json?token={HOOK_SECRET}"),
        &format!("{base}/hook/slack?token={HOOK_SECRET}"),
    )
    .await?;
    let mut daemon = start_daemon(&seed.ns).await?;
    let run = async {
        seed.apply(&policy_with(
            &seed,
            &[
                "ntf-slack",
                "ntf-teams",
                "ntf-hook",
                "ntf-missing",
                "ntf-badslack",
                "ntf-slackhook",
            ],
        ))
        .await?;
        let (waiting, span) = to_approval(&seed).await?;
        eprintln!("weight steps with working receivers: {span:?}");
        let status = waiting.status.clone().unwrap_or_default();
        let hash = status
            .canary
            .as_ref()
            .map(|c| c.template_hash.clone())
            .unwrap_or_default();
        let n = status.history.len();

        // Every transition reached Teams and the webhook, in order, and the progress is recorded.
        let want = reasons(&waiting);
        support::wait_until("every transition sent and recorded", T, async || {
            let p = seed.policy(POLICY).await?;
            let st = p.status.unwrap_or_default();
            let last = st.history.last().map(|t| t.at);
            let recorded = ["ntf-slack", "ntf-teams", "ntf-hook", "ntf-slackhook"]
                .iter()
                .all(|t| st.notifications.iter().any(|e| e.target == *t && e.sent_until == last));
            Ok((recorded && stand.calls("hook/json").len() >= n).then_some(()))
        })
        .await?;
        let teams: Vec<String> = stand
            .calls("hook/teams")
            .iter()
            .map(|b| {
                b["attachments"][0]["content"]["body"][1]["facts"][1]["value"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect();
        let hooks = stand.calls("hook/json");
        let hook_reasons: Vec<&str> = hooks.iter().map(|b| b["reason"].as_str().unwrap_or("")).collect();
        ensure(
            hook_reasons == want,
            format!("webhook got {hook_reasons:?}, history {want:?}"),
        )?;
        ensure(
            teams.iter().zip(&want).all(|(fact, r)| fact.contains(r.as_str())) && teams.len() == want.len(),
            format!("Teams got {teams:?}, history {want:?}"),
        )?;
        let card = &stand.calls("hook/teams")[0];
        ensure(
            card["type"] == "message"
                && card["attachments"][0]["contentType"] == "application/vnd.microsoft.card.adaptive"
                && card["attachments"][0]["content"]["version"] == "1.4",
            format!("not an Adaptive Card message: {card}"),
        )?;
        let gate = hooks.last().cloned().unwrap_or_default();
        ensure(
            gate["name"] == POLICY
                && gate["namespace"] == seed.ns.as_str()
                && gate["phase"] == "WaitingForApproval"
                && gate["step"] == 3
                && gate["weights"] == json!({"stable": 50, "canary": 50})
                && gate["stable"]["subset"] == "v1"
                && gate["canary"]["subset"] == "v2"
                && gate["canaryTemplateHash"] == hash.as_str(),
            format!("webhook payload at the gate: {gate}"),
        )?;

        // Slack: one message, then updates in place and replies in its thread.
        let posts = stand.calls("chat.postMessage");
        let (top, replies): (Vec<&Value>, Vec<&Value>) = posts.iter().partition(|b| b.get("thread_ts").is_none());
        ensure(
            top.len() == 1,
            format!("one message per rollout, got {}: {top:?}", top.len()),
        )?;
        let updates = stand.calls("chat.update");
        ensure(
            updates.len() == n - 1 && replies.len() == n - 1,
            format!(
                "{} updates and {} replies for {n} transitions",
                updates.len(),
                replies.len()
            ),
        )?;
        ensure(
            updates.iter().chain(replies.iter().copied()).all(|b| {
                b["channel"] == "C42" && (b["ts"] == "1700000000.000000" || b["thread_ts"] == "1700000000.000000")
            }),
            format!("updates and replies not on the first message: {updates:?} {replies:?}"),
        )?;
        let last = updates.last().cloned().unwrap_or_default();
        let buttons: Vec<Value> = last["blocks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|b| b["type"] == "actions")
            .flat_map(|b| b["elements"].as_array().cloned().unwrap_or_default())
            .collect();
        let ids: Vec<&str> = buttons.iter().map(|b| b["action_id"].as_str().unwrap_or("")).collect();
        ensure(
            ids == ["canaryd:promote", "canaryd:abort"],
            format!("buttons at the gate: {ids:?} in {last}"),
        )?;
        let value: Value = serde_json::from_str(buttons[0]["value"].as_str().unwrap_or(""))?;
        ensure(
            value == json!({"ns": seed.ns, "policy": POLICY, "canary": hash, "step": 3, "target": "ntf-slack"}),
            format!("button value {value}"),
        )?;
        ensure(
            last.to_string().contains("▓▓▓▓▓░░░░░ 50%"),
            format!("no weight bar: {last}"),
        )?;

        // A Slack incoming webhook: a new message per transition, without buttons.
        let plain = stand.calls("hook/slack");
        ensure(
            plain.len() == n
                && plain.iter().all(|b| b["text"].is_string() && b["blocks"].is_array())
                && !plain.iter().any(|b| b.to_string().contains("canaryd:")),
            format!(
                "Slack webhook got {} messages for {n} transitions: {plain:?}",
                plain.len()
            ),
        )?;

        // A target that does not exist is named, and the rollout went on regardless.
        let missing = seed.events(POLICY, "NotificationTargetNotFound").await?.join(" | ");
        ensure(
            missing.contains("spec.notifications[3].target") && missing.contains("ntf-missing"),
            format!("missing-target events: {missing:?}"),
        )?;
        Ok::<_, anyhow::Error>(n)
    };
    let before_restart = run.await.map_err(|e| fail_with_logs(&daemon, e))?;

    // Crash and restart at the gate, then approve: the same message goes on.
    let first_logs = log_text(&daemon);
    daemon.kill()?;
    let daemon = start_daemon(&seed.ns).await?;
    let after = async {
        let operator = operator_kubeconfig(&seed).await?;
        let (ok, out) = cli(&operator, &["promote", POLICY, "-n", &seed.ns]).await?;
        ensure(ok, format!("promote failed: {out}"))?;
        let done = seed
            .wait_policy(POLICY, "Succeeded", T, |p| phase(p) == Phase::Succeeded)
            .await?;
        let n = done.status.clone().unwrap_or_default().history.len();
        let want = reasons(&done);
        ensure(n > before_restart, "no transition after the restart")?;
        support::wait_until("the promotion told", T, async || {
            Ok((stand.calls("hook/json").len() >= n && stand.calls("chat.update").len() >= n - 1).then_some(()))
        })
        .await?;
        // Give a duplicate the time to show up.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let hook_reasons: Vec<String> = stand
            .calls("hook/json")
            .iter()
            .map(|b| b["reason"].as_str().unwrap_or("").to_string())
            .collect();
        ensure(
            hook_reasons == want,
            format!("webhook got {hook_reasons:?}, history {want:?}"),
        )?;
        let top = stand
            .calls("chat.postMessage")
            .iter()
            .filter(|b| b.get("thread_ts").is_none())
            .count();
        ensure(top == 1, format!("{top} messages posted for one rollout"))?;
        let updates = stand.calls("chat.update");
        ensure(
            updates.len() == n - 1 && updates.iter().all(|u| u["ts"] == "1700000000.000000"),
            format!("{} updates for {n} transitions: {updates:?}", updates.len()),
        )?;
        // The thread tells the history after the first transition, in order.
        let thread: Vec<String> = stand
            .calls("chat.postMessage")
            .iter()
            .filter(|b| b["thread_ts"] == "1700000000.000000")
            .map(|b| b["text"].as_str().unwrap_or("").to_string())
            .collect();
        ensure(
            thread.len() == n - 1
                && thread
                    .iter()
                    .zip(&want[1..])
                    .all(|(text, r)| text.contains(&format!("({r})"))),
            format!("thread {thread:?}, history {want:?}"),
        )?;
        let last = updates.last().cloned().unwrap_or_default();
        ensure(
            last["text"].as_str().unwrap_or("").contains("Succeeded")
                && !last.to_string().contains("canaryd:promote")
                && !last.to_string().contains("canaryd:abort"),
            format!("final message: {last}"),
        )?;

        // Secrets never reach the logs, the status or the Events; the failing target is named.
        let logs = format!("{first_logs}{}", log_text(&daemon));
        let status = serde_json::to_string(&done.status)?;
        let events: Api<Event> = Api::namespaced(seed.client.clone(), &seed.ns);
        let events = serde_json::to_string(&events.list(&Default::default()).await?.items)?;
        for secret in [TOKEN, "xoxb-wrong", HOOK_SECRET, "s1gning"] {
            ensure(!logs.contains(secret), format!("{secret} in the daemon's logs"))?;
            ensure(!status.contains(secret), format!("{secret} in the status"))?;
            ensure(!events.contains(secret), format!("{secret} in an Event"))?;
        }
        ensure(
            logs.contains("ntf-badslack") && logs.contains("invalid_auth"),
            "the refused Slack target is not named in the logs",
        )?;
        Ok::<_, anyhow::Error>(())
    };
    after.await.map_err(|e| fail_with_logs(&daemon, e))
}

/// Receivers that refuse connections or answer later than the timeout: the rollout walks its steps
/// as fast as without notifications.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_or_slow_receiver_does_not_slow_the_rollout() -> Result<()> {
    let seed = seed("ntfslow").await?;
    let (_slow, base) = Stand::start(Duration::from_secs(30)).await?;
    let (fast, fast_base) = Stand::start(Duration::ZERO).await?;
    let closed = format!(
        "http://127.0.0.1:{}/hook/json?token={HOOK_SECRET}",
        support::free_port()?
    );
    targets(
        &seed,
        "ntfslow",
        &format!("{base}/api"),
        &format!("{base}/hook/teams"),
        &closed,
        &format!("{fast_base}/hook/slack"),
    )
    .await?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        seed.apply(&policy_with(
            &seed,
            &["ntfslow-slack", "ntfslow-teams", "ntfslow-hook", "ntfslow-slackhook"],
        ))
        .await?;
        let (waiting, span) = to_approval(&seed).await?;
        eprintln!("weight steps with a closed and a slow receiver: {span:?}");
        // 10 %, a 2 s pause, 50 %: a notifier in the reconcile's way would add its 5 s timeout to
        // each of the four transitions.
        ensure(span < Duration::from_secs(6), format!("the weight steps took {span:?}"))?;
        // Nor does it hold up a working target of the same policy.
        let n = reasons(&waiting).len();
        support::wait_until("the working target told", Duration::from_secs(4), async || {
            Ok((fast.calls("hook/slack").len() >= n).then_some(()))
        })
        .await?;
        let operator = operator_kubeconfig(&seed).await?;
        let promoted = Instant::now();
        let (ok, out) = cli(&operator, &["promote", POLICY, "-n", &seed.ns]).await?;
        ensure(ok, format!("promote failed: {out}"))?;
        seed.wait_policy(POLICY, "Succeeded", T, |p| phase(p) == Phase::Succeeded)
            .await?;
        ensure(
            promoted.elapsed() < Duration::from_secs(8),
            format!("promotion took {:?}", promoted.elapsed()),
        )?;
        // The notifier did try, and says which target failed, without its URL.
        support::wait_until("the failures logged", T, async || {
            let logs = log_text(&daemon);
            Ok((logs.contains("ntfslow-hook") && logs.contains("ntfslow-teams")).then_some(logs))
        })
        .await
        .and_then(|logs| ensure(!logs.contains(HOOK_SECRET), "the webhook URL is in the logs"))
        .context("notification failures")?;
        Ok::<_, anyhow::Error>(())
    };
    run.await.map_err(|e| fail_with_logs(&daemon, e))
}
