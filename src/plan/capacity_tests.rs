//! Table tests of the capacity edges: restoring only the HPA bounds canaryd changed, and holding a
//! scale-down back while a route still sends the old stable traffic.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::super::{Action, EventType, Observed, Plan, plan};
use super::{ScaleObserved, VersionScale};
use crate::plan::DeploymentState;
use crate::replicas::Bounds;
use crate::resources::command::{Command, CommandKind};
use crate::resources::policy::{Phase, RolloutPolicySpec, RolloutPolicyStatus, Step, VersionRef, VirtualServiceRef};

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + secs).unwrap()
}

fn b(min: i32, max: i32) -> Bounds {
    Bounds {
        min_replicas: Some(min),
        max_replicas: max,
    }
}

fn v(subset: &str) -> VersionRef {
    VersionRef {
        subset: subset.into(),
        deployment: format!("app-{subset}"),
    }
}

fn version(deployment: &str, bounds: Bounds, replicas: i32) -> VersionScale {
    VersionScale {
        deployment: deployment.into(),
        hpa: Some((format!("{deployment}-hpa"), bounds)),
        spec_replicas: replicas,
        ready_replicas: replicas,
    }
}

/// Stable app-v1 at 4 replicas with an HPA (2, 10), canary app-v2 with an HPA (1, 10); steps
/// 10 → 50 → 100; scale-down 60 s after promotion.
struct Sim {
    spec: RolloutPolicySpec,
    status: RolloutPolicyStatus,
    obs: Observed,
    now: Timestamp,
}

impl Sim {
    fn new() -> Self {
        let mut spec = RolloutPolicySpec {
            service: "app".into(),
            virtual_services: vec![VirtualServiceRef {
                name: "app".into(),
                namespace: None,
                routes: None,
            }],
            destination_rule: "app".into(),
            stable: v("v1"),
            canary: Some(v("v2")),
            steps: [10, 50, 100]
                .map(|w| Step {
                    weight: Some(w),
                    pause: None,
                })
                .to_vec(),
            schedule: None,
            progress_deadline: Duration::from_secs(600),
            analysis: None,
            webhooks: Vec::new(),
            scaling: Default::default(),
            notifications: Vec::new(),
        };
        spec.scaling.scale_down_delay = Duration::from_secs(60);
        let obs = Observed {
            generation: Some(1),
            canary: Some(DeploymentState {
                template_hash: "h1".into(),
                generation_observed: true,
                ready_replicas: 1,
            }),
            stable: Some(DeploymentState {
                template_hash: "h0".into(),
                generation_observed: true,
                ready_replicas: 4,
            }),
            routes: vec![BTreeMap::from([("v1".to_string(), 100)])],
            scaling: ScaleObserved {
                stable: Some(version("app-v1", b(2, 10), 4)),
                canary: Some(version("app-v2", b(1, 10), 1)),
            },
            ..Observed::default()
        };
        Sim {
            spec,
            status: RolloutPolicyStatus::default(),
            obs,
            now: t(0),
        }
    }

    /// Plan and carry out the actions on the observation (HPA controller and pods are instant).
    fn step(&mut self) -> Plan {
        let p = self.plan_only();
        self.apply(&p);
        self.status = p.status.clone();
        p
    }

    fn plan_only(&self) -> Plan {
        plan(&self.spec, &self.status, &self.obs, self.now)
    }

    fn apply(&mut self, p: &Plan) {
        for a in &p.actions {
            match a {
                Action::SetWeights {
                    stable,
                    canary,
                    canary_weight,
                } => {
                    for route in &mut self.obs.routes {
                        route.values_mut().for_each(|w| *w = 0);
                        route.insert(stable.clone(), 100 - canary_weight);
                        if let Some(c) = canary {
                            route.insert(c.clone(), *canary_weight);
                        }
                    }
                }
                Action::SetHpaBounds { hpa, bounds } => {
                    for v in self.versions() {
                        if let Some((name, b)) = v.hpa.as_mut()
                            && name == hpa
                        {
                            *b = *bounds;
                            v.spec_replicas = v.spec_replicas.max(bounds.effective_min());
                            v.ready_replicas = v.spec_replicas;
                        }
                    }
                }
                Action::SetReplicas { deployment, replicas } => {
                    for v in self.versions() {
                        if &v.deployment == deployment {
                            v.spec_replicas = *replicas;
                            v.ready_replicas = *replicas;
                        }
                    }
                }
                Action::Event { .. } => {}
            }
        }
        if let Some(c) = &self.obs.scaling.canary {
            let ready = c.ready_replicas;
            if let Some(d) = self.obs.canary.as_mut() {
                d.ready_replicas = ready;
            }
        }
    }

