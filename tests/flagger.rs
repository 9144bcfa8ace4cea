//! Flagger compatibility end to end: the daemon (a real process, deploy/'s RBAC) calls Flagger's own
//! load tester (v1.44.0, built by tests/loadtester/build.sh) as Flagger users deploy it. Its gate and
//! rollback switches are flipped as an operator would (`/gate/open`, `/rollback/open`), and its
//! `bash`/`cmd` tasks run real commands; what the rollout does is read from status and the
//! VirtualService.

mod fixture;
mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use canaryd::resources::policy::{Phase, RolloutPolicy};
use fixture::analysis::{POLICY, VS, message, phase};
use fixture::{Seed, ensure, seed, start_daemon};
use serde_json::Value;
use support::LoadTester;

const T: Duration = Duration::from_secs(60);

/// The seed policy with `steps`, and `webhooks` (YAML list items, indented by 4) as `spec.webhooks`.
fn with_webhooks(base: &str, steps: &str, webhooks: &str) -> Result<String> {
    let start = base.find("  steps:\n").context("steps")?;
    let end = base.find("  progressDeadline").context("progressDeadline")?;
    Ok(format!(
        "{}  steps:\n{steps}{}  webhooks:\n{webhooks}",
        &base[..start],
        &base[end..]
    ))
}

fn gate(p: &RolloutPolicy) -> Option<String> {
    Some(p.status.as_ref()?.gate.as_ref()?.hook.clone())
}

fn reasons(p: &RolloutPolicy) -> Vec<String> {
    p.status
        .as_ref()
        .map(|s| s.history.iter().map(|t| t.reason.clone()).collect())
        .unwrap_or_default()
}

