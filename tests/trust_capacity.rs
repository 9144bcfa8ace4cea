//! Issue 8, defect 11: `promote --full` waits for the canary's capacity, on real pods. In a test
//! binary of its own: it runs kube-controller-manager, whose Deployment controller would overwrite
//! the readiness that other tests set by hand.

mod fixture;
mod support;

use std::time::Duration;

use anyhow::Result;
use canaryd::resources::policy::{Phase, RolloutPolicy};
use fixture::scaling::{CANARY, Hpas, seed_with_pods};
use fixture::{cli, ensure, operator_kubeconfig, start_daemon};

const T: Duration = Duration::from_secs(30);
const VS: &str = "istio-test-vs";
const POLICY: &str = "istio-test";

fn phase(p: &RolloutPolicy) -> Phase {
    p.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_full_waits_for_the_capacity_of_100() -> Result<()> {
    let seed = seed_with_pods("tp-full", Hpas::None).await?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        let policy = seed.policy_yaml().replace(
            "  progressDeadline: 10m",
            "  scaling:\n    scaleDownDelay: 1h\n  progressDeadline: 10m",
        );
        seed.apply(&policy).await?;
        seed.wait_policy(POLICY, "WaitingForApproval", Duration::from_secs(60), |p| {
            phase(p) == Phase::WaitingForApproval
        })
        .await?;
        let before = seed.replicas(CANARY).await?;
        ensure(before.ready < 4, format!("canary already sized for 100%: {before:?}"))?;
        let operator = operator_kubeconfig(&seed).await?;
        let (ok, out) = cli(&operator, &["promote", POLICY, "--full", "-n", &seed.ns, "--no-wait"]).await?;
        ensure(ok, out)?;
        let ready_at_100 = support::wait_until("canary at 100%", Duration::from_secs(60), async || {
            let w = seed.weights(&seed.vs_ns, VS, 1).await?;
            if w.get("v2") == Some(&100) {
                return Ok(Some(seed.replicas(CANARY).await?));
            }
            Ok(None)
        })
        .await?;
        ensure(
            ready_at_100.ready >= 4,
            format!("100% sent to a canary with {ready_at_100:?}"),
        )?;
        seed.wait_policy(POLICY, "Succeeded", T, |p| phase(p) == Phase::Succeeded)
            .await?;
        Ok(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}
