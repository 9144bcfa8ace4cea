//! The capacity side of the planner: each version's replicas follow the traffic it is about to get.
//! The numbers come from `scale::capacity` (pure); this file decides when to change what.

use std::time::Duration;

use super::{Action, EventType, Planner, duration_between};
use crate::replicas::{Bounds, MaxPolicy, canary_capacity, managed_fields, pin_min, raise_min, restore_fields};
use crate::resources::policy::{ScaleDown, ScalingStatus, VersionRef, VersionScaling};

/// How often to look again while a scale-down waits for routes to stop using the old stable.
pub const SCALE_DOWN_BLOCKED_POLL: Duration = Duration::from_secs(5);

/// One version's scaling as observed now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionScale {
    pub deployment: String,
    /// Its HPA and current bounds.
    pub hpa: Option<(String, Bounds)>,
    pub spec_replicas: i32,
    pub ready_replicas: i32,
}

/// Both versions' scaling (empty when `spec.scaling.enabled` is false).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScaleObserved {
    pub stable: Option<VersionScale>,
    pub canary: Option<VersionScale>,
}

fn record(v: &VersionScale) -> VersionScaling {
    VersionScaling {
        deployment: v.deployment.clone(),
        hpa: v.hpa.as_ref().map(|(name, _)| name.clone()),
        original_bounds: v.hpa.as_ref().map(|(_, b)| *b),
        original_replicas: v.spec_replicas,
        set_bounds: None,
    }
}

