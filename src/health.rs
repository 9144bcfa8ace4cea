//! The daemon's HTTP port: /metrics, /healthz, /readyz.
//!
//! /readyz: 200 once every object cache has had its first list (body says whether this replica
//! leads), else 503. /healthz: 503 when a watch has failed without a success for longer than the
//! stuck bound, a reconcile has run longer than it, or policies exist and none was reconciled for
//! two resyncs plus the bound.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use kube::runtime::watcher;

use crate::metrics::Metrics;

/// Every policy is reconciled at least this often (the controller's resync).
pub const RESYNC: Duration = Duration::from_secs(30);

/// A failing watch retries at least this often (its backoff stays under 5 s, a connect times out
/// after 30 s). A watch that has restarted fine yields nothing until an object changes, so one
/// whose last error is older than this counts as recovered.
pub const WATCH_RETRY_GAP: Duration = Duration::from_secs(40);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// No leader election.
    Single = 0,
    Standby = 1,
    Leader = 2,
}

/// What the probes report, fed by the caches, the controller and the elector.
#[derive(Debug)]
pub struct Health {
    stuck_after: Duration,
    synced: AtomicBool,
    role: AtomicU8,
    /// Per watch: (first, last) error of its current run of failures (None: it works).
    watches: Mutex<BTreeMap<&'static str, Option<(Instant, Instant)>>>,
    /// Last sign of life of the reconcile loop (None: the controller is not running here).
    loop_beat: Mutex<Option<Instant>>,
    in_flight: Mutex<HashMap<u64, Instant>>,
    next: AtomicU64,
}

impl Health {
    pub fn new(stuck_after: Duration) -> Self {
        Self {
            stuck_after,
            synced: AtomicBool::new(false),
            role: AtomicU8::new(Role::Single as u8),
            watches: Mutex::new(BTreeMap::new()),
            loop_beat: Mutex::new(None),
            in_flight: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
        }
    }

    pub fn set_synced(&self) {
        self.synced.store(true, Ordering::Release);
    }

    pub fn set_role(&self, role: Role) {
        self.role.store(role as u8, Ordering::Release);
    }

    fn role(&self) -> Role {
        match self.role.load(Ordering::Acquire) {
            1 => Role::Standby,
            2 => Role::Leader,
            _ => Role::Single,
        }
    }

    /// A watch stream yielded an item. `Init` only announces a (re)list, which may fail: it is
    /// neither a success nor a failure.
    pub fn watch_item<K>(&self, kind: &'static str, item: &Result<watcher::Event<K>, watcher::Error>) {
        match item {
            Ok(watcher::Event::Init) => {}
            other => self.watch_item_at(kind, other.is_ok(), Instant::now()),
        }
    }

    fn watch_item_at(&self, kind: &'static str, ok: bool, now: Instant) {
        if let Ok(mut w) = self.watches.lock() {
            let failing = w.entry(kind).or_insert(None);
            *failing = match (ok, *failing) {
                (true, _) => None,
                (false, Some((first, last))) if now.saturating_duration_since(last) <= WATCH_RETRY_GAP => {
                    Some((first, now))
                }
                (false, _) => Some((now, now)),
            };
        }
    }

    /// The reconcile loop is alive (a reconcile started, or there is nothing to reconcile).
    pub fn loop_beat(&self) {
        self.loop_beat_at(Instant::now());
    }

    fn loop_beat_at(&self, now: Instant) {
        if let Ok(mut b) = self.loop_beat.lock() {
            *b = Some(now);
        }
    }

    /// Marks a reconcile as running until the returned value is dropped.
    pub fn reconcile_started(self: &Arc<Self>) -> ReconcileBeat {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        self.loop_beat_at(now);
        if let Ok(mut f) = self.in_flight.lock() {
            f.insert(id, now);
        }
        ReconcileBeat {
            health: self.clone(),
            id,
        }
    }

