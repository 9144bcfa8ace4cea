//! Schedule windows and freezes on the bed: the daemon (a real process) holds the canary's weight
//! outside every window and during a freeze, says why and until when in status and `canaryd status`,
//! and goes on when the freeze ends.

mod fixture;
mod support;

use std::time::Duration;

use anyhow::Result;
use canaryd::resources::policy::{Phase, RolloutPolicy};
use canaryd::resources::schedule::HoldReason;
use fixture::{cli, ensure, operator_kubeconfig, seed, start_daemon};
use jiff::Timestamp;

const T: Duration = Duration::from_secs(30);
const VS: &str = "istio-test-vs";
const POLICY: &str = "istio-test";

fn hold(p: &RolloutPolicy) -> Option<HoldReason> {
    p.status.as_ref().and_then(|s| s.schedule.as_ref()).map(|s| s.hold)
}

fn at_second(t: Timestamp, secs: i64) -> Result<Timestamp> {
    Ok(Timestamp::from_second(t.as_second() + secs)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rollout_holds_outside_a_window_and_in_a_freeze_then_goes_on() -> Result<()> {
    let seed = seed("sched").await?;
    let daemon = start_daemon(&seed.ns).await?;
    let run = async {
        // The API server refuses a freeze that ends before it begins.
        let backwards = seed.policy_yaml().replace(
            "  progressDeadline: 10m",
            "  progressDeadline: 10m\n  schedule:\n    freezes: [{from: \"2026-12-20T00:00:00Z\", to: \"2026-12-19T00:00:00Z\"}]",
        );
        match seed.apply(&backwards).await {
            Ok(()) => anyhow::bail!("a backwards freeze was accepted"),
            Err(e) => ensure(
                format!("{e:#}").contains("a freeze's to must be after its from"),
                format!("{e:#}"),
            )?,
        }

        // A window opening a few minutes from now (UTC): closed until then.
        let now = Timestamp::now();
        let open = at_second(now, 180 - now.as_second().rem_euclid(60))?;
        let z = open.to_zoned(jiff::tz::TimeZone::UTC);
        let cron = format!("{} {} * * *", z.minute(), z.hour());
        let windowed = seed.policy_yaml().replace(
            "  progressDeadline: 10m",
            &format!(
                "  progressDeadline: 10m\n  schedule:\n    windows: [{{cron: \"{cron}\", duration: 1h, timeZone: UTC}}]"
            ),
        );
        seed.apply(&windowed).await?;
        let held = seed
            .wait_policy(POLICY, "OutsideWindow", T, |p| {
                hold(p) == Some(HoldReason::OutsideWindow)
            })
            .await?;
        let st = held.status.clone().unwrap_or_default();
        let schedule = st.schedule.clone().unwrap_or_else(|| unreachable!());
        ensure(
            schedule.next_open == Some(open),
            format!("nextOpen {schedule:?}, want {open}"),
        )?;
        ensure(st.phase == Phase::Progressing, format!("phase {}", st.phase))?;
        let message = st.message.clone().unwrap_or_default();
        let want = format!(
            "holding canary v2 at 0% until the next window opens at {}",
            open.strftime("%Y-%m-%dT%H:%M:%S+00:00 (UTC)")
        );
        ensure(message.contains(&want), format!("message {message:?}, want {want:?}"))?;
        let weights = seed.weights(&seed.vs_ns, VS, 1).await?;
        ensure(weights.get("v2").copied().unwrap_or(0) == 0, format!("{weights:?}"))?;
        let operator = operator_kubeconfig(&seed).await?;
        let (ok, out) = cli(&operator, &["status", "-n", &seed.ns]).await?;
        ensure(
            ok && out.contains("Progressing") && out.contains(&want),
            format!("status: {out}"),
        )?;

        // The window replaced by a freeze that ends in a few seconds: held, then on.
        let until = at_second(Timestamp::now(), 12)?;
        let frozen = seed.policy_yaml().replace(
            "  progressDeadline: 10m",
            &format!(
                "  progressDeadline: 10m\n  schedule:\n    freezes: [{{from: \"{}\", to: \"{until}\", reason: bed freeze}}]",
                at_second(until, -600)?
            ),
        );
        seed.apply(&frozen).await?;
        let held = seed
            .wait_policy(POLICY, "Frozen", T, |p| hold(p) == Some(HoldReason::Frozen))
            .await?;
        let schedule = held.status.and_then(|s| s.schedule).unwrap_or_else(|| unreachable!());
        ensure(
            schedule.frozen_until == Some(until)
                && schedule.next_open == Some(until)
                && schedule.freeze_reason.as_deref() == Some("bed freeze"),
            format!("{schedule:?}"),
        )?;
        while Timestamp::now() < at_second(until, -1)? {
            let weights = seed.weights(&seed.vs_ns, VS, 1).await?;
            ensure(
                weights.get("v2").copied().unwrap_or(0) == 0,
                format!("moved during the freeze: {weights:?}"),
            )?;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        seed.wait_weights(&seed.vs_ns, VS, 1, &[("v1", 90), ("v2", 10)], T)
            .await?;
        ensure(Timestamp::now() >= until, "the weight rose before the freeze ended")?;
        seed.wait_policy(POLICY, "hold cleared", T, |p| {
            hold(p).is_none() && p.status.as_ref().is_some_and(|s| s.canary_weight == 10)
        })
        .await?;
        Ok(())
    };
    run.await.map_err(|e| fixture::fail_with_logs(&daemon, e))
}