impl Planner<'_> {
    /// Record what both versions have before the first change. True when recorded now: the reconcile
    /// must end there, so the originals are in status before any HPA changes (a crash in between
    /// would otherwise record our own changes as originals).
    pub(super) fn record_scaling(&mut self) -> bool {
        if !self.spec.scaling.enabled || self.st.scaling.is_some() {
            return false;
        }
        if self.input_scaling {
            // Just restored for a previous canary: record once those writes are done.
            self.requeue = Some(Duration::ZERO);
            return true;
        }
        let (Some(stable), Some(canary)) = (&self.obs.scaling.stable, &self.obs.scaling.canary) else {
            return false;
        };
        self.st.scaling = Some(ScalingStatus {
            stable_replicas_at_start: stable.spec_replicas,
            stable: Some(record(stable)),
            canary: Some(record(canary)),
            scale_down: None,
        });
        self.requeue = Some(Duration::ZERO);
        true
    }

    /// While the rollout runs, stable keeps the capacity it had at the start, so a rollback can send
    /// all traffic back at once.
    pub(super) fn pin_stable(&mut self) {
        let Some(sc) = &self.st.scaling else { return };
        let Some(VersionScaling {
            hpa: Some(name),
            original_bounds: Some(original),
            ..
        }) = &sc.stable
        else {
            return;
        };
        let (name, original) = (name.clone(), *original);
        let target = pin_min(original, sc.stable_replicas_at_start);
        let current = self
            .obs
            .scaling
            .stable
            .as_ref()
            .and_then(|v| v.hpa.as_ref())
            .map(|(_, b)| *b);
        let write = managed_fields(target, original, current.unwrap_or(target));
        if current != Some(write) {
            self.actions.push(Action::SetHpaBounds {
                hpa: name,
                bounds: write,
            });
        }
        if let Some(rec) = self.st.scaling.as_mut().and_then(|sc| sc.stable.as_mut()) {
            rec.set_bounds = Some(target);
        }
    }

    /// Give the canary the replicas for `weight`. Ok((has them Ready, how many it needs)); Err when
    /// it cannot get them (HPA maxReplicas too low and the policy says not to raise it).
    pub(super) fn ensure_capacity(&mut self, weight: u8) -> Result<(bool, i32), String> {
        let Some(sc) = self.st.scaling.clone() else {
            return Ok((true, 1));
        };
        let Some(rec) = &sc.canary else { return Ok((true, 1)) };
        let required = canary_capacity(sc.stable_replicas_at_start, weight, self.spec.scaling.headroom);
        let observed = self.obs.scaling.canary.clone();
        match (&rec.hpa, rec.original_bounds) {
            (Some(name), Some(original)) => {
                let policy = MaxPolicy::from_raise_max(self.spec.scaling.raise_max_replicas);
                let target = raise_min(original, required, policy)
                    .map_err(|e| format!("canary {} needs {required} replicas for {weight}%: {e}", rec.deployment))?;
                let current = observed.as_ref().and_then(|v| v.hpa.as_ref()).map(|(_, b)| *b);
                let write = managed_fields(target, original, current.unwrap_or(target));
                if current != Some(write) {
                    self.actions.push(Action::SetHpaBounds {
                        hpa: name.clone(),
                        bounds: write,
                    });
                }
                if let Some(rec) = self.st.scaling.as_mut().and_then(|sc| sc.canary.as_mut()) {
                    rec.set_bounds = Some(target);
                }
                // An HPA is inactive while its target is at zero (e.g. scaled down after a rollback).
                if observed.as_ref().is_some_and(|v| v.spec_replicas == 0) {
                    self.actions.push(Action::SetReplicas {
                        deployment: rec.deployment.clone(),
                        replicas: required,
                    });
                }
            }
            _ => {
                let want = required.max(rec.original_replicas);
                if observed.as_ref().is_none_or(|v| v.spec_replicas != want) {
                    self.actions.push(Action::SetReplicas {
                        deployment: rec.deployment.clone(),
                        replicas: want,
                    });
                }
            }
        }
        Ok((observed.is_some_and(|v| v.ready_replicas >= required), required))
    }

    /// Put both versions back as recorded (rollback, abort, a changed canary): the canary's HPA
    /// bounds or replicas, stable's HPA bounds. Weights are moved before this by the caller.
    pub(super) fn restore_scaling(&mut self) {
        let Some(sc) = self.st.scaling.take() else { return };
        if sc.scale_down.is_some() {
            // A promotion's scale-down still pending: finish it now.
            self.st.scaling = Some(sc);
            return self.finish_scale_down(true);
        }
        if let Some(canary) = &sc.canary {
            self.restore(&sc, canary, true);
        }
        if let Some(stable) = &sc.stable {
            // Stable's replicas were never touched without an HPA.
            self.restore(&sc, stable, false);
        }
    }

    pub(super) fn restore(&mut self, sc: &ScalingStatus, rec: &VersionScaling, replicas_too: bool) {
        match (&rec.hpa, rec.original_bounds) {
            (Some(name), Some(original)) => self.restore_bounds(sc, rec, name, original),
            _ if replicas_too => self.actions.push(Action::SetReplicas {
                deployment: rec.deployment.clone(),
                replicas: rec.original_replicas,
            }),
            _ => {}
        }
    }

    /// Put back only the bounds canaryd changed and that still have canaryd's value; say so when a
    /// field is left alone because someone changed it during the rollout.
    fn restore_bounds(&mut self, sc: &ScalingStatus, rec: &VersionScaling, name: &str, original: Bounds) {
        // A write planned earlier in this pass (stable's pin, replanned after a lost status write)
        // is superseded: the restore below is decided on what the cluster really has.
        self.actions
            .retain(|a| !matches!(a, Action::SetHpaBounds { hpa, .. } if hpa == name));
        let observed = [&self.obs.scaling.stable, &self.obs.scaling.canary]
            .into_iter()
            .flatten()
            .find(|v| v.deployment == rec.deployment);
        let Some(observed) = observed else {
            // Not observed (a Deployment this policy no longer names): put the recorded bounds back.
            self.actions.push(Action::SetHpaBounds {
                hpa: name.to_string(),
                bounds: original,
            });
            return;
        };
        let Some(current) = observed.hpa.as_ref().filter(|(n, _)| n == name).map(|(_, b)| *b) else {
            // The HPA is gone: nothing to restore.
            return;
        };
        let ours = self.ours(sc, rec, original);
        let (write, left) = restore_fields(original, current, &ours);
        if let Some(bounds) = write {
            self.actions.push(Action::SetHpaBounds {
                hpa: name.to_string(),
                bounds,
            });
        }
        for l in left {
            self.event(
                EventType::Warning,
                "HpaBoundLeftAlone",
                format!(
                    "HPA {name} {} is {}, changed during the rollout by someone else: left as is (before the rollout: {})",
                    l.field, l.current, l.original
                ),
            );
        }
    }

    /// Every HPA bounds canaryd may have set for this version in this rollout: the recorded ones,
    /// and the targets it would set now (a crash between an HPA write and the status write loses
    /// the record, not the value).
    fn ours(&self, sc: &ScalingStatus, rec: &VersionScaling, original: Bounds) -> Vec<Bounds> {
        let mut ours: Vec<Bounds> = rec.set_bounds.into_iter().collect();
        let is_stable = sc.stable.as_ref().is_some_and(|s| s.deployment == rec.deployment)
            && sc.canary.as_ref().is_none_or(|c| c.deployment != rec.deployment);
        if is_stable {
            ours.push(pin_min(original, sc.stable_replicas_at_start));
        } else {
            let policy = MaxPolicy::from_raise_max(self.spec.scaling.raise_max_replicas);
            let weights = self
                .spec
                .steps
                .iter()
                .filter_map(|s| s.weight)
                .chain([self.st.canary_weight, 100]);
            for w in weights {
                let required = canary_capacity(sc.stable_replicas_at_start, w, self.spec.scaling.headroom);
                ours.extend(raise_min(original, required, policy).ok());
            }
        }
        ours
    }

    /// On promotion: stable's original bounds come back now; the old stable is scaled to zero after
    /// `scaleDownDelay`, and only then the new stable's HPA gets its own bounds back.
    pub(super) fn after_promotion(&mut self, old_stable: &VersionRef) {
        let Some(mut sc) = self.st.scaling.take() else { return };
        if let Some(stable) = sc.stable.clone() {
            self.restore(&sc, &stable, false);
            sc.stable = None;
        }
        let delay = self.spec.scaling.scale_down_delay;
        let at = jiff::SignedDuration::try_from(delay)
            .ok()
            .and_then(|d| self.now.checked_add(d).ok())
            .unwrap_or(self.now);
        sc.scale_down = Some(ScaleDown {
            deployment: old_stable.deployment.clone(),
            subset: Some(old_stable.subset.clone()),
            at,
            blocked: None,
        });
        self.st.scaling = Some(sc);
        self.requeue = Some(delay);
    }

    /// The delayed end of a promotion: old stable to zero, the new stable's HPA back to its bounds.
    /// Held back while any route still sends the old stable traffic (`now_regardless`: a new
    /// rollout starts, so the bounds come back now and a still-routed old stable keeps running).
    pub(super) fn finish_scale_down(&mut self, now_regardless: bool) {
        let Some(sc) = self.st.scaling.clone() else { return };
        let Some(down) = &sc.scale_down else { return };
        if !now_regardless && self.now < down.at {
            let left = duration_between(self.now, down.at);
            self.requeue = Some(self.requeue.map_or(left, |r| r.min(left)));
            return;
        }
        let routes = &self.obs.old_stable_routes;
        let blocked = (!routes.is_empty()).then(|| {
            format!(
                "old stable {} (subset {}) is not scaled down: {} still send it traffic",
                down.deployment,
                down.subset.as_deref().unwrap_or_default(),
                routes.join(", ")
            )
        });
        if let Some(message) = &blocked
            && !now_regardless
        {
            if down.blocked.as_ref() != Some(message) {
                self.event(EventType::Warning, "ScaleDownBlocked", message.clone());
                if let Some(d) = self.st.scaling.as_mut().and_then(|s| s.scale_down.as_mut()) {
                    d.blocked = Some(message.clone());
                }
            }
            let poll = SCALE_DOWN_BLOCKED_POLL;
            self.requeue = Some(self.requeue.map_or(poll, |r| r.min(poll)));
            return;
        }
        match &blocked {
            Some(message) => self.event(
                EventType::Warning,
                "ScaleDownBlocked",
                format!("{message}; a new rollout starts, so it is left running: scale it down once unused"),
            ),
            None => self.actions.push(Action::SetReplicas {
                deployment: down.deployment.clone(),
                replicas: 0,
            }),
        }
        if let Some(canary) = &sc.canary {
            self.restore(&sc, canary, false);
        }
        if blocked.is_none() {
            self.event(
                EventType::Normal,
                "ScaledDown",
                format!(
                    "old stable {} scaled to zero; HPAs have their own bounds back",
                    down.deployment
                ),
            );
        }
        self.st.scaling = None;
    }

    /// On deletion: like a rollback, but a pending scale-down is not carried out (the old stable
    /// keeps running; only the new stable's HPA gets its bounds back).
    pub(super) fn cleanup_scaling(&mut self) {
        if let Some(sc) = self.st.scaling.as_mut()
            && sc.scale_down.take().is_some()
        {
            let sc = sc.clone();
            if let Some(canary) = &sc.canary
                && canary.hpa.is_some()
            {
                self.restore(&sc, canary, false);
            }
            self.st.scaling = None;
            return;
        }
        self.restore_scaling();
    }
}

#[cfg(test)]
#[path = "capacity_tests.rs"]
mod tests;
