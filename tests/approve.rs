//! The approvals listener against the real API server, real tokens, deploy/'s RBAC and admission:
//! the approval API (TokenReview + SubjectAccessReview) and Slack's interactivity endpoint, with a
//! stand-in Slack (a real HTTP server here) that answers `usergroups.users.list` and records the
//! answers posted to `response_url`. Requests are signed as Slack signs them.

mod fixture;
mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use canaryd::resources::command::{CommandKind, RolloutCommand, RolloutCommandSpec};
use canaryd::resources::policy::{Phase, RolloutPolicy};
use fixture::{Seed, ensure, seed};
use hmac::{Hmac, Mac};
use kube::Client;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use serde_json::{Value, json};
use sha2::Sha256;

const T: Duration = Duration::from_secs(30);
const VS: &str = "istio-test-vs";
const POLICY: &str = "istio-test";
const SYSTEM_NS: &str = "canaryd-system";
const DAEMON: &str = "system:serviceaccount:canaryd-system:canaryd";
const BOT_TOKEN: &str = "xoxb-stand-in";

fn phase(p: &RolloutPolicy) -> Phase {
    p.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

fn step(p: &RolloutPolicy) -> Option<u32> {
    p.status.as_ref().and_then(|s| s.step)
}

fn canary_hash(p: &RolloutPolicy) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.canary.as_ref())
        .map(|c| c.template_hash.clone())
        .unwrap_or_default()
}

/// The seed policy with approval gates at steps 1 and 3.
fn gated_policy(seed: &Seed) -> String {
    seed.policy_yaml()
        .replace("    - pause: {duration: 2s}\n", "    - pause: {}\n")
}

/// The daemon with the approvals listener on a port of its own; returns it and the listener's URL.
async fn daemon_with_approvals(seed: &Seed) -> Result<(support::ChildProc, String)> {
    daemon_with_approvals_and(seed, &[]).await
}

async fn daemon_with_approvals_and(seed: &Seed, extra: &[&str]) -> Result<(support::ChildProc, String)> {
    let port = support::free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let mut args = vec!["--approvals-listen", addr.as_str()];
    args.extend_from_slice(extra);
    let daemon = fixture::start_daemon_with(&seed.ns, &args, &[]).await?;
    let url = format!("http://{addr}");
    // The listener is up once it answers (it binds before the controller starts).
    let http = reqwest::Client::new();
    support::wait_until("the approvals listener", T, async || {
        Ok(http
            .post(format!("{url}/slack/interactivity"))
            .send()
            .await
            .ok()
            .map(|_| ()))
    })
    .await?;
    Ok((daemon, url))
}

async fn commands(seed: &Seed) -> Result<Vec<RolloutCommand>> {
    let api: Api<RolloutCommand> = Api::namespaced(seed.client.clone(), &seed.ns);
    Ok(api.list(&Default::default()).await?.items)
}

/// POST to the approval API; returns (HTTP status, JSON answer).
async fn api_call(url: &str, ns: &str, policy: &str, command: &str, token: Option<&str>) -> Result<(u16, Value)> {
    api_call_with(url, ns, policy, command, token, None).await
}

