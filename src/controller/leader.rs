//! Leader election over a Lease: only the holder runs the controller. A replica that loses the
//! Lease exits (and is restarted as a standby), so two daemons never write at once.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch::Receiver;

use crate::error::{Error, Result};

fn lease_error(e: impl std::fmt::Display) -> Error {
    Error::Lease(e.to_string())
}

/// Wait until this replica holds the Lease; the receiver then reports when it stops holding it.
pub async fn acquire(
    client: Client,
    namespace: &str,
    name: &str,
    identity: &str,
    duration: Duration,
) -> Result<Receiver<bool>> {
    // The lease manager refuses grace >= duration: keep both whole seconds, grace a third.
    let secs = duration.as_secs().max(2);
    let grace = (secs / 3).max(1);
    let manager = LeaseManagerBuilder::new(client, name)
        .with_namespace(namespace)
        .with_identity(identity)
        .with_duration(secs)
        .with_grace(grace)
        .build()
        .await
        .map_err(lease_error)?;
    // The manager's task keeps renewing the Lease for as long as the receiver lives.
    let (mut leading, _renewer) = manager.watch().await;
    while !*leading.borrow_and_update() {
        leading.changed().await.map_err(lease_error)?;
    }
    Ok(leading)
}

/// Resolves when the Lease is lost (or can no longer be renewed).
pub async fn lost(mut leading: Receiver<bool>) {
    loop {
        if leading.changed().await.is_err() || !*leading.borrow() {
            return;
        }
    }
}
