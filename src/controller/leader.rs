//! Leader election over a Lease, with a renew deadline that cannot split leadership.
//!
//! The holder may write only while its last successful renewal is younger than `renew_deadline`,
//! which is shorter than the lease duration. A standby takes the Lease over only after the Lease
//! record stayed unchanged for a whole lease duration by its own clock, counted from when it first
//! saw that record, which is after the holder sent the renewal. So a holder whose renewals fail
//! (API errors, 403, 429, timeouts) has stopped writing before anyone else can acquire the Lease,
//! with `lease_duration - renew_deadline` to spare for a write already in flight.

use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tracing::{debug, info, warn};

use crate::error::{Error, Result};

use crate::fence::LeaderGuard;

/// Where the Lease is and how long it lasts.
#[derive(Clone, Debug)]
pub struct Election {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
}

/// The timeout of every API request the controller makes: `asked`, or half the margin that the
/// renew deadline leaves (`lease_duration - renew_deadline`). It must be shorter than that margin,
/// so that a write sent just before the deadline is given up before a standby can take over.
pub fn request_timeout(
    lease_duration: Duration,
    renew_deadline: Duration,
    asked: Option<Duration>,
) -> Result<Duration> {
    let margin = lease_duration.saturating_sub(renew_deadline);
    let timeout = asked.unwrap_or(margin / 2);
    if timeout.is_zero() || timeout >= margin {
        return Err(lease_error(format!(
            "the API request timeout ({timeout:?}) must be above zero and shorter than the lease duration \
             ({lease_duration:?}) minus the renew deadline ({renew_deadline:?}), {margin:?}: a write still in \
             flight after that could land once a standby leads"
        )));
    }
    Ok(timeout)
}

pub struct Elector {
    api: Api<Lease>,
    cfg: Election,
    retry: Duration,
    guard: LeaderGuard,
}

fn lease_error(e: impl std::fmt::Display) -> Error {
    Error::Lease(e.to_string())
}

fn micro_now() -> serde_json::Value {
    serde_json::to_value(MicroTime(Timestamp::now())).unwrap_or(serde_json::Value::Null)
}

enum Renewal {
    Renewed,
    Lost(Option<String>),
}

impl Elector {
    pub fn new(client: Client, cfg: Election) -> Result<Self> {
        if cfg.lease_duration.as_secs() < 1 || cfg.renew_deadline.is_zero() || cfg.renew_deadline >= cfg.lease_duration
        {
            return Err(lease_error(format!(
                "the renew deadline ({:?}) must be shorter than the lease duration ({:?}, at least 1s)",
                cfg.renew_deadline, cfg.lease_duration
            )));
        }
        // Several tries within the deadline, as client-go (15s lease, 10s deadline, 2s retry).
        let retry = (cfg.renew_deadline / 5).max(Duration::from_millis(100));
        Ok(Self {
            api: Api::namespaced(client, &cfg.namespace),
            guard: LeaderGuard::elected(cfg.renew_deadline),
            retry,
            cfg,
        })
    }

    pub fn guard(&self) -> LeaderGuard {
        self.guard.clone()
    }