/// The same, with a JSON body (`canary` and `step` pins).
async fn api_call_with(
    url: &str,
    ns: &str,
    policy: &str,
    command: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Result<(u16, Value)> {
    let mut req = reqwest::Client::new().post(format!(
        "{url}/api/v1/namespaces/{ns}/rolloutpolicies/{policy}/{command}"
    ));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(body) = body {
        req = req.json(body);
    }
    let resp = req.send().await?;
    let code = resp.status().as_u16();
    let text = resp.text().await?;
    let value = serde_json::from_str(&text).with_context(|| format!("answer {code} is not JSON: {text}"))?;
    Ok((code, value))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_api_acts_only_for_a_token_that_may_promote() -> Result<()> {
    let seed = seed("appr-api").await?;
    let (daemon, url) = daemon_with_approvals(&seed).await?;
    let run = async {
        seed.apply(&gated_policy(&seed)).await?;
        seed.wait_policy(POLICY, "the first gate", T, |p| {
            phase(p) == Phase::WaitingForApproval && step(p) == Some(1)
        })
        .await?;
        let ns = seed.ns.as_str();

        // A client that never finishes its headers is cut off (5 s), not held for ever.
        slow_headers_are_cut_off(&url).await?;

        // No token, a token the API server does not know: 401.
        let (code, a) = api_call(&url, ns, POLICY, "promote", None).await?;
        ensure(
            code == 401 && a["result"] == "unauthorized",
            format!("no token: {code} {a}"),
        )?;
        let (code, a) = api_call(&url, ns, POLICY, "promote", Some("not-a-token")).await?;
        ensure(
            code == 401 && a["result"] == "unauthorized",
            format!("bad token: {code} {a}"),
        )?;

        // A real token without rollout-approver: 403 with the reason.
        let bob = support::token_for(ns, "bob").await?;
        let (code, a) = api_call(&url, ns, POLICY, "promote", Some(&bob)).await?;
        ensure(
            code == 403
                && a["result"] == "forbidden"
                && a["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(&format!("system:serviceaccount:{ns}:bob"))),
            format!("bob: {code} {a}"),
        )?;
        ensure(commands(&seed).await?.is_empty(), "a refused call created a command")?;

        // rollout-approver (the CLI's permission): acted, and the rollout passes the gate.
        let ci_kubeconfig = fixture::approver_kubeconfig(&seed, "ci").await?;
        let ci = support::token_for(ns, "ci").await?;
        let user = format!("system:serviceaccount:{ns}:ci");
        let p = seed.policy(POLICY).await?;
        ensure(
            step(&p) == Some(1),
            format!("the rollout moved before the approval: {:?}", p.status),
        )?;
        let (code, a) = api_call(&url, ns, POLICY, "promote", Some(&ci)).await?;
        ensure(
            code == 200 && a["result"] == "acted" && a["by"] == format!("{user} via {DAEMON}").as_str(),
            format!("ci: {code} {a}"),
        )?;
        seed.wait_policy(POLICY, "the second gate", T, |p| step(p) == Some(3))
            .await?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 50), ("v2", 50)], T)
            .await?;
        let promoted = seed.events(POLICY, "Promoted").await?.join(" | ");
        ensure(
            promoted.contains(&format!("by {user} via {DAEMON}")),
            format!("Promoted events: {promoted}"),
        )?;
        let all = commands(&seed).await?;
        ensure(
            all.len() == 1
                && all[0].spec.on_behalf_of.as_deref() == Some(user.as_str())
                && all[0].spec.requested_by == DAEMON,
            format!("commands: {all:?}"),
        )?;

        // A delayed call pinned to the passed gate (or another canary): 409 with the current values,
        // no command. Two calls in a row cost one TokenReview (cached). Pinned to the current: acts.
        let hash = canary_hash(&seed.policy(POLICY).await?);
        pinned_calls_meet_the_gate_they_name(&url, &seed, &ci, &hash).await?;
        // The CLI pins the same way, and says where the rollout is now.
        let (ok, out) = fixture::cli(&ci_kubeconfig, &["promote", POLICY, "-n", ns, "--step", "1"]).await?;
        ensure(
            !ok && out.contains(&format!("is now at canary {hash} step 3")) && out.contains("WrongStep"),
            format!("canaryd promote --step 1 at step 3: {out}"),
        )?;
        ensure(commands(&seed).await?.len() == 1, "a refused pin created a command")?;
        let (code, a) = api_call_with(
            &url,
            ns,
            POLICY,
            "promote",
            Some(&ci),
            Some(&json!({"canary": hash, "step": 3})),
        )
        .await?;
        ensure(
            code == 200 && a["result"] == "acted",
            format!("second gate, pinned: {code} {a}"),
        )?;
        seed.wait_policy(POLICY, "Succeeded", T, |p| phase(p) == Phase::Succeeded)
            .await?;
        let (code, a) = api_call(&url, ns, POLICY, "promote", Some(&ci)).await?;
        ensure(
            code == 409 && a["result"] == "nothing-to-approve" && a["reason"] == "NoRollout",
            format!("after the rollout: {code} {a}"),
        )?;
        ensure(commands(&seed).await?.len() == 2, "no command for nothing to approve")?;

        // No such policy, no such command.
        let (code, a) = api_call(&url, ns, "no-such-policy", "promote", Some(&ci)).await?;
        ensure(
            code == 404 && a["result"] == "not-found",
            format!("missing policy: {code} {a}"),
        )?;
        let (code, a) = api_call(&url, ns, POLICY, "launch", Some(&ci)).await?;
        ensure(code == 404, format!("unknown command: {code} {a}"))?;

        // Nobody but the daemon may say whom a command is for.
        let client = support::client_with_token(&ci).await?;
        forged_on_behalf_is_refused(&seed, client, &user).await?;

        // Last (it throttles this address): bad tokens cost at most one TokenReview.
        bad_tokens_cost_the_api_server_nothing(&url, ns).await
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}

/// The rollout waits at step 3 of canary `hash`; `ci` may promote.
async fn pinned_calls_meet_the_gate_they_name(url: &str, seed: &Seed, ci: &str, hash: &str) -> Result<()> {
    let ns = seed.ns.as_str();
    let mark = audit_mark().await?;
    let stale = json!({"canary": hash, "step": 1});
    let (code, a) = api_call_with(url, ns, POLICY, "promote", Some(ci), Some(&stale)).await?;
    ensure(
        code == 409
            && a["result"] == "nothing-to-approve"
            && a["reason"] == "WrongStep"
            && a["current"]["canary"] == hash
            && a["current"]["step"] == 3,
        format!("pinned to step 1 at step 3: {code} {a}"),
    )?;
    let other = json!({"canary": "0123456789abcdef", "step": 3});
    let (code, a) = api_call_with(url, ns, POLICY, "promote", Some(ci), Some(&other)).await?;
    ensure(
        code == 409 && a["reason"] == "WrongCanary" && a["current"]["canary"] == hash && a["current"]["step"] == 3,
        format!("pinned to another canary: {code} {a}"),
    )?;
    let reviews = audited(mark, |e| is_review_of(e, ci)).await?;
    ensure(
        reviews <= 1,
        format!("two calls with one token: {reviews} TokenReviews"),
    )?;
    // What a pin may be: a JSON object with `canary` (string) and `step` (number), nothing else.
    for (body, what) in [
        (json!({"step": "3"}), "a step that is not a number"),
        (json!({"canary": hash, "step": 3, "gate": 1}), "an unknown field"),
        (json!({"step": -1}), "a negative step"),
    ] {
        let (code, a) = api_call_with(url, ns, POLICY, "promote", Some(ci), Some(&body)).await?;
        ensure(
            code == 400 && a["result"] == "bad-request",
            format!("{what}: {code} {a}"),
        )?;
    }
    Ok(())
}

async fn bad_tokens_cost_the_api_server_nothing(url: &str, ns: &str) -> Result<()> {
    let marker = format!("bad-{ns}-");
    let mark = audit_mark().await?;
    let mut codes = BTreeMap::<u16, u32>::new();
    // The same bad token again and again, then a new one each time.
    for i in 0..40 {
        let token = if i < 20 {
            format!("{marker}same")
        } else {
            format!("{marker}{i}")
        };
        let (code, _) = api_call(url, ns, POLICY, "promote", Some(&token)).await?;
        *codes.entry(code).or_default() += 1;
    }
    let reviews = audited(mark, |e| is_review_of(e, &marker)).await?;
    ensure(
        reviews <= 1 && codes.get(&429).is_some_and(|&n| n >= 20) && codes.keys().all(|&c| c == 401 || c == 429),
        format!("40 bad tokens: {reviews} TokenReviews, answers {codes:?}"),
    )?;
    let (code, a) = api_call(url, ns, POLICY, "promote", Some(&format!("{marker}last"))).await?;
    ensure(
        code == 429 && a["result"] == "too-many-failures",
        format!("after the failures: {code} {a}"),
    )
}

/// The number of audited requests so far: count what comes after it with [`audited`].
async fn audit_mark() -> Result<usize> {
    Ok(audit_events().await?.len())
}

/// How many requests the API server audited since `mark` match `wanted`.
async fn audited(mark: usize, wanted: impl Fn(&Value) -> bool) -> Result<usize> {
    // The log is written as each request completes: give the last ones a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(audit_events().await?.iter().skip(mark).filter(|e| wanted(e)).count())
}

async fn audit_events() -> Result<Vec<Value>> {
    let path = support::control_plane().await?.audit_log();
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["stage"] == "ResponseComplete")
        .collect())
}

