//! What the API adapters (mesh weights, HPA bounds and replicas) share: a leaf module, so that
//! neither adapter depends on the other.

use std::future::Future;

use crate::fence::LeaderGuard;

/// The field manager of every write canaryd makes, so `managedFields` show who set a value.
pub const FIELD_MANAGER: &str = "canaryd";

/// What one write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    Unchanged,
    Written,
}

/// Why a guarded read-modify-write stopped without writing.
#[derive(Debug)]
pub enum Stop<E> {
    /// This replica may no longer write: no further request was sent.
    NotLeader,
    /// Reading or planning failed, or the write was refused for another reason than a conflict.
    Failed(E),
    /// Every attempt met a concurrent change: the last answer.
    Exhausted(kube::Error),
}

/// The one guarded read-modify-write: read the object, plan the patch from what was read, check
/// leadership immediately before each request (the read and the write of every attempt), write;
/// when `conflict` says the object changed under us, read again, at most `attempts` times.
pub async fn guarded_rmw<O, P, E, R, RF, W, WF>(
    guard: &LeaderGuard,
    attempts: usize,
    conflict: fn(&kube::Error) -> bool,
    mut read: R,
    mut plan: impl FnMut(O) -> Result<Option<P>, E>,
    mut write: W,
) -> Result<WriteOutcome, Stop<E>>
where
    E: From<kube::Error>,
    R: FnMut() -> RF,
    RF: Future<Output = Result<O, kube::Error>>,
    W: FnMut(P) -> WF,
    WF: Future<Output = Result<(), kube::Error>>,
{
    let mut last = None;
    for _ in 0..attempts.max(1) {
        if !guard.may_write() {
            return Err(Stop::NotLeader);
        }
        let current = read().await.map_err(|e| Stop::Failed(e.into()))?;
        let Some(patch) = plan(current).map_err(Stop::Failed)? else {
            return Ok(WriteOutcome::Unchanged);
        };
        // The read may have taken a while: the renew deadline may have passed meanwhile.
        if !guard.may_write() {
            return Err(Stop::NotLeader);
        }
        match write(patch).await {
            Ok(()) => return Ok(WriteOutcome::Written),
            Err(e) if conflict(&e) => {
                tracing::debug!(answer = %e, "the object changed under us; re-reading");
                last = Some(e);
            }
            Err(e) => return Err(Stop::Failed(e.into())),
        }
    }
    // At least one attempt ran and met a conflict: `last` is set.
    Err(last.map_or(Stop::NotLeader, Stop::Exhausted))
}