async fn canary_weight(seed: &Seed) -> Result<u8> {
    Ok(seed.weights(&seed.vs_ns, VS, 1).await?.get("v2").copied().unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_testers_gate_holds_confirm_rollout_and_confirm_promotion_until_opened() -> Result<()> {
    let seed = seed("fl-gate").await?;
    let lt = LoadTester::start().await?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        let hooks = format!(
            "    - name: confirm-rollout\n      type: confirm-rollout\n      url: {}\n      interval: 1s\n\
             \x20   - name: confirm-promotion\n      type: confirm-promotion\n      url: {}\n      interval: 1s\n",
            lt.url("/gate/check"),
            lt.url("/gate/check")
        );
        let steps = "    - weight: 10\n    - pause: {duration: 4s}\n    - weight: 100\n";
        seed.apply(&with_webhooks(&seed.policy_yaml(), steps, &hooks)?).await?;
        let p = seed
            .wait_policy(POLICY, "held at confirm-rollout", T, |p| {
                gate(p).as_deref() == Some("confirm-rollout")
                    && p.status
                        .as_ref()
                        .and_then(|s| s.gate.as_ref()?.last_answer.clone())
                        .is_some_and(|a| a.contains("HTTP 403"))
            })
            .await?;
        ensure(phase(&p) == Phase::Progressing, format!("{:?}", phase(&p)))?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        ensure(canary_weight(&seed).await? == 0, "traffic moved through a closed gate")?;

        // The operator opens the gate for this canary (keyed "name.namespace", as for a Flagger Canary).
        lt.switch("/gate/open", POLICY, &seed.ns).await?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 90), ("v2", 10)], T)
            .await?;
        // Closed again during the 4 s pause: promotion now waits for it.
        lt.switch("/gate/close", POLICY, &seed.ns).await?;
        seed.wait_policy(POLICY, "held at confirm-promotion", T, |p| {
            gate(p).as_deref() == Some("confirm-promotion")
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        ensure(canary_weight(&seed).await? == 10, "promoted through a closed gate")?;
        lt.switch("/gate/open", POLICY, &seed.ns).await?;
        seed.wait_policy(POLICY, "Succeeded", T, |p| phase(p) == Phase::Succeeded)
            .await?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 0), ("v2", 100)], T)
            .await?;
        Ok(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passing_bash_and_cmd_checks_run_their_commands_and_gate_approve_promotes() -> Result<()> {
    let seed = seed("fl-cmd").await?;
    let lt = LoadTester::start().await?;
    let dir = support::scratch_dir("fl-cmd")?;
    let pre = dir.join("pre-rollout-ran");
    let load = dir.join("rollout-ran");
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        // A blocking `bash` check before traffic and a `cmd` task (the loadtester's default type,
        // started in the background: answered 202) while the canary has traffic.
        let hooks = format!(
            "    - name: acceptance-test\n      type: pre-rollout\n      url: {url}\n      timeout: 30s\n      interval: 1s\n      \
             metadata: {{type: bash, cmd: \"test -d {dir} && touch {pre}\"}}\n\
             \x20   - name: load-test\n      type: rollout\n      url: {url}\n      interval: 1s\n      \
             metadata: {{cmd: \"echo load >> {load}\"}}\n\
             \x20   - name: promote\n      type: confirm-promotion\n      url: {approve}\n      interval: 1s\n",
            url = lt.url("/"),
            approve = lt.url("/gate/approve"),
            dir = dir.display(),
            pre = pre.display(),
            load = load.display(),
        );
        let steps = "    - weight: 10\n    - pause: {duration: 3s}\n    - weight: 100\n";
        seed.apply(&with_webhooks(&seed.policy_yaml(), steps, &hooks)?).await?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 90), ("v2", 10)], T)
            .await?;
        ensure(pre.exists(), "the pre-rollout bash command did not run before traffic")?;
        let p = seed
            .wait_policy(POLICY, "Succeeded", T, |p| phase(p) == Phase::Succeeded)
            .await?;
        ensure(
            !reasons(&p).iter().any(|r| r.starts_with("Webhook")),
            format!("{:?}", reasons(&p)),
        )?;
        support::wait_until("the rollout cmd task ran", T, async || {
            Ok(std::fs::read_to_string(&load)
                .is_ok_and(|s| s.contains("load"))
                .then_some(()))
        })
        .await
        .with_context(|| lt.log())?;
        Ok(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_bash_pre_rollout_check_rolls_back_before_any_traffic() -> Result<()> {
    let seed = seed("fl-prefail").await?;
    let lt = LoadTester::start().await?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        let hooks = format!(
            "    - name: acceptance-test\n      type: pre-rollout\n      url: {}\n      interval: 1s\n      \
             metadata: {{type: bash, cmd: \"echo checking; exit 3\"}}\n",
            lt.url("/")
        );
        let steps = "    - weight: 10\n    - weight: 100\n";
        seed.apply(&with_webhooks(&seed.policy_yaml(), steps, &hooks)?).await?;
        let p = seed
            .wait_policy(POLICY, "RolledBack", T, |p| phase(p) == Phase::RolledBack)
            .await?;
        ensure(
            reasons(&p).contains(&"WebhookFailed".to_string()),
            format!("{:?}", reasons(&p)),
        )?;
        ensure(
            message(&p).contains("pre-rollout webhook acceptance-test") && message(&p).contains("HTTP 500"),
            message(&p),
        )?;
        let history = p.status.as_ref().map(|s| s.history.clone()).unwrap_or_default();
        ensure(
            history.iter().all(|t| t.canary_weight == 0),
            format!("traffic moved before the check passed: {history:?}"),
        )?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 100), ("v2", 0)], T)
            .await?;
        ensure(lt.log().contains("echo checking; exit 3"), lt.log())?;
        Ok(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_bash_rollout_check_rolls_back_a_canary_with_traffic() -> Result<()> {
    let seed = seed("fl-rofail").await?;
    let lt = LoadTester::start().await?;
    let dir = support::scratch_dir("fl-rofail")?;
    let broken = dir.join("broken");
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        // Passes until the file appears, as a smoke test does until the canary breaks.
        let hooks = format!(
            "    - name: smoke\n      type: rollout\n      url: {}\n      interval: 1s\n      \
             metadata: {{type: bash, cmd: \"test ! -e {}\"}}\n",
            lt.url("/"),
            broken.display()
        );
        let steps = "    - weight: 10\n    - pause: {}\n    - weight: 100\n";
        seed.apply(&with_webhooks(&seed.policy_yaml(), steps, &hooks)?).await?;
        seed.wait_policy(POLICY, "WaitingForApproval", T, |p| {
            phase(p) == Phase::WaitingForApproval
        })
        .await?;
        ensure(canary_weight(&seed).await? == 10, "canary not at 10 %")?;
        std::fs::write(&broken, b"")?;
        let p = seed
            .wait_policy(POLICY, "RolledBack", T, |p| phase(p) == Phase::RolledBack)
            .await?;
        ensure(
            reasons(&p).contains(&"WebhookFailed".to_string()),
            format!("{:?}", reasons(&p)),
        )?;
        ensure(message(&p).contains("rollout webhook smoke"), message(&p))?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 100), ("v2", 0)], T)
            .await?;
        Ok(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_testers_rollback_switch_rolls_back_within_seconds() -> Result<()> {
    let seed = seed("fl-rollback").await?;
    let lt = LoadTester::start().await?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        let hooks = format!(
            "    - name: rollback\n      type: rollback\n      url: {}\n      interval: 1s\n",
            lt.url("/rollback/check")
        );
        let steps = "    - weight: 10\n    - pause: {}\n    - weight: 100\n";
        seed.apply(&with_webhooks(&seed.policy_yaml(), steps, &hooks)?).await?;
        seed.wait_policy(POLICY, "WaitingForApproval", T, |p| {
            phase(p) == Phase::WaitingForApproval
        })
        .await?;
        // Closed (403) is "no rollback": the canary keeps its traffic.
        ensure(
            lt.check("/rollback/check", POLICY, &seed.ns).await? == 403,
            "switch not closed",
        )?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        ensure(canary_weight(&seed).await? == 10, "rolled back with the switch closed")?;
        lt.switch("/rollback/open", POLICY, &seed.ns).await?;
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 100), ("v2", 0)], Duration::from_secs(10))
            .await?;
        let p = seed
            .wait_policy(POLICY, "RolledBack", T, |p| phase(p) == Phase::RolledBack)
            .await?;
        ensure(
            reasons(&p).contains(&"WebhookRollback".to_string()),
            format!("{:?}", reasons(&p)),
        )?;
        ensure(
            message(&p).contains("rollback webhook rollback answered HTTP 200"),
            message(&p),
        )?;
        Ok(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}

