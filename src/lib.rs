//! canaryd: progressive delivery for Kubernetes and Istio.
//!
//! The pipeline per RolloutPolicy is observe → plan (pure) → act → status; see README.md. The
//! modules are layered (tests/layers.rs): resources at the bottom, the pure core, the edges and
//! services, the controller, the CLI.

pub mod analysis;
pub mod approvals;
pub mod cache;
pub mod cli;
pub mod controller;
pub mod cron;
pub mod error;
pub mod failpoint;
pub mod fence;
pub mod hash;
pub mod health;
pub mod hooks;
pub mod http;
pub mod mesh;
pub mod metrics;
pub mod notify;
pub mod plan;
pub mod policy;
pub mod prometheus;
pub mod replicas;
pub mod resources;
pub mod scale;
pub mod secrets;
pub mod telemetry;
pub mod write;

pub use error::{Error, Result};
