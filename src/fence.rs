//! The leadership fence: whether this replica may write now. Every write (guarded read-modify-write,
//! status, Events) checks it; the Lease election in `controller::leader` renews or revokes it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// This replica may no longer write (it lost, or never had, the Lease).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not the leader")]
pub struct NotLeader;

/// Whether this replica may write now. Cheap to clone; checked before every write.
#[derive(Clone, Debug)]
pub struct LeaderGuard {
    /// None: no election (a single replica), always allowed.
    inner: Option<Arc<Inner>>,
}

#[derive(Debug)]
struct Inner {
    renew_deadline: Duration,
    /// When the request of the last successful renewal was sent; None: not leading.
    renewed: Mutex<Option<Instant>>,
}

impl LeaderGuard {
    /// Without leader election: every write is allowed.
    pub fn unelected() -> Self {
        Self { inner: None }
    }

    /// With leader election: no write until the first successful acquisition.
    pub fn elected(renew_deadline: Duration) -> Self {
        Self {
            inner: Some(Arc::new(Inner {
                renew_deadline,
                renewed: Mutex::new(None),
            })),
        }
    }

    pub fn may_write(&self) -> bool {
        self.may_write_at(Instant::now())
    }

    /// Allowed while `now` is within the renew deadline of the last successful renewal.
    pub fn may_write_at(&self, now: Instant) -> bool {
        match &self.inner {
            None => true,
            Some(inner) => inner
                .renewed
                .lock()
                .ok()
                .and_then(|r| *r)
                .is_some_and(|at| now.saturating_duration_since(at) < inner.renew_deadline),
        }
    }

    /// Call before each write: an error when this replica may no longer write.
    pub fn check(&self) -> Result<(), NotLeader> {
        if self.may_write() { Ok(()) } else { Err(NotLeader) }
    }

    /// When writing stops unless renewed again (None: never, or already not leading).
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let inner = self.inner.as_ref()?;
        let renewed = inner.renewed.lock().ok().and_then(|r| *r)?;
        Some(renewed + inner.renew_deadline)
    }

    /// A renewal sent at `sent` succeeded.
    pub(crate) fn renewed(&self, sent: Instant) {
        if let Some(inner) = &self.inner
            && let Ok(mut r) = inner.renewed.lock()
        {
            *r = Some(r.map_or(sent, |prev| prev.max(sent)));
        }
    }

    /// Stop writing now (the Lease was taken over or is being released).
    pub(crate) fn revoke(&self) {
        if let Some(inner) = &self.inner
            && let Ok(mut r) = inner.renewed.lock()
        {
            *r = None;
        }
    }
}