    fn versions(&mut self) -> impl Iterator<Item = &mut VersionScale> {
        [&mut self.obs.scaling.stable, &mut self.obs.scaling.canary]
            .into_iter()
            .flatten()
    }

    fn hpa(&self, deployment: &str) -> Bounds {
        [&self.obs.scaling.stable, &self.obs.scaling.canary]
            .into_iter()
            .flatten()
            .find(|v| v.deployment == deployment)
            .and_then(|v| v.hpa.as_ref())
            .map(|(_, b)| *b)
            .unwrap()
    }

    fn set_hpa(&mut self, deployment: &str, bounds: Bounds) {
        for v in self.versions() {
            if v.deployment == deployment
                && let Some((_, b)) = v.hpa.as_mut()
            {
                *b = bounds;
            }
        }
    }

    fn canary_weight(&self) -> u8 {
        self.obs.routes[0].get("v2").copied().unwrap_or(0)
    }

    /// Step until `done`; returns every plan made.
    fn until(&mut self, done: impl Fn(&Sim) -> bool) -> Vec<Plan> {
        let mut plans = Vec::new();
        for _ in 0..30 {
            if done(self) {
                return plans;
            }
            plans.push(self.step());
        }
        panic!("not reached: {:?}", self.status);
    }

    fn advance(&mut self, secs: i64) {
        self.now = self.now.checked_add(SignedDuration::from_secs(secs)).unwrap();
    }
}

fn hpa_writes<'a>(plans: impl IntoIterator<Item = &'a Plan>, hpa: &str) -> Vec<Bounds> {
    plans
        .into_iter()
        .flat_map(|p| &p.actions)
        .filter_map(|a| match a {
            Action::SetHpaBounds { hpa: h, bounds } if h == hpa => Some(*bounds),
            _ => None,
        })
        .collect()
}

