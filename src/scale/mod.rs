//! Capacity for the canary and the stable while traffic moves: HorizontalPodAutoscaler bounds, or
//! `spec.replicas` of Deployments without an HPA.
//!
//! - [`crate::replicas`] is pure: how many replicas the canary needs for a weight, and the HPA bounds that
//!   guarantee them (raise the canary's `minReplicas`, pin the stable's to its replicas at the start).
//! - [`hpa`] is the API side: find a version's HPA, write only `minReplicas`/`maxReplicas` (merge
//!   patch guarded by the resourceVersion just read, retried on conflict), scale Deployments without
//!   an HPA through their `scale` subresource, read replica counts. Every write is idempotent and
//!   reports whether it changed anything.
//!
//! The original bounds are for the caller to record in status before the first change, and to hand
//! back to [`hpa::set_bounds`] to restore them exactly.

pub mod hpa;