    /// Why the daemon is not healthy at `now` (empty: healthy).
    pub fn problems_at(&self, now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        let bound = self.stuck_after;
        if let Ok(w) = self.watches.lock() {
            for (kind, failing) in w.iter() {
                if let Some((first, last)) = failing
                    && now.saturating_duration_since(*last) <= WATCH_RETRY_GAP
                    && now.saturating_duration_since(*first) > bound
                {
                    out.push(format!(
                        "the watch of {kind} has failed for {}s",
                        now.saturating_duration_since(*first).as_secs()
                    ));
                }
            }
        }
        if let Ok(f) = self.in_flight.lock()
            && let Some(oldest) = f.values().min()
            && now.saturating_duration_since(*oldest) > bound
        {
            out.push(format!(
                "a reconcile has run for {}s",
                now.saturating_duration_since(*oldest).as_secs()
            ));
        }
        if let Ok(b) = self.loop_beat.lock()
            && let Some(beat) = *b
            && now.saturating_duration_since(beat) > RESYNC * 2 + bound
        {
            out.push(format!(
                "no reconcile for {}s",
                now.saturating_duration_since(beat).as_secs()
            ));
        }
        out
    }

    fn ready(&self) -> (StatusCode, String) {
        if !self.synced.load(Ordering::Acquire) {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: the object caches have not synced\n".into(),
            );
        }
        let role = match self.role() {
            Role::Single => "ok\n",
            Role::Standby => "ok: standby\n",
            Role::Leader => "ok: leader\n",
        };
        (StatusCode::OK, role.into())
    }

    fn healthy(&self) -> (StatusCode, String) {
        let problems = self.problems_at(Instant::now());
        if problems.is_empty() {
            (StatusCode::OK, "ok\n".into())
        } else {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("unhealthy: {}\n", problems.join("; ")),
            )
        }
    }
}

/// Removes its reconcile from the running ones when dropped (done or cancelled).
pub struct ReconcileBeat {
    health: Arc<Health>,
    id: u64,
}

impl Drop for ReconcileBeat {
    fn drop(&mut self) {
        self.health.loop_beat();
        if let Ok(mut f) = self.health.in_flight.lock() {
            f.remove(&self.id);
        }
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

pub fn router(metrics: Arc<Metrics>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route(
            "/healthz",
            get(|State(s): State<AppState>| async move { s.health.healthy() }),
        )
        .route(
            "/readyz",
            get(|State(s): State<AppState>| async move { s.health.ready() }),
        )
        .with_state(AppState { metrics, health })
}

async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_table() {
        let bound = Duration::from_secs(10);
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let h = Arc::new(Health::new(bound));
        assert!(
            h.problems_at(s(1000)).is_empty(),
            "an idle daemon without a controller is healthy"
        );

        // A watch that fails, then recovers; an idle watch (no items) stays healthy.
        h.watch_item_at("services", true, s(0));
        h.watch_item_at("deployments", false, s(1));
        h.watch_item_at("deployments", false, s(5));
        assert!(h.problems_at(s(11)).is_empty());
        let p = h.problems_at(s(12));
        assert!(p.len() == 1 && p[0].contains("deployments"), "{p:?}");
        h.watch_item_at("deployments", true, s(13));
        assert!(h.problems_at(s(500)).is_empty());
        // Errors that stop without a success: the watch restarted fine (a watch says nothing then).
        h.watch_item_at("services", false, s(20));
        h.watch_item_at("services", false, s(40));
        assert!(!h.problems_at(s(40 + 40)).is_empty());
        assert!(h.problems_at(s(40 + 41)).is_empty());
        h.watch_item_at("services", true, s(90));

        // The loop: stale after two resyncs plus the bound without a beat.
        h.loop_beat_at(s(100));
        assert!(h.problems_at(s(100 + 70)).is_empty());
        assert!(h.problems_at(s(100 + 71))[0].contains("no reconcile"));
        h.loop_beat_at(s(200));

        // A reconcile that does not finish.
        let started = Instant::now();
        let beat = h.reconcile_started();
        assert!(h.problems_at(started + Duration::from_secs(9)).is_empty());
        assert!(h.problems_at(started + Duration::from_secs(11))[0].contains("a reconcile has run"));
        drop(beat);
        assert!(h.problems_at(started + Duration::from_secs(11)).is_empty());
    }

    #[test]
    fn readiness_needs_synced_caches_and_names_the_role() {
        let h = Health::new(Duration::from_secs(10));
        assert_eq!(h.ready().0, StatusCode::SERVICE_UNAVAILABLE);
        h.set_synced();
        assert_eq!(h.ready(), (StatusCode::OK, "ok\n".to_string()));
        h.set_role(Role::Standby);
        assert_eq!(h.ready().1, "ok: standby\n");
        h.set_role(Role::Leader);
        assert_eq!(h.ready().1, "ok: leader\n");
    }
}