fn events<'a>(plans: impl IntoIterator<Item = &'a Plan>, reason: &str) -> Vec<String> {
    plans
        .into_iter()
        .flat_map(|p| &p.actions)
        .filter_map(|a| match a {
            Action::Event {
                type_: EventType::Warning,
                reason: r,
                message,
            } if r == reason => Some(message.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn an_incident_bump_of_max_survives_the_rollout_and_the_restore() {
    let mut sim = Sim::new();
    sim.until(|s| s.canary_weight() == 50);
    // Someone raises both maxima mid-rollout.
    sim.set_hpa(
        "app-v1",
        Bounds {
            max_replicas: 20,
            ..sim.hpa("app-v1")
        },
    );
    sim.set_hpa(
        "app-v2",
        Bounds {
            max_replicas: 30,
            ..sim.hpa("app-v2")
        },
    );
    let later = sim.until(|s| s.status.phase == Phase::Succeeded);
    assert!(
        hpa_writes(&later, "app-v1-hpa").iter().all(|b| b.max_replicas == 20)
            && hpa_writes(&later, "app-v2-hpa").iter().all(|b| b.max_replicas == 30),
        "a maximum canaryd does not manage was written: {:?}",
        later.iter().flat_map(|p| &p.actions).collect::<Vec<_>>()
    );
    // Promotion: stable's min (canaryd's pin) comes back, its max stays the person's.
    assert_eq!(sim.hpa("app-v1"), b(2, 20));
    let left = events(&later, "HpaBoundLeftAlone");
    assert!(
        left.iter().any(|m| m.contains("app-v1-hpa maxReplicas is 20")),
        "{left:?}"
    );
    // The delayed scale-down gives the new stable its min back, not its max.
    sim.advance(61);
    let p = sim.step();
    assert_eq!(sim.hpa("app-v2"), b(1, 30));
    let left = events([&p], "HpaBoundLeftAlone");
    assert!(
        left.iter()
            .any(|m| m.contains("app-v2-hpa maxReplicas is 30") && m.contains("before the rollout: 10")),
        "{left:?}"
    );
    assert_eq!(sim.status.scaling, None);
}

#[test]
fn a_min_changed_by_someone_after_the_rollout_step_is_left_alone() {
    let mut sim = Sim::new();
    sim.until(|s| s.canary_weight() == 50);
    // The person sets the canary's min to 7 during the rollout, and aborts.
    sim.set_hpa("app-v2", b(7, 10));
    sim.obs.command = Some(Command {
        id: "a".into(),
        kind: CommandKind::Abort,
        by: None,
    });
    // The abort is recorded first (RollingBack), carried out in the next reconcile.
    let recorded = sim.step();
    let p = sim.step();
    assert_eq!(sim.status.phase, Phase::Aborted);
    assert_eq!(sim.hpa("app-v2"), b(7, 10));
    assert_eq!(hpa_writes([&recorded, &p], "app-v2-hpa"), Vec::<Bounds>::new());
    assert!(
        events([&recorded, &p], "HpaBoundLeftAlone")
            .iter()
            .any(|m| m.contains("app-v2-hpa minReplicas is 7")),
        "{:?}",
        p.actions
    );
    // Stable's pin was canaryd's: it goes back.
    assert_eq!(sim.hpa("app-v1"), b(2, 10));
}

#[test]
fn a_bound_written_just_before_a_crash_still_counts_as_canarys() {
    let mut sim = Sim::new();
    sim.until(|s| s.canary_weight() == 10);
    // The reconcile that raises the canary's min for 50 % writes the HPA, then crashes before its
    // status write: the status still records the bounds for 10 %.
    let lost = sim.plan_only();
    assert!(!hpa_writes([&lost], "app-v2-hpa").is_empty(), "{:?}", lost.actions);
    sim.apply(&lost);
    assert_eq!(sim.hpa("app-v2"), b(2, 10));
    sim.obs.command = Some(Command {
        id: "a".into(),
        kind: CommandKind::Abort,
        by: None,
    });
    let recorded = sim.step();
    let p = sim.step();
    assert_eq!(sim.status.phase, Phase::Aborted);
    assert_eq!(sim.hpa("app-v2"), b(1, 10), "{:?}", p.actions);
    assert!(
        events([&recorded, &p], "HpaBoundLeftAlone").is_empty(),
        "{:?}",
        p.actions
    );
}

#[test]
fn an_hpa_deleted_during_the_rollout_is_not_restored() {
    let mut sim = Sim::new();
    sim.until(|s| s.canary_weight() == 50);
    for v in sim.versions() {
        if v.deployment == "app-v2" {
            v.hpa = None;
        }
    }
    let actions = crate::plan::cleanup_observed(&sim.spec, &sim.status, &sim.obs, sim.now);
    assert_eq!(
        hpa_writes_of(&actions, "app-v2-hpa"),
        Vec::<Bounds>::new(),
        "{actions:?}"
    );
    assert_eq!(hpa_writes_of(&actions, "app-v1-hpa"), vec![b(2, 10)], "{actions:?}");
}

fn hpa_writes_of(actions: &[Action], hpa: &str) -> Vec<Bounds> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::SetHpaBounds { hpa: h, bounds } if h == hpa => Some(*bounds),
            _ => None,
        })
        .collect()
}

fn scaled_down(p: &Plan) -> bool {
    p.actions
        .iter()
        .any(|a| matches!(a, Action::SetReplicas { deployment, replicas: 0 } if deployment == "app-v1"))
}

#[test]
fn a_routed_old_stable_is_not_scaled_down_until_unused() {
    let mut sim = Sim::new();
    sim.until(|s| s.status.phase == Phase::Succeeded);
    let route = "VirtualService gw/app http[0] (100%)".to_string();
    sim.obs.old_stable_routes = vec![route.clone()];
    sim.advance(61);
    let p = sim.step();
    assert!(!scaled_down(&p), "{:?}", p.actions);
    let blocked = events([&p], "ScaleDownBlocked");
    assert!(
        blocked.len() == 1 && blocked[0].contains(&route) && blocked[0].contains("app-v1"),
        "{blocked:?}"
    );
    let down = sim.status.scaling.as_ref().and_then(|s| s.scale_down.clone()).unwrap();
    assert!(down.blocked.as_deref().is_some_and(|m| m.contains(&route)), "{down:?}");
    assert!(
        p.requeue.is_some_and(|r| r <= Duration::from_secs(5)),
        "{:?}",
        p.requeue
    );
    // Still routed a minute later: still held, and said once only.
    sim.advance(60);
    let p = sim.step();
    assert!(
        !scaled_down(&p) && events([&p], "ScaleDownBlocked").is_empty(),
        "{:?}",
        p.actions
    );
    // The route moves to v2: the pending scale-down happens.
    sim.obs.old_stable_routes.clear();
    let p = sim.step();
    assert!(scaled_down(&p), "{:?}", p.actions);
    assert_eq!(sim.status.scaling, None);
}

#[test]
fn an_unrouted_old_stable_goes_at_the_delay() {
    let mut sim = Sim::new();
    sim.until(|s| s.status.phase == Phase::Succeeded);
    sim.advance(30);
    assert!(!scaled_down(&sim.step()));
    sim.advance(31);
    let p = sim.step();
    assert!(scaled_down(&p), "{:?}", p.actions);
    assert!(events([&p], "ScaleDownBlocked").is_empty());
}

#[test]
fn a_promotion_replanned_after_a_lost_status_write_leaves_stable_with_its_own_bounds() {
    let mut sim = Sim::new();
    sim.until(|s| s.canary_weight() == 100);
    // The promoting reconcile puts stable's bounds back, then crashes before its status write.
    let lost = loop {
        let p = sim.plan_only();
        if p.status.phase == Phase::Succeeded {
            break p;
        }
        sim.step();
    };
    sim.apply(&lost);
    assert_eq!(sim.hpa("app-v1"), b(2, 10), "{:?}", lost.actions);
    // Replanned from the old status: the pin it would keep is superseded by the restore.
    let p = sim.step();
    assert_eq!(sim.status.phase, Phase::Succeeded);
    assert_eq!(sim.hpa("app-v1"), b(2, 10), "{:?}", p.actions);
}

/// Git names the canary at 100 % as stable (issue 16): the old stable, no longer observed, still gets
/// its recorded bounds back, and is scaled down like after a promotion.
#[test]
fn an_adopted_stable_restores_the_old_stables_recorded_bounds() {
    let mut s = Sim::new();
    s.until(|s| s.canary_weight() == 100);
    assert_eq!(s.hpa("app-v1"), b(4, 10), "stable pinned during the rollout");
    s.spec.stable = v("v2");
    s.spec.canary = Some(v("v3"));
    // Observed as the controller does: stable is now app-v2, the canary app-v3.
    s.obs.stable = s.obs.canary.clone();
    s.obs.scaling.stable = s.obs.scaling.canary.take();
    s.obs.scaling.canary = Some(version("app-v3", b(1, 10), 1));
    let p = s.step();
    assert_eq!(hpa_writes([&p], "app-v1-hpa"), vec![b(2, 10)], "{:?}", p.actions);
    let down = s.status.scaling.as_ref().and_then(|sc| sc.scale_down.as_ref());
    assert_eq!(down.map(|d| d.deployment.as_str()), Some("app-v1"));
    assert_eq!(s.status.stable, Some(v("v2")));
    // v3 starts against v2: the old stable goes, v2's HPA gets its own bounds back.
    let p = s.step();
    assert!(scaled_down(&p), "{:?}", p.actions);
    assert_eq!(s.hpa("app-v2"), b(1, 10));
    assert_eq!(s.status.canary.as_ref().map(|c| c.subset.as_str()), Some("v3"));
}

/// After a promotion, Git names a new canary but still the old stable (issue 16): the old stable is
/// the declared one, takes the traffic back, and its pending scale-down is cancelled, not carried out.
#[test]
fn a_declared_old_stable_with_a_pending_scale_down_is_not_scaled_down() {
    let mut s = Sim::new();
    s.until(|s| s.status.phase == Phase::Succeeded);
    assert!(s.status.scaling.as_ref().is_some_and(|sc| sc.scale_down.is_some()));
    s.spec.canary = Some(v("v3"));
    // Observed as the controller does: stable app-v1 (declared), canary app-v3.
    s.obs.scaling.canary = Some(version("app-v3", b(1, 10), 1));
    let p = s.step();
    assert!(!scaled_down(&p), "{:?}", p.actions);
    assert_eq!(hpa_writes([&p], "app-v2-hpa"), vec![b(1, 10)], "{:?}", p.actions);
    assert_eq!(s.obs.routes[0].get("v1"), Some(&100));
    assert_eq!(s.status.stable, Some(v("v1")));
    assert!(s.status.scaling.is_none());
}
