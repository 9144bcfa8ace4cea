//! Notifications against real receivers: a stand-in for Slack's Web API (a real HTTP server speaking
//! chat.postMessage / chat.update with a Bearer token, as Slack does) and Teams / JSON webhook
//! receivers that record what they get. The daemon is a real process with exactly deploy/'s RBAC.

mod fixture;
mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
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
    at: Instant,
}

/// Slack's Web API, webhook receivers and `response_url`s in one server; `delay` makes every
/// answer late. Channel `CGONE` answers `channel_not_found`, webhook `gone` HTTP 404, and the
/// next `limited` Web API calls get HTTP 429 with `Retry-After: RETRY_AFTER`.
#[derive(Clone, Default)]
struct Stand {
    calls: Arc<Mutex<Vec<Call>>>,
    next_ts: Arc<AtomicU32>,
    delay: Duration,
    /// What was posted to each `response_url` (`/respond/{id}`), by id.
    answers: Arc<Mutex<BTreeMap<String, Vec<Value>>>>,
    limited: Arc<AtomicU32>,
}

const RETRY_AFTER: u64 = 3;

impl Stand {
    async fn start(delay: Duration) -> Result<(Self, String)> {
        let stand = Stand {
            delay,
            ..Default::default()
        };
        let app = axum::Router::new()
            .route("/api/{method}", post(slack_api))
            .route("/hook/{name}", post(receiver))
            .route("/respond/{id}", post(respond))
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
            calls.push(Call {
                path,
                body,
                at: Instant::now(),
            });
        }
    }

    /// Every call, in order.
    fn all(&self) -> Vec<Call> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// The times of the Web API calls `method` to `channel`.
    fn times(&self, method: &str, channel: &str) -> Vec<Instant> {
        self.all()
            .iter()
            .filter(|c| c.path == method && c.body["channel"] == channel)
            .map(|c| c.at)
            .collect()
    }
}

/// As Slack answers: HTTP 200 with `ok`, an `error` for a wrong token or an unknown channel, and
/// HTTP 429 with `Retry-After` when rate-limited.
async fn slack_api(State(s): State<Stand>, Path(method): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    tokio::time::sleep(s.delay).await;
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    if auth != Some(&format!("Bearer {TOKEN}")) {
        return Json(json!({"ok": false, "error": "invalid_auth"})).into_response();
    }
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    s.record(method.clone(), &body);
    if s.limited
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        let retry = [("retry-after", RETRY_AFTER.to_string())];
        return (
            StatusCode::TOO_MANY_REQUESTS,
            retry,
            Json(json!({"ok": false, "error": "ratelimited"})),
        )
            .into_response();
    }
    let channel = request["channel"].as_str().unwrap_or("C0").to_string();
    if channel == "CGONE" {
        return Json(json!({"ok": false, "error": "channel_not_found"})).into_response();
    }
    match method.as_str() {
        "chat.postMessage" => {
            let n = s.next_ts.fetch_add(1, Ordering::SeqCst);
            Json(json!({"ok": true, "channel": channel, "ts": format!("1700000000.{n:06}"), "message": {}}))
        }
        "chat.update" => Json(json!({"ok": true, "channel": channel, "ts": request["ts"], "text": request["text"]})),
        _ => Json(json!({"ok": false, "error": "unknown_method"})),
    }
    .into_response()
}

async fn receiver(State(s): State<Stand>, Path(name): Path<String>, body: Bytes) -> Response {
    tokio::time::sleep(s.delay).await;
    s.record(format!("hook/{name}"), &body);
    if name == "gone" {
        return (StatusCode::NOT_FOUND, "no_such_hook").into_response();
    }
    "1".into_response()
}

