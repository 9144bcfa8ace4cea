//! Flagger compatibility end to end: the daemon (a real process, deploy/'s RBAC) calls Flagger's own
//! load tester (v1.44.0, built by tests/loadtester/build.sh) as Flagger users deploy it. Its gate and
//! rollback switches are flipped as an operator would (`/gate/open`, `/rollback/open`), and its
//! `bash`/`cmd` tasks run real commands; what the rollout does is read from status and the
//! VirtualService.

mod fixture;
mod support;

use std::time::Duration;

use anyhow::{Context, Result};
use canaryd::policy::types::{Phase, RolloutPolicy};
use fixture::analysis::{POLICY, VS, message, phase};
use fixture::{Seed, ensure, seed, start_daemon};
use support::LoadTester;

const T: Duration = Duration::from_secs(60);

/// The seed policy with `steps`, and `webhooks` (YAML list items, indented by 4) as `spec.webhooks`.
fn with_webhooks(seed: &Seed, steps: &str, webhooks: &str) -> Result<String> {
    let base = seed.policy_yaml();
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
        seed.apply(&with_webhooks(&seed, steps, &hooks)?).await?;
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
        seed.apply(&with_webhooks(&seed, steps, &hooks)?).await?;
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
        seed.apply(&with_webhooks(&seed, steps, &hooks)?).await?;
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
        seed.apply(&with_webhooks(&seed, steps, &hooks)?).await?;
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
        seed.apply(&with_webhooks(&seed, steps, &hooks)?).await?;
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