/// A Flagger `analysis.webhooks` list as Flagger's docs (docs/gitbook/usage/webhooks.md, v1.44.0)
/// write it: a muted gate, a `bash` acceptance test, a load test with no `type` (Flagger's default:
/// rollout), a promotion gate, a rollback switch and an event hook with `retries`.
const FLAGGER_WEBHOOKS: &str = r#"    webhooks:
      - name: "gate"
        type: confirm-rollout
        url: http://flagger-loadtester.test/gate/approve
        muteAlert: true
      - name: acceptance-test
        type: pre-rollout
        url: http://flagger-loadtester.test/
        timeout: 30s
        metadata:
          type: bash
          cmd: "curl -sd 'test' http://podinfo-canary:9898/token | grep token"
      - name: load-test
        url: http://flagger-loadtester.test/
        timeout: 5s
        metadata:
          cmd: "hey -z 1m -q 10 -c 2 http://podinfo-canary.test:9898/"
      - name: "promotion gate"
        type: confirm-promotion
        url: http://flagger-loadtester.test/gate/approve
      - name: "rollback gate"
        type: rollback
        url: http://flagger-loadtester.test/rollback/check
      - name: "send to Slack"
        type: event
        url: http://event-recevier.notifications/slack
        retries: 3
        metadata:
          environment: "test"
          cluster: "flagger-test"
"#;

/// The seed policy with Flagger's list pasted under `spec:` as is (only its `analysis:` parent is
/// not: canaryd's webhooks sit in `spec.webhooks`).
fn flagger_policy(base: &str, steps: &str, hosts: &[(&str, &str)]) -> Result<String> {
    let list = FLAGGER_WEBHOOKS.strip_prefix("    webhooks:\n").context("list")?;
    let list = hosts.iter().fold(list.to_string(), |l, (from, to)| l.replace(from, to));
    with_webhooks(base, steps, &list)
}