async fn respond(State(s): State<Stand>, Path(id): Path<String>, body: Json<Value>) -> Json<Value> {
    if let Ok(mut a) = s.answers.lock() {
        a.entry(id).or_default().push(body.0);
    }
    Json(json!({"ok": true}))
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
        let mut value: Value = serde_json::from_str(buttons[0]["value"].as_str().unwrap_or(""))?;
        // The gate occurrence: when the wait at this step began.
        let at = value.as_object_mut().and_then(|o| o.remove("at"));
        let began = status.step_started_at.map(|t| json!(t.as_millisecond()));
        ensure(
            value == json!({"ns": seed.ns, "policy": POLICY, "canary": hash, "step": 3, "target": "ntf-slack"})
                && at == began,
            format!("button value {value}, at {at:?}, the wait began {began:?}"),
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

// ---- Issue 18: buttons per gate occurrence, one message per rollout, failures said, escaping ------

/// A seed app, a stand-in Slack with receivers, and NotificationTargets `{prefix}-…` on it (the
/// JSON webhook at `/hook/{hook}`).
async fn seed_and_stand(prefix: &str, hook: &str) -> Result<(Seed, Stand, String)> {
    let seed = seed(prefix).await?;
    let (stand, base) = Stand::start(Duration::ZERO).await?;
    let api = format!("{base}/api");
    let hook = format!("{base}/hook/{hook}");
    targets(
        &seed,
        prefix,
        &api,
        &format!("{base}/hook/t"),
        &hook,
        &format!("{base}/hook/s"),
    )
    .await?;
    Ok((seed, stand, base))
}

const SIGNING: &str = "s1gning";
const APPROVER: &str = "UAPPROVER";

/// The seed policy with approval gates at steps 1 and 3, telling `target` (filtered by `events`),
/// with `APPROVER` as an approver.
fn gated_with(seed: &Seed, target: &str, events: &str) -> String {
    let mut yaml = seed
        .policy_yaml()
        .replace("    - pause: {duration: 2s}\n", "    - pause: {}\n");
    yaml.push_str(&format!(
        "  notifications:\n    - target: {target}\n      approvers: [{APPROVER}]\n{events}"
    ));
    yaml
}

/// The Approve / Abort buttons of one Slack call's blocks.
fn buttons_of(body: &Value) -> Vec<Value> {
    body["blocks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["type"] == "actions")
        .flat_map(|b| b["elements"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// The value of the first Approve button for `step` sent in calls `since..`, waiting for it.
async fn approve_button(stand: &Stand, since: usize, step: u64) -> Result<String> {
    support::wait_until("an Approve button for the gate", T, async || {
        let calls = stand.all();
        let found = calls.iter().skip(since).find_map(|c| {
            buttons_of(&c.body).into_iter().find_map(|b| {
                let value = b["value"].as_str().unwrap_or_default().to_string();
                let parsed: Value = serde_json::from_str(&value).unwrap_or(Value::Null);
                (b["action_id"] == "canaryd:promote" && parsed["step"] == step).then_some(value)
            })
        });
        Ok(found)
    })
    .await
}

/// Clicks on `listener` signed as Slack signs them; answers come to the stand's `/respond/{id}`.
struct Clicker {
    listener: String,
    stand: Stand,
    base: String,
    next: AtomicU32,
}

impl Clicker {
    /// Click Approve with `value`; returns the answer posted to the click's `response_url`.
    async fn approve(&self, value: &str) -> Result<String> {
        use hmac::Mac;
        let id = self.next.fetch_add(1, Ordering::SeqCst).to_string();
        let payload = json!({
            "type": "block_actions",
            "user": {"id": APPROVER, "username": "approver", "name": "approver", "team_id": "T1"},
            "container": {"type": "message", "message_ts": "1700000000.000000", "channel_id": "C42"},
            "response_url": format!("{}/respond/{id}", self.base),
            "actions": [{"action_id": "canaryd:promote", "block_id": "canaryd", "type": "button", "value": value}]
        });
        let body = serde_urlencoded::to_string([("payload", payload.to_string())])?;
        let ts = jiff::Timestamp::now().as_second().to_string();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SIGNING.as_bytes())?;
        mac.update(format!("v0:{ts}:{body}").as_bytes());
        let signature = format!("v0={}", hex::encode(mac.finalize().into_bytes()));
        let http = reqwest::Client::new();
        let sent = support::wait_until("the approvals listener", T, async || {
            let r = http
                .post(format!("{}/slack/interactivity", self.listener))
                .header("content-type", "application/x-www-form-urlencoded")
                .header("X-Slack-Request-Timestamp", &ts)
                .header("X-Slack-Signature", &signature)
                .body(body.clone())
                .send()
                .await;
            Ok(r.ok().map(|r| r.status().as_u16()))
        })
        .await?;
        ensure(sent == 200, format!("the click was answered HTTP {sent}"))?;
        support::wait_until("the answer to the click", T, async || {
            let answers = self.stand.answers.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            Ok(answers
                .get(&id)
                .and_then(|a| a.first())
                .and_then(|a| a["text"].as_str().map(str::to_string)))
        })
        .await
    }
}

fn step_of(p: &RolloutPolicy) -> Option<u32> {
    p.status.as_ref().and_then(|s| s.step)
}

async fn at_gate(seed: &Seed, step: u32) -> Result<RolloutPolicy> {
    seed.wait_policy(POLICY, &format!("the gate at step {step}"), T, |p| {
        phase(p) == Phase::WaitingForApproval && step_of(p) == Some(step)
    })
    .await
}

/// Approve at step 1; `canaryd retry` after an abort brings the rollout to step 1 again: the new
/// message's Approve acts (it is another gate occurrence). At step 3 a first click is refused
/// (the policy is Invalid for a moment): the same button, clicked again at the same occurrence
/// once the policy is fixed, acts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_buttons_act_once_per_gate_occurrence() -> Result<()> {
    let (seed, stand, base) = seed_and_stand("ntfocc", "j").await?;
    let listen = format!("127.0.0.1:{}", support::free_port()?);
    let daemon = fixture::start_daemon_with(&seed.ns, &["--approvals-listen", &listen], &[]).await?;
    let clicker = Clicker {
        listener: format!("http://{listen}"),
        stand: stand.clone(),
        base: base.clone(),
        next: AtomicU32::new(0),
    };
    let run = async {
        let policy = gated_with(&seed, "ntfocc-slack", "");
        seed.apply(&policy).await?;
        at_gate(&seed, 1).await?;
        let first = approve_button(&stand, 0, 1).await?;
        let answer = clicker.approve(&first).await?;
        ensure(answer.starts_with("Done"), format!("first approve: {answer}"))?;
        at_gate(&seed, 3).await?;

        // Abort, retry: the gate at step 1 opens again, with buttons that act.
        let operator = operator_kubeconfig(&seed).await?;
        let (ok, out) = cli(&operator, &["abort", POLICY, "-n", &seed.ns]).await?;
        ensure(ok, format!("abort: {out}"))?;
        seed.wait_policy(POLICY, "Aborted", T, |p| phase(p) == Phase::Aborted)
            .await?;
        let since = stand.all().len();
        let (ok, out) = cli(&operator, &["retry", POLICY, "-n", &seed.ns]).await?;
        ensure(ok, format!("retry: {out}"))?;
        at_gate(&seed, 1).await?;
        let again = approve_button(&stand, since, 1).await?;
        let answer = clicker.approve(&again).await?;
        ensure(
            answer.starts_with("Done"),
            format!("approve at the gate's second occurrence: {answer} (button {again}, first {first})"),
        )?;
        let waiting = at_gate(&seed, 3).await?;

        // A refused first click leaves the gate open to a fresh click on the same button.
        let since = waiting.status.as_ref().map(|s| s.history.len()).unwrap_or(0);
        let third = approve_button(&stand, stand.all().len().saturating_sub(4), 3).await?;
        seed.apply(&policy.replace("destinationRule: istio-test-dr", "destinationRule: istio-test-gone"))
            .await?;
        seed.wait_policy(POLICY, "Invalid", T, |p| phase(p) == Phase::Invalid)
            .await?;
        let refused = clicker.approve(&third).await?;
        ensure(
            refused.starts_with("Nothing done"),
            format!("approve while Invalid: {refused}"),
        )?;
        seed.apply(&policy).await?;
        let back = at_gate(&seed, 3).await?;
        ensure(
            back.status.as_ref().map(|s| s.history.len()).unwrap_or(0) > since,
            "the policy did not go through Invalid",
        )?;
        let answer = clicker.approve(&third).await?;
        ensure(
            answer.starts_with("Done"),
            format!("approve after a refused click: {answer}"),
        )?;
        seed.wait_policy(POLICY, "Succeeded", T, |p| phase(p) == Phase::Succeeded)
            .await?;
        Ok::<_, anyhow::Error>(())
    };
    run.await.map_err(|e| fail_with_logs(&daemon, e))
}

/// The top-level messages (not thread replies) posted to Slack.
fn top_level(stand: &Stand) -> Vec<Value> {
    stand
        .calls("chat.postMessage")
        .into_iter()
        .filter(|b| b.get("thread_ts").is_none())
        .collect()
}

/// With `events: [WaitingForApproval, RolledBack]` (RolloutStarted never sent), a retried rollout
/// gets a message of its own: two rollouts, two messages, the first left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_events_filter_each_rollout_gets_its_own_slack_message() -> Result<()> {
    let (seed, stand, _) = seed_and_stand("ntfmsg", "j").await?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        let mut yaml = policy_with(&seed, &["ntfmsg-slack"]);
        yaml.push_str("      events: [WaitingForApproval, RolledBack]\n");
        seed.apply(&yaml).await?;
        to_approval(&seed).await?;
        support::wait_until("the first rollout's message", T, async || {
            Ok((top_level(&stand).len() == 1).then_some(()))
        })
        .await?;
        let operator = operator_kubeconfig(&seed).await?;
        let (ok, out) = cli(&operator, &["abort", POLICY, "-n", &seed.ns]).await?;
        ensure(ok, format!("abort: {out}"))?;
        seed.wait_policy(POLICY, "Aborted", T, |p| phase(p) == Phase::Aborted)
            .await?;
        let (ok, out) = cli(&operator, &["retry", POLICY, "-n", &seed.ns]).await?;
        ensure(ok, format!("retry: {out}"))?;
        let waiting = to_approval(&seed).await?.0;
        let last = waiting.status.as_ref().and_then(|s| s.history.last()).map(|t| t.at);
        support::wait_until("the second gate told", T, async || {
            let p = seed.policy(POLICY).await?;
            let st = p.status.unwrap_or_default();
            Ok(st
                .notifications
                .iter()
                .any(|e| e.target == "ntfmsg-slack" && e.sent_until >= last)
                .then_some(()))
        })
        .await?;
        let top = top_level(&stand);
        let updates = stand.calls("chat.update");
        ensure(
            top.len() == 2 && updates.is_empty(),
            format!(
                "two rollouts: {} messages, {} updates: {top:?} {updates:?}",
                top.len(),
                updates.len()
            ),
        )?;
        ensure(
            top.iter().all(|b| b.to_string().contains("canaryd:promote")),
            format!("each rollout's message carries its Approve button: {top:?}"),
        )?;
        Ok::<_, anyhow::Error>(())
    };
    run.await.map_err(|e| fail_with_logs(&daemon, e))
}

/// The policy's status as stored (untyped: what the API server holds, field for field).
async fn status_json(seed: &Seed) -> Result<Value> {
    let resource = kube::api::ApiResource::erase::<RolloutPolicy>(&());
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(seed.client.clone(), &seed.ns, &resource);
    Ok(api.get(POLICY).await?.data["status"].clone())
}

/// `status.notifications[target].lastError`.
fn last_error(status: &Value, target: &str) -> Option<String> {
    status["notifications"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["target"] == target)
        .and_then(|e| e["lastError"].as_str().map(str::to_string))
}

/// The daemon's /metrics text.
async fn metrics(daemon: &mut support::ChildProc) -> Result<String> {
    let addr = daemon.listening_addr(T).await?;
    Ok(reqwest::get(format!("http://{addr}/metrics")).await?.text().await?)
}

/// Slack answers `channel_not_found`, a webhook HTTP 404: each is said where people look (a
/// Warning Event on the policy, `status.notifications[].lastError`, a metric) and tried once, not
/// again and again; changing the target tries again, and the next success clears the error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_delivery_error_is_said_and_not_retried_until_the_target_changes() -> Result<()> {
    let (seed, stand, base) = seed_and_stand("ntffail", "gone").await?;
    let api = format!("{base}/api");
    let gone = |channel: &str| {
        format!(
            "apiVersion: canaryd.io/v1alpha1\nkind: NotificationTarget\nmetadata: {{name: ntffail-gone}}\n\
             spec: {{namespaceSelector: {{}}, slack: {{botToken: {{name: ntffail-notify, key: token}}, channel: {channel}, apiUrl: '{api}'}}}}\n"
        )
    };
    seed.apply(&gone("CGONE")).await?;
    let mut daemon = start_daemon(&seed.ns).await?;
    let run = async {
        seed.apply(&policy_with(&seed, &["ntffail-gone", "ntffail-hook"]))
            .await?;
        let (waiting, _) = to_approval(&seed).await?;
        ensure(reasons(&waiting).len() >= 4, "a few transitions to send")?;
        let events = support::wait_until("the Warning Events", T, async || {
            let notes = seed.events(POLICY, "NotificationFailed").await?.join(" | ");
            Ok((notes.contains("ntffail-gone") && notes.contains("ntffail-hook")).then_some(notes))
        })
        .await;
        let all: Api<Event> = Api::namespaced(seed.client.clone(), &seed.ns);
        let all: Vec<String> = all
            .list(&Default::default())
            .await?
            .items
            .into_iter()
            .map(|e| format!("{:?} {:?} {:?}", e.reason, e.regarding.and_then(|r| r.name), e.note))
            .collect();
        let events = events.with_context(|| format!("Events: {all:#?}"))?;
        ensure(
            events.contains("channel_not_found") && events.contains("404"),
            format!("the Events do not say why: {events}"),
        )?;
        let status = status_json(&seed).await?;
        let error_of = |t: &str| last_error(&status, t).unwrap_or_default();
        ensure(
            error_of("ntffail-gone").contains("channel_not_found") && error_of("ntffail-hook").contains("404"),
            format!("lastError: {}", status["notifications"]),
        )?;
        let text = metrics(&mut daemon).await?;
        let failures = |target: &str| {
            text.lines()
                .find(|l| {
                    l.starts_with(&format!(
                        "canaryd_notification_failures_total{{target=\"{target}\",kind=\"permanent\"}}"
                    ))
                })
                .map(str::to_string)
        };
        ensure(
            failures("ntffail-gone").is_some() && failures("ntffail-hook").is_some(),
            format!(
                "no failure metric: {}",
                text.lines()
                    .filter(|l| l.contains("notification"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        )?;
        // No retry storm: one call each, also with the time a backoff would have retried a few times.
        tokio::time::sleep(Duration::from_secs(8)).await;
        let slack_calls = stand.times("chat.postMessage", "CGONE").len();
        let hook_calls = stand.calls("hook/gone").len();
        ensure(
            slack_calls == 1 && hook_calls == 1,
            format!("{slack_calls} calls to the missing channel, {hook_calls} to the missing webhook"),
        )?;
        // The target is fixed: delivered, and the error is cleared.
        seed.apply(&gone("C42")).await?;
        support::wait_until("the fixed target told, its error cleared", T, async || {
            let st = status_json(&seed).await?;
            let told = st["notifications"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e["target"] == "ntffail-gone" && e["slack"].is_object());
            let cleared = told && last_error(&st, "ntffail-gone").is_none();
            Ok((cleared && !stand.times("chat.postMessage", "C42").is_empty()).then_some(()))
        })
        .await?;
        Ok::<_, anyhow::Error>(())
    };
    run.await.map_err(|e| fail_with_logs(&daemon, e))
}

/// Slack answers HTTP 429 with `Retry-After: 3`: the next call comes no sooner, and it is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_rate_limiting_is_honoured() -> Result<()> {
    let (seed, stand, _) = seed_and_stand("ntf429", "j").await?;
    stand.limited.store(1, Ordering::SeqCst);
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        seed.apply(&policy_with(&seed, &["ntf429-slack"])).await?;
        let times = support::wait_until("a call after the 429", T, async || {
            let t = stand.times("chat.postMessage", "C42");
            Ok((t.len() >= 2).then_some(t))
        })
        .await?;
        let gap = times[1].duration_since(times[0]);
        ensure(
            gap >= Duration::from_secs(RETRY_AFTER),
            format!("the call after a 429 with Retry-After: {RETRY_AFTER} came after {gap:?}"),
        )?;
        Ok::<_, anyhow::Error>(())
    };
    run.await.map_err(|e| fail_with_logs(&daemon, e))
}

/// Every string in a JSON value.
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
        Value::Object(o) => o.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

/// A canary subset `v2<b>&x` (the policy is Invalid for it): Slack gets `&lt;`, `&gt;`, `&amp;` in
/// every text, never a raw `<`, `>` or `&` from the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_text_is_escaped() -> Result<()> {
    let (seed, stand, _) = seed_and_stand("ntfesc", "j").await?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        let yaml = policy_with(&seed, &["ntfesc-slack"]).replace("subset: v2,", "subset: 'v2<b>&x',");
        ensure(yaml.contains("v2<b>&x"), "the canary subset was not replaced")?;
        seed.apply(&yaml).await?;
        let posted = support::wait_until("the message", T, async || Ok(top_level(&stand).first().cloned())).await?;
        let mut texts = Vec::new();
        strings(&posted["blocks"], &mut texts);
        texts.push(posted["text"].as_str().unwrap_or_default().to_string());
        let raw: Vec<&String> = texts
            .iter()
            .filter(|t| t.contains("v2<b>") || t.contains("&x"))
            .collect();
        ensure(raw.is_empty(), format!("raw data in Slack text: {raw:?}"))?;
        ensure(
            texts.iter().any(|t| t.contains("v2&lt;b&gt;&amp;x")),
            format!("no escaped subset in {texts:?}"),
        )?;
        Ok::<_, anyhow::Error>(())
    };
    run.await.map_err(|e| fail_with_logs(&daemon, e))
}