/// A TokenReview of a token starting with `token`.
fn is_review_of(e: &Value, token: &str) -> bool {
    e["objectRef"]["resource"] == "tokenreviews"
        && e["requestObject"]["spec"]["token"]
            .as_str()
            .is_some_and(|t| t.starts_with(token))
}

/// A read of Secret `name` in the daemon's namespace.
fn is_secret_read(e: &Value, name: &str) -> bool {
    e["objectRef"]["resource"] == "secrets"
        && e["objectRef"]["namespace"] == SYSTEM_NS
        && e["objectRef"]["name"] == name
        && e["user"]["username"] == DAEMON
}

async fn slow_headers_are_cut_off(url: &str) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr).await?;
    conn.write_all(b"POST /slack/interactivity HTTP/1.1\r\nHost: canaryd\r\n")
        .await?;
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(15), conn.read_to_end(&mut rest)).await;
    let took = started.elapsed();
    ensure(
        closed.is_ok() && took >= Duration::from_secs(4),
        format!("slow headers: closed={} after {took:?}", closed.is_ok()),
    )
}

async fn forged_on_behalf_is_refused(seed: &Seed, client: Client, user: &str) -> Result<()> {
    let api: Api<RolloutCommand> = Api::namespaced(client, &seed.ns);
    let admin: Api<RolloutCommand> = Api::namespaced(seed.client.clone(), &seed.ns);
    let cmd = RolloutCommand {
        metadata: ObjectMeta {
            generate_name: Some("forged-".into()),
            ..Default::default()
        },
        spec: RolloutCommandSpec {
            policy: POLICY.into(),
            command: CommandKind::PromoteFull,
            canary: "0123456789abcdef".into(),
            step: Some(3),
            requested_by: user.into(),
            on_behalf_of: Some("slack:UBOSS (the boss)".into()),
        },
        status: None,
    };
    // The admission policy takes a moment to load after it is created: until it refuses, clean up.
    let message = support::wait_until("the forged onBehalfOf to be refused", T, async || {
        match api.create(&PostParams::default(), &cmd).await {
            Err(kube::Error::Api(s)) if s.code == 403 || s.code == 422 => Ok(Some(s.message)),
            Ok(created) => {
                admin
                    .delete(&created.metadata.name.unwrap_or_default(), &DeleteParams::default())
                    .await?;
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    })
    .await?;
    ensure(
        message.contains("onBehalfOf may only be set by canaryd"),
        format!("denial: {message}"),
    )
}

// ---- Slack ----------------------------------------------------------------------------------------

/// Fresh, well-formed but wrongly signed clicks read no signing secret: the targets and their
/// secrets are in the daemon's caches. (`unused` is a target no policy sends to: the notifier never
/// reads its Secret, so every read of it would be the listener's.)
async fn bad_signatures_cost_the_api_server_nothing(clicker: &Clicker, c: &Click, unused: &SlackApp) -> Result<()> {
    let mark = audit_mark().await?;
    for i in 0..20 {
        let ts = now().to_string();
        let sig = signature(&format!("guess-{i}"), &ts, &c.body)?;
        let (code, _) = clicker.send(c, Some(&ts), Some(&sig)).await?;
        ensure(code == 401, format!("bad signature {i}: {code}"))?;
    }
    let reads = audited(mark, |e| is_secret_read(e, &unused.target)).await?;
    ensure(reads == 0, format!("20 badly signed clicks read {reads} Secrets"))
}

/// A stand-in for Slack: `usergroups.users.list` (group S1 has UGROUP) and `response_url`s, recorded.
#[derive(Clone, Default)]
struct StandIn {
    answers: Arc<Mutex<BTreeMap<String, Vec<Value>>>>,
    group_calls: Arc<Mutex<u32>>,
    /// How long `usergroups.users.list` takes to answer.
    group_delay: Arc<Mutex<Duration>>,
}

async fn usergroup_members(
    State(s): State<StandIn>,
    headers: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> axum::Json<Value> {
    if let Ok(mut n) = s.group_calls.lock() {
        *n += 1;
    }
    let delay = s.group_delay.lock().map(|d| *d).unwrap_or_default();
    tokio::time::sleep(delay).await;
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    if auth != Some(&format!("Bearer {BOT_TOKEN}")) {
        return axum::Json(json!({"ok": false, "error": "invalid_auth"}));
    }
    match q.get("usergroup").map(String::as_str) {
        Some("S1") => axum::Json(json!({"ok": true, "users": ["UGROUP", "UOTHER"]})),
        _ => axum::Json(json!({"ok": false, "error": "no_such_subteam"})),
    }
}

async fn respond(State(s): State<StandIn>, Path(id): Path<String>, body: axum::Json<Value>) -> axum::Json<Value> {
    if let Ok(mut a) = s.answers.lock() {
        a.entry(id).or_default().push(body.0);
    }
    axum::Json(json!({"ok": true}))
}

async fn start_stand_in() -> Result<(StandIn, String)> {
    let state = StandIn::default();
    let app = axum::Router::new()
        .route("/api/usergroups.users.list", get(usergroup_members))
        .route("/respond/{id}", post(respond))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((state, url))
}

/// A Slack app (its signing secret and bot token in the daemon's namespace) and its target.
struct SlackApp {
    target: String,
    secret: String,
}

async fn slack_target(seed: &Seed, name: &str, secret: &str, api_url: &str) -> Result<SlackApp> {
    let target = format!("{name}-{}", seed.ns);
    let yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {target}, namespace: {SYSTEM_NS}}}\n\
         stringData: {{signing-secret: {secret}, bot-token: {BOT_TOKEN}}}\n---\n\
         apiVersion: canaryd.io/v1alpha1\nkind: NotificationTarget\nmetadata: {{name: {target}}}\n\
         spec:\n  namespaceSelector: {{}}\n  slack:\n    channel: C1\n    apiUrl: {api_url}/api\n\
         \x20   botToken: {{name: {target}, key: bot-token}}\n\
         \x20   signingSecret: {{name: {target}, key: signing-secret}}\n\
         \x20   allowedUsers: [UALLOWED]\n    allowedGroups: [S1]\n"
    );
    seed.apply(&yaml).await?;
    Ok(SlackApp {
        target,
        secret: secret.into(),
    })
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn signature(secret: &str, ts: &str, body: &str) -> Result<String> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())?;
    mac.update(format!("v0:{ts}:{body}").as_bytes());
    Ok(format!("v0={}", hex::encode(mac.finalize().into_bytes())))
}