#[test]
fn a_flagger_webhooks_list_copied_unchanged_decodes_and_validates() -> Result<()> {
    use canaryd::resources::webhook::HookType;
    let base = fixture::seed_yaml("rolloutpolicy.yaml", "dev", "default");
    let yaml = flagger_policy(&base, "    - weight: 10\n    - weight: 100\n", &[])?;
    let p: RolloutPolicy = serde_saphyr::from_str(&yaml)?;
    let errors = canaryd::policy::validate::validate_spec(&p.spec);
    ensure(errors.is_empty(), format!("{errors:?}"))?;
    let hooks = &p.spec.webhooks;
    ensure(hooks.len() == 6, format!("{hooks:?}"))?;
    let load = hooks.iter().find(|h| h.name == "load-test").context("load-test")?;
    ensure(load.type_ == HookType::Rollout, format!("{load:?}"))?;
    let gate = &hooks[0];
    ensure(
        gate.mute_alert && gate.type_ == HookType::ConfirmRollout,
        format!("{gate:?}"),
    )?;
    let slack = hooks.iter().find(|h| h.name == "send to Slack").context("event")?;
    ensure(slack.retries == 3 && !slack.disable_tls, format!("{slack:?}"))?;
    Ok(())
}

/// An HTTP receiver that records every POST body and answers `token` (what the acceptance test greps).
async fn recorder() -> Result<(String, Arc<Mutex<Vec<(String, Value)>>>)> {
    let seen: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
    let log = seen.clone();
    let app = axum::Router::new().fallback(axum::routing::post(
        move |uri: axum::http::Uri, body: axum::body::Bytes| {
            let log = log.clone();
            async move {
                let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                log.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((uri.path().to_string(), value));
                "token"
            }
        },
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((base, seen))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flagger_webhooks_list_copied_unchanged_runs_against_the_load_tester() -> Result<()> {
    let seed = seed("fl-copied").await?;
    let lt = LoadTester::start().await?;
    let (other, seen) = recorder().await?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        // Only the hosts change: the load tester, the canary the acceptance test curls, the event sink.
        let lt_base = lt.url("");
        let hosts = [
            ("http://flagger-loadtester.test", lt_base.as_str()),
            ("http://podinfo-canary:9898", other.as_str()),
            ("http://event-recevier.notifications", other.as_str()),
        ];
        let steps = "    - weight: 10\n    - pause: {duration: 2s}\n    - weight: 100\n";
        seed.apply(&flagger_policy(&seed.policy_yaml(), steps, &hosts)?).await?;
        let p = seed
            .wait_policy(POLICY, "Succeeded", T, |p| phase(p) == Phase::Succeeded)
            .await?;
        ensure(
            !reasons(&p).iter().any(|r| r.starts_with("Webhook")),
            format!("{:?}", reasons(&p)),
        )?;
        let bodies = |path: &str| -> Vec<Value> {
            let all = seen.lock().unwrap_or_else(|e| e.into_inner());
            all.iter().filter(|(p, _)| p == path).map(|(_, b)| b.clone()).collect()
        };
        ensure(
            !bodies("/token").is_empty(),
            "the bash acceptance test did not curl the canary",
        )?;
        // The untyped hook ran as a rollout hook: the load tester started its command.
        ensure(lt.log().contains("hey -z 1m"), lt.log())?;
        // Event hooks carry Flagger's event fields inside `metadata`, next to the hook's own.
        let events = support::wait_until("the Succeeded event", T, async || {
            let events = bodies("/slack");
            Ok(events.iter().any(|e| e["phase"] == "Succeeded").then_some(events))
        })
        .await?;
        let last = events.last().context("an event")?;
        ensure(
            last["name"] == POLICY
                && last["namespace"] == seed.ns.as_str()
                && last["checksum"].as_str().is_some_and(|c| !c.is_empty())
                && last["metadata"]["eventType"] == "Normal"
                && last["metadata"]["eventMessage"].as_str().is_some_and(|m| !m.is_empty())
                && last["metadata"]["timestamp"]
                    .as_str()
                    .is_some_and(|t| t.parse::<u64>().is_ok())
                && last["metadata"]["environment"] == "test"
                && last["metadata"]["cluster"] == "flagger-test",
            format!("event payload: {last}"),
        )?;
        Ok(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}