    fn lease_secs(&self) -> i32 {
        i32::try_from(self.cfg.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }

    /// Wait until this replica holds the Lease.
    pub async fn acquire(&self) -> Result<()> {
        let mut seen: Option<(String, Instant)> = None;
        loop {
            let sent = Instant::now();
            match tokio::time::timeout(self.retry * 2, self.try_acquire(&mut seen)).await {
                Ok(Ok(true)) => {
                    self.guard.renewed(sent);
                    return Ok(());
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => debug!(error = %e, "acquiring the lease failed"),
                Err(_) => debug!("acquiring the lease timed out"),
            }
            tokio::time::sleep(self.retry).await;
        }
    }

    async fn try_acquire(&self, seen: &mut Option<(String, Instant)>) -> Result<bool> {
        let Some(lease) = self.api.get_opt(&self.cfg.name).await? else {
            let now = MicroTime(Timestamp::now());
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.cfg.identity.clone()),
                    lease_duration_seconds: Some(self.lease_secs()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e.into()),
            };
        };
        let rv = lease.resource_version().unwrap_or_default();
        let spec = lease.spec.unwrap_or_default();
        let holder = spec.holder_identity.filter(|h| !h.is_empty());
        let free = match &holder {
            None => true,
            Some(h) if *h == self.cfg.identity => true,
            Some(_) => {
                // Expired only by our own clock: the same record for a whole lease duration since we first saw it.
                let duration = spec
                    .lease_duration_seconds
                    .and_then(|s| u64::try_from(s).ok())
                    .map_or(self.cfg.lease_duration, Duration::from_secs);
                match seen {
                    Some((seen_rv, at)) if *seen_rv == rv => at.elapsed() >= duration,
                    _ => {
                        *seen = Some((rv.clone(), Instant::now()));
                        false
                    }
                }
            }
        };
        if !free {
            return Ok(false);
        }
        let transitions =
            spec.lease_transitions.unwrap_or(0) + i32::from(holder.as_deref().is_some_and(|h| h != self.cfg.identity));
        let now = micro_now();
        let patch = json!({
            "metadata": {"resourceVersion": rv},
            "spec": {
                "holderIdentity": self.cfg.identity,
                "leaseDurationSeconds": self.lease_secs(),
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": transitions,
            }
        });
        match self
            .api
            .patch(&self.cfg.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                info!(previous = ?holder, "acquired the lease");
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Renew the Lease until this replica may no longer write; returns then (the caller exits).
    pub async fn hold(&self) {
        loop {
            let Some(deadline) = self.guard.deadline() else {
                return;
            };
            let now = Instant::now();
            if now >= deadline {
                warn!(deadline = ?self.cfg.renew_deadline, "could not renew the lease within the renew deadline; stopped writing");
                return;
            }
            let sent = now;
            let budget = (self.retry * 2).min(deadline - now);
            match tokio::time::timeout(budget, self.try_renew()).await {
                Ok(Ok(Renewal::Renewed)) => self.guard.renewed(sent),
                Ok(Ok(Renewal::Lost(holder))) => {
                    self.guard.revoke();
                    warn!(holder = ?holder, "the lease is held by another replica; stopped writing");
                    return;
                }
                Ok(Err(e)) => warn!(error = %e, "renewing the lease failed"),
                Err(_) => warn!("renewing the lease timed out"),
            }
            let until = self.guard.deadline().unwrap_or_else(Instant::now);
            let wake = (Instant::now() + self.retry).min(until);
            tokio::time::sleep_until(wake.into()).await;
        }
    }

    async fn try_renew(&self) -> Result<Renewal> {
        let Some(lease) = self.api.get_opt(&self.cfg.name).await? else {
            return Ok(Renewal::Lost(None));
        };
        let holder = lease.spec.as_ref().and_then(|s| s.holder_identity.clone());
        if holder.as_deref() != Some(self.cfg.identity.as_str()) {
            return Ok(Renewal::Lost(holder));
        }
        let patch = json!({
            "metadata": {"resourceVersion": lease.resource_version()},
            "spec": {
                "holderIdentity": self.cfg.identity,
                "leaseDurationSeconds": self.lease_secs(),
                "renewTime": micro_now(),
            }
        });
        self.api
            .patch(&self.cfg.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(Renewal::Renewed)
    }

    /// Stop writing and free the Lease (graceful shutdown), so that a standby takes over at once.
    pub async fn release(&self) {
        if !self.guard.may_write() {
            return;
        }
        self.guard.revoke();
        let result = async {
            let lease = self.api.get(&self.cfg.name).await?;
            if lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) != Some(self.cfg.identity.as_str()) {
                return Ok(());
            }
            let patch = json!({
                "metadata": {"resourceVersion": lease.resource_version()},
                "spec": {"holderIdentity": null, "renewTime": micro_now(), "leaseDurationSeconds": 1}
            });
            self.api
                .patch(&self.cfg.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(|_| ())
        };
        match tokio::time::timeout(self.retry * 2, result).await {
            Ok(Ok(())) => info!("released the lease"),
            Ok(Err(e)) => warn!(error = %e, "releasing the lease failed"),
            Err(_) => warn!("releasing the lease timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_allows_writes_only_within_the_renew_deadline() {
        let deadline = Duration::from_secs(10);
        let guard = LeaderGuard::elected(deadline);
        let t0 = Instant::now();
        assert!(!guard.may_write_at(t0), "not leading before the first acquisition");
        guard.renewed(t0);
        let cases = [
            (Duration::ZERO, true),
            (Duration::from_secs(9), true),
            (Duration::from_millis(9999), true),
            (deadline, false),
            (Duration::from_secs(11), false),
        ];
        for (after, want) in cases {
            assert_eq!(guard.may_write_at(t0 + after), want, "{after:?} after the renewal");
        }
        // A late answer to an older renewal never moves the deadline back.
        guard.renewed(t0 + Duration::from_secs(5));
        guard.renewed(t0);
        assert!(guard.may_write_at(t0 + Duration::from_secs(14)));
        assert!(!guard.may_write_at(t0 + Duration::from_secs(15)));
        guard.revoke();
        assert!(!guard.may_write_at(t0 + Duration::from_secs(6)));
        assert!(LeaderGuard::unelected().may_write());
        assert!(matches!(guard.check(), Err(crate::fence::NotLeader)));
    }

    #[test]
    fn request_timeout_is_shorter_than_the_margin_the_renew_deadline_leaves() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        #[rustfmt::skip]
        let cases: &[(Duration, Duration, Option<Duration>, Option<Duration>)] = &[
            // lease, renew deadline, asked → effective (None: refused at startup)
            (s(15), s(10), None, Some(ms(2500))),      // the defaults: half the 5 s margin
            (s(15), s(10), Some(s(4)), Some(s(4))),
            (s(15), s(10), Some(ms(4999)), Some(ms(4999))),
            (s(15), s(10), Some(s(5)), None),          // equal to the margin
            (s(15), s(10), Some(s(30)), None),
            (s(15), s(10), Some(Duration::ZERO), None),
            (s(6), s(3), None, Some(ms(1500))),
            (s(10), s(10), None, None),                // no margin at all
            (s(10), s(12), Some(s(1)), None),
        ];
        for &(lease, deadline, asked, want) in cases {
            let got = request_timeout(lease, deadline, asked);
            assert_eq!(
                got.as_ref().ok().copied(),
                want,
                "{lease:?} {deadline:?} {asked:?}: {got:?}"
            );
            if let Err(e) = got {
                assert!(e.to_string().contains("must be above zero and shorter than"), "{e}");
            }
        }
    }
}