/// One click, as Slack sends it.
struct Click {
    body: String,
    answer_id: String,
}

struct Clicker {
    url: String,
    slack: StandIn,
    slack_url: String,
    next: std::sync::atomic::AtomicU32,
}

impl Clicker {
    fn click(&self, user: &str, action: &str, value: &Value) -> Result<Click> {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed).to_string();
        let payload = json!({
            "type": "block_actions",
            "user": {"id": user, "username": user.to_lowercase(), "name": user.to_lowercase(), "team_id": "T1"},
            "api_app_id": "A1",
            "team": {"id": "T1", "domain": "acme"},
            "container": {"type": "message", "message_ts": "1700000000.000100", "channel_id": "C1"},
            "channel": {"id": "C1", "name": "releases"},
            "response_url": format!("{}/respond/{id}", self.slack_url),
            "trigger_id": "1.2.3",
            "actions": [{
                "action_id": action, "block_id": "gate", "type": "button",
                "value": value.to_string(), "action_ts": "1700000001.000200"
            }]
        });
        let body = serde_urlencoded::to_string([("payload", payload.to_string())])?;
        Ok(Click { body, answer_id: id })
    }

    /// Send `click` with this timestamp and signature; returns (HTTP status, body).
    async fn send(&self, click: &Click, ts: Option<&str>, sig: Option<&str>) -> Result<(u16, String)> {
        let mut req = reqwest::Client::new()
            .post(format!("{}/slack/interactivity", self.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(click.body.clone());
        if let Some(ts) = ts {
            req = req.header("X-Slack-Request-Timestamp", ts);
        }
        if let Some(sig) = sig {
            req = req.header("X-Slack-Signature", sig);
        }
        let resp = req.send().await?;
        Ok((resp.status().as_u16(), resp.text().await?))
    }

    /// Send it signed by `app` now; expects 200 and returns the answer posted to its response_url.
    async fn signed(&self, app: &SlackApp, click: &Click) -> Result<String> {
        let ts = now().to_string();
        let (code, body) = self
            .send(click, Some(&ts), Some(&signature(&app.secret, &ts, &click.body)?))
            .await?;
        ensure(code == 200, format!("signed click: {code} {body}"))?;
        self.answer(click).await
    }

    async fn answer(&self, click: &Click) -> Result<String> {
        support::wait_until("the answer to the click", T, async || {
            let answers = self.slack.answers.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            let Some(posted) = answers.get(&click.answer_id).and_then(|a| a.first()) else {
                return Ok(None);
            };
            if posted["response_type"] != "ephemeral" || posted["replace_original"] != false {
                bail!("not an ephemeral answer: {posted}");
            }
            Ok(posted["text"].as_str().map(str::to_string))
        })
        .await
    }

    /// The request was refused before anything was read: 401 naming only what failed, no answer.
    async fn refused(&self, click: &Click, ts: Option<&str>, sig: Option<&str>, want: &str) -> Result<()> {
        let (code, body) = self.send(click, ts, sig).await?;
        ensure(
            code == 401 && body.trim() == want,
            format!("want 401 {want}, got {code} {body:?}"),
        )?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let answered = self
            .slack
            .answers
            .lock()
            .map(|a| a.contains_key(&click.answer_id))
            .unwrap_or(true);
        ensure(!answered, "a refused request was answered")
    }
}

fn value(app: &SlackApp, seed: &Seed, canary: &str, step: u32) -> Value {
    json!({"ns": seed.ns, "policy": POLICY, "canary": canary, "step": step, "target": app.target})
}

/// The seed policy sending to `target`, with `UPOLICY` as an approver of its own.
fn with_notifications(policy: &str, target: &str) -> String {
    policy.replace(
        "  progressDeadline: 10m\n",
        &format!("  progressDeadline: 10m\n  notifications:\n    - target: {target}\n      approvers: [UPOLICY]\n"),
    )
}

async fn slack_setup(seed: &Seed) -> Result<(SlackApp, SlackApp, Clicker)> {
    support::create_namespace(SYSTEM_NS).await?;
    let (stand_in, slack_url) = start_stand_in().await?;
    let team = slack_target(seed, "team", "team-signing-secret", &slack_url).await?;
    // Another Slack app the daemon knows: its signature must not pass for `team`'s buttons.
    let other = slack_target(seed, "other", "other-signing-secret", &slack_url).await?;
    let clicker = Clicker {
        url: String::new(),
        slack: stand_in,
        slack_url,
        next: Default::default(),
    };
    Ok((team, other, clicker))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_approve_promotes_once_and_everything_else_does_nothing() -> Result<()> {
    let seed = seed("appr-slack").await?;
    let (team, other, mut clicker) = slack_setup(&seed).await?;
    let (daemon, url) = daemon_with_approvals(&seed).await?;
    clicker.url = url;
    let run = async {
        seed.apply(&with_notifications(&gated_policy(&seed), &team.target))
            .await?;
        let p = seed
            .wait_policy(POLICY, "the first gate", T, |p| {
                phase(p) == Phase::WaitingForApproval && step(p) == Some(1)
            })
            .await?;
        let hash = canary_hash(&p);
        let approve = value(&team, &seed, &hash, 1);
        let promote = "canaryd:promote";

        // Not from Slack: no signature, a wrong one, another app's, a stale timestamp. 401, no answer.
        let c = clicker.click("UALLOWED", promote, &approve)?;
        let ts = now().to_string();
        clicker.refused(&c, Some(&ts), None, "signature").await?;
        clicker
            .refused(&c, Some(&ts), Some(&signature("guessed", &ts, &c.body)?), "signature")
            .await?;
        clicker
            .refused(
                &c,
                Some(&ts),
                Some(&signature(&other.secret, &ts, &c.body)?),
                "signature",
            )
            .await?;
        let old = (now() - 360).to_string();
        clicker
            .refused(
                &c,
                Some(&old),
                Some(&signature(&team.secret, &old, &c.body)?),
                "timestamp",
            )
            .await?;
        // A body over the cap is refused before it is read.
        let big = Click {
            body: "payload=".to_string() + &"x".repeat(100 * 1024),
            answer_id: "big".into(),
        };
        let (code, _) = clicker
            .send(&big, Some(&ts), Some(&signature(&team.secret, &ts, &big.body)?))
            .await?;
        ensure(code == 413, format!("a 100 KiB body: {code}"))?;
        bad_signatures_cost_the_api_server_nothing(&clicker, &c, &other).await?;

        // Another target's signed click, by a user that target allows: the policy does not send there.
        let elsewhere = json!({"ns": seed.ns, "policy": POLICY, "canary": hash, "step": 1, "target": other.target});
        let text = clicker
            .signed(&other, &clicker.click("UALLOWED", promote, &elsewhere)?)
            .await?;
        ensure(text.contains("does not name"), format!("other target: {text}"))?;

        // A user on no list: told so, nothing created.
        let text = clicker
            .signed(&team, &clicker.click("UNOBODY", promote, &approve)?)
            .await?;
        ensure(text.contains("not allowed"), format!("UNOBODY: {text}"))?;
        ensure(commands(&seed).await?.is_empty(), "a refused click created a command")?;
        let p = seed.policy(POLICY).await?;
        ensure(step(&p) == Some(1), format!("the rollout moved: {:?}", p.status))?;

        // An allowed user: promoted once, and the Event names them.
        let first = clicker.click("UALLOWED", promote, &approve)?;
        let first_ts = now().to_string();
        let first_sig = signature(&team.secret, &first_ts, &first.body)?;
        let (code, _) = clicker.send(&first, Some(&first_ts), Some(&first_sig)).await?;
        ensure(code == 200, format!("approve: {code}"))?;
        let text = clicker.answer(&first).await?;
        ensure(text.starts_with("Done"), format!("approve: {text}"))?;
        seed.wait_policy(POLICY, "the second gate", T, |p| step(p) == Some(3))
            .await?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 50), ("v2", 50)], T)
            .await?;
        let promoted = seed.events(POLICY, "Promoted").await?.join(" | ");
        ensure(
            promoted.contains(&format!("by slack:UALLOWED (uallowed) via {DAEMON}")),
            format!("Promoted events: {promoted}"),
        )?;

        // The same click again, and the very same request replayed: already handled, nothing moves.
        let text = clicker
            .signed(&team, &clicker.click("UALLOWED", promote, &approve)?)
            .await?;
        ensure(
            text.contains("already handled by slack:UALLOWED (uallowed)"),
            format!("second click: {text}"),
        )?;
        let replay = Click {
            body: first.body.clone(),
            answer_id: first.answer_id.clone(),
        };
        clicker
            .slack
            .answers
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .clear();
        let (code, _) = clicker.send(&replay, Some(&first_ts), Some(&first_sig)).await?;
        ensure(code == 200, format!("replay: {code}"))?;
        let text = clicker.answer(&replay).await?;
        ensure(text.contains("already handled"), format!("replay: {text}"))?;

        // Approve on the message of a previous rollout (another canary): refused, says why.
        let stale = value(&team, &seed, "0123456789abcdef", 3);
        let text = clicker
            .signed(&team, &clicker.click("UALLOWED", promote, &stale)?)
            .await?;
        ensure(text.contains("WrongCanary"), format!("old message: {text}"))?;
        ensure(commands(&seed).await?.len() == 2, "one command acted, one refused")?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let p = seed.policy(POLICY).await?;
        ensure(
            step(&p) == Some(3) && phase(&p) == Phase::WaitingForApproval,
            format!("the rollout moved: {:?}", p.status),
        )?;

        // A standby replica (the Lease is another's) answers too; the leader acts. A member of an
        // allowed Slack user group passes the second gate through it.
        let lease = format!("approve-{}", seed.ns);
        seed.apply(&format!(
            "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {{name: {lease}, namespace: {SYSTEM_NS}}}\n\
             spec: {{holderIdentity: someone-else, leaseDurationSeconds: 3600, renewTime: \"{}\"}}\n",
            jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        ))
        .await?;
        let (standby, standby_url) =
            daemon_with_approvals_and(&seed, &["--leader-elect", "--lease-name", &lease]).await?;
        support::wait_until("the replica to stand by", T, async || {
            Ok(standby.logs(40).contains("waiting for the lease").then_some(()))
        })
        .await
        .with_context(|| standby.logs(40))?;
        clicker.url = standby_url;
        // Slack's group lookup takes 5 s: Slack still has its answer within 3 s, and the outcome
        // follows at response_url.
        *clicker
            .slack
            .group_delay
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))? = Duration::from_secs(5);
        let slow = clicker.click("UGROUP", promote, &value(&team, &seed, &hash, 3))?;
        let ts = now().to_string();
        let started = std::time::Instant::now();
        let (code, _) = clicker
            .send(&slow, Some(&ts), Some(&signature(&team.secret, &ts, &slow.body)?))
            .await?;
        let took = started.elapsed();
        ensure(
            code == 200 && took < Duration::from_secs(3),
            format!("a click with a 5 s group lookup: {code} after {took:?}"),
        )?;
        let text = clicker.answer(&slow).await?;
        ensure(text.starts_with("Done"), format!("group member: {text}"))?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 0), ("v2", 100)], T)
            .await?;
        let calls = *clicker
            .slack
            .group_calls
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        ensure(calls >= 1, "the group was looked up in Slack")?;
        ensure(!standby.logs(200).contains("leading"), "the standby took the lease")?;
        Ok(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_abort_while_progressing_returns_traffic_to_stable() -> Result<()> {
    let seed = seed("appr-abort").await?;
    let (team, _, mut clicker) = slack_setup(&seed).await?;
    let (daemon, url) = daemon_with_approvals(&seed).await?;
    clicker.url = url;
    let run = async {
        let policy = seed
            .policy_yaml()
            .replace("    - pause: {duration: 2s}\n", "    - pause: {duration: 10m}\n");
        seed.apply(&with_notifications(&policy, &team.target)).await?;
        let p = seed
            .wait_policy(POLICY, "the timed pause at 10 %", T, |p| {
                matches!(phase(p), Phase::Progressing | Phase::Paused) && step(p) == Some(1)
            })
            .await?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 90), ("v2", 10)], T)
            .await?;
        // UPOLICY is an approver of this policy only (spec.notifications[].approvers).
        let abort = clicker.click("UPOLICY", "canaryd:abort", &value(&team, &seed, &canary_hash(&p), 1))?;
        let text = clicker.signed(&team, &abort).await?;
        ensure(text.starts_with("Done"), format!("abort: {text}"))?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 100), ("v2", 0)], T)
            .await?;
        seed.wait_policy(POLICY, "Aborted", T, |p| phase(p) == Phase::Aborted)
            .await?;
        let aborted = seed.events(POLICY, "Aborted").await?.join(" | ");
        ensure(
            aborted.contains(&format!("by slack:UPOLICY (upolicy) via {DAEMON}")),
            format!("Aborted events: {aborted}"),
        )?;
        Ok(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}
